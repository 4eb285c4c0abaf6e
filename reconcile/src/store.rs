//! Cases and proposals in the service's database. Every change of a case or a proposal and its
//! audit entry commit in one transaction, under a lock on the case row, so the trail never misses
//! or invents a step and two people acting at once are serialized. The rules of each move are
//! [`crate::case`]'s; this module only loads, applies and writes.

use crate::audit::{self, Record};
use crate::auth::Principal;
use crate::case::{self, CaseState, Refusal};
use crate::problem::Problem;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};

/// The written policy that closes aggregated `concurrent-benign` records.
pub const BENIGN_POLICY: &str = "Policy REC-1: concurrent updates that together kept every balance within its rules \
     (no overdraft, no duplicate, one definition) need no correction; the case is closed without a posting and stays \
     listed for review.";

/// The actor of intake's entries in the trail.
pub const INTAKE_ACTOR: &str = "system:intake";
/// The actor of the executor's entries in the trail.
pub const EXECUTOR_ACTOR: &str = "system:executor";

/// A conflict as a region reports it (on `ledger.conflicts` or from `GET /v1/conflicts`).
#[derive(Debug, Clone)]
pub struct Detected {
    /// The conflict id (the case id).
    pub conflict_id: uuid::Uuid,
    /// Its kind.
    pub kind: String,
    /// The account.
    pub account: String,
    /// `{events, event_count, joint_vector, joint_balance}`.
    pub content: Value,
    /// The reporting region.
    pub region: String,
    /// When the region detected it, if it said.
    pub detected_at: Option<DateTime<Utc>>,
    /// The region's status of it, if it said.
    pub status: Option<String>,
}

const KINDS: [&str; 5] =
    ["overdraft", "duplicate-intent", "account-definition", "concurrent-benign", "pending-settlement"];

impl Detected {
    /// Reads a report: the fields every source has; `None` when it is not a conflict record.
    pub fn parse(v: &Value, region: &str) -> Option<Self> {
        let kind = v["kind"].as_str().filter(|k| KINDS.contains(k))?;
        Some(Self {
            conflict_id: v["conflict_id"].as_str()?.parse().ok()?,
            kind: kind.to_owned(),
            account: v["account"].as_str()?.to_owned(),
            content: json!({
                "events": v["events"].clone(),
                "event_count": v["event_count"].clone(),
                "joint_vector": v["joint_vector"].clone(),
                "joint_balance": v["joint_balance"].clone(),
            }),
            region: region.to_owned(),
            detected_at: v["detected_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc()),
            status: v["status"].as_str().filter(|s| ["open", "resolved"].contains(s)).map(str::to_owned),
        })
    }
}

fn overdraft_at_risk(kind: &str, content: &Value) -> i64 {
    match (kind, content["joint_balance"].as_i64()) {
        ("overdraft", Some(b)) if b < 0 => b.checked_neg().unwrap_or(i64::MAX),
        _ => 0,
    }
}

fn event_ids(content: &Value) -> Vec<&str> {
    let mut ids: Vec<&str> =
        content["events"].as_array().into_iter().flatten().filter_map(|e| e["event_id"].as_str()).collect();
    ids.sort_unstable();
    ids
}

/// Serializes everything done to one case across transactions and processes.
async fn lock_case(tx: &mut PgConnection, id: uuid::Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))").bind(id).execute(&mut *tx).await?;
    Ok(())
}

