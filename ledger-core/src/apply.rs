//! The decision half of applying events from other regions: given what a region knows of the
//! accounts some events touch, which of them apply now (and with which postings, vectors and
//! conflicts), which wait and for exactly which event, which were applied before, and which can
//! never apply. No I/O: the region node loads an [`ApplyState`] for a round of events, calls
//! [`ApplyState::deliver`] and writes the result; the in-memory replica model keeps one
//! `ApplyState` for its whole life and calls the same function, so the property tests of the model
//! check the decisions the node makes.
//!
//! Waiting is exact: an event that cannot apply names the one event it waits for (a [`WaitKey`]:
//! the account, the region and the counter of that region's next event on the account). Applying
//! that event is the only thing that can change the answer, because a region's counter on an
//! account moves only when that region's next event on it is applied. So an applied event wakes
//! exactly the events waiting on it, with no rescans of everything held.
//!
//! Conflicts are judged per **episode of concurrency**: on one account, the events linked by
//! "neither saw the other" form connected groups, each one episode, named by its smallest event id
//! ([`episode_id`]). Every region detects every concurrent pair, so every region draws the same
//! episodes once it has applied the same events, whatever the order (an episode may grow, and two
//! may merge, while events arrive; a merged-away episode is superseded). An episode is an
//! `overdraft` when the account forbids a negative balance and its balance over the episode's joint
//! causal past (every event any member had seen, and the members) is below zero, naming all its
//! events however many regions took part; otherwise it is one `concurrent-benign` record counting
//! its events, never one record per pair. A pair with the same idempotency key or two different
//! openings is also a conflict of its own.

use crate::account::AccountState;
use crate::event::{EventPayload, LedgerEvent};
use crate::ids::{AccountId, RegionId};
use crate::replication::{
    AccountEvent, Conflict, ConflictKind, Delivery, concurrent_with, delivery, episode_id, merge_conflicts, pair_kind,
    winning_opening,
};
use crate::vv::VersionVector;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The one event a held event waits for: `region`'s event number `counter` on `account`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitKey {
    /// The account.
    pub account: AccountId,
    /// The region whose event is missing.
    pub region: RegionId,
    /// That region's counter on the account once the missing event is applied.
    pub counter: u64,
}

/// One posting an applied event made to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// The account.
    pub account: AccountId,
    /// Signed amount (0 for an opening).
    pub amount: i64,
    /// The account's entry number of this posting (its entry count after it).
    pub entry_seq: i64,
    /// The account's balance after it.
    pub balance_after: i64,
    /// The account's pending debits before the event (what its available balance had left).
    pub pending_debits_before: i64,
    /// The account's pending debits after the event.
    pub pending_debits_after: i64,
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Per touched account, in the event's account order: the net posting, and the entry number
    /// and balance the event leaves.
    pub postings: Vec<Posting>,
    /// Per leg, its debit then its credit: the entries to record (a transfer's two; none for an
    /// opening), each with its own entry number and the balance after it.
    pub entries: Vec<Posting>,
    /// Conflicts the event revealed (kind decided, deduplicated by id).
    pub conflicts: Vec<Conflict>,
    /// True when the event is the first transfer this region applied with its idempotency key.
    pub first_use_of_key: bool,
}

/// The fate of one event handed to [`ApplyState::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Applied now.
    Applied(Applied),
    /// Applied before (or listed twice): nothing to do.
    AlreadyApplied,
    /// Held until the event named by the key is applied.
    Wait(WaitKey),
    /// Can never be applied as it is (its reason): a dead letter. Events after it on its accounts
    /// wait for it, and say so through their wait keys.
    Dead(String),
}

/// The transfers a region applied with one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUses {
    /// Each one: (event id, origin, the vector of its first account after it), by event id.
    pub events: Vec<(uuid::Uuid, RegionId, VersionVector)>,
    /// The smallest account any of them touched (the account the conflict is filed under).
    pub account: AccountId,
}

