//! `ledgerctl logs`: every component's log, merged in time order, optionally one trace's lines
//! only, optionally followed. The Rust components write JSON lines with an RFC 3339 UTC
//! `timestamp` (and `trace_id` once a request is traced); PostgreSQL and Kafka write text lines
//! whose timestamps are recognised too. A line without a timestamp (a stack trace's continuation)
//! keeps its place after the line before it in the same file.

use crate::config::StackConfig;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// Which logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogComponent {
    /// The region nodes.
    Node,
    /// The replicators.
    Replicator,
    /// The geo-router.
    Router,
    /// The reconcile service.
    Reconcile,
    /// PostgreSQL servers.
    Postgres,
    /// Kafka brokers.
    Kafka,
    /// Toxiproxy.
    Toxiproxy,
    /// Every Rust component (node, replicator, router, reconcile): what a trace crosses.
    All,
}

/// One log file and the label its lines are printed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSource {
    /// `us-east/node`, `router`, ...
    pub label: String,
    /// The file.
    pub path: PathBuf,
}

/// The log files of `component` (in `region` only, for per-region components), existing or not.
pub fn sources(cfg: &StackConfig, component: LogComponent, region: Option<&str>) -> Vec<LogSource> {
    let per_region = |file: &str, name: &str| -> Vec<LogSource> {
        cfg.regions
            .iter()
            .filter(|r| region.is_none_or(|want| r.name.as_str() == want))
            .map(|r| LogSource { label: format!("{}/{name}", r.name), path: cfg.region_dir(&r.name).join(file) })
            .collect()
    };
    let global =
        |dir: &str, file: &str| vec![LogSource { label: dir.to_owned(), path: cfg.state_dir.join(dir).join(file) }];
    match component {
        LogComponent::Node => per_region("node.log", "node"),
        LogComponent::Replicator => per_region("replicator.log", "replicator"),
        LogComponent::Postgres => per_region("postgres.log", "postgres"),
        LogComponent::Kafka => per_region("kafka/logs/server.log", "kafka"),
        LogComponent::Router => global("router", "router.log"),
        LogComponent::Reconcile => global("reconcile", "reconcile.log"),
        LogComponent::Toxiproxy => global("toxiproxy", "toxiproxy.log"),
        LogComponent::All => {
            let mut all = per_region("node.log", "node");
            all.extend(per_region("replicator.log", "replicator"));
            all.extend(global("router", "router.log"));
            all.extend(global("reconcile", "reconcile.log"));
            all
        }
    }
}

/// The line's time as `YYYY-MM-DDTHH:MM:SS.ffffff` (UTC), comparable as a string; `None` when the
/// line carries none that is recognised.
pub fn sort_key(line: &str) -> Option<String> {
    let raw = if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v.get("timestamp")?.as_str()?.trim_end_matches('Z').to_owned()
    } else if let Some(rest) = line.strip_prefix('[') {
        // Kafka: `[2026-11-30 04:42:52,145] INFO ...` (the machine's local time is UTC here).
        rest.get(..23)?.replace(',', ".")
    } else {
        // PostgreSQL: `2026-11-30 04:38:47.255 UTC [10750] ...`.
        line.get(..23)?.to_owned()
    };
    let raw = raw.replacen(' ', "T", 1);
    let (secs, frac) = raw.split_once('.').unwrap_or((&raw, ""));
    let well_formed = secs.len() == 19
        && secs.as_bytes()[4] == b'-'
        && secs.as_bytes()[10] == b'T'
        && secs.as_bytes()[13] == b':'
        && frac.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| format!("{secs}.{:0<6}", &frac[..frac.len().min(6)]))
}

/// Whether a line belongs to trace `id` (its `trace_id`, or the id anywhere in a text line).
pub fn in_trace(line: &str, id: &str) -> bool {
    line.contains(id)
}

/// Lines from several files, merged in time order (stable: equal times keep file order).
pub fn merge(batches: Vec<(String, String)>) -> Vec<(String, String)> {
    // Each file's lines inherit the last timestamp seen in that file, so continuations stay put.
    let mut keyed: Vec<(String, usize, String, String)> = Vec::new();
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for (i, (label, line)) in batches.into_iter().enumerate() {
        let key = match sort_key(&line) {
            Some(k) => {
                last.insert(label.clone(), k.clone());
                k
            }
            None => last.get(&label).cloned().unwrap_or_default(),
        };
        keyed.push((key, i, label, line));
    }
    keyed.sort();
    keyed.into_iter().map(|(_, _, label, line)| (label, line)).collect()
}

