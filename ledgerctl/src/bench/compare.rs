//! `ledgerctl bench --baseline`: the node beside a plain PostgreSQL ledger and `GET /healthz`, in
//! one run, on one machine, against one PostgreSQL instance, so every figure comes with the ratio
//! that survives this machine's 2× swings between runs.
//!
//! Phases, in this order: open loop at `--rate` against `/healthz`, the node, the PL/pgSQL ledger
//! and the plain one (the same seeded schedule of pairs and amounts for all); then, for each
//! `--clients` count in turn, a closed loop against the node, PL/pgSQL and plain (interleaved, so a
//! slow minute of the machine does not fall on one system only). The ceiling of a system is its
//! best closed-loop throughput. The baseline's books are audited at the end.

use super::{
    BenchArgs, BenchError, CURRENCY, OpenLoop, OutboxLagMs, SETUP_CONCURRENCY, Shared, Target, open_loop,
    outbox_lag_or_warn, pick_pair, prepare, write_json,
};
use crate::baseline::{Audit, Baseline, Driver, Outcome};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Transfers per second one closed-loop client is assumed to reach at most, for funding.
const CLOSED_CLIENT_RATE_MAX: u64 = 2_000;

/// The systems measured, as named in the report.
pub const NODE: &str = "node";
/// The plain ledger driven statement by statement.
pub const PLAIN: &str = "plain PostgreSQL";
/// The plain ledger driven by one PL/pgSQL call.
pub const PLPGSQL: &str = "PL/pgSQL";
/// `GET /healthz`.
pub const HEALTHZ: &str = "GET /healthz";

/// An open-loop phase of one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenRow {
    /// Requests due in the window.
    pub sent: u64,
    /// Successes.
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Successes per second of the (possibly stretched) window.
    pub throughput_per_s: f64,
    /// From intended start to response.
    pub latency_ms: super::LatencyMs,
}

/// A closed-loop phase of one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClosedRow {
    /// Clients, each sending its next request when the previous one is answered.
    pub clients: u32,
    /// Successes started in the window.
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// `ok` per second of the window.
    pub throughput_per_s: f64,
    /// Request to response.
    pub latency_ms: super::LatencyMs,
}

/// Everything measured of one system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemRow {
    /// [`NODE`], [`PLAIN`], [`PLPGSQL`] or [`HEALTHZ`].
    pub system: String,
    /// Open loop at `--rate`.
    pub open_loop: OpenRow,
    /// Closed loop at each client count (none for `/healthz`).
    pub closed_loop: Vec<ClosedRow>,
    /// Best closed-loop throughput, per second.
    pub ceiling_per_s: Option<f64>,
}

/// One target of the performance issue, as a ratio measured in this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is compared.
    pub name: String,
    /// The goal, in words.
    pub goal: String,
    /// The measured value (a ratio, or milliseconds for the outbox lag).
    pub measured: f64,
    /// Whether the goal is reached.
    pub met: bool,
}

/// The result of `ledgerctl bench --baseline`, written as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareReport {
    /// Region loaded.
    pub region: String,
    /// Run id (account names, keys).
    pub run_id: String,
    /// Seed of the draws.
    pub seed: u64,
    /// Open-loop rate, per second.
    pub rate: u32,
    /// Open-loop window and warm-up, seconds.
    pub duration_s: u64,
    /// Open-loop warm-up, seconds.
    pub warmup_s: u64,
    /// Closed-loop window, seconds.
    pub closed_s: u64,
    /// Accounts drawn between.
    pub accounts: u32,
    /// Connections of the baseline ledger.
    pub baseline_connections: u32,
    /// One row per system.
    pub systems: Vec<SystemRow>,
    /// The node's outbox-to-Kafka lag during its open-loop phase.
    pub outbox_lag_ms: Option<OutboxLagMs>,
    /// The issue's targets.
    pub targets: Vec<TargetCheck>,
    /// The baseline's books after the run.
    pub baseline_audit: Audit,
    /// Non-fatal problems.
    pub warnings: Vec<String>,
    /// Reproduces the run.
    pub command: String,
}

impl CompareReport {
    fn system(&self, name: &str) -> Option<&SystemRow> {
        self.systems.iter().find(|s| s.system == name)
    }
}

