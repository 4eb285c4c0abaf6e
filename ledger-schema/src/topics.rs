//! The Kafka topics: their names, partition counts and settings, and their creation. Every name
//! takes the deployment's prefix (empty in production; tests isolate themselves with a unique one).
//!
//! A region's cluster holds its own topics (`ledger.events`, `ledger.conflicts`, `heartbeats`) and,
//! for every other region, the mirrors the replicator writes there (`<origin>.ledger.events`,
//! `<origin>.heartbeats`, following MirrorMaker 2's `<source>.<topic>` naming) and the
//! replicator's offsets for that pair (`replicator.offsets.<origin>`).

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::time::{Duration, Instant};

/// Partitions of `ledger.events` and of every mirror of it. The key is the account id, so this
/// bounds a region's consumer parallelism; the replicator writes each record to the partition it
/// was read from (keeping each account's order), so a mirror must have exactly as many partitions
/// as its source; and changing it on an existing topic would move accounts between partitions.
pub const EVENTS_PARTITIONS: i32 = 20;
/// Partitions of `ledger.conflicts`: conflict records are rare next to events, so a few suffice.
pub const CONFLICTS_PARTITIONS: i32 = 3;
/// Partitions of the heartbeats topics: one record per pair a second, and one partition keeps them
/// in order, so the newest mirrored heartbeat is the last one read.
const HEARTBEATS_PARTITIONS: i32 = 1;
/// Partitions of a replicator's offsets topic: one, because the replicator reads partition 0 to its
/// end on start to find where it stopped.
const OFFSETS_PARTITIONS: i32 = 1;
/// How long one admin request may take: both bounds are set, as the request timeout otherwise
/// defaults to a minute per attempt.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two attempts at creating topics.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The event log is the ledger's history: never deleted by time or size, never compacted
/// (compaction would keep only the last event per account).
const HISTORY: [(&str, &str); 3] = [("retention.ms", "-1"), ("retention.bytes", "-1"), ("cleanup.policy", "delete")];
/// A replicator's offsets: only the latest per (topic, partition) matters.
const COMPACTED: [(&str, &str); 1] = [("cleanup.policy", "compact")];

/// The region's own event topic, written by its outbox publisher (key = account id).
pub fn events_topic(prefix: &str) -> String {
    format!("{prefix}ledger.events")
}

/// The events of region `origin` as mirrored onto another region's cluster by the replicator.
pub fn mirrored_events_topic(prefix: &str, origin: &str) -> String {
    format!("{prefix}{origin}.ledger.events")
}

/// The region's conflict records, written by remote apply through the outbox.
pub fn conflicts_topic(prefix: &str) -> String {
    format!("{prefix}ledger.conflicts")
}

/// The heartbeats the replicator writes on a source cluster to measure lag without traffic.
pub fn heartbeats_topic(prefix: &str) -> String {
    format!("{prefix}heartbeats")
}

/// The heartbeats of region `origin` as mirrored onto another region's cluster.
pub fn mirrored_heartbeats_topic(prefix: &str, origin: &str) -> String {
    format!("{prefix}{origin}.heartbeats")
}

/// The replicator's committed source offsets for the pair `source` → this cluster's region: one
/// topic per pair, so nobody else writes to it.
pub fn replicator_offsets_topic(prefix: &str, source: &str) -> String {
    format!("{prefix}replicator.offsets.{source}")
}

/// A topic to create: name, partitions and topic-level settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic-level configuration.
    pub config: Vec<(&'static str, &'static str)>,
}

impl TopicSpec {
    fn new(name: String, partitions: i32, config: &[(&'static str, &'static str)]) -> Self {
        Self { name, partitions, config: config.to_vec() }
    }
}

/// The topics a region's own writers need on its cluster: its events and its conflicts.
pub fn region_topics(prefix: &str) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(events_topic(prefix), EVENTS_PARTITIONS, &HISTORY),
        TopicSpec::new(conflicts_topic(prefix), CONFLICTS_PARTITIONS, &HISTORY),
    ]
}

/// The topics a region's cluster holds for region `origin`: its mirrored events and heartbeats and
/// the replicator's offsets for the pair.
pub fn mirror_topics(prefix: &str, origin: &str) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(mirrored_events_topic(prefix, origin), EVENTS_PARTITIONS, &HISTORY),
        TopicSpec::new(mirrored_heartbeats_topic(prefix, origin), HEARTBEATS_PARTITIONS, &[]),
        TopicSpec::new(replicator_offsets_topic(prefix, origin), OFFSETS_PARTITIONS, &COMPACTED),
    ]
}

/// The topics the replicator needs on a source cluster besides [`region_topics`]: its heartbeats.
pub fn source_topics(prefix: &str) -> Vec<TopicSpec> {
    vec![TopicSpec::new(heartbeats_topic(prefix), HEARTBEATS_PARTITIONS, &[])]
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The admin client could not be created (a bad bootstrap address).
    #[error("kafka at {bootstrap}: {source}")]
    Client {
        /// The broker.
        bootstrap: String,
        /// rdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker still refused or failed the request when the time ran out.
    #[error("kafka at {bootstrap}: {detail}")]
    Create {
        /// The broker.
        bootstrap: String,
        /// The last failure.
        detail: String,
    },
}

/// Creates `topics` on the broker at `bootstrap`; topics that already exist are left as they are.
/// Retries until `timeout` (zero: one attempt), because a broker that just answered metadata may
/// still be electing its controller.
pub async fn create_topics(bootstrap: &str, topics: &[TopicSpec], timeout: Duration) -> Result<(), TopicsError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|source| TopicsError::Client { bootstrap: bootstrap.to_owned(), source })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.config
                .iter()
                .fold(NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1)), |nt, (k, v)| nt.set(k, v))
        })
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_REQUEST_TIMEOUT)).request_timeout(Some(ADMIN_REQUEST_TIMEOUT));
    let started = Instant::now();
    loop {
        let outcome = admin.create_topics(new_topics.iter(), &options).await;
        let failure = match outcome {
            Ok(results) => results.into_iter().find_map(|r| match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                Err((name, code)) => Some(format!("creating topic {name}: {code}")),
            }),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => return Ok(()),
            Some(detail) if started.elapsed() >= timeout => {
                return Err(TopicsError::Create { bootstrap: bootstrap.to_owned(), detail });
            }
            Some(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_topics_follow_mirrormaker_naming() {
        assert_eq!(mirrored_events_topic("", "us-east"), "us-east.ledger.events");
        assert_eq!(mirrored_events_topic("t1.", "us-east"), "t1.us-east.ledger.events");
        assert_eq!(mirrored_heartbeats_topic("", "us-east"), "us-east.heartbeats");
    }

    /// A mirror is written partition for partition, so it must be sized like its source.
    #[test]
    fn a_mirror_of_the_events_has_as_many_partitions_as_the_events() {
        let own = region_topics("p.");
        let mirror = mirror_topics("p.", "eu-west");
        assert_eq!(own[0].name, events_topic("p."));
        assert_eq!(mirror[0].name, mirrored_events_topic("p.", "eu-west"));
        assert_eq!((own[0].partitions, mirror[0].partitions), (EVENTS_PARTITIONS, EVENTS_PARTITIONS));
        assert_eq!(own[0].config, mirror[0].config);
        assert_eq!(mirror[2].name, "p.replicator.offsets.eu-west");
        assert_eq!(mirror[2].partitions, 1);
    }
}
