//! A typed async client of the ledger's region API, safe to retry.
//!
//! - Every transfer carries an `Idempotency-Key` (one is generated when the caller gives none), and
//!   every retry of it carries the **same** key and body: a retry after a cut connection replays
//!   the original instead of moving money twice.
//! - Transport errors, timeouts, 5xx and 429 are retried with jittered exponential backoff, up to a
//!   bound; a 4xx is the ledger's answer and is returned at once.
//! - It follows one base URL (the geo-router) or a list of region URLs: a transport error moves to
//!   the next one. A retry that lands in another region before the first attempt replicated there
//!   executes again; the regions then record a `duplicate-intent` conflict for finance, never a
//!   silent double (the same key in another region replays once the first attempt replicates).
//! - It carries the `Ledger-Session` token the ledger hands back, so a client that fails over
//!   never reads back in time (the region waits until it has applied what the token names).

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One attempt of a call, as reported to [`ClientConfig::on_attempt`].
#[derive(Debug, Clone)]
pub struct AttemptEvent {
    /// When it ended.
    pub at: std::time::Instant,
    /// The call's path.
    pub path: String,
    /// The attempt's number (1 for the first).
    pub attempt: u32,
    /// The call's idempotency key, if it has one.
    pub idempotency_key: Option<String>,
    /// The HTTP status, if an answer arrived.
    pub status: Option<u16>,
    /// The region that answered (`Ledger-Region`), if it said.
    pub region: Option<String>,
    /// Whether the call is retried after it.
    pub retried: bool,
}

/// Observes every attempt (for drills and metrics); must not block.
#[derive(Clone)]
pub struct AttemptObserver(pub std::sync::Arc<dyn Fn(&AttemptEvent) + Send + Sync>);

impl std::fmt::Debug for AttemptObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttemptObserver")
    }
}

/// Where and how to call the ledger.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The router's URL, or region URLs in order of preference.
    pub urls: Vec<String>,
    /// The API key (read and write scopes).
    pub api_key: String,
    /// Sent as `X-Client-Region` (the router routes by it); `None` lets the router decide.
    pub client_region: Option<String>,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// Attempts of one call at most (the first included).
    pub attempts_max: u32,
    /// First backoff; each retry doubles it up to `backoff_max`, with full jitter.
    pub backoff_min: Duration,
    /// See `backoff_min`.
    pub backoff_max: Duration,
    /// Told of every attempt.
    pub on_attempt: Option<AttemptObserver>,
    /// Send the session token back and keep the one each answer hands out (default). A load
    /// generator that shares one client across unrelated requests turns it off.
    pub carry_session: bool,
}

impl ClientConfig {
    /// Defaults for `urls` and `api_key`: 5 s attempts, 8 attempts, backoff 50 ms to 2 s.
    pub fn new(urls: Vec<String>, api_key: impl Into<String>) -> Self {
        Self {
            urls,
            api_key: api_key.into(),
            client_region: None,
            attempt_timeout: Duration::from_secs(5),
            attempts_max: 8,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            on_attempt: None,
            carry_session: true,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The ledger answered with a problem (its `type` slug, e.g. `insufficient-funds`).
    #[error("{status} {kind}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem type's slug.
        kind: String,
        /// What was wrong.
        detail: String,
    },
    /// Every attempt failed to get an answer (the last reason). A transfer may or may not have
    /// been applied: retry it with the same key.
    #[error("no answer after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
        /// Its kind: `timeout`, `connect`, `transport`, `cut` or `http_<status>`.
        kind: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// Bad settings.
    #[error("configuration: {0}")]
    Config(String),
}

/// An account as the ledger reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Balance in minor units.
    pub balance: i64,
    /// Whether the balance may go below zero.
    pub allow_negative: bool,
    /// Entries so far.
    #[serde(default)]
    pub entries: i64,
    /// Frozen by an account-definition conflict.
    #[serde(default)]
    pub frozen: bool,
    /// The account's version vector.
    #[serde(default)]
    pub version_vector: Value,
    /// Reserved by pending transfers from it.
    #[serde(default)]
    pub pending_debits: i64,
    /// Promised to it by pending transfers.
    #[serde(default)]
    pub pending_credits: i64,
    /// What may be spent: balance less pending debits.
    #[serde(default)]
    pub available: i64,
}

/// An account at a point of its history (`GET /v1/accounts/{id}?at=`), as one region recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountAt {
    /// Its id.
    pub id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The point asked for: an RFC 3339 time (string) or an entry position (number).
    pub at: Value,
    /// How many entries the account had then.
    pub entries: i64,
    /// Balance in minor units after the last of them.
    pub balance: i64,
    /// The account's version vector after that entry.
    pub version_vector: Value,
    /// When the region recorded that entry (RFC 3339); none before any entry.
    pub recorded_at: Option<String>,
}

