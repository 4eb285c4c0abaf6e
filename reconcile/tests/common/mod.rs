//! Three real regions (PostgreSQL, Kafka, node, replicators) and the reconcile service, for the
//! workflow, authorization, crash and browser tests.

#![allow(dead_code)]

use reconcile::case::Role;
use reconcile::config::{ReconcileConfig, RegionEndpoint};
use replicator::{Replicator, ReplicatorConfig, Source};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub struct Regions {
    pub regions: Vec<testkit::Region>,
    pub nodes: Vec<Option<region_node::Node>>,
    pub urls: Vec<String>,
    pub replicators: Vec<Option<Replicator>>,
    pub prefix: String,
    /// A client's key (read and write), the same in every region.
    pub write_key: String,
    /// The reconcile service's key (read, write, reconcile), the same in every region.
    pub reconcile_key: String,
    pub http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn problem(&self) -> &str {
        self.body["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("")
    }
}

fn replicator_config(regions: &[testkit::Region], target: usize, prefix: &str) -> ReplicatorConfig {
    ReplicatorConfig {
        target_region: regions[target].name().to_owned(),
        target_bootstrap: regions[target].kafka_bootstrap().to_owned(),
        sources: regions
            .iter()
            .map(|r| Source { region: r.name().to_owned(), bootstrap: r.kafka_bootstrap().to_owned() })
            .collect(),
        topic_prefix: prefix.to_owned(),
        metrics_addr: "127.0.0.1:0".into(),
        batch_max: 500,
        commit_interval_ms: 50,
        heartbeat_ms: 200,
        otlp_endpoint: String::new(),
    }
}

impl Regions {
    /// Three regions with replication running.
    pub async fn start() -> Self {
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
        let write_key = format!("test-write-{}", uuid::Uuid::new_v4());
        let reconcile_key = format!("test-reconcile-{}", uuid::Uuid::new_v4());
        let mut nodes = Vec::new();
        let mut urls = Vec::new();
        for region in &regions {
            let db = region.fresh_database().await;
            let cfg = region_node::config::NodeConfig {
                region: region.name().to_owned(),
                http_addr: "127.0.0.1:0".into(),
                database_url: db.url.clone(),
                kafka_bootstrap: region.kafka_bootstrap().to_owned(),
                topic_prefix: prefix.clone(),
                bootstrap_api_key: write_key.clone(),
                reconcile_api_key: reconcile_key.clone(),
                peers: names.iter().filter(|n| *n != region.name()).cloned().collect(),
                ..region_node::config::NodeConfig::default()
            };
            let node = region_node::start(cfg).await.expect("node starts");
            urls.push(format!("http://{}", node.addr()));
            nodes.push(Some(node));
        }
        let mut me = Self {
            regions,
            nodes,
            urls,
            replicators: Vec::new(),
            prefix,
            write_key,
            reconcile_key,
            http: reqwest::Client::new(),
        };
        me.resume().await;
        me
    }

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

    /// The reconcile service's settings against these regions, on a new empty database.
    pub fn reconcile_config(&self) -> ReconcileConfig {
        ReconcileConfig {
            http_addr: "127.0.0.1:0".into(),
            database_url: self.regions[0].empty_database(),
            regions: self
                .regions
                .iter()
                .zip(&self.urls)
                .map(|(r, url)| RegionEndpoint {
                    name: r.name().to_owned(),
                    api_url: url.clone(),
                    kafka_bootstrap: r.kafka_bootstrap().to_owned(),
                })
                .collect(),
            node_api_key: self.reconcile_key.clone(),
            topic_prefix: self.prefix.clone(),
            consumer_group: format!("reconcile-{}", uuid::Uuid::new_v4().simple()),
            approval_threshold_minor: 1_000,
            execute_interval_ms: 200,
            retry_ms_min: 100,
            retry_ms_max: 1_000,
            backfill_interval_ms: 2_000,
            ..ReconcileConfig::default()
        }
    }

    pub async fn send(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.urls[i])).bearer_auth(&self.write_key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let r = req.send().await.expect("the node answers");
        let status = r.status().as_u16();
        Reply { status, body: r.json().await.unwrap_or(Value::Null) }
    }

    pub async fn get(&self, i: usize, path: &str) -> Reply {
        self.send(i, reqwest::Method::GET, path, None, None).await
    }

    pub async fn open(&self, i: usize, id: &str, currency: &str, allow_negative: bool) {
        let r = self
            .send(
                i,
                reqwest::Method::POST,
                "/v1/accounts",
                Some(json!({"id": id, "currency": currency, "allow_negative": allow_negative})),
                None,
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "open {id}: {} {}", r.status, r.body);
    }

    pub async fn transfer(&self, i: usize, from: &str, to: &str, amount: i64) -> Reply {
        self.send(
            i,
            reqwest::Method::POST,
            "/v1/transfers",
            Some(json!({"from": from, "to": to, "amount": amount})),
            None,
        )
        .await
    }

    pub async fn balance(&self, i: usize, id: &str) -> i64 {
        let r = self.get(i, &format!("/v1/accounts/{id}")).await;
        r.body["balance"].as_i64().unwrap_or_else(|| panic!("balance of {id} in region {i}: {}", r.body))
    }

    /// Waits until every region shows the same balances for `accounts`, and returns them.
    pub async fn converged(&self, accounts: &[&str], timeout: Duration) -> Vec<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = Vec::new();
            for i in 0..self.regions.len() {
                let mut b = Vec::new();
                for a in accounts {
                    let r = self.get(i, &format!("/v1/accounts/{a}")).await;
                    b.push(r.body["balance"].as_i64());
                }
                all.push(b);
            }
            if all.iter().all(|b| *b == all[0] && b.iter().all(Option::is_some)) {
                return all[0].iter().map(|b| b.unwrap()).collect();
            }
            assert!(Instant::now() < deadline, "regions did not converge on {accounts:?}: {all:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every region shows `expected` for `account`: after a partition, `converged` is
    /// met at once by regions that each show only their own postings, the same everywhere.
    pub async fn wait_balance(&self, account: &str, expected: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for i in 0..self.regions.len() {
                seen.push(self.balance(i, account).await);
            }
            if seen.iter().all(|b| *b == expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{account} in each region: {seen:?}, expected {expected}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every region's conflicts (all pages of the first 1,000).
    pub async fn conflicts(&self, i: usize) -> Vec<Value> {
        self.get(i, "/v1/conflicts?limit=1000").await.body["conflicts"].as_array().cloned().unwrap_or_default()
    }

    /// The three-region overdraft: `acc` holds 150, each region debits 60 while partitioned, so
    /// together they overdraw it by 30. Returns the three transfer ids.
    pub async fn three_region_overdraft(&mut self, acc: &str) -> Vec<String> {
        self.open(0, "world", "USD", true).await;
        for id in [acc, "shop"] {
            self.open(0, id, "USD", false).await;
        }
        assert_eq!(self.transfer(0, "world", acc, 150).await.status, 201);
        self.converged(&[acc, "shop", "world"], Duration::from_secs(60)).await;
        self.pause().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let r = self.transfer(i, acc, "shop", 60).await;
            assert_eq!(r.status, 201, "region {i} accepts on its own: {}", r.body);
            ids.push(r.body["id"].as_str().unwrap().to_owned());
        }
        self.resume().await;
        self.wait_balance(acc, 150 - 3 * 60, Duration::from_secs(120)).await;
        self.converged(&[acc, "shop", "world"], Duration::from_secs(120)).await;
        ids
    }
}

/// Staff of a reconcile database: (username, role, password, token) for each role.
pub struct Staff {
    pub people: Vec<(String, Role, String, String)>,
}

pub const PASSWORD: &str = "a long test password";

impl Staff {
    pub async fn create(database_url: &str) -> Self {
        let pool = reconcile::connect(database_url).await.unwrap();
        let mut people = Vec::new();
        for (name, role) in [
            ("viewer", Role::Viewer),
            ("resolver", Role::Resolver),
            ("approver", Role::Approver),
            ("approver2", Role::Approver),
            ("admin", Role::Admin),
        ] {
            reconcile::auth::put_staff(&pool, name, role, PASSWORD).await.unwrap();
            let token = reconcile::auth::issue_token(&pool, name, role, "test").await.unwrap();
            people.push((name.to_owned(), role, PASSWORD.to_owned(), token));
        }
        pool.close().await;
        Self { people }
    }

    pub fn token(&self, username: &str) -> &str {
        &self.people.iter().find(|p| p.0 == username).expect("a known person").3
    }
}

/// A client of the reconcile JSON API.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self { base, http: reqwest::Client::new() }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("reconcile answers");
        let status = r.status().as_u16();
        Reply { status, body: r.json().await.unwrap_or(Value::Null) }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(reqwest::Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(token), Some(body)).await
    }

    /// Waits until `f` holds for the case list of `query`, returning it.
    pub async fn wait_cases(
        &self,
        token: &str,
        query: &str,
        timeout: Duration,
        f: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(&format!("/api/cases?{query}"), token).await;
            let cases = r.body["cases"].as_array().cloned().unwrap_or_default();
            if f(&cases) {
                return cases;
            }
            assert!(Instant::now() < deadline, "cases of {query:?} never matched: {}", r.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the case is in `state`, returning it.
    pub async fn wait_state(&self, token: &str, id: &str, state: &str, timeout: Duration) -> Value {
        self.wait_case(token, id, timeout, &format!("reached {state}"), |c| c["state"] == state).await
    }

    /// Waits until `f` holds for the case (`what` names the wait in the failure), returning it.
    pub async fn wait_case(
        &self,
        token: &str,
        id: &str,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get(&format!("/api/cases/{id}"), token).await;
            if f(&r.body) {
                return r.body;
            }
            assert!(Instant::now() < deadline, "case {id} never {what}: {}", r.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
