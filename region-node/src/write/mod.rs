//! The write path: HTTP handlers hand commands to one committer task, which group-commits them,
//! many commands per PostgreSQL transaction (bounded by `batch_commands_max` and
//! `commit_wait_us_max`), so throughput is not capped at one fsync per transfer. Each command's
//! events, account state, idempotency record and outbox rows commit together or not at all, and the
//! client hears back only after the commit.

mod batch;
mod timer;

use crate::config::NodeConfig;
use crate::storage::{AccountRow, StorageError};
use ledger_core::posting::PostingError;
use ledger_core::{AccountId, AccountSpec, Amount, Currency, RegionId};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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
    /// The client's idempotency key, scoped to its API key (see [`crate::idempotency`]).
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body, to tell a replay from a reuse of the key.
    pub request_hash: String,
    /// The request's W3C traceparent.
    pub traceparent: Option<String>,
}

/// Move money along several legs at once, all or none.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Id given to the transaction if it is accepted; its legs' transfer ids derive from it.
    pub transaction_id: uuid::Uuid,
    /// 1 to `LEGS_MAX` legs, judged in order.
    pub legs: Vec<ledger_core::Leg>,
    /// Client data.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's idempotency key, scoped to its API key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
    /// The request's W3C traceparent.
    pub traceparent: Option<String>,
}

/// Reserve money for a transfer posted or voided later.
#[derive(Debug, Clone)]
pub struct PendingTransfer {
    /// Id given to the pending transfer if it is accepted.
    pub transfer_id: uuid::Uuid,
    /// The account it will debit.
    pub from: AccountId,
    /// The account it will credit.
    pub to: AccountId,
    /// Amount reserved.
    pub amount: Amount,
    /// Currency asked for; the accounts' when absent.
    pub currency: Option<Currency>,
    /// Client data.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's idempotency key, scoped to its API key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
    /// The request's W3C traceparent.
    pub traceparent: Option<String>,
    /// When this region voids it if nobody settled it.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How to settle a pending transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleAction {
    /// Post this much (at most the reserve; all of it when `None`).
    Post(Option<Amount>),
    /// Void it at a client's request.
    Void,
    /// Void it because its deadline passed (the expiry of the region that created it).
    Expire,
}

/// Post or void a pending transfer.
#[derive(Debug, Clone)]
pub struct Settle {
    /// The pending transfer.
    pub pending_id: uuid::Uuid,
    /// Its accounts, as read before queueing (a pending transfer's accounts never change): the
    /// committer locks them, then reads the pending transfer itself.
    pub from: AccountId,
    /// See `from`.
    pub to: AccountId,
    /// Post or void.
    pub action: SettleAction,
    /// The client's idempotency key, scoped to its API key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body (with the transfer id).
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
    /// See [`Transaction`].
    Transaction(Transaction),
    /// See [`PendingTransfer`].
    Pending(PendingTransfer),
    /// See [`Settle`].
    Settle(Settle),
}

impl Command {
    /// The idempotency key a posting command carries.
    pub(crate) fn idempotency_key(&self) -> Option<&str> {
        match self {
            Command::Transfer(t) => t.idempotency_key.as_deref(),
            Command::Transaction(t) => t.idempotency_key.as_deref(),
            Command::Pending(t) => t.idempotency_key.as_deref(),
            Command::Settle(t) => t.idempotency_key.as_deref(),
            Command::Open(_) => None,
        }
    }

