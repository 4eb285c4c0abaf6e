//! Applying events that originated in other regions: causal delivery per account, and conflict
//! detection when an event is concurrent with what a region already applied.
//!
//! Causal delivery: an event `e` from region `o` may be applied once, for every account `x` it
//! touches, the local vector of `x` has exactly `e.vectors[x][o] - 1` from `o` (every earlier
//! event of `o` on `x`) and at least `e.vectors[x][r]` from every other region `r` (everything `o`
//! had seen on `x`). Otherwise it waits; nothing about arrival order matters.
//!
//! Concurrency: once `e` is deliverable, an event `f` already applied on `x` that `e` did not see
//! (`f`'s own counter above `e.vectors[x][origin(f)]`) is concurrent with it; `f` cannot have seen
//! `e` either, since causal delivery would have applied `e` first. Every region that applies both
//! finds the pair, whichever order it received them in. A pair with the same idempotency key, or
//! two different openings, is a conflict of its own, identified by the pair of event ids; all
//! concurrency on an account is also gathered into episodes (see [`crate::apply`]).

use crate::account::AccountSpec;
use crate::apply::WaitKey;
use crate::event::{EventPayload, LedgerEvent};
use crate::ids::{AccountId, RegionId};
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether an arriving event can be applied now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// All its causal predecessors are applied.
    Ready,
    /// Its origin's counter shows it (or a later event of its origin) is already applied.
    AlreadyApplied,
    /// A predecessor is missing: hold it until the event the key names is applied.
    Wait(WaitKey),
}

/// Decides delivery of `event` given each touched account's local vector (empty for an account
/// this region has never seen).
pub fn delivery(event: &LedgerEvent, local: impl Fn(&AccountId) -> VersionVector) -> Delivery {
    let origin = &event.origin_region;
    let mut outcome = Delivery::Ready;
    for account in event.accounts() {
        let ours = local(account);
        let wait_for = |region: &RegionId| {
            Delivery::Wait(WaitKey { account: account.clone(), region: region.clone(), counter: ours.get(region) + 1 })
        };
        // An event without a vector for an account it touches waits for that account's first
        // event from its origin; `ApplyState::apply` refuses it if it ever gets that far.
        let Some(theirs) = event.vectors.get(account) else { return wait_for(origin) };
        let (have, want) = (ours.get(origin), theirs.get(origin));
        if have >= want {
            outcome = Delivery::AlreadyApplied;
            continue;
        }
        if have + 1 != want {
            return wait_for(origin);
        }
        if let Some((region, _)) =
            theirs.to_map().into_iter().find(|(region, counter)| region != origin && ours.get(region) < *counter)
        {
            return wait_for(&region);
        }
    }
    outcome
}

/// One applied event as seen from one account: what conflict detection needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// The event.
    pub event_id: uuid::Uuid,
    /// Where it originated.
    pub origin: RegionId,
    /// Its origin's counter in the account's vector after it.
    pub counter: u64,
    /// The account's vector after it.
    pub vector: VersionVector,
    /// Signed amount it posted to the account (0 for an opening).
    pub posting: i64,
    /// For an opening, the attributes it opened the account with.
    pub opened: Option<AccountSpec>,
    /// The client's idempotency key, for a transfer that had one.
    pub idempotency_key: Option<String>,
    /// The episode of concurrency it belongs to on this account (its conflict id), if any.
    #[serde(default)]
    pub episode: Option<uuid::Uuid>,
}

impl AccountEvent {
    /// The view of `event` from `account`, if it touches it.
    pub fn of(event: &LedgerEvent, account: &AccountId) -> Option<Self> {
        let vector = event.vectors.get(account)?.clone();
        let (opened, idempotency_key) = match &event.payload {
            EventPayload::AccountOpened { account: spec } => (Some(spec.clone()), None),
            _ => (None, event.idempotency_key().cloned()),
        };
        Some(Self {
            event_id: event.event_id,
            origin: event.origin_region.clone(),
            counter: vector.get(&event.origin_region),
            posting: event.posting_for(account).unwrap_or(0),
            vector,
            opened,
            idempotency_key,
            episode: None,
        })
    }

    /// True when `self` is in the causal past of (or equal to) the vector `v`.
    pub fn seen_by(&self, v: &VersionVector) -> bool {
        v.get(&self.origin) >= self.counter
    }
}

/// The applied events on an account that `incoming` (deliverable, not yet applied) did not see.
pub fn concurrent_with<'h>(history: &'h [AccountEvent], incoming: &AccountEvent) -> Vec<&'h AccountEvent> {
    history.iter().filter(|f| f.event_id != incoming.event_id && !f.seen_by(&incoming.vector)).collect()
}

