//! The bank-workload checker: reads a run's [`History`] and the regions' [`Observed`] state after
//! healing and decides whether the ledger kept its promises. Pure: the same files always give the
//! same verdict, so `chaos check <dir>` can recompute one long after the stack is gone.
//!
//! Each fact is reported under one rule only (an acknowledged key applied twice is
//! `applied-twice`, an indeterminate one `indeterminate-twice`, a refused one `refused-applied`),
//! so the counts say how many distinct things went wrong. The consequences of a root cause that
//! another rule names (sums off, regions apart) are still reported under their own rules: they
//! are true and a human reading the report wants to see them.

use crate::history::{History, Observed, Op, Outcome, RegionState, TransferObs};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Per currency and region, balances sum to zero and agree with the region's transfers.
pub const CONSERVATION: &str = "conservation";
/// An acknowledged transfer is missing from a region, or differs from what the client sent.
pub const ACKNOWLEDGED_LOST: &str = "acknowledged-lost";
/// An acknowledged key is on more than one transfer, or on another transfer than acknowledged.
pub const APPLIED_TWICE: &str = "applied-twice";
/// A definitely refused key was applied.
pub const REFUSED_APPLIED: &str = "refused-applied";
/// An unanswered key was applied more than once, or in some regions only.
pub const INDETERMINATE_TWICE: &str = "indeterminate-twice";
/// A transfer on the run's accounts that no client of the run sent.
pub const UNKNOWN_TRANSFER: &str = "unknown-transfer";
/// The regions did not converge to the same state.
pub const DIVERGENCE: &str = "divergence";
/// An account that must not go negative is negative and no overdraft conflict says so.
pub const OVERDRAFT_UNFLAGGED: &str = "overdraft-unflagged";

/// Every rule, in the order the checker runs them: root causes first, so the verdict line's
/// "first:" points at the cause rather than at a sum it put off.
pub const RULES: [&str; 8] = [
    ACKNOWLEDGED_LOST,
    APPLIED_TWICE,
    REFUSED_APPLIED,
    INDETERMINATE_TWICE,
    UNKNOWN_TRANSFER,
    OVERDRAFT_UNFLAGGED,
    CONSERVATION,
    DIVERGENCE,
];

/// How many violations of one rule the verdict lists; the rest are only counted, because a
/// single lost partition can produce thousands of identical findings.
pub const MAX_LISTED_PER_RULE: usize = 20;

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The rule (one of [`RULES`]).
    pub rule: String,
    /// The region it was found in.
    pub region: String,
    /// What it is about: `key <k>`, `account <id>`, `transfer <uuid>`, `conflict <uuid>` or
    /// `region`.
    pub subject: String,
    /// What was expected and what was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}, {}: {}", self.rule, self.region, self.subject, self.detail)
    }
}

/// What the run did, for the verdict line and the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Client operations.
    pub ops: u64,
    /// Acknowledged.
    pub ops_ok: u64,
    /// Definitely refused.
    pub ops_fail: u64,
    /// Unanswered.
    pub ops_indeterminate: u64,
    /// Regions observed.
    pub regions: u64,
    /// Faults injected.
    pub faults: u64,
    /// Transfers each region holds.
    pub transfers_by_region: BTreeMap<String, u64>,
    /// Distinct conflicts (by id, over all regions) by kind.
    pub conflicts_by_kind: BTreeMap<String, u64>,
}

/// The checker's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// No violation at all.
    pub ok: bool,
    /// At most [`MAX_LISTED_PER_RULE`] per rule, in [`RULES`] order.
    pub violations: Vec<Violation>,
    /// Every violation counted, listed or not, by rule (every rule present, zeros included).
    pub counts: BTreeMap<String, u64>,
    /// What the run did.
    pub stats: Stats,
}

