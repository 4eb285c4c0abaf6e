//! The executor: carries approved proposals through, one idempotent step at a time, each step's
//! outcome stored before the next begins, so a crash anywhere resumes where it stopped and never
//! posts twice:
//!
//! 1. `approved → executing`, the posting region chosen once and stored;
//! 2. the compensating transfer posted to that region with `Idempotency-Key: reconcile-<proposal>`
//!    and metadata naming the case, retried until the region answers (a retry after a crash replays
//!    the first posting instead of making a second one);
//! 3. waiting until every region shows the transfer;
//! 4. `POST /v1/conflicts/{id}/resolve` in every region (with the chosen definition for an
//!    account-definition case);
//! 5. confirmed with `GET /v1/conflicts?status=resolved` in every region, then `resolved`.
//!
//! A final refusal (a 4xx such as insufficient funds) fails the proposal and reopens the case with
//! the region's answer; anything else is retried with backoff.

use crate::regions::{Answer, Regions};
use crate::store::{self, Work};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Proposals taken per pass.
const WORK_BATCH: i64 = 16;

/// How far one pass got with a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Done: the case is resolved.
    Resolved,
    /// A region refused for good; the case is open again.
    Failed(String),
    /// Waiting for a region (what for).
    Pending(String),
}

/// The idempotency key of a proposal's compensating transfer.
pub fn idempotency_key(proposal_id: uuid::Uuid) -> String {
    format!("reconcile-{proposal_id}")
}

fn problem_text(status: u16, body: &Value) -> String {
    let kind = body["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("error");
    format!("{status} {kind}: {}", body["detail"].as_str().unwrap_or(""))
}

/// Takes one proposal as far as it can go now.
pub async fn execute(pool: &PgPool, regions: &Regions, w: &Work) -> Result<Progress, sqlx::Error> {
    let mut w = w.clone();
    if w.state == "approved" {
        let mut chosen = None;
        for endpoint in &regions.endpoints {
            if regions.ready(endpoint).await {
                chosen = Some(endpoint.name.clone());
                break;
            }
        }
        let Some(region) = chosen else { return Ok(Progress::Pending("no region is ready".into())) };
        store::start(pool, &w, &region).await?;
        w.state = "executing".into();
        w.posting_region = Some(region);
    }
    fail::fail_point!("reconcile-before-posting");
    let posts = matches!(w.action.as_str(), "reverse" | "adjust");
    if posts && w.transfer.is_none() {
        let Some(endpoint) = w.posting_region.as_deref().and_then(|r| regions.endpoint(r)) else {
            return Ok(Progress::Pending(format!("posting region {:?} is not configured", w.posting_region)));
        };
        let body = json!({
            "from": w.params["from"],
            "to": w.params["to"],
            "amount": w.params["amount"],
            "currency": w.params["currency"],
            "metadata": {"reconcile_case": w.case_id, "reconcile_proposal": w.proposal_id, "reconcile_action": w.action},
        });
        match regions.post(endpoint, "/v1/transfers", &body, Some(&idempotency_key(w.proposal_id))).await {
            Answer::Ok(_, transfer) => {
                fail::fail_point!("reconcile-posted-before-store");
                store::posted(pool, &w, &transfer).await?;
                w.transfer = Some(transfer);
            }
            Answer::Refused(status, problem) => {
                let why = problem_text(status, &problem);
                store::failed(pool, &w, &why).await?;
                return Ok(Progress::Failed(why));
            }
            Answer::Retry(why) => return Ok(Progress::Pending(format!("posting to {}: {why}", endpoint.name))),
        }
    }
    fail::fail_point!("reconcile-after-posting");
    if let Some(id) = w.transfer.as_ref().and_then(|t| t["id"].as_str()) {
        for endpoint in &regions.endpoints {
            match regions.get(endpoint, &format!("/v1/transfers/{id}")).await {
                Answer::Ok(..) => {}
                other => {
                    return Ok(Progress::Pending(format!("transfer {id} not yet in {}: {other:?}", endpoint.name)));
                }
            }
        }
    }
    let mut resolve = json!({"case": w.case_id.to_string()});
    if w.action == "define" {
        resolve["definition"] = json!({"currency": w.params["currency"], "allow_negative": w.params["allow_negative"]});
    }
    for endpoint in &regions.endpoints {
        match regions.post(endpoint, &format!("/v1/conflicts/{}/resolve", w.case_id), &resolve, None).await {
            Answer::Ok(..) => store::record_region_status(pool, w.case_id, &endpoint.name, "resolved").await?,
            // Resolved before with another body (an earlier proposal on a case that reopened): the
            // conflict is resolved there, which is what this step needs.
            Answer::Refused(409, p)
                if p["type"].as_str().is_some_and(|t| t.ends_with("/conflict-already-resolved")) =>
            {
                store::record_region_status(pool, w.case_id, &endpoint.name, "resolved").await?
            }
            // Not detected there yet: replication will bring it.
            Answer::Refused(404, _) => {
                return Ok(Progress::Pending(format!("{} has not detected the conflict yet", endpoint.name)));
            }
            Answer::Refused(status, problem) => {
                let why = format!("{}: {}", endpoint.name, problem_text(status, &problem));
                store::failed(pool, &w, &why).await?;
                return Ok(Progress::Failed(why));
            }
            Answer::Retry(why) => return Ok(Progress::Pending(format!("resolving in {}: {why}", endpoint.name))),
        }
    }
    let mut confirmed = Vec::new();
    for endpoint in &regions.endpoints {
        let found = crate::intake::find_conflict(regions, endpoint, w.case_id).await;
        if found.is_none_or(|c| c["status"] != "resolved") {
            return Ok(Progress::Pending(format!("{} does not list the conflict resolved yet", endpoint.name)));
        }
        confirmed.push(endpoint.name.clone());
    }
    store::resolved(pool, &w, &confirmed).await?;
    Ok(Progress::Resolved)
}

/// Runs the executor until cancelled: a pass on every wake-up (an approval) or interval, each
/// waiting proposal retried after a backoff that doubles up to `retry_max`.
pub async fn run(
    pool: PgPool,
    regions: Regions,
    interval: Duration,
    retry: (Duration, Duration),
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff: HashMap<uuid::Uuid, (Instant, Duration)> = HashMap::new();
    loop {
        match store::work(&pool, WORK_BATCH).await {
            Ok(work) => {
                for w in work {
                    if backoff.get(&w.proposal_id).is_some_and(|(at, _)| Instant::now() < *at) {
                        continue;
                    }
                    match execute(&pool, &regions, &w).await {
                        Ok(Progress::Pending(why)) => {
                            let delay = backoff.get(&w.proposal_id).map_or(retry.0, |(_, d)| (*d * 2).min(retry.1));
                            tracing::info!(proposal = %w.proposal_id, %why, ?delay, "waiting");
                            backoff.insert(w.proposal_id, (Instant::now() + delay, delay));
                        }
                        Ok(done) => {
                            tracing::info!(proposal = %w.proposal_id, case = %w.case_id, ?done, "executed");
                            backoff.remove(&w.proposal_id);
                        }
                        Err(e) => tracing::warn!(proposal = %w.proposal_id, error = %e, "executor: database"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "executor: database"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