/// Records a report: a new case (closed at once by the written policy when benign), or a known one
/// updated if its content changed; the region is listed among those that saw it. Idempotent: the
/// same report again changes nothing, so replays after lost offsets never double a case.
pub async fn record_detected(pool: &PgPool, d: &Detected) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_case(&mut tx, d.conflict_id).await?;
    let known = sqlx::query("SELECT kind, state, conflict FROM cases WHERE id = $1")
        .bind(d.conflict_id)
        .fetch_optional(&mut *tx)
        .await?;
    let benign = d.kind == "concurrent-benign";
    match known {
        None => {
            let state = if benign { CaseState::Closed } else { CaseState::Open };
            sqlx::query(
                "INSERT INTO cases (id, kind, account, state, conflict, amount_at_risk, closed_reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(d.conflict_id)
            .bind(&d.kind)
            .bind(&d.account)
            .bind(state.as_str())
            .bind(&d.content)
            .bind(overdraft_at_risk(&d.kind, &d.content))
            .bind(benign.then_some(BENIGN_POLICY))
            .execute(&mut *tx)
            .await?;
            let after = json!({"state": state.as_str(), "kind": d.kind, "account": d.account, "conflict": d.content, "region": d.region});
            let action = if benign { "case.closed-by-policy" } else { "case.opened" };
            let reason = benign.then_some(BENIGN_POLICY);
            audit::append(
                &mut tx,
                Record {
                    actor: INTAKE_ACTOR,
                    action,
                    case_id: Some(d.conflict_id),
                    reason,
                    after: Some(after),
                    ..Default::default()
                },
            )
            .await?;
        }
        Some(row) => {
            let (kind, state, conflict): (String, String, Value) =
                (row.try_get("kind")?, row.try_get("state")?, row.try_get("conflict")?);
            let state = CaseState::parse(&state).unwrap_or(CaseState::Open);
            // An episode only grows, so a report naming fewer events than the case holds comes from a
            // region that has not applied them all yet: it is stale, and only its sighting counts
            // (otherwise the case would flap between benign and overdraft while regions converge).
            // Events are compared by id: a Kafka record names them, GET /v1/conflicts also says
            // what each did.
            let count = |c: &Value| c["event_count"].as_i64().unwrap_or(0);
            let listed = event_ids(&d.content);
            let changed = count(&d.content) > count(&conflict)
                || (count(&d.content) == count(&conflict)
                    && (kind != d.kind
                        || conflict["joint_balance"] != d.content["joint_balance"]
                        || (!listed.is_empty() && listed != event_ids(&conflict))));
            if changed {
                let next = case::reported_again(state, benign);
                // Only what regions publish is kept: an episode's members come from GET
                // /v1/conflicts, and a Kafka record (which does not list them) must not erase them.
                let mut content = d.content.clone();
                if content["events"].as_array().is_none_or(|e| e.is_empty()) {
                    content["events"] = conflict["events"].clone();
                }
                sqlx::query(
                    "UPDATE cases SET kind = $2, state = $3, conflict = $4, branches = NULL,
                         amount_at_risk = GREATEST(amount_at_risk, $5), updated_at = now(),
                         closed_reason = CASE WHEN $3 = 'closed' THEN $6 END
                     WHERE id = $1",
                )
                .bind(d.conflict_id)
                .bind(&d.kind)
                .bind(next.as_str())
                .bind(&content)
                .bind(overdraft_at_risk(&d.kind, &d.content))
                .bind(BENIGN_POLICY)
                .execute(&mut *tx)
                .await?;
                audit::append(
                    &mut tx,
                    Record {
                        actor: INTAKE_ACTOR,
                        action: "case.updated",
                        case_id: Some(d.conflict_id),
                        before: Some(json!({"state": state.as_str(), "kind": kind, "conflict": conflict})),
                        after: Some(
                            json!({"state": next.as_str(), "kind": d.kind, "conflict": content, "region": d.region}),
                        ),
                        ..Default::default()
                    },
                )
                .await?;
            }
        }
    }
    sqlx::query(
        "INSERT INTO sightings (case_id, region, detected_at, status) VALUES ($1, $2, $3, COALESCE($4, 'open'))
         ON CONFLICT (case_id, region) DO UPDATE SET
             detected_at = COALESCE(sightings.detected_at, EXCLUDED.detected_at),
             status = COALESCE($4, sightings.status)",
    )
    .bind(d.conflict_id)
    .bind(&d.region)
    .bind(d.detected_at)
    .bind(&d.status)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A region merged the episode `old` into `new`: the old case, if no one is acting on it, becomes
/// a pointer to the new one (kept and listed, never deleted).
pub async fn record_superseded(
    pool: &PgPool,
    old: uuid::Uuid,
    new: uuid::Uuid,
    region: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_case(&mut tx, old).await?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM cases WHERE id = $1").bind(old).fetch_optional(&mut *tx).await?;
    let Some(state) = state.and_then(|s| CaseState::parse(&s)) else { return tx.commit().await };
    let next = case::superseded(state);
    if next != state {
        sqlx::query("UPDATE cases SET state = $2, superseded_by = $3, updated_at = now() WHERE id = $1")
            .bind(old)
            .bind(next.as_str())
            .bind(new)
            .execute(&mut *tx)
            .await?;
        // A live proposal dies with the case it was for.
        sqlx::query(
            "UPDATE proposals SET state = 'rejected', rejected_by = $2, rejection_reason = $3, decided_at = now()
                     WHERE case_id = $1 AND state = 'proposed'",
        )
        .bind(old)
        .bind(INTAKE_ACTOR)
        .bind(format!("the episode was merged into case {new}"))
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            Record {
                actor: INTAKE_ACTOR,
                action: "case.superseded",
                case_id: Some(old),
                before: Some(json!({"state": state.as_str()})),
                after: Some(json!({"state": next.as_str(), "superseded_by": new, "region": region})),
                ..Default::default()
            },
        )
        .await?;
    }
    tx.commit().await
}