    /// Two-phase commands read pending transfers, which only the read-first path does.
    fn is_two_phase(&self) -> bool {
        matches!(self, Command::Pending(_) | Command::Settle(_))
    }
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

/// Why the committer did not apply a command. `api/` turns each into its problem response.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The transfer's postings are refused.
    #[error("{0}")]
    Posting(PostingError),
    /// An account with this id exists with other attributes.
    #[error("account {0} exists with other attributes")]
    AccountExists(AccountId),
    /// The idempotency key answers for another request.
    #[error("the idempotency key was used with another request")]
    IdempotencyKeyReused,
    /// A transfer names an account that does not exist.
    #[error("account {0} not found")]
    AccountNotFound(AccountId),
    /// A transfer from an account to itself.
    #[error("a transfer between an account and itself")]
    SameAccount,
    /// A transaction's leg is refused (its index from 0): the whole transaction is.
    #[error("leg {leg}: {error}")]
    Leg {
        /// The refused leg.
        leg: usize,
        /// Why.
        error: Box<CommandError>,
    },
    /// The committer's queue is full.
    #[error("the write queue is full")]
    QueueFull,
    /// The committer no longer takes commands.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The committer ended without answering.
    #[error("the committer stopped before answering")]
    CommitterStopped,
    /// The database is unreachable ([`StorageError::Unavailable`]).
    #[error("the database is unreachable")]
    Unavailable,
    /// The connection broke while the batch was retried command by command.
    #[error("the database connection broke")]
    ConnectionBroke,
    /// The database failed the command otherwise ([`StorageError`] other than unavailable).
    #[error("the command was not applied")]
    NotApplied,
    /// The committer lost the command's result (a bug).
    #[error("no result")]
    NoResult,
}

type Reply = oneshot::Sender<Result<Outcome, CommandError>>;

/// Handle to the committer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Writer {
    /// Queues `command` and waits for its commit.
    pub async fn submit(&self, command: Command) -> Result<Outcome, CommandError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx.try_send((command, reply_tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => CommandError::ShuttingDown,
        })?;
        reply_rx.await.map_err(|_| CommandError::CommitterStopped)?
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
        commit_wait_commands_min: cfg.commit_wait_commands_min.max(1),
        in_flight_max: cfg.commits_in_flight_max.clamp(1, 64),
        accounts_remembered_max: cfg.accounts_remembered_max,
    };
    // The write statement has some fifty parameters: planning it anew at every execution (a
    // "custom" plan, which PostgreSQL kept choosing) took longer than running it. Its plan does not
    // depend on the values, so one generic plan serves every batch. A generic plan cannot know how
    // many rows the UNNESTs bring (it assumes a hundred, a batch mostly holds one or two), so with
    // a few thousand accounts it hashed a sequential scan of `accounts` on every batch: 0.28 cores
    // per committer connection at 1,000 transfers/s. Every row the committer reads is reached by
    // its primary key, so sequential scans are off for these connections.
    let options = cfg
        .database_url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .options([("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")])
        // Named, so PostgreSQL's own views (and scripts/profile-transfer.sh) tell the write path's
        // backends from the rest of the node's.
        .application_name("region-node committer");
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
    commit_wait_commands_min: usize,
    in_flight_max: usize,
    accounts_remembered_max: usize,
}

