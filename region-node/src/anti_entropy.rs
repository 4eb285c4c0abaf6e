//! Anti-entropy: the repair task. Replication through Kafka can lose an event for good (a
//! transaction the broker never made readable, a mirrored record lost), and nothing else would
//! ever notice. Every `anti_entropy_interval_ms`, this task asks each peer region with a URL for
//! the peer's own events after a durable cursor (`GET /v1/replication/events?origin=<peer>`), a
//! page at a time, and hands the ones this region lacks to remote apply, which applies them in
//! causal order, holds those whose predecessors are missing, and is idempotent by event id: an
//! event that also arrives through Kafka is applied once.
//!
//! Per page: read (which of its events are stored, held or set aside here), decide (the rest are
//! lacking), apply them; the cursor (`replication_cursors`) advances only after that, so a crash
//! re-reads a page and never skips one. The peer's route only returns settled events, so its
//! cursor never passes an event that may still commit there. A peer that is down or answers
//! nonsense is logged and tried again next interval; it never stops the node.

use crate::remote::{self, Held};
use crate::telemetry::metric;
use ledger_core::RegionId;
use serde::Deserialize;
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A peer request that takes longer is abandoned and the peer tried again next interval.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most pages read from one peer in one interval, so one peer far behind cannot starve the others:
/// 100 pages of 1,000 events.
const PAGES_PER_INTERVAL_MAX: usize = 100;
/// Most characters of a peer's error body kept in a log line.
const ERROR_BODY_CHARS_MAX: usize = 300;

/// Repair-task settings.
#[derive(Debug, Clone)]
pub struct AntiEntropyConfig {
    /// This region.
    pub region: RegionId,
    /// Each peer region and its node's base URL (`http://host:port`).
    pub peers: Vec<(RegionId, String)>,
    /// The key presented to peers (it needs their `replication` scope).
    pub api_key: String,
    /// Pause between two pulls of every peer.
    pub interval: Duration,
    /// Events asked for per page.
    pub page_events: u32,
}

/// Why pulling from one peer stopped (it is tried again next interval).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The peer is unreachable, or its answer could not be read.
    #[error("peer {peer}: {source}")]
    Http {
        /// The peer region.
        peer: RegionId,
        /// What failed.
        source: reqwest::Error,
    },
    /// The peer answered something other than 200.
    #[error("peer {peer} answered {status}: {body}")]
    Status {
        /// The peer region.
        peer: RegionId,
        /// Its status code.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// The peer's page breaks the route's contract (sequence numbers out of order, a cursor
    /// going back).
    #[error("peer {peer} sent an invalid page: {detail}")]
    Contract {
        /// The peer region.
        peer: RegionId,
        /// What was wrong.
        detail: String,
    },
    /// This region's PostgreSQL.
    #[error("postgresql: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<crate::storage::StorageError> for RepairError {
    fn from(e: crate::storage::StorageError) -> Self {
        Self::Db(e.into_source())
    }
}

/// One page as the route returns it.
#[derive(Debug, Deserialize)]
struct Page {
    events: Vec<PageEvent>,
    next_after: i64,
}

#[derive(Debug, Deserialize)]
struct PageEvent {
    seq: i64,
    event: serde_json::Value,
}

/// Runs until `shutdown`; ends early only if the HTTP client cannot be built.
pub async fn run(pool: PgPool, cfg: AntiEntropyConfig, shutdown: CancellationToken) -> Result<(), reqwest::Error> {
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    for (peer, _) in &cfg.peers {
        // Registered at zero, so the series exist before the first repair.
        metrics::counter!(metric::ANTI_ENTROPY_REPAIRED, "origin" => peer.to_string()).increment(0);
    }
    let mut timer = tokio::time::interval(cfg.interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = timer.tick() => {}
        }
        for (peer, url) in &cfg.peers {
            // Cancelling mid-page is safe: a page's events commit in remote apply's transactions
            // and the cursor moves only after them.
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                pulled = pull(&pool, &client, &cfg, peer, url) => pulled,
            };
            match pulled {
                Ok(0) => {}
                Ok(repaired) => tracing::info!(origin = %peer, repaired, "anti-entropy repaired missing events"),
                Err(e) => {
                    tracing::warn!(origin = %peer, error = %e, "anti-entropy pull failed; retrying next interval")
                }
            }
        }
    }
}

/// Pages through `peer`'s own events after this region's cursor; returns how many were lacking.
async fn pull(
    pool: &PgPool,
    client: &reqwest::Client,
    cfg: &AntiEntropyConfig,
    peer: &RegionId,
    url: &str,
) -> Result<u64, RepairError> {
    let mut after = cursor(pool, peer).await?;
    metrics::gauge!(metric::ANTI_ENTROPY_CURSOR, "origin" => peer.to_string()).set(after as f64);
    let mut repaired = 0;
    for _ in 0..PAGES_PER_INTERVAL_MAX {
        let page = fetch(client, cfg, peer, url, after).await?;
        check_page(peer, after, &page)?;
        let full = page.events.len() == cfg.page_events as usize;
        let next_after = page.next_after;
        let lacking = lacking(pool, &cfg.region, peer, page.events).await?;
        if !lacking.is_empty() {
            let count = lacking.len() as u64;
            let applied = remote::apply(pool, &cfg.region, lacking).await?;
            remote::wake(pool, &cfg.region, applied).await?;
            metrics::counter!(metric::ANTI_ENTROPY_REPAIRED, "origin" => peer.to_string()).increment(count);
            repaired += count;
        }
        if next_after > after {
            store_cursor(pool, peer, next_after).await?;
            metrics::gauge!(metric::ANTI_ENTROPY_CURSOR, "origin" => peer.to_string()).set(next_after as f64);
            after = next_after;
        }
        // A short page: the peer has nothing more that is settled.
        if !full {
            break;
        }
    }
    Ok(repaired)
}

