//! The replicator: reads each region's committed events (read_committed) and writes them into every
//! other region's Kafka as `<source-region>.ledger.events`, with the source offsets stored in the
//! same Kafka transaction on the target cluster so a crash never mirrors an event twice or loses one.
//! Events carry per-account version vectors; an event is only ever mirrored from its origin region.
//!
//! Filled by the replication issue; today it fixes the naming rule every later piece relies on.

use ledger_core::RegionId;

/// The region's own event topic.
pub const EVENTS_TOPIC: &str = "ledger.events";

/// Name of the topic on a target cluster that holds events mirrored from `source`, following
/// MirrorMaker 2's default replication policy (`<source>.<topic>`).
pub fn mirrored_topic(source: &RegionId, topic: &str) -> String {
    format!("{source}.{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_topics_follow_mirrormaker_naming() {
        let us = RegionId::new("us-east").unwrap();
        assert_eq!(mirrored_topic(&us, EVENTS_TOPIC), "us-east.ledger.events");
    }
}