/// A region's own status of a conflict, as it reported it.
pub async fn record_region_status(
    pool: &PgPool,
    id: uuid::Uuid,
    region: &str,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sightings (case_id, region, status) SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM cases WHERE id = $1)
         ON CONFLICT (case_id, region) DO UPDATE SET status = $3",
    )
    .bind(id)
    .bind(region)
    .bind(status)
    .execute(pool)
    .await?;
    Ok(())
}

/// A case whose branches are not fetched yet (or must be fetched again).
pub struct ToEnrich {
    /// The case.
    pub id: uuid::Uuid,
    /// Its kind.
    pub kind: String,
    /// Its account.
    pub account: String,
    /// The regions that reported it, first first.
    pub seen_in: Vec<String>,
    /// How many events the case's latest report counts (when the kind counts them): branches are
    /// taken only from a region whose record counts as many, or a region still applying the
    /// episode would leave the case with part of its list for good.
    pub event_count: Option<i64>,
}

/// Cases whose branches are not fetched yet (or must be fetched again), oldest first.
pub async fn cases_to_enrich(pool: &PgPool, limit: i64) -> Result<Vec<ToEnrich>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.id, c.kind, c.account, ARRAY(SELECT region FROM sightings s WHERE s.case_id = c.id ORDER BY first_seen_at) AS regions,
                CASE WHEN jsonb_typeof(c.conflict -> 'event_count') = 'number' THEN (c.conflict ->> 'event_count')::bigint END AS event_count
         FROM cases c WHERE c.branches IS NULL AND c.state NOT IN ('superseded') ORDER BY c.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ToEnrich {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                account: r.try_get("account")?,
                seen_in: r.try_get("regions")?,
                event_count: r.try_get("event_count")?,
            })
        })
        .collect()
}

/// Stores a case's branches (the transfers or openings it names, as a region holds them) and the
/// money at risk they show, unless a report changed the case's event count meanwhile (it is
/// fetched again then). Returns whether they were stored.
pub async fn set_branches(
    pool: &PgPool,
    case: &ToEnrich,
    events: &Value,
    branches: &Value,
    amount_at_risk: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE cases SET branches = $2, amount_at_risk = GREATEST(amount_at_risk, $3),
             conflict = CASE WHEN jsonb_array_length($4) > 0 THEN jsonb_set(conflict, '{events}', $4) ELSE conflict END
         WHERE id = $1 AND (conflict ->> 'event_count') IS NOT DISTINCT FROM $5",
    )
    .bind(case.id)
    .bind(branches)
    .bind(amount_at_risk)
    .bind(events)
    .bind(case.event_count.map(|n| n.to_string()))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Filters of the queue.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    /// One state; by default every state but `superseded` (pointers to other cases).
    pub state: Option<CaseState>,
    /// One kind.
    pub kind: Option<String>,
    /// One account.
    pub account: Option<String>,
    /// Seen by this region.
    pub region: Option<String>,
    /// After this queue position (the previous page's `next`).
    pub cursor: Option<i64>,
    /// Page size.
    pub limit: i64,
}

