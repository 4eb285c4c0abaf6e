//! The write path: HTTP handlers hand commands to one committer task, which group-commits them,
//! many commands per PostgreSQL transaction (bounded by `batch_commands_max` and
//! `commit_wait_us_max`), so throughput is not capped at one fsync per transfer. Each command's
//! events, account state, idempotency record and outbox rows commit together or not at all, and the
//! client hears back only after the commit.

mod batch;

use crate::config::NodeConfig;
use crate::problem::Problem;
use ledger_core::{AccountId, AccountSpec, Amount, Currency, RegionId};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use batch::{ACCOUNT_COLUMNS, AccountRow, OUTBOX_CHANNEL, rfc3339, transfer_json};

/// Open an account (idempotent on identical attributes).
#[derive(Debug, Clone)]
pub struct OpenAccount {
    /// Its attributes.
    pub spec: AccountSpec,
    /// The request's W3C traceparent.
    pub traceparent: Option<String>,
}

/// Move money.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Id given to the transfer if it is accepted.
    pub transfer_id: uuid::Uuid,
    /// Debited account.
    pub from: AccountId,
    /// Credited account.
    pub to: AccountId,
    /// Amount.
    pub amount: Amount,
    /// Currency asked for; the accounts' when absent.
    pub currency: Option<Currency>,
    /// Client data.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body, to tell a replay from a reuse of the key.
    pub request_hash: String,
    /// The request's W3C traceparent.
    pub traceparent: Option<String>,
}

/// A command for the committer.
#[derive(Debug, Clone)]
pub enum Command {
    /// See [`OpenAccount`].
    Open(OpenAccount),
    /// See [`Transfer`].
    Transfer(Transfer),
}

/// What a committed command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The account, and whether this command created it (false: it already existed, identical).
    Opened {
        /// The account as stored.
        account: AccountRow,
        /// Created now.
        created: bool,
    },
    /// The transfer's response body, and whether it is the replay of an earlier request.
    Transferred {
        /// Response body (the same bytes on replay).
        body: serde_json::Value,
        /// True when answered from the idempotency record.
        replayed: bool,
    },
}

type Reply = oneshot::Sender<Result<Outcome, Problem>>;

/// Handle to the committer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Writer {
    /// Queues `command` and waits for its commit.
    pub async fn submit(&self, command: Command) -> Result<Outcome, Problem> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx.try_send((command, reply_tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Problem::unavailable("the write queue is full; retry later"),
            mpsc::error::TrySendError::Closed(_) => Problem::unavailable("the node is shutting down"),
        })?;
        reply_rx.await.map_err(|_| Problem::unavailable("the committer stopped before answering"))?
    }
}

/// Starts the committer; it runs until every `Writer` is dropped, the queue is drained and every
/// batch in flight has committed. The returned task ends when it has.
///
/// The committer runs on its own thread with its own runtime and connections. On the shared
/// runtime each step of a commit (one per round trip) queued behind every HTTP request already
/// waiting for a worker: under load that stretched the time a batch holds its account locks, and
/// batches sharing accounts wait for each other for exactly that long.
pub fn start(region: RegionId, cfg: &NodeConfig) -> Result<(Writer, tokio::task::JoinHandle<()>), sqlx::Error> {
    let (tx, rx) = mpsc::channel(cfg.queue_commands_max.max(1));
    let limits = Limits {
        batch_commands_max: cfg.batch_commands_max.max(1),
        commit_wait: Duration::from_micros(cfg.commit_wait_us_max),
        in_flight_max: cfg.commits_in_flight_max.clamp(1, 64),
        accounts_remembered_max: cfg.accounts_remembered_max,
    };
    // The write statement has some fifty parameters: planning it anew at every execution (a
    // "custom" plan, which PostgreSQL kept choosing) took longer than running it. Its plan does not
    // depend on the values, so one generic plan serves every batch.
    let options = cfg
        .database_url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .options([("plan_cache_mode", "force_generic_plan")]);
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "the committer cannot start its runtime");
                    return;
                }
            };
            // Connections are opened on this runtime, so their I/O is driven by this thread.
            runtime.block_on(run(options, region, limits, rx));
            let _ = done_tx.send(());
        })
        .map_err(sqlx::Error::Io)?;
    let handle = tokio::spawn(async move {
        let _ = done_rx.await;
    });
    Ok((Writer { tx }, handle))
}

#[derive(Clone, Copy)]
struct Limits {
    batch_commands_max: usize,
    commit_wait: Duration,
    in_flight_max: usize,
    accounts_remembered_max: usize,
}

