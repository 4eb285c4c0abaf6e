//! Who may do what, through the JSON API (tokens) and the web forms (sessions and CSRF): every role
//! against every action, plus logged-out, expired, revoked and cross-site requests, and bad input on
//! every form and endpoint. Every refused request is checked to have changed nothing.
//!
//! Cases are filed through intake's own entry point (as a region's report would be); the regions
//! are unreachable, so approved work stays `approved` and the check is about the decision alone.

mod common;

use common::{PASSWORD, Staff};
use reconcile::config::{ReconcileConfig, RegionEndpoint};
use reconcile::store::{self, Detected};
use serde_json::{Value, json};
use sqlx::PgPool;

struct Service {
    running: reconcile::Running,
    base: String,
    pool: PgPool,
    staff: Staff,
    http: reqwest::Client,
}

async fn service() -> Service {
    let region = testkit::regions(1)[0].clone();
    let cfg = ReconcileConfig {
        http_addr: "127.0.0.1:0".into(),
        database_url: region.empty_database(),
        regions: vec![RegionEndpoint {
            name: "us-east".into(),
            api_url: "http://127.0.0.1:1".into(),
            kafka_bootstrap: "127.0.0.1:1".into(),
        }],
        node_api_key: "unused".into(),
        approval_threshold_minor: 1_000,
        login_failures_max: 3,
        ..ReconcileConfig::default()
    };
    let staff = Staff::create(&cfg.database_url).await;
    let running = reconcile::start(cfg).await.unwrap();
    let base = format!("http://{}", running.addr());
    let pool = running.pool.clone();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Service { running, base, pool, staff, http }
}

/// A fresh open overdraft case, filed as a region's report.
async fn open_case(pool: &PgPool) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    let d = Detected {
        conflict_id: id,
        kind: "overdraft".into(),
        account: "acc".into(),
        content: json!({"events": [], "event_count": 2, "joint_vector": {}, "joint_balance": -50}),
        region: "us-east".into(),
        detected_at: None,
        status: None,
    };
    store::record_detected(pool, &d).await.unwrap();
    id
}

/// A fresh case with a proposal by the resolver (an adjustment, so it needs no branches).
async fn proposed_case(s: &Service, amount: i64) -> (uuid::Uuid, uuid::Uuid) {
    let case = open_case(&s.pool).await;
    let resolver =
        reconcile::auth::Principal { username: "resolver".into(), role: reconcile::case::Role::Resolver, csrf: None };
    let r = store::Resolution::Adjust { from: "shop".into(), to: "acc".into(), amount, currency: "USD".into() };
    let p = store::propose(&s.pool, 1_000, case, &resolver, &r, "top up").await.unwrap();
    (case, p)
}

/// What a request could have changed: the case's state, its proposals and the trail's length.
async fn snapshot(pool: &PgPool, case: uuid::Uuid) -> (String, Vec<(String, Vec<String>)>, i64) {
    let state: String =
        sqlx::query_scalar("SELECT state FROM cases WHERE id = $1").bind(case).fetch_one(pool).await.unwrap();
    let proposals: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT state, approved_by FROM proposals WHERE case_id = $1 ORDER BY proposed_at")
            .bind(case)
            .fetch_all(pool)
            .await
            .unwrap();
    let trail: i64 = sqlx::query_scalar("SELECT count(*) FROM audit").fetch_one(pool).await.unwrap();
    (state, proposals, trail)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    List,
    Read,
    Propose,
    Approve,
    Reject,
    Trail,
    Export,
}

const ACTS: [Act; 7] = [Act::List, Act::Read, Act::Propose, Act::Approve, Act::Reject, Act::Trail, Act::Export];

fn allowed(role: &str, act: Act) -> bool {
    match act {
        Act::List | Act::Read | Act::Trail | Act::Export => role != "nobody",
        Act::Propose => ["resolver", "admin"].contains(&role),
        Act::Approve | Act::Reject => ["approver", "admin"].contains(&role),
    }
}