fn open_row(phase: &OpenLoop, args: &BenchArgs) -> OpenRow {
    let (_, throughput) = super::throughput(
        phase.stats.ok,
        Duration::from_secs(args.duration_s),
        phase.window_start,
        phase.stats.last_done,
    );
    OpenRow {
        sent: phase.stats.sent,
        ok: phase.stats.ok,
        errors: phase.stats.errors.clone(),
        throughput_per_s: throughput,
        latency_ms: super::LatencyMs::from_histogram_us(&phase.stats.latency_us),
    }
}

/// What one closed-loop client records.
struct ClientTally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

/// `clients` clients each send a request, wait for its answer, and send the next, for the warm-up
/// and the window; only requests started in the window count.
async fn closed_loop(
    shared: &Arc<Shared>,
    target: &Target,
    phase: &str,
    clients: u32,
    args: &BenchArgs,
    seed: u64,
) -> ClosedRow {
    let window_start = Instant::now() + Duration::from_secs(args.closed_warmup_s);
    let window_end = window_start + Duration::from_secs(args.closed_s);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (shared, target, phase) = (shared.clone(), target.clone(), phase.to_owned());
        let accounts = args.accounts;
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(c) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut tally = ClientTally {
                latency_us: Histogram::new_with_bounds(1, super::HISTOGRAM_MAX_US, 3).expect("valid bounds"),
                ok: 0,
                errors: BTreeMap::new(),
            };
            let mut i = 0u64;
            loop {
                let started = Instant::now();
                if started >= window_end {
                    return tally;
                }
                let (from, to) = pick_pair(&mut rng, accounts);
                let amount = rng.random_range(1..=super::AMOUNT_MAX);
                let key = format!("bench-{}-{phase}c{c}-{i}", shared.run_id);
                i += 1;
                let outcome = target.send(&shared, key, from, to, amount).await;
                if started < window_start {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        tally.ok += 1;
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        tally.latency_us.saturating_record(us.max(1));
                    }
                    Err(kind) => *tally.errors.entry(kind).or_default() += 1,
                }
            }
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, super::HISTOGRAM_MAX_US, 3).expect("valid bounds");
    let (mut ok, mut errors) = (0, BTreeMap::new());
    while let Some(joined) = tasks.join_next().await {
        let Ok(tally) = joined else {
            *errors.entry("client_panicked".to_owned()).or_default() += 1;
            continue;
        };
        ok += tally.ok;
        all.add(&tally.latency_us).expect("same bounds");
        for (kind, n) in tally.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    ClosedRow {
        clients,
        ok,
        errors,
        throughput_per_s: ok as f64 / args.closed_s as f64,
        latency_ms: super::LatencyMs::from_histogram_us(&all),
    }
}