const CASE_COLUMNS: &str =
    "c.id, c.kind, c.account, c.state, c.conflict, c.branches, c.amount_at_risk, c.opened_at, c.updated_at,
     c.resolved_at, c.closed_reason, c.superseded_by, c.seq,
     ARRAY(SELECT region FROM sightings s WHERE s.case_id = c.id ORDER BY s.first_seen_at, s.region) AS regions,
     ARRAY(SELECT o.id FROM cases o WHERE o.superseded_by = c.id ORDER BY o.seq) AS merged";

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn case_json(r: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let id: uuid::Uuid = r.try_get("id")?;
    let mut conflict_ids = vec![id];
    conflict_ids.extend(r.try_get::<Vec<uuid::Uuid>, _>("merged")?);
    Ok(json!({
        "id": id,
        "state": r.try_get::<String, _>("state")?,
        "kind": r.try_get::<String, _>("kind")?,
        "accounts": [r.try_get::<String, _>("account")?],
        "conflict_ids": conflict_ids,
        "regions": r.try_get::<Vec<String>, _>("regions")?,
        "opened_at": rfc3339(&r.try_get("opened_at")?),
        "updated_at": rfc3339(&r.try_get("updated_at")?),
        "resolved_at": r.try_get::<Option<DateTime<Utc>>, _>("resolved_at")?.as_ref().map(rfc3339),
        "amount_at_risk": r.try_get::<i64, _>("amount_at_risk")?,
        "closed_reason": r.try_get::<Option<String>, _>("closed_reason")?,
        "superseded_by": r.try_get::<Option<uuid::Uuid>, _>("superseded_by")?,
    }))
}

/// One page of the queue, oldest first, and the cursor of the next page.
pub async fn list(pool: &PgPool, f: &CaseFilter) -> Result<(Vec<Value>, Option<String>), sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CASE_COLUMNS} FROM cases c
         WHERE c.seq > $1 AND (($2::text IS NULL AND c.state <> 'superseded') OR c.state = $2)
           AND ($3::text IS NULL OR c.kind = $3) AND ($4::text IS NULL OR c.account = $4)
           AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM sightings s WHERE s.case_id = c.id AND s.region = $5))
         ORDER BY c.seq LIMIT $6"
    )))
    .bind(f.cursor.unwrap_or(0))
    .bind(f.state.map(CaseState::as_str))
    .bind(&f.kind)
    .bind(&f.account)
    .bind(&f.region)
    .bind(f.limit)
    .fetch_all(pool)
    .await?;
    let next =
        (rows.len() as i64 == f.limit).then(|| rows.last().map(|r| r.get::<i64, _>("seq").to_string())).flatten();
    let cases = rows.iter().map(case_json).collect::<Result<Vec<_>, _>>()?;
    Ok((cases, next))
}

/// Open cases (not resolved, closed or superseded) by kind and by age band, for the queue's counts.
pub async fn open_counts(pool: &PgPool) -> Result<Vec<(String, i64, i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind,
                count(*) FILTER (WHERE opened_at > now() - interval '1 hour') AS fresh,
                count(*) FILTER (WHERE opened_at <= now() - interval '1 hour' AND opened_at > now() - interval '1 day') AS day,
                count(*) FILTER (WHERE opened_at <= now() - interval '1 day') AS older
         FROM cases WHERE state IN ('open', 'proposed', 'approved', 'executing') GROUP BY kind ORDER BY kind",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| Ok((r.try_get("kind")?, r.try_get("fresh")?, r.try_get("day")?, r.try_get("older")?))).collect()
}

/// One proposal, as the API shows it.
fn proposal_json(r: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "id": r.try_get::<uuid::Uuid, _>("id")?,
        "case_id": r.try_get::<uuid::Uuid, _>("case_id")?,
        "action": r.try_get::<String, _>("action")?,
        "params": r.try_get::<Value, _>("params")?,
        "amount": r.try_get::<i64, _>("amount")?,
        "reason": r.try_get::<String, _>("reason")?,
        "state": r.try_get::<String, _>("state")?,
        "proposed_by": r.try_get::<String, _>("proposed_by")?,
        "proposed_at": rfc3339(&r.try_get("proposed_at")?),
        "approvals_needed": r.try_get::<i32, _>("approvals_needed")?,
        "approved_by": r.try_get::<Vec<String>, _>("approved_by")?,
        "decided_at": r.try_get::<Option<DateTime<Utc>>, _>("decided_at")?.as_ref().map(rfc3339),
        "rejected_by": r.try_get::<Option<String>, _>("rejected_by")?,
        "rejection_reason": r.try_get::<Option<String>, _>("rejection_reason")?,
        "posting_region": r.try_get::<Option<String>, _>("posting_region")?,
        "transfer": r.try_get::<Option<Value>, _>("transfer")?,
        "failure": r.try_get::<Option<String>, _>("failure")?,
    }))
}