async fn api_call(s: &Service, token: Option<&str>, act: Act, case: uuid::Uuid, proposal: uuid::Uuid) -> (u16, Value) {
    let (method, path, body) = match act {
        Act::List => (reqwest::Method::GET, "/api/cases".to_owned(), None),
        Act::Read => (reqwest::Method::GET, format!("/api/cases/{case}"), None),
        Act::Propose => (
            reqwest::Method::POST,
            format!("/api/cases/{case}/proposals"),
            Some(json!({"action": "accept", "reason": "fine as is"})),
        ),
        Act::Approve => (reqwest::Method::POST, format!("/api/proposals/{proposal}/approve"), Some(json!({}))),
        Act::Reject => {
            (reqwest::Method::POST, format!("/api/proposals/{proposal}/reject"), Some(json!({"reason": "no"})))
        }
        Act::Trail => (reqwest::Method::GET, "/api/audit".to_owned(), None),
        Act::Export => (reqwest::Method::GET, "/api/export/cases.csv".to_owned(), None),
    };
    let mut req = s.http.request(method, format!("{}{path}", s.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_every_role_against_every_action() {
    let s = service().await;
    let revoked = s.staff.token("admin").to_owned();
    let admin2 = reconcile::auth::issue_token(&s.pool, "admin", reconcile::case::Role::Admin, "second").await.unwrap();
    let viewer_scoped =
        reconcile::auth::issue_token(&s.pool, "admin", reconcile::case::Role::Viewer, "read-only automation")
            .await
            .unwrap();
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1")
        .bind(reconcile::auth::digest(&revoked))
        .execute(&s.pool)
        .await
        .unwrap();
    let callers: Vec<(&str, Option<String>)> = vec![
        ("viewer", Some(s.staff.token("viewer").to_owned())),
        ("resolver", Some(s.staff.token("resolver").to_owned())),
        ("approver", Some(s.staff.token("approver").to_owned())),
        ("admin", Some(admin2)),
        // A token scoped below its owner acts with its scope.
        ("viewer", Some(viewer_scoped)),
        ("nobody", None),
        ("nobody", Some("rct_not-a-token".into())),
        ("nobody", Some(revoked)),
    ];
    for (role, token) in &callers {
        for act in ACTS {
            let (case, proposal) = proposed_case(&s, 10).await;
            let case = if act == Act::Propose { open_case(&s.pool).await } else { case };
            let before = snapshot(&s.pool, case).await;
            let (status, body) = api_call(&s, token.as_deref(), act, case, proposal).await;
            let after = snapshot(&s.pool, case).await;
            if allowed(role, act) {
                assert!((200..300).contains(&status), "{role} {act:?}: {status} {body}");
                if matches!(act, Act::Propose | Act::Approve | Act::Reject) {
                    assert_ne!(before, after, "{role} {act:?} changed the case");
                }
            } else {
                let expected = if *role == "nobody" { 401 } else { 403 };
                assert_eq!(status, expected, "{role} {act:?}: {body}");
                assert!(body["type"].as_str().is_some_and(|t| t.starts_with("https://ledger.dev/problems/")), "{body}");
                assert_eq!(before, after, "{role} {act:?} was refused and changed nothing");
            }
        }
    }
    // Maker-checker: an admin may both propose and approve, but never their own proposal.
    let case = open_case(&s.pool).await;
    let admin = reconcile::auth::issue_token(&s.pool, "admin", reconcile::case::Role::Admin, "third").await.unwrap();
    let (status, body) = {
        let r = s
            .http
            .post(format!("{}/api/cases/{case}/proposals", s.base))
            .bearer_auth(&admin)
            .json(&json!({"action": "accept", "reason": "fine"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 201);
    let proposal: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
    for act in [Act::Approve, Act::Reject] {
        let before = snapshot(&s.pool, case).await;
        let (status, body) = api_call(&s, Some(&admin), act, case, proposal).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (403, Some("https://ledger.dev/problems/maker-checker")),
            "{act:?}"
        );
        assert_eq!(before, snapshot(&s.pool, case).await);
    }
    s.running.stop().await;
}

/// A browser session: its cookie and its CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

async fn login(s: &Service, username: &str, password: &str) -> Result<Browser, (u16, String)> {
    let page = s.http.get(format!("{}/login", s.base)).send().await.unwrap();
    let login_cookie = cookie_of(&page, "reconcile_login").unwrap();
    let csrf = csrf_of(&page.text().await.unwrap());
    let r = s
        .http
        .post(format!("{}/login", s.base))
        .header("cookie", login_cookie)
        .form(&[("username", username), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    if r.status() != 303 {
        return Err((r.status().as_u16(), r.text().await.unwrap()));
    }
    let set = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    let session = set.iter().find(|c| c.starts_with("reconcile_session=")).unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(session.contains(attr), "{session}");
    }
    let cookie = session.split(';').next().unwrap().to_owned();
    let queue = s.http.get(format!("{}/cases", s.base)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(queue.status(), 200);
    Ok(Browser { cookie, csrf: csrf_of(&queue.text().await.unwrap()) })
}

async fn form(
    s: &Service,
    b: Option<&Browser>,
    csrf: Option<&str>,
    act: Act,
    case: uuid::Uuid,
    proposal: uuid::Uuid,
) -> (u16, String) {
    let (path, mut fields): (String, Vec<(&str, String)>) = match act {
        Act::Propose => {
            (format!("/cases/{case}/proposals"), vec![("action", "accept".into()), ("reason", "fine as is".into())])
        }
        Act::Approve => (format!("/proposals/{proposal}/approve"), vec![]),
        Act::Reject => (format!("/proposals/{proposal}/reject"), vec![("reason", "no".into())]),
        _ => unreachable!("forms only change things"),
    };
    if let Some(c) = csrf {
        fields.push(("csrf", c.to_owned()));
    }
    let mut req = s.http.post(format!("{}{path}", s.base)).form(&fields);
    if let Some(b) = b {
        req = req.header("cookie", &b.cookie);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_every_role_logged_out_expired_and_cross_site() {
    let s = service().await;
    let mut sessions = Vec::new();
    for role in ["viewer", "resolver", "approver", "admin"] {
        sessions.push((role, login(&s, role, PASSWORD).await.unwrap()));
    }
    for (role, b) in &sessions {
        // Pages: every role reads.
        let (case, _) = proposed_case(&s, 10).await;
        for page in ["/cases", &format!("/cases/{case}"), "/audit", "/export/audit.csv"] {
            let r = s.http.get(format!("{}{page}", s.base)).header("cookie", &b.cookie).send().await.unwrap();
            assert_eq!(r.status(), 200, "{role} {page}");
        }
        for act in [Act::Propose, Act::Approve, Act::Reject] {
            let (case, proposal) = proposed_case(&s, 10).await;
            let case = if act == Act::Propose { open_case(&s.pool).await } else { case };
            // Cross-site: the cookie without the form's token; then a wrong token.
            for csrf in [None, Some("0123")] {
                let before = snapshot(&s.pool, case).await;
                let (status, page) = form(&s, Some(b), csrf, act, case, proposal).await;
                assert_eq!(status, 403, "{role} {act:?} csrf {csrf:?}");
                assert!(page.contains("csrf-token-invalid"), "{page}");
                assert_eq!(before, snapshot(&s.pool, case).await);
            }
            let before = snapshot(&s.pool, case).await;
            let (status, page) = form(&s, Some(b), Some(&b.csrf), act, case, proposal).await;
            if allowed(role, act) {
                assert_eq!(status, 303, "{role} {act:?}: {page}");
                assert_ne!(before, snapshot(&s.pool, case).await);
            } else {
                assert_eq!(status, 403, "{role} {act:?}: {page}");
                assert!(page.contains("forbidden"), "{page}");
                assert_eq!(before, snapshot(&s.pool, case).await);
            }
        }
    }
    // Logged out: pages send to the login page, forms are refused.
    let (case, proposal) = proposed_case(&s, 10).await;
    let r = s.http.get(format!("{}/cases/{case}", s.base)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/login"));
    let before = snapshot(&s.pool, case).await;
    assert_eq!(form(&s, None, Some("x"), Act::Approve, case, proposal).await.0, 401);
    assert_eq!(before, snapshot(&s.pool, case).await);
    // An expired session is no session.
    let approver = &sessions.iter().find(|(r, _)| *r == "approver").unwrap().1;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE username = 'approver'")
        .execute(&s.pool)
        .await
        .unwrap();
    assert_eq!(form(&s, Some(approver), Some(&approver.csrf), Act::Approve, case, proposal).await.0, 401);
    assert_eq!(before, snapshot(&s.pool, case).await);
    // Logging out ends the session.
    let viewer = &sessions[0].1;
    let out = s
        .http
        .post(format!("{}/logout", s.base))
        .header("cookie", &viewer.cookie)
        .form(&[("csrf", &viewer.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let r = s.http.get(format!("{}/cases", s.base)).header("cookie", &viewer.cookie).send().await.unwrap();
    assert_eq!(r.status(), 303, "the old cookie no longer works");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_throttled_and_locked_out() {
    let s = service().await;
    // Three failures in a row (the configured limit) lock the account, even for the right password.
    for _ in 0..3 {
        let (status, page) = login(&s, "resolver", "wrong password!!").await.err().unwrap();
        assert_eq!(status, 401);
        assert!(page.contains("wrong username or password"));
    }
    let (status, page) = login(&s, "resolver", PASSWORD).await.err().unwrap();
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("account-locked"));
    // An unknown user gets the same answer as a wrong password.
    assert_eq!(login(&s, "nobody", PASSWORD).await.err().unwrap().0, 401);
    // A login form posted without its double-submit token is refused.
    let r = s
        .http
        .post(format!("{}/login", s.base))
        .form(&[("username", "viewer"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another account is unaffected; the lock lifts when it expires.
    assert!(login(&s, "viewer", PASSWORD).await.is_ok());
    sqlx::query("UPDATE staff SET locked_until = now() - interval '1 second' WHERE username = 'resolver'")
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(login(&s, "resolver", PASSWORD).await.is_ok());
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_form_and_endpoint_is_a_clear_error_that_changes_nothing() {
    let s = service().await;
    let resolver = s.staff.token("resolver").to_owned();
    let approver = s.staff.token("approver").to_owned();
    let case = open_case(&s.pool).await;
    let bad_proposals = [
        json!({}),
        json!({"action": "burn", "reason": "x"}),
        json!({"action": "accept"}),
        json!({"action": "accept", "reason": ""}),
        json!({"action": "accept", "reason": "x".repeat(2_001)}),
        json!({"action": "accept", "reason": "x", "amount": 5}),
        json!({"action": "accept", "reason": "x", "surprise": true}),
        json!({"action": "reverse", "reason": "x"}),
        json!({"action": "reverse", "event_id": "not-a-uuid", "reason": "x"}),
        json!({"action": "reverse", "event_id": uuid::Uuid::new_v4(), "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": 0, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": -5, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": 1_000_000_000_000_001i64, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": u64::MAX, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": 1.5, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": "10", "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "a", "amount": 10, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a b", "to": "c", "amount": 10, "currency": "USD", "reason": "x"}),
        json!({"action": "adjust", "from": "a", "to": "b", "amount": 10, "currency": "dollars", "reason": "x"}),
        json!({"action": "define", "currency": "EUR", "allow_negative": false, "reason": "x"}),
    ];
    for body in &bad_proposals {
        let before = snapshot(&s.pool, case).await;
        let r = s
            .http
            .post(format!("{}/api/cases/{case}/proposals", s.base))
            .bearer_auth(&resolver)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{body}");
        let problem: Value = r.json().await.unwrap();
        assert!((400..500).contains(&status), "{body}: {status} {problem}");
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{problem}");
        assert_eq!(before, snapshot(&s.pool, case).await, "{body}");
    }
    // Not JSON, not an object, the wrong content.
    for raw in ["{", "[1]", "null", "\"accept\""] {
        let r = s
            .http
            .post(format!("{}/api/cases/{case}/proposals", s.base))
            .bearer_auth(&resolver)
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{raw}");
    }
    // Unknown or malformed ids, queries and bodies elsewhere.
    let (_, proposal) = proposed_case(&s, 10).await;
    let checks: Vec<(reqwest::Method, String, Option<&str>, u16)> = vec![
        (reqwest::Method::GET, "/api/cases/not-a-uuid".into(), None, 404),
        (reqwest::Method::GET, format!("/api/cases/{}", uuid::Uuid::new_v4()), None, 404),
        (reqwest::Method::GET, "/api/cases?state=lost".into(), None, 400),
        (reqwest::Method::GET, "/api/cases?kind=weird".into(), None, 400),
        (reqwest::Method::GET, "/api/cases?limit=0".into(), None, 400),
        (reqwest::Method::GET, "/api/cases?limit=501".into(), None, 400),
        (reqwest::Method::GET, "/api/cases?cursor=-1".into(), None, 400),
        (reqwest::Method::GET, "/api/cases?sort=up".into(), None, 400),
        (reqwest::Method::GET, "/api/audit?after=x".into(), None, 400),
        (reqwest::Method::POST, format!("/api/proposals/{}/approve", uuid::Uuid::new_v4()), Some("{}"), 404),
        (reqwest::Method::POST, format!("/api/proposals/{proposal}/approve"), Some("{\"note\": 1}"), 400),
        (reqwest::Method::POST, format!("/api/proposals/{proposal}/reject"), Some("{}"), 400),
        (reqwest::Method::POST, format!("/api/proposals/{proposal}/reject"), Some("{\"reason\": 5}"), 400),
        (reqwest::Method::POST, format!("/api/proposals/{proposal}/reject"), Some("{\"reason\": \"   \"}"), 400),
    ];
    let proposal_case: uuid::Uuid = sqlx::query_scalar("SELECT case_id FROM proposals WHERE id = $1")
        .bind(proposal)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    for (method, path, body, expected) in checks {
        let before = snapshot(&s.pool, proposal_case).await;
        let mut req = s.http.request(method, format!("{}{path}", s.base)).bearer_auth(&approver);
        if let Some(b) = body {
            req = req.body(b.to_owned()).header("content-type", "application/json");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), expected, "{path} {body:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{path}");
        assert_eq!(before, snapshot(&s.pool, proposal_case).await, "{path}");
    }
    // The same on the forms: the page comes back with the error, nothing changes.
    let b = login(&s, "resolver", PASSWORD).await.unwrap();
    let bad_forms: Vec<Vec<(&str, &str)>> = vec![
        vec![("action", "adjust"), ("from", "a"), ("to", "b"), ("amount", "ten"), ("currency", "USD"), ("reason", "x")],
        vec![("action", "adjust"), ("from", "a"), ("to", "b"), ("amount", "-1"), ("currency", "USD"), ("reason", "x")],
        vec![
            ("action", "adjust"),
            ("from", "a"),
            ("to", "b"),
            ("amount", "99999999999999999999"),
            ("currency", "USD"),
            ("reason", "x"),
        ],
        vec![("action", "adjust"), ("from", "a"), ("to", "b"), ("amount", "10"), ("currency", "USD"), ("reason", "")],
        vec![("action", "reverse"), ("event_id", ""), ("reason", "x")],
        vec![("action", "nope"), ("reason", "x")],
        vec![("reason", "x")],
    ];
    for fields in &bad_forms {
        let before = snapshot(&s.pool, case).await;
        let mut f: Vec<(&str, &str)> = fields.clone();
        f.push(("csrf", &b.csrf));
        let r = s
            .http
            .post(format!("{}/cases/{case}/proposals", s.base))
            .header("cookie", &b.cookie)
            .form(&f)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{fields:?}");
        let page = r.text().await.unwrap();
        assert!(page.contains("role=\"alert\"") && page.contains("invalid-request"), "{fields:?}: the error is shown");
        assert_eq!(before, snapshot(&s.pool, case).await, "{fields:?}");
    }
    let a = login(&s, "approver", PASSWORD).await.unwrap();
    let before = snapshot(&s.pool, proposal_case).await;
    let r = s
        .http
        .post(format!("{}/proposals/{proposal}/reject", s.base))
        .header("cookie", &a.cookie)
        .form(&[("csrf", a.csrf.as_str()), ("reason", " ")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(before, snapshot(&s.pool, proposal_case).await);
    let r = s.http.get(format!("{}/cases?state=lost", s.base)).header("cookie", &a.cookie).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown state"));
    s.running.stop().await;
}

/// The queue pages with a cursor: 120 cases in pages of 50 come back once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_pages_with_a_cursor_past_its_page_size() {
    let s = service().await;
    let mut filed = Vec::new();
    for _ in 0..120 {
        filed.push(open_case(&s.pool).await.to_string());
    }
    let viewer = s.staff.token("viewer").to_owned();
    let (mut seen, mut cursor, mut pages) = (Vec::new(), String::new(), Vec::new());
    loop {
        let r = s.http.get(format!("{}/api/cases?limit=50{cursor}", s.base)).bearer_auth(&viewer).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        let page: Vec<String> =
            body["cases"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
        pages.push(page.len());
        seen.extend(page);
        match body["next"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    assert_eq!(pages, vec![50, 50, 20]);
    assert_eq!(seen, filed, "every case once, in filing order");
    s.running.stop().await;
}
