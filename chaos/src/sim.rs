//! A deterministic simulation of the replication rules (VOPR-style): per seed, a small world of
//! 2–4 in-memory [`Replica`]s, accounts in one or two currencies, and a seeded sequence of client
//! operations and network faults (reordering, duplicates, delays, partitions, crashed regions).
//! Afterwards every fault heals, every message arrives, and the end state is checked against
//! ground truth recomputed from the log of accepted events, not against the replicas' own
//! bookkeeping. A seed reproduces its history exactly, so a failure is replayed with `--seed`.
//!
//! The network is the durable log the real system has (Kafka plus the replicator): a message is
//! delayed, reordered or delivered twice, never lost. A crashed region neither originates nor
//! receives until it restarts; what it committed stays committed.

use ledger_core::account::{AccountSpec, AccountState};
use ledger_core::apply::KeyUses;
use ledger_core::money::{AMOUNT_MAX, Amount};
use ledger_core::replica::Replica;
use ledger_core::replication::{AccountEvent, Conflict, ConflictKind, conflict_id, key_conflict_id, winning_opening};
use ledger_core::{AccountId, Currency, EventPayload, LedgerEvent, RegionId, VersionVector};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Region names, in an order that differs from their sort order, so the region that wins a
/// concurrent opening (the one sorting first) is not simply the first one created.
const REGIONS: [&str; 4] = ["us-east", "eu-west", "sa-east", "ap-south"];

/// The size of the histories the simulator draws.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Fewest steps (client operations and network events) before the final drain.
    pub min_steps: usize,
    /// Most steps before the final drain.
    pub max_steps: usize,
    /// Worker threads for [`run`].
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { min_steps: 20, max_steps: 80, threads: std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }
}

/// A broken invariant (or a panic), with the seed and step that reproduce it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}, step {step}: {description}")]
pub struct Violation {
    /// The seed of the history.
    pub seed: u64,
    /// The step at which it was detected (the number of steps plus one for the end-of-history check).
    pub step: usize,
    /// What broke, on one line.
    pub description: String,
}

/// What the histories did, summed over histories by [`SimStats::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Histories run.
    pub histories: u64,
    /// Steps run, the final drain excluded.
    pub steps: u64,
    /// Events accepted by a region (openings and transfers).
    pub events: u64,
    /// Transfers a region accepted.
    pub transfers: u64,
    /// Transfers a region refused (funds, frozen, currency, unknown account, bounds).
    pub refused: u64,
    /// Transfers a region answered as a replay of an idempotency key it knew.
    pub replays: u64,
    /// Keyed transfers retried in another region, as a client failing over does.
    pub retries: u64,
    /// One account id opened in two regions at once.
    pub concurrent_opens: u64,
    /// Messages handed to a replica.
    pub deliveries: u64,
    /// Deliveries of an event the replica already had (applied, held or dead).
    pub duplicates: u64,
    /// Deliveries that overtook an older message to the same region.
    pub out_of_order: u64,
    /// Deliveries left held (pending) because a causal predecessor was missing.
    pub held: u64,
    /// Messages delayed.
    pub delays: u64,
    /// Pairs of regions partitioned.
    pub partitions: u64,
    /// Region crashes.
    pub crashes: u64,
    /// Overdraft episodes at the end.
    pub overdrafts: u64,
    /// Concurrent-benign episodes at the end.
    pub benign: u64,
    /// Duplicate-intent conflicts at the end.
    pub duplicate_intents: u64,
    /// Account-definition conflicts at the end.
    pub definitions: u64,
    /// Frozen accounts at the end.
    pub frozen: u64,
    /// Dead events at the end.
    pub dead: u64,
}

impl SimStats {
    /// Adds `other`'s counters to these.
    pub fn merge(&mut self, other: &SimStats) {
        let SimStats {
            histories,
            steps,
            events,
            transfers,
            refused,
            replays,
            retries,
            concurrent_opens,
            deliveries,
            duplicates,
            out_of_order,
            held,
            delays,
            partitions,
            crashes,
            overdrafts,
            benign,
            duplicate_intents,
            definitions,
            frozen,
            dead,
        } = other;
        self.histories += histories;
        self.steps += steps;
        self.events += events;
        self.transfers += transfers;
        self.refused += refused;
        self.replays += replays;
        self.retries += retries;
        self.concurrent_opens += concurrent_opens;
        self.deliveries += deliveries;
        self.duplicates += duplicates;
        self.out_of_order += out_of_order;
        self.held += held;
        self.delays += delays;
        self.partitions += partitions;
        self.crashes += crashes;
        self.overdrafts += overdrafts;
        self.benign += benign;
        self.duplicate_intents += duplicate_intents;
        self.definitions += definitions;
        self.frozen += frozen;
        self.dead += dead;
    }