/// What went wrong between two events, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// The same idempotency key was executed in two regions.
    DuplicateIntent,
    /// The same account was opened concurrently with different attributes.
    AccountDefinition,
    /// With both applied, an account that forbids it is below zero.
    Overdraft,
    /// Concurrent postings that break nothing.
    ConcurrentBenign,
    /// One pending transfer settled in two regions at once (a post racing a void, or two posts):
    /// every post applies and the reservation is released once, the same everywhere; finance
    /// decides whether money moved as it should.
    PendingSettlement,
}

impl ConflictKind {
    /// The kebab-case name stored and published.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::DuplicateIntent => "duplicate-intent",
            ConflictKind::AccountDefinition => "account-definition",
            ConflictKind::Overdraft => "overdraft",
            ConflictKind::ConcurrentBenign => "concurrent-benign",
            ConflictKind::PendingSettlement => "pending-settlement",
        }
    }
}

/// The conflict id of a pair of events: the same whichever region computes it, in whichever order.
/// A version 8 UUID made of the SHA-256 of the two ids in ascending order.
pub fn conflict_id(a: uuid::Uuid, b: uuid::Uuid) -> uuid::Uuid {
    use sha2::Digest;
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let digest = sha2::Sha256::new()
        .chain_update(b"ledger-conflict")
        .chain_update(lo.as_bytes())
        .chain_update(hi.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The kind of a concurrent pair that is a conflict of its own, whatever else happens on the
/// account: one account opened twice with different attributes. Every other concurrency is judged
/// per episode, and transfers sharing an idempotency key per key (see [`crate::apply`]).
pub fn pair_kind(a: &AccountEvent, b: &AccountEvent) -> Option<ConflictKind> {
    match (&a.opened, &b.opened) {
        (Some(x), Some(y)) if x != y => Some(ConflictKind::AccountDefinition),
        _ => None,
    }
}

/// The conflict id of the transfers executed with one (scoped) idempotency key in more than one
/// region: one conflict per key, however many regions executed it.
pub fn key_conflict_id(key: &str) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(b"ledger-idempotency-key").chain_update(key.as_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The conflict id of a pending transfer settled concurrently in several regions: one per pending
/// transfer, listing every settlement, the same wherever they arrive first.
pub fn settlement_conflict_id(pending_id: uuid::Uuid) -> uuid::Uuid {
    use sha2::Digest;
    let digest =
        sha2::Sha256::new().chain_update(b"ledger-pending-settlement").chain_update(pending_id.as_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The conflict id of an episode of concurrency on an account, named by its smallest event id:
/// the same in every region once they have applied the same events.
pub fn episode_id(account: &AccountId, first_event: uuid::Uuid) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"ledger-episode")
        .chain_update(account.as_str().as_bytes())
        .chain_update([0u8])
        .chain_update(first_event.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A detected conflict: the same record (but `detected_by`) in every region that detects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// Derived from the pair of events.
    pub conflict_id: uuid::Uuid,
    /// What went wrong.
    pub kind: ConflictKind,
    /// The account it concerns.
    pub account: AccountId,
    /// Its events, ordered by event id: (event id, origin region, the account's vector after it).
    pub sides: Vec<(uuid::Uuid, RegionId, VersionVector)>,
}

impl Conflict {
    /// Builds the conflict of a pair, ordering the sides canonically.
    pub fn of(kind: ConflictKind, account: &AccountId, a: &AccountEvent, b: &AccountEvent) -> Self {
        let (x, y) = if a.event_id <= b.event_id { (a, b) } else { (b, a) };
        Self {
            conflict_id: conflict_id(a.event_id, b.event_id),
            kind,
            account: account.clone(),
            sides: vec![
                (x.event_id, x.origin.clone(), x.vector.clone()),
                (y.event_id, y.origin.clone(), y.vector.clone()),
            ],
        }
    }
}

impl Conflict {
    /// Whether `self` is a later record of the same conflict than `other`: a key's conflict only
    /// grows as executions arrive. Fates come back in the order events were given, not applied,
    /// so the later record is told by its content, never by the order it is seen in.
    pub fn supersedes(&self, other: &Conflict) -> bool {
        self.sides.len() >= other.sides.len()
    }
}

/// Deterministic choice between two openings of one account id: the opening from the region that
/// sorts first, then the smaller event id, wins everywhere, so attributes converge.
pub fn winning_opening<'a>(a: &'a AccountEvent, b: &'a AccountEvent) -> &'a AccountEvent {
    if (&a.origin, a.event_id) <= (&b.origin, b.event_id) { a } else { b }
}

/// Conflicts per account found while applying one event, keyed by conflict id (a pair touching
/// two accounts is one conflict; the more serious kind wins).
pub fn merge_conflicts(found: impl IntoIterator<Item = Conflict>) -> BTreeMap<uuid::Uuid, Conflict> {
    let mut out: BTreeMap<uuid::Uuid, Conflict> = BTreeMap::new();
    for c in found {
        match out.get(&c.conflict_id) {
            Some(existing) if (existing.kind, &existing.account) <= (c.kind, &c.account) => {}
            _ => {
                out.insert(c.conflict_id, c);
            }
        }
    }
    out
}
