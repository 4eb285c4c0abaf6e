//! `ledgerctl bench`: an open-loop, constant-arrival-rate load of transfers against one region's
//! HTTP API, reported as throughput, latency percentiles, errors and the outbox-to-Kafka lag.
//!
//! - Open loop: request `i` is due at `t0 + i / rate` whatever happened to the earlier ones. A
//!   dedicated scheduler thread sleeps until each due time (a late scheduler sends what is overdue
//!   at once, never skips) and hands the request to the tokio runtime. Requests beyond
//!   `--concurrency-max` in flight are counted as errors, not delayed, so the load stays open.
//! - Coordinated omission: latency runs from the request's *intended* start to its full response,
//!   so a stall of the server (or of the generator) shows up in every request that was due during
//!   it, as a real client would see it. The generator's own delay (intended start to the task
//!   actually running) is reported apart as `send_lag_ms`, to tell its noise from the server's.
//! - Only requests intended after the warm-up count; the warm-up's counts are reported apart.
//! - The outbox lag comes from the region's database: `published_at - created_at` of the outbox
//!   rows created during the measured window, once all of them are published (or after 30 s).
//!
//! The thread uses `std::thread::sleep` (about 50 µs of timer slack on Linux) rather than tokio's
//! timer, whose 1 ms resolution would add up to a millisecond of generator delay to every request
//! and blur a p99 measured in single milliseconds.

use crate::config::repo_root;
use crate::error::StackError;
use crate::manifest::Manifest;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Smallest amount each benchmark account is funded with (minor units).
pub const FUNDING_MIN: i64 = 10_000_000;
/// Largest amount of one benchmark transfer (minor units); amounts are uniform in `1..=AMOUNT_MAX`.
pub const AMOUNT_MAX: i64 = 100;
/// Currency of the benchmark accounts.
pub const CURRENCY: &str = "USD";
/// Requests in flight while opening and funding the accounts.
const SETUP_CONCURRENCY: usize = 32;
/// A request that takes longer is a `timeout` error (the node answers 503 after 10 s itself).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the outbox rows of the window to be published.
const OUTBOX_WAIT: Duration = Duration::from_secs(30);
/// Highest latency the histograms hold, in microseconds (larger values are clamped).
const HISTOGRAM_MAX_US: u64 = 300_000_000;
/// Progress line interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Most closed-loop clients of one phase (each is a task with a connection).
pub const CLIENTS_MAX: u32 = 1024;
/// Most connections of the baseline ledger (the stack's PostgreSQL allows 300 in all).
pub const BASELINE_CONNECTIONS_MAX: u32 = 128;

pub mod compare;

/// Flags of `ledgerctl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Region to load (default: the first region of the manifest).
    #[arg(long)]
    pub region: Option<String>,
    /// Target arrival rate, transfers per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 30)]
    pub duration_s: u64,
    /// Warm-up before the measured window, seconds (load is sent, nothing is recorded).
    #[arg(long, default_value_t = 5)]
    pub warmup_s: u64,
    /// Accounts transfers are drawn between (random distinct pairs).
    #[arg(long, default_value_t = 1000)]
    pub accounts: u32,
    /// Most requests in flight; a request due beyond it is counted as an error, not delayed.
    #[arg(long, default_value_t = 4096)]
    pub concurrency_max: usize,
    /// Where the JSON result goes (default: `bench-<rate>.json` next to the manifest).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The environment manifest (default: `.devstack/env.json` under the repository root).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// API key, used when the manifest has none.
    #[arg(long, env = "LEDGER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seed of the account-pair and amount draws (default: random, printed and recorded).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also measure, in this run and on this region's PostgreSQL, the plain PostgreSQL ledger of
    /// `ledgerctl/sql/baseline.sql` (client statements and PL/pgSQL) and `GET /healthz`, open loop
    /// at `--rate` and closed loop at each of `--clients`, and report the ratios and targets.
    #[arg(long)]
    pub baseline: bool,
    /// With `--baseline`: the closed-loop client counts (the ceiling is the best of them).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 8, 64])]
    pub clients: Vec<u32>,
    /// With `--baseline`: measured seconds of each closed-loop phase (after `--closed-warmup-s`).
    #[arg(long, default_value_t = 10)]
    pub closed_s: u64,
    /// With `--baseline`: warm-up seconds of each closed-loop phase.
    #[arg(long, default_value_t = 2)]
    pub closed_warmup_s: u64,
    /// With `--baseline`: connections of the baseline ledger, as many as the node's pool
    /// (region-node's `db_pool_max`, 16 unless configured otherwise).
    #[arg(long, default_value_t = 16)]
    pub baseline_connections: u32,
}

impl Default for BenchArgs {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            region: None,
            rate: 1000,
            duration_s: 30,
            warmup_s: 5,
            accounts: 1000,
            concurrency_max: 4096,
            out: None,
            manifest: None,
            api_key: None,
            seed: None,
            baseline: false,
            clients: vec![1, 8, 64],
            closed_s: 10,
            closed_warmup_s: 2,
            baseline_connections: 16,
        }
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag value that cannot work.
    #[error("invalid bench option: {0}")]
    Args(String),
    /// No manifest where we looked.
    #[error("no manifest at {0}: start the stack with `ledgerctl up` or pass --manifest")]
    NoManifest(PathBuf),
    /// The manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] StackError),
    /// The region is not in the manifest.
    #[error("region {region:?} is not in {manifest} (it has: {known})")]
    NoRegion {
        /// The region asked for.
        region: String,
        /// The manifest read.
        manifest: PathBuf,
        /// The regions it lists.
        known: String,
    },
    /// Neither the manifest nor the flags give an API key.
    #[error("no API key: the manifest {0} has none; pass --api-key or set LEDGER_API_KEY")]
    NoApiKey(PathBuf),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[source] reqwest::Error),
    /// Opening or funding the accounts failed.
    #[error("setting up the benchmark accounts failed: {0}")]
    Setup(String),
    /// The scheduler thread died.
    #[error("the load scheduler failed: {0}")]
    Scheduler(String),
    /// Writing the result failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Latency percentiles of the successful requests, milliseconds, from intended start to response.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Requests recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencyMs {
    /// Reads the percentiles of a histogram of microseconds (HDR: within its precision, the
    /// highest value equivalent to the true percentile).
    pub fn from_histogram_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// The generator's own delay: from a request's intended start to its task running.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SendLagMs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Outbox-to-Kafka lag of the rows created during the measured window, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxLagMs {
    /// Rows created in the window.
    pub rows: u64,
    /// Of which still unpublished when we stopped waiting (not in the percentiles).
    pub unpublished: u64,
    /// Median of `published_at - created_at`.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// One second of the measured window, by intended start: shows stalls and when they happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the window's start.
    pub t: u64,
    /// Requests due in this second answered 201.
    pub ok: u64,
    /// Requests due in this second that failed.
    pub errors: u64,
    /// Slowest success among them, milliseconds.
    pub max_ms: f64,
}

