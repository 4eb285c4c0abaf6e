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

use crate::account::AccountState;
use crate::event::{EventPayload, LedgerEvent};
use crate::ids::{AccountId, RegionId};
use crate::replication::{
    AccountEvent, Conflict, ConflictKind, Delivery, classify, concurrent_with, delivery, merge_conflicts,
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
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Per touched account, in the event's account order.
    pub postings: Vec<Posting>,
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

/// What a region knows of some accounts, enough to decide the fate of events touching them.
#[derive(Debug, Clone, Default)]
pub struct ApplyState {
    /// The accounts' states; one absent is not opened here.
    pub accounts: BTreeMap<AccountId, AccountState>,
    /// Per account, applied events, in application order, that may be concurrent with the events
    /// to deliver (every event a delivered event's vector has not seen must be here), and every
    /// opening of an account whose opening is delivered.
    pub window: BTreeMap<AccountId, Vec<AccountEvent>>,
    /// Per idempotency key of the events to deliver: the first transfer applied here with it, as
    /// seen from one of its accounts, and its accounts.
    pub keys: BTreeMap<String, (AccountEvent, Vec<AccountId>)>,
    /// Events known to be applied here (at least those among the events to deliver).
    pub applied: BTreeSet<uuid::Uuid>,
}

impl ApplyState {
    fn vector_of(&self, account: &AccountId) -> VersionVector {
        self.accounts.get(account).map(|a| a.version.clone()).unwrap_or_default()
    }

    /// Decides every event's fate, applying to `self` those that apply, in causal order whatever
    /// the order given: an event that becomes deliverable because another one applied is applied
    /// in the same call. Returns one fate per event, in the order given.
    pub fn deliver(&mut self, events: &[LedgerEvent]) -> Vec<Fate> {
        let mut fates: Vec<Option<Fate>> = vec![None; events.len()];
        let mut waiting: HashMap<WaitKey, Vec<usize>> = HashMap::new();
        let mut queue: VecDeque<usize> = (0..events.len()).collect();
        while let Some(i) = queue.pop_front() {
            let event = &events[i];
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
        for account in &accounts {
            match (&event.payload, self.accounts.get(*account)) {
                (EventPayload::AccountOpened { .. }, _) => after.push(None),
                (EventPayload::TransferPosted { .. }, None) => {
                    return Err(format!("transfer on account {account}, which was never opened here"));
                }
                (EventPayload::TransferPosted { .. }, Some(state)) => {
                    let amount = event.posting_for(account).unwrap_or(0);
                    let balance = state
                        .balance
                        .checked_add(amount)
                        .ok_or_else(|| format!("balance of {account} out of range: {} + {amount}", state.balance))?;
                    after.push(Some((balance, state.entry_seq + 1)));
                }
            }
        }
        let mut found = Vec::new();
        let mut postings = Vec::with_capacity(accounts.len());
        for (account, after) in accounts.iter().zip(after) {
            let incoming = AccountEvent::of(event, account).expect("checked above");
            let window = self.window.entry((*account).clone()).or_default();
            let concurrent: Vec<AccountEvent> = concurrent_with(window, &incoming).into_iter().cloned().collect();
            window.push(incoming.clone());
            let state = match (&event.payload, after) {
                (EventPayload::AccountOpened { account: spec }, _) => {
                    let state =
                        self.accounts.entry((*account).clone()).or_insert_with(|| AccountState::opened(spec.clone()));
                    // Concurrent openings: every region keeps the same winner's attributes.
                    let winner =
                        window.iter().filter(|h| h.opened.is_some()).fold(&incoming, |w, h| winning_opening(w, h));
                    state.spec = winner.opened.clone().expect("an opening");
                    state
                }
                (_, Some((balance, entry_seq))) => {
                    let state = self.accounts.get_mut(*account).expect("checked above");
                    state.balance = balance;
                    state.entry_seq = entry_seq;
                    state
                }
                (_, None) => unreachable!("a transfer's postings were checked above"),
            };
            state.version.merge(&incoming.vector);
            postings.push(Posting {
                account: (*account).clone(),
                amount: incoming.posting,
                entry_seq: state.entry_seq,
                balance_after: state.balance,
            });
            let (spec, balance) = (state.spec.clone(), state.balance);
            let window = &self.window[*account];
            for other in &concurrent {
                let joint = || joint_balance(balance, window, &incoming, other);
                let kind = classify(Some(&spec), joint, &incoming, other);
                found.push(Conflict::of(kind, account, &incoming, other));
            }
        }
        let mut first_use_of_key = false;
        if let EventPayload::TransferPosted { idempotency_key: Some(key), .. } = &event.payload {
            let mine: Vec<AccountId> = accounts.iter().map(|a| (*a).clone()).collect();
            match self.keys.get(key) {
                Some((theirs, their_accounts)) if theirs.event_id != event.event_id => {
                    let account = mine.iter().chain(their_accounts).min().expect("transfers touch accounts").clone();
                    let incoming = AccountEvent::of(event, accounts[0]).expect("checked above");
                    found.push(Conflict::of(ConflictKind::DuplicateIntent, &account, &incoming, theirs));
                }
                Some(_) => {}
                None => {
                    let incoming = AccountEvent::of(event, accounts[0]).expect("checked above");
                    self.keys.insert(key.clone(), (incoming, mine));
                    first_use_of_key = true;
                }
            }
        }
        self.applied.insert(event.event_id);
        Ok(Applied { postings, conflicts: merge_conflicts(found).into_values().collect(), first_use_of_key })
    }
}

/// What no amount of waiting can fix: a vector missing for a touched account, or one that does not
/// count the event itself.
fn check_shape(event: &LedgerEvent) -> Result<(), String> {
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

/// The balance of an account over the joint causal past of two events on it, from its balance
/// now (every applied event included) minus the events the pair had not seen between them. Those
/// are all in the window (neither event saw them), so the account's whole history is never read.
pub fn joint_balance(balance_now: i64, window: &[AccountEvent], a: &AccountEvent, b: &AccountEvent) -> i64 {
    let mut joint = a.vector.clone();
    joint.merge(&b.vector);
    let unseen: i128 = window.iter().filter(|h| !h.seen_by(&joint)).map(|h| i128::from(h.posting)).sum();
    // Only a sign is asked of it: saturate rather than wrap.
    (i128::from(balance_now) - unseen).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}
