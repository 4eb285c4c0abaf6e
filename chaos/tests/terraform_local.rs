//! The "done when", as CI runs it: Terraform really applies the local environment, a
//! bounded chaos run with every nemesis passes the checker, the checker rejects that same history
//! with one acknowledged transfer removed, and `terraform destroy` leaves nothing running.
//!
//! Runs on ports of its own (below the ephemeral range, apart from `./dev up`'s and the local
//! environment's defaults) with the module copied to a temporary folder, so its Terraform state
//! never touches the repository's.
//! The binaries must be built (`cargo test --workspace` builds them); Terraform cannot build them
//! from inside a test, which holds cargo's lock.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn terraform(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("terraform")
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .env("TF_IN_AUTOMATION", "1")
        .output()
        .expect("terraform runs (Terraform 1.11 is on the machine)");
    assert!(
        out.status.success(),
        "terraform {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()), Some('Z' | 'X')))
        .unwrap_or(false)
}

fn pids(outputs: &Value) -> Vec<u64> {
    let mut out: Vec<u64> = ["router_pid", "reconcile_pid", "toxiproxy_pid", "prometheus_pid", "jaeger_pid"]
        .iter()
        .filter_map(|k| outputs[k]["value"].as_u64())
        .collect();
    for r in outputs["regions"]["value"].as_array().expect("regions") {
        out.extend(r["pids"].as_object().expect("pids").values().filter_map(Value::as_u64));
    }
    out
}

#[test]
fn terraform_applies_the_local_environment_chaos_passes_and_destroy_leaves_nothing() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_chaos")).parent().unwrap().to_path_buf();
    for bin in ["ledgerctl", "region-node", "replicator", "router", "reconcile"] {
        assert!(bin_dir.join(bin).is_file(), "{bin} is not built: run `cargo test --workspace` (or build it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("local");
    std::fs::create_dir_all(&module).unwrap();
    for f in ["main.tf", "outputs.tf"] {
        std::fs::copy(repo().join("terraform/environments/local").join(f), module.join(f)).unwrap();
    }
    let state = tmp.path().join("state");
    let vars = [
        format!("-var=repo_dir={}", repo().display()),
        format!("-var=state_dir={}", state.display()),
        "-var=build=false".into(),
        "-var=pg_port_base=21432".into(),
        "-var=kafka_port_base=22092".into(),
        "-var=http_port_base=24080".into(),
    ];
    let vars: Vec<&str> = vars.iter().map(String::as_str).collect();
    terraform(&module, &["init", "-input=false"]);
    let mut apply = vec!["apply", "-auto-approve", "-input=false"];
    apply.extend(&vars);
    terraform(&module, &apply);
    let outputs: Value = serde_json::from_slice(&terraform(&module, &["output", "-json"]).stdout).unwrap();
    assert_eq!(outputs["regions"]["value"].as_array().unwrap().len(), 3);
    assert_eq!(outputs["links"]["value"].as_array().unwrap().len(), 12, "Kafka and HTTP, every ordered pair");
    let env_json: Value = serde_json::from_str(&std::fs::read_to_string(state.join("env.json")).unwrap()).unwrap();
    for (key, value) in env_json.as_object().unwrap() {
        assert_eq!(&outputs[key]["value"], value, "output {key} is env.json's");
    }
    let started = pids(&outputs);
    assert!(started.len() >= 3 * 4 + 3, "every process has a pid: {started:?}");

    // Kept after the test (CI's artifacts), one run at a time.
    let reports = bin_dir.parent().unwrap().join("artifacts").join("chaos");
    let _ = std::fs::remove_dir_all(&reports);
    let seed = std::env::var("CHAOS_SEED").unwrap_or_else(|_| "14".into());
    let run = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["run", "--terraform-dir"])
        .arg(&module)
        .args(["--nemesis", "all", "--duration-s", "60", "--seed", &seed, "--reports-dir"])
        .arg(&reports)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    println!("{stdout}\n{stderr}");
    let report = std::fs::read_dir(&reports).ok().and_then(|mut d| d.next()).map(|e| e.unwrap().path());

    // The processes the run restarted have new pids: destroy must stop those too.
    let now: Value = serde_json::from_str(&std::fs::read_to_string(state.join("env.json")).unwrap()).unwrap();
    let now = now.as_object().unwrap().iter().map(|(k, v)| (k.clone(), serde_json::json!({ "value": v })));
    let mut started = started;
    started.extend(pids(&Value::Object(now.collect())));
    let mut destroy = vec!["destroy", "-auto-approve", "-input=false"];
    destroy.extend(&vars);
    terraform(&module, &destroy);
    let left: Vec<u64> = started.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "destroy left processes running: {left:?}");
    assert!(!state.exists(), "destroy removes the environment's state folder");

    assert!(run.status.success(), "the chaos run failed (seed {seed}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("chaos: VALID"), "{stdout}");
    let report = report.expect("a report folder");
    let history: Value = serde_json::from_str(&std::fs::read_to_string(report.join("history.json")).unwrap()).unwrap();
    for n in chaos::nemesis::ALL {
        assert!(
            history["faults"].as_array().unwrap().iter().any(|f| f["nemesis"] == n.name()),
            "{} never struck",
            n.name()
        );
    }
    assert!(history["ops"].as_array().unwrap().len() > 1000, "thousands of operations, not dozens");
    assert!(std::fs::read_to_string(report.join("index.html")).unwrap().contains("<svg"));

    // The checker must reject this very history once one acknowledged transfer is gone from a region.
    let mut observed: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("observed.json")).unwrap()).unwrap();
    let acked = history["ops"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find_map(|o| o["outcome"]["transfer_id"].as_str())
        .expect("an acknowledged transfer")
        .to_owned();
    let transfers = observed["regions"][1]["transfers"].as_array_mut().unwrap();
    transfers.retain(|t| t["id"] != acked.as_str());
    let tampered = tmp.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    std::fs::copy(report.join("history.json"), tampered.join("history.json")).unwrap();
    std::fs::write(tampered.join("observed.json"), observed.to_string()).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_chaos")).arg("check").arg(&tampered).output().unwrap();
    let line = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{line}");
    assert!(line.contains("INVALID") && line.contains("acknowledged-lost"), "{line}");
}
