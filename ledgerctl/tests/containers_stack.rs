//! `ledgerctl up --containers`: three regions from the local images (PostgreSQL, Kafka, node and
//! replicator per region, the router and reconcile), each part a container on the host network;
//! then the node's API contract (schemathesis, as `region-node/tests/contract.rs` runs it) against
//! the first region's container, convergence of concurrent transfers into all three regions, a
//! node killed and started again, and `down` leaving no container.
//!
//! Needs a Docker engine with the images: run by `scripts/containers-tests.sh` only (the cargo
//! feature `containers` builds it; `LEDGER_TEST_BACKEND=containers` must be set, or it fails).

mod common;
use common::Env;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// The kept description of the node's API.
const OPENAPI_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../region-node/openapi.json");
/// Where `scripts/install-deps.sh` puts schemathesis, unless `SCHEMATHESIS` names another.
const SCHEMATHESIS_VENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/schemathesis/bin/schemathesis");
/// The checks, phases, examples per operation and seed of `region-node/tests/contract.rs`.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
const EXAMPLES_MAX: &str = "100";
const SEED: &str = "20261201";
/// Transfers per region in the convergence phase, and concurrent clients per region.
const TRANSFERS_PER_REGION: usize = 120;
const CLIENTS_PER_REGION: usize = 6;

/// Prometheus and Jaeger would stay local processes; this test is about the containers.
fn stack() -> Env {
    Env::new("ledgerctl-containers-", &REGIONS, &["--no-prometheus", "--no-tracing"])
}

impl Env {
    fn manifest(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state().join("env.json")).unwrap()).unwrap()
    }

    /// Names of this stack's containers, running or (with `all`) not.
    fn containers(&self, all: bool) -> Vec<String> {
        let filter = format!("label=ledger.state-dir={}", self.state().display());
        let mut args = vec!["ps", "--filter", &filter, "--format", "{{.Names}}"];
        if all {
            args.push("--all");
        }
        let mut names: Vec<String> = docker(&args).lines().map(str::to_owned).collect();
        names.sort();
        names
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Live processes whose command line mentions `path`, with their pid namespace.
fn processes_mentioning(path: &Path) -> Vec<(u32, String, String)> {
    let needle = path.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()) == Some('Z'))
            .unwrap_or(false);
        if !zombie && cmdline.contains(&needle) && pid != std::process::id() {
            let ns =
                std::fs::read_link(entry.path().join("ns/pid")).map(|l| l.display().to_string()).unwrap_or_default();
            found.push((pid, ns, cmdline));
        }
    }
    found
}