/// A point of an account's history for [`Client::account_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The entries recorded by this moment.
    Time(String),
    /// The account's first n entries.
    Position(i64),
}

/// A transfer as the ledger reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its id.
    pub id: String,
    /// Debited.
    pub from: String,
    /// Credited.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// The region that accepted it.
    pub origin_region: String,
    /// The client's key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Client data.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// A transfer to make.
#[derive(Debug, Clone, Default)]
pub struct NewTransfer {
    /// Debited.
    pub from: String,
    /// Credited.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// Both accounts' currency, checked by the ledger when given.
    pub currency: Option<String>,
    /// Client data.
    pub metadata: Map<String, Value>,
    /// The key; generated (a UUIDv7) when `None`.
    pub idempotency_key: Option<String>,
}

/// A pending (two-phase) transfer as the ledger reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTransfer {
    /// Its id.
    pub id: String,
    /// Debited when posted.
    pub from: String,
    /// Credited when posted.
    pub to: String,
    /// Minor units reserved.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// `pending`, `posted`, `voided` or `expired`.
    pub status: String,
    /// Minor units posted.
    pub posted_amount: i64,
    /// RFC 3339 deadline, if any.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The transfers its posts made.
    #[serde(default)]
    pub posted_transfer_ids: Vec<String>,
    /// The region that created it.
    pub origin_region: String,
}

/// One leg of a transaction, to make or as the ledger reports it (then with its transfer `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TransactionLeg {
    /// The leg's transfer id; empty when making one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Debited.
    pub from: String,
    /// Credited.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// Both accounts' currency.
    pub currency: String,
}

/// A multi-leg transaction to make: every leg or none.
#[derive(Debug, Clone, Default)]
pub struct NewTransaction {
    /// 1 to 16 legs, judged in order.
    pub legs: Vec<TransactionLeg>,
    /// Client data.
    pub metadata: Map<String, Value>,
    /// The key; generated (a UUIDv7) when `None`.
    pub idempotency_key: Option<String>,
}

/// A transaction as the ledger reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Its id.
    pub id: String,
    /// Its legs, in order.
    pub legs: Vec<TransactionLeg>,
    /// The region that accepted it.
    pub origin_region: String,
    /// The client's key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Each touched account's version vector after it.
    #[serde(default)]
    pub version_vectors: Value,
}

/// A balance monitor to create (`POST /v1/monitors`).
#[derive(Debug, Clone, Default)]
pub struct NewMonitor {
    /// The account watched; it must exist in the region reached.
    pub account: String,
    /// `<balance|available> <|<=|>|>= <integer minor units>`, e.g. `available < 1000`.
    pub condition: String,
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// Signs every delivery (16 to 256 characters); never returned.
    pub secret: String,
}

/// A balance monitor as the ledger reports it (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    /// Its id.
    pub id: String,
    /// The account watched.
    pub account: String,
    /// The condition, canonical.
    pub condition: String,
    /// The target URL.
    pub url: String,
    /// `active` or `deleted`.
    pub status: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or `None` while active.
    #[serde(default)]
    pub deleted_at: Option<String>,
}

/// A page of monitors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorsPage {
    /// Oldest first.
    pub monitors: Vec<Monitor>,
    /// The `after` of the next page, or `None` after the last.
    #[serde(default)]
    pub next_after: Option<i64>,
}

/// One attempt to deliver a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    /// From 1.
    pub attempt: i64,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, or `None` while in flight.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// The target's status, if it answered.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// Why it did not answer, if so.
    #[serde(default)]
    pub error: Option<String>,
}

/// One firing of a monitor and its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The `Ledger-Webhook-Id` of every attempt: dedupe by it.
    pub delivery_id: String,
    /// The monitor.
    pub monitor_id: String,
    /// The event whose posting fired it.
    pub event_id: String,
    /// The account.
    pub account: String,
    /// The condition when it fired.
    pub condition: String,
    /// The balance after the posting.
    pub balance_after: i64,
    /// RFC 3339.
    pub occurred_at: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// RFC 3339, when pending.
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    /// RFC 3339, once delivered.
    #[serde(default)]
    pub delivered_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// The latest attempts, oldest first.
    pub attempt_log: Vec<WebhookAttempt>,
}

