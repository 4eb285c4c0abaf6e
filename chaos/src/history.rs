//! What a chaos run records and what it observes afterwards: the input of the checker. Plain data,
//! serialized into `chaos/reports/<run>/history.json` and `observed.json`, so a verdict can be
//! recomputed (and the checker tested) from files alone.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the clients did during one run, and when the faults were active.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The run's name (also the prefix of its account ids, so runs on one stack stay apart).
    pub run: String,
    /// The seed of the fault schedule and the workload.
    pub seed: u64,
    /// Wall-clock start, milliseconds since the Unix epoch; every `*_ms` below counts from it.
    pub started_unix_ms: u64,
    /// The regions, in the environment's order.
    pub regions: Vec<String>,
    /// The accounts the run opened (in every region's view: opened before the load starts).
    pub accounts: Vec<AccountDef>,
    /// Every client operation, in invocation order.
    pub ops: Vec<Op>,
    /// Every fault injected, with when it was active.
    pub faults: Vec<FaultWindow>,
}

/// An account of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDef {
    /// Account id.
    pub id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The mint of a currency may go negative; every other account must not.
    pub allow_negative: bool,
}

/// One client operation: a transfer request with one idempotency key, retried (same key, same
/// region) until answered or given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: u64,
    /// The region the client sent it to (clients never fail over: a key lives in one region).
    pub region: String,
    /// The idempotency key.
    pub key: String,
    /// Debited account.
    pub from: String,
    /// Credited account.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When the client first sent it.
    pub invoke_ms: u64,
    /// When the client stopped waiting (answer or gave up).
    pub complete_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// How an operation ended, as the client knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Outcome {
    /// Acknowledged (201, or 200 for a replay of the key): it must exist exactly once everywhere.
    Ok {
        /// The transfer's id.
        transfer_id: uuid::Uuid,
    },
    /// Definitely refused (a 4xx problem): it must exist nowhere.
    Fail {
        /// HTTP status.
        status: u16,
        /// The problem type.
        problem_type: String,
    },
    /// No answer (transport error, 5xx after the retries): it may exist, at most once.
    Indeterminate {
        /// The last error.
        error: String,
    },
}

/// One fault, active from `start_ms` to `end_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The nemesis (`kill-node`, `partition`, ...).
    pub nemesis: String,
    /// What it hit (`us-east`, `us-east<->eu-west`, ...).
    pub target: String,
    /// When it began.
    pub start_ms: u64,
    /// When it was healed.
    pub end_ms: u64,
}

/// What every region holds after healing, read from its database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// One entry per region, in the environment's order.
    pub regions: Vec<RegionState>,
}

/// One region's state, restricted to the run's accounts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    /// Region name.
    pub name: String,
    /// By account id.
    pub accounts: BTreeMap<String, AccountObs>,
    /// Every transfer touching the run's accounts.
    pub transfers: Vec<TransferObs>,
    /// Every conflict on the run's accounts.
    pub conflicts: Vec<ConflictObs>,
    /// Events received but not applied (waiting for predecessors).
    pub pending_events: u64,
}

/// An account as a region holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountObs {
    /// ISO 4217 code.
    pub currency: String,
    /// May go below zero.
    pub allow_negative: bool,
    /// Minor units.
    pub balance: i64,
    /// Entries posted.
    pub entry_seq: i64,
    /// Its version vector.
    pub version: BTreeMap<String, u64>,
    /// Frozen by an account-definition conflict.
    pub frozen: bool,
}

/// A transfer as a region holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferObs {
    /// Transfer id.
    pub id: uuid::Uuid,
    /// Its idempotency key, if the client sent one.
    pub key: Option<String>,
    /// Debited account.
    pub from: String,
    /// Credited account.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The region that accepted it.
    pub origin_region: String,
}

/// A conflict as a region holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictObs {
    /// Conflict id (the same in every region that detects it).
    pub id: uuid::Uuid,
    /// overdraft, duplicate-intent, account-definition or concurrent-benign.
    pub kind: String,
    /// The account.
    pub account: String,
    /// open or resolved.
    pub status: String,
    /// How many events it names.
    pub event_count: i64,
}