impl Verdict {
    /// All violations, listed or not.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// How many violations of `rule` were found.
    pub fn count(&self, rule: &str) -> u64 {
        self.counts.get(rule).copied().unwrap_or(0)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        if self.ok {
            write!(
                f,
                "chaos: VALID: {} ops ({} ok, {} refused, {} indeterminate), {} regions converged, {} overdraft conflicts flagged, {} faults",
                thousands(s.ops),
                thousands(s.ops_ok),
                thousands(s.ops_fail),
                thousands(s.ops_indeterminate),
                s.regions,
                thousands(s.conflicts_by_kind.get("overdraft").copied().unwrap_or(0)),
                thousands(s.faults),
            )
        } else {
            let total = self.total();
            let by_rule: Vec<String> = RULES
                .iter()
                .filter(|r| self.count(r) > 0)
                .map(|r| format!("{r} {}", thousands(self.count(r))))
                .collect();
            write!(
                f,
                "chaos: INVALID: {} violation{} ({})",
                thousands(total),
                if total == 1 { "" } else { "s" },
                by_rule.join(", ")
            )?;
            if let Some(first) = self.violations.first() {
                write!(f, "; first: {first}")?;
            }
            Ok(())
        }
    }
}

/// `4213` as `4,213`: verdict lines are read by people comparing runs at a glance.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Checks every rule of [`RULES`] against a run.
pub fn check(history: &History, observed: &Observed) -> Verdict {
    let ctx = Ctx::new(history, observed);
    let mut found = Found::default();
    acknowledged_lost(&ctx, &mut found);
    applied_twice(&ctx, &mut found);
    refused_applied(&ctx, &mut found);
    indeterminate_twice(&ctx, &mut found);
    unknown_transfer(&ctx, &mut found);
    overdraft_unflagged(&ctx, &mut found);
    conservation(&ctx, &mut found);
    divergence(&ctx, &mut found);

    let mut stats = Stats {
        ops: history.ops.len() as u64,
        regions: observed.regions.len() as u64,
        faults: history.faults.len() as u64,
        ..Stats::default()
    };
    for op in &history.ops {
        match op.outcome {
            Outcome::Ok { .. } => stats.ops_ok += 1,
            Outcome::Fail { .. } => stats.ops_fail += 1,
            Outcome::Indeterminate { .. } => stats.ops_indeterminate += 1,
        }
    }
    let mut conflict_kinds = BTreeMap::new();
    for region in &observed.regions {
        stats.transfers_by_region.insert(region.name.clone(), region.transfers.len() as u64);
        for c in &region.conflicts {
            conflict_kinds.insert(c.id, c.kind.clone());
        }
    }
    for kind in conflict_kinds.into_values() {
        *stats.conflicts_by_kind.entry(kind).or_insert(0) += 1;
    }

    let mut violations = Vec::new();
    let mut counts = BTreeMap::new();
    for rule in RULES {
        let (count, listed) = found.by_rule.remove(rule).unwrap_or_default();
        counts.insert(rule.to_string(), count);
        violations.extend(listed);
    }
    Verdict { ok: counts.values().all(|&n| n == 0), violations, counts, stats }
}

#[derive(Default)]
struct Found {
    by_rule: HashMap<&'static str, (u64, Vec<Violation>)>,
}

impl Found {
    fn add(&mut self, rule: &'static str, region: &str, subject: String, detail: String) {
        let (count, listed) = self.by_rule.entry(rule).or_default();
        *count += 1;
        if listed.len() < MAX_LISTED_PER_RULE {
            listed.push(Violation { rule: rule.to_string(), region: region.to_string(), subject, detail });
        }
    }
}

/// Indexes built once: every rule looks transfers up by id or by key, per region.
struct Ctx<'a> {
    history: &'a History,
    observed: &'a Observed,
    ops_by_key: HashMap<&'a str, &'a Op>,
    regions: Vec<RegionIndex<'a>>,
}

struct RegionIndex<'a> {
    state: &'a RegionState,
    by_id: HashMap<uuid::Uuid, &'a TransferObs>,
    /// Distinct transfer ids per key, sorted so details are stable.
    by_key: HashMap<&'a str, BTreeSet<uuid::Uuid>>,
}

impl<'a> Ctx<'a> {
    fn new(history: &'a History, observed: &'a Observed) -> Self {
        let mut ops_by_key = HashMap::new();
        for op in &history.ops {
            // A key is one op by construction; should the runner ever repeat one, the first
            // op decides, as the ledger's idempotency would.
            ops_by_key.entry(op.key.as_str()).or_insert(op);
        }
        let regions = observed
            .regions
            .iter()
            .map(|state| {
                let mut by_id = HashMap::new();
                let mut by_key: HashMap<&str, BTreeSet<uuid::Uuid>> = HashMap::new();
                for t in &state.transfers {
                    by_id.insert(t.id, t);
                    if let Some(k) = &t.key {
                        by_key.entry(k.as_str()).or_default().insert(t.id);
                    }
                }
                RegionIndex { state, by_id, by_key }
            })
            .collect();
        Ctx { history, observed, ops_by_key, regions }
    }