/// A page of deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveriesPage {
    /// Oldest first.
    pub deliveries: Vec<WebhookDelivery>,
    /// The `after` of the next page, or `None` after the last.
    #[serde(default)]
    pub next_after: Option<i64>,
}

/// `?name=value&…` of the parameters given, percent-encoded; empty when none is.
fn query(params: &[(&str, Option<String>)]) -> String {
    let given: Vec<String> =
        params.iter().filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", encode(v)))).collect();
    if given.is_empty() { String::new() } else { format!("?{}", given.join("&")) }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a successful call returned, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<T> {
    /// The value.
    pub value: T,
    /// The region that served the answer (`Ledger-Region`, set by the router), if known.
    pub region: Option<String>,
    /// The answer replayed an earlier execution of the key.
    pub replayed: bool,
    /// Attempts it took.
    pub attempts: u32,
    /// The idempotency key used.
    pub idempotency_key: Option<String>,
}

/// The client. Cheap to share behind an `Arc`; the session token is shared by every call.
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    next_url: AtomicUsize,
    session: Mutex<Option<String>>,
}

enum Attempt {
    Done(u16, reqwest::header::HeaderMap, Value),
    /// Why, its kind, the status and region if an answer arrived.
    Retry(String, String, Option<u16>, Option<String>),
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

impl Client {
    /// A client for `cfg`.
    pub fn new(cfg: ClientConfig) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(cfg.attempt_timeout)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Self::with_http(cfg, http)
    }

    /// A client for `cfg` over a tuned HTTP client (its own timeouts and pool apply).
    pub fn with_http(cfg: ClientConfig, http: reqwest::Client) -> Result<Self, Error> {
        if cfg.urls.is_empty() {
            return Err(Error::Config("at least one URL".into()));
        }
        if cfg.attempts_max == 0 {
            return Err(Error::Config("attempts_max must be at least 1".into()));
        }
        Ok(Self { http, cfg, next_url: AtomicUsize::new(0), session: Mutex::new(None) })
    }

    /// The session token the client carries (the last the ledger handed back).
    pub fn session(&self) -> Option<String> {
        self.session.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the session token (to hand a session to another client).
    pub fn set_session(&self, token: Option<String>) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn url(&self) -> &str {
        &self.cfg.urls[self.next_url.load(Ordering::Relaxed) % self.cfg.urls.len()]
    }

    fn fail_over(&self) {
        if self.cfg.urls.len() > 1 {
            self.next_url.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn attempt(&self, method: &reqwest::Method, path: &str, body: Option<&Value>, key: Option<&str>) -> Attempt {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url())).bearer_auth(&self.cfg.api_key);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(r) = &self.cfg.client_region {
            req = req.header("X-Client-Region", r);
        }
        if let Some(s) = self.session().filter(|_| self.cfg.carry_session) {
            req = req.header("Ledger-Session", s);
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let why = format!("{}: {e}", self.url());
                self.fail_over();
                return Attempt::Retry(why, transport_kind(&e).to_owned(), None, None);
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            // The connection was cut mid-answer: the request may have been applied.
            Err(e) => {
                self.fail_over();
                return Attempt::Retry(format!("answer cut: {e}"), "cut".to_owned(), Some(status), None);
            }
        };
        if status >= 500 || status == 429 || status == 408 {
            let region = headers.get("ledger-region").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let why = format!("{status}: {}", String::from_utf8_lossy(&bytes));
            return Attempt::Retry(why, format!("http_{status}"), Some(status), region);
        }
        if let Some(t) = headers.get("ledger-session").and_then(|v| v.to_str().ok()).filter(|_| self.cfg.carry_session)
        {
            self.set_session(Some(t.to_owned()));
        }
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Attempt::Done(status, headers, value)
    }

    /// One call with retries: the same method, path, body and key every time.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<String>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Value, u32), Error> {
        self.call_up_to(self.cfg.attempts_max, method, path, body, key).await
    }