    /// Conflicts of every kind detected (episodes included).
    pub fn conflicts(&self) -> u64 {
        self.overdrafts + self.benign + self.duplicate_intents + self.definitions
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Histories run (passed or not).
    pub histories: u64,
    /// Counters of the histories that passed.
    pub stats: SimStats,
    /// The smallest failing seed of the range, if any seed failed.
    pub failure: Option<Violation>,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// A world at the end of a history: the replicas and every event a region accepted.
#[derive(Debug, Clone)]
pub struct World {
    /// One replica per region.
    pub replicas: Vec<Replica>,
    /// Every event a region accepted, in the order they were accepted.
    pub log: Vec<LedgerEvent>,
}

/// One message of the durable log on its way to a region.
#[derive(Debug, Clone, Copy)]
struct Msg {
    to: usize,
    /// Index in the log.
    event: usize,
    /// Not deliverable before this step (a delay).
    not_before: usize,
}

/// A keyed transfer a client sent, so it can retry it elsewhere.
#[derive(Debug, Clone)]
struct Attempt {
    from: usize,
    to: usize,
    amount: Amount,
    key: String,
}

struct Sim {
    rng: StdRng,
    step: usize,
    trace: bool,
    regions: Vec<RegionId>,
    replicas: Vec<Replica>,
    log: Vec<LedgerEvent>,
    /// The intended definition of each account of the world.
    catalog: Vec<AccountSpec>,
    currencies: Vec<Currency>,
    inflight: Vec<Msg>,
    /// (region, log index) pairs delivered once, for duplicate deliveries.
    delivered: Vec<(usize, usize)>,
    /// Partitioned pairs (a < b) and the step they heal at.
    cut: Vec<(usize, usize, usize)>,
    /// A region is down while the step is below this.
    down_until: Vec<usize>,
    attempts: Vec<Attempt>,
    stats: SimStats,
}

thread_local! {
    /// The step the history of this thread is at: what a panic leaves of the simulation's state.
    static STEP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace {
            println!("step {:>3}: {}", $sim.step, format!($($arg)*));
        }
    };
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(2..=4);
        let regions: Vec<RegionId> = REGIONS[..n].iter().map(|r| RegionId::new(*r).expect("valid")).collect();
        let replicas = regions.iter().enumerate().map(|(i, r)| Replica::new(r.clone(), (i as u128) << 64)).collect();
        let mut currencies = vec![Currency::new("USD").expect("valid")];
        if rng.random_bool(0.5) {
            currencies.push(Currency::new("EUR").expect("valid"));
        }
        let spec = |id: String, currency: Currency, allow_negative: bool| AccountSpec {
            id: AccountId::new(id).expect("valid"),
            currency,
            allow_negative,
            metadata: Default::default(),
        };
        // One funding account per currency (the only place money comes from), then customers.
        let mut catalog: Vec<AccountSpec> =
            currencies.iter().map(|c| spec(format!("world-{}", c.as_str().to_lowercase()), *c, true)).collect();
        for i in 0..rng.random_range(2..=4) {
            let currency = *currencies.choose(&mut rng).expect("one at least");
            catalog.push(spec(format!("c{i}"), currency, false));
        }
        Self {
            rng,
            step: 0,
            trace,
            down_until: vec![0; n],
            regions,
            replicas,
            log: Vec::new(),
            catalog,
            currencies,
            inflight: Vec::new(),
            delivered: Vec::new(),
            cut: Vec::new(),
            attempts: Vec::new(),
            stats: SimStats { histories: 1, ..SimStats::default() },
        }
    }

    /// The event's origin and counter, as `us-east#3`: ids are minted per replica from `i << 64`.
    fn name(&self, id: uuid::Uuid) -> String {
        let v = id.as_u128();
        let region = self.regions.get((v >> 64) as usize).map_or("?", |r| r.as_str());
        format!("{region}#{}", v as u64)
    }

    fn up(&self, r: usize) -> bool {
        self.step >= self.down_until[r]
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        let (a, b) = (a.min(b), a.max(b));
        !self.cut.iter().any(|(x, y, _)| (*x, *y) == (a, b))
    }

    fn origin(&self, event: usize) -> usize {
        (self.log[event].event_id.as_u128() >> 64) as usize
    }

    fn deliverable(&self, m: &Msg) -> bool {
        m.not_before <= self.step && self.up(m.to) && self.linked(self.origin(m.event), m.to)
    }

    fn up_regions(&self) -> Vec<usize> {
        (0..self.regions.len()).filter(|r| self.up(*r)).collect()
    }

    fn run(&mut self, steps: usize) -> Result<(), String> {
        for step in 1..=steps {
            self.step = step;
            STEP.set(step);
            self.heal();
            self.stats.steps += 1;
            match self.rng.random_range(0..100) {
                0..8 => self.open()?,
                8..12 => self.concurrent_open()?,
                12..47 => self.transfer()?,
                47..52 => self.retry()?,
                52..67 => self.deliver_next(false)?,
                67..82 => self.deliver_next(true)?,
                82..88 => self.duplicate()?,
                88..92 => self.delay(),
                92..96 => self.partition(),
                _ => self.crash(),
            }
        }
        self.step = steps + 1;
        STEP.set(self.step);
        self.drain()
    }

    fn heal(&mut self) {
        let step = self.step;
        let healed: Vec<(usize, usize, usize)> = self.cut.iter().copied().filter(|c| c.2 <= step).collect();
        for (a, b, _) in healed {
            trace!(self, "heal {} <-> {}", self.regions[a], self.regions[b]);
        }
        self.cut.retain(|c| c.2 > step);
        for r in 0..self.regions.len() {
            if self.down_until[r] == step && step > 0 {
                trace!(self, "restart {}", self.regions[r]);
            }
        }
    }