/// An audit entry, as the API shows it.
pub fn audit_json(r: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "seq": r.try_get::<i64, _>("seq")?,
        "at": rfc3339(&r.try_get("at")?),
        "actor": r.try_get::<String, _>("actor")?,
        "action": r.try_get::<String, _>("action")?,
        "case_id": r.try_get::<Option<uuid::Uuid>, _>("case_id")?,
        "proposal_id": r.try_get::<Option<uuid::Uuid>, _>("proposal_id")?,
        "reason": r.try_get::<Option<String>, _>("reason")?,
        "before": r.try_get::<Option<Value>, _>("before")?,
        "after": r.try_get::<Option<Value>, _>("after")?,
        "hash": r.try_get::<String, _>("hash")?,
    }))
}

/// A case with its branches, where and when each region saw it, its proposals and its trail.
pub async fn get(pool: &PgPool, id: uuid::Uuid) -> Result<Option<Value>, sqlx::Error> {
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {CASE_COLUMNS} FROM cases c WHERE c.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let mut case = case_json(&row)?;
    case["conflict"] = row.try_get("conflict")?;
    case["branches"] = row.try_get::<Option<Value>, _>("branches")?.unwrap_or(Value::Null);
    let sightings = sqlx::query(
        "SELECT region, first_seen_at, detected_at, status FROM sightings WHERE case_id = $1 ORDER BY first_seen_at, region",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    case["sightings"] = sightings
        .iter()
        .map(|s| {
            Ok(json!({
                "region": s.try_get::<String, _>("region")?,
                "first_seen_at": rfc3339(&s.try_get("first_seen_at")?),
                "detected_at": s.try_get::<Option<DateTime<Utc>>, _>("detected_at")?.as_ref().map(rfc3339),
                "status": s.try_get::<String, _>("status")?,
            }))
        })
        .collect::<Result<Vec<Value>, sqlx::Error>>()?
        .into();
    let proposals =
        sqlx::query("SELECT * FROM proposals WHERE case_id = $1 ORDER BY proposed_at").bind(id).fetch_all(pool).await?;
    case["proposals"] = proposals.iter().map(proposal_json).collect::<Result<Vec<_>, _>>()?.into();
    let trail = sqlx::query("SELECT * FROM audit WHERE case_id = $1 ORDER BY seq").bind(id).fetch_all(pool).await?;
    case["audit"] = trail.iter().map(audit_json).collect::<Result<Vec<_>, _>>()?.into();
    Ok(Some(case))
}

/// What a proposal asks, checked for shape by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Post the opposite of one of the case's transfers.
    Reverse {
        /// The transfer to reverse.
        event_id: uuid::Uuid,
    },
    /// Move money between named accounts.
    Adjust {
        /// Debited.
        from: String,
        /// Credited.
        to: String,
        /// Minor units, 1..=AMOUNT_MAX.
        amount: i64,
        /// Its currency.
        currency: String,
    },
    /// Leave the balances as they are.
    Accept,
    /// For an account-definition case: the definition that stands.
    Define {
        /// Currency.
        currency: String,
        /// Whether the balance may go below zero.
        allow_negative: bool,
    },
}

impl Resolution {
    /// The stored action name.
    pub fn action(&self) -> &'static str {
        match self {
            Resolution::Reverse { .. } => "reverse",
            Resolution::Adjust { .. } => "adjust",
            Resolution::Accept => "accept",
            Resolution::Define { .. } => "define",
        }
    }
}

fn refusal(r: Refusal) -> Problem {
    match r {
        Refusal::MakerChecker => Problem::maker_checker(r.to_string()),
        Refusal::State(_) => Problem::invalid_state(r.to_string()),
        Refusal::AlreadyApproved(_) => {
            Problem::new(axum::http::StatusCode::CONFLICT, "already-approved", r.to_string())
        }
    }
}

