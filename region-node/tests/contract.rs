//! The node against its own contract: the description it serves at `/openapi.json` is the file
//! kept in the repository, and schemathesis (installed by `scripts/install-deps.sh`) runs every
//! described operation against a live node with generated valid and invalid requests. Checks:
//! no 5xx, every status, media type and body as described, every error an
//! `application/problem+json` whose `type` is a documented one; and, from schemathesis's record of
//! every exchange (a HAR file), that the rows the ledger gained are exactly those its successful
//! writes account for, so no refused request wrote anything.

mod common;

use common::{TestNode, assert_ledger_consistent, start};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kept description.
const OPENAPI_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
/// Where `scripts/install-deps.sh` puts schemathesis (its own virtual environment).
const SCHEMATHESIS_VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/schemathesis/bin/schemathesis");
/// Generated requests per operation and phase: enough to cross every bound and refusal the
/// description states, small enough to finish in about a minute on two cores.
const EXAMPLES_MAX: u32 = 100;
/// What the node is held to: no 5xx, and every status, media type and body as described.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// The run's whole time budget: a run past it is a failure, not a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The generator's seed unless `CONTRACT_SEED` gives another (printed, to reproduce a failure).
const SEED_DEFAULT: u64 = 20261201;

/// The schemathesis binary: `SCHEMATHESIS` if set, else the one `install-deps.sh` installs.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| SCHEMATHESIS_VENV.into());
    assert!(path.exists(), "{} is missing: run scripts/install-deps.sh (./dev test does)", path.display());
    path
}

/// Row counts of what a write adds, so the difference before and after the run can be compared
/// with what the run's successful writes account for.
async fn counts(node: &TestNode) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for (name, sql) in [
        ("accounts", "SELECT count(*) FROM accounts"),
        ("ledger_events", "SELECT count(*) FROM ledger_events"),
        ("outbox_records", "SELECT count(*) FROM outbox_records"),
        ("transfers", "SELECT count(*) FROM transfers"),
        ("entries", "SELECT count(*) FROM entries"),
        ("idempotency_keys", "SELECT count(*) FROM idempotency_keys"),
        ("conflicts", "SELECT count(*) FROM conflicts"),
        ("resolved_conflicts", "SELECT count(*) FROM conflicts WHERE status = 'resolved'"),
        ("monitors", "SELECT count(*) FROM monitors"),
        ("deleted_monitors", "SELECT count(*) FROM monitors WHERE deleted_at IS NOT NULL"),
    ] {
        out.insert(name, sqlx::query_scalar::<_, i64>(sql).fetch_one(&node.db.pool).await.unwrap());
    }
    out
}

/// One exchange of the run, from the HAR file.
#[derive(Debug)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
    request_headers: BTreeMap<String, String>,
    response_headers: BTreeMap<String, String>,
    body: Value,
}

fn headers(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|h| (h["name"].as_str().unwrap().to_ascii_lowercase(), h["value"].as_str().unwrap().to_owned()))
        .collect()
}

fn exchanges(har: &Path) -> Vec<Exchange> {
    let har: Value = serde_json::from_slice(&std::fs::read(har).expect("schemathesis wrote its HAR report")).unwrap();
    har["log"]["entries"]
        .as_array()
        .expect("HAR entries")
        .iter()
        .map(|e| {
            let url = reqwest::Url::parse(e["request"]["url"].as_str().unwrap()).unwrap();
            let text = e["response"]["content"]["text"].as_str().unwrap_or_default();
            Exchange {
                method: e["request"]["method"].as_str().unwrap().to_owned(),
                path: url.path().to_owned(),
                status: e["response"]["status"].as_u64().unwrap() as u16,
                request_headers: headers(&e["request"]["headers"]),
                response_headers: headers(&e["response"]["headers"]),
                body: serde_json::from_str(text).unwrap_or(Value::Null),
            }
        })
        .collect()
}