    fn pick_up_region(&mut self) -> Option<usize> {
        let up = self.up_regions();
        let r = up.choose(&mut self.rng).copied();
        if r.is_none() {
            trace!(self, "every region is down");
        }
        r
    }

    /// Another definition of the same id: another currency or the other overdraft rule.
    fn variant(&mut self, spec: &AccountSpec) -> AccountSpec {
        let mut other = spec.clone();
        if self.currencies.len() > 1 && self.rng.random_bool(0.5) {
            other.currency = *self.currencies.iter().find(|c| **c != spec.currency).expect("two currencies");
        } else {
            other.allow_negative = !spec.allow_negative;
        }
        other
    }

    fn open(&mut self) -> Result<(), String> {
        let Some(r) = self.pick_up_region() else { return Ok(()) };
        let mut spec = self.catalog.choose(&mut self.rng).expect("accounts").clone();
        if self.rng.random_bool(0.1) {
            spec = self.variant(&spec);
        }
        self.open_in(r, spec)
    }

    fn open_in(&mut self, r: usize, spec: AccountSpec) -> Result<(), String> {
        let knew = self.replicas[r].accounts().contains_key(&spec.id);
        let what = format!("{} {} negative={}", spec.id, spec.currency, spec.allow_negative);
        match self.replicas[r].open(spec) {
            Some(event) => {
                trace!(self, "{} opens {what}: {}", self.regions[r], self.name(event.event_id));
                if knew {
                    return Err(format!("{} opened {what} again although it knew the id", self.regions[r]));
                }
                self.accept(r, event)
            }
            None => {
                trace!(self, "{} opens {what}: refused, the id is known here", self.regions[r]);
                if !knew {
                    return Err(format!("{} refused to open {what}, an id it did not know", self.regions[r]));
                }
                Ok(())
            }
        }
    }

    /// The same id opened in two regions before either hears of the other: the same definition
    /// (benign) or a different one (the account freezes everywhere).
    fn concurrent_open(&mut self) -> Result<(), String> {
        let spec = self.catalog.choose(&mut self.rng).expect("accounts").clone();
        let mut fresh: Vec<usize> =
            self.up_regions().into_iter().filter(|r| !self.replicas[*r].accounts().contains_key(&spec.id)).collect();
        if fresh.len() < 2 {
            trace!(self, "no two running regions without {}", spec.id);
            return Ok(());
        }
        fresh.shuffle(&mut self.rng);
        let other = if self.rng.random_bool(0.5) { self.variant(&spec) } else { spec.clone() };
        self.stats.concurrent_opens += 1;
        self.open_in(fresh[0], spec)?;
        self.open_in(fresh[1], other)
    }

    fn amount(&mut self, r: usize, from: usize) -> Amount {
        let balance = self.replicas[r].accounts().get(&self.catalog[from].id).map_or(0, |a| a.balance);
        let units = match self.rng.random_range(0..100) {
            0..55 => self.rng.random_range(1..=100),
            // Everything the source holds here: the debit that races best with another region's.
            55..75 => balance,
            75..82 => balance + 1,
            82..92 => self.rng.random_range(1..=AMOUNT_MAX),
            _ => AMOUNT_MAX,
        };
        Amount::new(units.clamp(1, AMOUNT_MAX)).expect("clamped")
    }

    fn transfer(&mut self) -> Result<(), String> {
        let Some(r) = self.pick_up_region() else { return Ok(()) };
        let n = self.catalog.len();
        let accounts = self.replicas[r].accounts();
        let known: Vec<usize> = (0..n).filter(|i| accounts.contains_key(&self.catalog[*i].id)).collect();
        // The funding accounts come first in the catalog: debit them often, so money exists.
        let funding: Vec<usize> = known.iter().copied().filter(|i| *i < self.currencies.len()).collect();
        let from = if !funding.is_empty() && self.rng.random_bool(0.3) {
            funding.choose(&mut self.rng).copied()
        } else {
            known.choose(&mut self.rng).copied()
        };
        // Mostly a transfer the region can make (both accounts known here, in one currency), so
        // money moves; sometimes any pair, which the region must refuse without a trace.
        let to = from.and_then(|from| {
            let currency = accounts[&self.catalog[from].id].spec.currency;
            let fits: Vec<usize> = known
                .iter()
                .copied()
                .filter(|i| *i != from && accounts[&self.catalog[*i].id].spec.currency == currency)
                .collect();
            fits.choose(&mut self.rng).copied()
        });
        let (from, to) = match (from, to) {
            (Some(from), Some(to)) if self.rng.random_bool(0.9) => (from, to),
            _ if self.rng.random_bool(0.5) => {
                // Nothing to move between yet, most likely: open something instead.
                let spec = self.catalog.choose(&mut self.rng).expect("accounts").clone();
                return self.open_in(r, spec);
            }
            _ => {
                let from = self.rng.random_range(0..n);
                (from, (from + self.rng.random_range(1..n)) % n)
            }
        };
        let amount = self.amount(r, from);
        let key = self.rng.random_bool(0.35).then(|| format!("k{}", self.rng.random_range(0..6)));
        if let Some(key) = &key {
            self.attempts.push(Attempt { from, to, amount, key: key.clone() });
        }
        self.transfer_in(r, from, to, amount, key)
    }

