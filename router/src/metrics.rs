//! The router's Prometheus metrics, on a recorder of its own (not the process-global one), so that
//! `/_router/metrics` shows exactly this router's series, also when tests run several routers, or
//! a router beside nodes, in one process.

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// `{client_region, serving_region, status}`: every request the router answered.
pub const REQUESTS: &str = "ledger_router_requests_total";
/// `{client_region, from_region, to_region}`: requests not served by their client region's
/// nearest region (it was unhealthy, or refused a GET's connection).
pub const FAILOVERS: &str = "ledger_router_failovers_total";
/// `{region}`: 1 while the region is routed to, else 0.
pub const REGION_HEALTHY: &str = "ledger_router_region_healthy";
/// `{region, to}`: health state changes.
pub const HEALTH_TRANSITIONS: &str = "ledger_router_health_transitions_total";

/// The `serving_region` of a request the router answered itself (no region could take it, or it
/// was refused before routing) and the `client_region` of one that named an unknown region: a
/// client-chosen header value must not become a label (unbounded series).
pub const NONE: &str = "none";

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// This router's recorder and its handle for rendering.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Self { recorder, handle }
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, client: &str, serving: &str, status: u16) {
        let status = status.to_string();
        let labels = [("client_region", client), ("serving_region", serving), ("status", status.as_str())];
        self.recorder.register_counter(&key(REQUESTS, &labels), &METADATA).increment(1);
    }

    /// Counts one request served away from its nearest region.
    pub fn failover(&self, client: &str, from: &str, to: &str) {
        let labels = [("client_region", client), ("from_region", from), ("to_region", to)];
        self.recorder.register_counter(&key(FAILOVERS, &labels), &METADATA).increment(1);
    }

    /// Sets a region's health gauge.
    pub fn healthy(&self, region: &str, healthy: bool) {
        let value = if healthy { 1.0 } else { 0.0 };
        self.recorder.register_gauge(&key(REGION_HEALTHY, &[("region", region)]), &METADATA).set(value);
    }

    /// Counts one health state change.
    pub fn transition(&self, region: &str, to: &str) {
        let labels = [("region", region), ("to", to)];
        self.recorder.register_counter(&key(HEALTH_TRANSITIONS, &labels), &METADATA).increment(1);
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
