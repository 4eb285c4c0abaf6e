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
    /// Money reserved for a transfer that is posted or voided later (`"pending": true`): the
    /// source's pending debits and the destination's pending credits grow; balances do not move.
    TransferPending {
        /// The pending transfer's id.
        transfer_id: uuid::Uuid,
        /// The account it will debit.
        from: AccountId,
        /// The account it will credit.
        to: AccountId,
        /// The amount reserved.
        amount: Amount,
        /// Currency of both accounts.
        currency: Currency,
        /// Client data.
        metadata: serde_json::Map<String, serde_json::Value>,
        /// The client's idempotency key, if it sent one.
        idempotency_key: Option<String>,
        /// SHA-256 of the canonical request body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_hash: Option<String>,
        /// RFC 3339: when the region that created it voids it if nobody has settled it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// A pending transfer posted (all or part of it) or voided. Every settlement releases the
    /// reservation once and every post moves its amount, so any order of concurrent settlements
    /// ends in the same state.
    PendingSettled {
        /// The pending transfer.
        pending_id: uuid::Uuid,
        /// Its source.
        from: AccountId,
        /// Its destination.
        to: AccountId,
        /// Its currency.
        currency: Currency,
        /// What it reserved.
        reserved: Amount,
        /// Post or void.
        settlement: Settlement,
        /// The client's idempotency key, if it sent one.
        idempotency_key: Option<String>,
        /// SHA-256 of the canonical request body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_hash: Option<String>,
    },
    /// Several legs applied at once, all or none (`POST /v1/transactions`): one event, so every
    /// region applies the legs atomically too.
    TransactionPosted {
        /// The transaction's id; leg `i` is stored as transfer [`leg_transfer_id`]`(id, i)`.
        transaction_id: uuid::Uuid,
        /// 1 to [`LEGS_MAX`] legs, applied in order.
        legs: Vec<Leg>,
        /// Client data.
        metadata: serde_json::Map<String, serde_json::Value>,
        /// The client's idempotency key, if it sent one.
        idempotency_key: Option<String>,
        /// SHA-256 of the canonical request body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_hash: Option<String>,
    },
}

/// The most legs one transaction may have: enough for a payment with fees, taxes and a split, few
/// enough that one event stays small and one commit's row count bounded.
pub const LEGS_MAX: usize = 16;

/// One movement of a multi-leg transaction: like a transfer, between two accounts of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    /// Debited account.
    pub from: AccountId,
    /// Credited account.
    pub to: AccountId,
    /// Amount in minor units.
    pub amount: Amount,
    /// Currency of both accounts.
    pub currency: Currency,
}

/// The transfer id of a transaction's leg `index`: derived (UUIDv5 under the transaction's id), so
/// every region names a leg the same way without carrying the ids in the event.
pub fn leg_transfer_id(transaction_id: uuid::Uuid, index: usize) -> uuid::Uuid {
    uuid::Uuid::new_v5(&transaction_id, format!("leg-{index}").as_bytes())
}

/// A leg of any posting event, with the id of the transfer row it is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegRef<'e> {
    /// The transfer's id: a transfer's own, or [`leg_transfer_id`] for a transaction's leg.
    pub transfer_id: uuid::Uuid,
    /// Debited.
    pub from: &'e AccountId,
    /// Credited.
    pub to: &'e AccountId,
    /// Minor units.
    pub amount: Amount,
    /// Currency.
    pub currency: Currency,
}