// Batches may commit concurrently, but never two touching the same account: a command waits while
// a batch in flight touches one of its accounts, and the commands behind it that touch its accounts
// wait with it, so each account's commands still commit in arrival order. The others go in the next
// batch. (Waiting with a whole batch until no batch in flight shared an account serialised the
// committer under load: a batch of a few hundred random transfers nearly always shares one.) The
// committer then knows each account's state as the last batch touching it committed it
// (`Remembered`), plans the batch against that and commits it in one statement: one round trip
// instead of four. Letting a batch build on the expected result of one still in flight was tried:
// the later statement often took an account's row lock first (accounts are locked in id order, so
// it got there while the earlier one was still locking lower ids), found it unchanged, and failed,
// costing a whole retry.
//
// The statement still checks, under the row locks, that every account it read is as planned
// against, because other writers exist (another node of the region, remote apply): a batch that
// finds one changed, or an idempotency key already used, is run again reading and locking its
// accounts first, and the committer learns their state from that.
async fn run(options: PgConnectOptions, region: RegionId, limits: Limits, mut rx: mpsc::Receiver<(Command, Reply)>) {
    // One connection per batch in flight, owned here rather than by a pool: a pool pings every
    // connection it gets back, one more round trip before the next batch can use it. Taking a
    // connection is taking a slot. `None` is one not (or no longer) connected.
    let (idle_tx, mut idle_rx) = mpsc::channel::<Option<PgConnection>>(limits.in_flight_max);
    for _ in 0..limits.in_flight_max {
        let _ = idle_tx.try_send(None);
    }
    let remembered = Arc::new(Mutex::new(Remembered::new(limits.accounts_remembered_max)));
    // Only when batches may wait at all (not by default).
    let timer = if limits.commit_wait.is_zero() {
        None
    } else {
        match timer::PreciseTimer::new() {
            Ok(timer) => Some(timer),
            Err(e) => {
                tracing::warn!(error = %e, "no timerfd: batches will not wait for company");
                None
            }
        }
    };
    // Commands taken from the queue and not yet in a batch, in arrival order. Bounded, so that the
    // queue (and its 503 when full) still measures the backlog.
    let waiting_max = 2 * limits.batch_commands_max;
    let mut waiting: VecDeque<(Command, Reply)> = VecDeque::new();
    let mut closed = false;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(first) => waiting.push_back(first),
                None => break,
            }
        }
        // Wait for a free slot before gathering: while every slot is busy the queue fills, and the
        // next batch leaves full. That is the group commit.
        let Some(conn) = idle_rx.recv().await else { break };
        // A statement's fixed cost in PostgreSQL (about half a millisecond) outweighs a transfer's
        // rows: at 1,000 transfers/s, batches of 1.3 cost 0.66 cores of PostgreSQL, batches of
        // 2.2 (a 1 ms wait) 0.52, at some latency (off by default, see the config). So while
        // another batch is committing, a small batch may wait for company. With nothing in
        // flight it leaves at once (a lone client waits for nothing), and a batch already holding
        // `commit_wait_commands_min` leaves too: under load, waiting made batches so large that
        // consecutive ones shared accounts and had to take turns.
        let busy = limits.in_flight_max - 1 > idle_rx.len();
        let armed = timer.as_ref().filter(|timer| busy && timer.arm(limits.commit_wait).is_ok());
        while !closed && waiting.len() < waiting_max {
            match rx.try_recv() {
                Ok(next) => waiting.push_back(next),
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let Some(timer) = armed.filter(|_| waiting.len() < limits.commit_wait_commands_min) else {
                        break;
                    };
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(next) => waiting.push_back(next),
                            None => closed = true,
                        },
                        _ = timer.expired() => break,
                    }
                }
            }
        }
        let ready = {
            let mut known = lock(&remembered);
            let pending = take_ready(&mut waiting, &known.in_flight, limits.batch_commands_max, |(c, _)| c);
            if pending.is_empty() {
                // Registered while the lock is held, so no batch can end before the wait.
                let mut ended = Box::pin(known.ended.clone().notified_owned());
                ended.as_mut().enable();
                Err(ended)
            } else {
                let accounts = batch::accounts_of(pending.iter().map(|(c, _)| c));
                known.begin(&accounts);
                Ok((pending, accounts))
            }
        };
        let (pending, accounts) = match ready {
            Ok(ready) => ready,
            Err(ended) => {
                // Everything waiting touches an account of a batch in flight, and that batch will end.
                let _ = idle_tx.try_send(conn);
                ended.await;
                continue;
            }
        };
        let (commands, replies): (Vec<Command>, Vec<Reply>) = pending.into_iter().unzip();
        let mut conn = match conn {
            Some(conn) => conn,
            None => match PgConnection::connect_with(&options).await {
                Ok(conn) => conn,
                Err(e) => {
                    let e = StorageError::from(e);
                    for reply in replies {
                        let _ = reply.send(Err(storage_failure(&e)));
                    }
                    lock(&remembered).end(&accounts, None);
                    let _ = idle_tx.try_send(None);
                    continue;
                }
            },
        };
        let planned = plan(&mut conn, &region, &remembered, &commands, &accounts).await;
        let (region, remembered, idle_tx) = (region.clone(), remembered.clone(), idle_tx.clone());
        tokio::spawn(async move {
            let (results, healthy) = commit(&mut conn, &region, &commands, planned).await;
            // Known only once the batch has committed; other batches waiting for these accounts
            // may go as soon as this is recorded.
            lock(&remembered).end(&accounts, results.as_ref().ok().map(|(_, after)| after.as_slice()));
            answer(&mut conn, &region, commands, replies, results.map(|(results, _)| results), healthy).await;
            let _ = idle_tx.send(healthy.then_some(conn)).await;
        });
    }
    // Every connection back means every batch in flight has answered.
    for _ in 0..limits.in_flight_max {
        if let Some(Some(conn)) = idle_rx.recv().await {
            let _ = conn.close().await;
        }
    }
}

