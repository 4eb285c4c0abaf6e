//! `ledgerctl up | status | down` as a user runs them, against real PostgreSQL and Kafka, and every
//! bad input the launcher promises to report on one line without leaving anything running.

mod common;
use common::Env;

use std::path::Path;
use std::process::Output;

/// A state folder plus port bases nobody else is using, and `down --purge` when the test ends,
/// passed or not.
/// A stack without Prometheus and Jaeger: the counts of parts below are without them
/// (tests/alerts.rs and tests/tracing.rs cover them).
fn stack(regions: &[&str]) -> Env {
    Env::new("ledgerctl-test-", regions, &["--no-prometheus", "--no-tracing"])
}

/// Pids of live processes whose command line mentions the stack's state folder.
fn our_processes(env: &Env) -> Vec<u32> {
    processes_mentioning(&env.state())
}

fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()) == Some('Z'))
            .unwrap_or(false);
        if !zombie && String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts a failed run: non-zero exit and exactly one line on stderr that contains `expected`.
fn assert_one_line_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {stderr}");
    assert!(lines[0].starts_with("ledgerctl: error:"), "{stderr}");
    assert!(lines[0].contains(expected), "expected {expected:?} in: {stderr}");
}

fn read_manifest(env: &Env) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(env.state().join("env.json")).unwrap()).unwrap()
}

/// The recorded pids of every region's postgres, kafka and node.
fn recorded_pids(manifest: &serde_json::Value) -> Vec<u32> {
    let regions = manifest["regions"].as_array().unwrap();
    regions
        .iter()
        .flat_map(|r| ["postgres", "kafka", "node", "replicator"].map(|p| r["pids"][p].as_u64().unwrap() as u32))
        .collect()
}