/// What the compensating posting of a resolution is, given the case's branches: `(params, amount)`.
fn plan(kind: &str, branches: Option<&Value>, r: &Resolution) -> Result<(Value, i64), Problem> {
    let unfit = |what: &str| {
        Problem::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "resolution-not-applicable", what.to_owned())
    };
    match r {
        Resolution::Define { .. } | Resolution::Reverse { .. } | Resolution::Adjust { .. }
            if kind == "account-definition" =>
        {
            match r {
                Resolution::Define { currency, allow_negative } => {
                    Ok((json!({"currency": currency, "allow_negative": allow_negative}), 0))
                }
                _ => Err(unfit(
                    "an account-definition case is resolved by choosing the definition that stands (define) or accepting",
                )),
            }
        }
        Resolution::Define { .. } => Err(unfit("only an account-definition case chooses a definition")),
        Resolution::Accept => Ok((json!({}), 0)),
        Resolution::Adjust { from, to, amount, currency } => {
            Ok((json!({"from": from, "to": to, "amount": amount, "currency": currency}), *amount))
        }
        Resolution::Reverse { event_id } => {
            let Some(branches) = branches.and_then(Value::as_array) else {
                return Err(Problem::invalid_state(
                    "the case's transfers are still being fetched from the regions; retry shortly",
                ));
            };
            // Named by its transfer id or its event id.
            let wanted = event_id.to_string();
            let named = |b: &&Value| [&b["id"], &b["event_id"]].iter().any(|v| v.as_str() == Some(wanted.as_str()));
            let Some(t) = branches.iter().find(|b| named(b) && b["amount"].is_i64()) else {
                return Err(unfit(&format!("transfer {event_id} is not one of this case's transfers")));
            };
            let amount = t["amount"].as_i64().unwrap_or(0);
            Ok((
                json!({"event_id": t["event_id"], "transfer_id": t["id"], "from": t["to"], "to": t["from"], "amount": amount, "currency": t["currency"]}),
                amount,
            ))
        }
    }
}

