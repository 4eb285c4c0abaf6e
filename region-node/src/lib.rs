//! The region node: one per region. It serves the double-entry HTTP API (accounts, transfers,
//! idempotency keys), commits each command's events, account state and outbox row in one
//! PostgreSQL transaction, publishes the outbox to the region's Kafka with a transactional producer,
//! and keeps read models from a read_committed consumer.
//!
//! Filled by the region-node issue; today it only fixes the crate's place in the workspace and its
//! dependency on the pure domain crate.

pub use ledger_core::RegionId;