    /// [`Client::call`] with at most `attempts_max` attempts (1 for a write the ledger cannot
    /// recognise as a retry).
    async fn call_up_to(
        &self,
        attempts_max: u32,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<String>,
    ) -> Result<(u16, reqwest::header::HeaderMap, Value, u32), Error> {
        let mut backoff = self.cfg.backoff_min;
        let (mut last, mut last_kind) = (String::new(), String::new());
        for attempt in 1..=attempts_max {
            let outcome = self.attempt(&method, path, body.as_ref(), key.as_deref()).await;
            if let Some(observer) = &self.cfg.on_attempt {
                let (status, region, retried) = match &outcome {
                    Attempt::Done(status, headers, _) => (
                        Some(*status),
                        headers.get("ledger-region").and_then(|v| v.to_str().ok()).map(str::to_owned),
                        false,
                    ),
                    Attempt::Retry(_, _, status, region) => (*status, region.clone(), attempt < attempts_max),
                };
                (observer.0)(&AttemptEvent {
                    at: std::time::Instant::now(),
                    path: path.to_owned(),
                    attempt,
                    idempotency_key: key.clone(),
                    status,
                    region,
                    retried,
                });
            }
            match outcome {
                Attempt::Done(status, headers, value) if (200..300).contains(&status) => {
                    return Ok((status, headers, value, attempt));
                }
                Attempt::Done(status, _, value) => {
                    let kind = value["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("").to_owned();
                    let detail = value["detail"].as_str().unwrap_or("").to_owned();
                    return Err(Error::Problem { status, kind, detail });
                }
                Attempt::Retry(why, kind, _, _) => {
                    tracing::debug!(%why, attempt, "retrying with the same key");
                    (last, last_kind) = (why, kind);
                }
            }
            if attempt < attempts_max {
                let jittered = rand::rng().random_range(0..=backoff.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(jittered)).await;
                backoff = (backoff * 2).min(self.cfg.backoff_max);
            }
        }
        Err(Error::Unavailable { attempts: attempts_max, last, kind: last_kind })
    }

    fn answered<T>(value: T, headers: &reqwest::header::HeaderMap, attempts: u32, key: Option<String>) -> Answered<T> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Answered {
            value,
            region: header("ledger-region"),
            replayed: header("idempotent-replayed").as_deref() == Some("true"),
            attempts,
            idempotency_key: key,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Error> {
        serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Opens an account (idempotent: the same id and body answer the same).
    pub async fn open_account(
        &self,
        id: &str,
        currency: &str,
        allow_negative: bool,
    ) -> Result<Answered<Account>, Error> {
        let body = json!({"id": id, "currency": currency, "allow_negative": allow_negative});
        let (_, headers, value, attempts) = self.call(reqwest::Method::POST, "/v1/accounts", Some(body), None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// Moves money, with the given key or a new one; every retry sends the same key and body.
    pub async fn transfer(&self, t: NewTransfer) -> Result<Answered<Transfer>, Error> {
        let key = t.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut body = json!({"from": t.from, "to": t.to, "amount": t.amount, "metadata": t.metadata});
        if let Some(c) = &t.currency {
            body["currency"] = json!(c);
        }
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::POST, "/v1/transfers", Some(body), Some(key.clone())).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, Some(key)))
    }

    /// Moves every leg or none, with the given key or a new one; every retry sends the same key
    /// and body.
    pub async fn transaction(&self, t: NewTransaction) -> Result<Answered<Transaction>, Error> {
        let key = t.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let body = json!({"legs": t.legs, "metadata": t.metadata});
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::POST, "/v1/transactions", Some(body), Some(key.clone())).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, Some(key)))
    }

    /// One transaction, as fresh as the session requires.
    pub async fn get_transaction(&self, id: &str) -> Result<Answered<Transaction>, Error> {
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::GET, &format!("/v1/transactions/{id}"), None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// Reserves `t.amount` (a pending transfer), to post or void later; `timeout_s` voids it then
    /// if nobody settled it.
    pub async fn pending_transfer(
        &self,
        t: NewTransfer,
        timeout_s: Option<i64>,
    ) -> Result<Answered<PendingTransfer>, Error> {
        let key = t.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut body = json!({"from": t.from, "to": t.to, "amount": t.amount, "metadata": t.metadata, "pending": true});
        if let Some(c) = &t.currency {
            body["currency"] = json!(c);
        }
        if let Some(s) = timeout_s {
            body["timeout_s"] = json!(s);
        }
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::POST, "/v1/transfers", Some(body), Some(key.clone())).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, Some(key)))
    }

    /// Posts a pending transfer: all of it, or `amount` of it. Retried with one key.
    pub async fn post_pending(
        &self,
        id: &str,
        amount: Option<i64>,
        idempotency_key: Option<String>,
    ) -> Result<Answered<PendingTransfer>, Error> {
        let body = amount.map_or_else(|| json!({}), |a| json!({"amount": a}));
        self.settle(&format!("/v1/transfers/{id}/post"), body, idempotency_key).await
    }

    /// Voids a pending transfer. Retried with one key.
    pub async fn void_pending(
        &self,
        id: &str,
        idempotency_key: Option<String>,
    ) -> Result<Answered<PendingTransfer>, Error> {
        self.settle(&format!("/v1/transfers/{id}/void"), json!({}), idempotency_key).await
    }

    async fn settle(&self, path: &str, body: Value, key: Option<String>) -> Result<Answered<PendingTransfer>, Error> {
        let key = key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::POST, path, Some(body), Some(key.clone())).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, Some(key)))
    }

    /// One pending transfer, with its status.
    pub async fn get_pending(&self, id: &str) -> Result<Answered<PendingTransfer>, Error> {
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::GET, &format!("/v1/transfers/{id}"), None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// One account, as fresh as the session requires.
    pub async fn account(&self, id: &str) -> Result<Answered<Account>, Error> {
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::GET, &format!("/v1/accounts/{id}"), None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// One account's balance at a point of its history, in the region that answers.
    pub async fn account_at(&self, id: &str, at: &At) -> Result<Answered<AccountAt>, Error> {
        let at = match at {
            // `+` of a time zone offset would read as a space in a query string.
            At::Time(t) => t.replace('+', "%2B"),
            At::Position(n) => n.to_string(),
        };
        let path = format!("/v1/accounts/{id}?at={at}");
        let (_, headers, value, attempts) = self.call(reqwest::Method::GET, &path, None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// Creates a balance monitor in the region the client reaches (monitors are regional). Sent
    /// once, never retried: the ledger cannot recognise a second creation as a retry, and two
    /// monitors would deliver every crossing twice. On [`Error::Unavailable`] look for it with
    /// [`Client::monitors`] before creating it again.
    pub async fn create_monitor(&self, m: NewMonitor) -> Result<Answered<Monitor>, Error> {
        let body = json!({"account": m.account, "condition": m.condition, "url": m.url, "secret": m.secret});
        let (_, headers, value, attempts) =
            self.call_up_to(1, reqwest::Method::POST, "/v1/monitors", Some(body), None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// One monitor (never its secret).
    pub async fn monitor(&self, id: &str) -> Result<Answered<Monitor>, Error> {
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::GET, &format!("/v1/monitors/{id}"), None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// A page of monitors, optionally of one account; `after` is the previous page's `next_after`.
    pub async fn monitors(
        &self,
        account: Option<&str>,
        after: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Answered<MonitorsPage>, Error> {
        let path = format!(
            "/v1/monitors{}",
            query(&[
                ("account", account.map(str::to_owned)),
                ("after", after.map(|a| a.to_string())),
                ("limit", limit.map(|l| l.to_string()))
            ])
        );
        let (_, headers, value, attempts) = self.call(reqwest::Method::GET, &path, None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// Deletes a monitor (idempotent: deleting again answers the same).
    pub async fn delete_monitor(&self, id: &str) -> Result<Answered<Monitor>, Error> {
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::DELETE, &format!("/v1/monitors/{id}"), None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// A page of what a monitor fired, each delivery with its attempt log.
    pub async fn monitor_deliveries(
        &self,
        id: &str,
        after: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Answered<DeliveriesPage>, Error> {
        let path = format!(
            "/v1/monitors/{id}/deliveries{}",
            query(&[("after", after.map(|a| a.to_string())), ("limit", limit.map(|l| l.to_string()))])
        );
        let (_, headers, value, attempts) = self.call(reqwest::Method::GET, &path, None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// A page of the region's deliveries in `state` (`pending`, `delivered`, or `dead`, the
    /// default: the dead letters).
    pub async fn webhook_deliveries(
        &self,
        state: Option<&str>,
        after: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Answered<DeliveriesPage>, Error> {
        let path = format!(
            "/v1/webhook-deliveries{}",
            query(&[
                ("state", state.map(str::to_owned)),
                ("after", after.map(|a| a.to_string())),
                ("limit", limit.map(|l| l.to_string()))
            ])
        );
        let (_, headers, value, attempts) = self.call(reqwest::Method::GET, &path, None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// Sends a dead delivery again, with the same id. A retried call whose first attempt was
    /// applied answers `409 delivery-not-dead`: the delivery is pending or delivered by then.
    pub async fn retry_delivery(&self, id: &str) -> Result<Answered<WebhookDelivery>, Error> {
        let path = format!("/v1/webhook-deliveries/{id}/retry");
        let (_, headers, value, attempts) = self.call(reqwest::Method::POST, &path, None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }

    /// One transfer, as fresh as the session requires.
    pub async fn get_transfer(&self, id: &str) -> Result<Answered<Transfer>, Error> {
        let (_, headers, value, attempts) =
            self.call(reqwest::Method::GET, &format!("/v1/transfers/{id}"), None, None).await?;
        Ok(Self::answered(Self::decode(value)?, &headers, attempts, None))
    }
}