/// Counts of the warm-up, which are not part of the measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WarmupCounts {
    /// Requests due during the warm-up.
    pub sent: u64,
    /// Answered 201.
    pub ok: u64,
    /// Everything else.
    pub errors: u64,
}

/// The result of one run, written as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Region loaded.
    pub region: String,
    /// Its HTTP URL.
    pub http_url: String,
    /// Identifies the run's accounts (`bench-<run_id>-<i>`) and idempotency keys.
    pub run_id: String,
    /// Seed of the pair and amount draws.
    pub seed: u64,
    /// Start of the measured window, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// Target arrival rate, transfers per second.
    pub rate_target: u32,
    /// Measured duration asked for, seconds.
    pub duration_s: u64,
    /// Warm-up, seconds.
    pub warmup_s: u64,
    /// Accounts drawn between.
    pub accounts: u32,
    /// In-flight cap.
    pub concurrency_max: usize,
    /// Requests due in the measured window.
    pub sent: u64,
    /// Of which answered 201.
    pub ok: u64,
    /// All the others.
    pub errors_total: u64,
    /// The others by kind: `http_<status>`, `timeout`, `connect`, `transport`, `concurrency_cap`.
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the window's start to the last measured response, at least `duration_s`.
    pub elapsed_s: f64,
    /// `ok / elapsed_s`: a server that falls behind does not get credit for the window it missed.
    pub throughput_per_s: f64,
    /// Latency of the successful requests, corrected for coordinated omission.
    pub latency_ms: LatencyMs,
    /// The generator's own scheduling delay (already included in `latency_ms`).
    pub send_lag_ms: SendLagMs,
    /// Outbox-to-Kafka lag; absent when the database could not be read (see `warnings`).
    pub outbox_lag_ms: Option<OutboxLagMs>,
    /// The warm-up's counts.
    pub warmup: WarmupCounts,
    /// Per second of the measured window.
    pub per_second: Vec<Second>,
    /// Non-fatal problems.
    pub warnings: Vec<String>,
    /// The command line that reproduces this run.
    pub command: String,
}

/// Offset of request `i` from the start at `rate` per second: exactly `i / rate` seconds, computed
/// from `i` rather than accumulated, so the schedule never drifts.
pub fn intended_offset(i: u64, rate: u32) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Requests of a run: warm-up plus measured window.
pub fn total_requests(rate: u32, warmup_s: u64, duration_s: u64) -> u64 {
    u64::from(rate).saturating_mul(warmup_s.saturating_add(duration_s))
}

/// Whether request `i` is due in the measured window (after the warm-up).
pub fn is_measured(i: u64, rate: u32, warmup_s: u64) -> bool {
    i >= u64::from(rate).saturating_mul(warmup_s)
}

/// Two distinct account indexes below `n` (n ≥ 2), uniformly among ordered pairs.
pub fn pick_pair(rng: &mut impl Rng, n: u32) -> (u32, u32) {
    let from = rng.random_range(0..n);
    let mut to = rng.random_range(0..n - 1);
    if to >= from {
        to += 1;
    }
    (from, to)
}

/// What each account is funded with: enough that no account is overdrawn by the run's random
/// debits, even an unlucky one (four times the expected debits in the worst case of every transfer
/// being `AMOUNT_MAX`, and never less than `FUNDING_MIN`).
pub fn funding_per_account(total_requests: u64, accounts: u32) -> i64 {
    let expected_debits = total_requests.saturating_mul(AMOUNT_MAX as u64) / u64::from(accounts.max(1));
    let bound = expected_debits.saturating_mul(4).saturating_add(100 * AMOUNT_MAX as u64);
    i64::try_from(bound).unwrap_or(i64::MAX).max(FUNDING_MIN)
}

/// `ok` per second over the measured window, stretched to the last measured response when the
/// server finished late.
pub fn throughput(ok: u64, duration: Duration, window_start: Instant, last_done: Option<Instant>) -> (f64, f64) {
    let late = last_done.map(|d| d.saturating_duration_since(window_start)).unwrap_or_default();
    let elapsed = duration.max(late).as_secs_f64();
    if elapsed <= 0.0 { (elapsed, 0.0) } else { (elapsed, ok as f64 / elapsed) }
}

/// The error kind of an HTTP status other than 201.
pub fn status_kind(status: u16) -> String {
    format!("http_{status}")
}

/// A request's outcome: success, or an error kind.
type Outcome = Result<(), String>;

/// What the requests record.
struct Stats {
    latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    warmup: WarmupCounts,
    last_done: Option<Instant>,
    /// Start of the measured window, for `per_second`.
    window_start: Instant,
    per_second: Vec<Second>,
}

impl Stats {
    fn new(window_start: Instant) -> Self {
        let hist = || Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds");
        Self {
            latency_us: hist(),
            send_lag_us: hist(),
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            warmup: WarmupCounts::default(),
            last_done: None,
            window_start,
            per_second: Vec::new(),
        }
    }