/// Opens the run's accounts in the baseline ledger and funds them as the node's were.
async fn set_up_baseline(ledger: &Baseline, shared: &Shared, world: &str, funding: i64) -> Result<(), BenchError> {
    let setup = |e: sqlx::Error| BenchError::Setup(format!("baseline ledger: {e}"));
    ledger.open_account(world, CURRENCY, true).await.map_err(setup)?;
    for account in &shared.accounts {
        ledger.open_account(account, CURRENCY, false).await.map_err(setup)?;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, account) in shared.accounts.iter().enumerate() {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (ledger, account, world) = (ledger.clone(), account.clone(), world.to_owned());
        let key = format!("bench-{}-fund-{i}", shared.run_id);
        tasks.spawn(async move {
            let _permit = permit;
            match ledger.transfer(Driver::Plpgsql, &key, &world, &account, funding, CURRENCY).await {
                Ok(Outcome::Applied | Outcome::Replayed) => Ok(()),
                Ok(Outcome::Refused(why)) => Err(BenchError::Setup(format!("baseline funding of {account}: {why}"))),
                Err(e) => Err(BenchError::Setup(format!("baseline funding of {account}: {e}"))),
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| BenchError::Setup(format!("a setup task failed: {e}")))??;
    }
    Ok(())
}

/// The issue's targets, from the measured rows (a target whose figures are missing is left out).
pub fn targets(report: &CompareReport) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let (node, plain, plpgsql, healthz) =
        (report.system(NODE), report.system(PLAIN), report.system(PLPGSQL), report.system(HEALTHZ));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    if let (Some(n), Some(p)) = (node.and_then(|n| n.ceiling_per_s), plain.and_then(|p| p.ceiling_per_s)) {
        let r = ratio(n, p);
        out.push(TargetCheck {
            name: "ceiling, node / plain PostgreSQL".into(),
            goal: "≥ 5×".into(),
            measured: r,
            met: r >= 5.0,
        });
    }
    for clients in [1, 8] {
        let at = |row: Option<&SystemRow>| {
            row.and_then(|r| r.closed_loop.iter().find(|c| c.clients == clients)).map(|c| c.throughput_per_s)
        };
        if let (Some(n), Some(p)) = (at(node), at(plpgsql)) {
            let r = ratio(n, p);
            out.push(TargetCheck {
                name: format!("closed loop at {clients}, node / PL/pgSQL"),
                goal: "≥ 1×".into(),
                measured: r,
                met: r >= 1.0,
            });
        }
    }
    if let (Some(n), Some(h)) = (node, healthz) {
        let r = ratio(n.open_loop.latency_ms.p99, h.open_loop.latency_ms.p99);
        out.push(TargetCheck {
            name: format!("p99 at {}/s, node / GET /healthz", report.rate),
            goal: "≤ 3×".into(),
            measured: r,
            met: r <= 3.0 && n.open_loop.ok > 0,
        });
    }
    if let Some(lag) = &report.outbox_lag_ms {
        let published = lag.rows > 0 && lag.unpublished == 0;
        out.push(TargetCheck {
            name: "outbox→Kafka lag p50, ms".into(),
            goal: "≤ 10".into(),
            measured: lag.p50,
            met: published && lag.p50 <= 10.0,
        });
        out.push(TargetCheck {
            name: "outbox→Kafka lag p99, ms".into(),
            goal: "≤ 50".into(),
            measured: lag.p99,
            met: published && lag.p99 <= 50.0,
        });
    }
    out
}

/// Runs the comparison and writes its report to `--out`.
pub async fn run(args: &BenchArgs) -> Result<CompareReport, BenchError> {
    let closed_per_system: u64 = args
        .clients
        .iter()
        .map(|&c| u64::from(c) * (args.closed_s + args.closed_warmup_s) * CLOSED_CLIENT_RATE_MAX)
        .sum();
    let open = super::total_requests(args.rate, args.warmup_s, args.duration_s);
    let p = prepare(args, &format!("bench-baseline-{}.json", args.rate), open + closed_per_system).await?;
    let command = super::command_line(args, &p.manifest_path, &p.region.name, &p.out, p.seed);
    let database_url = crate::baseline::ensure_database(&p.region.postgres_url)
        .await
        .map_err(|e| BenchError::Setup(format!("baseline database on {}: {e}", p.region.postgres_url)))?;
    let ledger = Baseline::connect(&database_url, args.baseline_connections)
        .await
        .map_err(|e| BenchError::Setup(format!("baseline ledger at {database_url}: {e}")))?;
    // The baseline's own world account is named under the run's prefix, so the audit covers it.
    let world = format!("bench-{}-world", p.shared.run_id);
    set_up_baseline(&ledger, &p.shared, &world, p.funding).await?;
    eprintln!("bench: baseline ledger ready in {database_url} with {} connections", args.baseline_connections);

    let systems: [(&str, Target); 4] = [
        (HEALTHZ, Target::Healthz),
        (NODE, Target::Node),
        (PLPGSQL, Target::Baseline(ledger.clone(), Driver::Plpgsql)),
        (PLAIN, Target::Baseline(ledger.clone(), Driver::Plain)),
    ];
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    let mut outbox_lag_ms = None;
    for (index, (name, target)) in systems.iter().enumerate() {
        eprintln!("bench: open loop, {name}, {}/s", args.rate);
        let phase = open_loop(&p.shared, target.clone(), &format!("o{index}-"), args, p.seed).await?;
        if *name == NODE {
            outbox_lag_ms =
                outbox_lag_or_warn(&p.region.postgres_url, phase.from_unix_s, phase.to_unix_s, &mut warnings).await;
        }
        rows.push(SystemRow {
            system: (*name).to_owned(),
            open_loop: open_row(&phase, args),
            closed_loop: Vec::new(),
            ceiling_per_s: None,
        });
    }
    for &clients in &args.clients {
        for (index, (name, target)) in systems.iter().enumerate().filter(|(_, (n, _))| *n != HEALTHZ) {
            eprintln!("bench: closed loop, {name}, {clients} clients");
            let row = closed_loop(&p.shared, target, &format!("k{index}-{clients}-"), clients, args, p.seed).await;
            eprintln!("bench:   {:.0}/s, p99 {:.1} ms", row.throughput_per_s, row.latency_ms.p99);
            let system = rows.iter_mut().find(|r| r.system == *name).expect("every system has a row");
            system.ceiling_per_s = Some(system.ceiling_per_s.unwrap_or(0.0).max(row.throughput_per_s));
            system.closed_loop.push(row);
        }
    }
    let baseline_audit = ledger
        .audit(&format!("bench-{}-", p.shared.run_id))
        .await
        .map_err(|e| BenchError::Setup(format!("auditing the baseline ledger: {e}")))?;
    ledger.close().await;
    if !baseline_audit.holds() {
        warnings.push(format!("the baseline ledger's books do not balance: {baseline_audit:?}"));
    }
    let mut report = CompareReport {
        region: p.region.name.clone(),
        run_id: p.shared.run_id.clone(),
        seed: p.seed,
        rate: args.rate,
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        closed_s: args.closed_s,
        accounts: args.accounts,
        baseline_connections: args.baseline_connections,
        systems: rows,
        outbox_lag_ms,
        targets: Vec::new(),
        baseline_audit,
        warnings,
        command,
    };
    report.targets = targets(&report);
    write_json(&p.out, &report)?;
    Ok(report)
}

/// Prints the comparison as a table to stdout.
pub fn print(report: &CompareReport) {
    println!(
        "region {}  {} accounts  seed {}  baseline connections {}",
        report.region, report.accounts, report.seed, report.baseline_connections
    );
    println!();
    println!(
        "open loop {}/s, {} s after {} s warm-up   ok/s       p50 ms    p99 ms  p99.9 ms   errors",
        report.rate, report.duration_s, report.warmup_s
    );
    for s in &report.systems {
        let (o, l) = (&s.open_loop, &s.open_loop.latency_ms);
        let errors: u64 = o.errors.values().sum();
        println!(
            "  {:<36} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            s.system, o.throughput_per_s, l.p50, l.p99, l.p999, errors
        );
    }
    let counts: Vec<u32> = report.systems.iter().flat_map(|s| s.closed_loop.iter().map(|c| c.clients)).collect();
    let mut counts = counts;
    counts.sort_unstable();
    counts.dedup();
    println!();
    let header: String =
        counts.iter().map(|c| format!("{:>20}", format!("{c} client{}", if *c == 1 { "" } else { "s" }))).collect();
    println!("closed loop {} s, transfers/s (p99 ms) {header}   ceiling/s", report.closed_s);
    for s in report.systems.iter().filter(|s| !s.closed_loop.is_empty()) {
        let cells: String = counts
            .iter()
            .map(|c| match s.closed_loop.iter().find(|r| r.clients == *c) {
                Some(r) => format!("{:>20}", format!("{:.0} ({:.1})", r.throughput_per_s, r.latency_ms.p99)),
                None => format!("{:>20}", "-"),
            })
            .collect();
        println!("  {:<36}{cells} {:>11.0}", s.system, s.ceiling_per_s.unwrap_or(0.0));
    }
    println!();
    match &report.outbox_lag_ms {
        Some(o) => println!(
            "node outbox→kafka lag ms (open loop)  p50 {:.1}  p99 {:.1}  max {:.1}  ({} rows, {} unpublished)",
            o.p50, o.p99, o.max, o.rows, o.unpublished
        ),
        None => println!("node outbox→kafka lag: not measured"),
    }
    println!();
    println!("targets (ratios measured in this run)");
    for t in &report.targets {
        let mark = if t.met { "met    " } else { "NOT met" };
        println!("  [{mark}] {:<44} goal {:<5} measured {:.2}", t.name, t.goal, t.measured);
    }
    let a = &report.baseline_audit;
    println!();
    println!(
        "baseline books: {} accounts, {} transfers, balances sum {}, {} overdrawn, {} balances off their entries, {} \
         unbalanced transfers: {}",
        a.accounts,
        a.transfers,
        a.balance_sum,
        a.overdrawn,
        a.balance_not_entries,
        a.unbalanced_transfers,
        if a.holds() { "correct" } else { "WRONG" }
    );
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!("reproduce: {}", report.command);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(clients: u32, per_s: f64) -> ClosedRow {
        ClosedRow { clients, ok: 1, errors: BTreeMap::new(), throughput_per_s: per_s, latency_ms: Default::default() }
    }

    fn row(system: &str, p99: f64, closed_loop: Vec<ClosedRow>) -> SystemRow {
        let ceiling = closed_loop.iter().map(|c| c.throughput_per_s).reduce(f64::max);
        SystemRow {
            system: system.into(),
            open_loop: OpenRow {
                sent: 10,
                ok: 10,
                errors: BTreeMap::new(),
                throughput_per_s: 10.0,
                latency_ms: super::super::LatencyMs { p99, ..Default::default() },
            },
            closed_loop,
            ceiling_per_s: ceiling,
        }
    }

    fn report(systems: Vec<SystemRow>, lag: Option<OutboxLagMs>) -> CompareReport {
        CompareReport {
            region: "r".into(),
            run_id: "x".into(),
            seed: 1,
            rate: 1000,
            duration_s: 1,
            warmup_s: 0,
            closed_s: 1,
            accounts: 2,
            baseline_connections: 16,
            systems,
            outbox_lag_ms: lag,
            targets: vec![],
            baseline_audit: Audit {
                accounts: 0,
                transfers: 0,
                balance_sum: "0".into(),
                overdrawn: 0,
                balance_not_entries: 0,
                unbalanced_transfers: 0,
            },
            warnings: vec![],
            command: String::new(),
        }
    }

    #[test]
    fn targets_are_ratios_of_the_same_run_and_say_whether_they_are_met() {
        let r = report(
            vec![
                row(NODE, 6.0, vec![closed(1, 600.0), closed(8, 1000.0), closed(64, 5000.0)]),
                row(PLAIN, 1.0, vec![closed(1, 300.0), closed(8, 900.0), closed(64, 1000.0)]),
                row(PLPGSQL, 1.0, vec![closed(1, 700.0), closed(8, 900.0), closed(64, 1200.0)]),
                row(HEALTHZ, 2.0, vec![]),
            ],
            Some(OutboxLagMs { rows: 5, unpublished: 0, p50: 10.0, p99: 51.0, max: 60.0 }),
        );
        let t = targets(&r);
        let by_name = |n: &str| t.iter().find(|t| t.name.starts_with(n)).unwrap_or_else(|| panic!("{n} in {t:?}"));
        assert_eq!(by_name("ceiling").measured, 5.0);
        assert!(by_name("ceiling").met, "exactly 5× meets ≥ 5×");
        assert!(!by_name("closed loop at 1").met, "600 < 700");
        assert!(by_name("closed loop at 8").met);
        assert_eq!(by_name("p99").measured, 3.0);
        assert!(by_name("p99").met);
        assert!(by_name("outbox→Kafka lag p50").met);
        assert!(!by_name("outbox→Kafka lag p99").met);
        assert_eq!(t.len(), 6);

        // Missing figures leave their targets out; unpublished rows fail the lag targets.
        let r = report(
            vec![row(NODE, 6.0, vec![closed(64, 5000.0)]), row(HEALTHZ, 1.0, vec![])],
            Some(OutboxLagMs { rows: 5, unpublished: 1, p50: 1.0, p99: 1.0, max: 1.0 }),
        );
        let t = targets(&r);
        assert_eq!(t.iter().map(|t| (t.name.as_str(), t.met)).collect::<Vec<_>>().len(), 3);
        assert!(t.iter().all(|t| !t.met), "{t:?}");
    }
}