    /// A client that timed out resends a keyed transfer, possibly to another region.
    fn retry(&mut self) -> Result<(), String> {
        let Some(attempt) = self.attempts.choose(&mut self.rng).cloned() else {
            return self.transfer();
        };
        let Some(r) = self.pick_up_region() else { return Ok(()) };
        self.stats.retries += 1;
        trace!(self, "retry of key {} in {}", attempt.key, self.regions[r]);
        self.transfer_in(r, attempt.from, attempt.to, attempt.amount, Some(attempt.key))
    }

    fn transfer_in(
        &mut self,
        r: usize,
        from: usize,
        to: usize,
        amount: Amount,
        key: Option<String>,
    ) -> Result<(), String> {
        let (from_id, to_id) = (self.catalog[from].id.clone(), self.catalog[to].id.clone());
        let replica = &self.replicas[r];
        let before = (
            replica.accounts().get(&from_id).cloned(),
            replica.accounts().get(&to_id).cloned(),
            replica.state.applied.len(),
        );
        let known_key = key.as_ref().is_some_and(|k| replica.state.keys.contains_key(k));
        let what = format!(
            "{} {from_id} -> {to_id} {}{}",
            self.regions[r],
            amount.minor_units(),
            key.as_ref().map(|k| format!(" key {k}")).unwrap_or_default()
        );
        let result = self.replicas[r].transfer(&from_id, &to_id, amount, key);
        let replica = &self.replicas[r];
        let after = (
            replica.accounts().get(&from_id).cloned(),
            replica.accounts().get(&to_id).cloned(),
            replica.state.applied.len(),
        );
        match result {
            Ok(Some(event)) => {
                trace!(self, "transfer {what}: accepted as {}", self.name(event.event_id));
                self.stats.transfers += 1;
                if known_key {
                    return Err(format!("transfer {what} executed a key this region knew"));
                }
                let (Some(a), Some(b)) = (&before.0, &before.1) else {
                    return Err(format!("transfer {what} accepted on an account this region did not know"));
                };
                if a.frozen || b.frozen {
                    return Err(format!("transfer {what} accepted on a frozen account"));
                }
                let source = after.0.as_ref().expect("known");
                if !source.spec.allow_negative && source.balance < 0 {
                    return Err(format!("transfer {what} overdrew {from_id} locally to {}", source.balance));
                }
                if after.2 != before.2 + 1 {
                    return Err(format!("transfer {what} applied {} events here", after.2 - before.2));
                }
                self.accept(r, event)
            }
            Ok(None) => {
                trace!(self, "transfer {what}: replay of a known key");
                self.stats.replays += 1;
                if !known_key {
                    return Err(format!("transfer {what} answered as a replay of a key this region never saw"));
                }
                if before != after {
                    return Err(format!("the replay {what} changed the region's state"));
                }
                Ok(())
            }
            Err(error) => {
                trace!(self, "transfer {what}: refused: {error}");
                self.stats.refused += 1;
                if before != after {
                    return Err(format!("the refused transfer {what} ({error}) changed the region's state"));
                }
                Ok(())
            }
        }
    }

    /// A region committed `event`: it goes into the log, on its way to every other region.
    fn accept(&mut self, origin: usize, event: LedgerEvent) -> Result<(), String> {
        if event.origin_region != self.regions[origin] {
            return Err(format!("{} minted an event from {}", self.regions[origin], event.origin_region));
        }
        self.stats.events += 1;
        let index = self.log.len();
        self.log.push(event);
        for to in (0..self.regions.len()).filter(|t| *t != origin) {
            self.inflight.push(Msg { to, event: index, not_before: self.step });
        }
        money_is_conserved(&self.replicas[origin])
    }

    /// Hands one message to a region; `duplicate` when it is a copy sent again.
    fn receive(&mut self, to: usize, event: usize, duplicate: bool) -> Result<(), String> {
        let replica = &mut self.replicas[to];
        let id = self.log[event].event_id;
        let known =
            replica.state.applied.contains(&id) || replica.pending.contains_key(&id) || replica.dead.contains_key(&id);
        let applied_before = replica.state.applied.len();
        replica.receive(self.log[event].clone());
        let (applied, held) = (replica.state.applied.len() - applied_before, replica.pending.contains_key(&id));
        self.stats.deliveries += 1;
        self.stats.duplicates += u64::from(known);
        self.stats.held += u64::from(held && !known);
        if !known {
            self.delivered.push((to, event));
        }
        trace!(
            self,
            "{}deliver {} to {}: {}",
            if duplicate { "duplicate " } else { "" },
            self.name(id),
            self.regions[to],
            match (known, held) {
                (true, _) => "already known, dropped".to_string(),
                (false, true) => "held, a predecessor is missing".to_string(),
                (false, false) => format!("{applied} applied"),
            }
        );
        if known && applied != 0 {
            return Err(format!("a duplicate of {} applied {applied} events in {}", self.name(id), self.regions[to]));
        }
        money_is_conserved(&self.replicas[to])
    }

    /// The oldest deliverable message (`shuffle` false) or any deliverable one.
    fn deliver_next(&mut self, shuffle: bool) -> Result<(), String> {
        let ready: Vec<usize> = (0..self.inflight.len()).filter(|i| self.deliverable(&self.inflight[*i])).collect();
        let Some(&i) = (if shuffle { ready.choose(&mut self.rng) } else { ready.first() }) else {
            trace!(self, "nothing deliverable");
            return Ok(());
        };
        let m = self.inflight.remove(i);
        if self.inflight[..i].iter().any(|o| o.to == m.to) {
            self.stats.out_of_order += 1;
        }
        self.receive(m.to, m.event, false)
    }

