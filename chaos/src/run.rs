//! `chaos run`: opens a run's accounts, drives transfers in every region while the nemeses strike
//! on their seeded schedule, heals everything, waits for the regions to agree, and hands the
//! history and what the regions hold to the checker.
//!
//! The workload is Jepsen's bank: per currency, a mint that may go negative funds customers that
//! may not, and transfers move money between customers at random. Each region has its own
//! clients, and a client never fails over: every key lives in one region, retried there with the
//! same key, so "exactly once" is the ledger's promise to check rather than a conflict to expect.

use crate::history::{AccountDef, FaultWindow, History, Op, Outcome};
use crate::nemesis::{self, Injector, Nemesis, Planned};
use ledger_client::{Client, ClientConfig, NewTransfer};
use ledgerctl::Manifest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `chaos run`'s settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A Terraform environment whose `terraform output -json` describes the stack.
    #[arg(long, conflicts_with = "manifest")]
    pub terraform_dir: Option<PathBuf>,
    /// Or the stack's env.json.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// How long the load and the faults last.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Seed of the fault schedule and the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Comma-separated nemeses, or `all`.
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// Concurrent clients per region (closed loop).
    #[arg(long, default_value_t = 4)]
    pub clients_per_region: usize,
    /// Customer accounts per currency.
    #[arg(long, default_value_t = 8)]
    pub customers: usize,
    /// What each customer is funded with, in minor units.
    #[arg(long, default_value_t = 20_000)]
    pub funding: i64,
    /// A transfer moves 1 to this many minor units (larger ones are refused more often).
    #[arg(long, default_value_t = 6_000)]
    pub amount_max: i64,
    /// How long to wait for the regions to agree after healing.
    #[arg(long, default_value_t = 180)]
    pub converge_timeout_s: u64,
    /// Where reports go (one folder per run).
    #[arg(long, default_value = "chaos/reports")]
    pub reports_dir: PathBuf,
}