/// One episode of concurrency on an account, as its conflict record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// Its conflict id ([`episode_id`] of the account and `first_event`).
    pub conflict_id: uuid::Uuid,
    /// The account.
    pub account: AccountId,
    /// Its smallest event id.
    pub first_event: uuid::Uuid,
    /// Its members' vectors joined: its joint causal past.
    pub joint: VersionVector,
    /// How many events it holds.
    pub events: u64,
    /// The account's balance over the joint causal past.
    pub joint_balance: i64,
    /// `Overdraft` or `ConcurrentBenign`.
    pub kind: ConflictKind,
}

/// A pending transfer as a region knows it: what it reserved and every settlement applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    /// The event that reserved it.
    pub event_id: uuid::Uuid,
    /// The region that created it (and voids it at its deadline).
    pub origin: RegionId,
    /// Its source.
    pub from: AccountId,
    /// Its destination.
    pub to: AccountId,
    /// Its currency.
    pub currency: crate::currency::Currency,
    /// What it reserved, minor units.
    pub reserved: i64,
    /// RFC 3339 deadline, if any.
    pub expires_at: Option<String>,
    /// Settlements applied here, by event id.
    pub settlements: Vec<SettlementRecord>,
}

/// One settlement of a pending transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRecord {
    /// Its event.
    pub event_id: uuid::Uuid,
    /// Where it was made.
    pub origin: RegionId,
    /// The source's vector after it.
    pub vector: VersionVector,
    /// The amount posted; `None` for a void.
    pub posted: Option<i64>,
    /// The posted transfer's id; `None` for a void.
    pub transfer_id: Option<uuid::Uuid>,
    /// A void made by the expiry.
    pub expired: bool,
}

/// Where a pending transfer stands, from the settlements applied: the same in every region once
/// they have applied the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingStatus {
    /// Reserved, not settled.
    Pending,
    /// Posted; the sum of every post (two only after a race, which is a conflict).
    Posted(i64),
    /// Voided by a client.
    Voided,
    /// Voided at its deadline.
    Expired,
}

impl PendingStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingStatus::Pending => "pending",
            PendingStatus::Posted(_) => "posted",
            PendingStatus::Voided => "voided",
            PendingStatus::Expired => "expired",
        }
    }
}

impl PendingRecord {
    /// Its status: posted if any settlement posted (every post moved money), else voided or
    /// expired, else pending.
    pub fn status(&self) -> PendingStatus {
        let posted: Vec<i64> = self.settlements.iter().filter_map(|s| s.posted).collect();
        if !posted.is_empty() {
            PendingStatus::Posted(posted.iter().sum())
        } else if self.settlements.is_empty() {
            PendingStatus::Pending
        } else if self.settlements.iter().all(|s| s.expired) {
            PendingStatus::Expired
        } else {
            PendingStatus::Voided
        }
    }
}

/// What a region knows of some accounts, enough to decide the fate of events touching them.
#[derive(Debug, Clone, Default)]
pub struct ApplyState {
    /// The accounts' states; one absent is not opened here.
    pub accounts: BTreeMap<AccountId, AccountState>,
    /// Per account, applied events, in application order, that may be concurrent with the events
    /// to deliver (every event a delivered event's vector has not seen must be here), and every
    /// opening of an account whose opening is delivered.
    pub window: BTreeMap<AccountId, Vec<AccountEvent>>,
    /// Per idempotency key of the events to deliver: the transfers applied here with it.
    pub keys: BTreeMap<String, KeyUses>,
    /// Events known to be applied here (at least those among the events to deliver).
    pub applied: BTreeSet<uuid::Uuid>,
    /// Episodes, by conflict id: at least every episode an event of the window belongs to.
    pub episodes: BTreeMap<uuid::Uuid, Episode>,
    /// Episodes merged into another one since this state was built: old id → the id it is now.
    pub superseded: BTreeMap<uuid::Uuid, uuid::Uuid>,
    /// Pending transfers: at least every one an event to deliver settles.
    pub pendings: BTreeMap<uuid::Uuid, PendingRecord>,
}

