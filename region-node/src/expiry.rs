//! Voids the pending transfers this region created once their deadline passes. Only the creating
//! region does, so a deadline is acted on once; another region refuses a post after the deadline
//! on its own. A void racing a post made elsewhere just before the deadline is settled like any
//! race: the post stands everywhere and the pair is a `pending-settlement` conflict.

use crate::write::{Command, CommandError, Settle, SettleAction, Writer};
use ledger_core::{PostingError, RegionId};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pending transfers voided per scan at most; a longer backlog is taken by the next scans.
pub const EXPIRE_PER_SCAN_MAX: i64 = 100;

/// Scans every `every` until `shutdown`.
pub async fn run(pool: sqlx::PgPool, writer: Writer, region: RegionId, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let due = match crate::storage::pending::due(&pool, &region, EXPIRE_PER_SCAN_MAX).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "reading the pending transfers due failed; next scan retries");
                continue;
            }
        };
        for (pending_id, from, to) in due {
            let command = Command::Settle(Settle {
                pending_id,
                from,
                to,
                action: SettleAction::Expire,
                idempotency_key: None,
                request_hash: String::new(),
                traceparent: None,
            });
            match writer.submit(command).await {
                Ok(_) => tracing::info!(%pending_id, "pending transfer expired and voided"),
                // Settled meanwhile (here or, applied here, elsewhere): nothing to do.
                Err(CommandError::Posting(PostingError::NotPending(_))) => {}
                Err(e) => {
                    tracing::warn!(%pending_id, error = %e, "voiding an expired pending transfer failed; next scan retries")
                }
            }
        }
    }
}