// Batches may commit concurrently. That is safe because each batch locks its accounts in id order
// (so two batches sharing an account serialise and never deadlock), updates an account only if it
// is as the batch was planned against, and unique keys taken by a concurrent batch (an account id,
// an idempotency key) fail the later batch with a transient error that retries it whole.
//
// Most batches are planned here, against the accounts as the batches dispatched before them leave
// them (`Remembered`), and committed in one statement: one round trip instead of four, and a batch
// waiting for an account held by the one before it continues inside PostgreSQL the moment that one
// commits, without a round trip back here. Only a batch touching an account not remembered (new,
// evicted, or changed by a batch that failed) reads and locks its accounts first.
async fn run(options: PgConnectOptions, region: RegionId, limits: Limits, mut rx: mpsc::Receiver<(Command, Reply)>) {
    // One connection per batch in flight, owned here rather than by a pool: a pool pings every
    // connection it gets back, one more round trip before the next batch can use it. Taking a
    // connection is taking a slot. `None` is one not (or no longer) connected.
    let (idle_tx, mut idle_rx) = mpsc::channel::<Option<PgConnection>>(limits.in_flight_max);
    for _ in 0..limits.in_flight_max {
        let _ = idle_tx.try_send(None);
    }
    let options = Arc::new(options);
    let remembered = Arc::new(Mutex::new(Remembered::new(limits.accounts_remembered_max)));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before gathering: while every slot is busy the queue fills, and the
        // next batch leaves full. That is the group commit; `commit_wait` only adds company at low
        // load, at the price of latency (and the timer ticks in whole milliseconds).
        let Some(conn) = idle_rx.recv().await else { break };
        let mut pending = vec![first];
        let deadline = tokio::time::Instant::now() + limits.commit_wait;
        while pending.len() < limits.batch_commands_max {
            match rx.try_recv() {
                Ok(next) => pending.push(next),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if limits.commit_wait.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => pending.push(next),
                    _ => break,
                },
            }
        }
        let (commands, replies): (Vec<Command>, Vec<Reply>) = pending.into_iter().unzip();
        let planned = {
            let mut remembered = lock(&remembered);
            match remembered.states(&commands) {
                Some(accounts) => {
                    let batch = batch::Batch::plan(&region, accounts, HashMap::new(), &commands);
                    remembered.expect(batch.accounts_after());
                    Some(batch)
                }
                None => None,
            }
        };
        let (options, region, remembered, idle_tx) =
            (options.clone(), region.clone(), remembered.clone(), idle_tx.clone());
        tokio::spawn(async move {
            let conn = match conn {
                Some(conn) => Ok(conn),
                None => PgConnection::connect_with(&options).await,
            };
            let conn = match conn {
                Ok(mut conn) => {
                    let healthy = commit(&mut conn, &region, &remembered, commands, replies, planned).await;
                    healthy.then_some(conn)
                }
                Err(e) => {
                    lock(&remembered).forget(&commands);
                    for reply in replies {
                        let _ = reply.send(Err(db_problem(&e)));
                    }
                    None
                }
            };
            let _ = idle_tx.send(conn).await;
        });
    }
    // Every connection back means every batch in flight has answered.
    for _ in 0..limits.in_flight_max {
        if let Some(Some(conn)) = idle_rx.recv().await {
            let _ = conn.close().await;
        }
    }
}

/// Commits a batch: planned ones in one statement, the others (and planned ones that find an
/// account changed) reading and locking first. If that transaction fails, each command is retried
/// alone, so one command that trips the database cannot fail the others. Returns false when the
/// connection broke and must not be used again.
async fn commit(
    conn: &mut PgConnection,
    region: &RegionId,
    remembered: &Mutex<Remembered>,
    commands: Vec<Command>,
    replies: Vec<Reply>,
    planned: Option<batch::Batch>,
) -> bool {
    metrics::histogram!(crate::telemetry::metric::BATCH_SIZE).record(commands.len() as f64);
    let started = Instant::now();
    let span = tracing::info_span!("db.transaction", db.system = "postgresql", batch_size = commands.len());
    let outcome = tracing::Instrument::instrument(
        async {
            if let Some(batch) = planned {
                match batch::run_planned(conn, &batch).await {
                    Ok(()) => {
                        metrics::counter!(crate::telemetry::metric::COMMIT_PATH, "path" => "planned").increment(1);
                        return Ok(batch.results);
                    }
                    Err(e) => {
                        if !batch::is_transient(&e) {
                            tracing::warn!(error = %e, "a planned batch failed; running it again reading its accounts");
                        }
                        metrics::counter!(crate::telemetry::metric::COMMIT_PATH, "path" => "planned-retried")
                            .increment(1);
                    }
                }
            } else {
                metrics::counter!(crate::telemetry::metric::COMMIT_PATH, "path" => "read-first").increment(1);
            }
            // What the batches dispatched before this one leave these accounts as is not known
            // until this one commits.
            let generations = lock(remembered).forget(&commands);
            let batch = batch::run_with_retry(conn, region, &commands).await?;
            lock(remembered).learn(&generations, batch.accounts_after());
            Ok(batch.results)
        },
        span,
    )
    .await;
    metrics::histogram!(crate::telemetry::metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    let mut healthy = !matches!(&outcome, Err(e) if is_broken(e));
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) if commands.len() > 1 && healthy => {
            tracing::warn!(error = %e, batch_size = commands.len(), "batch failed, committing its commands one by one");
            for (command, reply) in commands.into_iter().zip(replies) {
                let result = if healthy {
                    match batch::run_with_retry(conn, region, std::slice::from_ref(&command)).await {
                        Ok(batch) => {
                            batch.results.into_iter().next().unwrap_or_else(|| Err(Problem::internal("no result")))
                        }
                        Err(e) => {
                            healthy = !is_broken(&e);
                            Err(db_problem(&e))
                        }
                    }
                } else {
                    Err(Problem::unavailable("the database connection broke; retry with the same Idempotency-Key"))
                };
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(db_problem(&e)));
            }
        }
    }
    healthy
}

