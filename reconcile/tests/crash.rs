//! kill -9 of the reconcile process at each step of carrying out an approved proposal: before the
//! posting, after the region committed it but before its acknowledgement was stored, and after the
//! posting before the resolution. On restart the case finishes with exactly one compensating
//! transfer in every region.

mod common;

use common::{Api, Regions, Staff};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// A reconcile process that never outlives the test, even one that fails: killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the reconcile binary on `cfg` (written as TOML), with `failpoint` set to sleep forever.
fn spawn(cfg: &reconcile::config::ReconcileConfig, dir: &std::path::Path, failpoint: Option<&str>) -> Reaped {
    let toml = toml_of(cfg);
    let path = dir.join("reconcile.toml");
    std::fs::write(&path, toml).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("reconcile.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reconcile"));
    cmd.arg("--config").arg(&path).arg("serve").stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
    if let Some(fp) = failpoint {
        cmd.env("FAILPOINTS", format!("{fp}=sleep(600000)"));
    }
    let mut child = cmd.spawn().expect("the reconcile binary starts");
    let deadline = Instant::now() + WAIT;
    loop {
        if std::net::TcpStream::connect(cfg.http_addr.as_str()).is_ok() {
            return Reaped(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "reconcile exited with {status}: {}",
                std::fs::read_to_string(dir.join("reconcile.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "reconcile never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn toml_of(cfg: &reconcile::config::ReconcileConfig) -> String {
    let mut t = format!(
        "http_addr = {:?}\ndatabase_url = {:?}\nnode_api_key = {:?}\ntopic_prefix = {:?}\nconsumer_group = {:?}\napproval_threshold_minor = {}\nexecute_interval_ms = 200\nretry_ms_min = 100\nretry_ms_max = 1000\n",
        cfg.http_addr,
        cfg.database_url,
        cfg.node_api_key,
        cfg.topic_prefix,
        cfg.consumer_group,
        cfg.approval_threshold_minor
    );
    for r in &cfg.regions {
        t.push_str(&format!(
            "[[regions]]\nname = {:?}\napi_url = {:?}\nkafka_bootstrap = {:?}\n",
            r.name, r.api_url, r.kafka_bootstrap
        ));
    }
    t
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the case is resolved; past `WAIT`, fails with the restarted process's log, which
/// says what its executor was waiting for.
async fn wait_resolved(api: &Api, token: &str, case_id: &str, dir: &std::path::Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let case = api.get(&format!("/api/cases/{case_id}"), token).await.body;
        if case["state"] == "resolved" {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("reconcile.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "case {case_id} never reached resolved: {case}\nlast lines of reconcile.log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn entries(regions: &Regions, i: usize, account: &str) -> usize {
    regions.get(i, &format!("/v1/accounts/{account}/entries?limit=100")).await.body["entries"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_finishes_on_restart_with_exactly_one_compensating_transfer() {
    let mut regions = Regions::start().await;
    let mut cfg = regions.reconcile_config();
    let port = testkit::free_port();
    cfg.http_addr = format!("127.0.0.1:{port}");
    let staff = Staff::create(&cfg.database_url).await;
    let pool = reconcile::connect(&cfg.database_url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let steps = ["reconcile-before-posting", "reconcile-posted-before-store", "reconcile-after-posting"];
    for (n, failpoint) in steps.into_iter().enumerate() {
        let account = format!("acc{n}");
        let debits = regions.three_region_overdraft(&account).await;
        let mut child = spawn(&cfg, dir.path(), Some(failpoint));
        let viewer = staff.token("viewer");
        let cases = {
            let deadline = Instant::now() + WAIT;
            loop {
                let r = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/api/cases?kind=overdraft&account={account}"),
                        Some(viewer),
                        None,
                    )
                    .await;
                let cs = r.body["cases"].as_array().cloned().unwrap_or_default();
                let ready = cs.len() == 1
                    && api.get(&format!("/api/cases/{}", cs[0]["id"].as_str().unwrap()), viewer).await.body["branches"]
                        .as_array()
                        .is_some_and(|b| b.len() == 3);
                if ready {
                    break cs;
                }
                assert!(Instant::now() < deadline, "{failpoint}: no case with branches: {}", r.body);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let case_id = cases[0]["id"].as_str().unwrap().to_owned();
        let p = api
            .post(
                &format!("/api/cases/{case_id}/proposals"),
                staff.token("resolver"),
                json!({"action": "reverse", "event_id": debits[0], "reason": "crash test"}),
            )
            .await;
        assert_eq!(p.status, 201, "{}", p.body);
        let proposal: uuid::Uuid = p.body["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            api.post(&format!("/api/proposals/{proposal}/approve"), staff.token("approver"), json!({})).await.status,
            200
        );

        // Wait until the process is held at the step, then kill it with no chance to clean up.
        match failpoint {
            "reconcile-before-posting" => {
                wait_until("executing", async || {
                    sqlx::query_scalar::<_, String>("SELECT state FROM proposals WHERE id = $1")
                        .bind(proposal)
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                        == "executing"
                })
                .await
            }
            "reconcile-posted-before-store" => {
                // The region committed the reversal; reconcile has not stored that it did.
                wait_until("posted in the region", async || entries(&regions, 0, &account).await == 5).await;
                let stored: Option<serde_json::Value> =
                    sqlx::query_scalar("SELECT transfer FROM proposals WHERE id = $1")
                        .bind(proposal)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                assert!(stored.is_none(), "held before storing the acknowledgement");
            }
            _ => {
                wait_until("acknowledgement stored", async || {
                    sqlx::query_scalar::<_, Option<serde_json::Value>>("SELECT transfer FROM proposals WHERE id = $1")
                        .bind(proposal)
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                        .is_some()
                })
                .await
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let state: String = sqlx::query_scalar("SELECT state FROM cases WHERE id = $1")
            .bind(uuid::Uuid::parse_str(&case_id).unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(state, "executing", "{failpoint}: killed mid-way");
        kill(Pid::from_raw(child.0.id() as i32), Signal::SIGKILL).unwrap();
        child.0.wait().unwrap();

        let mut restarted = spawn(&cfg, dir.path(), None);
        wait_resolved(&api, viewer, &case_id, dir.path()).await;
        let balances = regions.converged(&[&account], WAIT).await;
        assert_eq!(balances, vec![30], "{failpoint}: -30 + one reversal of 60");
        for i in 0..3 {
            assert_eq!(
                entries(&regions, i, &account).await,
                5,
                "{failpoint}: region {i}: funding, three debits, one reversal"
            );
            let dups = regions.conflicts(i).await.into_iter().filter(|c| c["kind"] == "duplicate-intent").count();
            assert_eq!(dups, 0, "{failpoint}: region {i}: the retry was never a second execution");
        }
        kill(Pid::from_raw(restarted.0.id() as i32), Signal::SIGTERM).unwrap();
        restarted.0.wait().unwrap();
    }
    let verdict = reconcile::audit::verify(&pool).await.unwrap();
    assert!(matches!(verdict, reconcile::audit::Verdict::Intact(_)), "{verdict:?}");
}
