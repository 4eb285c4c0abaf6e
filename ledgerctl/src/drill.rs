//! `ledgerctl drill region-loss --region R`: the region-loss drill. Under an open-loop load of
//! transfers through the geo-router from clients in every region, it kills one whole region (its
//! node, replicator, Kafka and PostgreSQL, with SIGKILL), keeps the load running, brings the region
//! back, and reports:
//!
//! - **RTO**, the error window clients saw: from the kill to the last attempt that failed (the
//!   client retries with the same key, so a failed attempt is an error a user waited through);
//! - **RPO**, what was at risk at the moment of loss: transfers the lost region had acknowledged
//!   that no surviving region had yet, and how old the oldest of them was;
//!
//! and checks, once everything has replicated, that every acknowledged transfer exists in every
//! region, and that every account holds exactly one entry per idempotency key plus one per extra
//! execution that a `duplicate-intent` conflict names: a retry that crossed regions surfaces as a
//! replay or as a conflict for finance, never silently twice. Requests that were never
//! acknowledged are sent again with their key at the end, as a client would, so the count is exact.

use crate::error::StackError;
use crate::manifest::Manifest;
use crate::stack::{Component, Stack};
use ledger_client::{AttemptObserver, Client, ClientConfig, NewTransfer};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Target accounts per client region.
const TARGETS_PER_CLIENT_REGION: usize = 20;
/// How long recovery may take before the drill fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// Requests in flight at most; beyond it the load would no longer be open.
const IN_FLIGHT_MAX: usize = 4_096;

/// Flags of `ledgerctl drill region-loss`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// The region to lose.
    #[arg(long)]
    pub region: String,
    /// Transfers per second, spread evenly over the client regions.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Load before the kill, seconds.
    #[arg(long, default_value_t = 10)]
    pub before_s: u64,
    /// How long the region stays down, seconds.
    #[arg(long, default_value_t = 15)]
    pub outage_s: u64,
    /// Load after the region is back, seconds.
    #[arg(long, default_value_t = 10)]
    pub after_s: u64,
    /// Where the JSON report goes (default: `drill-region-loss.json` next to the manifest).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Clients carry `Ledger-Session` tokens. A client whose latest writes live only in the lost
    /// region then waits for it (a region never answers a session back in time), so its error
    /// window is the outage, not the failover.
    #[arg(long)]
    pub sessions: bool,
}

/// What the drill measured and found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The region lost.
    pub region: String,
    /// Target rate.
    pub rate: u32,
    /// Clients carried session tokens.
    pub sessions: bool,
    /// Transfers sent.
    pub requests: u64,
    /// Acknowledged during the load (before the final resend).
    pub acknowledged: u64,
    /// Acknowledged only when sent again at the end.
    pub acknowledged_on_resend: u64,
    /// Attempts that failed (each retried with the same key).
    pub failed_attempts: u64,
    /// Acknowledgements that were replays of an earlier execution of the key.
    pub replays: u64,
    /// Requests whose attempts were answered by more than one region (as `Ledger-Region` said).
    pub crossed_regions: u64,
    /// Milliseconds from the kill to the last failed attempt (0: clients saw no error).
    pub rto_ms: u64,
    /// Transfers the lost region had acknowledged and no surviving region had at the kill.
    pub rpo_transfers: u64,
    /// Age at the kill of the oldest of those, milliseconds.
    pub rpo_ms: u64,
    /// Extra executions named by `duplicate-intent` conflicts.
    pub duplicate_executions: u64,
    /// Acknowledged transfers missing from some region after recovery (must be 0).
    pub missing_after_recovery: u64,
    /// Entries that no key or conflict explains (must be 0).
    pub unexplained_entries: i64,
    /// Seconds from the region's restart until every region held every acknowledged transfer.
    pub converged_after_restart_s: f64,
    /// Cross-region replication lag p99 before the kill, in the same run (stored in a region minus
    /// accepted at its origin, over every region's events from the others), milliseconds: the
    /// RPO target.
    pub replication_lag_p99_ms: f64,
    /// Whether the RPO (the oldest transfer at risk) stayed within that lag.
    pub rpo_within_lag: bool,
    /// Every check held.
    pub ok: bool,
}

#[derive(Debug, Clone)]
struct Ack {
    transfer_id: String,
    region: Option<String>,
    at: Instant,
    account: String,
}

