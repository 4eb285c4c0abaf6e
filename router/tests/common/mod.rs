//! What the router's tests share: three real region nodes on testkit engines, the router's
//! configuration for them, and a client that reads what the router says about its regions.

#![allow(dead_code)]

use router::config::{RegionEndpoint, RouterConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The three regions' names, in testkit's order.
pub const NAMES: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// A plausible latency table for the three regions: each nearest to itself; eu-west's next
/// nearest is us-east, us-east's is eu-west, ap-south's is eu-west.
pub fn latency_ms() -> BTreeMap<String, BTreeMap<String, u32>> {
    let rows: [(&str, [u32; 3]); 3] =
        [("us-east", [5, 75, 190]), ("eu-west", [75, 5, 120]), ("ap-south", [190, 120, 5])];
    rows.iter()
        .map(|(client, ms)| (client.to_string(), NAMES.iter().map(|s| s.to_string()).zip(ms.iter().copied()).collect()))
        .collect()
}

/// The router's settings in front of `urls` (one per name of [`NAMES`]): the defaults otherwise.
pub fn router_config(urls: &[String]) -> RouterConfig {
    RouterConfig {
        http_addr: "127.0.0.1:0".into(),
        regions: NAMES
            .iter()
            .zip(urls)
            .map(|(name, url)| RegionEndpoint { name: name.to_string(), url: url.clone() })
            .collect(),
        latency_ms: latency_ms(),
        ..RouterConfig::default()
    }
}

/// Three regions' nodes, each on its own PostgreSQL database and Kafka topics.
pub struct Nodes {
    pub regions: Vec<testkit::Region>,
    pub nodes: Vec<Option<region_node::Node>>,
    pub configs: Vec<region_node::config::NodeConfig>,
    pub dbs: Vec<testkit::TestDb>,
    pub urls: Vec<String>,
    /// A client's key (read and write), the same in every region, as a tenant's would be.
    pub key: String,
}

impl Nodes {
    pub async fn start() -> Self {
        static TELEMETRY: std::sync::Once = std::sync::Once::new();
        // As the binary does, so a request's traceparent is continued and stored with its events.
        TELEMETRY.call_once(|| std::mem::forget(region_node::telemetry::init_for_tests(None)));
        let regions = testkit::regions(3);
        let prefix = testkit::unique_prefix();
        let key = format!("test-write-{}", uuid::Uuid::new_v4());
        let (mut nodes, mut configs, mut dbs, mut urls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for region in &regions {
            region.create_topics(&prefix).await;
            let db = region.fresh_database().await;
            let cfg = region_node::config::NodeConfig {
                region: region.name().to_owned(),
                http_addr: "127.0.0.1:0".into(),
                database_url: db.url.clone(),
                kafka_bootstrap: region.kafka_bootstrap().to_owned(),
                topic_prefix: prefix.clone(),
                bootstrap_api_key: key.clone(),
                ..region_node::config::NodeConfig::default()
            };
            let node = region_node::start(cfg.clone()).await.expect("node starts");
            urls.push(format!("http://{}", node.addr()));
            let mut cfg = cfg;
            // A restart takes the same address, so the router's configuration still names it.
            cfg.http_addr = node.addr().to_string();
            configs.push(cfg);
            nodes.push(Some(node));
            dbs.push(db);
        }
        Self { regions, nodes, configs, dbs, urls, key }
    }

    /// Starts region `i`'s node again on its database and address.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match region_node::start(self.configs[i].clone()).await {
                Ok(node) => {
                    self.nodes[i] = Some(node);
                    return;
                }
                // The crashed node's listener may take a moment to be released.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restarting node {i}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restarting node {i}: {e}"),
            }
        }
    }

    pub async fn stop(mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.shutdown().await;
        }
    }
}

/// A reply as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub region: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn problem(&self) -> &str {
        self.body["type"].as_str().and_then(|t| t.strip_prefix("https://ledger.dev/problems/")).unwrap_or("")
    }
}

/// A client of the router.
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(router: &router::GeoRouter) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { base: format!("http://{}", router.addr()), http }
    }

    /// Sends a request with the given headers (`x-client-region` among them, or not).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.expect("the router answers");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let region = headers.get("ledger-region").map(|v| v.to_str().unwrap().to_owned());
        let bytes = r.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        Reply { status, region, headers, body }
    }

    /// `GET /_router/regions`, as `{name: row}`.
    pub async fn regions(&self) -> BTreeMap<String, Value> {
        let r = self.send(reqwest::Method::GET, "/_router/regions", &[], None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row["name"].as_str().unwrap().to_owned(), row.clone()))
            .collect()
    }

    /// Waits until `region`'s health is `healthy`; returns how long that took.
    pub async fn wait_health(&self, region: &str, healthy: bool, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let regions = self.regions().await;
            if regions[region]["healthy"] == json!(healthy) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "{region} not healthy={healthy} after {timeout:?}: {:?}",
                regions[region]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every region is healthy.
    pub async fn wait_all_healthy(&self, timeout: Duration) {
        for name in NAMES {
            self.wait_health(name, true, timeout).await;
        }
    }

    /// Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/_router/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

/// The value of the series `name{labels}` in Prometheus text (labels as rendered, in order), or 0.
pub fn series(metrics: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap()).unwrap_or(0.0)
}
