//! Node configuration, layered: defaults, then an optional TOML file, then `LEDGER_NODE_*`
//! environment variables, then command-line flags. The environment is passed in rather than read
//! from the process, so resolution is testable.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything a region node needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The region this node serves, e.g. `us-east`.
    pub region: String,
    /// Address the HTTP API listens on.
    pub http_addr: String,
    /// The regional PostgreSQL database.
    pub database_url: String,
    /// The regional Kafka.
    pub kafka_bootstrap: String,
    /// Prefix for every topic name (tests isolate themselves with it; empty in production).
    pub topic_prefix: String,
    /// Largest number of commands committed in one PostgreSQL transaction.
    pub batch_commands_max: usize,
    /// How long a batch waits for company while another batch is committing, until it holds
    /// `commit_wait_commands_min` commands. Zero: it never waits.
    pub commit_wait_us_max: u64,
    /// A batch holding this many commands leaves without waiting (see `commit_wait_us_max`).
    pub commit_wait_commands_min: usize,
    /// Batches committing at once (one connection each). A command touching an account of a batch
    /// in flight waits for it to end; the others go in the next batch.
    pub commits_in_flight_max: usize,
    /// Accounts whose last committed state the committer remembers, to plan batches against it;
    /// one not remembered is read (without a lock) first.
    pub accounts_remembered_max: usize,
    /// Commands queued for the committer before requests are refused with 503.
    pub queue_commands_max: usize,
    /// Outbox records published in one Kafka transaction (a batch's row is never split).
    pub publish_batch_max: i64,
    /// Fallback poll interval of the publisher when no NOTIFY arrives.
    pub publish_poll_ms: u64,
    /// Least time between the starts of two publish rounds (one Kafka transaction each): the
    /// broker's cost is per transaction (markers on every partition), not per record, so this
    /// bounds it at `1000 / publish_interval_ms` transactions per second.
    pub publish_interval_ms: u64,
    /// Published outbox rows are deleted once this old (the events stay, in `ledger_events` and
    /// in Kafka).
    pub outbox_retention_ms: u64,
    /// Published outbox rows deleted by one statement (one per publish round, so a backlog of
    /// them never holds the publisher up for long).
    pub outbox_prune_rows_max: i64,
    /// Messages applied to the read models in one PostgreSQL transaction.
    pub consume_batch_max: usize,
    /// A snapshot is written after this many applied events...
    pub snapshot_every_events: u64,
    /// ...or after this long, whichever comes first.
    pub snapshot_every_ms: u64,
    /// Every this many snapshots one holds every balance; the others hold those changed since the
    /// snapshot before. Snapshots older than the full one before the latest are deleted, so the
    /// table keeps at most twice this many.
    pub snapshot_full_every: u32,
    /// Events the duplicate bloom filter is sized for before it is renewed.
    pub dedupe_bloom_items: usize,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// A request that takes longer is answered 503.
    pub request_timeout_ms: u64,
    /// PostgreSQL connections of the node.
    pub db_pool_max: u32,
    /// OTLP/gRPC endpoint for traces; off when empty.
    pub otlp_endpoint: String,
    /// An API key (read and write scopes) created at start-up if absent: the development key.
    pub bootstrap_api_key: String,
    /// Run the outbox publisher in this process.
    pub run_publisher: bool,
    /// Run the read-model consumer in this process.
    pub run_consumer: bool,
    /// The other regions, whose events arrive mirrored as `<region>.ledger.events`.
    pub peers: Vec<String>,
    /// Anti-entropy: each peer region's node, by region (`{ "eu-west" = "http://…" }`). The node
    /// pulls from each the peer's own events it lacks; none (the default): no repair task.
    pub peer_urls: BTreeMap<String, String>,
    /// The API key presented to peers. It is also accepted here with the `replication` scope only:
    /// the regions of one deployment share it.
    pub replication_api_key: String,
    /// The reconcile service's API key, created at start-up if absent with the `read`, `write` and
    /// `reconcile` scopes: it reads conflicts and transfers, posts compensating transfers, and is
    /// the only key that reaches `POST /v1/conflicts/{id}/resolve`. It must be the same in every
    /// region, as idempotency keys are scoped to the API key: a compensating transfer retried in
    /// another region then replays there instead of running twice. Empty (the default): none.
    pub reconcile_api_key: String,
    /// How often the repair task pulls from each peer.
    pub anti_entropy_interval_ms: u64,
    /// `GET /v1/replication/events` returns only events stored here longer ago than this: a row
    /// with a later seq may commit before one with an earlier seq, and a cursor must never pass a
    /// row that may still commit. Longer than any transaction inserting events.
    pub anti_entropy_settle_ms: u64,
    /// Events the repair task asks a peer for at once (at most the route's 1,000).
    pub anti_entropy_page_events: u32,
    /// The key that signs `Ledger-Session` tokens (HMAC-SHA256). It must be the same in every
    /// region, so a token issued in one is honoured in another after a failover. Empty: a random
    /// key of this process, so tokens hold only here (a warning says so at start).
    pub session_secret: String,
    /// How long a request carrying a session token may wait for this region to apply what the
    /// token names before it is answered 503 `session-not-caught-up` (never a stale answer).
    pub session_wait_ms_max: u64,
    /// How often this region looks for the pending transfers it created whose deadline passed, to
    /// void them (0: never; another node of the region may do it).
    pub pending_expiry_scan_ms: u64,
    /// Run the webhook delivery worker in this process (one per region leads, by advisory lock).
    pub run_webhooks: bool,
    /// Attempts to deliver a webhook before it is dead (a retry from the dead letters gives it as
    /// many again).
    pub webhook_attempts_max: u32,
    /// One delivery attempt's limit: connect, send, answer.
    pub webhook_timeout_ms: u64,
    /// Backoff after a delivery's first failed attempt; it doubles with each failure...
    pub webhook_backoff_ms_base: u64,
    /// ...up to this (jittered: a retry comes after half to all of it).
    pub webhook_backoff_ms_max: u64,
    /// Fallback poll of the delivery worker when no notification arrives.
    pub webhook_poll_ms: u64,
    /// Webhook attempts in flight at once (each slow target holds one until its timeout).
    pub webhook_batch_max: i64,
    /// Accept loopback and private targets (`127.0.0.1`, `10.0.0.0/8`, `localhost`, …). Off in
    /// production: a finance API that posts wherever a client says would be an SSRF proxy into its
    /// own network. On in the local stack and the tests, whose receivers run on loopback.
    pub webhook_allow_private_targets: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            region: "us-east".into(),
            http_addr: "127.0.0.1:18080".into(),
            database_url: "postgres://ledger:ledger@127.0.0.1:15432/ledger".into(),
            kafka_bootstrap: "127.0.0.1:19092".into(),
            topic_prefix: String::new(),
            // A batch is bounded so one commit stays short and a slow batch cannot starve others.
            batch_commands_max: 512,
            // Off. Measured at 1,000 transfers/s, three interleaved runs each: 1,000 µs took
            // PostgreSQL from 0.68-0.70 to 0.53-0.63 cores, but p50 rose from 2.9-3.6 to 3.6-5.1 ms
            // and p99 from 18-26 to 18-38 ms. Latency is the target at that rate; a deployment
            // short of CPU may prefer the wait.
            commit_wait_us_max: 0,
            commit_wait_commands_min: 4,
            commits_in_flight_max: 2,
            // About 1 KB each.
            accounts_remembered_max: 100_000,
            queue_commands_max: 20_000,
            publish_batch_max: 2_000,
            publish_poll_ms: 1_000,
            publish_interval_ms: 50,
            // An hour: longer than any benchmark run that reports the outbox's lag from its rows.
            outbox_retention_ms: 3_600_000,
            outbox_prune_rows_max: 10_000,
            consume_batch_max: 2_000,
            snapshot_every_events: 10_000,
            snapshot_every_ms: 5_000,
            // Every 10 minutes at the default interval: a full snapshot's cost grows with the
            // ledger (about 100 ms of PostgreSQL at 37,000 accounts), a delta's with the changes.
            snapshot_full_every: 120,
            dedupe_bloom_items: 1_000_000,
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            db_pool_max: 16,
            otlp_endpoint: String::new(),
            bootstrap_api_key: String::new(),
            run_publisher: true,
            run_consumer: true,
            peers: Vec::new(),
            peer_urls: BTreeMap::new(),
            replication_api_key: String::new(),
            reconcile_api_key: String::new(),
            // A lost event is repaired within seconds; an idle pull is one indexed query per peer.
            anti_entropy_interval_ms: 5_000,
            // `stored_at` is its transaction's start: what counts is how long a transaction
            // inserting events stays open, milliseconds for a batch, a bounded round (2,000
            // events) for remote apply. 5 s is a wide margin and only delays repair.
            anti_entropy_settle_ms: 5_000,
            anti_entropy_page_events: 1_000,
            session_secret: String::new(),
            // Replication lag p99 is 1–2 s at 500 transfers/s (README); waiting a little longer
            // than that serves nearly every failed-over client instead of refusing it.
            session_wait_ms_max: 3_000,
            // A deadline is honoured to about a second: posts after it are refused at once anyway.
            pending_expiry_scan_ms: 1_000,
            run_webhooks: true,
            // With the backoff below, eight attempts span about two minutes: a receiver restarting
            // or briefly down is reached; one down longer ends in the dead letters, to retry by hand.
            webhook_attempts_max: 8,
            // A receiver should answer at once and work later; a slow one holds a worker slot.
            webhook_timeout_ms: 10_000,
            webhook_backoff_ms_base: 1_000,
            webhook_backoff_ms_max: 60_000,
            // Notifications wake the worker; the poll only covers a lost one.
            webhook_poll_ms: 1_000,
            // Bounds the requests in flight from one region at once.
            webhook_batch_max: 64,
            webhook_allow_private_targets: false,
        }
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, Clone, clap::Parser, Serialize)]
#[command(name = "region-node", about = "One region of the multi-region ledger")]
pub struct Flags {
    /// A TOML file with any of the settings.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The region this node serves.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// HTTP listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// PostgreSQL URL.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_bootstrap: Option<String>,
}

