//! Intake: every region's `ledger.conflicts` (read_committed; the offset is committed only after
//! the report is stored, and storing is idempotent, so a crash or lost offsets replay reports
//! without doubling a case), a periodic backfill from every region's `GET /v1/conflicts` (what a
//! topic's retention dropped, or a service started late), and enrichment: the transfers each case
//! names, fetched from a region that saw it.

use crate::config::RegionEndpoint;
use crate::regions::{Answer, Regions};
use crate::store::{self, Detected};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Transfers fetched per case: an episode on a hot account can name thousands; the case page shows
/// the first ones and says how many there are. The regions list as many (the first by event id)
/// with each conflict, in `GET /v1/conflicts` and `GET /v1/conflicts/{id}` alike.
pub const BRANCHES_MAX: usize = 100;
/// Cases enriched per pass.
const ENRICH_BATCH: i64 = 20;

/// Stores one record of a region's `ledger.conflicts`, by its `event-type` header.
pub async fn store_record(pool: &PgPool, region: &str, event_type: &str, payload: &Value) -> Result<(), sqlx::Error> {
    match event_type {
        "conflict.superseded" => {
            let (Some(old), Some(new)) = (
                payload["conflict_id"].as_str().and_then(|s| s.parse().ok()),
                payload["superseded_by"].as_str().and_then(|s| s.parse().ok()),
            ) else {
                tracing::warn!(%payload, "a superseded record without ids; skipped");
                return Ok(());
            };
            store::record_superseded(pool, old, new, region).await
        }
        "conflict.resolved" => {
            if let Some(id) = payload["conflict_id"].as_str().and_then(|s| s.parse().ok()) {
                store::record_region_status(pool, id, region, "resolved").await?;
            }
            Ok(())
        }
        _ => match Detected::parse(payload, region) {
            Some(d) => store::record_detected(pool, &d).await,
            None => {
                tracing::warn!(%payload, "not a conflict record; skipped");
                Ok(())
            }
        },
    }
}

/// Consumes one region's conflicts until cancelled.
pub async fn consume(
    pool: PgPool,
    region: String,
    bootstrap: String,
    topic: String,
    group: String,
    stop: CancellationToken,
) -> Result<(), rdkafka::error::KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[&topic])?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%region, error = %e, "conflicts consumer");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let event_type = message
            .headers()
            .and_then(|h| {
                use rdkafka::message::Headers;
                h.iter()
                    .find(|h| h.key == "event-type")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_else(|| "conflict.detected".into());
        let payload: Value = message.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null);
        // Stored before the offset moves; a failure retries the same record.
        loop {
            match store_record(&pool, &region, &event_type, &payload).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(%region, error = %e, "storing a conflict report; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        fail::fail_point!("reconcile-intake-before-commit");
        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(%region, error = %e, "offset commit (the report may be read again, harmlessly)");
        }
    }
}

/// One backfill pass over every region: pages of `GET /v1/conflicts` after the stored cursor.
pub async fn backfill_once(pool: &PgPool, regions: &Regions, page: u32) -> Result<usize, sqlx::Error> {
    let mut stored = 0;
    for endpoint in &regions.endpoints {
        let mut after: i64 = sqlx::query_scalar("SELECT after FROM backfill_cursors WHERE region = $1")
            .bind(&endpoint.name)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0);
        loop {
            let answer = regions.get(endpoint, &format!("/v1/conflicts?after={after}&limit={page}")).await;
            let Answer::Ok(_, body) = answer else {
                tracing::debug!(region = %endpoint.name, ?answer, "backfill: region unavailable");
                break;
            };
            for c in body["conflicts"].as_array().into_iter().flatten() {
                if let Some(d) = Detected::parse(c, &endpoint.name) {
                    store::record_detected(pool, &d).await?;
                    stored += 1;
                }
            }
            // A partial last page names no cursor: the next pass reads it again (idempotently).
            let Some(next) = body["next"].as_str().and_then(|n| n.parse::<i64>().ok()) else { break };
            after = next;
            sqlx::query(
                "INSERT INTO backfill_cursors (region, after) VALUES ($1, $2)
                 ON CONFLICT (region) DO UPDATE SET after = GREATEST(backfill_cursors.after, $2)",
            )
            .bind(&endpoint.name)
            .bind(after)
            .execute(pool)
            .await?;
        }
    }
    Ok(stored)
}