#[test]
fn three_regions_in_containers_keep_the_contract_and_converge() {
    assert_eq!(
        std::env::var("LEDGER_TEST_BACKEND").as_deref(),
        Ok("containers"),
        "this test runs a stack of containers: run it with scripts/containers-tests.sh (LEDGER_TEST_BACKEND=containers, \
         a Docker engine at DOCKER_HOST with the local images)"
    );
    let env = stack();
    let started = Instant::now();
    let up = ok(&env.run(&["up", "--containers"]), "ledgerctl up --containers");
    println!("up --containers in {:.1} s:\n{up}", started.elapsed().as_secs_f64());
    let manifest = env.manifest();

    // Every part is a container: the manifest names 14, the engine runs exactly those, and every
    // recorded pid is its container's main process, in a pid namespace of its own.
    let mut names: Vec<String> = manifest["containers"]["names"]
        .as_array()
        .expect("env.json records the containers")
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4 * REGIONS.len() + 2, "{names:?}");
    assert_eq!(env.containers(false), names, "the engine runs every container of the stack");
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    let mut recorded = Vec::new();
    for r in manifest["regions"].as_array().unwrap() {
        for (part, port) in [("postgres", "postgres_port"), ("kafka", "kafka_port"), ("node", "http_port")] {
            let name = format!("ledger-{part}-{}-{}", r["name"].as_str().unwrap(), r[port]);
            recorded.push((name, r["pids"][part].as_u64().unwrap()));
        }
        let name =
            format!("ledger-replicator-{}-{}", r["name"].as_str().unwrap(), r["http_port"].as_u64().unwrap() + 100);
        recorded.push((name, r["pids"]["replicator"].as_u64().unwrap()));
    }
    recorded.push((format!("ledger-router-{}", env.http_base + 20), manifest["router_pid"].as_u64().unwrap()));
    recorded.push((format!("ledger-reconcile-{}", env.http_base + 10), manifest["reconcile_pid"].as_u64().unwrap()));
    for (name, pid) in &recorded {
        let main_pid = docker(&["inspect", "--format", "{{.State.Pid}}", name]);
        assert_eq!(main_pid, pid.to_string(), "{name}'s main process is the recorded pid");
    }
    let processes = processes_mentioning(&env.state());
    assert!(processes.len() >= recorded.len(), "{processes:?}");
    for (pid, ns, cmdline) in &processes {
        assert_ne!(ns, &ours, "pid {pid} of the stack runs outside any container: {cmdline}");
    }
    let status = ok(&env.run(&["status"]), "status");
    assert_eq!(status.matches("healthy").count(), 4 * REGIONS.len() + 2, "{status}");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let key = manifest["api_key"].as_str().unwrap().to_owned();
    let urls: Vec<String> =
        manifest["regions"].as_array().unwrap().iter().map(|r| r["http_url"].as_str().unwrap().to_owned()).collect();
    let dbs: Vec<String> = manifest["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["postgres_url"].as_str().unwrap().to_owned())
        .collect();
    rt.block_on(contract(&env, &urls[0], &dbs[0], &key));
    rt.block_on(convergence(&urls, &dbs, &key));

    // A node killed through the engine and started again (a new container, the same files).
    let killed = manifest["regions"][1]["pids"]["node"].as_u64().unwrap() as u32;
    ok(&env.run(&["stop", "node", "--region", "eu-west", "--kill"]), "stop --kill");
    assert!(!processes_mentioning(&env.state()).iter().any(|(p, _, _)| *p == killed));
    assert!(!env.run(&["status"]).status.success(), "status reports the killed node");
    ok(&env.run(&["start", "node", "--region", "eu-west"]), "start");
    ok(&env.run(&["status"]), "status after start");

    let started = Instant::now();
    let down = ok(&env.run(&["down"]), "down");
    println!("down in {:.1} s:\n{down}", started.elapsed().as_secs_f64());
    assert_eq!(down.matches("stopped").count(), 14, "{down}");
    assert_eq!(env.containers(true), Vec::<String>::new(), "down removes every container");
    assert_eq!(processes_mentioning(&env.state()), Vec::new(), "nothing of the stack runs");
}

/// Row counts of what a write adds.
async fn counts(pool: &sqlx::PgPool) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for (name, sql) in [
        ("accounts", "SELECT count(*) FROM accounts"),
        ("transfers", "SELECT count(*) FROM transfers"),
        ("entries", "SELECT count(*) FROM entries"),
    ] {
        out.insert(name, sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap());
    }
    out
}

/// A careful client of the node at `url` (`ledger-client`): a write is sent again with the same
/// key while its outcome is open (a transport error, or a 503: a request that outlives the node's
/// `request_timeout_ms` in a loaded container is answered so and may still commit after), so a
/// count of accepted transfers is exactly the postings made. Attempts outlast that timeout.
fn client(url: &str, key: &str) -> ledger_client::Client {
    let mut cfg = ledger_client::ClientConfig::new(vec![url.to_owned()], key);
    cfg.attempt_timeout = Duration::from_secs(15);
    cfg.attempts_max = 30;
    ledger_client::Client::new(cfg).unwrap()
}