    fn is_mint(&self, account: &str) -> Option<bool> {
        self.history.accounts.iter().find(|a| a.id == account).map(|a| a.allow_negative)
    }
}

fn ids(set: &BTreeSet<uuid::Uuid>) -> String {
    set.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
}

fn acknowledged_lost(ctx: &Ctx, found: &mut Found) {
    for op in &ctx.history.ops {
        let Outcome::Ok { transfer_id } = op.outcome else { continue };
        for r in &ctx.regions {
            let region = r.state.name.as_str();
            let Some(t) = r.by_id.get(&transfer_id) else {
                found.add(
                    ACKNOWLEDGED_LOST,
                    region,
                    format!("key {}", op.key),
                    format!(
                        "transfer {transfer_id} (op #{}, acknowledged by {}: {} {} {} -> {}) is missing",
                        op.index, op.region, op.amount, op.currency, op.from, op.to
                    ),
                );
                continue;
            };
            let sent = (op.from.as_str(), op.to.as_str(), op.amount, op.currency.as_str(), Some(op.key.as_str()));
            let held = (t.from.as_str(), t.to.as_str(), t.amount, t.currency.as_str(), t.key.as_deref());
            if sent != held {
                found.add(
                    ACKNOWLEDGED_LOST,
                    region,
                    format!("key {}", op.key),
                    format!(
                        "transfer {transfer_id} (op #{}) was sent as {} {} {} -> {} with key {}, is held as {} {} {} -> {} with key {}",
                        op.index,
                        op.amount,
                        op.currency,
                        op.from,
                        op.to,
                        op.key,
                        t.amount,
                        t.currency,
                        t.from,
                        t.to,
                        t.key.as_deref().unwrap_or("(none)")
                    ),
                );
            }
        }
    }
}