    fn duplicate(&mut self) -> Result<(), String> {
        // A message delivered before, or one still in flight delivered and kept (at-least-once).
        let copy = if self.rng.random_bool(0.5) {
            let candidates: Vec<(usize, usize)> = self
                .delivered
                .iter()
                .copied()
                .filter(|(to, e)| self.up(*to) && self.linked(self.origin(*e), *to))
                .collect();
            candidates.choose(&mut self.rng).copied()
        } else {
            let ready: Vec<Msg> = self.inflight.iter().copied().filter(|m| self.deliverable(m)).collect();
            ready.choose(&mut self.rng).map(|m| (m.to, m.event))
        };
        match copy {
            Some((to, event)) => self.receive(to, event, true),
            None => {
                trace!(self, "nothing to duplicate");
                Ok(())
            }
        }
    }

    fn delay(&mut self) {
        if self.inflight.is_empty() {
            trace!(self, "nothing to delay");
            return;
        }
        let i = self.rng.random_range(0..self.inflight.len());
        let until = self.step + self.rng.random_range(2..=12);
        self.inflight[i].not_before = until;
        self.stats.delays += 1;
        let m = self.inflight[i];
        trace!(self, "delay {} to {} until step {until}", self.name(self.log[m.event].event_id), self.regions[m.to]);
    }

    fn partition(&mut self) {
        let n = self.regions.len();
        let a = self.rng.random_range(0..n);
        let b = (a + self.rng.random_range(1..n)) % n;
        let (a, b) = (a.min(b), a.max(b));
        if !self.linked(a, b) {
            trace!(self, "{} <-> {} already partitioned", self.regions[a], self.regions[b]);
            return;
        }
        let heal = self.step + self.rng.random_range(3..=25);
        self.cut.push((a, b, heal));
        self.stats.partitions += 1;
        trace!(self, "partition {} <-> {} until step {heal}", self.regions[a], self.regions[b]);
    }

    fn crash(&mut self) {
        let Some(r) = self.pick_up_region() else { return };
        self.down_until[r] = self.step + self.rng.random_range(3..=20);
        self.stats.crashes += 1;
        trace!(self, "crash {} until step {}", self.regions[r], self.down_until[r]);
    }

    /// Heals everything and delivers every message, in a seeded order, with duplicates of some.
    fn drain(&mut self) -> Result<(), String> {
        trace!(self, "heal everything, deliver every message");
        self.cut.clear();
        self.down_until.iter_mut().for_each(|d| *d = 0);
        let mut rest: Vec<(usize, usize, bool)> = self.inflight.drain(..).map(|m| (m.to, m.event, false)).collect();
        for event in 0..self.log.len() {
            for to in 0..self.regions.len() {
                if self.rng.random_bool(0.25) {
                    rest.push((to, event, true));
                }
            }
        }
        rest.shuffle(&mut self.rng);
        for (to, event, duplicate) in rest {
            self.receive(to, event, duplicate)?;
        }
        Ok(())
    }

    fn finish(mut self) -> (World, SimStats) {
        let r = &self.replicas[0];
        let episodes = r.state.episodes.values();
        self.stats.overdrafts = episodes.clone().filter(|e| e.kind == ConflictKind::Overdraft).count() as u64;
        self.stats.benign = episodes.filter(|e| e.kind == ConflictKind::ConcurrentBenign).count() as u64;
        let kind = |k| r.conflicts.values().filter(|c| c.kind == k).count() as u64;
        self.stats.duplicate_intents = kind(ConflictKind::DuplicateIntent);
        self.stats.definitions = kind(ConflictKind::AccountDefinition);
        self.stats.frozen = r.accounts().values().filter(|a| a.frozen).count() as u64;
        self.stats.dead = r.dead.len() as u64;
        (World { replicas: self.replicas, log: self.log }, self.stats)
    }
}

/// Per currency, what an account holds: its balance in its own currency, plus what is kept apart
/// in others (postings made under a definition that lost).
fn holdings(a: &AccountState) -> BTreeMap<Currency, i128> {
    let mut all: BTreeMap<Currency, i128> = a.foreign.iter().map(|(c, b)| (*c, i128::from(*b))).collect();
    *all.entry(a.spec.currency).or_insert(0) += i128::from(a.balance);
    all.retain(|_, b| *b != 0);
    all
}

/// Double entry: money only moves, so in every currency the balances sum to zero.
fn money_is_conserved(r: &Replica) -> Result<(), String> {
    let mut total: BTreeMap<Currency, i128> = BTreeMap::new();
    for a in r.accounts().values() {
        for (c, b) in holdings(a) {
            *total.entry(c).or_insert(0) += b;
        }
    }
    match total.iter().find(|(_, sum)| **sum != 0) {
        Some((c, sum)) => Err(format!("{}: the {c} balances sum to {sum}, not 0", r.region)),
        None => Ok(()),
    }
}

