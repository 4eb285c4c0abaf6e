//! The write path: HTTP handlers hand commands to one committer task, which group-commits them,
//! many commands per PostgreSQL transaction (bounded by `batch_commands_max` and
//! `commit_wait_us_max`), so throughput is not capped at one fsync per transfer. Each command's
//! events, account state, idempotency record and outbox rows commit together or not at all, and the
//! client hears back only after the commit.

mod batch;

use crate::config::NodeConfig;
use crate::problem::Problem;
use ledger_core::{AccountId, AccountSpec, Amount, Currency, RegionId};
use sqlx::PgPool;
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
    };
    let options: sqlx::postgres::PgConnectOptions = cfg.database_url.parse()?;
    // One connection per batch in flight; a failed batch retries its commands on the same one.
    let pool_options = crate::pool_options(limits.in_flight_max as u32);
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
            runtime.block_on(async move {
                // Connections are opened on this runtime, so their I/O is driven by this thread.
                let pool = pool_options.connect_lazy_with(options);
                run(pool.clone(), region, limits, rx).await;
                pool.close().await;
            });
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
}

// Batches may commit concurrently. That is safe because each batch locks its accounts in id order
// before reading them (so two batches sharing an account serialise, the second reading what the
// first committed, and never deadlock), and unique keys taken by a concurrent batch (an account
// id, an idempotency key) fail the later batch with a transient error that retries it whole.
async fn run(pool: PgPool, region: RegionId, limits: Limits, mut rx: mpsc::Receiver<(Command, Reply)>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.in_flight_max));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before gathering: while every slot is busy the queue fills, and the
        // next batch leaves full.
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let mut pending = vec![first];
        let deadline = tokio::time::Instant::now() + limits.commit_wait;
        while pending.len() < limits.batch_commands_max {
            match rx.try_recv() {
                Ok(next) => pending.push(next),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => pending.push(next),
                    _ => break,
                },
            }
        }
        let (pool, region) = (pool.clone(), region.clone());
        tokio::spawn(async move {
            commit(&pool, &region, pending).await;
            drop(slot);
        });
    }
    // Every slot back means every batch in flight has answered.
    let _ = slots.acquire_many(u32::try_from(limits.in_flight_max).unwrap_or(64)).await;
}

/// Commits a batch; if the transaction fails, each command is retried alone, so one command that
/// trips the database cannot fail the others.
async fn commit(pool: &PgPool, region: &RegionId, pending: Vec<(Command, Reply)>) {
    let (commands, replies): (Vec<Command>, Vec<Reply>) = pending.into_iter().unzip();
    metrics::histogram!(crate::telemetry::metric::BATCH_SIZE).record(commands.len() as f64);
    let started = Instant::now();
    let span = tracing::info_span!("db.transaction", db.system = "postgresql", batch_size = commands.len());
    let outcome = tracing::Instrument::instrument(batch::run_with_retry(pool, region, &commands), span).await;
    metrics::histogram!(crate::telemetry::metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) if commands.len() > 1 => {
            tracing::warn!(error = %e, batch_size = commands.len(), "batch failed, committing its commands one by one");
            for (command, reply) in commands.into_iter().zip(replies) {
                let result = match batch::run_with_retry(pool, region, std::slice::from_ref(&command)).await {
                    Ok(mut results) => results.pop().unwrap_or_else(|| Err(Problem::internal("no result"))),
                    Err(e) => Err(db_problem(&e)),
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