/// Prints the logs of `sources` merged in time order (the last `tail` lines, all when `None`),
/// only trace `trace`'s when given; with `follow`, keeps printing what is appended.
pub async fn show(
    sources: &[LogSource],
    trace: Option<&str>,
    tail: Option<usize>,
    follow: bool,
) -> std::io::Result<()> {
    let mut offsets = vec![0u64; sources.len()];
    let mut first = true;
    loop {
        let mut lines = Vec::new();
        for (s, offset) in sources.iter().zip(offsets.iter_mut()) {
            let Ok(mut file) = std::fs::File::open(&s.path) else { continue };
            let len = file.metadata()?.len();
            if len < *offset {
                // Truncated or replaced (a purge and a new `up`): start over.
                *offset = 0;
            }
            file.seek(SeekFrom::Start(*offset))?;
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            // Only whole lines: a line being written is read on the next round.
            let whole = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
            *offset += whole as u64;
            lines.extend(
                text[..whole]
                    .lines()
                    .filter(|l| !l.trim().is_empty() && trace.is_none_or(|id| in_trace(l, id)))
                    .map(|l| (s.label.clone(), l.to_owned())),
            );
        }
        let mut merged = merge(lines);
        if first && let Some(n) = tail {
            merged = merged.split_off(merged.len().saturating_sub(n));
        }
        first = false;
        let width = sources.iter().map(|s| s.label.len()).max().unwrap_or(0);
        for (label, line) in merged {
            println!("{label:<width$} | {line}");
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_of_every_format_become_one_comparable_key() {
        let json = r#"{"timestamp":"2026-11-29T23:51:11.474505Z","level":"INFO"}"#;
        assert_eq!(sort_key(json).as_deref(), Some("2026-11-29T23:51:11.474505"));
        let kafka = "[2026-11-30 04:42:52,145] INFO Kafka Server started (kafka.server.KafkaRaftServer)";
        assert_eq!(sort_key(kafka).as_deref(), Some("2026-11-30T04:42:52.145000"));
        let pg = "2026-11-30 04:38:47.255 UTC [10750] HINT:  Is another postmaster running?";
        assert_eq!(sort_key(pg).as_deref(), Some("2026-11-30T04:38:47.255000"));
        assert_eq!(sort_key("\tat org.apache.kafka.Foo(Foo.java:1)"), None);
        assert_eq!(sort_key(r#"{"level":"INFO"}"#), None);
        assert_eq!(sort_key("short"), None);
    }

    #[test]
    fn lines_merge_in_time_order_and_continuations_stay_with_their_line() {
        let a = |t: &str, m: &str| format!(r#"{{"timestamp":"2026-11-30T00:00:{t}Z","fields":{{"message":"{m}"}}}}"#);
        let merged = merge(vec![
            ("us-east/node".into(), a("01.5", "a1")),
            ("us-east/node".into(), "continuation of a1".into()),
            ("us-east/node".into(), a("03.0", "a3")),
            ("eu-west/node".into(), a("02.000001", "b2")),
            ("eu-west/node".into(), a("01.4", "b1")),
        ]);
        let order: Vec<String> = merged
            .iter()
            .map(|(_, l)| {
                serde_json::from_str::<serde_json::Value>(l)
                    .map_or("cont".into(), |v| v["fields"]["message"].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(order, ["b1", "a1", "cont", "b2", "a3"]);
    }

    #[test]
    fn sources_name_each_regions_file_and_the_global_ones() {
        let names: Vec<String> = ["us-east", "eu-west"].map(String::from).to_vec();
        let cfg = StackConfig::new(&names, 1, 2, 3, "/s".into()).unwrap();
        let node = sources(&cfg, LogComponent::Node, Some("eu-west"));
        assert_eq!(node, vec![LogSource { label: "eu-west/node".into(), path: "/s/eu-west/node.log".into() }]);
        let all: Vec<String> = sources(&cfg, LogComponent::All, None).into_iter().map(|s| s.label).collect();
        assert_eq!(
            all,
            ["us-east/node", "eu-west/node", "us-east/replicator", "eu-west/replicator", "router", "reconcile"]
        );
    }
}