/// Takes from `waiting`, in order, up to `max` items none of whose accounts is `busy` and none of
/// which touches an account of an item left waiting before it: each account's items leave in the
/// order they came. The rest stay, in order.
fn take_ready<T>(
    waiting: &mut VecDeque<T>,
    busy: &HashSet<AccountId>,
    max: usize,
    command: impl Fn(&T) -> &Command,
) -> Vec<T> {
    let mut held: HashSet<AccountId> = HashSet::new();
    let mut kept = VecDeque::new();
    let mut ready = Vec::new();
    while ready.len() < max {
        let Some(item) = waiting.pop_front() else { break };
        if batch::touched(command(&item)).any(|id| busy.contains(id) || held.contains(id)) {
            held.extend(batch::touched(command(&item)).cloned());
            kept.push_back(item);
        } else {
            ready.push(item);
        }
    }
    kept.append(waiting);
    *waiting = kept;
    ready
}

/// Plans `commands` against the accounts as last committed, reading those not remembered. `None`
/// when it cannot: the batch then reads and locks its accounts first.
async fn plan(
    conn: &mut PgConnection,
    region: &RegionId,
    remembered: &Mutex<Remembered>,
    commands: &[Command],
    accounts: &[AccountId],
) -> Option<batch::Batch> {
    // The batch's states are what was remembered when it started planning plus what it reads now,
    // held here: the memory is bounded and may forget any of them meanwhile (while reading, or
    // while remembering what was read), and an account forgotten must never look absent.
    let (mut states, missing) = lock(remembered).known(accounts);
    if !missing.is_empty() {
        let loaded = match crate::storage::accounts::load(conn, &missing).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(error = %e, "reading accounts to plan a batch failed");
                return None;
            }
        };
        states.extend(loaded.iter().map(|row| (row.state.spec.id.clone(), row.clone())));
        lock(remembered).remember(loaded);
    }
    // An account neither remembered nor read does not exist. The plan reads no idempotency
    // records: an accepted command whose key is taken fails on the key's unique index at commit and
    // the batch is run again reading them, but a refused one writes nothing, so nothing would
    // notice that its key answers for an earlier transfer (a replay, or a key reused with another
    // body). A batch refusing a command with a key is therefore run reading its records first.
    if commands.iter().any(Command::is_two_phase) {
        return None;
    }
    let batch = batch::Batch::plan(region, states, HashMap::new(), Default::default(), commands);
    if batch.refuses_a_keyed_command(commands) { None } else { Some(batch) }
}

type Committed = (Vec<Result<Outcome, CommandError>>, Vec<AccountRow>);

