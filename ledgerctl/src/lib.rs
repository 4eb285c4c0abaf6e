//! The local stack launcher behind `ledgerctl`: for each region it runs a real PostgreSQL 15 and a
//! real single-node Apache Kafka 4 (KRaft) as plain processes, applies the regional migrations,
//! creates the topics, and records everything in `.devstack/env.json`.
//!
//! The same building blocks start the engines for the integration tests (`testkit`), so tests and
//! developers run exactly the same engines the same way.
//!
//! Architecture invariant: every process this crate starts is recorded by pid together with a marker
//! (its state folder) before anything else happens, and only processes whose command line still
//! carries that marker are ever signalled, so `down` stops exactly what `up` started.

pub mod baseline;
pub mod bench;
pub mod config;
pub mod containers;
pub mod drill;
pub mod error;
pub mod jaeger;
pub mod kafka;
pub mod logs;
pub mod manifest;
pub mod node;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod reconcile;
pub mod router;
pub mod stack;
pub mod toxiproxy;

pub use config::{RegionSpec, StackConfig};
pub use error::StackError;
pub use manifest::Manifest;
