//! The health checks: one task per region polls its node's `GET /readyz` every
//! `health_interval_ms` and feeds the result (200 within `health_timeout_ms`, or not) to the
//! region's [`Tracker`](crate::health::Tracker). Each check opens a new connection, as Route 53's
//! checkers do: a pooled connection could outlive the listener that accepted it and keep a dead
//! node looking alive.

use crate::App;
use crate::health::State;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most bytes of a `/readyz` body read before the connection is dropped: the answer is the status;
/// the body is drained only so the node sees a clean end.
const READYZ_BODY_BYTES_MAX: usize = 64 * 1024;

/// Polls region `index` until `shutdown`.
pub(crate) async fn run(app: Arc<App>, index: usize, shutdown: CancellationToken) {
    let cfg = &app.plan.config;
    let (interval, timeout) =
        (Duration::from_millis(cfg.health_interval_ms), Duration::from_millis(cfg.health_timeout_ms));
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
    let url: hyper::Uri = match format!("{}/readyz", app.plan.upstreams[index].base).parse() {
        Ok(url) => url,
        Err(e) => {
            // The configuration check parsed the same base; this cannot happen, but never panic.
            tracing::error!(error = %e, "unusable region url; the region stays out");
            return;
        }
    };
    let mut ticks = tokio::time::interval(interval);
    // A check that took long delays the next one rather than firing a burst to catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = tokio::time::timeout(timeout, check(&client, url.clone())) => outcome,
        };
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
        };
        record(&app, index, failure);
    }
}

/// One check: `Ok` for a 200.
async fn check(client: &Client<HttpConnector, Empty<Bytes>>, url: hyper::Uri) -> Result<(), String> {
    let response = client.get(url).await.map_err(|e| match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    })?;
    let status = response.status();
    let _ = http_body_util::Limited::new(response.into_body(), READYZ_BODY_BYTES_MAX).collect().await;
    if status == hyper::StatusCode::OK { Ok(()) } else { Err(format!("/readyz answered {}", status.as_u16())) }
}

/// Feeds one result to the region's tracker and publishes a change.
fn record(app: &App, index: usize, failure: Option<String>) {
    let region = &app.regions[index];
    let name = &app.plan.upstreams[index].name;
    let change = {
        let mut checked = region.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.checks = checked.checks.saturating_add(1);
        let change = checked.tracker.observe(failure.is_none(), app.thresholds);
        if failure.is_some() {
            checked.last_error = failure.clone();
        }
        if change.is_some() {
            checked.changed_at = Some(Instant::now());
        }
        // Published under the lock, so the flag never disagrees with the tracker for long.
        region.healthy.store(checked.tracker.healthy(), Ordering::Release);
        change
    };
    if let Some(to) = change {
        app.metrics.healthy(name, to == State::Healthy);
        app.metrics.transition(name, to.as_str());
        match &failure {
            Some(why) => tracing::warn!(region = %name, to = to.as_str(), why = %why, "region health changed"),
            None => tracing::info!(region = %name, to = to.as_str(), "region health changed"),
        }
    }
}
