//! `.devstack/env.json`: what is running and where. Written by `ledgerctl up` after every process it
//! starts (so even an interrupted `up` leaves a record `down` can act on), read by `down`, `status`,
//! the tests, the chaos suite and the benchmark.

use crate::error::{Result, StackError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// One entry per region, in port order.
    pub regions: Vec<RegionEntry>,
    /// Development API key with read and write scopes (written once the region nodes exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The state folder this manifest describes.
    pub state_dir: PathBuf,
    /// The reconcile service's web UI and API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_url: Option<String>,
    /// The development staff of the reconcile service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconcile_users: Vec<StaffEntry>,
    /// The reconcile service's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_database_url: Option<String>,
    /// The reconcile service's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_pid: Option<u32>,
    /// The geo-router: the one address clients call (nearest healthy region first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
    /// The router's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_pid: Option<u32>,
    /// Toxiproxy's API, when the cross-region links pass through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toxiproxy_url: Option<String>,
    /// Toxiproxy's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toxiproxy_pid: Option<u32>,
    /// Jaeger's query API and UI (`/api/traces/<trace id>`, `/search`), when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_url: Option<String>,
    /// Jaeger's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jaeger_pid: Option<u32>,
    /// Prometheus's UI and API (scraping every component, evaluating `observability/alerts.yml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
    /// Prometheus's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_pid: Option<u32>,
    /// Set when PostgreSQL, Kafka and our services run as containers (`ledgerctl up --containers`):
    /// the images and the containers' names. Pids are then their main processes' on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<crate::containers::ContainersEntry>,
    /// The proxied cross-region links (empty without Toxiproxy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<crate::toxiproxy::Link>,
}

/// A development staff member of the reconcile service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffEntry {
    /// Login name.
    pub username: String,
    /// Password (development only: written here so tests and people can log in).
    pub password: String,
    /// viewer, resolver, approver or admin.
    pub role: String,
    /// An API token with the same role.
    pub token: String,
}

/// One region's endpoints and processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionEntry {
    /// Region name.
    pub name: String,
    /// The region node's base URL.
    pub http_url: String,
    /// The regional database.
    pub postgres_url: String,
    /// The regional Kafka's bootstrap address.
    pub kafka_bootstrap: String,
    /// Pids of the processes we started; `None` when that part is not running.
    pub pids: Pids,
    /// PostgreSQL's data folder (also the marker that identifies its pid).
    pub postgres_data_dir: PathBuf,
    /// Kafka's folder (its `server.properties` path identifies its pid).
    pub kafka_dir: PathBuf,
    /// PostgreSQL's port.
    pub postgres_port: u16,
    /// Kafka's client port.
    pub kafka_port: u16,
    /// Kafka's controller port.
    pub kafka_controller_port: u16,
    /// The region node's port.
    pub http_port: u16,
}

/// Pids per component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pids {
    /// The postmaster.
    pub postgres: Option<u32>,
    /// The Kafka JVM.
    pub kafka: Option<u32>,
    /// The region node.
    #[serde(default)]
    pub node: Option<u32>,
    /// The replicator into this region.
    #[serde(default)]
    pub replicator: Option<u32>,
}

impl Manifest {
    /// Reads the manifest; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StackError::Io { path: path.to_path_buf(), source: e }),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| StackError::CorruptState {
            path: path.to_path_buf(),
            detail: format!("unreadable manifest: {e}"),
        })
    }

    /// Writes the manifest atomically (temporary file, then rename), so readers never see half.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        std::fs::write(&tmp, text + "\n").map_err(StackError::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(StackError::io(path))
    }

    /// The entry for `region`.
    pub fn region(&self, region: &str) -> Option<&RegionEntry> {
        self.regions.iter().find(|r| r.name == region)
    }
}
