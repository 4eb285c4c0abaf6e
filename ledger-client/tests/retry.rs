//! The client against a real node behind a proxy that cuts connections after the node has
//! processed the request but before the answer reaches the client: every retry carries the same
//! key, so money moves once; a final answer (4xx) is never retried.

use ledger_client::{At, Client, ClientConfig, Error, NewTransaction, NewTransfer, TransactionLeg};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `upstream` that, for the first `cut` connections, forwards the request, waits
/// for the first bytes of the answer (the node has committed) and then closes both sides.
async fn cutting_proxy(upstream: std::net::SocketAddr, cut: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                if n < cut {
                    let mut buf = vec![0u8; 64 * 1024];
                    let Ok(read) = client.read(&mut buf).await else { return };
                    if server.write_all(&buf[..read]).await.is_err() {
                        return;
                    }
                    let mut first = [0u8; 1];
                    let _ = server.read(&mut first).await;
                    // Dropping both streams: the answer never arrives.
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (url, accepted)
}

async fn node() -> (region_node::Node, String) {
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
        ..region_node::config::NodeConfig::default()
    };
    (region_node::start(cfg).await.unwrap(), key)
}

fn config(urls: Vec<String>, key: &str) -> ClientConfig {
    ClientConfig {
        attempt_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::new(urls, key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_across_cut_connections_and_dead_regions_never_double_post() {
    let (node, key) = node().await;
    let direct = Client::new(config(vec![format!("http://{}", node.addr())], &key)).unwrap();
    direct.open_account("world", "USD", true).await.unwrap();
    direct.open_account("alice", "USD", false).await.unwrap();

    // Two answers cut after the node committed: the third attempt replays the first.
    let (proxy, accepted) = cutting_proxy(node.addr(), 2).await;
    let client = Client::new(config(vec![proxy], &key)).unwrap();
    let posted = client
        .transfer(NewTransfer { from: "world".into(), to: "alice".into(), amount: 250, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(posted.attempts, 3);
    assert!(posted.replayed, "the retry replayed the committed transfer");
    assert!(posted.idempotency_key.is_some(), "a key was generated");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(direct.account("alice").await.unwrap().value.balance, 250, "money moved once");
    assert_eq!(direct.account("alice").await.unwrap().value.entries, 1);
    assert!(client.session().is_some_and(|s| s.starts_with("s1.")), "the session token is carried");

    // A dead region first in the list: the client moves on, with the same key.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let listed = Client::new(config(vec![dead_url, format!("http://{}", node.addr())], &key)).unwrap();
    let key_given = "order-77".to_owned();
    let posted = listed
        .transfer(NewTransfer {
            from: "world".into(),
            to: "alice".into(),
            amount: 5,
            idempotency_key: Some(key_given.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((posted.attempts, posted.replayed), (2, false));
    let again = listed
        .transfer(NewTransfer {
            from: "world".into(),
            to: "alice".into(),
            amount: 5,
            idempotency_key: Some(key_given),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.value.id, posted.value.id);
    assert_eq!(direct.account("alice").await.unwrap().value.balance, 255);
    // A transaction through a proxy that cuts the first answer: retried with its key, made once.
    let (proxy, _) = cutting_proxy(node.addr(), 1).await;
    let cut = Client::new(config(vec![proxy], &key)).unwrap();
    let leg = |from: &str, to: &str, amount| TransactionLeg {
        from: from.into(),
        to: to.into(),
        amount,
        currency: "USD".into(),
        ..Default::default()
    };
    let made = cut
        .transaction(NewTransaction {
            legs: vec![leg("world", "alice", 20), leg("alice", "world", 15)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(made.replayed && made.attempts == 2, "{made:?}");
    assert_eq!(made.value.legs.len(), 2);
    assert_eq!(direct.get_transaction(&made.value.id).await.unwrap().value, made.value);
    assert_eq!(direct.account("alice").await.unwrap().value.balance, 260, "moved once");
    // Two-phase through a cutting proxy: the hold, then its post, each retried with its key.
    let hold = cut
        .pending_transfer(
            NewTransfer { from: "alice".into(), to: "world".into(), amount: 60, ..Default::default() },
            Some(3_600),
        )
        .await
        .unwrap();
    assert_eq!((hold.value.status.as_str(), hold.value.amount), ("pending", 60));
    let alice = direct.account("alice").await.unwrap().value;
    assert_eq!((alice.balance, alice.pending_debits, alice.available), (260, 60, 200));
    let (proxy, _) = cutting_proxy(node.addr(), 1).await;
    let cut = Client::new(config(vec![proxy], &key)).unwrap();
    let posted = cut.post_pending(&hold.value.id, Some(40), None).await.unwrap();
    assert!(posted.replayed, "the cut answer was replayed: {posted:?}");
    assert_eq!((posted.value.status.as_str(), posted.value.posted_amount), ("posted", 40));
    assert_eq!(direct.get_pending(&hold.value.id).await.unwrap().value, posted.value);
    let alice = direct.account("alice").await.unwrap().value;
    assert_eq!((alice.balance, alice.pending_debits, alice.available), (220, 0, 220));
    let refused = direct.void_pending(&hold.value.id, None).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Problem { status: 409, kind, .. } if kind == "transfer-not-pending"),
        "{refused}"
    );
    // The history, point by point: after the first entry, and by a time after both.
    let first = direct.account_at("alice", &At::Position(1)).await.unwrap().value;
    assert_eq!((first.entries, first.balance), (1, 250));
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let now = direct.account_at("alice", &At::Time(later)).await.unwrap().value;
    assert_eq!((now.entries, now.balance), (5, 220));

    // The ledger's refusal is final: returned at once, never retried.
    let (proxy, accepted) = cutting_proxy(node.addr(), 0).await;
    let counted = Client::new(config(vec![proxy], &key)).unwrap();
    let refused = counted
        .transfer(NewTransfer { from: "alice".into(), to: "world".into(), amount: 10_000, ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(&refused, Error::Problem { status: 409, kind, .. } if kind == "insufficient-funds"), "{refused}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one attempt");

    // Nothing answers at all: a bounded number of attempts, then Unavailable.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let nowhere = Client::new(ClientConfig { attempts_max: 3, ..config(vec![dead_url], &key) }).unwrap();
    let e = nowhere.account("alice").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { attempts: 3, .. }), "{e}");
    node.shutdown().await;
}