impl ApplyState {
    fn vector_of(&self, account: &AccountId) -> VersionVector {
        self.accounts.get(account).map(|a| a.version.clone()).unwrap_or_default()
    }

    /// Decides every event's fate, applying to `self` those that apply, in causal order whatever
    /// the order given: an event that becomes deliverable because another one applied is applied
    /// in the same call. Returns one fate per event, in the order given.
    pub fn deliver<E: std::borrow::Borrow<LedgerEvent>>(&mut self, events: &[E]) -> Vec<Fate> {
        let mut fates: Vec<Option<Fate>> = vec![None; events.len()];
        let mut waiting: HashMap<WaitKey, Vec<usize>> = HashMap::new();
        let mut queue: VecDeque<usize> = (0..events.len()).collect();
        while let Some(i) = queue.pop_front() {
            let event: &LedgerEvent = events[i].borrow();
            if self.applied.contains(&event.event_id) {
                fates[i] = Some(Fate::AlreadyApplied);
                continue;
            }
            if let Err(reason) = check_shape(event) {
                fates[i] = Some(Fate::Dead(reason));
                continue;
            }
            let fate = match delivery(event, |x| self.vector_of(x)) {
                Delivery::AlreadyApplied => Fate::AlreadyApplied,
                Delivery::Wait(key) => {
                    waiting.entry(key.clone()).or_default().push(i);
                    Fate::Wait(key)
                }
                Delivery::Ready => match self.apply(event) {
                    Ok(applied) => {
                        for account in event.accounts() {
                            let key = WaitKey {
                                account: account.clone(),
                                region: event.origin_region.clone(),
                                counter: event.vectors[account].get(&event.origin_region),
                            };
                            queue.extend(waiting.remove(&key).unwrap_or_default());
                        }
                        Fate::Applied(applied)
                    }
                    Err(reason) => Fate::Dead(reason),
                },
            };
            fates[i] = Some(fate);
        }
        fates.into_iter().map(|f| f.expect("every event was examined")).collect()
    }