async fn fetch(
    client: &reqwest::Client,
    cfg: &AntiEntropyConfig,
    peer: &RegionId,
    url: &str,
    after: i64,
) -> Result<Page, RepairError> {
    let http = |source| RepairError::Http { peer: peer.clone(), source };
    let response = client
        .get(format!("{}/v1/replication/events", url.trim_end_matches('/')))
        .query(&[("origin", peer.as_str()), ("after", &after.to_string()), ("limit", &cfg.page_events.to_string())])
        .bearer_auth(&cfg.api_key)
        .send()
        .await
        .map_err(http)?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap_or_default().chars().take(ERROR_BODY_CHARS_MAX).collect();
        return Err(RepairError::Status { peer: peer.clone(), status, body });
    }
    response.json::<Page>().await.map_err(http)
}

/// The route's contract, checked on this side too: sequence numbers strictly increasing after
/// `after`, and `next_after` the last of them (or `after` for an empty page).
fn check_page(peer: &RegionId, after: i64, page: &Page) -> Result<(), RepairError> {
    let mut last = after;
    for e in &page.events {
        if e.seq <= last {
            let detail = format!("seq {} after {last}", e.seq);
            return Err(RepairError::Contract { peer: peer.clone(), detail });
        }
        last = e.seq;
    }
    if page.next_after != last {
        let detail = format!("next_after {} but the last seq is {last}", page.next_after);
        return Err(RepairError::Contract { peer: peer.clone(), detail });
    }
    Ok(())
}

/// The page's events of `origin` that this region neither stores, holds nor set aside, as events
/// to apply. One that cannot be read becomes a dead letter, as it would arriving through Kafka.
async fn lacking(
    pool: &PgPool,
    region: &RegionId,
    origin: &RegionId,
    events: Vec<PageEvent>,
) -> Result<Vec<Held>, sqlx::Error> {
    let mut candidates = Vec::with_capacity(events.len());
    for PageEvent { seq, event } in events {
        match Held::parse(event.clone()) {
            Ok(held) if held.event.origin_region == *origin && held.event.origin_region != *region => {
                candidates.push(held)
            }
            Ok(held) => tracing::warn!(
                event_id = %held.event.event_id, origin = %held.event.origin_region, peer = %origin,
                "anti-entropy: a peer sent an event of another origin; ignored"
            ),
            Err(reason) => dead_letter(pool, &format!("anti-entropy:{origin}@{seq}"), &event, &reason).await?,
        }
    }
    let ids: Vec<uuid::Uuid> = candidates.iter().map(|h| h.event.event_id).collect();
    let missing: HashSet<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM UNNEST($1::uuid[]) AS u(id)
         WHERE NOT EXISTS (SELECT 1 FROM ledger_events e WHERE e.event_id = u.id)
           AND NOT EXISTS (SELECT 1 FROM pending_events p WHERE p.event_id = u.id)
           AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = u.id)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    Ok(candidates.into_iter().filter(|h| missing.contains(&h.event.event_id)).collect())
}

/// Sets aside an event a peer sent that is not a ledger event this version can read.
async fn dead_letter(pool: &PgPool, source: &str, raw: &serde_json::Value, reason: &str) -> Result<(), sqlx::Error> {
    tracing::error!(%source, %reason, "anti-entropy: an unreadable event: dead letter");
    metrics::counter!(metric::DEAD_LETTERS).increment(1);
    sqlx::query(
        "INSERT INTO dead_letters (source, payload, reason) VALUES ($1, $2, $3)
         ON CONFLICT (source) WHERE event_id IS NULL DO NOTHING",
    )
    .bind(source)
    .bind(serde_json::to_vec(raw).unwrap_or_default())
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// The peer `seq` this region has read `origin` up to (0: nothing yet).
async fn cursor(pool: &PgPool, origin: &RegionId) -> Result<i64, sqlx::Error> {
    let after: Option<i64> = sqlx::query_scalar("SELECT after_seq FROM replication_cursors WHERE origin = $1")
        .bind(origin.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(after.unwrap_or(0))
}

async fn store_cursor(pool: &PgPool, origin: &RegionId, after: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO replication_cursors (origin, after_seq) VALUES ($1, $2)
         ON CONFLICT (origin) DO UPDATE SET after_seq = EXCLUDED.after_seq, updated_at = now()",
    )
    .bind(origin.as_str())
    .bind(after)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: &[i64], next_after: i64) -> Page {
        Page { events: seqs.iter().map(|&seq| PageEvent { seq, event: serde_json::Value::Null }).collect(), next_after }
    }

    #[test]
    fn a_page_out_of_order_or_with_a_wrong_cursor_is_refused() {
        let peer = RegionId::new("eu-west").unwrap();
        assert!(check_page(&peer, 5, &page(&[6, 9, 12], 12)).is_ok());
        assert!(check_page(&peer, 5, &page(&[], 5)).is_ok());
        assert!(check_page(&peer, 5, &page(&[5, 6], 6)).is_err(), "not after the cursor");
        assert!(check_page(&peer, 5, &page(&[7, 6], 7)).is_err(), "out of order");
        assert!(check_page(&peer, 5, &page(&[6, 7], 9)).is_err(), "next_after past the page");
        assert!(check_page(&peer, 5, &page(&[], 3)).is_err(), "cursor going back");
    }
}