/// The problem types the description documents.
fn documented_types(openapi: &Value) -> BTreeSet<String> {
    openapi["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
        .as_array()
        .expect("Problem.type enumerates the problem types")
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_node_true_to_its_description_and_refusals_write_nothing() {
    let node = start(|_| {}).await;
    // Seeds: accounts to move money between (schemathesis's examples name `alice` and `bob`).
    node.open("world", "USD", true).await;
    node.open("alice", "USD", false).await;
    node.open("bob", "USD", false).await;
    node.open("eur-1", "EUR", false).await;
    assert_eq!(node.transfer("world", "alice", 1_000_000).await.status, 201);
    // One key reaching every route, so the replication and resolve routes are exercised beyond 403.
    let key = format!("contract-{}", uuid::Uuid::new_v4());
    region_node::api::auth_ensure_key(&node.db.pool, "contract", &key, &["read", "write", "replication", "reconcile"])
        .await
        .unwrap();

    // The served description is the kept file, byte for byte, and needs no key.
    let served = node.http.get(format!("{}/openapi.json", node.base)).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served = served.text().await.unwrap();
    let kept = std::fs::read_to_string(OPENAPI_FILE).expect("region-node/openapi.json");
    assert!(
        served == kept,
        "the node serves another description than region-node/openapi.json; regenerate the file with \
         `UPDATE_OPENAPI=1 cargo test -p region-node --lib openapi`"
    );
    let openapi: Value = serde_json::from_str(&kept).unwrap();

    let before = counts(&node).await;
    let seed = std::env::var("CONTRACT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED_DEFAULT);
    let report_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("contract-{seed}"));
    let har = report_dir.join("exchanges.har");
    let _ = std::fs::remove_dir_all(&report_dir);
    std::fs::create_dir_all(&report_dir).unwrap();
    // `CONTRACT_CHECKS=all` (or another list) explores beyond the contract this test holds the node to.
    let checks = std::env::var("CONTRACT_CHECKS").unwrap_or_else(|_| CHECKS.to_owned());
    let started = Instant::now();
    let run = tokio::process::Command::new(schemathesis())
        .arg("run")
        .arg(format!("{}/openapi.json", node.base))
        .args(["--url", &node.base])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", &checks])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &EXAMPLES_MAX.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--workers", "1", "--request-timeout", "10", "--suppress-health-check", "all"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .args(["--output-sanitize", "false"])
        .env("NO_COLOR", "1")
        .current_dir(&report_dir)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(RUN_TIMEOUT, run).await.expect("schemathesis finishes in time").unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("schemathesis (seed {seed}, {:.1} s):\n{stdout}", elapsed.as_secs_f64());
    assert!(
        run.status.success(),
        "schemathesis found the node untrue to its description (seed {seed}, report in {}):\n{stdout}\n{}",
        report_dir.display(),
        String::from_utf8_lossy(&run.stderr)
    );

    // Every error, whatever schemathesis checked, is a problem of a documented type.
    let exchanges = exchanges(&har);
    let documented = documented_types(&openapi);
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for e in &exchanges {
        *by_status.entry(e.status).or_default() += 1;
        if e.status >= 400 {
            let ct = e.response_headers.get("content-type").map(String::as_str).unwrap_or_default();
            assert_eq!(ct, "application/problem+json", "{} {} answered {}: {}", e.method, e.path, e.status, e.body);
            let kind = e.body["type"].as_str().unwrap_or_default();
            assert!(documented.contains(kind), "{} {} answered an undocumented type: {}", e.method, e.path, e.body);
            assert_eq!(e.body["status"], e.status, "the problem's status is the response's");
        }
    }
    println!("{} exchanges by status: {by_status:?}", exchanges.len());
    assert!(exchanges.len() > 100, "schemathesis sent too few requests to mean anything: {}", exchanges.len());

    // What the successful writes account for, and nothing else.
    let created =
        |path: &'static str| exchanges.iter().filter(move |e| e.method == "POST" && e.path == path && e.status == 201);
    let opened = created("/v1/accounts").count() as i64;
    let transfers: Vec<&Exchange> = created("/v1/transfers")
        .filter(|e| e.response_headers.get("idempotent-replayed").is_none_or(|v| v != "true"))
        .collect();
    let moved = transfers.len() as i64;
    let keyed = transfers.iter().filter(|e| e.request_headers.contains_key("idempotency-key")).count() as i64;
    let resolved =
        exchanges.iter().filter(|e| e.method == "POST" && e.path.ends_with("/resolve") && e.status == 200).count()
            as i64;
    let monitors = created("/v1/monitors").count() as i64;
    // Deleting twice answers 200 twice: count the monitors, not the answers.
    let deleted: BTreeSet<&str> = exchanges
        .iter()
        .filter(|e| e.method == "DELETE" && e.path.starts_with("/v1/monitors/") && e.status == 200)
        .map(|e| e.path.as_str())
        .collect();
    let after = counts(&node).await;
    let gained: BTreeMap<&str, i64> = after.iter().map(|(k, v)| (*k, v - before[k])).collect();
    let expected: BTreeMap<&str, i64> = BTreeMap::from([
        ("accounts", opened),
        ("ledger_events", opened + moved),
        ("outbox_records", opened + 2 * moved),
        ("transfers", moved),
        ("entries", 2 * moved),
        ("idempotency_keys", keyed),
        ("conflicts", 0),
        ("resolved_conflicts", resolved),
        ("monitors", monitors),
        ("deleted_monitors", deleted.len() as i64),
    ]);
    println!("rows gained: {gained:?}");
    assert_eq!(gained, expected, "the ledger gained rows that no successful write accounts for");
    assert!(opened + moved > 0, "no generated write succeeded, so the count above proves little");
    assert_ledger_consistent(&node.db.pool).await;
    node.stop().await;
}