    /// Records one request that was due at `intended`, started at `started` (None: never sent)
    /// and finished at `done`.
    fn record(&mut self, measured: bool, intended: Instant, started: Option<Instant>, done: Instant, outcome: Outcome) {
        if !measured {
            self.warmup.sent += 1;
            match outcome {
                Ok(()) => self.warmup.ok += 1,
                Err(_) => self.warmup.errors += 1,
            }
            return;
        }
        self.sent += 1;
        let t = intended.saturating_duration_since(self.window_start).as_secs();
        let index = usize::try_from(t).unwrap_or(usize::MAX);
        if self.per_second.len() <= index && index < 1_000_000 {
            self.per_second.resize_with(index + 1, Second::default);
            for (i, second) in self.per_second.iter_mut().enumerate() {
                second.t = i as u64;
            }
        }
        let second = self.per_second.get_mut(index);
        if let Some(started) = started {
            let lag = started.saturating_duration_since(intended).as_micros();
            self.send_lag_us.saturating_record(u64::try_from(lag).unwrap_or(u64::MAX).max(1));
        }
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let us = done.saturating_duration_since(intended).as_micros();
                self.latency_us.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
                if let Some(second) = second {
                    second.ok += 1;
                    second.max_ms = second.max_ms.max(us as f64 / 1000.0);
                }
            }
            Err(kind) => {
                *self.errors.entry(kind).or_default() += 1;
                if let Some(second) = second {
                    second.errors += 1;
                }
            }
        }
    }
}

/// Everything the report needs besides the counts.
struct RunInfo {
    region: String,
    http_url: String,
    run_id: String,
    seed: u64,
    started_at_unix_s: f64,
    command: String,
}

fn build_report(
    args: &BenchArgs,
    info: RunInfo,
    stats: &Stats,
    window_start: Instant,
    outbox_lag_ms: Option<OutboxLagMs>,
    warnings: Vec<String>,
) -> BenchReport {
    let (elapsed_s, throughput_per_s) =
        throughput(stats.ok, Duration::from_secs(args.duration_s), window_start, stats.last_done);
    let lag = LatencyMs::from_histogram_us(&stats.send_lag_us);
    BenchReport {
        region: info.region,
        http_url: info.http_url,
        run_id: info.run_id,
        seed: info.seed,
        started_at_unix_s: info.started_at_unix_s,
        rate_target: args.rate,
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        accounts: args.accounts,
        concurrency_max: args.concurrency_max,
        sent: stats.sent,
        ok: stats.ok,
        errors_total: stats.errors.values().sum(),
        errors: stats.errors.clone(),
        elapsed_s,
        throughput_per_s,
        latency_ms: LatencyMs::from_histogram_us(&stats.latency_us),
        send_lag_ms: SendLagMs { p50: lag.p50, p99: lag.p99, max: lag.max },
        outbox_lag_ms,
        warmup: stats.warmup.clone(),
        per_second: stats.per_second.clone(),
        warnings,
        command: info.command,
    }
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command line that reproduces a run (the API key is never written).
fn command_line(args: &BenchArgs, manifest: &Path, region: &str, out: &Path, seed: u64) -> String {
    let parts = [
        "ledgerctl bench".to_owned(),
        format!("--manifest {}", shell_quote(&manifest.display().to_string())),
        format!("--region {}", shell_quote(region)),
        format!("--rate {}", args.rate),
        format!("--duration-s {}", args.duration_s),
        format!("--warmup-s {}", args.warmup_s),
        format!("--accounts {}", args.accounts),
        format!("--concurrency-max {}", args.concurrency_max),
        format!("--seed {seed}"),
        format!("--out {}", shell_quote(&out.display().to_string())),
    ];
    let mut line = parts.join(" ");
    if args.baseline {
        let clients: Vec<String> = args.clients.iter().map(u32::to_string).collect();
        line.push_str(&format!(
            " --baseline --clients {} --closed-s {} --closed-warmup-s {} --baseline-connections {}",
            clients.join(","),
            args.closed_s,
            args.closed_warmup_s,
            args.baseline_connections
        ));
    }
    line
}

fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Args(m.to_owned()));
    if args.rate == 0 {
        return bad("--rate must be at least 1");
    }
    if args.duration_s == 0 {
        return bad("--duration-s must be at least 1");
    }
    if args.accounts < 2 {
        return bad("--accounts must be at least 2 (transfers go between distinct accounts)");
    }
    if args.concurrency_max == 0 {
        return bad("--concurrency-max must be at least 1");
    }
    if args.baseline {
        if args.clients.is_empty() || args.clients.iter().any(|&c| c == 0 || c > CLIENTS_MAX) {
            return Err(BenchError::Args(format!("--clients must list counts between 1 and {CLIENTS_MAX}")));
        }
        if args.closed_s == 0 {
            return bad("--closed-s must be at least 1");
        }
        if args.baseline_connections == 0 || args.baseline_connections > BASELINE_CONNECTIONS_MAX {
            return Err(BenchError::Args(format!(
                "--baseline-connections must be between 1 and {BASELINE_CONNECTIONS_MAX}"
            )));
        }
    }
    Ok(())
}

/// What every phase of a run shares: the clients and the accounts.
pub(crate) struct Shared {
    /// One attempt per request: the bench counts failures itself, it does not retry them.
    pub(crate) client: ledger_client::Client,
    /// With retries (the same key each time), for opening and funding the accounts.
    pub(crate) setup: ledger_client::Client,
    /// For `GET /healthz`.
    pub(crate) http: reqwest::Client,
    /// The region's base URL.
    pub(crate) base: String,
    pub(crate) accounts: Vec<String>,
    pub(crate) run_id: String,
}

