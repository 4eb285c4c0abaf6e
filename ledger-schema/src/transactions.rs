//! How every transactional producer (the outbox publisher, the replicator's pairs) ends a Kafka
//! transaction without the 100 ms that rust-rdkafka's `commit_transaction` otherwise adds.
//!
//! `commit_transaction` starts with a flush; that flush, finding a message still counted in
//! flight, polls the producer's event queue for up to 100 ms, but a `FutureProducer`'s reports
//! are taken by its own polling thread, so the poll sleeps its whole 100 ms. Awaiting every
//! delivery report ([`delivered`]) and then waiting out the moment librdkafka takes to release
//! them ([`drained`]) leaves the flush nothing to wait for.

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use std::time::{Duration, Instant};

/// Longest wait for delivered messages to be released before a commit; past it the commit's own
/// flush takes over (slower, never wrong).
pub const DRAIN_WAIT_MAX: Duration = Duration::from_millis(200);

/// Waits for every delivery report; the first failure, or reports that do not all come within
/// `timeout`, is the error (the caller aborts the transaction).
pub async fn delivered(deliveries: Vec<DeliveryFuture>, timeout: Duration) -> Result<(), KafkaError> {
    // All are in flight already: awaiting them in turn takes as long as the slowest.
    let all = async {
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e),
                // The producer dropped the report: the message's fate is unknown.
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, all).await.map_err(|_| KafkaError::Canceled)?
}

/// Waits, at most [`DRAIN_WAIT_MAX`], until librdkafka has released every delivered message: a
/// message is counted until its report is released, a moment after its delivery future resolved.
/// Blocking: call it on the thread that then commits.
pub fn drained(producer: &FutureProducer) {
    let deadline = Instant::now() + DRAIN_WAIT_MAX;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(100));
    }
}
