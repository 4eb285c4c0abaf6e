//! An in-memory replica of one region's ledger that originates local events and applies remote
//! ones with causal delivery and conflict detection. It is the reference model of the region
//! node's remote apply (which does the same against PostgreSQL, with the same functions from
//! [`crate::replication`]), and what the convergence property test drives.

use crate::account::{AccountSpec, AccountState};
use crate::apply::{ApplyState, Fate};
use crate::event::{EventPayload, LedgerEvent};
use crate::ids::{AccountId, RegionId};
use crate::money::Amount;
use crate::posting::{PostingError, post_transfer};
use crate::replication::Conflict;
use std::collections::BTreeMap;

/// One region's ledger state.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The region.
    pub region: RegionId,
    /// Accounts, the whole history of each (as the window), idempotency keys, applied events.
    pub state: ApplyState,
    /// Events received but not yet deliverable.
    pub pending: BTreeMap<uuid::Uuid, LedgerEvent>,
    /// Events that can never apply, with the reason.
    pub dead: BTreeMap<uuid::Uuid, String>,
    /// Conflicts detected here, by id.
    pub conflicts: BTreeMap<uuid::Uuid, Conflict>,
    /// Event ids to mint; a counter keeps tests deterministic.
    next_id: u128,
}

impl Replica {
    /// An empty replica of `region`; `id_base` keeps event ids of different replicas apart.
    pub fn new(region: RegionId, id_base: u128) -> Self {
        Self {
            region,
            state: ApplyState::default(),
            pending: BTreeMap::new(),
            dead: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            next_id: id_base,
        }
    }

    /// The accounts and their states.
    pub fn accounts(&self) -> &BTreeMap<AccountId, AccountState> {
        &self.state.accounts
    }

    fn mint(&mut self) -> uuid::Uuid {
        self.next_id += 1;
        uuid::Uuid::from_u128(self.next_id)
    }

    /// Opens an account here; `None` if this region already knows the id.
    pub fn open(&mut self, spec: AccountSpec) -> Option<LedgerEvent> {
        if self.state.accounts.contains_key(&spec.id) {
            return None;
        }
        let mut vector = crate::vv::VersionVector::new();
        vector.increment(&self.region);
        let event = LedgerEvent {
            event_id: self.mint(),
            origin_region: self.region.clone(),
            occurred_at: String::new(),
            vectors: BTreeMap::from([(spec.id.clone(), vector)]),
            payload: EventPayload::AccountOpened { account: spec },
        };
        self.apply_local(&event);
        Some(event)
    }

    /// Executes a transfer here, as the region node's write path does (funds checked locally).
    /// `Ok(None)` when the idempotency key was already executed or seen here (a replay).
    pub fn transfer(
        &mut self,
        from: &AccountId,
        to: &AccountId,
        amount: Amount,
        key: Option<String>,
    ) -> Result<Option<LedgerEvent>, PostingError> {
        if key.as_ref().is_some_and(|k| self.state.keys.contains_key(k)) {
            return Ok(None);
        }
        let accounts = &self.state.accounts;
        let (Some(mut a), Some(mut b)) = (accounts.get(from).cloned(), accounts.get(to).cloned()) else {
            return Err(PostingError::UnknownAccount);
        };
        post_transfer(&mut a, &mut b, amount, None, &self.region)?;
        let event = LedgerEvent {
            event_id: self.mint(),
            origin_region: self.region.clone(),
            occurred_at: String::new(),
            vectors: BTreeMap::from([(from.clone(), a.version.clone()), (to.clone(), b.version.clone())]),
            payload: EventPayload::TransferPosted {
                transfer_id: uuid::Uuid::nil(),
                from: from.clone(),
                to: to.clone(),
                amount,
                currency: a.spec.currency,
                metadata: Default::default(),
                idempotency_key: key,
                request_hash: None,
            },
        };
        self.apply_local(&event);
        Ok(Some(event))
    }

    fn apply_local(&mut self, event: &LedgerEvent) {
        match self.state.apply(event) {
            Ok(applied) => self.record(applied.conflicts),
            Err(reason) => panic!("a local event the write path accepted cannot apply: {reason}"),
        }
    }

    fn record(&mut self, conflicts: Vec<Conflict>) {
        for conflict in conflicts {
            self.conflicts.entry(conflict.conflict_id).or_insert(conflict);
        }
    }