    /// Applies one deliverable event: checks everything first, so a refusal changes nothing.
    pub fn apply(&mut self, event: &LedgerEvent) -> Result<Applied, String> {
        let accounts = event.accounts();
        // Check first: every posting must land on an opened account and stay within i64.
        let mut after: Vec<Option<(i64, i64)>> = Vec::with_capacity(accounts.len());
        check_shape(event)?;
        // Per account: (balance held in the event's currency, entry number), moved leg by leg.
        let mut running: BTreeMap<&AccountId, (i64, i64)> = BTreeMap::new();
        for account in &accounts {
            match (&event.payload, self.accounts.get(*account)) {
                (EventPayload::AccountOpened { .. }, _) => {}
                (_, None) => {
                    return Err(format!("transfer on account {account}, which was never opened here"));
                }
                (_, Some(state)) => {
                    let currency = event.currency_for(account).expect("a posting event posts to its accounts");
                    // A posting in another currency than the account's (made under a definition
                    // that lost to the winning one) is kept apart, in that currency.
                    let held = if currency == state.spec.currency {
                        state.balance
                    } else {
                        state.foreign.get(&currency).copied().unwrap_or(0)
                    };
                    running.insert(*account, (held, state.entry_seq));
                }
            }
        }
        // A reservation, or the first settlement of one (which releases it; later ones, made
        // concurrently elsewhere, only post).
        let releases = match &event.payload {
            EventPayload::TransferPending { transfer_id, .. } if self.pendings.contains_key(transfer_id) => {
                return Err(format!("pending transfer {transfer_id} reserved twice"));
            }
            EventPayload::PendingSettled { pending_id, from, to, currency, reserved, .. } => {
                let Some(p) = self.pendings.get(pending_id) else {
                    return Err(format!("settles pending transfer {pending_id}, which was never reserved here"));
                };
                if (&p.from, &p.to, &p.currency, p.reserved) != (from, to, currency, reserved.minor_units()) {
                    return Err(format!("settles pending transfer {pending_id} with other terms than it has"));
                }
                p.settlements.is_empty()
            }
            _ => false,
        };
        let mut reservations: BTreeMap<&AccountId, (i64, i64)> = BTreeMap::new();
        if matches!(event.payload, EventPayload::TransferPending { .. }) || releases {
            for account in &accounts {
                let (Some((d, c)), Some(state)) = (event.reservation_for(account), self.accounts.get(*account)) else {
                    continue;
                };
                let (debits, credits) = (state.pending_debits.checked_add(d), state.pending_credits.checked_add(c));
                let (Some(debits), Some(credits)) = (debits, credits) else {
                    return Err(format!("pending amounts of {account} out of range"));
                };
                reservations.insert(*account, (debits, credits));
            }
        }
        let mut entries = Vec::new();
        for leg in event.legs() {
            for (account, amount) in [(leg.from, -leg.amount.minor_units()), (leg.to, leg.amount.minor_units())] {
                let (held, seq) = running.get_mut(account).expect("every leg's accounts are touched");
                let balance = held
                    .checked_add(amount)
                    .ok_or_else(|| format!("balance of {account} out of range: {held} + {amount}"))?;
                *held = balance;
                *seq += 1;
                // Entries are about balances; the event's pending amounts are on its postings.
                entries.push(Posting {
                    account: account.clone(),
                    amount,
                    entry_seq: *seq,
                    balance_after: balance,
                    pending_debits_before: 0,
                    pending_debits_after: 0,
                });
            }
        }
        for account in &accounts {
            after.push(running.get(*account).copied());
        }
        let mut found = Vec::new();
        let mut postings = Vec::with_capacity(accounts.len());
        for (account, after) in accounts.iter().zip(after) {
            let incoming = AccountEvent::of(event, account).expect("checked above");
            let pending_debits_before = self.accounts.get(*account).map_or(0, |a| a.pending_debits);
            let window = self.window.entry((*account).clone()).or_default();
            let concurrent: Vec<AccountEvent> = concurrent_with(window, &incoming).into_iter().cloned().collect();
            window.push(incoming.clone());
            let state = match (&event.payload, after) {
                (EventPayload::AccountOpened { account: spec }, _) => {
                    let state =
                        self.accounts.entry((*account).clone()).or_insert_with(|| AccountState::opened(spec.clone()));
                    // Concurrent openings: every region keeps the same winner's attributes. Money
                    // posted under a losing definition in another currency moves apart, in its
                    // currency: a definition never changes money.
                    let winner =
                        window.iter().filter(|h| h.opened.is_some()).fold(&incoming, |w, h| winning_opening(w, h));
                    let winner = winner.opened.clone().expect("an opening");
                    if winner.currency != state.spec.currency && state.balance != 0 {
                        let held = state.foreign.entry(state.spec.currency).or_insert(0);
                        *held = held.saturating_add(state.balance);
                        state.balance = 0;
                    }
                    if let Some(own) = state.foreign.remove(&winner.currency) {
                        state.balance = state.balance.saturating_add(own);
                    }
                    state.spec = winner;
                    state
                }
                (_, Some((balance, entry_seq))) => {
                    let currency = &event.currency_for(account).expect("checked above");
                    let state = self.accounts.get_mut(*account).expect("checked above");
                    if *currency == state.spec.currency {
                        state.balance = balance;
                    } else if balance == 0 {
                        // Nothing kept apart is no entry, as `adopt_definition` keeps it: a region
                        // whose money netted to zero before the winning opening arrived holds no
                        // entry either, and replicas must hold the same state.
                        state.foreign.remove(currency);
                    } else {
                        state.foreign.insert(*currency, balance);
                    }
                    state.entry_seq = entry_seq;
                    state
                }
                (_, None) => unreachable!("a posting event's accounts were checked above"),
            };
            // Whatever the account's currency (a reservation made under a definition that lost is
            // released the same way, so the amounts still return to zero).
            if let Some((debits, credits)) = reservations.get(*account) {
                state.pending_debits = *debits;
                state.pending_credits = *credits;
            }
            state.version.merge(&incoming.vector);
            postings.push(Posting {
                account: (*account).clone(),
                amount: incoming.posting,
                entry_seq: state.entry_seq,
                // In the posting's currency (apart from the balance for another currency).
                balance_after: after.map_or(state.balance, |(balance, _)| balance),
                pending_debits_before,
                pending_debits_after: state.pending_debits,
            });
            let (forbids_negative, balance) = (!state.spec.allow_negative, state.balance);
            for other in &concurrent {
                if let Some(kind) = pair_kind(&incoming, other) {
                    if kind == ConflictKind::AccountDefinition {
                        // Frozen in every region (each one finds the pair) until resolved.
                        self.accounts.get_mut(*account).expect("opened above").frozen = true;
                    }
                    found.push(Conflict::of(kind, account, &incoming, other));
                }
            }
            if !concurrent.is_empty() {
                self.join_episode(account, &incoming, &concurrent, forbids_negative, balance);
            }
        }
        let mut first_use_of_key = false;
        if let Some(key) = event.idempotency_key() {
            // One key executed in several regions (a client that failed over and retried): one
            // conflict per key listing every execution, the same wherever they arrive first.
            let smallest = (*accounts.iter().min().expect("transfers touch accounts")).clone();
            let side = (event.event_id, event.origin_region.clone(), event.vectors[accounts[0]].clone());
            match self.keys.get_mut(key) {
                None => {
                    self.keys.insert(key.clone(), KeyUses { events: vec![side], account: smallest });
                    first_use_of_key = true;
                }
                Some(uses) if !uses.events.iter().any(|(id, _, _)| *id == event.event_id) => {
                    uses.events.push(side);
                    uses.events.sort_by_key(|(id, _, _)| *id);
                    uses.account = uses.account.clone().min(smallest);
                    found.push(Conflict {
                        conflict_id: crate::replication::key_conflict_id(key),
                        kind: ConflictKind::DuplicateIntent,
                        account: uses.account.clone(),
                        sides: uses.events.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        match &event.payload {
            EventPayload::TransferPending { transfer_id, from, to, amount, currency, expires_at, .. } => {
                self.pendings.insert(
                    *transfer_id,
                    PendingRecord {
                        event_id: event.event_id,
                        origin: event.origin_region.clone(),
                        from: from.clone(),
                        to: to.clone(),
                        currency: *currency,
                        reserved: amount.minor_units(),
                        expires_at: expires_at.clone(),
                        settlements: Vec::new(),
                    },
                );
            }
            EventPayload::PendingSettled { pending_id, from, to, settlement, .. } => {
                let p = self.pendings.get_mut(pending_id).expect("checked above");
                let (posted, transfer_id, expired) = match settlement {
                    crate::event::Settlement::Post { amount, transfer_id } => {
                        (Some(amount.minor_units()), Some(*transfer_id), false)
                    }
                    crate::event::Settlement::Void { expired } => (None, None, *expired),
                };
                p.settlements.push(SettlementRecord {
                    event_id: event.event_id,
                    origin: event.origin_region.clone(),
                    vector: event.vectors[from].clone(),
                    posted,
                    transfer_id,
                    expired,
                });
                p.settlements.sort_by_key(|s| s.event_id);
                if p.settlements.len() > 1 {
                    // Settled in several regions at once (a region settles only what it saw
                    // pending): one conflict per pending transfer, listing every settlement.
                    found.push(Conflict {
                        conflict_id: crate::replication::settlement_conflict_id(*pending_id),
                        kind: ConflictKind::PendingSettlement,
                        account: from.clone().min(to.clone()),
                        sides: p.settlements.iter().map(|s| (s.event_id, s.origin.clone(), s.vector.clone())).collect(),
                    });
                }
            }
            _ => {}
        }
        self.applied.insert(event.event_id);
        Ok(Applied { postings, entries, conflicts: merge_conflicts(found).into_values().collect(), first_use_of_key })
    }
}

impl ApplyState {
    /// `incoming` (just applied on `account`, leaving `balance_now`) is concurrent with
    /// `concurrent`: they and every episode they belong to become one episode.
    fn join_episode(
        &mut self,
        account: &AccountId,
        incoming: &AccountEvent,
        concurrent: &[AccountEvent],
        forbids_negative: bool,
        balance_now: i64,
    ) {
        let merged: BTreeSet<uuid::Uuid> = concurrent.iter().filter_map(|c| c.episode).collect();
        let loose: BTreeSet<uuid::Uuid> =
            concurrent.iter().filter(|c| c.episode.is_none()).map(|c| c.event_id).collect();
        let (mut first, mut joint, mut events) = (incoming.event_id, incoming.vector.clone(), 1u64);
        for id in &merged {
            let episode = &self.episodes[id];
            first = first.min(episode.first_event);
            joint.merge(&episode.joint);
            events += episode.events;
        }
        for c in concurrent.iter().filter(|c| c.episode.is_none()) {
            first = first.min(c.event_id);
            joint.merge(&c.vector);
            events += 1;
        }
        let id = episode_id(account, first);
        let window = self.window.get_mut(account).expect("the incoming event is in its account's window");
        for h in window.iter_mut() {
            let member = h.event_id == incoming.event_id
                || loose.contains(&h.event_id)
                || h.episode.is_some_and(|e| merged.contains(&e));
            if member {
                h.episode = Some(id);
            }
        }
        for old in merged.iter().filter(|old| **old != id) {
            self.episodes.remove(old);
            self.superseded.insert(*old, id);
        }
        for to in self.superseded.values_mut() {
            if merged.contains(to) {
                *to = id;
            }
        }
        let joint_balance = balance_at(balance_now, window, &joint);
        let kind = if forbids_negative && joint_balance < 0 {
            ConflictKind::Overdraft
        } else {
            ConflictKind::ConcurrentBenign
        };
        self.episodes.insert(
            id,
            Episode {
                conflict_id: id,
                account: account.clone(),
                first_event: first,
                joint,
                events,
                joint_balance,
                kind,
            },
        );
    }
}

/// The balance of an account over the events a vector has seen, from its balance now (every
/// applied event included) minus the applied events the vector has not seen. Those are all in the
/// window when the vector is at least one of the window's events being delivered, so the
/// account's whole history is never read.
pub fn balance_at(balance_now: i64, window: &[AccountEvent], seen: &VersionVector) -> i64 {
    let unseen: i128 = window.iter().filter(|h| !h.seen_by(seen)).map(|h| i128::from(h.posting)).sum();
    // Only a sign is asked of it: saturate rather than wrap.
    (i128::from(balance_now) - unseen).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// What no amount of waiting can fix: a vector missing for a touched account, or one that does not
/// count the event itself.
fn check_shape(event: &LedgerEvent) -> Result<(), String> {
    if let EventPayload::TransactionPosted { legs, .. } = &event.payload {
        if legs.is_empty() || legs.len() > crate::event::LEGS_MAX {
            return Err(format!("a transaction of {} legs (1 to {})", legs.len(), crate::event::LEGS_MAX));
        }
        let mut currency_of: BTreeMap<&AccountId, crate::currency::Currency> = BTreeMap::new();
        for leg in legs {
            if leg.from == leg.to {
                return Err(format!("a leg from {} to itself", leg.from));
            }
            for account in [&leg.from, &leg.to] {
                if *currency_of.entry(account).or_insert(leg.currency) != leg.currency {
                    return Err(format!("legs in two currencies on account {account}"));
                }
            }
        }
    }
    for account in event.accounts() {
        match event.vectors.get(account) {
            None => return Err(format!("no version vector for account {account}")),
            Some(v) if v.get(&event.origin_region) == 0 => {
                return Err(format!("the vector of {account} does not count its origin {}", event.origin_region));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountSpec;
    use crate::currency::Currency;
    use crate::money::Amount;

    fn origin() -> RegionId {
        RegionId::new("eu-west").unwrap()
    }

    fn vector(counter: u64) -> VersionVector {
        let mut v = VersionVector::new();
        v.witness(&origin(), counter);
        v
    }

    fn open(id: &str) -> LedgerEvent {
        let account = AccountId::new(id).unwrap();
        LedgerEvent {
            event_id: uuid::Uuid::new_v4(),
            origin_region: origin(),
            occurred_at: String::new(),
            payload: EventPayload::AccountOpened {
                account: AccountSpec {
                    id: account.clone(),
                    currency: Currency::new("USD").unwrap(),
                    allow_negative: true,
                    metadata: Default::default(),
                },
            },
            vectors: BTreeMap::from([(account, vector(1))]),
        }
    }

    fn transfer(counter: u64, amount: i64) -> LedgerEvent {
        let (from, to) = (AccountId::new("world").unwrap(), AccountId::new("acc").unwrap());
        LedgerEvent {
            event_id: uuid::Uuid::new_v4(),
            origin_region: origin(),
            occurred_at: String::new(),
            payload: EventPayload::TransferPosted {
                transfer_id: uuid::Uuid::new_v4(),
                from: from.clone(),
                to: to.clone(),
                amount: Amount::new(amount).unwrap(),
                currency: Currency::new("USD").unwrap(),
                metadata: Default::default(),
                idempotency_key: None,
                request_hash: None,
            },
            vectors: BTreeMap::from([(from, vector(counter)), (to, vector(counter))]),
        }
    }

    #[test]
    fn a_chain_given_backwards_applies_in_one_call_and_a_gap_names_the_missing_event() {
        let mut state = ApplyState::default();
        let mut events = vec![open("world"), open("acc")];
        events.extend((3..=1_000).rev().map(|k| transfer(k, 1)));
        let fates = state.deliver(&events);
        // Counter 2 is missing: everything after it waits for exactly that event.
        let want = WaitKey { account: AccountId::new("world").unwrap(), region: origin(), counter: 2 };
        assert!(fates[2..].iter().all(|f| *f == Fate::Wait(want.clone())), "{:?}", &fates[2..4]);
        let mut all = events[2..].to_vec();
        all.push(transfer(2, 1));
        let fates = state.deliver(&all);
        assert!(fates.iter().all(|f| matches!(f, Fate::Applied(_))));
        assert_eq!(state.accounts[&AccountId::new("acc").unwrap()].balance, 999);
        assert_eq!(state.accounts[&AccountId::new("acc").unwrap()].entry_seq, 999);
    }

    #[test]
    fn a_balance_leaving_i64_is_a_dead_letter_and_what_follows_it_waits_for_it() {
        let mut state = ApplyState::default();
        let big = crate::money::AMOUNT_MAX;
        state.deliver(&[open("world"), open("acc")]);
        // Bring the balance near the edge, as concurrent regions together could.
        state.accounts.get_mut(&AccountId::new("acc").unwrap()).unwrap().balance = i64::MAX - big + 1;
        let (dead, after) = (transfer(2, big), transfer(3, 1));
        let fates = state.deliver(&[dead, after]);
        assert!(matches!(&fates[0], Fate::Dead(reason) if reason.contains("out of range")), "{fates:?}");
        let want = WaitKey { account: AccountId::new("world").unwrap(), region: origin(), counter: 2 };
        assert_eq!(fates[1], Fate::Wait(want));
        assert_eq!(state.accounts[&AccountId::new("acc").unwrap()].entry_seq, 0, "nothing applied");
    }

    #[test]
    fn an_event_whose_vector_does_not_count_its_origin_is_refused() {
        let mut state = ApplyState::default();
        let mut bad = open("acc");
        bad.vectors.insert(AccountId::new("acc").unwrap(), VersionVector::new());
        assert!(matches!(&state.deliver(&[bad])[0], Fate::Dead(_)));
    }
}
