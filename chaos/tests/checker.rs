//! The checker against synthetic runs: a consistent one is valid, and each kind of corruption is
//! caught by the rule meant to catch it.

use chaos::checker::{self, Verdict};
use chaos::history::{
    AccountDef, AccountObs, ConflictObs, FaultWindow, History, Observed, Op, Outcome, RegionState, TransferObs,
};
use chaos::report;
use std::collections::BTreeMap;
use uuid::Uuid;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const CURRENCIES: [&str; 2] = ["USD", "EUR"];
const CUSTOMERS: usize = 4;
const RUN: &str = "run7";

/// A small deterministic generator: the tests must not depend on a seed source or a crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mint(currency: &str) -> String {
    format!("{RUN}-mint-{currency}")
}

fn customer(currency: &str, i: usize) -> String {
    format!("{RUN}-c{i}-{currency}")
}

/// A run that went right: a mint and customers per currency, funding first, then a few hundred
/// transfers between customers (some refused, some unanswered and applied or not), and last two
/// concurrent debits in two regions that overdraw one customer, flagged by an overdraft conflict.
struct Run {
    history: History,
    observed: Observed,
    /// The overdrawn customer.
    overdrawn: String,
}

impl Run {
    fn new() -> Run {
        let mut rng = Lcg(7);
        let mut accounts = Vec::new();
        for c in CURRENCIES {
            accounts.push(AccountDef { id: mint(c), currency: c.into(), allow_negative: true });
            for i in 0..CUSTOMERS {
                accounts.push(AccountDef { id: customer(c, i), currency: c.into(), allow_negative: false });
            }
        }
        let mut balances: BTreeMap<String, i64> = accounts.iter().map(|a| (a.id.clone(), 0)).collect();
        let mut ops = Vec::new();
        let mut applied: Vec<TransferObs> = Vec::new();
        let mut clock = 0u64;
        let mut push = |ops: &mut Vec<Op>,
                        applied: &mut Vec<TransferObs>,
                        balances: &mut BTreeMap<String, i64>,
                        rng: &mut Lcg,
                        (from, to, amount, currency): (String, String, i64, &str),
                        outcome: Outcome,
                        apply: bool| {
            let index = ops.len() as u64;
            let region = REGIONS[rng.below(3) as usize].to_string();
            let key = format!("{RUN}-k{index}");
            clock += 10 + rng.below(20);
            let invoke_ms = clock;
            let complete_ms = invoke_ms + 5 + rng.below(150);
            if apply {
                let id = match &outcome {
                    Outcome::Ok { transfer_id } => *transfer_id,
                    _ => Uuid::from_u128(0xFEED_0000 + u128::from(index)),
                };
                *balances.get_mut(&from).unwrap() -= amount;
                *balances.get_mut(&to).unwrap() += amount;
                applied.push(TransferObs {
                    id,
                    key: Some(key.clone()),
                    from: from.clone(),
                    to: to.clone(),
                    amount,
                    currency: currency.into(),
                    origin_region: region.clone(),
                });
            }
            ops.push(Op {
                index,
                region,
                key,
                from,
                to,
                amount,
                currency: currency.into(),
                invoke_ms,
                complete_ms,
                outcome,
            });
        };

        for c in CURRENCIES {
            for i in 0..CUSTOMERS {
                let id = Uuid::from_u128(ops.len() as u128 + 1);
                push(
                    &mut ops,
                    &mut applied,
                    &mut balances,
                    &mut rng,
                    (mint(c), customer(c, i), 10_000, c),
                    Outcome::Ok { transfer_id: id },
                    true,
                );
            }
        }
        for _ in 0..300 {
            let c = CURRENCIES[rng.below(2) as usize];
            let a = rng.below(CUSTOMERS as u64) as usize;
            let b = (a + 1 + rng.below(CUSTOMERS as u64 - 1) as usize) % CUSTOMERS;
            let (from, to) = (customer(c, a), customer(c, b));
            let amount = 1 + rng.below(3_000) as i64;
            let roll = rng.below(20);
            let id = Uuid::from_u128(ops.len() as u128 + 1);
            let (outcome, apply) = if amount > balances[&from] || roll == 0 {
                (Outcome::Fail { status: 422, problem_type: "insufficient-funds".into() }, false)
            } else if roll == 1 {
                (Outcome::Indeterminate { error: "timeout <after 3 retries>".into() }, true)
            } else if roll == 2 {
                (Outcome::Indeterminate { error: "connection reset".into() }, false)
            } else {
                (Outcome::Ok { transfer_id: id }, true)
            };
            push(&mut ops, &mut applied, &mut balances, &mut rng, (from, to, amount, c), outcome, apply);
        }

        // Two debits of one customer, each covered by its balance, accepted concurrently by two
        // regions: together they overdraw it, which the ledger flags rather than prevents.
        let (victim, payee) = (customer("USD", 0), customer("USD", 1));
        let amount = balances[&victim] * 2 / 3 + 1;
        assert!(amount > 1, "the victim needs money to overdraw");
        for _ in 0..2 {
            let id = Uuid::from_u128(ops.len() as u128 + 1);
            push(
                &mut ops,
                &mut applied,
                &mut balances,
                &mut rng,
                (victim.clone(), payee.clone(), amount, "USD"),
                Outcome::Ok { transfer_id: id },
                true,
            );
        }
        assert!(balances[&victim] < 0);
        let overdraft = ConflictObs {
            id: Uuid::from_u128(0xC0FF1C7),
            kind: "overdraft".into(),
            account: victim.clone(),
            status: "open".into(),
            event_count: 2,
        };

        let mut entries: BTreeMap<&str, i64> = BTreeMap::new();
        let mut versions: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for t in &applied {
            for acct in [&t.from, &t.to] {
                *entries.entry(acct).or_default() += 1;
                *versions.entry(acct).or_default().entry(t.origin_region.clone()).or_default() += 1;
            }
        }
        let state = |name: &str| RegionState {
            name: name.into(),
            accounts: accounts
                .iter()
                .map(|a| {
                    (
                        a.id.clone(),
                        AccountObs {
                            currency: a.currency.clone(),
                            allow_negative: a.allow_negative,
                            balance: balances[&a.id],
                            entry_seq: entries.get(a.id.as_str()).copied().unwrap_or(0),
                            version: versions.get(a.id.as_str()).cloned().unwrap_or_default(),
                            frozen: false,
                        },
                    )
                })
                .collect(),
            transfers: applied.clone(),
            conflicts: vec![overdraft.clone()],
            pending_events: 0,
        };
        let observed = Observed { regions: REGIONS.iter().map(|r| state(r)).collect() };

        let history = History {
            run: RUN.into(),
            seed: 7,
            started_unix_ms: 1_700_000_000_000,
            regions: REGIONS.iter().map(|r| r.to_string()).collect(),
            accounts,
            faults: vec![
                FaultWindow { nemesis: "kill-node".into(), target: "eu-west".into(), start_ms: 800, end_ms: 1_900 },
                FaultWindow {
                    nemesis: "partition".into(),
                    target: "us-east<->ap-south".into(),
                    start_ms: 2_500,
                    end_ms: 4_000,
                },
            ],
            ops,
        };
        Run { history, observed, overdrawn: victim }
    }