/// Where one request of the load goes.
#[derive(Clone)]
pub(crate) enum Target {
    /// `POST /v1/transfers` on the region, through `ledger-client`.
    Node,
    /// The plain PostgreSQL ledger of `ledgerctl/sql/baseline.sql`.
    Baseline(crate::baseline::Baseline, crate::baseline::Driver),
    /// `GET /healthz` on the region: an HTTP round trip that does no work, this machine's floor.
    Healthz,
}

impl Target {
    /// Sends one request; `Err` holds the error kind.
    async fn send(&self, shared: &Shared, key: String, from: u32, to: u32, amount: i64) -> Outcome {
        let (from, to) = (&shared.accounts[from as usize], &shared.accounts[to as usize]);
        match self {
            Target::Node => {
                let transfer = ledger_client::NewTransfer {
                    from: from.clone(),
                    to: to.clone(),
                    amount,
                    currency: Some(CURRENCY.to_owned()),
                    idempotency_key: Some(key),
                    ..Default::default()
                };
                // The client reads the whole answer: the latency is to the complete response, and
                // the connection goes back to the pool only once drained.
                match shared.client.transfer(transfer).await {
                    Ok(a) if !a.replayed => Ok(()),
                    Ok(_) => Err("replayed".to_owned()),
                    Err(ledger_client::Error::Problem { status, .. }) => Err(status_kind(status)),
                    Err(ledger_client::Error::Unavailable { kind, .. }) => Err(kind),
                    Err(e) => Err(format!("client: {e}")),
                }
            }
            Target::Baseline(ledger, driver) => {
                match ledger.transfer(*driver, &key, from, to, amount, CURRENCY).await {
                    Ok(crate::baseline::Outcome::Applied) => Ok(()),
                    Ok(crate::baseline::Outcome::Replayed) => Err("replayed".to_owned()),
                    Ok(crate::baseline::Outcome::Refused(why)) => Err(why),
                    Err(e) => Err(match e.as_database_error().and_then(|d| d.code()) {
                        Some(code) => format!("db_{code}"),
                        None => "db".to_owned(),
                    }),
                }
            }
            Target::Healthz => {
                let answer = shared.http.get(format!("{}/healthz", shared.base)).send().await;
                match answer {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(_) if status == 200 => Ok(()),
                            Ok(_) => Err(status_kind(status)),
                            Err(_) => Err("transport".to_owned()),
                        }
                    }
                    Err(e) if e.is_timeout() => Err("timeout".to_owned()),
                    Err(e) if e.is_connect() => Err("connect".to_owned()),
                    Err(_) => Err("transport".to_owned()),
                }
            }
        }
    }
}

/// One phase's load: where it goes, and what it records.
struct Ctx {
    shared: Arc<Shared>,
    target: Target,
    /// Distinguishes the idempotency keys of the phases of one run.
    phase: String,
    stats: Mutex<Stats>,
    in_flight: AtomicUsize,
    /// Set when the phase returns or is dropped (e.g. on Ctrl-C): the scheduler sends nothing more.
    stop: AtomicBool,
}

