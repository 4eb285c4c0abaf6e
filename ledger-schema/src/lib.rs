//! What every component must agree on about the engines: the regional schema (the embedded
//! migrations and the region a database belongs to) and the Kafka topics (names, partition counts,
//! settings, creation), and how a transactional producer commits without rust-rdkafka's
//! 100 ms flush sleep.
//!
//! Architecture invariant: `ledgerctl`, `region-node`, the replicator and the tests name topics,
//! size them, create them and migrate databases only through this crate, so a topic one of them
//! writes is the topic the others read, with the partitioning they expect. It depends on no other
//! crate of the workspace but `ledger-core`.

mod schema;
mod topics;
pub mod transactions;

pub use schema::{ClaimError, MIGRATOR, claim_region};
pub use topics::{
    CONFLICTS_PARTITIONS, EVENTS_PARTITIONS, TopicSpec, TopicsError, conflicts_topic, create_topics, events_topic,
    heartbeats_topic, mirror_topics, mirrored_events_topic, mirrored_heartbeats_topic, region_topics,
    replicator_offsets_topic, source_topics,
};
