//! Exports for auditors: every case and the whole trail as CSV, and the trail a page at a time.

use crate::store;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sqlx::{PgPool, Row};

/// Rows read per query while exporting.
const EXPORT_PAGE: i64 = 1_000;

/// A page of the trail after `after`, and the next cursor.
pub async fn trail_page(pool: &PgPool, after: i64, limit: i64) -> Result<(Vec<Value>, Option<i64>), sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let entries = rows.iter().map(store::audit_json).collect::<Result<Vec<_>, _>>()?;
    let next = (rows.len() as i64 == limit).then(|| entries.last().and_then(|e| e["seq"].as_i64())).flatten();
    Ok((entries, next))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every case as CSV.
pub async fn cases_csv(pool: &PgPool) -> Result<Vec<u8>, sqlx::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "id",
        "state",
        "kind",
        "account",
        "regions",
        "amount_at_risk",
        "opened_at",
        "resolved_at",
        "closed_reason",
        "superseded_by",
    ];
    w.write_record(header).ok();
    let mut cursor = 0i64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, id, state, kind, account, amount_at_risk, opened_at, resolved_at, closed_reason, superseded_by,
                    ARRAY(SELECT region FROM sightings s WHERE s.case_id = c.id ORDER BY region) AS regions
             FROM cases c WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(cursor)
        .bind(EXPORT_PAGE)
        .fetch_all(pool)
        .await?;
        for r in &rows {
            let at = |c: &str| -> Result<String, sqlx::Error> {
                Ok(r.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(c)?
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default())
            };
            w.write_record([
                r.try_get::<uuid::Uuid, _>("id")?.to_string(),
                r.try_get("state")?,
                r.try_get("kind")?,
                r.try_get("account")?,
                r.try_get::<Vec<String>, _>("regions")?.join(" "),
                r.try_get::<i64, _>("amount_at_risk")?.to_string(),
                at("opened_at")?,
                at("resolved_at")?,
                r.try_get::<Option<String>, _>("closed_reason")?.unwrap_or_default(),
                r.try_get::<Option<uuid::Uuid>, _>("superseded_by")?.map(|u| u.to_string()).unwrap_or_default(),
            ])
            .ok();
            cursor = r.try_get("seq")?;
        }
        if (rows.len() as i64) < EXPORT_PAGE {
            break;
        }
    }
    Ok(w.into_inner().unwrap_or_default())
}

/// The whole trail as CSV, with each entry's hash, so an auditor can recompute the chain offline.
pub async fn audit_csv(pool: &PgPool) -> Result<Vec<u8>, sqlx::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["seq", "at", "actor", "action", "case_id", "proposal_id", "reason", "before", "after", "hash"])
        .ok();
    let mut after = 0;
    loop {
        let (entries, next) = trail_page(pool, after, EXPORT_PAGE).await?;
        for e in &entries {
            let fields: Vec<String> =
                ["seq", "at", "actor", "action", "case_id", "proposal_id", "reason", "before", "after", "hash"]
                    .iter()
                    .map(|k| text(&e[*k]))
                    .collect();
            w.write_record(fields).ok();
        }
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    Ok(w.into_inner().unwrap_or_default())
}

/// A CSV download.
pub fn csv_response(name: &str, body: Vec<u8>) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
