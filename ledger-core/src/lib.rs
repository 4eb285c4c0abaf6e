//! Pure domain types and rules shared by every crate of the ledger: money amounts in minor units with
//! checked arithmetic, validated identifiers, currencies, accounts, the double-entry posting rule,
//! version vectors and the events that carry them between processes and regions.
//!
//! Architecture invariant: this crate does no I/O and depends on no runtime (no tokio, sqlx or
//! rdkafka), so the rules that keep money correct are tested exhaustively and in isolation.

pub mod account;
pub mod apply;
pub mod canonical;
pub mod currency;
pub mod event;
pub mod ids;
pub mod money;
pub mod monitor;
pub mod posting;
pub mod replica;
pub mod replication;
pub mod vv;

pub use account::{AccountSpec, AccountState};
pub use currency::Currency;
pub use event::{EventPayload, LEGS_MAX, LedgerEvent, Leg, Settlement};
pub use ids::{AccountId, IdError, RegionId};
pub use money::{AMOUNT_MAX, Amount, BALANCE_MAX, MoneyError};
pub use posting::{LegPosting, PostingError, post_transaction, post_transfer, reserve, settle};
pub use vv::VersionVector;
