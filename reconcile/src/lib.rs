//! The reconcile service: lists the conflicts the regions detected (concurrent updates whose version
//! vectors neither dominate), and gives finance staff a web workflow to resolve each one with
//! compensating entries, every step kept in an audit trail.
//!
//! Filled by a later issue; it depends only on the domain crate so it never writes to a region's
//! database except through the region node's API.

pub use ledger_core::AccountId;
