//! Domain events: the append-only facts a region records (`ledger_events`), publishes to Kafka and,
//! later, replicates to the other regions. Each event carries, for every account it touches, that
//! account's version vector after the event, so any region can order it causally.

use crate::account::AccountSpec;
use crate::currency::Currency;
use crate::ids::{AccountId, RegionId};
use crate::money::Amount;
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are tolerated (a newer region may add some during a rolling upgrade); remote
// apply stores the event as received, so they are kept, not dropped.
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventPayload {
    /// An account was opened.
    AccountOpened {
        /// Its attributes.
        account: AccountSpec,
    },
    /// Money moved from one account to another.
    TransferPosted {
        /// The transfer's id.
        transfer_id: uuid::Uuid,
        /// Debited account.
        from: AccountId,
        /// Credited account.
        to: AccountId,
        /// Amount in minor units.
        amount: Amount,
        /// Currency of both accounts.
        currency: Currency,
        /// Client data.
        metadata: serde_json::Map<String, serde_json::Value>,
        /// The client's idempotency key, if it sent one.
        idempotency_key: Option<String>,
        /// SHA-256 of the canonical request body, so any region can tell a replay of the key from
        /// a reuse with another body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_hash: Option<String>,
    },
}

/// One recorded fact with its identity, origin and causal position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    /// Unique id; consumers drop an event id they have already applied.
    pub event_id: uuid::Uuid,
    /// The region where it was accepted.
    pub origin_region: RegionId,
    /// When it was accepted, RFC 3339.
    pub occurred_at: String,
    /// The fact itself.
    pub payload: EventPayload,
    /// Each touched account's version vector after this event.
    pub vectors: BTreeMap<AccountId, VersionVector>,
}

impl LedgerEvent {
    /// The event type name stored in `ledger_events.event_type` and the Kafka `event-type` header.
    pub fn event_type(&self) -> &'static str {
        match self.payload {
            EventPayload::AccountOpened { .. } => "account.opened",
            EventPayload::TransferPosted { .. } => "transfer.posted",
        }
    }

    /// The aggregate the event belongs to: the account for an opening, the transfer for a posting.
    pub fn aggregate_id(&self) -> String {
        match &self.payload {
            EventPayload::AccountOpened { account } => account.id.to_string(),
            EventPayload::TransferPosted { transfer_id, .. } => transfer_id.to_string(),
        }
    }

    /// The accounts it touches, in a fixed order (the order postings are listed).
    pub fn accounts(&self) -> Vec<&AccountId> {
        match &self.payload {
            EventPayload::AccountOpened { account } => vec![&account.id],
            EventPayload::TransferPosted { from, to, .. } => vec![from, to],
        }
    }

    /// The signed amount this event posts to `account`, if it posts to it.
    pub fn posting_for(&self, account: &AccountId) -> Option<i64> {
        match &self.payload {
            EventPayload::TransferPosted { from, amount, .. } if from == account => Some(-amount.minor_units()),
            EventPayload::TransferPosted { to, amount, .. } if to == account => Some(amount.minor_units()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json_and_name_their_postings() {
        let (a, b) = (AccountId::new("a").unwrap(), AccountId::new("b").unwrap());
        let event = LedgerEvent {
            event_id: uuid::Uuid::new_v4(),
            origin_region: RegionId::new("us-east").unwrap(),
            occurred_at: "2026-11-25T00:00:00Z".into(),
            payload: EventPayload::TransferPosted {
                transfer_id: uuid::Uuid::new_v4(),
                from: a.clone(),
                to: b.clone(),
                amount: Amount::new(5).unwrap(),
                currency: Currency::new("USD").unwrap(),
                metadata: Default::default(),
                idempotency_key: None,
                request_hash: None,
            },
            vectors: BTreeMap::new(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""type":"transfer_posted""#));
        assert_eq!(serde_json::from_str::<LedgerEvent>(&json).unwrap(), event);
        assert_eq!(event.posting_for(&a), Some(-5));
        assert_eq!(event.posting_for(&b), Some(5));
        assert_eq!(event.event_type(), "transfer.posted");
    }
}
