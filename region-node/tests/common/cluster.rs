//! Three regions, each with its own PostgreSQL, Kafka, node and replicator, for replication tests.

use super::{TestNode, start_on};
use replicator::{Replicator, ReplicatorConfig, Source};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub replicators: Vec<Option<Replicator>>,
    pub regions: Vec<testkit::Region>,
    pub prefix: String,
    /// The key every node presents to its peers and accepts with the `replication` scope (set
    /// even when the nodes are not given each other's URLs).
    pub replication_key: String,
    /// The reconcile service's key (read, write and reconcile scopes), the same in every region.
    pub reconcile_key: String,
}

fn replicator_config(regions: &[testkit::Region], target: usize, prefix: &str) -> ReplicatorConfig {
    let all: Vec<usize> = (0..regions.len()).collect();
    replicator_config_from(regions, target, &all, prefix)
}

/// Replication into `target` from `sources` only (indexes into `regions`).
fn replicator_config_from(
    regions: &[testkit::Region],
    target: usize,
    sources: &[usize],
    prefix: &str,
) -> ReplicatorConfig {
    ReplicatorConfig {
        target_region: regions[target].name().to_owned(),
        target_bootstrap: regions[target].kafka_bootstrap().to_owned(),
        sources: sources
            .iter()
            .map(|&i| Source {
                region: regions[i].name().to_owned(),
                bootstrap: regions[i].kafka_bootstrap().to_owned(),
            })
            .collect(),
        topic_prefix: prefix.to_owned(),
        metrics_addr: "127.0.0.1:0".into(),
        batch_max: 500,
        commit_interval_ms: 50,
        heartbeat_ms: 200,
        otlp_endpoint: String::new(),
    }
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(false, |_| {}).await
    }

    /// With `peer_urls`, every node is given every other node's URL, so anti-entropy runs; `tune`
    /// adjusts every node's configuration last.
    pub async fn start_with(peer_urls: bool, tune: impl Fn(&mut region_node::config::NodeConfig)) -> Self {
        let regions = testkit::regions(3);
        let prefix = testkit::unique_prefix();
        let names: Vec<String> = regions.iter().map(|r| r.name().to_owned()).collect();
        for region in &regions {
            region.create_topics(&prefix).await;
            let mirrored: Vec<ledger_schema::TopicSpec> = names
                .iter()
                .filter(|n| *n != region.name())
                .flat_map(|n| ledger_schema::mirror_topics(&prefix, n))
                .collect();
            ledger_schema::create_topics(region.kafka_bootstrap(), &mirrored, Duration::from_secs(60)).await.unwrap();
        }
        let mut nodes = Vec::new();
        // One client's API key, provisioned in every region as a tenant's would be: idempotency
        // keys are scoped to it, so a retry in another region meets its own key there.
        let write_key = format!("test-write-{}", uuid::Uuid::new_v4());
        let replication_key = format!("test-replication-{}", uuid::Uuid::new_v4());
        let reconcile_key = format!("test-reconcile-{}", uuid::Uuid::new_v4());
        // Each node's port is chosen before any starts, so that each can be given the others' URLs.
        // Not `bind(0)`: a port let go in the ephemeral range may be taken by an outgoing connection
        // before its node binds it (see `testkit::free_port`).
        let ports: Vec<Option<u16>> = regions.iter().map(|_| peer_urls.then(testkit::free_port)).collect();
        let urls: Vec<Option<String>> = ports.iter().map(|p| p.map(|p| format!("http://127.0.0.1:{p}"))).collect();
        for (i, region) in regions.iter().enumerate() {
            let peers: Vec<String> = names.iter().filter(|n| *n != region.name()).cloned().collect();
            let addr = ports[i].map(|p| format!("127.0.0.1:{p}"));
            let peer_urls = names
                .iter()
                .zip(&urls)
                .filter(|(n, _)| *n != region.name())
                .filter_map(|(n, url)| Some((n.clone(), url.clone()?)))
                .collect();
            let tune = |cfg: &mut region_node::config::NodeConfig| {
                cfg.peers = peers;
                cfg.bootstrap_api_key = write_key.clone();
                cfg.replication_api_key = replication_key.clone();
                cfg.reconcile_api_key = reconcile_key.clone();
                cfg.peer_urls = peer_urls;
                if let Some(addr) = addr {
                    cfg.http_addr = addr;
                }
                tune(cfg);
            };
            nodes.push(start_on(region.clone(), prefix.clone(), tune).await);
        }
        let mut cluster = Cluster { nodes, replicators: Vec::new(), regions, prefix, replication_key, reconcile_key };
        cluster.resume().await;
        cluster
    }

    /// Stops replication into every region.
    pub async fn pause(&mut self) {
        for r in self.replicators.iter_mut() {
            if let Some(r) = r.take() {
                r.stop().await;
            }
        }
    }

    pub async fn resume(&mut self) {
        self.replicators.clear();
        for target in 0..self.regions.len() {
            let cfg = replicator_config(&self.regions, target, &self.prefix);
            self.replicators.push(Some(replicator::start(cfg).await.unwrap()));
        }
    }

    /// Replication into `target` from `sources` only (replication into `target` must be paused):
    /// a partial partition. `resume` later replaces it with replication from every region.
    pub async fn resume_from(&mut self, target: usize, sources: &[usize]) {
        if self.replicators.len() < self.regions.len() {
            self.replicators.resize_with(self.regions.len(), || None);
        }
        assert!(self.replicators[target].is_none(), "replication into {target} is running");
        let cfg = replicator_config_from(&self.regions, target, sources, &self.prefix);
        self.replicators[target] = Some(replicator::start(cfg).await.unwrap());
    }

    /// Waits until every region holds the same events, with nothing held back.
    pub async fn converged(&self, timeout: Duration) -> BTreeSet<uuid::Uuid> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut sets = Vec::new();
            let mut pending = 0;
            for node in &self.nodes {
                let ids: Vec<uuid::Uuid> =
                    sqlx::query_scalar("SELECT event_id FROM ledger_events").fetch_all(&node.db.pool).await.unwrap();
                sets.push(ids.into_iter().collect::<BTreeSet<_>>());
                pending += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pending_events")
                    .fetch_one(&node.db.pool)
                    .await
                    .unwrap();
            }
            if pending == 0 && sets.windows(2).all(|w| w[0] == w[1]) {
                return sets.pop().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "regions did not converge: {:?} events, {pending} pending",
                sets.iter().map(|s| s.len()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn accounts(&self, i: usize) -> Vec<(String, i64, Value)> {
        sqlx::query_as("SELECT id, balance, version_vector FROM accounts ORDER BY id")
            .fetch_all(&self.nodes[i].db.pool)
            .await
            .unwrap()
    }

    pub async fn conflicts(&self, i: usize) -> Vec<Value> {
        let r = self.nodes[i].get("/v1/conflicts").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["conflicts"].as_array().unwrap().clone()
    }

    /// Every conflict of region `i`, in id order, without what differs by region (when it was
    /// detected and updated).
    pub async fn conflict_contents(&self, i: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let r = self.nodes[i].get(&format!("/v1/conflicts?limit=1000{after}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            for c in r.body["conflicts"].as_array().unwrap() {
                let mut c = c.clone();
                c.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "detected_at" | "updated_at"));
                all.push(c);
            }
            match r.body["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        all.sort_by(|a, b| a["conflict_id"].as_str().cmp(&b["conflict_id"].as_str()));
        all
    }

    /// Conflicts are filed per episode of concurrency, never per pair, whatever the timing: how
    /// many episodes a load makes depends on how far replication lags behind the writes (a lag
    /// longer than the gap between writes chains them into a few large episodes; a short one
    /// leaves many of two or three events), so the bound is the one that holds for any lag. Every
    /// account-side of an event belongs to at most one episode (each region stores one label per
    /// account and event, and each episode record counts exactly the events labelled with it), and
    /// an episode has at least two members: so at most `events` records, and their counts sum to at
    /// most twice `events` (a transfer touches two accounts). Pair by pair it was quadratic.
    pub async fn assert_conflicts_per_episode(&self, conflicts: &[Value], events: usize) {
        let episodes: Vec<&Value> = conflicts
            .iter()
            .filter(|c| matches!(c["kind"].as_str(), Some("concurrent-benign" | "overdraft")))
            .collect();
        let members: i64 = episodes.iter().map(|c| c["event_count"].as_i64().unwrap()).sum();
        assert!(
            episodes.iter().all(|c| c["event_count"].as_i64().unwrap() >= 2),
            "an episode of one event: {episodes:?}"
        );
        assert!(
            episodes.len() <= events && members <= 2 * events as i64,
            "{} episode records holding {members} account-events, for {events} events",
            episodes.len()
        );
        for node in &self.nodes {
            let labelled: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
                "SELECT episode, count(*) FROM account_events WHERE episode IS NOT NULL GROUP BY episode ORDER BY episode",
            )
            .fetch_all(&node.db.pool)
            .await
            .unwrap();
            let mut recorded: Vec<(uuid::Uuid, i64)> = episodes
                .iter()
                .map(|c| (c["conflict_id"].as_str().unwrap().parse().unwrap(), c["event_count"].as_i64().unwrap()))
                .collect();
            recorded.sort();
            assert_eq!(labelled, recorded, "{}: episode labels against records", node.region.name());
        }
    }

    pub async fn stop(mut self) {
        self.pause().await;
        for node in self.nodes {
            node.stop().await;
        }
    }
}