/// How a pending transfer was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Settlement {
    /// Posted: `amount` (at most what was reserved) moves, as transfer `transfer_id`.
    Post {
        /// The posted transfer's id.
        transfer_id: uuid::Uuid,
        /// Minor units, at most the reserved amount.
        amount: Amount,
    },
    /// Voided: nothing moves. `expired` when the region that created it voided it at its deadline.
    Void {
        /// Voided by the expiry, not by a client.
        expired: bool,
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
            EventPayload::TransactionPosted { .. } => "transaction.posted",
            EventPayload::TransferPending { .. } => "transfer.pending",
            EventPayload::PendingSettled { .. } => "transfer.settled",
        }
    }

    /// The aggregate the event belongs to: the account for an opening, the transfer for a posting.
    pub fn aggregate_id(&self) -> String {
        match &self.payload {
            EventPayload::AccountOpened { account } => account.id.to_string(),
            EventPayload::TransferPosted { transfer_id, .. } => transfer_id.to_string(),
            EventPayload::TransactionPosted { transaction_id, .. } => transaction_id.to_string(),
            EventPayload::TransferPending { transfer_id, .. } => transfer_id.to_string(),
            EventPayload::PendingSettled { pending_id, .. } => pending_id.to_string(),
        }
    }

    /// The accounts it touches, each once, in a fixed order (the order postings are listed: a
    /// transaction's accounts as its legs first name them).
    pub fn accounts(&self) -> Vec<&AccountId> {
        match &self.payload {
            EventPayload::AccountOpened { account } => vec![&account.id],
            EventPayload::TransferPosted { from, to, .. }
            | EventPayload::TransferPending { from, to, .. }
            | EventPayload::PendingSettled { from, to, .. } => vec![from, to],
            EventPayload::TransactionPosted { legs, .. } => {
                let mut out: Vec<&AccountId> = Vec::with_capacity(legs.len() + 1);
                for leg in legs {
                    for account in [&leg.from, &leg.to] {
                        if !out.contains(&account) {
                            out.push(account);
                        }
                    }
                }
                out
            }
        }
    }

    /// Its legs: what moves balances, in order (a transfer and a post are one; none for an
    /// opening, a reservation or a void).
    pub fn legs(&self) -> Vec<LegRef<'_>> {
        match &self.payload {
            EventPayload::AccountOpened { .. }
            | EventPayload::TransferPending { .. }
            | EventPayload::PendingSettled { settlement: Settlement::Void { .. }, .. } => Vec::new(),
            EventPayload::PendingSettled {
                from,
                to,
                currency,
                settlement: Settlement::Post { transfer_id, amount },
                ..
            } => vec![LegRef { transfer_id: *transfer_id, from, to, amount: *amount, currency: *currency }],
            EventPayload::TransferPosted { transfer_id, from, to, amount, currency, .. } => {
                vec![LegRef { transfer_id: *transfer_id, from, to, amount: *amount, currency: *currency }]
            }
            EventPayload::TransactionPosted { transaction_id, legs, .. } => legs
                .iter()
                .enumerate()
                .map(|(i, l)| LegRef {
                    transfer_id: leg_transfer_id(*transaction_id, i),
                    from: &l.from,
                    to: &l.to,
                    amount: l.amount,
                    currency: l.currency,
                })
                .collect(),
        }
    }

    /// The idempotency key it was made with, for a posting event.
    pub fn idempotency_key(&self) -> Option<&String> {
        match &self.payload {
            EventPayload::AccountOpened { .. } => None,
            EventPayload::TransferPosted { idempotency_key, .. }
            | EventPayload::TransactionPosted { idempotency_key, .. }
            | EventPayload::TransferPending { idempotency_key, .. }
            | EventPayload::PendingSettled { idempotency_key, .. } => idempotency_key.as_ref(),
        }
    }

    /// The currency this event moves or reserves money on `account` in (every leg touching one
    /// account has the account's currency), if it touches it with money.
    pub fn currency_for(&self, account: &AccountId) -> Option<Currency> {
        match &self.payload {
            EventPayload::TransferPending { from, to, currency, .. }
            | EventPayload::PendingSettled { from, to, currency, .. } => {
                (from == account || to == account).then_some(*currency)
            }
            _ => self.legs().iter().find(|l| l.from == account || l.to == account).map(|l| l.currency),
        }
    }

    /// How this event changes `account`'s pending debits and credits: a reservation adds, the
    /// first settlement of it takes away (the caller knows whether it is the first).
    pub fn reservation_for(&self, account: &AccountId) -> Option<(i64, i64)> {
        let (from, to, amount, sign) = match &self.payload {
            EventPayload::TransferPending { from, to, amount, .. } => (from, to, amount, 1),
            EventPayload::PendingSettled { from, to, reserved, .. } => (from, to, reserved, -1),
            _ => return None,
        };
        let amount = sign * amount.minor_units();
        if from == account {
            Some((amount, 0))
        } else if to == account {
            Some((0, amount))
        } else {
            None
        }
    }

    /// How many entries it makes on `account`: one per leg touching it.
    pub fn entries_for(&self, account: &AccountId) -> i64 {
        self.legs().iter().map(|l| i64::from(l.from == account) + i64::from(l.to == account)).sum()
    }

    /// The signed amount this event posts to `account` (a transaction's legs netted), if it posts
    /// to it. Never overflows: at most [`LEGS_MAX`] legs of at most `AMOUNT_MAX` each.
    pub fn posting_for(&self, account: &AccountId) -> Option<i64> {
        let mut net: Option<i64> = None;
        for leg in self.legs() {
            let signed = if leg.from == account {
                -leg.amount.minor_units()
            } else if leg.to == account {
                leg.amount.minor_units()
            } else {
                continue;
            };
            net = Some(net.unwrap_or(0).saturating_add(signed));
        }
        net
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