/// Runs the history of `seed` with the cheap checks of every step, up to the end of the drain.
/// With `trace`, prints every step on stdout. The end-of-history invariants are [`check_world`]'s.
pub fn simulate(seed: u64, cfg: &SimConfig, trace: bool) -> Result<(World, SimStats), Violation> {
    let mut sim = Sim::new(seed, trace);
    let steps = sim.rng.random_range(cfg.min_steps..=cfg.max_steps.max(cfg.min_steps));
    if trace {
        let accounts: Vec<String> = sim
            .catalog
            .iter()
            .map(|s| format!("{} {}{}", s.id, s.currency, if s.allow_negative { " negative" } else { "" }))
            .collect();
        let regions: Vec<&str> = sim.regions.iter().map(|r| r.as_str()).collect();
        println!("seed {seed}: {steps} steps, regions {}, accounts {}", regions.join(" "), accounts.join(", "));
    }
    match sim.run(steps) {
        Ok(()) => Ok(sim.finish()),
        Err(description) => Err(Violation { seed, step: sim.step, description }),
    }
}

/// Runs and checks one history; a panic anywhere is a violation too.
pub fn check(seed: u64, cfg: &SimConfig) -> Result<SimStats, Violation> {
    check_traced(seed, cfg, false)
}

fn check_traced(seed: u64, cfg: &SimConfig, trace: bool) -> Result<SimStats, Violation> {
    STEP.set(0);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let (world, stats) = simulate(seed, cfg, trace)?;
        let end = stats.steps as usize + 1;
        check_world(&world).map_err(|description| Violation { seed, step: end, description })?;
        Ok(stats)
    }));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Err(Violation { seed, step: STEP.get(), description: format!("panic: {message}") })
    })
}

/// What the log says an account must be, recomputed without the replicas' code.
#[derive(Default)]
struct Truth<'a> {
    openings: Vec<&'a LedgerEvent>,
    transfers: i64,
    /// Per currency, the postings' sum.
    money: BTreeMap<Currency, i128>,
    /// Every event's vector on the account, joined.
    version: VersionVector,
    /// Events per origin.
    per_origin: BTreeMap<RegionId, u64>,
}

