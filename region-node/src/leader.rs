//! Leadership of a region-wide task (the outbox publisher, the webhook worker): whoever holds the
//! task's PostgreSQL advisory lock leads; the other nodes of the region stand by. The lock lives on
//! a connection of its own, detached from the pool, so that losing the connection is losing the
//! lead and nothing else can release it by returning the connection to the pool.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a node standing by tries the lock again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until this node holds advisory lock `key` and returns the connection holding it; `None`
/// once `shutdown` is cancelled. `task` names the task in the log lines.
pub(crate) async fn acquire(
    pool: &PgPool,
    key: i64,
    task: &'static str,
    shutdown: &CancellationToken,
) -> Option<sqlx::PgConnection> {
    let mut announced = false;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let attempt = async {
            let mut conn = pool.acquire().await?.detach();
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
            Ok::<_, sqlx::Error>(got.then_some(conn))
        };
        match attempt.await {
            Ok(Some(conn)) => return Some(conn),
            Ok(None) if !announced => {
                tracing::info!(task, "another node leads; standing by");
                announced = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(task, error = %e, "cannot reach postgresql for the leader lock"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(RETRY_INTERVAL) => {}
        }
    }
}
