//! Read-your-writes across regions with `Ledger-Session` tokens: a client that writes in one
//! region and fails over to another never reads back in time there, and its next debit is judged
//! against a balance that includes its earlier writes. Without the token the same read is stale,
//! which is exactly what the token prevents.

mod common;

use common::cluster::Cluster;
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "test-session-secret";

fn token(r: &common::Reply) -> String {
    r.headers.get("ledger-session").expect("a session token").to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_never_reads_back_in_time_after_failing_over() {
    let mut cluster = Cluster::start_with(false, |cfg| {
        cfg.session_secret = SECRET.into();
        cfg.session_wait_ms_max = 1_500;
    })
    .await;
    let us = &cluster.nodes[0];
    us.open("world", "USD", true).await;
    us.open("alice", "USD", false).await;
    us.open("bob", "USD", false).await;
    cluster.converged(Duration::from_secs(60)).await;
    cluster.pause().await;

    let (us, eu) = (&cluster.nodes[0], &cluster.nodes[1]);
    let paid = us.transfer("world", "alice", 100).await;
    assert_eq!(paid.status, 201);
    let session = token(&paid);
    let transfer_id = paid.body["id"].as_str().unwrap().to_owned();

    // Without the token, the other region answers what it has: the payment is not there.
    assert_eq!(eu.balance("alice").await, 0, "a plain read in another region is stale");
    assert_eq!(eu.get(&format!("/v1/transfers/{transfer_id}")).await.status, 404);
    // With it, the region refuses to answer back in time.
    let h = [("Ledger-Session", session.as_str())];
    let started = Instant::now();
    let r = eu.send(reqwest::Method::GET, "/v1/accounts/alice", Some(&eu.read_key), None, &h).await;
    assert_eq!((r.status, r.problem()), (503, "session-not-caught-up"), "{}", r.body);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(started.elapsed() >= Duration::from_millis(1_400), "it waited for the bound first");
    // A debit there is refused the same way rather than judged on a balance without the payment.
    let debit = eu
        .send(
            reqwest::Method::POST,
            "/v1/transfers",
            Some(&eu.write_key),
            Some(json!({"from": "alice", "to": "bob", "amount": 60})),
            &h,
        )
        .await;
    assert_eq!(debit.status, 503, "{}", debit.body);
    assert_eq!(eu.balance("bob").await, 0, "the refused debit wrote nothing");

    cluster.resume().await;
    let (us, eu) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Once the region has applied the payment, the same token is served, and sees it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let r = eu.send(reqwest::Method::GET, "/v1/accounts/alice", Some(&eu.read_key), None, &h).await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "never caught up");
    };
    assert_eq!(seen.body["balance"], 100, "never back in time");
    assert_eq!(token(&seen), session, "a read hands the token back unchanged");
    let t = eu.send(reqwest::Method::GET, &format!("/v1/transfers/{transfer_id}"), Some(&eu.read_key), None, &h).await;
    assert_eq!(t.status, 200);
    // The next write in the failed-over region extends the session, and the first region honours
    // it in turn.
    let debit = eu
        .send(
            reqwest::Method::POST,
            "/v1/transfers",
            Some(&eu.write_key),
            Some(json!({"from": "alice", "to": "bob", "amount": 60})),
            &h,
        )
        .await;
    assert_eq!(debit.status, 201, "{}", debit.body);
    let next = token(&debit);
    assert_ne!(next, session);
    let back =
        us.send(reqwest::Method::GET, "/v1/accounts/bob", Some(&us.read_key), None, &[("Ledger-Session", &next)]).await;
    assert_eq!((back.status, back.body["balance"].as_i64()), (200, Some(60)), "{}", back.body);

    // Altered tokens and garbage are refused and change nothing.
    let mut forged: Vec<&str> = next.split('.').collect();
    let payload = base64_of(r#"[["alice",{"us-east":1}]]"#);
    forged[1] = &payload;
    for bad in [forged.join("."), "s1.abc".into(), "nonsense".into()] {
        let before = eu.fingerprint().await;
        let r = eu
            .send(
                reqwest::Method::POST,
                "/v1/transfers",
                Some(&eu.write_key),
                Some(json!({"from": "world", "to": "bob", "amount": 1})),
                &[("Ledger-Session", &bad)],
            )
            .await;
        assert_eq!((r.status, r.problem()), (400, "invalid-session-token"), "{bad}: {}", r.body);
        assert_eq!(before, eu.fingerprint().await);
    }
    cluster.stop().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
