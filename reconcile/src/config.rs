//! Service configuration: defaults, then an optional TOML file, then `RECONCILE_*` environment
//! variables (the environment is passed in, so resolution is testable).

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One region the service reads conflicts from and posts compensating entries to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEndpoint {
    /// Its name, e.g. `us-east`.
    pub name: String,
    /// Its region node's API, e.g. `http://127.0.0.1:18080`.
    pub api_url: String,
    /// Its Kafka, for `ledger.conflicts`.
    pub kafka_bootstrap: String,
}

/// Everything the service needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Address of the web UI and API.
    pub http_addr: String,
    /// The service's own database.
    pub database_url: String,
    /// Every region, in the order postings are tried.
    pub regions: Vec<RegionEndpoint>,
    /// The region nodes' key with the `reconcile` scope (the same in every region, so an
    /// idempotency key replays wherever a retry lands).
    pub node_api_key: String,
    /// Topic prefix (tests isolate themselves with it).
    pub topic_prefix: String,
    /// Kafka consumer group.
    pub consumer_group: String,
    /// A proposal moving more than this (minor units) needs two approvers, neither the proposer.
    pub approval_threshold_minor: i64,
    /// A browser session lasts this long.
    pub session_ttl_s: u64,
    /// Failed logins in a row before an account locks.
    pub login_failures_max: i32,
    /// How long a locked account stays locked.
    pub lockout_s: u64,
    /// Interval of the executor's scan for approved work, and of its retries.
    pub execute_interval_ms: u64,
    /// A region that answers a posting or a resolution with an error is retried after this long,
    /// doubling up to `retry_ms_max`.
    pub retry_ms_min: u64,
    /// See `retry_ms_min`.
    pub retry_ms_max: u64,
    /// Interval of the backfill from every region's `GET /v1/conflicts`.
    pub backfill_interval_ms: u64,
    /// Conflicts asked per backfill page (≤ the nodes' 1,000).
    pub backfill_page: u32,
    /// Timeout of one call to a region node.
    pub node_timeout_ms: u64,
    /// Cases in one page of the queue.
    pub page_size: i64,
    /// OTLP/gRPC endpoint spans are exported to (`http://127.0.0.1:4317`); none when empty.
    #[serde(default)]
    pub otlp_endpoint: String,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:18090".into(),
            database_url: "postgres://postgres@127.0.0.1:15432/reconcile".into(),
            regions: Vec::new(),
            node_api_key: String::new(),
            topic_prefix: String::new(),
            consumer_group: "reconcile".into(),
            approval_threshold_minor: 1_000_000,
            session_ttl_s: 8 * 3600,
            login_failures_max: 5,
            lockout_s: 900,
            execute_interval_ms: 500,
            retry_ms_min: 200,
            retry_ms_max: 10_000,
            backfill_interval_ms: 30_000,
            backfill_page: 500,
            node_timeout_ms: 5_000,
            page_size: 50,
            otlp_endpoint: String::new(),
        }
    }
}

/// Resolves the configuration from defaults, `file`, then `RECONCILE_*` variables of `env`.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ReconcileConfig, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(ReconcileConfig::default()));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    let from_env: BTreeMap<String, figment::value::Value> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("RECONCILE_")?.to_ascii_lowercase();
            Some((key, v.parse().unwrap_or(figment::value::Value::from(v))))
        })
        .collect();
    figment.merge(Serialized::defaults(from_env)).extract().map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile_dir();
        let path = dir.join("r.toml");
        std::fs::write(
            &path,
            "approval_threshold_minor = 5\n[[regions]]\nname = \"us-east\"\napi_url = \"http://a\"\nkafka_bootstrap = \"k\"\n",
        )
        .unwrap();
        let cfg = load(Some(&path), [("RECONCILE_APPROVAL_THRESHOLD_MINOR".into(), "7".into())]).unwrap();
        assert_eq!(cfg.approval_threshold_minor, 7);
        assert_eq!(cfg.regions.len(), 1);
        assert!(load(None, [("RECONCILE_NO_SUCH".into(), "1".into())]).is_err(), "unknown settings are refused");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("reconcile-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
