//! Accounts: what a client opens (`AccountSpec`) and what the ledger keeps (`AccountState`).

use crate::currency::Currency;
use crate::ids::AccountId;
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The attributes an account is opened with; immutable afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSpec {
    /// Client-chosen id.
    pub id: AccountId,
    /// The only currency the account holds.
    pub currency: Currency,
    /// Funding accounts (`world`, `cash`) may go below zero; customer accounts may not.
    pub allow_negative: bool,
    /// Free-form client data, stored and returned as given.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An account as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Its attributes.
    pub spec: AccountSpec,
    /// Balance in minor units; negative only if `allow_negative`.
    pub balance: i64,
    /// Number of entries posted to it so far (the last entry's sequence number).
    pub entry_seq: i64,
    /// Which events, from which region, it reflects.
    pub version: VersionVector,
    /// Two regions opened it with different attributes: no new transfer may touch it until the
    /// conflict is resolved.
    pub frozen: bool,
    /// Money held in currencies other than its own: what was posted under a definition in another
    /// currency that lost to the winning one. Kept apart, so a currency's total never changes.
    pub foreign: BTreeMap<Currency, i64>,
}

impl AccountState {
    /// A freshly opened account: zero balance, nothing posted.
    pub fn opened(spec: AccountSpec) -> Self {
        Self { spec, balance: 0, entry_seq: 0, version: VersionVector::new(), frozen: false, foreign: BTreeMap::new() }
    }
}
