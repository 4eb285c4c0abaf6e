//! The proxy: locate the client, pick the nearest healthy region, send the request there as it
//! came (end-to-end headers and body untouched), and stream the answer back with `Ledger-Region`.
//!
//! Retries: only a GET or HEAD whose region refused the connection (nothing reached the node) goes
//! to the next healthy region. A POST, PUT, PATCH or DELETE is sent once: if its region fails the
//! client gets a 502 and decides, with its `Idempotency-Key`, whether and where to retry, because
//! the router cannot know whether the node committed it.

use crate::config::Plan;
use crate::conn::Peer;
use crate::metrics::NONE;
use crate::problem::Problem;
use crate::{App, CLIENT_REGION_HEADER, SERVING_REGION_HEADER};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The upstream client: hyper's, HTTP/1.1, pooled per region.
pub(crate) type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// Idle connections kept per region: enough for a burst of concurrent requests to reuse
/// connections instead of opening new ones, bounded so a past burst holds no sockets for long.
const POOL_IDLE_PER_REGION_MAX: usize = 64;
/// How long an idle pooled connection is kept; below the nodes' own keep-alive, so the router does
/// not pick a connection the node is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most characters of a bad `X-Client-Region` value echoed back in the problem's detail.
const ECHO_CHARS_MAX: usize = 64;

/// The proxy's client; `connect_timeout` is the health-check timeout: a region that does not
/// accept a connection within it is treated like one that refuses it.
pub(crate) fn client(connect_timeout: Duration) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_IDLE_PER_REGION_MAX)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message, so a proxy
/// must not forward them. Every other header passes untouched.
const HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, header::TE, header::TRANSFER_ENCODING, header::UPGRADE, HeaderName::from_static("keep-alive")];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named).chain([&HeaderName::from_static("proxy-connection")]) {
        headers.remove(name);
    }
}

/// Where the client is: its `X-Client-Region`, else its network, else the default.
fn locate(plan: &Plan, headers: &HeaderMap, peer: IpAddr) -> Result<String, Problem> {
    let Some(value) = headers.get(CLIENT_REGION_HEADER) else { return Ok(plan.client_region_of(peer).to_owned()) };
    let name = value.to_str().unwrap_or("").trim();
    if plan.knows_client_region(name) {
        return Ok(name.to_owned());
    }
    let shown: String = String::from_utf8_lossy(value.as_bytes()).chars().take(ECHO_CHARS_MAX).collect();
    let known: Vec<&str> = plan.order.keys().map(String::as_str).collect();
    Err(Problem::unknown_client_region(format!(
        "X-Client-Region {shown:?} is not a client region; known: {}",
        known.join(", ")
    )))
}

/// The request body, at most `limit_bytes` (buffered so a GET can be sent again).
async fn read_body(headers: &HeaderMap, body: Body, limit_bytes: usize) -> Result<Bytes, Problem> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(Problem::payload_too_large(limit_bytes));
    }
    axum::body::to_bytes(body, limit_bytes).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            Problem::payload_too_large(limit_bytes)
        } else {
            Problem::invalid_body(inner.to_string())
        }
    })
}

fn region_value(name: &str) -> HeaderValue {
    // Region names are checked by the configuration (lowercase letters, digits, '-'): always valid.
    HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("invalid-region-name"))
}