/// Stops the scheduler when dropped, however `run` ends.
struct StopOnDrop(Arc<Ctx>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

impl Ctx {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // A panicked recorder leaves counts that are still counts.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request of the load, from its intended start to its recorded outcome.
struct Due {
    i: u64,
    from: u32,
    to: u32,
    amount: i64,
    intended: Instant,
    measured: bool,
}

async fn send_one(ctx: Arc<Ctx>, due: Due, _running: tokio::sync::mpsc::Sender<()>) {
    let started = Instant::now();
    let key = format!("bench-{}-{}{}", ctx.shared.run_id, ctx.phase, due.i);
    let outcome = ctx.target.send(&ctx.shared, key, due.from, due.to, due.amount).await;
    let done = Instant::now();
    ctx.stats().record(due.measured, due.intended, Some(started), done, outcome);
    ctx.in_flight.fetch_sub(1, Ordering::AcqRel);
}

/// The scheduler thread: draws each request, sleeps until it is due (or sends it at once when
/// late) and spawns it on the runtime, or counts it as an error beyond the in-flight cap.
fn schedule(
    ctx: Arc<Ctx>,
    runtime: tokio::runtime::Handle,
    args: BenchArgs,
    seed: u64,
    t0: Instant,
    running: tokio::sync::mpsc::Sender<()>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let total = total_requests(args.rate, args.warmup_s, args.duration_s);
    for i in 0..total {
        if ctx.stop.load(Ordering::Acquire) {
            return;
        }
        let (from, to) = pick_pair(&mut rng, args.accounts);
        let amount = rng.random_range(1..=AMOUNT_MAX);
        let intended = t0 + intended_offset(i, args.rate);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let measured = is_measured(i, args.rate, args.warmup_s);
        // Only this thread adds, so the check and the add cannot race past the cap.
        if ctx.in_flight.load(Ordering::Acquire) >= args.concurrency_max {
            ctx.stats().record(measured, intended, None, Instant::now(), Err("concurrency_cap".to_owned()));
            continue;
        }
        ctx.in_flight.fetch_add(1, Ordering::AcqRel);
        let due = Due { i, from, to, amount, intended, measured };
        runtime.spawn(send_one(ctx.clone(), due, running.clone()));
    }
}

/// Opens the funding account and the benchmark accounts, then funds each of them, through the
/// client: a funding transfer retried after a cut connection replays instead of paying twice.
async fn set_up(ctx: &Arc<Shared>, world: &str, funding: i64) -> Result<(), BenchError> {
    let setup = |what: String| move |e: ledger_client::Error| BenchError::Setup(format!("{what}: {e}"));
    ctx.setup.open_account(world, CURRENCY, true).await.map_err(setup(format!("opening {world}")))?;
    // Phase 0 opens the accounts, phase 1 funds them, each with bounded concurrency.
    for phase in 0..2 {
        let permits = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..ctx.accounts.len() {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (ctx, world) = (ctx.clone(), world.to_owned());
            tasks.spawn(async move {
                let _permit = permit;
                let account = &ctx.accounts[i];
                if phase == 0 {
                    ctx.setup
                        .open_account(account, CURRENCY, false)
                        .await
                        .map(|_| ())
                        .map_err(setup(format!("opening {account}")))
                } else {
                    let t = ledger_client::NewTransfer {
                        from: world,
                        to: account.clone(),
                        amount: funding,
                        currency: Some(CURRENCY.to_owned()),
                        idempotency_key: Some(format!("bench-{}-fund-{i}", ctx.run_id)),
                        ..Default::default()
                    };
                    ctx.setup.transfer(t).await.map(|_| ()).map_err(setup(format!("funding {account}")))
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| BenchError::Setup(format!("a setup task failed: {e}")))??;
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch of an `Instant`, given one pair of readings of both clocks.
fn unix_seconds(at: Instant, anchor: (Instant, SystemTime)) -> f64 {
    let (instant, system) = anchor;
    let base = system.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    if at >= instant { base + (at - instant).as_secs_f64() } else { base - (instant - at).as_secs_f64() }
}

/// Waits (up to `OUTBOX_WAIT`) for the window's outbox rows to be published, then reads the lag.
async fn outbox_lag(postgres_url: &str, from_unix_s: f64, to_unix_s: f64) -> Result<OutboxLagMs, sqlx::Error> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(postgres_url).await?;
    let waited_until = Instant::now() + OUTBOX_WAIT;
    let (rows, unpublished) = loop {
        let row = sqlx::query(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE published_at IS NULL) AS unpublished FROM outbox
             WHERE created_at >= to_timestamp($1) AND created_at < to_timestamp($2)",
        )
        .bind(from_unix_s)
        .bind(to_unix_s)
        .fetch_one(&mut conn)
        .await?;
        let (rows, unpublished): (i64, i64) = (row.try_get("rows")?, row.try_get("unpublished")?);
        if unpublished == 0 || Instant::now() >= waited_until {
            break (rows, unpublished);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let row = sqlx::query(
        "SELECT percentile_cont(ARRAY[0.5, 0.99]::float8[])
                    WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at)::float8) AS p,
                max(extract(epoch FROM published_at - created_at))::float8 AS max
         FROM outbox
         WHERE created_at >= to_timestamp($1) AND created_at < to_timestamp($2) AND published_at IS NOT NULL",
    )
    .bind(from_unix_s)
    .bind(to_unix_s)
    .fetch_one(&mut conn)
    .await?;
    let p: Option<Vec<f64>> = row.try_get("p")?;
    let max: Option<f64> = row.try_get("max")?;
    let _ = conn.close().await;
    let p = p.unwrap_or_default();
    let ms = |s: Option<&f64>| s.copied().unwrap_or(0.0) * 1000.0;
    Ok(OutboxLagMs {
        rows: u64::try_from(rows).unwrap_or(0),
        unpublished: u64::try_from(unpublished).unwrap_or(0),
        p50: ms(p.first()),
        p99: ms(p.get(1)),
        max: ms(max.as_ref()),
    })
}

/// Everything the phases of a run share, once the accounts are open and funded.
pub(crate) struct Prepared {
    pub(crate) manifest_path: PathBuf,
    pub(crate) region: crate::manifest::RegionEntry,
    pub(crate) out: PathBuf,
    pub(crate) seed: u64,
    pub(crate) shared: Arc<Shared>,
    /// What each account was funded with.
    pub(crate) funding: i64,
}

/// Reads the manifest, builds the clients, and opens and funds the node's accounts for `total`
/// transfers.
pub(crate) async fn prepare(args: &BenchArgs, default_out: &str, total: u64) -> Result<Prepared, BenchError> {
    validate(args)?;
    let manifest_path = args.manifest.clone().unwrap_or_else(|| repo_root().join(".devstack").join("env.json"));
    let manifest = Manifest::load(&manifest_path)?.ok_or_else(|| BenchError::NoManifest(manifest_path.clone()))?;
    let region = match &args.region {
        Some(name) => manifest.region(name),
        None => manifest.regions.first(),
    }
    .ok_or_else(|| BenchError::NoRegion {
        region: args.region.clone().unwrap_or_else(|| "(first)".into()),
        manifest: manifest_path.clone(),
        known: manifest.regions.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
    })?
    .clone();
    let api_key = manifest
        .api_key
        .clone()
        .or_else(|| args.api_key.clone())
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| BenchError::NoApiKey(manifest_path.clone()))?;
    let out = args.out.clone().unwrap_or_else(|| manifest_path.parent().unwrap_or(Path::new(".")).join(default_out));
    let seed = args.seed.unwrap_or_else(rand::random);
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let base = region.http_url.trim_end_matches('/').to_owned();
    eprintln!(
        "bench: region {} at {base}, {} transfers/s for {} s after {} s warm-up, {} accounts, run {run_id}, seed {seed}",
        region.name, args.rate, args.duration_s, args.warmup_s, args.accounts
    );

    let http = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency_max)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(BenchError::Client)?;
    let once = ledger_client::ClientConfig {
        attempts_max: 1,
        attempt_timeout: REQUEST_TIMEOUT,
        carry_session: false,
        ..ledger_client::ClientConfig::new(vec![base.clone()], api_key.trim())
    };
    let client =
        ledger_client::Client::with_http(once.clone(), http.clone()).map_err(|e| BenchError::Setup(e.to_string()))?;
    let setup = ledger_client::Client::new(ledger_client::ClientConfig { attempts_max: 8, ..once })
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let shared = Arc::new(Shared {
        client,
        setup,
        http,
        base,
        accounts: (0..args.accounts).map(|i| format!("bench-{run_id}-{i}")).collect(),
        run_id,
    });

    let funding = funding_per_account(total, args.accounts);
    let world = format!("bench-world-{}", shared.run_id);
    let setup_started = Instant::now();
    set_up(&shared, &world, funding).await?;
    eprintln!(
        "bench: opened and funded {} accounts with {funding} each in {:.1} s",
        args.accounts,
        setup_started.elapsed().as_secs_f64()
    );
    Ok(Prepared { manifest_path, region, out, seed, shared, funding })
}

/// One open-loop phase, as recorded.
pub(crate) struct OpenLoop {
    stats: Stats,
    window_start: Instant,
    /// The measured window, seconds since the Unix epoch.
    pub(crate) from_unix_s: f64,
    pub(crate) to_unix_s: f64,
}

/// Sends `args.rate` requests per second to `target` for the warm-up and the window, on the
/// schedule drawn from `seed` (the same pairs and amounts for every target given the same seed).
pub(crate) async fn open_loop(
    shared: &Arc<Shared>,
    target: Target,
    phase: &str,
    args: &BenchArgs,
    seed: u64,
) -> Result<OpenLoop, BenchError> {
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        target,
        phase: phase.to_owned(),
        stats: Mutex::new(Stats::new(Instant::now())),
        in_flight: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let _stop = StopOnDrop(ctx.clone());
    // A short lead so the first requests are not already late.
    let t0 = Instant::now() + Duration::from_millis(50);
    let anchor = (Instant::now(), SystemTime::now());
    let window_start = t0 + Duration::from_secs(args.warmup_s);
    let window_end = window_start + Duration::from_secs(args.duration_s);
    ctx.stats().window_start = window_start;

    let finished = Arc::new(AtomicBool::new(false));
    let progress = {
        let (ctx, finished) = (ctx.clone(), finished.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            while !finished.load(Ordering::Acquire) {
                tick.tick().await;
                let in_flight = ctx.in_flight.load(Ordering::Acquire);
                let s = ctx.stats();
                let errors: u64 = s.errors.values().sum::<u64>() + s.warmup.errors;
                eprintln!(
                    "bench: {}t={:>4.0} s  measured sent {} ok {}  errors {errors}  in flight {in_flight}",
                    ctx.phase,
                    t0.elapsed().as_secs_f64(),
                    s.sent,
                    s.ok
                );
            }
        })
    };

    let (running_tx, mut running_rx) = tokio::sync::mpsc::channel::<()>(1);
    let scheduler = {
        let (ctx, runtime, args) = (ctx.clone(), tokio::runtime::Handle::current(), args.clone());
        std::thread::Builder::new()
            .name("bench-scheduler".into())
            .spawn(move || schedule(ctx, runtime, args, seed, t0, running_tx))
            .map_err(|e| BenchError::Scheduler(e.to_string()))?
    };
    // Every request task holds a sender, as does the scheduler: `None` means all are done.
    while running_rx.recv().await.is_some() {}
    finished.store(true, Ordering::Release);
    progress.abort();
    scheduler.join().map_err(|_| BenchError::Scheduler("the scheduler thread panicked".into()))?;
    let stats = std::mem::replace(&mut *ctx.stats(), Stats::new(window_start));
    Ok(OpenLoop {
        stats,
        window_start,
        from_unix_s: unix_seconds(window_start, anchor),
        to_unix_s: unix_seconds(window_end, anchor),
    })
}

/// The outbox lag of a window, or `None` with a warning saying why.
pub(crate) async fn outbox_lag_or_warn(
    postgres_url: &str,
    from_unix_s: f64,
    to_unix_s: f64,
    warnings: &mut Vec<String>,
) -> Option<OutboxLagMs> {
    match outbox_lag(postgres_url, from_unix_s, to_unix_s).await {
        Ok(lag) => {
            if lag.unpublished > 0 {
                warnings.push(format!(
                    "{} of {} outbox rows were still unpublished after {} s",
                    lag.unpublished,
                    lag.rows,
                    OUTBOX_WAIT.as_secs()
                ));
            }
            Some(lag)
        }
        Err(e) => {
            warnings.push(format!("outbox lag not measured: {postgres_url}: {e}"));
            None
        }
    }
}

/// Writes `value` as pretty JSON to `out`, creating its folder.
pub(crate) fn write_json(out: &Path, value: &impl Serialize) -> Result<(), BenchError> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| BenchError::Io { path: parent.to_path_buf(), source })?;
    }
    let text = serde_json::to_string_pretty(value).expect("a report always serializes");
    std::fs::write(out, text + "\n").map_err(|source| BenchError::Io { path: out.to_path_buf(), source })?;
    eprintln!("bench: result written to {}", out.display());
    Ok(())
}