/// The end-of-history invariants, on a world whose every message was delivered: convergence,
/// conservation, exactly-once application of every accepted event (and nothing else), the
/// idempotency, definition and overdraft rules. `Err` names the first broken one.
pub fn check_world(world: &World) -> Result<(), String> {
    let Some(first) = world.replicas.first() else { return Err("no replica".into()) };
    for r in &world.replicas {
        // An event held now waits forever: only an event after a dead one may.
        if !r.pending.is_empty() && r.dead.is_empty() {
            let held: Vec<String> = r.pending.keys().map(|id| id.to_string()).collect();
            return Err(format!("{} holds events it can never apply: {}", r.region, held.join(", ")));
        }
        money_is_conserved(r)?;
    }
    for r in &world.replicas[1..] {
        converged(first, r)?;
    }
    let ids: BTreeSet<uuid::Uuid> = world.log.iter().map(|e| e.event_id).collect();
    for r in &world.replicas {
        if r.state.applied != ids {
            let missing = ids.difference(&r.state.applied).count();
            let extra = r.state.applied.difference(&ids).count();
            return Err(format!(
                "{} applied {extra} events nobody accepted and misses {missing} accepted ones",
                r.region
            ));
        }
    }
    // Every account, from the log alone.
    let mut truth: BTreeMap<&AccountId, Truth> = BTreeMap::new();
    for e in &world.log {
        for account in e.accounts() {
            let t = truth.entry(account).or_default();
            match &e.payload {
                EventPayload::AccountOpened { .. } => t.openings.push(e),
                EventPayload::TransferPosted { .. }
                | EventPayload::TransactionPosted { .. }
                | EventPayload::TransferPending { .. }
                | EventPayload::PendingSettled { .. } => {
                    t.transfers += e.entries_for(account);
                    let currency = e.currency_for(account).expect("a posting event posts to its accounts");
                    *t.money.entry(currency).or_insert(0) += i128::from(e.posting_for(account).unwrap_or(0));
                }
            }
            if let Some(v) = e.vectors.get(account) {
                t.version.merge(v);
            }
            *t.per_origin.entry(e.origin_region.clone()).or_insert(0) += 1;
        }
    }
    let r = first;
    if r.accounts().len() != truth.len() {
        return Err(format!("{} holds {} accounts, the log touches {}", r.region, r.accounts().len(), truth.len()));
    }
    let mut definitions: BTreeSet<uuid::Uuid> = BTreeSet::new();
    for (id, t) in &truth {
        let Some(a) = r.accounts().get(*id) else { return Err(format!("{} misses account {id}", r.region)) };
        let views: Vec<AccountEvent> = t.openings.iter().filter_map(|e| AccountEvent::of(e, id)).collect();
        let Some(winner) = views.iter().reduce(|w, h| winning_opening(w, h)) else {
            return Err(format!("account {id} is used but was never opened"));
        };
        if Some(&a.spec) != winner.opened.as_ref() {
            return Err(format!("{id} has definition {:?}, the winning opening says {:?}", a.spec, winner.opened));
        }
        // Every opening of an id is concurrent with every other: a region opens only an id it
        // does not know. Each pair with different definitions is a conflict and freezes it.
        for (i, x) in views.iter().enumerate() {
            for y in &views[i + 1..] {
                if x.opened != y.opened {
                    definitions.insert(conflict_id(x.event_id, y.event_id));
                }
            }
        }
        let split = views.iter().any(|v| v.opened != views[0].opened);
        if a.frozen != split {
            return Err(format!(
                "{id} frozen={} but its openings {} agree",
                a.frozen,
                if split { "do not" } else { "do" }
            ));
        }
        if a.entry_seq != t.transfers {
            return Err(format!("{id} counts {} entries, the log {} transfers on it", a.entry_seq, t.transfers));
        }
        let mut money = t.money.clone();
        money.retain(|_, b| *b != 0);
        if holdings(a) != money {
            return Err(format!("{id} holds {:?}, its postings in the log sum to {money:?}", holdings(a)));
        }
        if a.version != t.version || t.per_origin.iter().any(|(o, n)| a.version.get(o) != *n) {
            return Err(format!("{id} is at version {:?}, the log says {:?}", a.version.to_map(), t.per_origin));
        }
        if !a.spec.allow_negative
            && a.balance < 0
            && !r.state.episodes.values().any(|e| e.account == **id && e.kind == ConflictKind::Overdraft)
        {
            return Err(format!("{id} forbids a negative balance, holds {}, and no overdraft names it", a.balance));
        }
    }
    for e in r.state.episodes.values() {
        let Some(a) = r.accounts().get(&e.account) else {
            return Err(format!("an episode on {}, an account {} does not hold", e.account, r.region));
        };
        let members =
            r.state.window.get(&e.account).map_or(0, |w| w.iter().filter(|h| h.episode == Some(e.conflict_id)).count());
        if members as u64 != e.events || members < 2 {
            return Err(format!("an episode on {} counts {} events and has {members}", e.account, e.events));
        }
        // With one definition the account's money is in one currency: the joint balance is the
        // sum of the postings its joint causal past saw, and decides the kind.
        if !a.frozen {
            let joint: i64 = world
                .log
                .iter()
                .filter_map(|x| AccountEvent::of(x, &e.account))
                .filter(|h| h.seen_by(&e.joint))
                .map(|h| h.posting)
                .sum();
            let overdraft = !a.spec.allow_negative && joint < 0;
            if e.joint_balance != joint || (e.kind == ConflictKind::Overdraft) != overdraft {
                return Err(format!(
                    "an episode on {} judged {} on a joint balance of {}; the log says {joint}",
                    e.account,
                    e.kind.as_str(),
                    e.joint_balance
                ));
            }
        } else if e.kind == ConflictKind::Overdraft && e.joint_balance >= 0 {
            return Err(format!("an overdraft on {} with a joint balance of {}", e.account, e.joint_balance));
        }
    }
    // Idempotency keys: a region executes a key at most once; a key executed in several regions
    // is one duplicate-intent conflict naming every execution; afterwards every region knows it.
    let mut by_key: BTreeMap<&str, Vec<&LedgerEvent>> = BTreeMap::new();
    for e in &world.log {
        if let EventPayload::TransferPosted { idempotency_key: Some(k), .. } = &e.payload {
            by_key.entry(k).or_default().push(e);
        }
    }
    let mut expected: BTreeMap<uuid::Uuid, (ConflictKind, BTreeSet<uuid::Uuid>)> = BTreeMap::new();
    for (key, events) in &by_key {
        let origins: BTreeSet<&RegionId> = events.iter().map(|e| &e.origin_region).collect();
        if origins.len() != events.len() {
            return Err(format!("key {key} was executed {} times by {} regions", events.len(), origins.len()));
        }
        if events.len() > 1 {
            let sides = events.iter().map(|e| e.event_id).collect();
            expected.insert(key_conflict_id(key), (ConflictKind::DuplicateIntent, sides));
        }
        if let Some(r) = world.replicas.iter().find(|r| !r.state.keys.contains_key(*key)) {
            return Err(format!("{} does not know key {key}: a retry there would execute it again", r.region));
        }
    }
    let reported: BTreeMap<uuid::Uuid, (ConflictKind, BTreeSet<uuid::Uuid>)> = r
        .conflicts
        .values()
        .filter(|c| c.kind == ConflictKind::DuplicateIntent)
        .map(|c| (c.conflict_id, (c.kind, c.sides.iter().map(|s| s.0).collect())))
        .collect();
    if reported != expected {
        return Err(format!("duplicate-intent conflicts {reported:?}, the log's keys say {expected:?}"));
    }
    let reported: BTreeSet<uuid::Uuid> =
        r.conflicts.values().filter(|c| c.kind == ConflictKind::AccountDefinition).map(|c| c.conflict_id).collect();
    if reported != definitions {
        return Err(format!(
            "{} account-definition conflicts, the log's openings make {}",
            reported.len(),
            definitions.len()
        ));
    }
    if let Some(c) = r
        .conflicts
        .values()
        .find(|c| !matches!(c.kind, ConflictKind::DuplicateIntent | ConflictKind::AccountDefinition))
    {
        return Err(format!("an unexpected {} conflict record on {}", c.kind.as_str(), c.account));
    }
    Ok(())
}