/// Every request that is not the router's own. A request carrying a sampled W3C `traceparent` gets
/// a span in the client's trace (its log lines carry the trace id), but the header goes to the node
/// as the client sent it: the router never changes what a node sees, so its span and the node's
/// are siblings under the client's.
pub(crate) async fn forward(state: State<Arc<App>>, peer: ConnectInfo<Peer>, request: Request) -> Response {
    use tracing::Instrument;
    let parent = request.headers().get(ledger_telemetry::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if !ledger_telemetry::sampled(parent.as_deref()) {
        return forward_untraced(state, peer, request).await;
    }
    let name = format!("{} forward", request.method());
    let span = tracing::info_span!(
        "router.forward",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    ledger_telemetry::continue_trace(&span, parent.as_deref());
    let response = forward_untraced(state, peer, request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn forward_untraced(
    State(app): State<Arc<App>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let client = match locate(&app.plan, &parts.headers, peer.ip()) {
        Ok(client) => client,
        Err(problem) => {
            app.metrics.request(NONE, NONE, problem.status.as_u16());
            return problem.into_response();
        }
    };
    // Held until the router answers itself or the upstream's answer has streamed to the client
    // whole (or the connection is gone, see `conn.rs`): a slow reader keeps an upstream connection.
    let Ok(in_flight) = app.in_flight.clone().try_acquire_owned() else {
        let problem = Problem::overloaded(app.plan.config.in_flight_max);
        app.metrics.request(&client, NONE, problem.status.as_u16());
        return problem.into_response();
    };
    let ranked = app.plan.ranked(&client);
    let healthy: Vec<usize> = ranked.iter().copied().filter(|&i| app.regions[i].is_healthy()).collect();
    if healthy.is_empty() {
        // The soonest a region can be back: `rise_checks` passes, one per interval.
        let cfg = &app.plan.config;
        let retry_after_s = (cfg.health_interval_ms * u64::from(cfg.rise_checks)).div_ceil(1_000).max(1);
        let problem = Problem::no_healthy_region(retry_after_s);
        app.metrics.request(&client, NONE, problem.status.as_u16());
        return problem.into_response();
    }
    let body_timeout_ms = app.plan.config.body_timeout_ms;
    let body = read_body(&parts.headers, body, app.plan.config.body_limit_bytes);
    let body = tokio::time::timeout(Duration::from_millis(body_timeout_ms), body)
        .await
        .unwrap_or_else(|_| Err(Problem::body_timeout(body_timeout_ms)));
    let body = match body {
        Ok(body) => body,
        Err(problem) => {
            app.metrics.request(&client, NONE, problem.status.as_u16());
            return problem.into_response();
        }
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let may_go_elsewhere = parts.method == Method::GET || parts.method == Method::HEAD;
    let timeout = Duration::from_millis(app.plan.config.upstream_timeout_ms);
    let nearest = &app.plan.upstreams[ranked[0]].name;
    for (attempt, &i) in healthy.iter().enumerate() {
        let region = &app.plan.upstreams[i].name;
        let mut upstream = hyper::Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.headers_mut() = headers.clone();
        *upstream.uri_mut() = match format!("{}{path}", app.plan.upstreams[i].base).parse() {
            Ok(uri) => uri,
            Err(e) => return Problem::invalid_body(format!("unusable request target: {e}")).into_response(),
        };
        let failure = match tokio::time::timeout(timeout, app.client.request(upstream)).await {
            Ok(Ok(response)) => {
                if region != nearest {
                    app.metrics.failover(&client, nearest, region);
                }
                app.metrics.request(&client, region, response.status().as_u16());
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.headers.insert(SERVING_REGION_HEADER, region_value(region));
                return Response::from_parts(head, Body::new(Held { body: incoming, _in_flight: in_flight }));
            }
            Ok(Err(e)) if e.is_connect() && may_go_elsewhere && attempt + 1 < healthy.len() => {
                tracing::warn!(%region, error = %e, method = %parts.method, "region refused the connection; trying the next");
                continue;
            }
            Ok(Err(e)) => match std::error::Error::source(&e) {
                Some(cause) => format!("{region} failed: {e}: {cause}"),
                None => format!("{region} failed: {e}"),
            },
            Err(_) => format!("{region} did not answer within {} ms", timeout.as_millis()),
        };
        tracing::warn!(%region, method = %parts.method, why = %failure, "upstream failed; not retried");
        app.metrics.request(&client, region, 502);
        let mut response = Problem::region_unavailable(failure).into_response();
        // The region the request was sent to, so the client knows where it may have landed.
        response.headers_mut().insert(SERVING_REGION_HEADER, region_value(region));
        return response;
    }
    // Unreachable: the loop returns at its last attempt; kept total rather than panicking.
    Problem::no_healthy_region(1).into_response()
}

/// An upstream's answer body holding its request's `in_flight_max` place until the body is sent
/// whole or dropped.
struct Held {
    body: hyper::body::Incoming,
    _in_flight: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_every_other_header_stays() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer k"),
            ("idempotency-key", "pay-1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("ledger-session", "s"),
            ("connection", "keep-alive, x-private-hop"),
            ("keep-alive", "timeout=5"),
            ("x-private-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["authorization", "idempotency-key", "ledger-session", "traceparent"]);
    }
}
