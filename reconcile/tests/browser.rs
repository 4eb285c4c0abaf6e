//! The web UI in headless Chromium (Debian's), driven by playwright-core from
//! `reconcile/ui-tests/flow.mjs`: the resolver filters the queue, opens the three-region overdraft
//! and proposes a reversal; the approver approves; the page shows it resolved. The screenshots are
//! kept in `target/artifacts/` for CI.

mod common;

use common::{Api, PASSWORD, Regions, Staff};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_and_approver_resolve_a_case_in_a_real_browser() {
    let mut regions = Regions::start().await;
    let cfg = regions.reconcile_config();
    let staff = Staff::create(&cfg.database_url).await;
    let running = reconcile::start(cfg).await.unwrap();
    let base = format!("http://{}", running.addr());
    let api = Api::new(base.clone());
    regions.three_region_overdraft("acc").await;
    let viewer = staff.token("viewer");
    let cases = api
        .wait_cases(viewer, "kind=overdraft&account=acc", Duration::from_secs(120), |cs| {
            cs.len() == 1 && cs[0]["regions"].as_array().is_some_and(|r| r.len() == 3)
        })
        .await;
    let case_id = cases[0]["id"].as_str().unwrap().to_owned();
    for _ in 0..600 {
        let case = api.get(&format!("/api/cases/{case_id}"), viewer).await.body;
        if case["branches"].as_array().is_some_and(|b| b.len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = root.parent().unwrap().join("target").join("artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    for f in ["case-open.png", "case-resolved.png"] {
        let _ = std::fs::remove_file(shots.join(f));
    }
    let script = root.join("ui-tests").join("flow.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("RECONCILE_URL", &base)
        .env("CASE_ID", &case_id)
        .env("ACCOUNT", "acc")
        .env("SCREENSHOT_DIR", &shots)
        .env("USERS", json!({"resolver": PASSWORD, "approver": PASSWORD}).to_string())
        .output()
        .await
        .expect("node runs (installed by scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "the browser flow failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["case-open.png", "case-resolved.png"] {
        let png = std::fs::read(shots.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{f} is a real screenshot");
    }
    // What the browser showed is what the ledger holds.
    let case = api.get(&format!("/api/cases/{case_id}"), viewer).await.body;
    assert_eq!(case["state"], "resolved");
    assert_eq!(case["proposals"][0]["proposed_by"], "resolver");
    assert_eq!(case["proposals"][0]["approved_by"], json!(["approver"]));
    assert_eq!(regions.converged(&["acc", "shop"], Duration::from_secs(60)).await, vec![30, 120]);
    running.stop().await;
}
