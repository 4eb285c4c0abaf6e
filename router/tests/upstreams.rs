//! The router against small local HTTP servers standing in for region nodes, where the test must
//! see exactly what reached the upstream or make `/readyz` misbehave: headers and bodies pass
//! untouched both ways, a region failing one check in three is never taken out, a POST is never
//! sent twice, a GET refused at connect goes to the next region, no healthy region is a 503 with
//! `Retry-After`, an oversized body never leaves the router.

mod common;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Client, series};
use reqwest::Method;
use router::config::{RegionEndpoint, RouterConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The size of `GET /v1/big`'s answer: far above what loopback sockets and hyper buffer, so a
/// client that stops reading stalls the router's writes.
const BIG_BYTES: usize = 64 << 20;

/// What a fake region counts and how it behaves; changed by the test while it runs.
#[derive(Default)]
struct Behaviour {
    readyz_checks: AtomicU64,
    /// `/readyz` fails every n-th check (0: never).
    readyz_fail_every: AtomicU64,
    /// `/readyz` answers this instead of 200 (0: 200).
    readyz_status: AtomicU64,
    posts: AtomicU64,
    gets: AtomicU64,
    /// A POST answers after this long.
    post_delay_ms: AtomicU64,
}

struct Fake {
    url: String,
    behaviour: Arc<Behaviour>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fake {
    async fn start(name: &'static str) -> Self {
        let behaviour = Arc::new(Behaviour::default());
        let app = axum::Router::new()
            .route("/readyz", axum::routing::get(readyz))
            .route("/v1/big", axum::routing::get(|| async { vec![b'x'; BIG_BYTES] }))
            .fallback(move |state: State<Arc<Behaviour>>, request: Request| echo(name, state, request))
            .with_state(behaviour.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self { url, behaviour, stop: Some(stop), task: Some(task) }
    }

    /// Closes the listener and every connection: connecting is refused from now on.
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

async fn readyz(State(b): State<Arc<Behaviour>>) -> StatusCode {
    let n = b.readyz_checks.fetch_add(1, Ordering::SeqCst) + 1;
    let every = b.readyz_fail_every.load(Ordering::SeqCst);
    let status = b.readyz_status.load(Ordering::SeqCst);
    if status != 0 {
        return StatusCode::from_u16(status as u16).unwrap();
    }
    if every != 0 && n % every == 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

/// Answers with what it received: method, path and query, every header in order, the body.
async fn echo(name: &'static str, State(b): State<Arc<Behaviour>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.method == axum::http::Method::POST {
        b.posts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(b.post_delay_ms.load(Ordering::SeqCst))).await;
    } else {
        b.gets.fetch_add(1, Ordering::SeqCst);
    }
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let seen = json!({
        "region": name,
        "method": parts.method.as_str(),
        "target": parts.uri.path_and_query().map(|p| p.as_str()),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut reply = HeaderMap::new();
    reply.insert("x-upstream", "yes".parse().unwrap());
    reply.append("set-cookie", "a=1".parse().unwrap());
    reply.append("set-cookie", "b=2".parse().unwrap());
    reply.insert("idempotent-replayed", "true".parse().unwrap());
    (StatusCode::CREATED, reply, axum::Json(seen)).into_response()
}

/// Two regions, us-east and eu-west, each nearest to itself.
fn config(a: &Fake, b: &Fake, tune: impl FnOnce(&mut RouterConfig)) -> RouterConfig {
    let row = |own: &str, other: &str| BTreeMap::from([(own.to_owned(), 5), (other.to_owned(), 75)]);
    let mut cfg = RouterConfig {
        http_addr: "127.0.0.1:0".into(),
        regions: vec![
            RegionEndpoint { name: "us-east".into(), url: a.url.clone() },
            RegionEndpoint { name: "eu-west".into(), url: b.url.clone() },
        ],
        latency_ms: BTreeMap::from([
            ("us-east".to_owned(), row("us-east", "eu-west")),
            ("eu-west".to_owned(), row("eu-west", "us-east")),
        ]),
        ..RouterConfig::default()
    };
    tune(&mut cfg);
    cfg
}

async fn wait_both(client: &Client, healthy: bool) {
    for region in ["us-east", "eu-west"] {
        client.wait_health(region, healthy, Duration::from_secs(5)).await;
    }
}

/// Both fake regions, a router over them configured by `tune`, and a client that has seen both
/// regions healthy.
async fn start(tune: impl FnOnce(&mut RouterConfig)) -> (Fake, Fake, router::GeoRouter, Client) {
    let (a, b) = (Fake::start("us-east").await, Fake::start("eu-west").await);
    let router = router::start(config(&a, &b, tune)).await.unwrap();
    let client = Client::new(&router);
    wait_both(&client, true).await;
    (a, b, router, client)
}

#[tokio::test]
async fn headers_and_bodies_pass_untouched_both_ways() {
    let (_a, _b, router, client) = start(|_| {}).await;
    let sent = [
        ("authorization", "Bearer ldev_secret"),
        ("idempotency-key", "pay-42"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "vendor=opaque"),
        ("ledger-session", "sess_7f3a.signed"),
        ("x-client-region", "eu-west"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("content-type", "application/json"),
    ];
    let r = client.send(Method::POST, "/v1/transfers?dry=1&x=%2F", &sent, None).await;
    assert_eq!((r.status, r.region.as_deref()), (201, Some("eu-west")), "{:?}", r.body);
    let seen: Vec<(String, String)> = serde_json::from_value(r.body["headers"].clone()).unwrap();
    for (k, v) in sent {
        assert!(seen.contains(&(k.to_owned(), v.to_owned())), "{k}: {v} reached the region: {seen:?}");
    }
    let multi: Vec<&str> = seen.iter().filter(|(k, _)| k == "x-multi").map(|(_, v)| v.as_str()).collect();
    assert_eq!(multi, ["one", "two"], "repeated headers keep their order");
    assert_eq!(r.body["target"], "/v1/transfers?dry=1&x=%2F", "path and query as sent");
    // Response headers come back as the region sent them, plus the serving region.
    assert_eq!(r.headers["x-upstream"], "yes");
    assert_eq!(r.headers["idempotent-replayed"], "true");
    let cookies: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["a=1", "b=2"]);

    // A body arrives byte for byte.
    let body = "{\"from\":\"world\",\"to\":\"alice\",\"amount\":2500,\"note\":\"é ✓\"}";
    let r = client
        .http
        .post(format!("{}/v1/transfers", client.base))
        .header("x-client-region", "us-east")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["ledger-region"], "us-east");
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["body"], body);
    router.shutdown().await;
}

/// One failed check in three never makes two in a row, so with `fall_checks` 2 the region stays
/// in: no flapping. Checks every 100 ms to see 30 of them in 3 s.
#[tokio::test]
async fn a_region_failing_one_check_in_three_is_never_taken_out() {
    let (a, b) = (Fake::start("us-east").await, Fake::start("eu-west").await);
    a.behaviour.readyz_fail_every.store(3, Ordering::SeqCst);
    let router = router::start(config(&a, &b, |c| {
        c.health_interval_ms = 100;
        c.health_timeout_ms = 80;
    }))
    .await
    .unwrap();
    let client = Client::new(&router);
    wait_both(&client, true).await;
    let started = Instant::now();
    while a.behaviour.readyz_checks.load(Ordering::SeqCst) < 30 {
        let regions = client.regions().await;
        assert_eq!(regions["us-east"]["healthy"], true, "flapped: {:?}", regions["us-east"]);
        let r = client.send(Method::GET, "/v1/accounts/x", &[("x-client-region", "us-east")], None).await;
        assert_eq!(r.region.as_deref(), Some("us-east"));
        assert!(started.elapsed() < Duration::from_secs(20), "checks stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = client.metrics().await;
    assert_eq!(series(&metrics, "ledger_router_health_transitions_total", "region=\"us-east\",to=\"healthy\""), 1.0);
    assert_eq!(series(&metrics, "ledger_router_health_transitions_total", "region=\"us-east\",to=\"unhealthy\""), 0.0);
    let regions = client.regions().await;
    assert!(regions["us-east"]["last_error"].as_str().unwrap().contains("503"), "the failures were seen");
    router.shutdown().await;
}

/// The router never sends a POST twice: a region that times out or refuses the connection is a
/// 502 and the next region sees nothing. A GET refused at connect goes to the next region.
/// Health checks run once (a 60 s interval), so the router still believes the stopped region is in.
#[tokio::test]
async fn a_post_is_sent_once_and_a_refused_get_goes_to_the_next_region() {
    let (mut a, b, router, client) = start(|c| {
        c.health_interval_ms = 60_000;
        c.upstream_timeout_ms = 300;
    })
    .await;
    let us = [("x-client-region", "us-east")];

    a.behaviour.post_delay_ms.store(1_000, Ordering::SeqCst);
    let r = client.send(Method::POST, "/v1/transfers", &us, Some(json!({}))).await;
    assert_eq!(
        (r.status, r.problem(), r.region.as_deref()),
        (502, "region-unavailable", Some("us-east")),
        "{:?}",
        r.body
    );
    assert_eq!(a.behaviour.posts.load(Ordering::SeqCst), 1);
    assert_eq!(b.behaviour.posts.load(Ordering::SeqCst), 0, "a timed-out POST is not sent elsewhere");

    a.stop().await;
    let r = client.send(Method::POST, "/v1/transfers", &us, Some(json!({}))).await;
    assert_eq!((r.status, r.problem()), (502, "region-unavailable"), "{:?}", r.body);
    assert_eq!(b.behaviour.posts.load(Ordering::SeqCst), 0, "a refused POST is not sent elsewhere");

    for method in [Method::GET, Method::HEAD] {
        let r = client.send(method.clone(), "/v1/accounts/x", &us, None).await;
        assert_eq!((r.status, r.region.as_deref()), (201, Some("eu-west")), "{method} went to the next region");
    }
    assert_eq!(b.behaviour.gets.load(Ordering::SeqCst), 2);
    let metrics = client.metrics().await;
    let labels = "client_region=\"us-east\",from_region=\"us-east\",to_region=\"eu-west\"";
    assert_eq!(series(&metrics, "ledger_router_failovers_total", labels), 2.0, "{metrics}");
    let labels = "client_region=\"us-east\",serving_region=\"us-east\",status=\"502\"";
    assert_eq!(series(&metrics, "ledger_router_requests_total", labels), 2.0, "{metrics}");
    router.shutdown().await;
}

#[tokio::test]
async fn no_healthy_region_is_a_503_with_retry_after_and_an_oversized_body_never_leaves() {
    let (a, b, router, client) = start(|c| c.body_limit_bytes = 16).await;

    let r = client.send(Method::POST, "/v1/transfers", &[], Some(json!({"seventeen bytes": 1}))).await;
    assert_eq!((r.status, r.problem()), (413, "payload-too-large"), "{:?}", r.body);
    assert_eq!(a.behaviour.posts.load(Ordering::SeqCst) + b.behaviour.posts.load(Ordering::SeqCst), 0);

    a.behaviour.readyz_status.store(503, Ordering::SeqCst);
    b.behaviour.readyz_status.store(503, Ordering::SeqCst);
    wait_both(&client, false).await;
    let r = client.send(Method::GET, "/v1/accounts/x", &[], None).await;
    assert_eq!((r.status, r.problem(), r.region.as_deref()), (503, "no-healthy-region", None), "{:?}", r.body);
    // Three passes, one a second: the soonest a region can be back.
    assert_eq!(r.headers["retry-after"], "3");
    assert_eq!(a.behaviour.gets.load(Ordering::SeqCst) + b.behaviour.gets.load(Ordering::SeqCst), 0);
    let regions = client.regions().await;
    assert_eq!(regions["us-east"]["state"], "unhealthy");
    router.shutdown().await;
}

/// `in_flight_max` requests held by a slow region: one more is refused at once with 503
/// `router-overloaded` and `Retry-After`, reaching no region, while the router's own endpoints
/// answer; the held ones all complete, and the next request goes through. Bodies that trickle in
/// hold their places only `body_timeout_ms`: each is a 408 `body-timeout` that sent nothing on, and
/// frees its place.
#[tokio::test]
async fn requests_over_in_flight_max_are_refused_at_once_and_slow_bodies_time_out() {
    const IN_FLIGHT: usize = 4;
    let (a, b, router, client) = start(|c| {
        c.in_flight_max = IN_FLIGHT;
        c.body_timeout_ms = 500;
    })
    .await;
    let client = Arc::new(client);
    let overloaded = |r: &common::Reply| {
        assert_eq!((r.status, r.problem(), r.region.as_deref()), (503, "router-overloaded", None), "{:?}", r.body);
        assert_eq!(r.headers["retry-after"], "1");
    };

    a.behaviour.post_delay_ms.store(3_000, Ordering::SeqCst);
    let held: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.send(Method::POST, "/v1/transfers", &[], Some(json!({"n": i}))).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.behaviour.posts.load(Ordering::SeqCst) < IN_FLIGHT as u64 {
        assert!(Instant::now() < deadline, "the held requests reach the region");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = client.send(Method::GET, "/v1/accounts/x", &[], None).await;
    overloaded(&r);
    assert!(held.iter().all(|h| !h.is_finished()), "refused while the others were still held, not queued behind them");
    assert_eq!(a.behaviour.gets.load(Ordering::SeqCst) + b.behaviour.gets.load(Ordering::SeqCst), 0);
    assert_eq!(client.send(Method::GET, "/_router/healthz", &[], None).await.status, 200);
    let metrics = client.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "ledger_router_requests_total",
            r#"client_region="us-east",serving_region="none",status="503""#
        ),
        1.0
    );
    for h in held {
        let r = h.await.unwrap();
        assert_eq!((r.status, r.region.as_deref()), (201, Some("us-east")), "{:?}", r.body);
    }
    assert_eq!(a.behaviour.posts.load(Ordering::SeqCst), IN_FLIGHT as u64, "each held POST sent once");
    a.behaviour.post_delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(client.send(Method::GET, "/v1/accounts/x", &[], None).await.status, 201);

    // Bodies promised whole and never finished fill every place, then time out and free them. A
    // slow body that found every place taken by the GETs below (503) tries again.
    let addr = router.addr();
    let slow: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                loop {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let head = "POST /v1/transfers HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n\
                                Content-Length: 100\r\nConnection: close\r\n\r\n{\"from\":";
                    s.write_all(head.as_bytes()).await.unwrap();
                    let mut answer = String::new();
                    s.read_to_string(&mut answer).await.unwrap();
                    if !answer.starts_with("HTTP/1.1 503") {
                        return answer;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.send(Method::GET, "/v1/accounts/x", &[], None).await;
        if r.status == 503 {
            // This client sends one request at a time: the slow bodies held every place.
            overloaded(&r);
            break;
        }
        // A GET that found a place before the slow bodies took them all.
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert!(Instant::now() < deadline, "the slow bodies take every place");
    }
    for s in slow {
        let answer = s.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("https://ledger.dev/problems/body-timeout"), "{answer}");
    }
    assert_eq!(a.behaviour.posts.load(Ordering::SeqCst), IN_FLIGHT as u64, "no slow body was sent on");
    let r = client.send(Method::POST, "/v1/transfers", &[], Some(json!({"after": "timeouts"}))).await;
    assert_eq!(r.status, 201, "every place is free again: {:?}", r.body);
    router.shutdown().await;
}

/// An answer holds its request's place until the client has taken it whole: a client that reads
/// its answers goes through one place again and again, while one that stops reading keeps its place
/// (one more request is a 503) only until `send_timeout_ms` without progress, when the router cuts
/// its connection, before the whole answer was sent, and frees the place.
#[tokio::test]
async fn an_answer_the_client_stops_reading_holds_its_place_only_until_send_timeout_ms() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, _b, router, client) = start(|c| {
        c.in_flight_max = 1;
        c.send_timeout_ms = 1_000;
    })
    .await;
    for i in 0..50 {
        let r = client.send(Method::GET, "/v1/accounts/x", &[], None).await;
        assert_eq!(r.status, 201, "answer {i} was read whole, so its place was free again: {:?}", r.body);
    }

    let mut stalled = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    stalled.write_all(b"GET /v1/big HTTP/1.1\r\nHost: r\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 4_096];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    // This client now reads nothing more: its answer's place stays taken.
    let r = client.send(Method::GET, "/v1/accounts/x", &[], None).await;
    assert_eq!((r.status, r.problem()), (503, "router-overloaded"), "{:?}", r.body);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.send(Method::GET, "/v1/accounts/x", &[], None).await;
        if r.status == 201 {
            break;
        }
        assert_eq!((r.status, r.problem()), (503, "router-overloaded"), "{:?}", r.body);
        assert!(Instant::now() < deadline, "the stalled answer's place is freed after send_timeout_ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rest = Vec::new();
    // The connection was cut: what remains ends (or is reset) before the whole answer.
    let _ = stalled.read_to_end(&mut rest).await;
    assert!(n + rest.len() < BIG_BYTES, "the router gave up on the answer: {} bytes came", n + rest.len());
    router.shutdown().await;
}
