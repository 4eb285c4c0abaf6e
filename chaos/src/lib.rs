//! The chaos suite: drives load against an environment described by `.devstack/env.json` (the local
//! stack) or by the `terraform/` outputs, injects faults (process kills, broker restarts, network
//! partitions through toxiproxy), and checks the ledger's invariants afterwards: no acknowledged
//! transfer lost, none applied twice, no overdraft, every region converged.
//!
//! Filled by a later issue; it reads environments through the launcher's manifest type so that the
//! local stack and a terraform-built one are described the same way.
//!
//! [`sim`] needs no environment: a deterministic simulation of the replication rules of
//! `ledger_core` over seeded histories of operations and network faults (`chaos sim`).

pub mod sim;

pub use ledgerctl::manifest::Manifest;
