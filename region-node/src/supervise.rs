//! Supervision of the node's background tasks (the publisher, the read-model consumer, remote
//! apply). Each was spawned once: one returning an error, or panicking, left the node answering
//! "ready" while the region silently stopped publishing, updating its views or applying other
//! regions' events. A supervised task is restarted with bounded exponential backoff whenever it
//! ends while the node is not shutting down, and its state (running or restarting, restarts, last
//! error) is what `/readyz` reports: 503 while any task is not running.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// First delay before a restart: long enough not to spin on a dependency that is down.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between restarts: a task whose dependency comes back resumes within this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a supervised task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Running (started or restarted).
    Running,
    /// Ended early; waiting out its backoff before starting again.
    Restarting,
    /// Ended because the node is shutting down.
    Stopped,
}

/// One task's state, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskState {
    /// The task's name (`publisher`, `consumer`, `remote-apply`).
    pub task: &'static str,
    /// What it is doing.
    pub state: Status,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Why it last ended early (an error's text, or the panic's message).
    pub last_error: Option<String>,
}

/// The states of every supervised task of a node; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tasks(Arc<Mutex<BTreeMap<&'static str, TaskState>>>);

impl Tasks {
    /// Every task's state, by name.
    pub fn states(&self) -> Vec<TaskState> {
        self.lock().values().cloned().collect()
    }

    /// Whether every task is running.
    pub fn all_running(&self) -> bool {
        self.lock().values().all(|t| t.state == Status::Running)
    }

    fn update(&self, task: &'static str, change: impl FnOnce(&mut TaskState)) {
        let mut tasks = self.lock();
        let state =
            tasks.entry(task).or_insert(TaskState { task, state: Status::Running, restarts: 0, last_error: None });
        change(state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, TaskState>> {
        // A state is replaced whole under the lock: a panic elsewhere cannot leave one half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Aborts the task it holds when dropped, so that aborting the supervisor (`Node::crash`) stops
/// the task too, as a crash would.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()`'s future as task `name` until `shutdown`, starting it again whenever it ends
/// early: with an error, with `Ok` while `shutdown` is not cancelled, or by panicking. Restarts
/// wait [`BACKOFF_INITIAL`], doubling up to [`BACKOFF_MAX`]; a run that lasted longer than
/// `BACKOFF_MAX` starts the backoff over. The returned task ends once the task has stopped after
/// `shutdown` (the task itself is expected to watch `shutdown` and return).
pub fn spawn<F, Fut, E>(name: &'static str, tasks: &Tasks, shutdown: CancellationToken, make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    // Registered at zero, so the series exists (and alerts can compare) before the first restart.
    metrics::counter!(crate::telemetry::metric::TASK_RESTARTS, "task" => name).increment(0);
    tasks.update(name, |t| t.state = Status::Running);
    tokio::spawn(supervise(name, tasks.clone(), shutdown, make, BACKOFF_INITIAL, BACKOFF_MAX))
}

async fn supervise<F, Fut, E>(
    name: &'static str,
    tasks: Tasks,
    shutdown: CancellationToken,
    mut make: F,
    initial: Duration,
    max: Duration,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let mut backoff = Backoff { initial, max, next: initial };
    loop {
        tasks.update(name, |t| t.state = Status::Running);
        let started = Instant::now();
        let mut running = AbortOnDrop(tokio::spawn(make()));
        let ended = (&mut running.0).await;
        let why = match ended {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) if e.is_panic() => Some(format!("panicked: {}", panic_message(e.into_panic()))),
            Err(e) => Some(format!("cancelled: {e}")),
        };
        if shutdown.is_cancelled() {
            if let Some(why) = &why {
                tracing::error!(task = name, error = %why, "task stopped with an error during shutdown");
            }
            tasks.update(name, |t| t.state = Status::Stopped);
            return;
        }
        let why = why.unwrap_or_else(|| "returned while the node was not shutting down".to_owned());
        let delay = backoff.after_run(started.elapsed());
        tracing::error!(task = name, error = %why, restart_in_ms = delay.as_millis() as u64, "task ended; restarting");
        metrics::counter!(crate::telemetry::metric::TASK_RESTARTS, "task" => name).increment(1);
        tasks.update(name, |t| {
            t.state = Status::Restarting;
            t.restarts += 1;
            t.last_error = Some(why);
        });
        tokio::select! {
            _ = shutdown.cancelled() => {
                tasks.update(name, |t| t.state = Status::Stopped);
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Delays between restarts: `initial`, doubling up to `max`; a run that lasted longer than `max`
/// (the task worked for a while) starts over from `initial`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// The delay before restarting a task whose run lasted `ran`.
    fn after_run(&mut self, ran: Duration) -> Duration {
        if ran > self.max {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Waits (real time, polling) until `tasks` satisfies `ready`.
    async fn until(tasks: &Tasks, what: &str, ready: impl Fn(&TaskState) -> bool) -> TaskState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(state) = tasks.states().into_iter().next().filter(|s| ready(s)) {
                return state;
            }
            assert!(Instant::now() < deadline, "never {what}: {:?}", tasks.states());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A task that fails, then panics, then returns `Ok` early, then runs until shutdown: each
    /// early end is a restart with its reason, the state is `restarting` meanwhile, and nothing
    /// restarts after shutdown.
    #[tokio::test]
    async fn a_failing_or_panicking_task_is_restarted_and_reported() {
        let tasks = Tasks::default();
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (runs2, token) = (runs.clone(), shutdown.clone());
        let make = move || {
            let (run, token) = (runs2.fetch_add(1, Ordering::SeqCst), token.clone());
            async move {
                match run {
                    0 => Err("broker unreachable".to_owned()),
                    1 => panic!("boom"),
                    2 => Ok(()),
                    _ => {
                        token.cancelled().await;
                        Ok(())
                    }
                }
            }
        };
        // Backoffs of 300, 600 and 1,000 ms: long enough to observe each `restarting` state.
        let (initial, max) = (Duration::from_millis(300), Duration::from_secs(1));
        let supervisor = tokio::spawn(supervise("flaky", tasks.clone(), shutdown.clone(), make, initial, max));
        let state = until(&tasks, "failed once", |s| s.restarts == 1).await;
        assert_eq!(state.state, Status::Restarting);
        assert_eq!(state.last_error.as_deref(), Some("broker unreachable"));
        assert!(!tasks.all_running());
        let state = until(&tasks, "panicked", |s| s.restarts == 2).await;
        assert_eq!(state.state, Status::Restarting);
        assert_eq!(state.last_error.as_deref(), Some("panicked: boom"));
        let state = until(&tasks, "returned early", |s| s.restarts == 3).await;
        assert_eq!(state.state, Status::Restarting);
        assert_eq!(state.last_error.as_deref(), Some("returned while the node was not shutting down"));
        until(&tasks, "running again", |s| s.state == Status::Running).await;
        assert!(tasks.all_running());
        shutdown.cancel();
        supervisor.await.unwrap();
        assert_eq!(tasks.states()[0].state, Status::Stopped);
        assert_eq!(tasks.states()[0].restarts, 3);
        assert_eq!(runs.load(Ordering::SeqCst), 4, "not restarted after shutdown");
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_starts_over_after_a_long_run() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut backoff = Backoff { initial, max, next: initial };
        let short = Duration::from_millis(1);
        let delays: Vec<u128> = (0..10).map(|_| backoff.after_run(short).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(backoff.after_run(Duration::from_secs(11)), initial, "it had worked for a while");
        assert_eq!(backoff.after_run(short), Duration::from_millis(200));
    }
}
