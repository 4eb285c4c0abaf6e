//! The chaos suite: drives load against an environment described by a Terraform environment's
//! outputs or by `.devstack/env.json`, injects faults (process kills, a PostgreSQL immediate stop,
//! network faults between regions through Toxiproxy, a whole region lost), and checks the
//! ledger's invariants afterwards with a Jepsen-style checker: no acknowledged transfer lost, none
//! applied twice, nothing refused applied, every region converged. `sim` checks the same
//! replication rules in a deterministic simulation.

pub mod checker;
pub mod env;
pub mod history;
pub mod nemesis;
pub mod observe;
pub mod report;
pub mod run;
pub mod sim;

pub use ledgerctl::manifest::Manifest;
