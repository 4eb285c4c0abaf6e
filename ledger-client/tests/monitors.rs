//! The client's monitor and webhook calls against a real node: every route, typed; a monitor's
//! creation is sent once even when its answer is cut (a retry would make a second monitor, and
//! every crossing would be delivered twice).

use ledger_client::{Client, ClientConfig, Error, NewMonitor, NewTransfer};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy that forwards each request and cuts the connection before the answer.
async fn cutting_proxy(upstream: std::net::SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                let mut buf = vec![0u8; 64 * 1024];
                let Ok(read) = client.read(&mut buf).await else { return };
                if server.write_all(&buf[..read]).await.is_err() {
                    return;
                }
                let mut first = [0u8; 1];
                let _ = server.read(&mut first).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_monitor_route_through_the_client_and_creation_is_never_retried() {
    let region = testkit::regions(1)[0].clone();
    let prefix = testkit::unique_prefix();
    region.create_topics(&prefix).await;
    let db = region.fresh_database().await;
    let key = format!("test-write-{}", uuid::Uuid::new_v4());
    let cfg = region_node::config::NodeConfig {
        region: region.name().to_owned(),
        http_addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        kafka_bootstrap: region.kafka_bootstrap().to_owned(),
        topic_prefix: prefix,
        bootstrap_api_key: key.clone(),
        webhook_allow_private_targets: true,
        webhook_attempts_max: 1,
        ..region_node::config::NodeConfig::default()
    };
    let node = region_node::start(cfg).await.unwrap();
    let config = |url: String| ClientConfig {
        attempt_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::new(vec![url], key.clone())
    };
    let client = Client::new(config(format!("http://{}", node.addr()))).unwrap();
    client.open_account("world", "USD", true).await.unwrap();
    client.open_account("gina", "USD", false).await.unwrap();
    // Nothing listens on port 1: every attempt is refused, so the delivery dies at once.
    let new = NewMonitor {
        account: "gina".into(),
        condition: "balance >= 10".into(),
        url: "http://127.0.0.1:1/hook".into(),
        secret: "a-secret-of-enough-length".into(),
    };
    let monitor = client.create_monitor(new.clone()).await.unwrap().value;
    assert_eq!((monitor.account.as_str(), monitor.status.as_str()), ("gina", "active"));
    assert_eq!(client.monitor(&monitor.id).await.unwrap().value, monitor);
    let bad = client.create_monitor(NewMonitor { condition: "gina is rich".into(), ..new.clone() }).await;
    assert!(matches!(bad, Err(Error::Problem { status: 400, ref kind, .. }) if kind == "invalid-condition"), "{bad:?}");

    client
        .transfer(NewTransfer { from: "world".into(), to: "gina".into(), amount: 10, ..Default::default() })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let page = client.webhook_deliveries(None, None, Some(10)).await.unwrap().value;
        if let Some(d) = page.deliveries.first() {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "the delivery never died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((dead.state.as_str(), dead.attempts, dead.balance_after), ("dead", 1, 10));
    assert!(dead.attempt_log[0].error.is_some());
    let of_monitor = client.monitor_deliveries(&monitor.id, None, None).await.unwrap().value;
    assert_eq!(of_monitor.deliveries[0].delivery_id, dead.delivery_id);
    let retried = client.retry_delivery(&dead.delivery_id).await.unwrap().value;
    assert_eq!((retried.state.as_str(), retried.delivery_id.as_str()), ("pending", dead.delivery_id.as_str()));

    let deleted = client.delete_monitor(&monitor.id).await.unwrap().value;
    assert_eq!(deleted.status, "deleted");
    assert_eq!(client.delete_monitor(&monitor.id).await.unwrap().value, deleted, "deleting again answers the same");

    // Through a proxy that cuts every answer: one attempt, then Unavailable; one monitor made.
    let cut = Client::new(config(cutting_proxy(node.addr()).await)).unwrap();
    let answer = cut.create_monitor(new).await;
    assert!(matches!(answer, Err(Error::Unavailable { attempts: 1, .. })), "{answer:?}");
    let page = client.monitors(Some("gina"), None, Some(1)).await.unwrap().value;
    assert_eq!(page.monitors.len(), 1);
    let rest = client.monitors(Some("gina"), page.next_after, None).await.unwrap().value;
    assert_eq!(page.monitors.len() + rest.monitors.len(), 2, "the cut creation was sent once, and applied");
    assert_eq!(rest.next_after, None);
    node.shutdown().await;
}