/// A conflict as a region records it (`GET /v1/conflicts/{id}`: its first `BRANCHES_MAX` events
/// described), or `None` while that region has not detected it or cannot be reached.
pub async fn find_conflict(regions: &Regions, endpoint: &RegionEndpoint, id: uuid::Uuid) -> Option<Value> {
    match regions.get(endpoint, &format!("/v1/conflicts/{id}")).await {
        Answer::Ok(_, body) if body["conflict_id"] == json!(id) => Some(body),
        _ => None,
    }
}

/// The conflict in `region`, if it is there of the case's kind (a region that still has it as
/// another kind has not applied the whole episode yet).
async fn lookup(regions: &Regions, region: &str, id: uuid::Uuid, kind: &str) -> Option<Value> {
    let endpoint = regions.endpoint(region)?;
    find_conflict(regions, endpoint, id).await.filter(|c| c["kind"] == kind)
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One branch of a case from a described conflict event: a transfer (id, accounts, amount) or an
/// opening (the definition it proposed), with the region that accepted it and its vector.
pub fn branch(e: &Value) -> Value {
    let mut b = json!({"event_id": e["event_id"], "region": e["region"], "vector": e["vector"]});
    if let Value::Object(t) = &e["transfer"] {
        b["kind"] = json!("transfer");
        for (k, v) in t {
            b[if k == "occurred_at" { "created_at" } else { k.as_str() }] = v.clone();
        }
    } else if let Value::Object(o) = &e["opening"] {
        b["kind"] = json!("opening");
        b["id"] = e["event_id"].clone();
        b["currency"] = o.get("currency").cloned().unwrap_or(Value::Null);
        b["allow_negative"] = o.get("allow_negative").cloned().unwrap_or(Value::Null);
        b["created_at"] = o.get("occurred_at").cloned().unwrap_or(Value::Null);
    } else {
        b["id"] = e["event_id"].clone();
    }
    b
}

/// Fetches the branches of cases that lack them: the conflict as a region that saw it lists it,
/// each event described. Returns how many cases were filled.
pub async fn enrich_once(pool: &PgPool, regions: &Regions) -> Result<usize, sqlx::Error> {
    let mut filled = 0;
    for case in store::cases_to_enrich(pool, ENRICH_BATCH).await? {
        let (id, kind) = (case.id, &case.kind);
        for region in &case.seen_in {
            let Some(conflict) = lookup(regions, region, id, kind).await else { continue };
            if case.event_count.is_some() && conflict["event_count"].as_i64() != case.event_count {
                // This region is still applying the episode (or is past the report): another
                // region, or the next pass.
                continue;
            }
            let events: Vec<Value> = conflict["events"].as_array().cloned().unwrap_or_default();
            let branches: Vec<Value> = events.iter().take(BRANCHES_MAX).map(branch).collect();
            let amounts: Vec<i64> = branches.iter().filter_map(|b| b["amount"].as_i64()).collect();
            let at_risk = match kind.as_str() {
                // Every execution of a key but one moved money the client meant to move once.
                "duplicate-intent" => amounts.iter().skip(1).fold(0i64, |acc, a| acc.saturating_add(*a)),
                _ => 0,
            };
            if store::set_branches(pool, &case, &Value::Array(events), &Value::Array(branches), at_risk).await? {
                filled += 1;
            }
            break;
        }
    }
    Ok(filled)
}