/// Two replicas that received every event hold the same ledger.
fn converged(a: &Replica, b: &Replica) -> Result<(), String> {
    let diverge = |what: &str| Err(format!("{} and {} disagree on {what}", a.region, b.region));
    if a.accounts().keys().ne(b.accounts().keys()) {
        return diverge("which accounts exist");
    }
    for (id, x) in a.accounts() {
        let y = &b.accounts()[id];
        if x != y {
            return Err(format!("{} and {} disagree on {id}: {x:?} vs {y:?}", a.region, b.region));
        }
    }
    if a.conflicts != b.conflicts {
        let kinds = |r: &Replica| r.conflicts.values().map(|c: &Conflict| c.kind.as_str()).collect::<Vec<_>>();
        return Err(format!("{} and {} disagree on conflicts: {:?} vs {:?}", a.region, b.region, kinds(a), kinds(b)));
    }
    if a.state.episodes != b.state.episodes {
        return diverge("episodes");
    }
    let members = |r: &Replica| -> BTreeSet<(AccountId, uuid::Uuid, Option<uuid::Uuid>)> {
        r.state.window.iter().flat_map(|(id, w)| w.iter().map(move |h| (id.clone(), h.event_id, h.episode))).collect()
    };
    if members(a) != members(b) {
        return diverge("which events belong to which episode");
    }
    let keys = |r: &Replica| -> BTreeMap<String, KeyUses> { r.state.keys.clone() };
    if keys(a) != keys(b) {
        return diverge("idempotency keys");
    }
    if a.dead != b.dead {
        return diverge("dead events");
    }
    if a.pending.keys().ne(b.pending.keys()) {
        return diverge("held events");
    }
    Ok(())
}

/// A digest of a world's end state (accounts, conflicts, episodes, the log), to compare runs.
pub fn digest(world: &World) -> u64 {
    let mut text = String::new();
    for r in &world.replicas {
        text.push_str(&format!("{:?}{:?}{:?}", r.accounts(), r.conflicts, r.state.episodes));
    }
    text.push_str(&format!("{:?}", world.log));
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Checks every seed of `seeds` on `cfg.threads` threads, stopping at the first failure. The
/// failure reported is the smallest failing seed of the range, whatever the threads' timing.
pub fn run(seeds: Range<u64>, cfg: &SimConfig) -> SimReport {
    let start = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let failed = AtomicU64::new(u64::MAX);
    let results: Vec<(SimStats, u64, Option<Violation>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cfg.threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let (mut stats, mut histories, mut failure) = (SimStats::default(), 0u64, None);
                    loop {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        // Seeds are handed out in order, so every seed below a failure is checked.
                        if seed >= seeds.end || seed > failed.load(Ordering::Relaxed) {
                            break;
                        }
                        histories += 1;
                        match check(seed, cfg) {
                            Ok(s) => stats.merge(&s),
                            Err(v) => {
                                failed.fetch_min(seed, Ordering::Relaxed);
                                failure = Some(v);
                                break;
                            }
                        }
                    }
                    (stats, histories, failure)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a worker catches every panic")).collect()
    });
    let mut report = SimReport { histories: 0, stats: SimStats::default(), failure: None, elapsed: Duration::ZERO };
    for (stats, histories, failure) in results {
        report.stats.merge(&stats);
        report.histories += histories;
        if let Some(v) = failure
            && report.failure.as_ref().is_none_or(|f| v.seed < f.seed)
        {
            report.failure = Some(v);
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// `chaos sim`: the deterministic simulation of the replication rules.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many seeds (histories) to check.
    #[arg(long, default_value_t = 10_000)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub seed_start: u64,
    /// Run exactly this seed and print its history step by step (replay a failure).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Fewest steps per history.
    #[arg(long, default_value_t = 20)]
    pub min_steps: usize,
    /// Most steps per history.
    #[arg(long, default_value_t = 80)]
    pub max_steps: usize,
}

/// Runs `chaos sim`: progress on stderr, one verdict line on stdout; exit code 1 on a failure.
pub fn main(args: &SimArgs) -> std::process::ExitCode {
    let cfg = SimConfig {
        min_steps: args.min_steps,
        max_steps: args.max_steps.max(args.min_steps),
        threads: args.threads.unwrap_or_else(|| SimConfig::default().threads),
    };
    let start = Instant::now();
    let (mut histories, mut stats, mut failure) = (0u64, SimStats::default(), None);
    if let Some(seed) = args.seed {
        histories = 1;
        match check_traced(seed, &cfg, true) {
            Ok(s) => stats = s,
            Err(v) => failure = Some(v),
        }
    } else {
        let end = args.seed_start.saturating_add(args.seeds);
        // Blocks of about a twentieth, for progress lines.
        let block = (args.seeds / 20).max(1_000);
        let mut from = args.seed_start;
        while from < end && failure.is_none() {
            let to = from.saturating_add(block).min(end);
            let report = run(from..to, &cfg);
            histories += report.histories;
            stats.merge(&report.stats);
            failure = report.failure;
            from = to;
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "sim: {histories}/{} histories, {:.0} histories/s",
                args.seeds,
                histories as f64 / secs.max(1e-9)
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    match failure {
        None => {
            println!(
                "sim: ok: {histories} histories, {} events, {} conflicts detected, in {secs:.1} s",
                stats.events,
                stats.conflicts()
            );
            std::process::ExitCode::SUCCESS
        }
        Some(v) => {
            println!("sim: FAILED at seed {} (step {}): {}", v.seed, v.step, v.description);
            eprintln!("sim: replay it with --seed {}", v.seed);
            std::process::ExitCode::FAILURE
        }
    }
}