/// Currencies of the workload: two, so a mix-up between them shows as broken conservation.
const CURRENCIES: [&str; 2] = ["USD", "EUR"];
/// A client's pause between two operations, so faults and healthy periods both see traffic
/// without saturating two cores.
const THINK_MS: u64 = 15;
/// How long setup may take to see every account funded in every region.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a run could not be carried out (a verdict is not an error: violations are in it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The environment could not be read.
    #[error(transparent)]
    Env(#[from] crate::env::EnvError),
    /// Setting up the run's accounts failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A fault could not be injected or healed.
    #[error("nemesis: {0}")]
    Nemesis(#[from] nemesis::NemesisError),
    /// The regions could not be read.
    #[error(transparent)]
    Observe(#[from] crate::observe::ObserveError),
    /// The report could not be written.
    #[error("writing the report: {0}")]
    Report(#[from] std::io::Error),
}

/// What a run produced.
pub struct RunOutcome {
    /// The folder with the history, the observations, the verdict and the HTML page.
    pub report_dir: PathBuf,
    /// The checker's verdict.
    pub verdict: crate::checker::Verdict,
    /// How long the regions took to agree after healing (`None`: not within the timeout).
    pub converged_after: Option<Duration>,
}

struct Load {
    run: String,
    started: Instant,
    next_index: AtomicU64,
    stop: AtomicBool,
    ops: Mutex<Vec<Op>>,
    customers: Vec<Vec<String>>,
    amount_max: i64,
}

impl Load {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// Sends one transfer with its key and records it, however it ends; returns how it ended.
    #[allow(clippy::too_many_arguments)]
    async fn transfer(
        &self,
        client: &Client,
        region: &str,
        index: u64,
        key: String,
        from: String,
        to: String,
        amount: i64,
        currency: &str,
    ) -> Outcome {
        let invoke_ms = self.now_ms();
        let result = client
            .transfer(NewTransfer {
                from: from.clone(),
                to: to.clone(),
                amount,
                currency: Some(currency.into()),
                idempotency_key: Some(key.clone()),
                ..Default::default()
            })
            .await;
        let outcome = outcome_of(result);
        self.record(Op {
            index,
            region: region.to_owned(),
            key,
            from,
            to,
            amount,
            currency: currency.into(),
            invoke_ms,
            complete_ms: self.now_ms(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

fn outcome_of(result: Result<ledger_client::Answered<ledger_client::Transfer>, ledger_client::Error>) -> Outcome {
    match result {
        Ok(a) => match a.value.id.parse() {
            Ok(transfer_id) => Outcome::Ok { transfer_id },
            Err(_) => Outcome::Indeterminate { error: format!("acknowledged with an unreadable id {}", a.value.id) },
        },
        // A 4xx is the ledger's answer: nothing was committed. A 5xx that outlived the retries
        // says nothing about whether an earlier attempt committed.
        Err(ledger_client::Error::Problem { status, kind, .. }) if status < 500 => {
            Outcome::Fail { status, problem_type: kind }
        }
        Err(e) => Outcome::Indeterminate { error: e.to_string() },
    }
}

async fn client_loop(load: Arc<Load>, client: Arc<Client>, region: String, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !load.stop.load(Ordering::Relaxed) {
        let index = load.next_index.fetch_add(1, Ordering::Relaxed);
        let c = rng.random_range(0..CURRENCIES.len());
        let customers = &load.customers[c];
        let from = rng.random_range(0..customers.len());
        let mut to = rng.random_range(0..customers.len() - 1);
        if to >= from {
            to += 1;
        }
        let amount = rng.random_range(1..=load.amount_max);
        let key = format!("{}-op-{index}", load.run);
        let (from, to) = (customers[from].clone(), customers[to].clone());
        load.transfer(&client, &region, index, key, from, to, amount, CURRENCIES[c]).await;
        tokio::time::sleep(Duration::from_millis(THINK_MS)).await;
    }
}

fn client_for(url: &str, api_key: &str) -> Result<Client, RunError> {
    let mut cfg = ClientConfig::new(vec![url.to_owned()], api_key);
    // Sessions would make a client wait for its own region's past; each key is independent here.
    cfg.carry_session = false;
    // Long enough to ride out a restart (a region loss takes ~15 s to come back), so most
    // operations end acknowledged or refused rather than indeterminate.
    cfg.attempts_max = 12;
    cfg.backoff_max = Duration::from_secs(3);
    Client::new(cfg).map_err(|e| RunError::Setup(e.to_string()))
}

/// Runs the whole thing.
pub async fn run(args: &RunArgs) -> Result<RunOutcome, RunError> {
    let nemeses = Nemesis::parse_list(&args.nemesis).map_err(RunError::Usage)?;
    if args.customers < 2 || args.clients_per_region == 0 || args.amount_max < 1 || args.funding < 1 {
        return Err(RunError::Usage("at least 2 customers, 1 client per region, positive amounts".into()));
    }
    let manifest: Manifest = match (&args.terraform_dir, &args.manifest) {
        (Some(dir), _) => crate::env::from_terraform(dir)?,
        (None, Some(path)) => crate::env::from_file(path)?,
        (None, None) => crate::env::from_file(&ledgerctl::config::repo_root().join(".devstack").join("env.json"))?,
    };
    if manifest.regions.len() < 2 {
        return Err(RunError::Usage("a chaos run needs at least two regions".into()));
    }
    if nemeses.iter().any(|n| n.is_network()) && manifest.toxiproxy_url.is_none() {
        return Err(nemesis::NemesisError::NoToxiproxy.into());
    }
    let api_key = manifest.api_key.clone().ok_or_else(|| RunError::Setup("the environment has no API key".into()))?;
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let run = format!("run-{}-s{}", started_unix_ms / 1000, args.seed);
    let region_names: Vec<String> = manifest.regions.iter().map(|r| r.name.clone()).collect();
    let clients: Vec<Arc<Client>> =
        manifest.regions.iter().map(|r| client_for(&r.http_url, &api_key).map(Arc::new)).collect::<Result<_, _>>()?;
    let injector = Injector::new(manifest.clone())?;
    // A run starts from a whole environment: a previous run may have been interrupted mid-fault.
    injector.heal_all().await?;

    // Accounts, opened and funded in the first region, visible everywhere before the load.
    let mut accounts = Vec::new();
    let mut customers = Vec::new();
    for currency in CURRENCIES {
        let lower = currency.to_lowercase();
        accounts.push(AccountDef {
            id: format!("{run}-mint-{lower}"),
            currency: currency.into(),
            allow_negative: true,
        });
        let ids: Vec<String> = (0..args.customers).map(|i| format!("{run}-{lower}-{i}")).collect();
        for id in &ids {
            accounts.push(AccountDef { id: id.clone(), currency: currency.into(), allow_negative: false });
        }
        customers.push(ids);
    }
    for a in &accounts {
        clients[0]
            .open_account(&a.id, &a.currency, a.allow_negative)
            .await
            .map_err(|e| RunError::Setup(format!("opening {}: {e}", a.id)))?;
    }
    let load = Arc::new(Load {
        run: run.clone(),
        started: Instant::now(),
        next_index: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        ops: Mutex::new(Vec::new()),
        customers: customers.clone(),
        amount_max: args.amount_max,
    });
    for (c, currency) in CURRENCIES.iter().enumerate() {
        let mint = format!("{run}-mint-{}", currency.to_lowercase());
        for to in &customers[c] {
            let index = load.next_index.fetch_add(1, Ordering::Relaxed);
            let key = format!("{run}-fund-{index}");
            let outcome = load
                .transfer(&clients[0], &region_names[0], index, key, mint.clone(), to.clone(), args.funding, currency)
                .await;
            if !matches!(outcome, Outcome::Ok { .. }) {
                return Err(RunError::Setup(format!("funding {to}: {outcome:?}")));
            }
        }
    }
    wait_funded(&clients, &customers, args.funding).await?;

    // The load, in every region, while the faults strike.
    let load_started = load.now_ms();
    let mut tasks = Vec::new();
    for (r, region) in region_names.iter().enumerate() {
        for k in 0..args.clients_per_region {
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add((r * 1000 + k) as u64);
            tasks.push(tokio::spawn(client_loop(load.clone(), clients[r].clone(), region.clone(), seed)));
        }
    }
    let plan = nemesis::schedule(args.seed, &nemeses, &region_names, Duration::from_secs(args.duration_s));
    let mut faults = Vec::new();
    let faulted = run_faults(&injector, &load, load_started, &plan, &mut faults).await;
    // Whatever happened, heal before stopping: a run never leaves the environment broken.
    let healed = injector.heal_all().await;
    let end_ms = load_started + args.duration_s * 1000;
    let now = load.now_ms();
    if now < end_ms {
        tokio::time::sleep(Duration::from_millis(end_ms - now)).await;
    }
    // A few healthy seconds at the end, so every region's last writes come after every fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    faulted?;
    healed?;

    let (observed, converged_after) =
        crate::observe::until_converged(&manifest, &run, Duration::from_secs(args.converge_timeout_s)).await?;
    let mut ops = std::mem::take(&mut *load.ops.lock().unwrap_or_else(|p| p.into_inner()));
    ops.sort_by_key(|o| (o.invoke_ms, o.index));
    let history =
        History { run: run.clone(), seed: args.seed, started_unix_ms, regions: region_names, accounts, ops, faults };
    let verdict = crate::checker::check(&history, &observed);
    let report_dir = args.reports_dir.join(&run);
    std::fs::create_dir_all(&report_dir)?;
    crate::report::write(&report_dir, &history, &observed, &verdict)?;
    Ok(RunOutcome { report_dir, verdict, converged_after })
}

/// Injects each planned fault at its time and heals it after its hold, recording the windows.
async fn run_faults(
    injector: &Injector,
    load: &Load,
    load_started: u64,
    plan: &[Planned],
    faults: &mut Vec<FaultWindow>,
) -> Result<(), RunError> {
    for p in plan {
        let at = load_started + p.at_ms;
        let now = load.now_ms();
        if now < at {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        let start_ms = load.now_ms();
        eprintln!("chaos: {:>6.1}s  {} {}", start_ms as f64 / 1000.0, p.nemesis.name(), p.target);
        let mut window =
            FaultWindow { nemesis: p.nemesis.name().into(), target: p.target.to_string(), start_ms, end_ms: start_ms };
        let injected = injector.inject(p).await;
        if injected.is_ok() {
            tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
        }
        let healed = injector.heal(p).await;
        window.end_ms = load.now_ms();
        eprintln!(
            "chaos: {:>6.1}s  healed after {:.1}s",
            window.end_ms as f64 / 1000.0,
            (window.end_ms - start_ms) as f64 / 1000.0
        );
        faults.push(window);
        injected?;
        healed?;
    }
    Ok(())
}

/// Waits until every region shows every customer funded (the accounts and the funding
/// replicated), so the load starts from one state everywhere.
async fn wait_funded(clients: &[Arc<Client>], customers: &[Vec<String>], funding: i64) -> Result<(), RunError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    for client in clients {
        for id in customers.iter().flatten() {
            loop {
                match client.account(id).await {
                    Ok(a) if a.value.balance == funding => break,
                    _ if Instant::now() > deadline => {
                        return Err(RunError::Setup(format!("{id} not funded everywhere within {SETUP_TIMEOUT:?}")));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    Ok(())
}