#[derive(Default)]
struct Log {
    acks: BTreeMap<String, Ack>,
    unacked: BTreeMap<String, (String, String)>,
    failed_attempts: Vec<Instant>,
    regions_by_key: BTreeMap<String, BTreeSet<String>>,
    replays: u64,
}

fn err(what: impl Into<String>) -> StackError {
    StackError::Config(what.into())
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> Option<Value> {
    let r = http.get(url).bearer_auth(key).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Runs the drill against the stack `stack` describes.
pub async fn region_loss(
    stack: &Stack,
    manifest_path: &std::path::Path,
    args: &DrillArgs,
) -> Result<DrillReport, StackError> {
    let manifest = Manifest::load(manifest_path)?.ok_or_else(|| err("nothing is up: run `ledgerctl up`"))?;
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(manifest_path).map_err(StackError::io(manifest_path))?)
            .map_err(|e| err(e.to_string()))?;
    let router = raw["router_url"].as_str().ok_or_else(|| err("the stack has no router_url"))?.to_owned();
    let key = manifest.api_key.clone().ok_or_else(|| err("the stack has no api key"))?;
    let regions: Vec<(String, String)> =
        manifest.regions.iter().map(|r| (r.name.clone(), r.http_url.clone())).collect();
    if !regions.iter().any(|(n, _)| *n == args.region) {
        return Err(err(format!("no region {} in the stack", args.region)));
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| err(e.to_string()))?;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let log = Arc::new(Mutex::new(Log::default()));

    // Clients, one per client region, through the router; sources and targets of their own, so
    // only the lost region's unreplicated writes can ever be concurrent with others.
    let mut clients = Vec::new();
    for (client_region, _) in &regions {
        let observed = log.clone();
        let observer = AttemptObserver(Arc::new(move |e: &ledger_client::AttemptEvent| {
            let mut log = observed.lock().unwrap_or_else(|p| p.into_inner());
            if e.retried {
                log.failed_attempts.push(e.at);
            }
            if let (Some(k), Some(r)) = (&e.idempotency_key, &e.region) {
                log.regions_by_key.entry(k.clone()).or_default().insert(r.clone());
            }
        }));
        let cfg = ClientConfig {
            client_region: Some(client_region.clone()),
            attempt_timeout: Duration::from_secs(3),
            attempts_max: 30,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(1_000),
            on_attempt: Some(observer),
            carry_session: args.sessions,
            ..ClientConfig::new(vec![router.clone()], key.clone())
        };
        let client = Arc::new(Client::new(cfg).map_err(|e| err(e.to_string()))?);
        let source = format!("drill-{run}-{client_region}-src");
        client.open_account(&source, "USD", true).await.map_err(|e| err(format!("opening {source}: {e}")))?;
        let mut targets = Vec::new();
        for i in 0..TARGETS_PER_CLIENT_REGION {
            let t = format!("drill-{run}-{client_region}-{i}");
            client.open_account(&t, "USD", false).await.map_err(|e| err(format!("opening {t}: {e}")))?;
            targets.push(t);
        }
        clients.push((client, source, targets));
    }
    // Every region holds every account before the load starts.
    let all: Vec<String> =
        clients.iter().flat_map(|(_, s, t)| std::iter::once(s.clone()).chain(t.iter().cloned())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (_, url) in &regions {
        for a in &all {
            while get(&http, &format!("{url}/v1/accounts/{a}"), &key).await.is_none() {
                if Instant::now() > deadline {
                    return Err(err(format!("account {a} never reached {url}")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    let load_started_wall = std::time::SystemTime::now();
    // The load: open loop, request i due at t0 + i / rate, round-robin over client regions.
    let total = args.before_s + args.outage_s + args.after_s;
    let stop_at = Instant::now() + Duration::from_secs(total);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let load = {
        let (log, clients) = (log.clone(), clients.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let t0 = Instant::now();
            let mut i: u64 = 0;
            while Instant::now() < stop_at {
                let due = t0 + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                while tasks.len() >= IN_FLIGHT_MAX {
                    tasks.join_next().await;
                }
                let (client, source, targets) = clients[(i as usize) % clients.len()].clone();
                let target = targets[(i as usize / clients.len()) % targets.len()].clone();
                let idempotency_key = format!("drill-{i}-{}", uuid::Uuid::now_v7().simple());
                let log = log.clone();
                tasks.spawn(async move {
                    let t = NewTransfer {
                        from: source.clone(),
                        to: target.clone(),
                        amount: 1,
                        idempotency_key: Some(idempotency_key.clone()),
                        ..Default::default()
                    };
                    let outcome = client.transfer(t).await;
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    match outcome {
                        Ok(a) => {
                            if a.replayed {
                                log.replays += 1;
                            }
                            let ack =
                                Ack { transfer_id: a.value.id, region: a.region, at: Instant::now(), account: target };
                            log.acks.insert(idempotency_key, ack);
                        }
                        Err(_) => {
                            log.unacked.insert(idempotency_key, (source, target));
                        }
                    }
                });
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
            i
        })
    };

    tokio::time::sleep(Duration::from_secs(args.before_s)).await;
    // The loss: every part of the region, with SIGKILL.
    let killed_at = Instant::now();
    let killed_at_wall = std::time::SystemTime::now();
    for component in [Component::Node, Component::Replicator, Component::Kafka, Component::Postgres] {
        stack.stop(component, Some(&args.region), true)?;
    }
    // RPO: what the lost region acknowledged that no survivor holds yet.
    let recent: Vec<Ack> = {
        let log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.acks.values().filter(|a| a.region.as_deref() == Some(args.region.as_str())).cloned().collect()
    };
    let survivors: Vec<&(String, String)> = regions.iter().filter(|(n, _)| *n != args.region).collect();
    let mut at_risk: Vec<&Ack> = Vec::new();
    for ack in recent.iter().rev().take(5_000) {
        let mut held = false;
        for (_, url) in &survivors {
            if get(&http, &format!("{url}/v1/transfers/{}", ack.transfer_id), &key).await.is_some() {
                held = true;
                break;
            }
        }
        if !held {
            at_risk.push(ack);
        }
    }
    let rpo_ms =
        at_risk.iter().map(|a| killed_at.saturating_duration_since(a.at).as_millis() as u64).max().unwrap_or(0);

    let elapsed = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(args.outage_s).saturating_sub(elapsed)).await;
    for component in [Component::Postgres, Component::Kafka, Component::Node, Component::Replicator] {
        stack.start(component, Some(&args.region)).await?;
    }
    let restarted_at = Instant::now();
    let requests = load.await.map_err(|e| err(e.to_string()))?;

    // Whatever was never acknowledged is sent again with its key, as the client would.
    let unacked: Vec<(String, (String, String))> =
        std::mem::take(&mut log.lock().unwrap_or_else(|p| p.into_inner()).unacked).into_iter().collect();
    let mut acknowledged_on_resend = 0;
    for (idempotency_key, (source, target)) in unacked {
        let client = &clients.iter().find(|(_, s, _)| *s == source).expect("a source of ours").0;
        let t = NewTransfer {
            from: source,
            to: target.clone(),
            amount: 1,
            idempotency_key: Some(idempotency_key.clone()),
            ..Default::default()
        };
        let a = client.transfer(t).await.map_err(|e| err(format!("resending {idempotency_key}: {e}")))?;
        acknowledged_on_resend += 1;
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.acks.insert(
            idempotency_key,
            Ack { transfer_id: a.value.id, region: a.region, at: Instant::now(), account: target },
        );
    }

    // The clients' observers share the log; the load is over, so what it holds is final.
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    // Recovery: every acknowledged transfer in every region.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut missing = 0u64;
    for (_, url) in &regions {
        for ack in log.acks.values() {
            while get(&http, &format!("{url}/v1/transfers/{}", ack.transfer_id), &key).await.is_none() {
                if Instant::now() > deadline {
                    missing += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let converged_after_restart_s = restarted_at.elapsed().as_secs_f64();
    // Exactly once: per account, entries = keys acknowledged + extra executions named by
    // duplicate-intent conflicts, the same in every region.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for ack in log.acks.values() {
        *expected.entry(ack.account.clone()).or_default() += 1;
    }
    let mut duplicate_executions = 0u64;
    let mut unexplained = 0i64;
    for (name, url) in &regions {
        let conflicts =
            get(&http, &format!("{url}/v1/conflicts?kind=duplicate-intent&limit=1000"), &key).await.unwrap_or_default();
        let mut extra: BTreeMap<String, i64> = BTreeMap::new();
        for c in conflicts["conflicts"].as_array().into_iter().flatten() {
            for e in c["events"].as_array().into_iter().flatten().skip(1) {
                // Only this run's accounts: a stack keeps the conflicts of earlier drills.
                if let Some(to) = e["transfer"]["to"].as_str().filter(|to| expected.contains_key(*to)) {
                    *extra.entry(to.to_owned()).or_default() += 1;
                }
            }
        }
        if name == &regions[0].0 {
            duplicate_executions = extra.values().sum::<i64>() as u64;
        }
        for (account, keys) in &expected {
            let entries = get(&http, &format!("{url}/v1/accounts/{account}"), &key)
                .await
                .and_then(|a| a["entries"].as_i64())
                .unwrap_or(-1);
            let diff = entries - keys - extra.get(account).copied().unwrap_or(0);
            if diff != 0 {
                eprintln!(
                    "drill: {name}: {account} has {entries} entries for {keys} keys and {} duplicate executions",
                    extra.get(account).copied().unwrap_or(0)
                );
                unexplained += diff.abs();
            }
        }
    }
    let lag = replication_lag_p99_ms(&manifest, &args.region, load_started_wall, killed_at_wall).await?;
    let rto_ms = log
        .failed_attempts
        .iter()
        .filter(|t| **t >= killed_at)
        .map(|t| t.duration_since(killed_at).as_millis() as u64)
        .max()
        .unwrap_or(0);
    let crossed_regions = log.regions_by_key.values().filter(|r| r.len() > 1).count() as u64;
    let report = DrillReport {
        region: args.region.clone(),
        rate: args.rate,
        sessions: args.sessions,
        requests,
        acknowledged: log.acks.len() as u64 - acknowledged_on_resend,
        acknowledged_on_resend,
        failed_attempts: log.failed_attempts.len() as u64,
        replays: log.replays,
        crossed_regions,
        rto_ms,
        rpo_transfers: at_risk.len() as u64,
        rpo_ms,
        duplicate_executions,
        missing_after_recovery: missing,
        unexplained_entries: unexplained,
        converged_after_restart_s,
        replication_lag_p99_ms: lag,
        rpo_within_lag: rpo_ms as f64 <= lag,
        ok: missing == 0 && unexplained == 0,
    };
    let out = args.out.clone().unwrap_or_else(|| manifest_path.with_file_name("drill-region-loss.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&report).expect("a report serializes") + "\n")
        .map_err(StackError::io(&out))?;
    Ok(report)
}

/// The cross-region lag p99 of the events accepted between `from` and `to`, between the regions
/// other than `lost` (its own events waited for its return, which is the RPO, not the lag).
async fn replication_lag_p99_ms(
    manifest: &Manifest,
    lost: &str,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> Result<f64, StackError> {
    use sqlx::Connection;
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let mut lags: Vec<f64> = Vec::new();
    for r in manifest.regions.iter().filter(|r| r.name != lost) {
        let pg = |e: sqlx::Error| err(format!("{}: {e}", r.postgres_url));
        let mut conn = sqlx::PgConnection::connect(&r.postgres_url).await.map_err(pg)?;
        let rows: Vec<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM stored_at - occurred_at)::float8 * 1000 FROM ledger_events
             WHERE origin_region <> $1 AND origin_region <> $4 AND occurred_at >= to_timestamp($2)
               AND occurred_at < to_timestamp($3)",
        )
        .bind(&r.name)
        .bind(unix(from))
        .bind(unix(to))
        .bind(lost)
        .fetch_all(&mut conn)
        .await
        .map_err(pg)?;
        lags.extend(rows);
        let _ = conn.close().await;
    }
    if lags.is_empty() {
        return Ok(0.0);
    }
    lags.sort_by(f64::total_cmp);
    Ok(lags[((lags.len() as f64 * 0.99).ceil() as usize).saturating_sub(1).min(lags.len() - 1)])
}

/// Prints the report.
pub fn print(r: &DrillReport) {
    println!(
        "region-loss drill ({}): {} requests at {}/s, {} acknowledged (+{} on resend), {} failed attempts, {} replays",
        r.region, r.requests, r.rate, r.acknowledged, r.acknowledged_on_resend, r.failed_attempts, r.replays
    );
    println!(
        "RTO {} ms (kill to last failed attempt); RPO {} transfers, oldest {} ms (acknowledged by {} only at the kill); replication lag p99 {:.0} ms before the kill",
        r.rto_ms, r.rpo_transfers, r.rpo_ms, r.region, r.replication_lag_p99_ms
    );
    println!(
        "after recovery ({:.1} s after restart): {} missing, {} duplicate executions (named by duplicate-intent conflicts), {} unexplained entries: {}",
        r.converged_after_restart_s,
        r.missing_after_recovery,
        r.duplicate_executions,
        r.unexplained_entries,
        if r.ok { "OK" } else { "FAILED" }
    );
}