    fn check(&self) -> Verdict {
        checker::check(&self.history, &self.observed)
    }

    fn op(&self, pick: impl Fn(&Op) -> bool) -> Op {
        self.history.ops.iter().find(|o| pick(o)).expect("the builder makes one").clone()
    }

    /// Adds `t` to every region and moves its money, so balances and entries stay consistent.
    fn apply_everywhere(&mut self, t: TransferObs) {
        for r in &mut self.observed.regions {
            for (acct, delta) in [(&t.from, -t.amount), (&t.to, t.amount)] {
                let a = r.accounts.get_mut(acct).unwrap();
                a.balance += delta;
                a.entry_seq += 1;
                *a.version.entry(t.origin_region.clone()).or_default() += 1;
            }
            r.transfers.push(t.clone());
        }
    }
}

/// Asserts `rule` fired (and, when `alone`, nothing else did).
fn assert_fires(v: &Verdict, rule: &str, alone: bool) {
    assert!(!v.ok, "expected INVALID: {v}");
    assert!(v.count(rule) > 0, "expected {rule} to fire: {v}\n{:#?}", v.violations);
    assert!(v.violations.iter().any(|x| x.rule == rule), "{rule} counted but not listed");
    if alone {
        assert_eq!(v.total(), v.count(rule), "expected only {rule}: {v}\n{:#?}", v.violations);
    }
    assert!(v.to_string().starts_with("chaos: INVALID: "), "{v}");
    assert!(v.to_string().contains(rule), "{v}");
}