/// The status of `GET path` on `url` (`http://127.0.0.1:port`) with a bearer key, over HTTP/1.0.
fn get_status(url: &str, path: &str, key: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn up_status_stop_start_up_again_and_down_leave_nothing_running() {
    let env = stack(&["us-east", "eu-west"]);
    let out = env.run(&["up"]);
    assert!(out.status.success(), "up failed: {}", String::from_utf8_lossy(&out.stderr));

    let manifest = read_manifest(&env);
    let regions = manifest["regions"].as_array().unwrap();
    assert_eq!(regions.iter().map(|r| r["name"].as_str().unwrap()).collect::<Vec<_>>(), ["us-east", "eu-west"]);
    for r in regions {
        for field in ["http_url", "postgres_url", "kafka_bootstrap"] {
            assert!(r[field].as_str().is_some_and(|s| !s.is_empty()), "{field} missing in {r}");
        }
    }
    let api_key = manifest["api_key"].as_str().expect("a development api key");
    assert!(api_key.len() >= 32);
    // Each node accepts the replication key its peers are given (anti-entropy).
    for r in regions {
        let url = r["http_url"].as_str().unwrap();
        let path = format!("/v1/replication/events?origin={}", r["name"].as_str().unwrap());
        assert_eq!(get_status(url, &path, &format!("{api_key}_replication")), 200, "{url}{path}");
        assert_eq!(get_status(url, &path, api_key), 403, "the development key lacks the replication scope");
    }
    let pids = recorded_pids(&manifest);
    let running = our_processes(&env);
    assert!(pids.iter().all(|p| running.contains(p)), "every recorded pid runs: {pids:?} in {running:?}");

    // The reconcile service, its development staff, and the audit chain check.
    let reconcile_url = manifest["reconcile_url"].as_str().expect("reconcile_url");
    let users = manifest["reconcile_users"].as_array().expect("reconcile_users");
    let roles: Vec<&str> = users.iter().map(|u| u["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["resolver", "approver"]);
    for u in users {
        assert!(u["password"].as_str().unwrap().len() >= 12 && u["username"].is_string());
        assert_eq!(get_status(reconcile_url, "/api/cases", u["token"].as_str().unwrap()), 200, "{u}");
    }
    assert_eq!(get_status(reconcile_url, "/api/cases", "rct_wrong"), 401);
    audit_verify_names_the_edited_entry(&env, &manifest);
    the_router_sends_each_client_region_to_its_own_region(&env, &manifest);
    bench_baseline_measures_the_node_beside_a_correct_plain_ledger(&env);

    let status = env.run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "status: {text}");
    assert_eq!(text.matches("healthy").count(), 10, "every region's four parts, the router and reconcile: {text}");
    assert!(!text.contains("UNHEALTHY"), "{text}");

    // One node killed and started again, by pid, while the rest keep running.
    let node_pid = manifest["regions"][1]["pids"]["node"].as_u64().unwrap() as u32;
    let stop = env.run(&["stop", "node", "--region", "eu-west", "--kill"]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(!our_processes(&env).contains(&node_pid), "the killed node is gone");
    let status = env.run(&["status"]);
    assert!(!status.status.success(), "status reports the stopped node");
    assert!(String::from_utf8_lossy(&status.stdout).contains("not running"));
    let start = env.run(&["start", "node", "--region", "eu-west"]);
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    assert!(env.run(&["status"]).status.success(), "healthy again after start");
    let manifest = read_manifest(&env);
    let pids = recorded_pids(&manifest);
    assert!(!pids.contains(&node_pid));

    // A second `up` keeps the running processes and starts nothing new.
    let again = env.run(&["up"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let after = read_manifest(&env);
    assert_eq!(after["regions"], manifest["regions"]);
    assert_eq!(after["reconcile_pid"], manifest["reconcile_pid"], "reconcile kept running");
    assert_eq!(after["router_pid"], manifest["router_pid"], "the router kept running");
    assert_eq!(after["reconcile_users"], manifest["reconcile_users"], "the same staff, passwords and tokens");

    let down = env.run(&["down"]);
    assert!(down.status.success());
    assert_eq!(String::from_utf8_lossy(&down.stdout).matches("stopped").count(), 10);
    assert_eq!(our_processes(&env), Vec::<u32>::new(), "down leaves no process of ours");
    assert!(!env.run(&["status"]).status.success(), "status fails when nothing runs");
}

#[test]
fn a_port_in_use_is_reported_and_nothing_starts() {
    let env = stack(&["us-east", "eu-west"]);
    let _holder = std::net::TcpListener::bind(("127.0.0.1", env.kafka_base + 10)).unwrap();
    let out = env.run(&["up"]);
    assert_one_line_error(&out, &format!("port {} for Kafka of eu-west is already in use", env.kafka_base + 10));
    assert!(our_processes(&env).is_empty());
}

#[test]
fn a_missing_java_is_reported() {
    let env = stack(&["us-east"]);
    let out = env.cmd(&["up"]).env("LEDGER_JAVA", "/nonexistent/bin/java").output().unwrap();
    assert_one_line_error(&out, "Java 17 not found at /nonexistent/bin/java");
    assert!(our_processes(&env).is_empty());
}

#[test]
fn a_missing_postgresql_is_reported() {
    let env = stack(&["us-east"]);
    let out = env.run(&["--pg-bin-dir", "/nonexistent/pg/bin", "up"]);
    assert_one_line_error(&out, "PostgreSQL 15 (initdb) not found at /nonexistent/pg/bin/initdb");
    assert!(our_processes(&env).is_empty());
}

#[test]
fn a_failed_kafka_jar_download_is_reported_and_leaves_no_partial_cache() {
    let env = stack(&["us-east"]);
    let pom = env.dir.path().join("pom.xml");
    std::fs::write(
        &pom,
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>ledger.test</groupId><artifactId>missing-jars</artifactId><version>1</version><packaging>pom</packaging>
<dependencies><dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
<version>0.0.0-does-not-exist</version></dependency></dependencies></project>"#,
    )
    .unwrap();
    let cache = env.dir.path().join("cache");
    let out = env.cmd(&["up"]).env("LEDGER_KAFKA_POM", &pom).env("LEDGER_KAFKA_CACHE", &cache).output().unwrap();
    assert_one_line_error(&out, "downloading the Kafka jars with Maven failed");
    assert!(!cache.join("libs").exists(), "no half-filled jar cache");
    assert!(our_processes(&env).is_empty());
}

#[test]
fn a_corrupt_state_folder_is_reported() {
    let env = stack(&["us-east"]);
    let pg = env.state().join("us-east").join("pg");
    std::fs::create_dir_all(&pg).unwrap();
    std::fs::write(pg.join("garbage"), "not a cluster").unwrap();
    let out = env.run(&["up"]);
    assert_one_line_error(&out, "is corrupt");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ledgerctl down --purge"));
    assert!(our_processes(&env).is_empty());
}

#[test]
fn a_part_that_fails_to_start_rolls_back_everything_started() {
    let env = stack(&["us-east"]);
    // A 1 MiB heap is below the JVM's minimum: the broker dies at once, after PostgreSQL started.
    let out = env.run(&["--kafka-heap-mb", "1", "up"]);
    assert_one_line_error(&out, "did not become ready");
    assert!(our_processes(&env).is_empty(), "PostgreSQL was stopped again: {:?}", our_processes(&env));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.state().join("env.json")).unwrap()).unwrap();
    assert!(manifest["regions"][0]["pids"]["postgres"].is_null(), "the manifest forgets what was stopped");
}

/// `ledgerctl audit verify` passes on an intact trail and names the first entry edited behind the
/// append-only trigger's back.
fn audit_verify_names_the_edited_entry(env: &Env, manifest: &serde_json::Value) {
    let ok = env.run(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"));
    let url = manifest["reconcile_database_url"].as_str().unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = runtime.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let mut seqs = Vec::new();
        for reason in ["one", "two", "three"] {
            let mut tx = pool.begin().await.unwrap();
            let record = reconcile::audit::Record {
                actor: "cli-test",
                action: "test.entry",
                reason: Some(reason),
                ..Default::default()
            };
            seqs.push(reconcile::audit::append(&mut tx, record).await.unwrap());
            tx.commit().await.unwrap();
        }
        seqs[0]
    });
    let ok = env.run(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    let edited = first + 1;
    runtime.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        sqlx::query("ALTER TABLE audit DISABLE TRIGGER audit_append_only").execute(&pool).await.unwrap();
        sqlx::query("UPDATE audit SET reason = 'TWO' WHERE seq = $1").bind(edited).execute(&pool).await.unwrap();
    });
    let broken = env.run(&["audit", "verify"]);
    assert!(!broken.status.success());
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(text.contains(&format!("broken at entry {edited}")), "{text}");
}

/// The region-loss drill at a small scale: three regions up, one killed whole under load through
/// the router and brought back; every acknowledged transfer ends in every region exactly once.
#[test]
fn a_region_lost_under_load_comes_back_with_every_acknowledged_transfer_once() {
    let env = stack(&["us-east", "eu-west", "ap-south"]);
    let out = env.run(&["up"]);
    assert!(out.status.success(), "up failed: {}", String::from_utf8_lossy(&out.stderr));
    let report_path = env.dir.path().join("drill.json");
    let drill = env.run(&[
        "drill",
        "region-loss",
        "--region",
        "eu-west",
        "--rate",
        "40",
        "--before-s",
        "4",
        "--outage-s",
        "8",
        "--after-s",
        "4",
        "--out",
        report_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&drill.stdout);
    assert!(drill.status.success(), "drill failed:\n{stdout}\n{}", String::from_utf8_lossy(&drill.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["missing_after_recovery"], 0);
    assert_eq!(report["unexplained_entries"], 0);
    assert!(report["requests"].as_u64().unwrap() >= 500, "{report}");
    assert!(report["failed_attempts"].as_u64().unwrap() > 0, "the loss was felt: {report}");
    // After the restart every part of the lost region is healthy again.
    assert!(env.run(&["status"]).status.success());
}

/// A short `bench --baseline`: every system measured open and closed loop, the baseline's books
/// correct, the targets evaluated, the table printed and the JSON written.
fn bench_baseline_measures_the_node_beside_a_correct_plain_ledger(env: &Env) {
    let out_path = env.dir.path().join("baseline.json");
    let bench = env.run(&[
        "bench",
        "--baseline",
        "--rate",
        "50",
        "--duration-s",
        "2",
        "--warmup-s",
        "1",
        "--accounts",
        "20",
        "--clients",
        "1,4",
        "--closed-s",
        "2",
        "--closed-warmup-s",
        "1",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&bench.stderr));
    for line in ["open loop 50/s", "closed loop 2 s", "targets (ratios measured in this run)", "correct"] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    let systems = report["systems"].as_array().unwrap();
    let names: Vec<&str> = systems.iter().map(|s| s["system"].as_str().unwrap()).collect();
    assert_eq!(names, ["GET /healthz", "node", "PL/pgSQL", "plain PostgreSQL"]);
    for s in systems {
        assert_eq!(s["open_loop"]["sent"], 100, "{s}");
        assert_eq!(s["open_loop"]["ok"], 100, "every request of a light load succeeds: {s}");
        let closed = s["closed_loop"].as_array().unwrap();
        if s["system"] != "GET /healthz" {
            assert_eq!(closed.iter().map(|c| c["clients"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 4]);
            assert!(
                closed.iter().all(|c| c["ok"].as_u64().unwrap() > 0 && c["errors"] == serde_json::json!({})),
                "{s}"
            );
            assert!(s["ceiling_per_s"].as_f64().unwrap() > 0.0);
        }
    }
    let audit = &report["baseline_audit"];
    assert_eq!(audit["balance_sum"], "0", "{audit}");
    assert_eq!(audit["overdrawn"], 0);
    assert!(audit["transfers"].as_i64().unwrap() > 200, "both baselines moved money: {audit}");
    let targets: Vec<&str> =
        report["targets"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    // Every target but the one at 8 clients, which this run did not measure.
    assert_eq!(targets.len(), 5, "{targets:?}");
    assert!(!targets.iter().any(|t| t.contains("at 8")), "{targets:?}");
    assert!(report["outbox_lag_ms"]["rows"].as_u64().unwrap() > 0);
    assert!(report["command"].as_str().unwrap().contains("--baseline --clients 1,4"));
}

/// `GET path` through the router as a client in `client_region`: the status and `Ledger-Region`.
fn via_router(url: &str, path: &str, key: &str, client_region: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nX-Client-Region: {client_region}\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply[9..12].parse().unwrap();
    let region = reply
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("ledger-region: ").map(str::to_owned))
        .unwrap_or_default();
    (status, region)
}

/// The router `up` started sends each region's clients to that region, once it has seen each
/// region pass a health check (within a second of starting).
fn the_router_sends_each_client_region_to_its_own_region(env: &Env, manifest: &serde_json::Value) {
    let url = manifest["router_url"].as_str().expect("router_url");
    assert_eq!(url, format!("http://127.0.0.1:{}", env.http_base + 20));
    assert!(manifest["router_pid"].as_u64().is_some_and(|p| our_processes(env).contains(&(p as u32))));
    let key = manifest["api_key"].as_str().unwrap();
    for region in ["us-east", "eu-west"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (status, serving) = via_router(url, "/v1/accounts/nobody", key, region);
            if status == 404 && serving == region {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{region}: {status} from {serving:?}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
