//! Issue 15's alert test: a three-region stack with Prometheus (ledgerctl's `Stack`, a temporary
//! state folder, free ports). Stopping the replicator into one region while another region takes
//! transfers makes `LedgerReplicationLagHigh` for that pair reach `firing` in the running
//! Prometheus; starting the replicator again resolves it. On the way, a live scrape of every
//! component is checked against `observability/metrics.txt`.

mod common;

use ledger_client::{Client, ClientConfig, NewTransfer};
use ledgerctl::StackConfig;
use ledgerctl::stack::{Component, Stack};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// The pair whose replicator the test stops: us-east's events mirrored into eu-west.
const SOURCE: &str = "us-east";
const TARGET: &str = "eu-west";
const ALERT: &str = "LedgerReplicationLagHigh";

/// A stack on ports nobody uses; `down --purge` when dropped, passed or not.
struct Guard {
    stack: Stack,
    _dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.stack.down(true);
    }
}

fn config(dir: &tempfile::TempDir) -> StackConfig {
    let (pg, kafka, http) = common::free_port_bases(REGIONS.len() as u16);
    let names: Vec<String> = REGIONS.map(String::from).to_vec();
    let mut cfg = StackConfig::new(&names, pg, kafka, http, dir.path().join("state")).unwrap();
    // The binaries cargo built next to ledgerctl (the default looks next to this test binary).
    let bins = PathBuf::from(env!("CARGO_BIN_EXE_ledgerctl"));
    cfg.node_bin = bins.with_file_name("region-node");
    cfg.replicator_bin = bins.with_file_name("replicator");
    cfg.router_bin = bins.with_file_name("router");
    cfg.reconcile_bin = bins.with_file_name("reconcile");
    assert!(cfg.prometheus_bin.is_some(), "prometheus missing: install Debian's package (scripts/install-deps.sh)");
    cfg
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Polls `probe` every second until it answers `Some`, failing after `limit` with `what`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The state of the pair's alert: `None` when Prometheus shows no such alert.
async fn alert_state(prometheus: &str) -> Option<String> {
    let alerts = get_json(&format!("{prometheus}/api/v1/alerts")).await;
    alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            let l = &a["labels"];
            l["alertname"] == ALERT && l["source"] == SOURCE && l["target"] == TARGET && l["region"] == TARGET
        })
        .map(|a| a["state"].as_str().unwrap().to_owned())
}

/// The names metrics.txt lists, histograms as their series.
fn listed() -> BTreeSet<String> {
    let text = std::fs::read_to_string(ledgerctl::config::repo_root().join("observability/metrics.txt")).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts[1] == "histogram" {
            out.extend(["_bucket", "_sum", "_count"].map(|s| format!("{}{s}", parts[0])));
        } else {
            out.insert(parts[0].to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replicator_fires_the_replication_lag_alert_and_its_restart_resolves_it() {
    let dir = tempfile::Builder::new().prefix("ledgerctl-alerts-").tempdir().unwrap();
    let cfg = config(&dir);
    let guard = Guard { stack: Stack::new(cfg.clone()), _dir: dir };
    let manifest = guard.stack.up().await.expect("up");
    let prometheus = manifest.prometheus_url.clone().expect("env.json records prometheus_url");
    let saved = ledgerctl::Manifest::load(&cfg.manifest_path()).unwrap().unwrap();
    assert_eq!(saved.prometheus_url.as_deref(), Some(prometheus.as_str()));
    let status = ledgerctl::prometheus::status(&saved).await.expect("status names Prometheus");
    assert_eq!((status.0.as_str(), status.1, status.2), (prometheus.as_str(), saved.prometheus_pid, true));
    let generated = cfg.state_dir.join("prometheus").join("prometheus.yml");
    let check = std::process::Command::new("promtool").arg("check").arg("config").arg(&generated).output().unwrap();
    assert!(check.status.success(), "promtool check config: {}", String::from_utf8_lossy(&check.stdout));

    // Every component is scraped: three nodes, three replicators, the router, reconcile.
    until(Duration::from_secs(60), "every target up", || async {
        let targets = get_json(&format!("{prometheus}/api/v1/targets")).await;
        let active = targets["data"]["activeTargets"].as_array().unwrap().clone();
        (active.len() == 8 && active.iter().all(|t| t["health"] == "up")).then_some(())
    })
    .await;

    // The pair reports its lag (its first heartbeat went round), so the alert has a series.
    let lag = format!(
        "{prometheus}/api/v1/query?query=ledger:replication_lag_seconds{{source=%22{SOURCE}%22,target=%22{TARGET}%22}}"
    );
    until(Duration::from_secs(90), "the pair's recorded lag", || async {
        let v = get_json(&lag).await;
        v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()).then_some(())
    })
    .await;
    assert_eq!(alert_state(&prometheus).await, None, "no lag alert on a healthy stack");

    // What the components really export is what metrics.txt lists (the dashboards check relies
    // on it): every name of ours a live scrape shows is listed.
    let names = get_json(&format!("{prometheus}/api/v1/label/__name__/values")).await;
    let listed = listed();
    let ours = ["ledger_", "replication_", "reconcile_", "http_server_"];
    for name in names["data"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()) {
        if ours.iter().any(|p| name.starts_with(p)) {
            assert!(listed.contains(name), "{name} is exported but not in observability/metrics.txt");
        }
    }

    guard.stack.stop(Component::Replicator, Some(TARGET), false).expect("stop the replicator");
    let stopped = Instant::now();
    let key = manifest.api_key.clone().unwrap();
    let us_east = manifest.region(SOURCE).unwrap().http_url.clone();
    let client = Client::new(ClientConfig::new(vec![us_east], key)).unwrap();
    let (from, to) =
        (format!("alerts-{}-a", uuid::Uuid::new_v4().simple()), format!("alerts-{}-b", uuid::Uuid::new_v4().simple()));
    client.open_account(&from, "USD", true).await.unwrap();
    client.open_account(&to, "USD", false).await.unwrap();
    for _ in 0..20 {
        let t = NewTransfer {
            from: from.clone(),
            to: to.clone(),
            amount: 100,
            currency: None,
            metadata: Default::default(),
            idempotency_key: None,
        };
        client.transfer(t).await.unwrap();
    }

    until(Duration::from_secs(150), "the replication lag alert firing", || async {
        (alert_state(&prometheus).await.as_deref() == Some("firing")).then_some(())
    })
    .await;
    eprintln!("{ALERT} {SOURCE}->{TARGET} firing {:?} after the stop", stopped.elapsed());

    guard.stack.start(Component::Replicator, Some(TARGET)).await.expect("start the replicator");
    let started = Instant::now();
    until(Duration::from_secs(120), "the replication lag alert resolved", || async {
        alert_state(&prometheus).await.is_none().then_some(())
    })
    .await;
    eprintln!("{ALERT} {SOURCE}->{TARGET} resolved {:?} after the start", started.elapsed());

    let stopped = guard.stack.down(false).expect("down");
    assert!(stopped.iter().any(|l| l.starts_with("prometheus (pid")), "down stops Prometheus: {stopped:?}");
    let left = processes_mentioning(&cfg.state_dir.display().to_string());
    assert!(left.is_empty(), "down leaves no process of ours: {left:?}");
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()) == Some('Z'))
            .unwrap_or(false);
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !zombie && cmdline.contains(needle) {
            out.push(cmdline);
        }
    }
    out
}
