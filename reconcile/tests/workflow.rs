//! The finance workflow end to end against three real regions: intake, proposals, four eyes, the
//! executor's compensating entries in every region, resolution everywhere, and the audit chain.

mod common;

use common::{Api, Regions, Staff};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

async fn service(regions: &Regions) -> (reconcile::Running, Api, Staff, String) {
    let cfg = regions.reconcile_config();
    let db = cfg.database_url.clone();
    let staff = Staff::create(&db).await;
    let running = reconcile::start(cfg).await.expect("reconcile starts");
    let api = Api::new(format!("http://{}", running.addr()));
    (running, api, staff, db)
}

async fn scrape(api: &Api) -> String {
    api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap()
}

fn ids(cases: &[Value]) -> Vec<String> {
    cases.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_region_overdraft_is_one_case_resolved_in_every_region_with_a_verifiable_trail() {
    let mut regions = Regions::start().await;
    let (running, api, staff, db) = service(&regions).await;
    let debits = regions.three_region_overdraft("acc").await;
    let viewer = staff.token("viewer");

    // One case, seen by all three regions, with its three transfers fetched side by side.
    let cases = api
        .wait_cases(viewer, "kind=overdraft", WAIT, |cs| {
            cs.len() == 1 && cs[0]["regions"].as_array().is_some_and(|r| r.len() == 3)
        })
        .await;
    let case_id = cases[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(cases[0]["accounts"], json!(["acc"]));
    assert_eq!(cases[0]["state"], "open");
    assert_eq!(cases[0]["amount_at_risk"], 30, "the joint balance was -30");
    // A region that applied two of the debits first reports a benign episode; once the third
    // joins it, that episode is merged into the overdraft and its case superseded (kept, listed
    // with state=superseded). What stays is exactly one case on the account.
    let on_acc = api.wait_cases(viewer, "account=acc", WAIT, |cs| cs.len() == 1).await;
    assert_eq!(ids(&on_acc), vec![case_id.clone()], "exactly one case");
    let merged = api.get("/api/cases?account=acc&state=superseded", viewer).await;
    for c in merged.body["cases"].as_array().unwrap() {
        assert!(c["superseded_by"].is_string(), "a superseded case points to its successor: {c}");
    }
    // The three credits to the shop broke nothing: closed by the written policy, still listed.
    let benign = api.wait_cases(viewer, "account=shop", WAIT, |cs| !cs.is_empty()).await;
    assert!(benign.iter().all(|c| c["kind"] == "concurrent-benign" && c["state"] == "closed"), "{benign:?}");
    assert!(benign[0]["closed_reason"].as_str().unwrap().contains("Policy REC-1"));

    let case = api
        .wait_case(viewer, &case_id, WAIT, "had its three branches", |c| {
            c["branches"].as_array().is_some_and(|b| b.len() == 3)
        })
        .await;
    let branch_ids: std::collections::BTreeSet<&str> =
        case["branches"].as_array().expect("branches fetched").iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(branch_ids, debits.iter().map(String::as_str).collect(), "the three debits side by side");
    let branch_regions: std::collections::BTreeSet<&str> =
        case["branches"].as_array().unwrap().iter().map(|b| b["region"].as_str().unwrap()).collect();
    assert_eq!(branch_regions.len(), 3, "one branch per region: {case}");

    let metrics = scrape(&api).await;
    assert!(metrics.contains("reconcile_cases_open{kind=\"overdraft\"} 1"), "{metrics}");
    assert!(metrics.contains("reconcile_case_resolution_seconds_count 0"), "{metrics}");

    // The resolver proposes reversing one debit; nobody can approve their own proposal.
    let resolver = staff.token("resolver");
    let p = api
        .post(
            &format!("/api/cases/{case_id}/proposals"),
            resolver,
            json!({"action": "reverse", "event_id": debits[2], "reason": "ap-south's debit overdrew acc"}),
        )
        .await;
    assert_eq!(p.status, 201, "{}", p.body);
    assert_eq!(p.body["state"], "proposed");
    let proposal = p.body["id"].as_str().unwrap().to_owned();
    let again = api
        .post(
            &format!("/api/cases/{case_id}/proposals"),
            resolver,
            json!({"action": "accept", "reason": "double click"}),
        )
        .await;
    assert_eq!((again.status, again.problem()), (409, "invalid-state"), "one live proposal per case");
    let own = api.post(&format!("/api/proposals/{proposal}/approve"), resolver, json!({})).await;
    assert_eq!(own.status, 403, "a resolver cannot approve at all: {}", own.body);

    let approved = api.post(&format!("/api/proposals/{proposal}/approve"), staff.token("approver"), json!({})).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let done = api.wait_state(viewer, &case_id, "resolved", WAIT).await;

    // The compensating transfer is in every region, once; balances agree; no new conflict.
    let transfer = &done["proposals"][0]["transfer"];
    let transfer_id = transfer["id"].as_str().expect("the compensating transfer").to_owned();
    assert_eq!(transfer["metadata"]["reconcile_case"], json!(case_id), "the posting names the case");
    let balances = regions.converged(&["acc", "shop", "world"], WAIT).await;
    assert_eq!(balances, vec![30, 120, -150], "acc: 150 - 3×60 + 60; shop: 3×60 - 60");
    for i in 0..3 {
        assert_eq!(regions.get(i, &format!("/v1/transfers/{transfer_id}")).await.status, 200, "region {i}");
        let entries = regions.get(i, "/v1/accounts/acc/entries?limit=100").await;
        assert_eq!(
            entries.body["entries"].as_array().map(Vec::len),
            Some(5),
            "funding, three debits, one reversal: {}",
            entries.body
        );
        let conflicts = regions.conflicts(i).await;
        let ours = conflicts.iter().find(|c| c["conflict_id"] == json!(case_id)).expect("the conflict");
        assert_eq!(ours["status"], "resolved", "region {i}: {ours}");
        let open_overdrafts = conflicts.iter().filter(|c| c["kind"] == "overdraft" && c["status"] == "open").count();
        assert_eq!(open_overdrafts, 0, "region {i}: no new conflict: {conflicts:?}");
    }
    let metrics = scrape(&api).await;
    assert!(metrics.contains("reconcile_cases_open{kind=\"overdraft\"} 0"), "{metrics}");
    assert!(metrics.contains("reconcile_case_resolution_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("reconcile_case_open_oldest_age_seconds 0"), "{metrics}");
    // Exports for auditors: the case with its state, the trail with each entry's hash.
    let cases_csv = api
        .http
        .get(format!("{}/api/export/cases.csv", api.base))
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = cases_csv.lines().find(|l| l.starts_with(&case_id)).expect("the case is exported");
    assert!(line.contains(",resolved,overdraft,acc,") && line.contains("ap-south eu-west us-east"), "{line}");
    let trail_csv = api
        .http
        .get(format!("{}/api/export/audit.csv", api.base))
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(trail_csv.starts_with("seq,at,actor,action,case_id,proposal_id,reason,before,after,hash"));
    assert!(trail_csv.lines().any(|l| l.contains("case.resolved") && l.contains(&case_id)), "{trail_csv}");

    // The trail tells the story, and the chain holds.
    let actions: Vec<&str> = done["audit"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    // Opened as soon as a region saw it, or first closed as benign while only two debits were
    // applied somewhere and updated when the third made it an overdraft.
    assert!(actions.contains(&"case.opened") || actions.contains(&"case.updated"), "{actions:?}");
    for expected in
        ["proposal.created", "proposal.approved", "execution.started", "posting.acknowledged", "case.resolved"]
    {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let pool = reconcile::connect(&db).await.unwrap();
    assert!(matches!(reconcile::audit::verify(&pool).await.unwrap(), reconcile::audit::Verdict::Intact(n) if n >= 6));
    // Editing one row behind the trigger's back breaks the chain at that row.
    let target: i64 =
        done["audit"].as_array().unwrap().iter().find(|e| e["action"] == "proposal.created").unwrap()["seq"]
            .as_i64()
            .unwrap();
    let refused =
        sqlx::query("UPDATE audit SET reason = 'nothing to see' WHERE seq = $1").bind(target).execute(&pool).await;
    assert!(refused.is_err(), "the trail is append-only");
    sqlx::query("ALTER TABLE audit DISABLE TRIGGER audit_append_only").execute(&pool).await.unwrap();
    sqlx::query("UPDATE audit SET reason = 'nothing to see' WHERE seq = $1").bind(target).execute(&pool).await.unwrap();
    assert_eq!(
        reconcile::audit::verify(&pool).await.unwrap(),
        reconcile::audit::Verdict::Broken { seq: target, why: "its content does not match its hash".into() }
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_rejections_failures_and_the_second_approver() {
    let mut regions = Regions::start().await;
    let (running, api, staff, _db) = service(&regions).await;
    let (viewer, resolver, approver) = (staff.token("viewer"), staff.token("resolver"), staff.token("approver"));
    regions.open(0, "world", "USD", true).await;
    regions.open(0, "ops", "USD", false).await;
    regions.open(0, "empty", "USD", false).await;
    regions.converged(&["world", "ops", "empty"], WAIT).await;
    // One account opened in two regions with different currencies: frozen everywhere.
    regions.pause().await;
    regions.open(0, "dual", "USD", false).await;
    regions.open(1, "dual", "EUR", false).await;
    regions.resume().await;
    // Once every region has reported it (the first report may come before us-east has applied
    // eu-west's opening, and until then us-east still takes transfers on its own definition).
    let cases = api
        .wait_cases(viewer, "kind=account-definition", WAIT, |cs| {
            cs.len() == 1 && cs[0]["regions"].as_array().is_some_and(|r| r.len() == 3)
        })
        .await;
    let case_id = cases[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/cases/{case_id}/proposals");

    // A reversal makes no sense here, and a definition nobody opened is refused by the regions.
    let wrong = api
        .post(
            &path,
            resolver,
            json!({"action": "adjust", "from": "world", "to": "ops", "amount": 5, "currency": "USD", "reason": "x"}),
        )
        .await;
    assert_eq!((wrong.status, wrong.problem()), (422, "resolution-not-applicable"));
    // Rejected first: back to open, the reason kept.
    let p = api.post(&path, resolver, json!({"action": "define", "currency": "EUR", "allow_negative": false, "reason": "eu-west's opening is the real one"})).await;
    assert_eq!(p.status, 201, "{}", p.body);
    let pid = p.body["id"].as_str().unwrap().to_owned();
    let no_reason = api.post(&format!("/api/proposals/{pid}/reject"), approver, json!({})).await;
    assert_eq!((no_reason.status, no_reason.problem()), (400, "invalid-request"));
    let r = api
        .post(&format!("/api/proposals/{pid}/reject"), approver, json!({"reason": "check with the customer first"}))
        .await;
    assert_eq!((r.status, r.body["case_state"].as_str()), (200, Some("open")), "{}", r.body);
    let case = api.get(&format!("/api/cases/{case_id}"), viewer).await.body;
    assert_eq!(case["proposals"][0]["rejection_reason"], "check with the customer first");
    assert!(scrape(&api).await.contains("reconcile_proposals_rejected_total 1"));
    let frozen = regions.transfer(0, "world", "dual", 5).await;
    assert_eq!((frozen.status, frozen.problem()), (409, "account-frozen"), "still frozen");

    // us-east's USD opening, which the deterministic rule did not pick (eu-west sorts first).
    let p = api
        .post(
            &path,
            resolver,
            json!({"action": "define", "currency": "USD", "allow_negative": false, "reason": "customer confirmed USD"}),
        )
        .await;
    let pid = p.body["id"].as_str().unwrap().to_owned();
    assert_eq!(api.post(&format!("/api/proposals/{pid}/approve"), approver, json!({})).await.status, 200);
    api.wait_state(viewer, &case_id, "resolved", WAIT).await;
    for i in 0..3 {
        let a = regions.get(i, "/v1/accounts/dual").await.body;
        assert_eq!((a["currency"].as_str(), a["frozen"].as_bool()), (Some("USD"), Some(false)), "region {i}: {a}");
    }
    assert_eq!(regions.transfer(0, "world", "dual", 5).await.status, 201, "unfrozen under the chosen definition");

    // A posting a region refuses for good (no funds) fails the proposal and reopens the case.
    regions.pause().await;
    regions.transfer(0, "world", "ops", 100).await;
    regions.transfer(1, "world", "ops", 100).await;
    regions.resume().await;
    let benign = api.wait_cases(viewer, "account=ops&kind=concurrent-benign", WAIT, |cs| !cs.is_empty()).await;
    assert_eq!(benign[0]["state"], "closed");
    // A duplicate-intent case: one key executed in two regions.
    regions.pause().await;
    for i in [0, 1] {
        let r = regions
            .send(
                i,
                reqwest::Method::POST,
                "/v1/transfers",
                Some(json!({"from": "world", "to": "ops", "amount": 7000})),
                Some("order-1"),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    regions.resume().await;
    let dup = api
        .wait_cases(viewer, "kind=duplicate-intent", WAIT, |cs| cs.len() == 1 && cs[0]["amount_at_risk"] == 7000)
        .await;
    let dup_id = dup[0]["id"].as_str().unwrap().to_owned();
    let dpath = format!("/api/cases/{dup_id}/proposals");
    let p = api.post(&dpath, resolver, json!({"action": "adjust", "from": "empty", "to": "world", "amount": 7000, "currency": "USD", "reason": "wrong account"})).await;
    let pid = p.body["id"].as_str().unwrap().to_owned();
    // Above the 1,000 threshold: two different approvers.
    let first = api.post(&format!("/api/proposals/{pid}/approve"), approver, json!({})).await;
    assert_eq!(first.body["case_state"], "proposed", "{}", first.body);
    let twice = api.post(&format!("/api/proposals/{pid}/approve"), approver, json!({})).await;
    assert_eq!((twice.status, twice.problem()), (409, "already-approved"));
    let second = api.post(&format!("/api/proposals/{pid}/approve"), staff.token("approver2"), json!({})).await;
    assert_eq!(second.body["case_state"], "approved", "{}", second.body);
    let case = api.wait_state(viewer, &dup_id, "open", WAIT).await;
    let failure = case["proposals"][0]["failure"].as_str().unwrap();
    assert!(failure.contains("insufficient-funds"), "{failure}");
    assert_eq!(regions.balance(0, "empty").await, 0, "nothing moved");

    let p = api.post(&dpath, resolver, json!({"action": "reverse", "event_id": case["conflict"]["events"][1]["event_id"], "reason": "the retry ran twice"})).await;
    assert_eq!(p.status, 201, "{} {case}", p.body);
    let pid = p.body["id"].as_str().unwrap().to_owned();
    api.post(&format!("/api/proposals/{pid}/approve"), approver, json!({})).await;
    api.post(&format!("/api/proposals/{pid}/approve"), staff.token("approver2"), json!({})).await;
    api.wait_state(viewer, &dup_id, "resolved", WAIT).await;
    let b = regions.converged(&["ops", "world"], WAIT).await;
    assert_eq!(
        b,
        vec![7200, -7205],
        "ops: 200 of benign credits and one execution of the order; world also paid 5 to dual"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_offsets_and_a_lost_service_neither_lose_nor_double_a_case() {
    let mut regions = Regions::start().await;
    let cfg = regions.reconcile_config();
    let staff = Staff::create(&cfg.database_url).await;
    let viewer = staff.token("viewer").to_owned();
    let first = reconcile::start(cfg.clone()).await.unwrap();
    let api = Api::new(format!("http://{}", first.addr()));
    regions.three_region_overdraft("acc").await;
    api.wait_cases(&viewer, "", WAIT, |cs| {
        cs.iter().any(|c| c["kind"] == "overdraft" && c["regions"].as_array().unwrap().len() == 3)
    })
    .await;
    // Reports may still arrive (an episode merged into another supersedes its case): wait until the
    // cases stay the same for a while, then take them as the reference.
    let pool = first.pool.clone();
    let cases = async || -> Vec<(uuid::Uuid, String)> {
        sqlx::query_as("SELECT id, state FROM cases ORDER BY id").fetch_all(&pool).await.unwrap()
    };
    let mut before = cases().await;
    let mut stable = 0;
    while stable < 6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cases().await;
        stable = if now == before { stable + 1 } else { 0 };
        before = now;
    }
    first.stop().await;

    // The same database, a new consumer group: every report is read again.
    let replay = reconcile::start(ReconcileConfigExt::fresh_group(cfg.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(cases().await, before, "the same cases in the same states, none doubled");
    replay.stop().await;

    // A new database with the backfill alone (no Kafka records reach it: its group starts at the
    // end): every live case is found from the regions' GET /v1/conflicts (a superseded episode is
    // no longer there: merged into the one that lists its events).
    let live: Vec<String> = before.iter().filter(|(_, s)| s != "superseded").map(|(id, _)| id.to_string()).collect();
    let mut lost = regions.reconcile_config();
    lost.regions.iter_mut().for_each(|r| r.kafka_bootstrap = "127.0.0.1:1".into());
    let staff2 = Staff::create(&lost.database_url).await;
    let rebuilt = reconcile::start(lost).await.unwrap();
    let api = Api::new(format!("http://{}", rebuilt.addr()));
    let found = api.wait_cases(staff2.token("viewer"), "", WAIT, |cs| cs.len() == live.len()).await;
    let mut a = ids(&found);
    a.sort();
    assert_eq!(a, live);
    rebuilt.stop().await;
    regions.pause().await;
}

trait ReconcileConfigExt {
    fn fresh_group(self) -> Self;
}

impl ReconcileConfigExt for reconcile::config::ReconcileConfig {
    fn fresh_group(mut self) -> Self {
        self.consumer_group = format!("reconcile-{}", uuid::Uuid::new_v4().simple());
        self
    }
}

/// An overdraft of more transfers than a case fetches (`BRANCHES_MAX`): one case, the first
/// `BRANCHES_MAX` transfers side by side, the whole count on the case and its page, the amount at
/// risk the whole overdraft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdraft_of_more_transfers_than_a_case_shows_lists_the_first_and_counts_them_all() {
    const PER_REGION: usize = reconcile::intake::BRANCHES_MAX / 3 + 7;
    const DEBIT: i64 = 10;
    const FUNDED: i64 = 1_000;
    let mut regions = Regions::start().await;
    let (running, api, staff, db) = service(&regions).await;
    let viewer = staff.token("viewer");
    regions.open(0, "world", "USD", true).await;
    for id in ["hot", "sink"] {
        regions.open(0, id, "USD", false).await;
    }
    assert_eq!(regions.transfer(0, "world", "hot", FUNDED).await.status, 201);
    regions.converged(&["hot", "sink", "world"], WAIT).await;
    // Partitioned, each region alone debits `hot` within what it sees (PER_REGION × DEBIT is
    // less than FUNDED); together they overdraw it.
    regions.pause().await;
    for i in 0..3 {
        for _ in 0..PER_REGION {
            let r = regions.transfer(i, "hot", "sink", DEBIT).await;
            assert_eq!(r.status, 201, "region {i} accepts on its own: {}", r.body);
        }
    }
    regions.resume().await;
    let debits = 3 * PER_REGION;
    assert!(debits > reconcile::intake::BRANCHES_MAX, "the overdraft names more transfers than a case shows");
    let overdrawn = FUNDED - DEBIT * debits as i64;
    regions.wait_balance("hot", overdrawn, WAIT).await;

    let cases = api
        .wait_cases(viewer, "account=hot", WAIT, |cs| {
            cs.len() == 1 && cs[0]["kind"] == "overdraft" && cs[0]["regions"].as_array().is_some_and(|r| r.len() == 3)
        })
        .await;
    let case_id = cases[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(cases[0]["amount_at_risk"], -overdrawn, "the joint balance was {overdrawn}");
    let case = api.wait_case(viewer, &case_id, WAIT, "had its branches", |c| c["branches"].is_array()).await;
    let branches = case["branches"].as_array().expect("branches fetched");
    assert_eq!(branches.len(), reconcile::intake::BRANCHES_MAX, "{case}");
    // The first ones by event id, as every region lists them; each a debit of `hot`.
    let events: Vec<&str> = branches.iter().map(|b| b["event_id"].as_str().unwrap()).collect();
    assert!(events.windows(2).all(|w| w[0] < w[1]), "in event id order");
    assert!(branches.iter().all(|b| b["from"] == "hot" && b["amount"] == DEBIT), "{branches:?}");
    assert_eq!(case["conflict"]["event_count"], debits as u64);
    let pool = reconcile::connect(&db).await.unwrap();
    let session = reconcile::auth::login(
        &pool,
        "viewer",
        common::PASSWORD,
        5,
        chrono::Duration::minutes(1),
        chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    let page = api
        .http
        .get(format!("{}/cases/{case_id}", api.base))
        .header("Cookie", format!("{}={}", reconcile::auth::SESSION_COOKIE, session.token))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let shown = format!("The first {} of {debits} events are shown", reconcile::intake::BRANCHES_MAX);
    assert!(page.contains(&shown), "the page says how many it does not show: {page}");
    running.stop().await;
}