#[test]
fn consistent_run_is_valid() {
    let run = Run::new();
    let v = run.check();
    assert!(v.ok, "{v}\n{:#?}", v.violations);
    assert!(v.violations.is_empty());
    assert_eq!(v.total(), 0);
    assert_eq!(v.counts.len(), checker::RULES.len());
    let s = &v.stats;
    assert_eq!(s.ops, run.history.ops.len() as u64);
    assert_eq!(s.ops, s.ops_ok + s.ops_fail + s.ops_indeterminate);
    assert!(s.ops_ok > 0 && s.ops_fail > 0 && s.ops_indeterminate > 0, "{s:?}");
    assert_eq!(s.conflicts_by_kind.get("overdraft"), Some(&1));
    assert_eq!(s.transfers_by_region.len(), 3);
    let line = v.to_string();
    assert!(line.starts_with("chaos: VALID: "), "{line}");
    assert!(line.contains("3 regions converged, 1 overdraft conflicts flagged, 2 faults"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn an_acknowledged_transfer_missing_from_one_region_is_lost() {
    let mut run = Run::new();
    let op = run.op(|o| matches!(o.outcome, Outcome::Ok { .. }) && o.index > 20);
    let Outcome::Ok { transfer_id } = op.outcome else { unreachable!() };
    run.observed.regions[1].transfers.retain(|t| t.id != transfer_id);
    let v = run.check();
    assert_fires(&v, checker::ACKNOWLEDGED_LOST, false);
    let lost = v.violations.iter().find(|x| x.rule == checker::ACKNOWLEDGED_LOST).unwrap();
    assert_eq!(lost.region, REGIONS[1]);
    assert_eq!(lost.subject, format!("key {}", op.key));
    assert_eq!(v.count(checker::ACKNOWLEDGED_LOST), 1);
    assert!(v.to_string().contains("; first: acknowledged-lost in eu-west"), "{v}");
}

#[test]
fn an_acknowledged_transfer_applied_twice_is_caught_by_the_duplicate_rule_alone() {
    let mut run = Run::new();
    // A funding op: the mint can always pay again, so no other rule has anything to say.
    let op = run.op(|o| o.index == 0);
    let Outcome::Ok { transfer_id } = op.outcome else { unreachable!() };
    let first = run.observed.regions[0].transfers.iter().find(|t| t.id == transfer_id).unwrap().clone();
    run.apply_everywhere(TransferObs { id: Uuid::from_u128(0xD0B1E), ..first });
    let v = run.check();
    assert_fires(&v, checker::APPLIED_TWICE, true);
    assert_eq!(v.count(checker::APPLIED_TWICE), 3, "one per region");
    assert!(v.violations[0].detail.contains("held as 2 transfers"), "{:?}", v.violations[0]);
}

#[test]
fn a_duplicate_intent_conflict_is_named_but_still_a_violation() {
    let mut run = Run::new();
    let op = run.op(|o| o.index == 0);
    let Outcome::Ok { transfer_id } = op.outcome else { unreachable!() };
    let first = run.observed.regions[0].transfers.iter().find(|t| t.id == transfer_id).unwrap().clone();
    run.apply_everywhere(TransferObs { id: Uuid::from_u128(0xD0B1E), ..first });
    for r in &mut run.observed.regions {
        r.conflicts.push(ConflictObs {
            id: Uuid::from_u128(0xD1),
            kind: "duplicate-intent".into(),
            account: op.to.clone(),
            status: "open".into(),
            event_count: 2,
        });
    }
    let v = run.check();
    assert_fires(&v, checker::APPLIED_TWICE, true);
    assert!(v.violations[0].detail.contains("duplicate-intent conflict names"), "{:?}", v.violations[0]);
}

#[test]
fn a_refused_op_that_appears_is_caught() {
    let mut run = Run::new();
    let op = run.op(|o| matches!(o.outcome, Outcome::Fail { .. }));
    run.apply_everywhere(TransferObs {
        id: Uuid::from_u128(0xBAD),
        key: Some(op.key.clone()),
        from: op.from.clone(),
        to: op.to.clone(),
        amount: op.amount,
        currency: op.currency.clone(),
        origin_region: op.region.clone(),
    });
    let v = run.check();
    assert_fires(&v, checker::REFUSED_APPLIED, false);
    assert_eq!(v.count(checker::REFUSED_APPLIED), 3);
}

#[test]
fn an_indeterminate_op_applied_twice_is_caught() {
    let mut run = Run::new();
    let keys: Vec<String> = run.observed.regions[0].transfers.iter().filter_map(|t| t.key.clone()).collect();
    let balances = run.observed.regions[0].accounts.clone();
    // One whose payer can afford it again, so the replay overdraws no one and only its own rule
    // has something to say.
    let op = run.op(|o| {
        matches!(o.outcome, Outcome::Indeterminate { .. })
            && keys.contains(&o.key)
            && balances[&o.from].balance >= o.amount
    });
    let first = run.observed.regions[0].transfers.iter().find(|t| t.key.as_ref() == Some(&op.key)).unwrap().clone();
    run.apply_everywhere(TransferObs { id: Uuid::from_u128(0x7E1CE), ..first });
    let v = run.check();
    assert_fires(&v, checker::INDETERMINATE_TWICE, true);
    assert_eq!(v.count(checker::INDETERMINATE_TWICE), 3);
}

#[test]
fn an_indeterminate_op_applied_in_some_regions_only_is_caught() {
    let mut run = Run::new();
    let keys: Vec<String> = run.observed.regions[0].transfers.iter().filter_map(|t| t.key.clone()).collect();
    let op = run.op(|o| matches!(o.outcome, Outcome::Indeterminate { .. }) && keys.contains(&o.key));
    run.observed.regions[2].transfers.retain(|t| t.key.as_ref() != Some(&op.key));
    let v = run.check();
    assert_fires(&v, checker::INDETERMINATE_TWICE, false);
    let x = v.violations.iter().find(|x| x.rule == checker::INDETERMINATE_TWICE).unwrap();
    assert_eq!(x.region, REGIONS[2]);
}

#[test]
fn a_transfer_no_client_sent_is_unknown() {
    let mut run = Run::new();
    run.apply_everywhere(TransferObs {
        id: Uuid::from_u128(0x5EC7E7),
        key: None,
        from: mint("EUR"),
        to: customer("EUR", 2),
        amount: 5,
        currency: "EUR".into(),
        origin_region: REGIONS[0].into(),
    });
    assert_fires(&run.check(), checker::UNKNOWN_TRANSFER, true);
}

#[test]
fn a_region_with_a_different_balance_diverges() {
    let mut run = Run::new();
    run.observed.regions[2].accounts.get_mut(&customer("EUR", 3)).unwrap().balance += 1;
    let v = run.check();
    assert_fires(&v, checker::DIVERGENCE, false);
    let x = v.violations.iter().find(|x| x.rule == checker::DIVERGENCE).unwrap();
    assert_eq!(x.region, REGIONS[2]);
    assert_eq!(x.subject, format!("account {}", customer("EUR", 3)));
    assert!(x.detail.contains("balance"), "{x:?}");
}

#[test]
fn a_negative_customer_without_an_overdraft_conflict_is_unflagged() {
    let mut run = Run::new();
    for r in &mut run.observed.regions {
        r.conflicts.clear();
    }
    let v = run.check();
    assert_fires(&v, checker::OVERDRAFT_UNFLAGGED, true);
    assert_eq!(v.count(checker::OVERDRAFT_UNFLAGGED), 3);
    assert_eq!(v.violations[0].subject, format!("account {}", run.overdrawn));
}

#[test]
fn a_pending_event_left_is_divergence() {
    let mut run = Run::new();
    run.observed.regions[0].pending_events = 1;
    let v = run.check();
    assert_fires(&v, checker::DIVERGENCE, true);
    assert!(v.violations[0].detail.contains("pending"), "{:?}", v.violations[0]);
}

#[test]
fn money_from_nowhere_breaks_conservation() {
    let mut run = Run::new();
    for r in &mut run.observed.regions {
        r.accounts.get_mut(&customer("USD", 2)).unwrap().balance += 100;
    }
    let v = run.check();
    assert_fires(&v, checker::CONSERVATION, true);
    // Per region: the currency's sum and the account's entries.
    assert_eq!(v.count(checker::CONSERVATION), 6);
}

#[test]
fn counts_go_on_past_the_listing_cap() {
    let mut run = Run::new();
    for r in &mut run.observed.regions[1..] {
        r.transfers.clear();
    }
    let v = run.check();
    assert!(v.count(checker::ACKNOWLEDGED_LOST) > checker::MAX_LISTED_PER_RULE as u64);
    for rule in checker::RULES {
        assert!(v.violations.iter().filter(|x| x.rule == rule).count() <= checker::MAX_LISTED_PER_RULE);
    }
}

#[test]
fn the_report_shows_the_verdict_and_the_timeline_and_loads_back() {
    let mut run = Run::new();
    // Markup in the run's own text must come out as text.
    run.history.faults[0].target = "eu-west<script>".into();
    run.observed.regions[1].pending_events = 2;
    let v = run.check();
    let dir = tempfile::tempdir().unwrap();
    report::write(dir.path(), &run.history, &run.observed, &v).unwrap();

    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    assert!(html.contains(&report::escape(&v.to_string())), "the verdict line");
    assert!(html.contains("<svg"));
    assert_eq!(html.matches("class=\"fault\"").count(), run.history.faults.len());
    assert!(html.contains("kill-node eu-west&lt;script&gt;"));
    assert!(!html.contains("<script"));
    assert!(html.contains("divergence"));

    let line = std::fs::read_to_string(dir.path().join("verdict.txt")).unwrap();
    assert_eq!(line, format!("{v}\n"));
    let back: Verdict = serde_json::from_slice(&std::fs::read(dir.path().join("verdict.json")).unwrap()).unwrap();
    assert_eq!(back, v);

    let (history, observed) = report::load(dir.path()).unwrap();
    assert_eq!(history, run.history);
    assert_eq!(observed, run.observed);
    assert_eq!(checker::check(&history, &observed), v);
}

#[test]
fn loading_a_directory_without_a_run_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = report::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("history.json"), "{err}");
}
