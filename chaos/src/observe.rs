//! Reads what every region holds for a run, straight from its PostgreSQL (the source of truth the
//! API answers from), and waits until the regions agree.

use crate::history::{AccountObs, ConflictObs, Observed, RegionState, TransferObs};
use ledgerctl::Manifest;
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A region's database could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {region}'s database: {source}")]
pub struct ObserveError {
    /// The region.
    pub region: String,
    /// Why.
    pub source: sqlx::Error,
}

/// Every region's state for the accounts whose ids start with `prefix`.
pub async fn observe(manifest: &Manifest, prefix: &str) -> Result<Observed, ObserveError> {
    let mut regions = Vec::new();
    for r in &manifest.regions {
        let state = region_state(&r.postgres_url, &r.name, prefix)
            .await
            .map_err(|source| ObserveError { region: r.name.clone(), source })?;
        regions.push(state);
    }
    Ok(Observed { regions })
}

async fn region_state(url: &str, name: &str, prefix: &str) -> Result<RegionState, sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    // LIKE with the prefix escaped: run names are [a-z0-9-], but say so in the query anyway.
    let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let mut accounts = BTreeMap::new();
    for row in sqlx::query(
        "SELECT id, currency, allow_negative, balance, entry_seq, version_vector, frozen
         FROM accounts WHERE id LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(&mut conn)
    .await?
    {
        let version: BTreeMap<String, u64> = serde_json::from_value(row.try_get("version_vector")?).unwrap_or_default();
        accounts.insert(
            row.try_get::<String, _>("id")?,
            AccountObs {
                currency: row.try_get("currency")?,
                allow_negative: row.try_get("allow_negative")?,
                balance: row.try_get("balance")?,
                entry_seq: row.try_get("entry_seq")?,
                version,
                frozen: row.try_get("frozen")?,
            },
        );
    }
    let mut transfers = Vec::new();
    for row in sqlx::query(
        "SELECT id, idempotency_key, from_account, to_account, amount, currency, origin_region
         FROM transfers WHERE from_account LIKE $1 OR to_account LIKE $1 ORDER BY id",
    )
    .bind(&pattern)
    .fetch_all(&mut conn)
    .await?
    {
        transfers.push(TransferObs {
            id: row.try_get("id")?,
            // The node namespaces a key by the API key that sent it (`<hash>:<key>`): the
            // client's key is what follows the first colon.
            key: row
                .try_get::<Option<String>, _>("idempotency_key")?
                .map(|k| k.split_once(':').map(|(_, client)| client.to_owned()).unwrap_or(k)),
            from: row.try_get("from_account")?,
            to: row.try_get("to_account")?,
            amount: row.try_get("amount")?,
            currency: row.try_get("currency")?,
            origin_region: row.try_get("origin_region")?,
        });
    }
    let mut conflicts = Vec::new();
    for row in sqlx::query(
        "SELECT conflict_id, kind, account_id, status, event_count FROM conflicts
         WHERE account_id LIKE $1 ORDER BY conflict_id",
    )
    .bind(&pattern)
    .fetch_all(&mut conn)
    .await?
    {
        conflicts.push(ConflictObs {
            id: row.try_get("conflict_id")?,
            kind: row.try_get("kind")?,
            account: row.try_get("account_id")?,
            status: row.try_get("status")?,
            event_count: row.try_get("event_count")?,
        });
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_events").fetch_one(&mut conn).await?;
    let _ = conn.close().await;
    Ok(RegionState { name: name.to_owned(), accounts, transfers, conflicts, pending_events: pending as u64 })
}

/// True when every region holds the same thing: accounts, transfers, conflicts, nothing pending.
pub fn converged(o: &Observed) -> bool {
    let Some(first) = o.regions.first() else { return true };
    o.regions.iter().all(|r| {
        r.pending_events == 0
            && r.accounts == first.accounts
            && r.conflicts == first.conflicts
            && r.transfers.iter().map(|t| t.id).eq(first.transfers.iter().map(|t| t.id))
    })
}

/// Observes until the regions agree or `timeout` passes; returns the last observation and how
/// long convergence took (`None`: it did not, within the timeout).
pub async fn until_converged(
    manifest: &Manifest,
    prefix: &str,
    timeout: Duration,
) -> Result<(Observed, Option<Duration>), ObserveError> {
    let started = Instant::now();
    loop {
        // A database restarting right after healing refuses for a moment: retry until the end.
        match observe(manifest, prefix).await {
            Ok(o) if converged(&o) => {
                // Twice in a row, a second apart: a quiet moment between two batches is not the end.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let again = observe(manifest, prefix).await?;
                if again == o {
                    return Ok((again, Some(started.elapsed())));
                }
            }
            Ok(o) if started.elapsed() > timeout => return Ok((o, None)),
            Err(e) if started.elapsed() > timeout => return Err(e),
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