/// Commits a batch: a planned one in one statement, the others (and planned ones that find an
/// account changed) reading and locking first. Returns each command's reply and the accounts as
/// committed, and false when the connection broke and must not be used again.
async fn commit(
    conn: &mut PgConnection,
    region: &RegionId,
    commands: &[Command],
    planned: Option<batch::Batch>,
) -> (Result<Committed, StorageError>, bool) {
    metrics::histogram!(crate::telemetry::metric::BATCH_SIZE).record(commands.len() as f64);
    let started = Instant::now();
    let span = tracing::info_span!("db.transaction", db.system = "postgresql", batch_size = commands.len());
    let outcome = tracing::Instrument::instrument(
        async {
            if let Some(batch) = planned {
                match batch::run_planned(conn, &batch).await {
                    Ok(()) => {
                        metrics::counter!(crate::telemetry::metric::COMMIT_PATH, "path" => "planned").increment(1);
                        return Ok(batch.into_committed());
                    }
                    Err(e) if e.is_unavailable() => return Err(e),
                    Err(e) => {
                        if !e.is_conflict() {
                            tracing::warn!(error = %e, "a planned batch failed; running it again reading its accounts");
                        }
                        metrics::counter!(crate::telemetry::metric::COMMIT_PATH, "path" => "planned-retried")
                            .increment(1);
                    }
                }
            } else {
                metrics::counter!(crate::telemetry::metric::COMMIT_PATH, "path" => "read-first").increment(1);
            }
            Ok(batch::run_with_retry(conn, region, commands).await?.into_committed())
        },
        span,
    )
    .await;
    metrics::histogram!(crate::telemetry::metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    let healthy = !matches!(&outcome, Err(e) if e.is_unavailable());
    (outcome, healthy)
}

/// Sends each command its reply. If the batch failed, each command is retried alone first, so one
/// command that trips the database cannot fail the others.
async fn answer(
    conn: &mut PgConnection,
    region: &RegionId,
    commands: Vec<Command>,
    replies: Vec<Reply>,
    results: Result<Vec<Result<Outcome, CommandError>>, StorageError>,
    mut healthy: bool,
) {
    match results {
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
                        Ok(batch) => batch.results.into_iter().next().unwrap_or(Err(CommandError::NoResult)),
                        Err(e) => {
                            healthy = !e.is_unavailable();
                            Err(storage_failure(&e))
                        }
                    }
                } else {
                    Err(CommandError::ConnectionBroke)
                };
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(storage_failure(&e)));
            }
        }
    }
}

fn lock(remembered: &Mutex<Remembered>) -> std::sync::MutexGuard<'_, Remembered> {
    // Nothing here can be left half-updated by a panic that matters: the states are checked at
    // commit anyway.
    remembered.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the committer knows of accounts: each one's state as the last batch touching it committed
/// it, and which accounts batches in flight touch. Only a guess as far as other writers go: a
/// batch planned against it commits only if every account it read is still so (see
/// `batch::run_planned`), so a wrong entry costs a retry, never a wrong balance or refusal.
struct Remembered {
    accounts: HashMap<AccountId, AccountRow>,
    accounts_max: usize,
    in_flight: std::collections::HashSet<AccountId>,
    /// Woken whenever a batch in flight ends.
    ended: Arc<tokio::sync::Notify>,
}