/// Opens `id` (an opening retried after a 503 that found it made answers 200: openings are
/// idempotent by id and body).
async fn open(client: &ledger_client::Client, id: &str, allow_negative: bool) {
    if let Err(e) = client.open_account(id, "USD", allow_negative).await {
        panic!("opening {id}: {e}");
    }
}

/// A transfer's decided status: 201, or the problem's status.
async fn transfer(client: &ledger_client::Client, from: &str, to: &str, amount: i64) -> u16 {
    let t = ledger_client::NewTransfer {
        from: from.to_owned(),
        to: to.to_owned(),
        amount,
        currency: None,
        metadata: Default::default(),
        idempotency_key: None,
    };
    match client.transfer(t).await {
        Ok(_) => 201,
        Err(ledger_client::Error::Problem { status, .. }) => status,
        Err(e) => panic!("{from} -> {to} {amount} left undecided: {e}"),
    }
}

/// schemathesis against the first region's node in its container, as `region-node/tests/contract.rs`
/// runs it against an in-process node: the same checks, phases and seed; then every error is a
/// documented problem type, and the rows gained are exactly those the successful writes account for.
async fn contract(env: &Env, url: &str, db: &str, key: &str) {
    let schemathesis = std::env::var_os("SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| SCHEMATHESIS_VENV.into());
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/install-deps.sh or set SCHEMATHESIS",
        schemathesis.display()
    );
    let http = reqwest::Client::new();
    let careful = client(url, key);
    for (id, negative) in [("world", true), ("alice", false), ("bob", false)] {
        open(&careful, id, negative).await;
    }
    assert_eq!(transfer(&careful, "world", "alice", 1_000_000).await, 201);
    let served = http.get(format!("{url}/openapi.json")).send().await.unwrap().text().await.unwrap();
    let kept = std::fs::read_to_string(OPENAPI_FILE).unwrap();
    assert!(served == kept, "the container's node serves another description than region-node/openapi.json");
    let openapi: Value = serde_json::from_str(&kept).unwrap();
    let documented: Vec<&str> = openapi["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();

    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(db).await.unwrap();
    let before = counts(&pool).await;
    let report = env.dir.path().join("contract");
    std::fs::create_dir_all(&report).unwrap();
    let har = report.join("exchanges.har");
    let started = Instant::now();
    let run = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{url}/openapi.json"))
        .args(["--url", url])
        // The reconcile service's key: read, write and reconcile scopes (resolutions beyond 403).
        .args(["--header", &format!("Authorization: Bearer {key}_reconcile")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", EXAMPLES_MAX, "--seed", SEED])
        .args(["--workers", "1", "--request-timeout", "10", "--suppress-health-check", "all"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .args(["--output-sanitize", "false"])
        .env("NO_COLOR", "1")
        .current_dir(&report)
        .kill_on_drop(true)
        .output();
    let run =
        tokio::time::timeout(Duration::from_secs(600), run).await.expect("schemathesis finishes in time").unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("schemathesis against {url} ({:.1} s):\n{stdout}", started.elapsed().as_secs_f64());
    assert!(run.status.success(), "schemathesis found the container's node untrue to its description:\n{stdout}");

    let har: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert!(entries.len() > 100, "too few requests to mean anything: {}", entries.len());
    let (mut opened, mut moved) = (0, 0);
    for e in entries {
        let status = e["response"]["status"].as_u64().unwrap();
        let method = e["request"]["method"].as_str().unwrap();
        let path = reqwest::Url::parse(e["request"]["url"].as_str().unwrap()).unwrap().path().to_owned();
        let body: Value =
            serde_json::from_str(e["response"]["content"]["text"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
        if status >= 400 {
            let kind = body["type"].as_str().unwrap_or_default();
            assert!(documented.contains(&kind), "{method} {path} answered {status} of an undocumented type: {body}");
        }
        let replayed =
            e["response"]["headers"].as_array().into_iter().flatten().any(|h| {
                h["name"].as_str().unwrap().eq_ignore_ascii_case("idempotent-replayed") && h["value"] == "true"
            });
        if method == "POST" && status == 201 && path == "/v1/accounts" {
            opened += 1;
        }
        if method == "POST" && status == 201 && path == "/v1/transfers" && !replayed {
            moved += 1;
        }
    }
    let after = counts(&pool).await;
    let gained: BTreeMap<&str, i64> = after.iter().map(|(k, v)| (*k, v - before[k])).collect();
    assert_eq!(
        gained,
        BTreeMap::from([("accounts", opened), ("transfers", moved), ("entries", 2 * moved)]),
        "rows that no successful write accounts for"
    );
    pool.close().await;
}

/// Every region's accounts: (id, balance, version vector).
async fn accounts(pool: &sqlx::PgPool) -> Vec<(String, i64, Value)> {
    sqlx::query_as("SELECT id, balance, version_vector FROM accounts ORDER BY id").fetch_all(pool).await.unwrap()
}

/// Transfers into all three regions at once, then every region has the same balances and
/// version vectors, and money is conserved.
async fn convergence(urls: &[String], dbs: &[String], key: &str) {
    let mut pools = Vec::new();
    for db in dbs {
        pools.push(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(db).await.unwrap());
    }
    let clients: Vec<std::sync::Arc<ledger_client::Client>> =
        urls.iter().map(|url| std::sync::Arc::new(client(url, key))).collect();
    // Accounts opened in each region, funded from `world` (opened by the contract phase in the first).
    let mut ids = Vec::new();
    for (i, careful) in clients.iter().enumerate() {
        for k in 0..3 {
            let id = format!("c{i}-{k}");
            open(careful, &id, false).await;
            ids.push(id);
        }
    }
    let wait = |what: &'static str| {
        let pools = pools.clone();
        let ids = ids.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let mut views = Vec::new();
                for pool in &pools {
                    views.push(accounts(pool).await);
                }
                let everywhere = views.iter().all(|v| ids.iter().all(|id| v.iter().any(|(a, _, _)| a == id)));
                if everywhere && views.iter().all(|v| *v == views[0]) {
                    return views.swap_remove(0);
                }
                assert!(Instant::now() < deadline, "regions did not converge ({what}): {views:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    wait("accounts").await;
    for id in &ids {
        assert_eq!(transfer(&clients[0], "world", id, 10_000).await, 201, "funding {id}");
    }
    wait("funding").await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, careful) in clients.iter().enumerate() {
        for c in 0..CLIENTS_PER_REGION {
            let (careful, ids) = (careful.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                let mut accepted = 0;
                for n in (c..TRANSFERS_PER_REGION).step_by(CLIENTS_PER_REGION) {
                    let from = &ids[(i * 3 + n) % ids.len()];
                    let to = &ids[(i * 3 + 2 * n + 1) % ids.len()];
                    if from == to {
                        continue;
                    }
                    let status = transfer(&careful, from, to, 1 + (n % 9) as i64).await;
                    assert!(status == 201 || status == 422 || status == 409, "{from} -> {to}: {status}");
                    if status == 201 {
                        accepted += 1;
                    }
                }
                accepted
            }));
        }
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    println!("{accepted} transfers accepted in {:.1} s", started.elapsed().as_secs_f64());
    assert!(accepted > 3 * TRANSFERS_PER_REGION / 2, "transfers were accepted in every region: {accepted}");
    let started = Instant::now();
    let converged = wait("transfers").await;
    println!("converged {:.1} s after the last transfer", started.elapsed().as_secs_f64());
    assert_eq!(converged.iter().map(|(_, b, _)| b).sum::<i64>(), 0, "money is conserved");
    let mut events = Vec::new();
    for pool in &pools {
        events.push(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ledger_events").fetch_one(pool).await.unwrap());
    }
    assert!(events.iter().all(|e| *e == events[0]), "every region holds every event: {events:?}");
    for pool in pools {
        pool.close().await;
    }
}
