//! The chaos suite: drives load against an environment described by `.devstack/env.json` (the local
//! stack) or by a Terraform environment's outputs, injects faults (process kills, broker restarts,
//! network faults through Toxiproxy), and checks the ledger's invariants afterwards: no
//! acknowledged transfer lost, none applied twice, nothing refused applied, every region
//! converged. `sim` checks the same replication rules in a deterministic simulation.

pub mod checker;
pub mod history;
pub mod report;

pub use ledgerctl::manifest::Manifest;
