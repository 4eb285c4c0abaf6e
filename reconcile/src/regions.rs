//! Calls to the region nodes' public API, with the reconcile key. Each call says whether the
//! answer is final (the region decided) or worth retrying (transport errors, timeouts, 5xx, 429),
//! so callers retry exactly what is safe to retry.

use crate::config::RegionEndpoint;
use serde_json::Value;
use std::time::Duration;

/// A region's answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 2xx, with the body.
    Ok(u16, Value),
    /// A final refusal (4xx but 408 and 429), with the problem.
    Refused(u16, Value),
    /// Worth retrying: what happened.
    Retry(String),
}

/// A client for every region.
#[derive(Clone)]
pub struct Regions {
    http: reqwest::Client,
    key: String,
    /// The regions, in configuration order.
    pub endpoints: Vec<RegionEndpoint>,
}

impl Regions {
    /// A client with a per-call timeout.
    pub fn new(endpoints: Vec<RegionEndpoint>, key: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().expect("a TLS-less client builds");
        Self { http, key, endpoints }
    }

    /// The endpoint of a region by name.
    pub fn endpoint(&self, name: &str) -> Option<&RegionEndpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Answer {
        let response = match req.bearer_auth(&self.key).send().await {
            Ok(r) => r,
            Err(e) => return Answer::Retry(e.to_string()),
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200..=299 => Answer::Ok(status, body),
            408 | 429 => Answer::Retry(format!("{status}: {body}")),
            400..=499 => Answer::Refused(status, body),
            _ => Answer::Retry(format!("{status}: {body}")),
        }
    }

    /// `GET path` on a region.
    pub async fn get(&self, region: &RegionEndpoint, path: &str) -> Answer {
        self.call(self.http.get(format!("{}{path}", region.api_url))).await
    }

    /// `POST path` with a JSON body and optional idempotency key.
    pub async fn post(
        &self,
        region: &RegionEndpoint,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Answer {
        let mut req = self.http.post(format!("{}{path}", region.api_url)).json(body);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        self.call(req).await
    }

    /// Whether a region reports itself ready.
    pub async fn ready(&self, region: &RegionEndpoint) -> bool {
        matches!(self.get(region, "/readyz").await, Answer::Ok(..))
    }
}