fn lock(remembered: &Mutex<Remembered>) -> std::sync::MutexGuard<'_, Remembered> {
    // The map is only a guess checked at commit: a panic elsewhere cannot make it unsafe to use.
    remembered.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Accounts as the batches dispatched so far leave them, if they commit. Only a guess: a batch
/// planned against it commits only if every account it read is still so (see
/// `batch::run_planned`), so a wrong entry costs a retry, never a wrong balance.
///
/// An entry is unknown (`None`) while a batch that read it first is in flight, or after a batch
/// touching it failed. Each dispatch touching an account bumps its generation, so a batch that
/// commits late does not overwrite what a later batch left.
struct Remembered {
    accounts: HashMap<AccountId, (Option<batch::AccountRow>, u64)>,
    accounts_max: usize,
    generation: u64,
}

impl Remembered {
    fn new(accounts_max: usize) -> Self {
        Self { accounts: HashMap::new(), accounts_max, generation: 0 }
    }

    /// The state of every account `commands` touch, if all are known.
    fn states(&self, commands: &[Command]) -> Option<HashMap<AccountId, batch::AccountRow>> {
        let mut states = HashMap::new();
        for id in commands.iter().flat_map(batch::touched) {
            if !states.contains_key(id) {
                states.insert(id.clone(), self.accounts.get(id)?.0.clone()?);
            }
        }
        Some(states)
    }

    /// A batch planned against the known states was dispatched: later ones build on its result.
    fn expect<'a>(&mut self, after: impl Iterator<Item = &'a batch::AccountRow>) {
        self.generation += 1;
        for account in after {
            if self.accounts.len() >= self.accounts_max && !self.accounts.contains_key(&account.state.spec.id) {
                continue;
            }
            self.accounts.insert(account.state.spec.id.clone(), (Some(account.clone()), self.generation));
        }
    }

    /// The accounts of `commands` become unknown; returns the generation each now has.
    fn forget(&mut self, commands: &[Command]) -> HashMap<AccountId, u64> {
        self.generation += 1;
        let mut generations = HashMap::new();
        for id in commands.iter().flat_map(batch::touched) {
            if self.accounts.len() >= self.accounts_max && !self.accounts.contains_key(id) {
                continue;
            }
            self.accounts.insert(id.clone(), (None, self.generation));
            generations.insert(id.clone(), self.generation);
        }
        generations
    }

    /// A batch that read its accounts committed: what it left them as is known, unless another
    /// batch touched them since.
    fn learn<'a>(&mut self, generations: &HashMap<AccountId, u64>, after: impl Iterator<Item = &'a batch::AccountRow>) {
        for account in after {
            let id = &account.state.spec.id;
            if let (Some(g), Some(entry)) = (generations.get(id), self.accounts.get_mut(id))
                && entry.1 == *g
            {
                entry.0 = Some(account.clone());
            }
        }
    }
}

/// The connection cannot be trusted after these: a statement may have been cut short mid-message.
fn is_broken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_))
}

fn db_problem(e: &sqlx::Error) -> Problem {
    tracing::error!(error = %e, "command failed in the database");
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            Problem::unavailable("the database is unreachable; retry with the same Idempotency-Key")
        }
        _ => Problem::internal("the command was not applied; retry with the same Idempotency-Key"),
    }
}