impl Remembered {
    fn new(accounts_max: usize) -> Self {
        Self {
            accounts: HashMap::new(),
            accounts_max: accounts_max.max(1),
            in_flight: std::collections::HashSet::new(),
            ended: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn begin(&mut self, accounts: &[AccountId]) {
        self.in_flight.extend(accounts.iter().cloned());
    }

    /// The batch touching `accounts` ended, leaving them as `after` (`None`: unknown, it failed).
    fn end(&mut self, accounts: &[AccountId], after: Option<&[AccountRow]>) {
        for id in accounts {
            self.in_flight.remove(id);
            self.accounts.remove(id);
        }
        self.remember(after.unwrap_or_default().iter().cloned());
        self.ended.notify_waiters();
    }

    /// The remembered state of each of `accounts`, and those not remembered (to be read).
    fn known(&self, accounts: &[AccountId]) -> (HashMap<AccountId, AccountRow>, Vec<AccountId>) {
        let mut states = HashMap::with_capacity(accounts.len());
        let mut missing = Vec::new();
        for id in accounts {
            match self.accounts.get(id) {
                Some(row) => {
                    states.insert(id.clone(), row.clone());
                }
                None => missing.push(id.clone()),
            }
        }
        (states, missing)
    }

    fn remember(&mut self, states: impl IntoIterator<Item = AccountRow>) {
        for account in states {
            // Bounded memory: when full, start over (every account is read again once). Only a
            // cache: a batch plans against the states it took from here or read itself (`plan`),
            // so forgetting costs a read, never an account.
            if self.accounts.len() >= self.accounts_max && !self.accounts.contains_key(&account.state.spec.id) {
                self.accounts.clear();
            }
            self.accounts.insert(account.state.spec.id.clone(), account);
        }
    }
}

/// A command the database failed: unavailable (retry later) or not applied.
fn storage_failure(e: &StorageError) -> CommandError {
    tracing::error!(error = %e, "command failed in the database");
    if e.is_unavailable() { CommandError::Unavailable } else { CommandError::NotApplied }
}

#[cfg(test)]
mod tests {
    use super::{Command, Transfer, take_ready};
    use ledger_core::{AccountId, Amount};
    use std::collections::{HashSet, VecDeque};

    fn transfer(from: &str, to: &str) -> Command {
        Command::Transfer(Transfer {
            transfer_id: uuid::Uuid::nil(),
            from: AccountId::new(from).unwrap(),
            to: AccountId::new(to).unwrap(),
            amount: Amount::new(1).unwrap(),
            currency: None,
            metadata: serde_json::Map::new(),
            idempotency_key: None,
            request_hash: String::new(),
            traceparent: None,
        })
    }

    fn pairs(commands: &[Command]) -> Vec<String> {
        commands
            .iter()
            .map(|c| match c {
                Command::Transfer(t) => format!("{}>{}", t.from, t.to),
                Command::Transaction(t) => format!("{}>{}", t.legs[0].from, t.legs[0].to),
                Command::Pending(t) => format!("{}>{}", t.from, t.to),
                Command::Settle(t) => format!("{}>{}", t.from, t.to),
                Command::Open(o) => o.spec.id.to_string(),
            })
            .collect()
    }

    #[test]
    fn commands_on_accounts_in_flight_wait_and_so_do_those_behind_them_on_the_same_accounts() {
        let mut waiting: VecDeque<Command> =
            [transfer("a", "b"), transfer("c", "d"), transfer("d", "e"), transfer("f", "g"), transfer("e", "h")].into();
        let busy: HashSet<AccountId> = [AccountId::new("c").unwrap()].into();
        let ready = take_ready(&mut waiting, &busy, 10, |c| c);
        // c>d waits for the batch in flight; d>e and e>h wait behind it (d, then e).
        assert_eq!(pairs(&ready), ["a>b", "f>g"]);
        assert_eq!(pairs(&Vec::from(waiting)), ["c>d", "d>e", "e>h"]);
    }

    #[test]
    fn a_batch_takes_at_most_max_and_the_rest_keep_their_order() {
        let mut waiting: VecDeque<Command> = [transfer("a", "b"), transfer("c", "d"), transfer("e", "f")].into();
        let ready = take_ready(&mut waiting, &HashSet::new(), 2, |c| c);
        assert_eq!(pairs(&ready), ["a>b", "c>d"]);
        assert_eq!(pairs(&Vec::from(waiting)), ["e>f"]);
        let busy: HashSet<AccountId> = [AccountId::new("a").unwrap()].into();
        let mut waiting: VecDeque<Command> = [transfer("a", "b"), transfer("c", "d"), transfer("e", "f")].into();
        let ready = take_ready(&mut waiting, &busy, 1, |c| c);
        assert_eq!(pairs(&ready), ["c>d"]);
        assert_eq!(pairs(&Vec::from(waiting)), ["a>b", "e>f"]);
    }
}