/// Prefix of the environment variables that set node options: `LEDGER_NODE_BATCH_COMMANDS_MAX=64`.
pub const ENV_PREFIX: &str = "LEDGER_NODE_";

/// Resolves the configuration from defaults, the file, `env` (name, value pairs; pass
/// `std::env::vars()` in the binary) and `flags`, later sources winning.
pub fn resolve(
    flags: &Flags,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<NodeConfig, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(NodeConfig::default()));
    if let Some(path) = &flags.config {
        figment = figment.merge(Toml::file_exact(path));
    }
    let from_env: BTreeMap<String, figment::value::Value> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            // Values parse like figment's own `Env` provider: numbers and booleans are typed.
            Some((key, v.parse().unwrap_or(figment::value::Value::from(v))))
        })
        .collect();
    figment.merge(Serialized::defaults(from_env)).merge(Serialized::defaults(flags)).extract().map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_win_and_unknown_settings_are_refused() {
        let dir = std::env::temp_dir().join(format!("node-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        std::fs::write(&file, "region = \"eu-west\"\nbatch_commands_max = 7\nhttp_addr = \"127.0.0.1:1\"\n").unwrap();
        let flags = Flags { config: Some(file.clone()), http_addr: Some("127.0.0.1:3".into()), ..Flags::default() };
        let env = vec![
            ("LEDGER_NODE_BATCH_COMMANDS_MAX".to_owned(), "9".to_owned()),
            ("LEDGER_NODE_RUN_CONSUMER".to_owned(), "false".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let cfg = resolve(&flags, env).unwrap();
        assert_eq!(cfg.region, "eu-west", "file over defaults");
        assert_eq!(cfg.batch_commands_max, 9, "environment over file");
        assert!(!cfg.run_consumer);
        assert_eq!(cfg.http_addr, "127.0.0.1:3", "flags over everything");
        assert_eq!(cfg.publish_batch_max, NodeConfig::default().publish_batch_max);

        let typo = vec![("LEDGER_NODE_BATCH_COMANDS_MAX".to_owned(), "1".to_owned())];
        assert!(resolve(&Flags::default(), typo).is_err(), "a misspelt setting is an error, not ignored");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The shape `ledgerctl up` writes: peers' URLs as a table after the plain settings.
    #[test]
    fn peer_urls_are_a_table_of_region_to_url() {
        let dir = std::env::temp_dir().join(format!("node-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        let toml = "region = \"us-east\"\nreplication_api_key = \"k\"\n\n[peer_urls]\n\"eu-west\" = \"http://127.0.0.1:18081\"\n";
        std::fs::write(&file, toml).unwrap();
        let cfg = resolve(&Flags { config: Some(file), ..Flags::default() }, Vec::new()).unwrap();
        assert_eq!(cfg.peer_urls.get("eu-west").map(String::as_str), Some("http://127.0.0.1:18081"));
        assert_eq!(cfg.replication_api_key, "k");
        assert!(NodeConfig::default().peer_urls.is_empty(), "no repair task unless configured");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
