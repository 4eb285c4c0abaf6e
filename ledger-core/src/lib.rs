//! Pure domain types shared by every crate of the ledger: money amounts in minor units with checked
//! arithmetic, validated account and region identifiers.
//!
//! Architecture invariant: this crate does no I/O and depends on no runtime (no tokio, sqlx or
//! rdkafka), so the rules that keep money correct can be tested exhaustively and in isolation.
//! Later issues add the double-entry posting rules, version vectors and the conflict rules here.

pub mod ids;
pub mod money;

pub use ids::{AccountId, IdError, RegionId};
pub use money::{Amount, MoneyError};