    /// Receives an event from the network: duplicates are dropped, an event whose predecessors are
    /// missing is held, and everything that becomes deliverable is applied, by the same decision
    /// function as the region node's remote apply.
    pub fn receive(&mut self, event: LedgerEvent) {
        let id = event.event_id;
        if self.state.applied.contains(&id) || self.pending.contains_key(&id) || self.dead.contains_key(&id) {
            return;
        }
        self.pending.insert(id, event);
        let held: Vec<LedgerEvent> = self.pending.values().cloned().collect();
        for (event, fate) in held.iter().zip(self.state.deliver(&held)) {
            match fate {
                Fate::Wait(_) => continue,
                Fate::Applied(applied) => self.record(applied.conflicts),
                Fate::AlreadyApplied => {}
                Fate::Dead(reason) => {
                    self.dead.insert(event.event_id, reason);
                }
            }
            self.pending.remove(&event.event_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currency::Currency;
    use crate::replication::{AccountEvent, ConflictKind};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn region(i: usize) -> RegionId {
        RegionId::new(["us-east", "eu-west", "ap-south"][i]).unwrap()
    }

    fn spec(id: &str, allow_negative: bool) -> AccountSpec {
        AccountSpec {
            id: AccountId::new(id).unwrap(),
            currency: Currency::new("USD").unwrap(),
            allow_negative,
            metadata: Default::default(),
        }
    }

    fn deliver_all(replicas: &mut [Replica], log: &[LedgerEvent]) {
        for r in replicas.iter_mut() {
            for e in log {
                r.receive(e.clone());
            }
        }
    }

    /// The worked example of ARCHITECTURE.md: balance 150, two regions debit 100 each while
    /// partitioned; both converge to -50 and report the same overdraft conflict.
    #[test]
    fn partitioned_debits_converge_and_report_one_overdraft() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let mut log = Vec::new();
        log.extend(rs[0].open(spec("world", true)));
        for id in ["acc", "shop-us", "shop-eu"] {
            log.extend(rs[0].open(spec(id, false)));
        }
        let (world, acc) = (AccountId::new("world").unwrap(), AccountId::new("acc").unwrap());
        log.extend(rs[0].transfer(&world, &acc, Amount::new(150).unwrap(), None).unwrap());
        deliver_all(&mut rs, &log);
        let us = rs[0]
            .transfer(&acc, &AccountId::new("shop-us").unwrap(), Amount::new(100).unwrap(), None)
            .unwrap()
            .unwrap();
        let eu = rs[1]
            .transfer(&acc, &AccountId::new("shop-eu").unwrap(), Amount::new(100).unwrap(), None)
            .unwrap()
            .unwrap();
        deliver_all(&mut rs, &[eu.clone(), us.clone()]);
        for r in &rs {
            assert_eq!(r.accounts()[&acc].balance, -50, "{}", r.region);
            assert_eq!(r.conflicts.len(), 1, "{}: {:?}", r.region, r.conflicts);
            let conflict = r.conflicts.values().next().unwrap();
            assert_eq!(conflict.kind, ConflictKind::Overdraft);
            assert_eq!(conflict.conflict_id, crate::replication::conflict_id(us.event_id, eu.event_id));
        }
    }

    #[test]
    fn a_retried_key_in_another_region_is_duplicate_intent_everywhere() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let mut log = Vec::new();
        log.extend(rs[0].open(spec("world", true)));
        log.extend(rs[0].open(spec("acc", false)));
        deliver_all(&mut rs, &log);
        let (world, acc) = (AccountId::new("world").unwrap(), AccountId::new("acc").unwrap());
        let first = rs[0].transfer(&world, &acc, Amount::new(5).unwrap(), Some("k".into())).unwrap().unwrap();
        let retry = rs[1].transfer(&world, &acc, Amount::new(5).unwrap(), Some("k".into())).unwrap().unwrap();
        deliver_all(&mut rs, &[first.clone(), retry.clone()]);
        for r in &rs {
            let kinds: Vec<ConflictKind> = r.conflicts.values().map(|c| c.kind).collect();
            assert_eq!(kinds, [ConflictKind::DuplicateIntent], "{}", r.region);
        }
        // After replication the key replays everywhere: no third execution.
        assert!(rs[2].transfer(&world, &acc, Amount::new(5).unwrap(), Some("k".into())).unwrap().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open { region: usize, account: usize },
        Transfer { region: usize, from: usize, to: usize, amount: i64 },
        Deliver { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..3usize, 0..4usize).prop_map(|(region, account)| Op::Open { region, account }),
            4 => (0..3usize, 0..5usize, 0..5usize, 1..80i64).prop_map(|(region, from, to, amount)| Op::Transfer { region, from, to, amount }),
            4 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        ]
    }

    fn account_name(i: usize) -> String {
        if i == 4 { "world".into() } else { format!("acc{i}") }
    }

    /// Ground truth from the whole history: the pairs of events on a shared account that neither
    /// saw the other.
    fn concurrent_pairs(log: &[LedgerEvent]) -> BTreeSet<uuid::Uuid> {
        let mut pairs = BTreeSet::new();
        for (i, a) in log.iter().enumerate() {
            for b in &log[i + 1..] {
                for account in a.accounts() {
                    let (Some(x), Some(y)) = (AccountEvent::of(a, account), AccountEvent::of(b, account)) else {
                        continue;
                    };
                    if !x.seen_by(&y.vector) && !y.seen_by(&x.vector) {
                        pairs.insert(crate::replication::conflict_id(a.event_id, b.event_id));
                    }
                }
            }
        }
        pairs
    }

    proptest! {
        /// Random histories across three regions, delivered in random orders with duplicates: every
        /// replica converges to the same balances, vectors and conflicts, money is conserved, and a
        /// conflict is reported if and only if two events on one account were concurrent.
        #[test]
        fn replicas_converge_and_report_exactly_the_concurrent_pairs(ops in proptest::collection::vec(op(), 1..120), seed in any::<u64>()) {
            let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
            let mut log: Vec<LedgerEvent> = rs[0].open(spec("world", true)).into_iter().collect();
            let mut inflight: Vec<(usize, LedgerEvent)> = (1..3).map(|to| (to, log[0].clone())).collect();
            for op in ops {
                let made = match op {
                    Op::Open { region, account } => rs[region].open(spec(&account_name(account), false)),
                    Op::Transfer { region, from, to, amount } => {
                        let (from, to) = (AccountId::new(account_name(from)).unwrap(), AccountId::new(account_name(to)).unwrap());
                        if from == to { None } else { rs[region].transfer(&from, &to, Amount::new(amount).unwrap(), None).ok().flatten() }
                    }
                    Op::Deliver { pick } => {
                        if !inflight.is_empty() {
                            let i = pick % inflight.len();
                            let (target, event) = inflight[i].clone();
                            // Keep it in flight half the time: it will arrive again (a duplicate).
                            if pick % 2 == 0 { inflight.swap_remove(i); }
                            rs[target].receive(event);
                        }
                        None
                    }
                };
                if let Some(event) = made {
                    let origin = rs.iter().position(|r| r.region == event.origin_region).unwrap();
                    inflight.extend((0..3).filter(|t| *t != origin).map(|t| (t, event.clone())));
                    log.push(event);
                }
            }
            // Drain the network in a seeded random order, duplicates included.
            let mut order: Vec<(usize, LedgerEvent)> = inflight.into_iter().chain(log.iter().flat_map(|e| (0..3).map(move |t| (t, e.clone())))).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            for (to, event) in order {
                rs[to].receive(event);
            }
            for r in &rs {
                prop_assert!(r.pending.is_empty(), "{} holds events forever", r.region);
                prop_assert_eq!(r.state.applied.len(), log.len());
                prop_assert_eq!(r.accounts().values().map(|a| a.balance).sum::<i64>(), 0);
            }
            let state = |r: &Replica| r.accounts().iter().map(|(k, a)| (k.clone(), a.balance, a.version.clone(), a.spec.clone())).collect::<Vec<_>>();
            let conflicts = |r: &Replica| r.conflicts.values().map(|c| (c.conflict_id, c.kind, c.account.clone())).collect::<Vec<_>>();
            for r in &rs[1..] {
                prop_assert_eq!(state(r), state(&rs[0]));
                prop_assert_eq!(conflicts(r), conflicts(&rs[0]));
            }
            let reported: BTreeSet<uuid::Uuid> = rs[0].conflicts.keys().copied().collect();
            prop_assert_eq!(reported, concurrent_pairs(&log));
        }
    }
}
