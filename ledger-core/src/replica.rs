//! An in-memory replica of one region's ledger that originates local events and applies remote
//! ones with causal delivery and conflict detection. It is the reference model of the region
//! node's remote apply (which does the same against PostgreSQL, with the same functions from
//! [`crate::replication`]), and what the convergence property test drives.

use crate::account::{AccountSpec, AccountState};
use crate::apply::{ApplyState, Fate};
use crate::event::{EventPayload, LedgerEvent, Leg, Settlement};
use crate::ids::{AccountId, RegionId};
use crate::money::Amount;
use crate::posting::{PostingError, post_transaction, post_transfer, reserve, settle};
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

    /// Executes a multi-leg transaction here, all legs or none, as the region node's write path
    /// does. `Ok(None)` for a replay of its key.
    pub fn transaction(&mut self, legs: Vec<Leg>, key: Option<String>) -> Result<Option<LedgerEvent>, PostingError> {
        if key.as_ref().is_some_and(|k| self.state.keys.contains_key(k)) {
            return Ok(None);
        }
        let mut accounts = self.state.accounts.clone();
        post_transaction(&mut accounts, &legs, &self.region).map_err(|(_, e)| e)?;
        let event_id = self.mint();
        let mut event = LedgerEvent {
            event_id,
            origin_region: self.region.clone(),
            occurred_at: String::new(),
            vectors: BTreeMap::new(),
            payload: EventPayload::TransactionPosted {
                transaction_id: event_id,
                legs,
                metadata: Default::default(),
                idempotency_key: key,
                request_hash: None,
            },
        };
        event.vectors = event.accounts().into_iter().map(|id| (id.clone(), accounts[id].version.clone())).collect();
        self.apply_local(&event);
        Ok(Some(event))
    }

    /// Reserves a pending transfer here, as the write path does. `Ok(None)` for a replay of its key.
    pub fn pending(
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
        reserve(&mut a, &mut b, amount, None, &self.region)?;
        let event_id = self.mint();
        let event = LedgerEvent {
            event_id,
            origin_region: self.region.clone(),
            occurred_at: String::new(),
            vectors: BTreeMap::from([(from.clone(), a.version.clone()), (to.clone(), b.version.clone())]),
            payload: EventPayload::TransferPending {
                transfer_id: event_id,
                from: from.clone(),
                to: to.clone(),
                amount,
                currency: a.spec.currency,
                metadata: Default::default(),
                idempotency_key: key,
                request_hash: None,
                expires_at: None,
            },
        };
        self.apply_local(&event);
        Ok(Some(event))
    }

    /// Posts (`Some(amount)`) or voids a pending transfer this region knows as pending.
    pub fn settle(
        &mut self,
        pending_id: uuid::Uuid,
        post: Option<Amount>,
        expired: bool,
    ) -> Result<LedgerEvent, PostingError> {
        let p = self.state.pendings.get(&pending_id).filter(|p| p.settlements.is_empty());
        let p = p.ok_or(PostingError::NotPending(pending_id))?.clone();
        let accounts = &self.state.accounts;
        let (Some(mut a), Some(mut b)) = (accounts.get(&p.from).cloned(), accounts.get(&p.to).cloned()) else {
            return Err(PostingError::UnknownAccount);
        };
        let reserved = Amount::new(p.reserved).map_err(PostingError::Money)?;
        settle(&mut a, &mut b, reserved, post, p.currency, &self.region)?;
        let event_id = self.mint();
        let settlement = match post {
            Some(amount) => Settlement::Post { transfer_id: event_id, amount },
            None => Settlement::Void { expired },
        };
        let event = LedgerEvent {
            event_id,
            origin_region: self.region.clone(),
            occurred_at: String::new(),
            vectors: BTreeMap::from([(p.from.clone(), a.version.clone()), (p.to.clone(), b.version.clone())]),
            payload: EventPayload::PendingSettled {
                pending_id,
                from: p.from.clone(),
                to: p.to.clone(),
                currency: p.currency,
                reserved,
                settlement,
                idempotency_key: None,
                request_hash: None,
            },
        };
        self.apply_local(&event);
        Ok(event)
    }

    fn apply_local(&mut self, event: &LedgerEvent) {
        match self.state.apply(event) {
            Ok(applied) => self.record(applied.conflicts),
            Err(reason) => panic!("a local event the write path accepted cannot apply: {reason}"),
        }
    }

    fn record(&mut self, conflicts: Vec<Conflict>) {
        // A key's conflict grows with each execution: the later record replaces the earlier one.
        for conflict in conflicts {
            match self.conflicts.get(&conflict.conflict_id) {
                Some(known) if !conflict.supersedes(known) => {}
                _ => {
                    self.conflicts.insert(conflict.conflict_id, conflict);
                }
            }
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
    use crate::apply::Episode;
    use crate::currency::Currency;
    use crate::replication::{AccountEvent, ConflictKind, episode_id, pair_kind};
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
            assert!(r.conflicts.is_empty(), "no pair conflict: {:?}", r.conflicts);
            let on_acc: Vec<&Episode> = r.state.episodes.values().filter(|e| e.account == acc).collect();
            assert_eq!(on_acc.len(), 1, "{}: {:?}", r.region, r.state.episodes);
            assert_eq!(on_acc[0].kind, ConflictKind::Overdraft);
            assert_eq!((on_acc[0].events, on_acc[0].joint_balance), (2, -50));
            assert_eq!(on_acc[0].conflict_id, episode_id(&acc, us.event_id.min(eu.event_id)));
        }
    }

    /// Finding 1 of the replication issue: three regions each debit 60 from 150. Every pair's
    /// joint past stays at 30, but all three overdraw the account: one overdraft naming all three,
    /// the same in every region, whatever the order of arrival.
    #[test]
    fn an_overdraft_spread_over_three_regions_is_one_conflict_naming_all_three() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let mut log = Vec::new();
        log.extend(rs[0].open(spec("world", true)));
        for id in ["acc", "shop"] {
            log.extend(rs[0].open(spec(id, false)));
        }
        let (world, acc, shop) =
            (AccountId::new("world").unwrap(), AccountId::new("acc").unwrap(), AccountId::new("shop").unwrap());
        log.extend(rs[0].transfer(&world, &acc, Amount::new(150).unwrap(), None).unwrap());
        deliver_all(&mut rs, &log);
        let debits: Vec<LedgerEvent> =
            (0..3).map(|i| rs[i].transfer(&acc, &shop, Amount::new(60).unwrap(), None).unwrap().unwrap()).collect();
        // Each region receives the other two in a different order.
        for (i, r) in rs.iter_mut().enumerate() {
            for j in [(i + 2) % 3, (i + 1) % 3] {
                r.receive(debits[j].clone());
            }
        }
        let first = debits.iter().map(|e| e.event_id).min().unwrap();
        for r in &rs {
            assert_eq!(r.accounts()[&acc].balance, -30, "{}", r.region);
            let on_acc: Vec<&Episode> = r.state.episodes.values().filter(|e| e.account == acc).collect();
            assert_eq!(on_acc.len(), 1, "{}: {:?}", r.region, r.state.episodes);
            assert_eq!((on_acc[0].kind, on_acc[0].events, on_acc[0].joint_balance), (ConflictKind::Overdraft, 3, -30));
            assert_eq!(on_acc[0].conflict_id, episode_id(&acc, first));
            let members: BTreeSet<uuid::Uuid> = r.state.window[&acc]
                .iter()
                .filter(|h| h.episode == Some(on_acc[0].conflict_id))
                .map(|h| h.event_id)
                .collect();
            assert_eq!(members, debits.iter().map(|e| e.event_id).collect());
            // On `shop` the three credits break nothing: one benign episode counting three.
            let on_shop: Vec<&Episode> = r.state.episodes.values().filter(|e| e.account == shop).collect();
            assert_eq!((on_shop.len(), on_shop[0].kind, on_shop[0].events), (1, ConflictKind::ConcurrentBenign, 3));
        }
    }

    /// Finding 2 of the replication issue: two regions open one id in different currencies and
    /// both post to it. Every region keeps the same winning definition, freezes the account, and
    /// keeps the losing currency's money apart: each currency's total is what was minted in it.
    #[test]
    fn different_definitions_freeze_the_account_and_never_change_money() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let mut world_eur = spec("world-eur", true);
        world_eur.currency = Currency::new("EUR").unwrap();
        let mut log: Vec<LedgerEvent> = rs[0].open(spec("world", true)).into_iter().collect();
        log.extend(rs[0].open(world_eur));
        deliver_all(&mut rs, &log);
        let mut x_eur = spec("x", false);
        x_eur.currency = Currency::new("EUR").unwrap();
        let (x, world, weur) =
            (AccountId::new("x").unwrap(), AccountId::new("world").unwrap(), AccountId::new("world-eur").unwrap());
        let mut made = vec![rs[0].open(spec("x", false)).unwrap(), rs[1].open(x_eur).unwrap()];
        made.extend(rs[0].transfer(&world, &x, Amount::new(70).unwrap(), None).unwrap());
        made.extend(rs[1].transfer(&weur, &x, Amount::new(40).unwrap(), None).unwrap());
        deliver_all(&mut rs, &made);
        let usd = Currency::new("USD").unwrap();
        let eur = Currency::new("EUR").unwrap();
        for r in &rs {
            let a = &r.accounts()[&x];
            assert!(a.frozen, "{}", r.region);
            assert_eq!(a.spec.currency, eur, "eu-west sorts first: its definition wins");
            assert_eq!((a.balance, a.foreign.get(&usd).copied()), (40, Some(70)), "{}", r.region);
            let total = |c: Currency| -> i64 {
                r.accounts()
                    .values()
                    .map(|a| if a.spec.currency == c { a.balance } else { a.foreign.get(&c).copied().unwrap_or(0) })
                    .sum()
            };
            assert_eq!((total(usd), total(eur)), (0, 0), "{}: each currency's total is unchanged", r.region);
            let definitions: Vec<&Conflict> =
                r.conflicts.values().filter(|c| c.kind == ConflictKind::AccountDefinition).collect();
            assert_eq!(definitions.len(), 1, "{}", r.region);
            // No new transfer may touch it until resolved.
            let mut r = r.clone();
            assert_eq!(r.transfer(&world, &x, Amount::new(1).unwrap(), None), Err(PostingError::Frozen(x.clone())));
        }
        assert_eq!(rs[1].state.accounts[&x], rs[0].state.accounts[&x]);
        assert_eq!(rs[2].state.accounts[&x], rs[0].state.accounts[&x]);
    }

    /// Found by the chaos simulation (seed 3070): money posted under a losing definition that nets
    /// to zero left a `foreign` entry of 0 in the regions that kept it apart, and none in the
    /// region that posted it before learning of the winner: the replicas held different states.
    #[test]
    fn money_kept_apart_that_nets_to_zero_leaves_the_same_state_everywhere() {
        let mut rs: Vec<Replica> = (0..2).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let mut x_eur = spec("x", true);
        x_eur.currency = Currency::new("EUR").unwrap();
        let (x, shop) = (AccountId::new("x").unwrap(), AccountId::new("shop").unwrap());
        let mut log = vec![rs[0].open(spec("x", true)).unwrap(), rs[0].open(spec("shop", false)).unwrap()];
        // us-east moves 1 USD out of x and back before it hears of eu-west's EUR opening, which wins.
        log.extend(rs[0].transfer(&x, &shop, Amount::new(1).unwrap(), None).unwrap());
        log.extend(rs[0].transfer(&shop, &x, Amount::new(1).unwrap(), None).unwrap());
        log.push(rs[1].open(x_eur).unwrap());
        deliver_all(&mut rs, &log);
        assert_eq!(rs[0].accounts()[&x].spec.currency.as_str(), "EUR");
        assert!(rs[0].accounts()[&x].foreign.is_empty(), "{:?}", rs[0].accounts()[&x]);
        assert_eq!(rs[1].accounts()[&x], rs[0].accounts()[&x]);
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

    /// A three-leg transaction (a payment with a fee and a tax) made in one region applies whole in
    /// the other two, with one event and each account's counter advanced once; one whose last leg
    /// would overdraw is refused whole.
    #[test]
    fn a_three_leg_transaction_applies_whole_everywhere_and_an_overdrawing_leg_refuses_it_whole() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let mut log: Vec<LedgerEvent> = rs[0].open(spec("world", true)).into_iter().collect();
        for id in ["alice", "shop", "fees", "tax"] {
            log.extend(rs[0].open(spec(id, false)));
        }
        let id = |s: &str| AccountId::new(s).unwrap();
        let leg = |from: &str, to: &str, amount: i64| Leg {
            from: id(from),
            to: id(to),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::new("USD").unwrap(),
        };
        log.extend(rs[0].transfer(&id("world"), &id("alice"), Amount::new(100).unwrap(), None).unwrap());
        deliver_all(&mut rs, &log);
        let before = rs[1].accounts().clone();
        let refused =
            rs[1].transaction(vec![leg("alice", "shop", 90), leg("alice", "fees", 5), leg("alice", "tax", 6)], None);
        assert_eq!(refused, Err(PostingError::InsufficientFunds { balance: 5, amount: 6 }));
        assert_eq!(rs[1].accounts(), &before, "nothing moved");
        let made = rs[1]
            .transaction(
                vec![leg("alice", "shop", 90), leg("alice", "fees", 5), leg("alice", "tax", 5)],
                Some("pay".into()),
            )
            .unwrap()
            .unwrap();
        assert_eq!(made.accounts().len(), 4);
        deliver_all(&mut rs, std::slice::from_ref(&made));
        for r in &rs {
            let balance = |s: &str| r.accounts()[&id(s)].balance;
            assert_eq!(
                [balance("alice"), balance("shop"), balance("fees"), balance("tax")],
                [0, 90, 5, 5],
                "{}",
                r.region
            );
            assert_eq!(r.accounts()[&id("alice")].version.get(&region(1)), 1, "one event, one count");
            assert_eq!(r.accounts()[&id("alice")].entry_seq, 4, "one entry per leg");
            assert!(r.conflicts.is_empty());
        }
        // Its key replays in every region once replicated.
        assert_eq!(rs[2].transaction(vec![leg("alice", "shop", 90)], Some("pay".into())), Ok(None));
    }

    /// A pending transfer made in one region, posted in a second and voided in a third at the
    /// same time: every region ends posted, the reservation released once, the money moved once,
    /// and one `pending-settlement` conflict naming both settlements; a pending transfer posted in
    /// another region than its own, with nothing racing, is no conflict.
    #[test]
    fn a_post_racing_a_void_has_one_outcome_everywhere_and_is_one_conflict() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
        let id = |s: &str| AccountId::new(s).unwrap();
        let mut log: Vec<LedgerEvent> = rs[0].open(spec("world", true)).into_iter().collect();
        log.extend(rs[0].open(spec("card", false)));
        log.extend(rs[0].open(spec("shop", false)));
        log.extend(rs[0].transfer(&id("world"), &id("card"), Amount::new(100).unwrap(), None).unwrap());
        let hold = rs[0].pending(&id("card"), &id("shop"), Amount::new(60).unwrap(), None).unwrap().unwrap();
        let calm = rs[0].pending(&id("card"), &id("shop"), Amount::new(10).unwrap(), None).unwrap().unwrap();
        log.extend([hold.clone(), calm.clone()]);
        deliver_all(&mut rs, &log);
        for r in &rs {
            let card = &r.accounts()[&id("card")];
            assert_eq!((card.balance, card.pending_debits, card.available()), (100, 70, 30), "{}", r.region);
            // Reserved money is not there to spend.
            let mut r = r.clone();
            assert_eq!(
                r.transfer(&id("card"), &id("world"), Amount::new(31).unwrap(), None),
                Err(PostingError::InsufficientFunds { balance: 30, amount: 31 })
            );
        }
        let post = rs[1].settle(hold.aggregate_id().parse().unwrap(), Some(Amount::new(50).unwrap()), false).unwrap();
        let void = rs[2].settle(hold.aggregate_id().parse().unwrap(), None, false).unwrap();
        let elsewhere =
            rs[1].settle(calm.aggregate_id().parse().unwrap(), Some(Amount::new(10).unwrap()), false).unwrap();
        deliver_all(&mut rs, &[void.clone(), post.clone(), elsewhere]);
        for r in &rs {
            let (card, shop) = (&r.accounts()[&id("card")], &r.accounts()[&id("shop")]);
            assert_eq!((card.balance, card.pending_debits), (40, 0), "{}", r.region);
            assert_eq!((shop.balance, shop.pending_credits), (60, 0), "{}", r.region);
            let hold = &r.state.pendings[&hold.aggregate_id().parse().unwrap()];
            assert_eq!(hold.status(), crate::apply::PendingStatus::Posted(50), "{}", r.region);
            let races: Vec<&Conflict> =
                r.conflicts.values().filter(|c| c.kind == ConflictKind::PendingSettlement).collect();
            assert_eq!(races.len(), 1, "{}", r.region);
            let mut sides: Vec<uuid::Uuid> = vec![post.event_id, void.event_id];
            sides.sort();
            assert_eq!(races[0].sides.iter().map(|s| s.0).collect::<Vec<_>>(), sides);
        }
        // Settled: neither posted nor voided again.
        assert_eq!(
            rs[0].settle(hold.aggregate_id().parse().unwrap(), None, false).unwrap_err(),
            PostingError::NotPending(hold.aggregate_id().parse().unwrap())
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// `negative`: the definition allows a negative balance (two regions may open one id
        /// with different definitions).
        Open {
            region: usize,
            account: usize,
            negative: bool,
        },
        /// `key`: an idempotency key from a small set, so retries in other regions happen.
        Transfer {
            region: usize,
            from: usize,
            to: usize,
            amount: i64,
            key: Option<u8>,
        },
        /// A pending transfer reserved.
        Pending {
            region: usize,
            from: usize,
            to: usize,
            amount: i64,
        },
        /// A pending transfer this region knows (`pick` among them) posted (`Some`: at most what it
        /// reserved, as a share) or voided; possibly in two regions at once.
        Settle {
            region: usize,
            pick: usize,
            post: Option<u8>,
        },
        /// Several legs at once (`(from, to, amount)`), all or none.
        Transaction {
            region: usize,
            legs: Vec<(usize, usize, i64)>,
            key: Option<u8>,
        },
        Deliver {
            pick: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..3usize, 0..4usize, proptest::bool::weighted(0.2)).prop_map(|(region, account, negative)| Op::Open { region, account, negative }),
            4 => (0..3usize, 0..5usize, 0..5usize, prop_oneof![4 => 1..80i64, 1 => (crate::money::AMOUNT_MAX - 80)..=crate::money::AMOUNT_MAX], proptest::option::weighted(0.3, 0..6u8))
                .prop_map(|(region, from, to, amount, key)| Op::Transfer { region, from, to, amount, key }),
            2 => (0..3usize, proptest::collection::vec((0..5usize, 0..5usize, prop_oneof![4 => 1..80i64, 1 => (crate::money::AMOUNT_MAX - 80)..=crate::money::AMOUNT_MAX]), 1..5), proptest::option::weighted(0.3, 0..6u8))
                .prop_map(|(region, legs, key)| Op::Transaction { region, legs, key }),
            2 => (0..3usize, 0..5usize, 0..5usize, prop_oneof![4 => 1..80i64, 1 => (crate::money::AMOUNT_MAX - 80)..=crate::money::AMOUNT_MAX])
                .prop_map(|(region, from, to, amount)| Op::Pending { region, from, to, amount }),
            2 => (0..3usize, any::<usize>(), proptest::option::weighted(0.6, 1..=100u8))
                .prop_map(|(region, pick, post)| Op::Settle { region, pick, post }),
            4 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        ]
    }

    fn account_name(i: usize) -> String {
        if i == 4 { "world".into() } else { format!("acc{i}") }
    }

    /// Ground truth from the whole history: per account, the groups of events linked by "neither
    /// saw the other" (the episodes: id → account and members), and the pairs that are conflicts
    /// of their own.
    type Truth = (BTreeMap<uuid::Uuid, (AccountId, BTreeSet<uuid::Uuid>)>, BTreeSet<uuid::Uuid>);
    fn ground_truth(log: &[LedgerEvent]) -> Truth {
        let mut by_account: BTreeMap<AccountId, Vec<AccountEvent>> = BTreeMap::new();
        for e in log {
            for account in e.accounts() {
                by_account.entry(account.clone()).or_default().push(AccountEvent::of(e, account).unwrap());
            }
        }
        let (mut episodes, mut pairs) = (BTreeMap::new(), BTreeSet::new());
        for (account, events) in by_account {
            let mut group: Vec<usize> = (0..events.len()).collect();
            fn root(group: &mut Vec<usize>, i: usize) -> usize {
                if group[i] == i {
                    i
                } else {
                    let r = root(group, group[i]);
                    group[i] = r;
                    r
                }
            }
            let mut linked = BTreeSet::new();
            for i in 0..events.len() {
                for j in i + 1..events.len() {
                    let (x, y) = (&events[i], &events[j]);
                    if !x.seen_by(&y.vector) && !y.seen_by(&x.vector) {
                        linked.extend([i, j]);
                        let (a, b) = (root(&mut group, i), root(&mut group, j));
                        group[a] = b;
                        if pair_kind(x, y).is_some() {
                            pairs.insert(crate::replication::conflict_id(x.event_id, y.event_id));
                        }
                    }
                }
            }
            let mut members: BTreeMap<usize, BTreeSet<uuid::Uuid>> = BTreeMap::new();
            for i in linked {
                let r = root(&mut group, i);
                members.entry(r).or_default().insert(events[i].event_id);
            }
            for m in members.into_values() {
                episodes.insert(episode_id(&account, *m.first().unwrap()), (account.clone(), m));
            }
        }
        (episodes, pairs)
    }

    proptest! {
        /// Random histories across three regions (differing definitions of one id, idempotency
        /// keys retried across regions, amounts up to the bound), delivered in random orders with
        /// duplicates: every replica converges to the same balances, vectors, conflicts and
        /// episodes; money is conserved; the episodes are exactly the groups of concurrent events,
        /// each judged on its joint causal past; every overdrawn account carries an overdraft.
        #[test]
        fn replicas_converge_and_agree_on_every_conflict(ops in proptest::collection::vec(op(), 1..120), seed in any::<u64>()) {
            let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(region(i), (i as u128) << 64)).collect();
            let mut log: Vec<LedgerEvent> = rs[0].open(spec("world", true)).into_iter().collect();
            let mut inflight: Vec<(usize, LedgerEvent)> = (1..3).map(|to| (to, log[0].clone())).collect();
            for op in ops {
                let made = match op {
                    Op::Open { region, account, negative } => rs[region].open(spec(&account_name(account), negative)),
                    Op::Transfer { region, from, to, amount, key } => {
                        let (from, to) = (AccountId::new(account_name(from)).unwrap(), AccountId::new(account_name(to)).unwrap());
                        let key = key.map(|k| format!("key-{k}"));
                        if from == to { None } else { rs[region].transfer(&from, &to, Amount::new(amount).unwrap(), key).ok().flatten() }
                    }
                    Op::Pending { region, from, to, amount } => {
                        let (from, to) = (AccountId::new(account_name(from)).unwrap(), AccountId::new(account_name(to)).unwrap());
                        if from == to { None } else { rs[region].pending(&from, &to, Amount::new(amount).unwrap(), None).ok().flatten() }
                    }
                    Op::Settle { region, pick, post } => {
                        let open: Vec<(uuid::Uuid, i64)> = rs[region].state.pendings.iter().filter(|(_, p)| p.settlements.is_empty()).map(|(id, p)| (*id, p.reserved)).collect();
                        if open.is_empty() { None } else {
                            let (id, reserved) = open[pick % open.len()];
                            let post = post.map(|share| Amount::new((reserved as i128 * i128::from(share) / 100).max(1) as i64).unwrap());
                            rs[region].settle(id, post, false).ok()
                        }
                    }
                    Op::Transaction { region, legs, key } => {
                        let legs: Vec<Leg> = legs.into_iter().filter(|(f, t, _)| f != t).map(|(f, t, amount)| Leg {
                            from: AccountId::new(account_name(f)).unwrap(),
                            to: AccountId::new(account_name(t)).unwrap(),
                            amount: Amount::new(amount).unwrap(),
                            currency: Currency::new("USD").unwrap(),
                        }).collect();
                        let key = key.map(|k| format!("key-{k}"));
                        if legs.is_empty() { None } else { rs[region].transaction(legs, key).ok().flatten() }
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
            let state = |r: &Replica| r.accounts().iter().map(|(k, a)| (k.clone(), a.balance, a.pending_debits, a.pending_credits, a.entry_seq, a.version.clone(), a.spec.clone())).collect::<Vec<_>>();
            // Pending transfers: the same statuses everywhere, and the accounts' pending amounts
            // are exactly what the unsettled ones reserve.
            let pendings = |r: &Replica| r.state.pendings.iter().map(|(id, p)| (*id, p.status(), p.settlements.len())).collect::<Vec<_>>();
            for r in &rs {
                let open: Vec<&crate::apply::PendingRecord> = r.state.pendings.values().filter(|p| p.settlements.is_empty()).collect();
                for (id, a) in r.accounts() {
                    prop_assert_eq!(a.pending_debits, open.iter().filter(|p| p.from == *id).map(|p| p.reserved).sum::<i64>(), "{} {}", r.region, id);
                    prop_assert_eq!(a.pending_credits, open.iter().filter(|p| p.to == *id).map(|p| p.reserved).sum::<i64>(), "{} {}", r.region, id);
                }
            }
            for r in &rs[1..] {
                prop_assert_eq!(pendings(r), pendings(&rs[0]));
            }
            // A pending transfer settled more than once was settled concurrently: one conflict names every settlement.
            for (id, p) in &rs[0].state.pendings {
                let conflict = rs[0].conflicts.get(&crate::replication::settlement_conflict_id(*id));
                prop_assert_eq!(conflict.map(|c| c.sides.len()).unwrap_or(1), p.settlements.len().max(1));
            }
            let conflicts = |r: &Replica| r.conflicts.values().map(|c| (c.conflict_id, c.kind, c.account.clone(), c.sides.clone())).collect::<Vec<_>>();
            let episodes = |r: &Replica| r.state.episodes.values().cloned().collect::<Vec<_>>();
            let members = |r: &Replica| {
                let mut m: BTreeMap<uuid::Uuid, (AccountId, BTreeSet<uuid::Uuid>)> = BTreeMap::new();
                for (account, window) in &r.state.window {
                    for h in window {
                        if let Some(e) = h.episode {
                            m.entry(e).or_insert_with(|| (account.clone(), BTreeSet::new())).1.insert(h.event_id);
                        }
                    }
                }
                m
            };
            for r in &rs[1..] {
                prop_assert_eq!(state(r), state(&rs[0]));
                prop_assert_eq!(conflicts(r), conflicts(&rs[0]));
                prop_assert_eq!(episodes(r), episodes(&rs[0]));
                prop_assert_eq!(members(r), members(&rs[0]));
            }
            let (truth, definition_pairs) = ground_truth(&log);
            prop_assert_eq!(members(&rs[0]), truth);
            let r = &rs[0];
            for e in r.state.episodes.values() {
                prop_assert_eq!(e.events as usize, members(r)[&e.conflict_id].1.len());
                // Judged on the joint causal past, recomputed here from the whole log.
                let joint: i64 = log.iter().filter_map(|x| AccountEvent::of(x, &e.account)).filter(|h| h.seen_by(&e.joint)).map(|h| h.posting).sum();
                prop_assert_eq!(e.joint_balance, joint);
                let overdraft = !r.accounts()[&e.account].spec.allow_negative && joint < 0;
                prop_assert_eq!(e.kind == ConflictKind::Overdraft, overdraft);
            }
            // The overdraft rule: an account that forbids a negative balance and ends below zero
            // carries an overdraft conflict.
            for (id, a) in r.accounts() {
                if !a.spec.allow_negative && a.balance < 0 {
                    prop_assert!(r.state.episodes.values().any(|e| e.account == *id && e.kind == ConflictKind::Overdraft), "{} is overdrawn with no overdraft conflict", id);
                }
            }
            let reported_pairs: BTreeSet<uuid::Uuid> = r.conflicts.values().filter(|c| c.kind == ConflictKind::AccountDefinition).map(|c| c.conflict_id).collect();
            prop_assert_eq!(reported_pairs, definition_pairs);
            // Every key executed more than once is one conflict listing every execution.
            let mut by_key: BTreeMap<String, BTreeSet<uuid::Uuid>> = BTreeMap::new();
            for e in &log {
                if let Some(k) = e.idempotency_key() {
                    by_key.entry(k.clone()).or_default().insert(e.event_id);
                }
            }
            let expected: BTreeMap<uuid::Uuid, BTreeSet<uuid::Uuid>> = by_key.into_iter().filter(|(_, ids)| ids.len() > 1).map(|(k, ids)| (crate::replication::key_conflict_id(&k), ids)).collect();
            let reported: BTreeMap<uuid::Uuid, BTreeSet<uuid::Uuid>> = r.conflicts.values().filter(|c| c.kind == ConflictKind::DuplicateIntent).map(|c| (c.conflict_id, c.sides.iter().map(|s| s.0).collect())).collect();
            prop_assert_eq!(reported, expected);
        }
    }
}