/// Files a proposal on an open case.
pub async fn propose(
    pool: &PgPool,
    threshold: i64,
    case_id: uuid::Uuid,
    who: &Principal,
    r: &Resolution,
    reason: &str,
) -> Result<uuid::Uuid, Problem> {
    let mut tx = pool.begin().await?;
    lock_case(&mut tx, case_id).await?;
    let row = sqlx::query("SELECT state, kind, branches FROM cases WHERE id = $1")
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Err(Problem::not_found(format!("no case {case_id}"))) };
    let state = CaseState::parse(row.try_get("state")?).unwrap_or(CaseState::Open);
    let next = case::propose(state).map_err(refusal)?;
    let kind: String = row.try_get("kind")?;
    let branches: Option<Value> = row.try_get("branches")?;
    let (params, amount) = plan(&kind, branches.as_ref(), r)?;
    let id = uuid::Uuid::now_v7();
    let needed = case::approvals_needed(amount, threshold);
    sqlx::query(
        "INSERT INTO proposals (id, case_id, action, params, amount, reason, state, proposed_by, approvals_needed)
         VALUES ($1, $2, $3, $4, $5, $6, 'proposed', $7, $8)",
    )
    .bind(id)
    .bind(case_id)
    .bind(r.action())
    .bind(&params)
    .bind(amount)
    .bind(reason)
    .bind(&who.username)
    .bind(needed)
    .execute(&mut *tx)
    .await?;
    set_state(&mut tx, case_id, next).await?;
    audit::append(
        &mut tx,
        Record {
            actor: &who.username,
            action: "proposal.created",
            case_id: Some(case_id),
            proposal_id: Some(id),
            reason: Some(reason),
            before: Some(json!({"state": state.as_str()})),
            after: Some(
                json!({"state": next.as_str(), "action": r.action(), "params": params, "approvals_needed": needed}),
            ),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

async fn set_state(tx: &mut PgConnection, case_id: uuid::Uuid, state: CaseState) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE cases SET state = $2, updated_at = now(),
             resolved_at = CASE WHEN $2 = 'resolved' THEN now() ELSE resolved_at END WHERE id = $1",
    )
    .bind(case_id)
    .bind(state.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A proposal and its case's state, locked for a decision.
struct Loaded {
    case_id: uuid::Uuid,
    case_state: CaseState,
    proposer: String,
    approved_by: Vec<String>,
    needed: i32,
}

async fn load_proposal(tx: &mut PgConnection, id: uuid::Uuid) -> Result<Loaded, Problem> {
    let case_id: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT case_id FROM proposals WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
    let Some(case_id) = case_id else { return Err(Problem::not_found(format!("no proposal {id}"))) };
    lock_case(tx, case_id).await?;
    let r = sqlx::query(
        "SELECT p.state AS p_state, p.proposed_by, p.approved_by, p.approvals_needed, c.state AS c_state
         FROM proposals p JOIN cases c ON c.id = p.case_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let p_state: String = r.try_get("p_state")?;
    // The case's state says what is allowed; a proposal that is not the live one is not decidable.
    let case_state = if p_state == "proposed" {
        CaseState::parse(r.try_get("c_state")?).unwrap_or(CaseState::Open)
    } else {
        CaseState::parse(match p_state.as_str() {
            "approved" => "approved",
            "executing" => "executing",
            "done" => "resolved",
            _ => "open",
        })
        .unwrap_or(CaseState::Open)
    };
    Ok(Loaded {
        case_id,
        case_state,
        proposer: r.try_get("proposed_by")?,
        approved_by: r.try_get("approved_by")?,
        needed: r.try_get("approvals_needed")?,
    })
}

/// Records `who`'s approval; the proposal is approved once enough different people other than the
/// proposer approved it. Returns the case's state after.
pub async fn approve(pool: &PgPool, id: uuid::Uuid, who: &Principal) -> Result<CaseState, Problem> {
    let mut tx = pool.begin().await?;
    let p = load_proposal(&mut tx, id).await?;
    let (next, outcome) =
        case::approve(p.case_state, &p.proposer, &p.approved_by, &who.username, p.needed).map_err(refusal)?;
    let (all, complete) = match outcome {
        case::Approval::Complete(all) => (all, true),
        case::Approval::Partial(all) => (all, false),
    };
    sqlx::query(
        "UPDATE proposals SET approved_by = $2, state = CASE WHEN $3 THEN 'approved' ELSE state END,
             decided_at = CASE WHEN $3 THEN now() ELSE decided_at END WHERE id = $1",
    )
    .bind(id)
    .bind(&all)
    .bind(complete)
    .execute(&mut *tx)
    .await?;
    set_state(&mut tx, p.case_id, next).await?;
    audit::append(
        &mut tx,
        Record {
            actor: &who.username,
            action: if complete { "proposal.approved" } else { "proposal.approval-recorded" },
            case_id: Some(p.case_id),
            proposal_id: Some(id),
            before: Some(json!({"state": p.case_state.as_str(), "approved_by": p.approved_by})),
            after: Some(json!({"state": next.as_str(), "approved_by": all, "approvals_needed": p.needed})),
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(next)
}

/// Rejects a proposal: the case returns to open, the reason kept on the proposal and in the trail.
pub async fn reject(pool: &PgPool, id: uuid::Uuid, who: &Principal, reason: &str) -> Result<CaseState, Problem> {
    let mut tx = pool.begin().await?;
    let p = load_proposal(&mut tx, id).await?;
    let next = case::reject(p.case_state, &p.proposer, &who.username).map_err(refusal)?;
    sqlx::query(
        "UPDATE proposals SET state = 'rejected', rejected_by = $2, rejection_reason = $3, decided_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&who.username)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    set_state(&mut tx, p.case_id, next).await?;
    audit::append(
        &mut tx,
        Record {
            actor: &who.username,
            action: "proposal.rejected",
            case_id: Some(p.case_id),
            proposal_id: Some(id),
            reason: Some(reason),
            before: Some(json!({"state": p.case_state.as_str()})),
            after: Some(json!({"state": next.as_str()})),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(next)
}

/// Approved work for the executor.
#[derive(Debug, Clone)]
pub struct Work {
    /// The proposal.
    pub proposal_id: uuid::Uuid,
    /// Its case.
    pub case_id: uuid::Uuid,
    /// The case's kind.
    pub kind: String,
    /// The case's account.
    pub account: String,
    /// `reverse`, `adjust`, `accept` or `define`.
    pub action: String,
    /// The action's parameters.
    pub params: Value,
    /// `approved` or `executing`.
    pub state: String,
    /// The region chosen for the posting.
    pub posting_region: Option<String>,
    /// The acknowledged transfer.
    pub transfer: Option<Value>,
}

/// Approved or executing proposals, oldest decision first.
pub async fn work(pool: &PgPool, limit: i64) -> Result<Vec<Work>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.id, p.case_id, c.kind, c.account, p.action, p.params, p.state, p.posting_region, p.transfer
         FROM proposals p JOIN cases c ON c.id = p.case_id
         WHERE p.state IN ('approved', 'executing') ORDER BY p.decided_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Work {
                proposal_id: r.try_get("id")?,
                case_id: r.try_get("case_id")?,
                kind: r.try_get("kind")?,
                account: r.try_get("account")?,
                action: r.try_get("action")?,
                params: r.try_get("params")?,
                state: r.try_get("state")?,
                posting_region: r.try_get("posting_region")?,
                transfer: r.try_get("transfer")?,
            })
        })
        .collect()
}

/// One step of the executor on a proposal, with its trail entry.
async fn step(
    pool: &PgPool,
    w: &Work,
    action: &str,
    proposal_update: &'static str,
    bind: Option<Value>,
    case_state: Option<CaseState>,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_case(&mut tx, w.case_id).await?;
    let before: Option<String> =
        sqlx::query_scalar("SELECT state FROM cases WHERE id = $1").bind(w.case_id).fetch_optional(&mut *tx).await?;
    sqlx::query(proposal_update).bind(w.proposal_id).bind(&bind).execute(&mut *tx).await?;
    if let Some(s) = case_state {
        set_state(&mut tx, w.case_id, s).await?;
    }
    audit::append(
        &mut tx,
        Record {
            actor: EXECUTOR_ACTOR,
            action,
            case_id: Some(w.case_id),
            proposal_id: Some(w.proposal_id),
            reason,
            before: Some(json!({"state": before})),
            after: Some(json!({"state": case_state.map(CaseState::as_str).or(before.as_deref()), "detail": bind})),
        },
    )
    .await?;
    tx.commit().await
}

/// The executor takes an approved proposal, posting to `region`.
pub async fn start(pool: &PgPool, w: &Work, region: &str) -> Result<(), sqlx::Error> {
    step(
        pool,
        w,
        "execution.started",
        "UPDATE proposals SET state = 'executing', posting_region = $2->>'posting_region' WHERE id = $1",
        Some(json!({"posting_region": region})),
        Some(CaseState::Executing),
        None,
    )
    .await
}

/// The posting region acknowledged the compensating transfer.
pub async fn posted(pool: &PgPool, w: &Work, transfer: &Value) -> Result<(), sqlx::Error> {
    step(
        pool,
        w,
        "posting.acknowledged",
        "UPDATE proposals SET transfer = $2 WHERE id = $1",
        Some(transfer.clone()),
        None,
        None,
    )
    .await
}

/// A region refused for good: the proposal failed, the case is open again.
pub async fn failed(pool: &PgPool, w: &Work, why: &str) -> Result<(), sqlx::Error> {
    step(
        pool,
        w,
        "execution.failed",
        "UPDATE proposals SET state = 'failed', failure = $2->>'failure' WHERE id = $1",
        Some(json!({"failure": why})),
        Some(CaseState::Open),
        Some(why),
    )
    .await
}

/// Every region shows the entries and the conflict resolved.
pub async fn resolved(pool: &PgPool, w: &Work, regions: &[String]) -> Result<(), sqlx::Error> {
    step(
        pool,
        w,
        "case.resolved",
        "UPDATE proposals SET state = 'done' WHERE id = $1 AND $2::jsonb IS NOT NULL",
        Some(json!({"resolved_in": regions})),
        Some(CaseState::Resolved),
        None,
    )
    .await
}

/// The conflict ids a case's resolution must mark in every region: its own and those merged into
/// it.
pub async fn conflict_ids(pool: &PgPool, case_id: uuid::Uuid) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    let mut ids = vec![case_id];
    ids.extend(
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM cases WHERE superseded_by = $1 ORDER BY seq")
            .bind(case_id)
            .fetch_all(pool)
            .await?,
    );
    Ok(ids)
}