/// Runs the benchmark described by `args` and writes its report to `--out`.
pub async fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let total = total_requests(args.rate, args.warmup_s, args.duration_s);
    let p = prepare(args, &format!("bench-{}.json", args.rate), total).await?;
    let command = command_line(args, &p.manifest_path, &p.region.name, &p.out, p.seed);
    let phase = open_loop(&p.shared, Target::Node, "", args, p.seed).await?;
    let mut warnings = Vec::new();
    let outbox = outbox_lag_or_warn(&p.region.postgres_url, phase.from_unix_s, phase.to_unix_s, &mut warnings).await;
    let info = RunInfo {
        region: p.region.name.clone(),
        http_url: p.shared.base.clone(),
        run_id: p.shared.run_id.clone(),
        seed: p.seed,
        started_at_unix_s: phase.from_unix_s,
        command,
    };
    let report = build_report(args, info, &phase.stats, phase.window_start, outbox, warnings);
    write_json(&p.out, &report)?;
    Ok(report)
}

/// Prints a human summary of `report` to stdout.
pub fn print(report: &BenchReport) {
    let l = &report.latency_ms;
    println!(
        "region {}  target {}/s for {} s (+{} s warm-up), {} accounts, seed {}",
        report.region, report.rate_target, report.duration_s, report.warmup_s, report.accounts, report.seed
    );
    println!(
        "sent {}  ok {}  errors {}  throughput {:.1}/s over {:.1} s",
        report.sent, report.ok, report.errors_total, report.throughput_per_s, report.elapsed_s
    );
    for (kind, n) in &report.errors {
        println!("  error {kind}: {n}");
    }
    println!(
        "latency ms (from intended start)  p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p95, l.p99, l.p999, l.max, l.mean
    );
    let s = &report.send_lag_ms;
    println!("generator send lag ms  p50 {:.3}  p99 {:.3}  max {:.3}", s.p50, s.p99, s.max);
    match &report.outbox_lag_ms {
        Some(o) => println!(
            "outbox→kafka lag ms  p50 {:.1}  p99 {:.1}  max {:.1}  ({} rows, {} unpublished)",
            o.p50, o.p99, o.max, o.rows, o.unpublished
        ),
        None => println!("outbox→kafka lag: not measured"),
    }
    let mut worst: Vec<&Second> = report.per_second.iter().filter(|s| s.ok + s.errors > 0).collect();
    worst.sort_by(|a, b| b.max_ms.total_cmp(&a.max_ms));
    if !worst.is_empty() {
        let list: Vec<String> = worst.iter().take(3).map(|s| format!("t={} s max {:.1} ms", s.t, s.max_ms)).collect();
        println!("slowest seconds: {}", list.join(", "));
    }
    if report.warmup.errors > 0 {
        println!("warm-up: {} of {} requests failed", report.warmup.errors, report.warmup.sent);
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!("reproduce: {}", report.command);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn the_schedule_is_exact_and_does_not_drift() {
        assert_eq!(intended_offset(0, 1000), Duration::ZERO);
        assert_eq!(intended_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(intended_offset(1000, 1000), Duration::from_secs(1));
        assert_eq!(intended_offset(1, 5000), Duration::from_micros(200));
        // A rate that does not divide a second: each offset is floor(i / rate), never accumulated.
        assert_eq!(intended_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(intended_offset(2, 3), Duration::from_nanos(666_666_666));
        assert_eq!(intended_offset(3_000_000, 3), Duration::from_secs(1_000_000));
        let mut previous = Duration::ZERO;
        for i in 1..10_000 {
            let d = intended_offset(i, 7919);
            assert!(d > previous, "offsets strictly increase");
            previous = d;
        }
    }

    #[test]
    fn the_warm_up_is_sent_but_not_measured() {
        assert_eq!(total_requests(1000, 5, 30), 35_000);
        assert!(!is_measured(0, 1000, 5));
        assert!(!is_measured(4_999, 1000, 5));
        assert!(is_measured(5_000, 1000, 5));
        assert!(is_measured(0, 1000, 0));
        // The first measured request is due exactly at the end of the warm-up.
        assert_eq!(intended_offset(5_000, 1000), Duration::from_secs(5));
    }

    #[test]
    fn pairs_are_distinct_uniform_and_reproducible() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = [[0u32; 3]; 3];
        for _ in 0..6_000 {
            let (from, to) = pick_pair(&mut rng, 3);
            assert_ne!(from, to);
            assert!(from < 3 && to < 3);
            seen[from as usize][to as usize] += 1;
        }
        for (from, row) in seen.iter().enumerate() {
            for (to, &n) in row.iter().enumerate() {
                if from != to {
                    assert!((800..1200).contains(&n), "pair {from}->{to} drawn {n} times of ~1000");
                }
            }
        }
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..100).map(|_| pick_pair(&mut rng, 1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let (from, to) = pick_pair(&mut rng, 2);
            assert_eq!(from + to, 1, "with two accounts, always 0 and 1");
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_US, 3).unwrap();
        for ms in 1..=1000u64 {
            h.record(ms * 1000).unwrap();
        }
        let l = LatencyMs::from_histogram_us(&h);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert_eq!(l.count, 1000);
        assert!(close(l.p50, 500.0), "p50 {}", l.p50);
        assert!(close(l.p95, 950.0), "p95 {}", l.p95);
        assert!(close(l.p99, 990.0), "p99 {}", l.p99);
        assert!(close(l.p999, 999.0), "p99.9 {}", l.p999);
        assert!(close(l.max, 1000.0), "max {}", l.max);
        assert!(close(l.mean, 500.5), "mean {}", l.mean);
        let empty = Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_US, 3).unwrap();
        assert_eq!(LatencyMs::from_histogram_us(&empty), LatencyMs::default());
    }

    #[test]
    fn latency_runs_from_the_intended_start_and_errors_are_counted_by_kind() {
        let t0 = Instant::now();
        let mut s = Stats::new(t0);
        // Due at t0, sent 3 ms late (a stalled generator or server), answered 1 ms after sending.
        s.record(true, t0, Some(t0 + Duration::from_millis(3)), t0 + Duration::from_millis(4), Ok(()));
        s.record(true, t0, Some(t0), t0 + Duration::from_millis(1), Err(status_kind(503)));
        s.record(true, t0, Some(t0), t0 + Duration::from_millis(1), Err(status_kind(503)));
        s.record(true, t0, None, t0, Err("concurrency_cap".into()));
        s.record(false, t0, Some(t0), t0 + Duration::from_millis(1), Ok(()));
        s.record(false, t0, Some(t0), t0 + Duration::from_millis(1), Err("timeout".into()));
        assert_eq!((s.sent, s.ok), (4, 1));
        assert_eq!(s.errors.get("http_503"), Some(&2));
        assert_eq!(s.errors.get("concurrency_cap"), Some(&1));
        assert_eq!(s.warmup, WarmupCounts { sent: 2, ok: 1, errors: 1 });
        assert_eq!(s.latency_us.len(), 1, "only successes have a latency");
        assert!((3_995..=4_005).contains(&s.latency_us.max()), "4 ms from the intended start, not 1 ms");
        assert!((2_995..=3_005).contains(&s.send_lag_us.max()));
        // A success due two seconds into the window lands in the third second.
        let t2 = t0 + Duration::from_millis(2_500);
        s.record(true, t2, Some(t2), t2 + Duration::from_millis(7), Ok(()));
        assert_eq!(
            s.per_second.iter().map(|x| (x.t, x.ok, x.errors)).collect::<Vec<_>>(),
            [(0, 1, 3), (1, 0, 0), (2, 1, 0)]
        );
        assert!((s.per_second[2].max_ms - 7.0).abs() < 0.01);

        let args = BenchArgs { duration_s: 1, ..BenchArgs::default() };
        let info = RunInfo {
            region: "r".into(),
            http_url: "http://x".into(),
            run_id: "id".into(),
            seed: 9,
            started_at_unix_s: 0.0,
            command: "c".into(),
        };
        let report = build_report(&args, info, &s, t0, None, vec![]);
        assert_eq!(report.errors_total, 3);
        assert_eq!((report.sent, report.ok), (5, 2));
        assert!((report.latency_ms.p99 - 7.0).abs() < 0.01, "{}", report.latency_ms.p99);
        assert!((report.latency_ms.p50 - 4.0).abs() < 0.01, "{}", report.latency_ms.p50);
        // The last success finished 2.507 s after the start: the 1 s window is stretched to it.
        assert!((report.elapsed_s - 2.507).abs() < 0.01, "{}", report.elapsed_s);
        assert!((report.throughput_per_s - 2.0 / report.elapsed_s).abs() < 1e-9);
        let json = serde_json::to_value(&report).unwrap();
        for field in ["rate_target", "duration_s", "sent", "ok", "errors", "throughput_per_s", "command"] {
            assert!(json.get(field).is_some(), "{field} in the JSON");
        }
        for field in ["p50", "p95", "p99", "p999", "max", "mean"] {
            assert!(json["latency_ms"].get(field).is_some(), "latency_ms.{field} in the JSON");
        }
        assert_eq!(json["errors"]["http_503"], 2);
    }

    #[test]
    fn a_server_that_finishes_late_gets_no_credit_for_the_window_it_missed() {
        let start = Instant::now();
        let (elapsed, rate) = throughput(30_000, Duration::from_secs(30), start, Some(start + Duration::from_secs(29)));
        assert_eq!(elapsed, 30.0);
        assert_eq!(rate, 1000.0);
        let (elapsed, rate) = throughput(30_000, Duration::from_secs(30), start, Some(start + Duration::from_secs(60)));
        assert_eq!(elapsed, 60.0);
        assert_eq!(rate, 500.0);
        assert_eq!(throughput(0, Duration::from_secs(30), start, None), (30.0, 0.0));
    }

    #[test]
    fn funding_covers_the_runs_debits() {
        assert_eq!(funding_per_account(35_000, 1000), FUNDING_MIN);
        // 10 million transfers between 10 accounts: ~100 M of debits each, funding is 4 times that.
        let big = funding_per_account(10_000_000, 10);
        assert!(big >= 4 * 10_000_000 * AMOUNT_MAX / 10, "{big}");
        assert_eq!(funding_per_account(u64::MAX, 2), i64::MAX);
    }

    #[test]
    fn the_flags_defaults_match_default_and_the_command_reproduces_the_run() {
        let parsed = Cli::try_parse_from(["bench"]).unwrap().bench;
        let d = BenchArgs::default();
        assert_eq!(
            (parsed.rate, parsed.duration_s, parsed.warmup_s, parsed.accounts, parsed.concurrency_max),
            (d.rate, d.duration_s, d.warmup_s, d.accounts, d.concurrency_max)
        );
        assert_eq!((parsed.region, parsed.out, parsed.manifest, parsed.seed), (None, None, None, None));

        let args = BenchArgs { rate: 5000, duration_s: 10, ..BenchArgs::default() };
        let command = command_line(&args, Path::new("/tmp/my stack/env.json"), "us-east", Path::new("/tmp/o.json"), 77);
        assert!(command.contains("--manifest '/tmp/my stack/env.json'"), "{command}");
        let words = command.replace("'/tmp/my stack/env.json'", "/tmp/my_stack/env.json");
        let again = Cli::try_parse_from(words.split_whitespace().skip(1)).unwrap().bench;
        assert_eq!(again.rate, 5000);
        assert_eq!(again.duration_s, 10);
        assert_eq!(again.seed, Some(77));
        assert_eq!(again.region.as_deref(), Some("us-east"));
        assert_eq!(again.out, Some(PathBuf::from("/tmp/o.json")));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn impossible_options_are_refused() {
        assert!(validate(&BenchArgs::default()).is_ok());
        let widest = BenchArgs {
            baseline: true,
            clients: vec![1, CLIENTS_MAX],
            baseline_connections: BASELINE_CONNECTIONS_MAX,
            ..BenchArgs::default()
        };
        assert!(validate(&widest).is_ok(), "the limits themselves are allowed");
        for bad in [
            BenchArgs { rate: 0, ..BenchArgs::default() },
            BenchArgs { duration_s: 0, ..BenchArgs::default() },
            BenchArgs { accounts: 1, ..BenchArgs::default() },
            BenchArgs { concurrency_max: 0, ..BenchArgs::default() },
            BenchArgs { baseline: true, clients: vec![], ..BenchArgs::default() },
            BenchArgs { baseline: true, clients: vec![1, 0], ..BenchArgs::default() },
            BenchArgs { baseline: true, clients: vec![CLIENTS_MAX + 1], ..BenchArgs::default() },
            BenchArgs { baseline: true, closed_s: 0, ..BenchArgs::default() },
            BenchArgs { baseline: true, baseline_connections: 0, ..BenchArgs::default() },
            BenchArgs { baseline: true, baseline_connections: BASELINE_CONNECTIONS_MAX + 1, ..BenchArgs::default() },
        ] {
            assert!(matches!(validate(&bad), Err(BenchError::Args(_))), "{bad:?}");
        }
    }
}