fn applied_twice(ctx: &Ctx, found: &mut Found) {
    for op in &ctx.history.ops {
        let Outcome::Ok { transfer_id } = op.outcome else { continue };
        for r in &ctx.regions {
            let Some(held) = r.by_key.get(op.key.as_str()) else { continue };
            if held.len() == 1 && held.contains(&transfer_id) {
                continue;
            }
            let mut detail = if held.len() > 1 {
                format!(
                    "acknowledged once as {transfer_id} (op #{}), held as {} transfers: {}",
                    op.index,
                    held.len(),
                    ids(held)
                )
            } else {
                format!("acknowledged as {transfer_id} (op #{}), the key is on {} instead", op.index, ids(held))
            };
            // The ledger may have noticed (a duplicate-intent conflict); a human wants to know,
            // but money moved twice all the same.
            let noticed: BTreeSet<&str> = r
                .state
                .conflicts
                .iter()
                .filter(|c| c.kind == "duplicate-intent" && (c.account == op.from || c.account == op.to))
                .map(|c| c.account.as_str())
                .collect();
            if !noticed.is_empty() {
                detail.push_str(&format!(
                    "; a duplicate-intent conflict names {}",
                    noticed.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            found.add(APPLIED_TWICE, &r.state.name, format!("key {}", op.key), detail);
        }
    }
}

fn refused_applied(ctx: &Ctx, found: &mut Found) {
    for op in &ctx.history.ops {
        let Outcome::Fail { status, problem_type } = &op.outcome else { continue };
        for r in &ctx.regions {
            if let Some(held) = r.by_key.get(op.key.as_str()) {
                found.add(
                    REFUSED_APPLIED,
                    &r.state.name,
                    format!("key {}", op.key),
                    format!(
                        "op #{} was refused by {} ({status} {problem_type}) but is held as {}",
                        op.index,
                        op.region,
                        ids(held)
                    ),
                );
            }
        }
    }
}

fn indeterminate_twice(ctx: &Ctx, found: &mut Found) {
    for op in &ctx.history.ops {
        let Outcome::Indeterminate { .. } = op.outcome else { continue };
        let mut present = Vec::new();
        let mut absent = Vec::new();
        for r in &ctx.regions {
            match r.by_key.get(op.key.as_str()) {
                Some(held) => {
                    present.push(r.state.name.as_str());
                    if held.len() > 1 {
                        found.add(
                            INDETERMINATE_TWICE,
                            &r.state.name,
                            format!("key {}", op.key),
                            format!("unanswered op #{} is held as {} transfers: {}", op.index, held.len(), ids(held)),
                        );
                    }
                }
                None => absent.push(r.state.name.as_str()),
            }
        }
        if !present.is_empty() {
            for region in &absent {
                found.add(
                    INDETERMINATE_TWICE,
                    region,
                    format!("key {}", op.key),
                    format!(
                        "unanswered op #{} is applied in {} but not here after healing",
                        op.index,
                        present.join(", ")
                    ),
                );
            }
        }
    }
}

fn unknown_transfer(ctx: &Ctx, found: &mut Found) {
    for r in &ctx.regions {
        for t in &r.state.transfers {
            let why = match &t.key {
                None => "has no idempotency key".to_string(),
                Some(k) if !ctx.ops_by_key.contains_key(k.as_str()) => format!("has key {k}, which no client sent"),
                Some(_) => continue,
            };
            found.add(
                UNKNOWN_TRANSFER,
                &r.state.name,
                format!("transfer {}", t.id),
                format!("{} {} {} -> {} (origin {}) {why}", t.amount, t.currency, t.from, t.to, t.origin_region),
            );
        }
    }
}

fn overdraft_unflagged(ctx: &Ctx, found: &mut Found) {
    for r in &ctx.regions {
        for (id, a) in &r.state.accounts {
            let may_go_negative = ctx.is_mint(id).unwrap_or(a.allow_negative);
            if may_go_negative || a.balance >= 0 {
                continue;
            }
            let flagged = r.state.conflicts.iter().any(|c| c.kind == "overdraft" && &c.account == id);
            if !flagged {
                found.add(
                    OVERDRAFT_UNFLAGGED,
                    &r.state.name,
                    format!("account {id}"),
                    format!("balance {} {} and no overdraft conflict names it", a.balance, a.currency),
                );
            }
        }
    }
}

fn conservation(ctx: &Ctx, found: &mut Found) {
    for r in &ctx.regions {
        let region = r.state.name.as_str();
        // (mint sum, customers sum, mint ids) per currency; i128 so a corrupted balance near
        // i64::MAX is reported rather than wrapped.
        let mut sums: BTreeMap<&str, (i128, i128, Vec<&str>)> = BTreeMap::new();
        for (id, a) in &r.state.accounts {
            let s = sums.entry(a.currency.as_str()).or_default();
            if ctx.is_mint(id).unwrap_or(a.allow_negative) {
                s.0 += i128::from(a.balance);
                s.2.push(id);
            } else {
                s.1 += i128::from(a.balance);
            }
        }
        for (currency, (mint, customers, mints)) in sums {
            if mint + customers != 0 {
                found.add(
                    CONSERVATION,
                    region,
                    format!("currency {currency}"),
                    format!(
                        "balances sum to {}: the mint ({}) is at {mint}, the other accounts sum to {customers} (expected {})",
                        mint + customers,
                        mints.join(", "),
                        -mint
                    ),
                );
            }
        }

        let mut net: HashMap<&str, i128> = HashMap::new();
        for t in &r.state.transfers {
            *net.entry(t.from.as_str()).or_default() -= i128::from(t.amount);
            *net.entry(t.to.as_str()).or_default() += i128::from(t.amount);
        }
        for (id, a) in &r.state.accounts {
            let entries = net.get(id.as_str()).copied().unwrap_or(0);
            if entries != i128::from(a.balance) {
                found.add(
                    CONSERVATION,
                    region,
                    format!("account {id}"),
                    format!("balance {} {} but its transfers net to {entries}", a.balance, a.currency),
                );
            }
        }
    }
}

fn divergence(ctx: &Ctx, found: &mut Found) {
    for name in &ctx.history.regions {
        if !ctx.observed.regions.iter().any(|r| &r.name == name) {
            found.add(DIVERGENCE, name, "region".into(), "was not observed after healing".into());
        }
    }
    for r in &ctx.regions {
        if r.state.pending_events > 0 {
            found.add(
                DIVERGENCE,
                &r.state.name,
                "region".into(),
                format!("{} events still pending after healing", r.state.pending_events),
            );
        }
        for a in &ctx.history.accounts {
            if !r.state.accounts.contains_key(&a.id) {
                found.add(
                    DIVERGENCE,
                    &r.state.name,
                    format!("account {}", a.id),
                    "the run opened it; missing here".into(),
                );
            }
        }
    }

    // Every region against the first: a detail then always reads "x here, y in <first>".
    let Some((reference, others)) = ctx.regions.split_first() else { return };
    let ref_name = reference.state.name.as_str();
    let opened: BTreeSet<&str> = ctx.history.accounts.iter().map(|a| a.id.as_str()).collect();
    for r in others {
        let region = r.state.name.as_str();
        let ours = &r.state.accounts;
        let theirs = &reference.state.accounts;
        for id in ours.keys().chain(theirs.keys()).collect::<BTreeSet<_>>() {
            let subject = format!("account {id}");
            match (ours.get(id), theirs.get(id)) {
                (Some(a), Some(b)) => {
                    let mut diffs = Vec::new();
                    if a.balance != b.balance {
                        diffs.push(format!("balance {} here, {} in {ref_name}", a.balance, b.balance));
                    }
                    if a.entry_seq != b.entry_seq {
                        diffs.push(format!("entry_seq {} here, {} in {ref_name}", a.entry_seq, b.entry_seq));
                    }
                    if a.version != b.version {
                        diffs.push(format!("version {:?} here, {:?} in {ref_name}", a.version, b.version));
                    }
                    if a.frozen != b.frozen {
                        diffs.push(format!("frozen {} here, {} in {ref_name}", a.frozen, b.frozen));
                    }
                    if a.currency != b.currency || a.allow_negative != b.allow_negative {
                        diffs.push(format!(
                            "defined as {} allow_negative={} here, {} allow_negative={} in {ref_name}",
                            a.currency, a.allow_negative, b.currency, b.allow_negative
                        ));
                    }
                    if !diffs.is_empty() {
                        found.add(DIVERGENCE, region, subject, diffs.join("; "));
                    }
                }
                // An account the run opened that some region lacks was reported above, per region.
                _ if opened.contains(id.as_str()) => {}
                (Some(_), None) => {
                    found.add(DIVERGENCE, region, subject, format!("present here, absent in {ref_name}"))
                }
                (None, Some(_)) => {
                    found.add(DIVERGENCE, region, subject, format!("absent here, present in {ref_name}"))
                }
                (None, None) => {}
            }
        }

        let ours: BTreeSet<_> = r.by_id.keys().collect();
        let theirs: BTreeSet<_> = reference.by_id.keys().collect();
        for id in ours.difference(&theirs) {
            found.add(DIVERGENCE, region, format!("transfer {id}"), format!("present here, absent in {ref_name}"));
        }
        for id in theirs.difference(&ours) {
            found.add(DIVERGENCE, region, format!("transfer {id}"), format!("absent here, present in {ref_name}"));
        }

        let key =
            |c: &crate::history::ConflictObs| (c.kind.clone(), c.account.clone(), c.status.clone(), c.event_count);
        let ours: BTreeMap<_, _> = r.state.conflicts.iter().map(|c| (c.id, key(c))).collect();
        let theirs: BTreeMap<_, _> = reference.state.conflicts.iter().map(|c| (c.id, key(c))).collect();
        for id in ours.keys().chain(theirs.keys()).collect::<BTreeSet<_>>() {
            let subject = format!("conflict {id}");
            let show = |c: &(String, String, String, i64)| format!("{} on {} {} with {} events", c.0, c.1, c.2, c.3);
            match (ours.get(id), theirs.get(id)) {
                (Some(a), Some(b)) if a != b => {
                    found.add(DIVERGENCE, region, subject, format!("{} here, {} in {ref_name}", show(a), show(b)))
                }
                (Some(a), None) => {
                    found.add(DIVERGENCE, region, subject, format!("{} here, absent in {ref_name}", show(a)))
                }
                (None, Some(b)) => {
                    found.add(DIVERGENCE, region, subject, format!("absent here, {} in {ref_name}", show(b)))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4213), "4,213");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn listing_is_capped_but_counting_is_not() {
        let mut found = Found::default();
        for i in 0..(MAX_LISTED_PER_RULE + 5) {
            found.add(DIVERGENCE, "r", format!("account {i}"), String::new());
        }
        let (count, listed) = &found.by_rule[DIVERGENCE];
        assert_eq!(*count as usize, MAX_LISTED_PER_RULE + 5);
        assert_eq!(listed.len(), MAX_LISTED_PER_RULE);
    }
}
