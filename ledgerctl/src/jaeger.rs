//! Jaeger (issue 15): the trace collector of the local stack. The Go module
//! `github.com/jaegertracing/jaeger` v1.76.0, `cmd/jaeger`, built by `scripts/install-deps.sh`
//! into `.cache/jaeger/bin`, runs all-in-one with in-memory storage from a configuration file in
//! the state folder, whose path on its command line is the marker that identifies its pid.
//!
//! Every port it opens is named in that file, on loopback, as offsets of the first region's HTTP
//! port: its built-in configuration would take the well-known ports (4317, 16686, 8888, 14250…),
//! which collide with a second stack on the same machine (the tests run several).

use crate::error::{Result, StackError};
use crate::process::{self, Lifetime};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The query API and UI listen this far above the first region's HTTP port (18140 by default).
pub const QUERY_PORT_OFFSET: u16 = 60;
/// OTLP over gRPC, where every component exports its spans.
pub const OTLP_GRPC_PORT_OFFSET: u16 = 61;
/// OTLP over HTTP.
pub const OTLP_HTTP_PORT_OFFSET: u16 = 62;
/// The query service's gRPC API (Jaeger opens it whether or not anyone uses it).
pub const QUERY_GRPC_PORT_OFFSET: u16 = 63;
/// How long Jaeger may take to answer its query API.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default binary: `.cache/jaeger/bin/jaeger` under the repository.
pub fn default_bin() -> PathBuf {
    crate::config::repo_root().join(".cache").join("jaeger").join("bin").join("jaeger")
}

/// The Jaeger process of ours.
#[derive(Debug, Clone)]
pub struct JaegerProcess {
    /// `jaeger` (v2, all-in-one).
    pub bin: PathBuf,
    /// Its state folder (configuration and log).
    pub dir: PathBuf,
    /// The first region's HTTP port, which every port of ours is an offset of.
    pub base_port: u16,
}

impl JaegerProcess {
    fn config_path(&self) -> PathBuf {
        self.dir.join("jaeger.yaml")
    }

    /// Its output.
    pub fn log(&self) -> PathBuf {
        self.dir.join("jaeger.log")
    }

    /// The marker that identifies its pid.
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Every port it opens, with what it is.
    pub fn ports(&self) -> [(u16, &'static str); 4] {
        [
            (self.base_port + QUERY_PORT_OFFSET, "Jaeger's query API"),
            (self.base_port + OTLP_GRPC_PORT_OFFSET, "Jaeger's OTLP/gRPC receiver"),
            (self.base_port + OTLP_HTTP_PORT_OFFSET, "Jaeger's OTLP/HTTP receiver"),
            (self.base_port + QUERY_GRPC_PORT_OFFSET, "Jaeger's query gRPC API"),
        ]
    }

    /// The query API's and UI's base URL (`/api/traces/<id>`, `/search`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.base_port + QUERY_PORT_OFFSET)
    }

    /// Where the components send their spans (OTLP/gRPC).
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.base_port + OTLP_GRPC_PORT_OFFSET)
    }

    /// Fails when the binary is missing.
    pub fn check_binary(bin: &Path) -> Result<()> {
        if bin.is_file() {
            return Ok(());
        }
        Err(StackError::MissingBinary {
            what: "jaeger",
            path: bin.to_path_buf(),
            fix: "scripts/install-deps.sh builds it into .cache/jaeger/bin (go get -tool \
                  github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0, then go build)",
        })
    }

    /// The configuration (Jaeger v2 is an OpenTelemetry Collector): OTLP in, in-memory storage,
    /// the query API; the collector's own metrics off, as they would open port 8888.
    pub fn config_yaml(&self) -> String {
        let [(query, _), (grpc, _), (http, _), (query_grpc, _)] = self.ports();
        format!(
            "# Written by ledgerctl up.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memory_store:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memory_store
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
processors:
  batch:
exporters:
  jaeger_storage_exporter:
    trace_storage: memory_store
"
        )
    }

    /// Starts Jaeger; returns at once.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        Self::check_binary(&self.bin)?;
        std::fs::create_dir_all(&self.dir).map_err(StackError::io(&self.dir))?;
        let path = self.config_path();
        std::fs::write(&path, self.config_yaml()).map_err(StackError::io(&path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&path);
        process::log_to(&mut cmd, &self.log())?;
        process::spawn(cmd, lifetime, "jaeger")
    }

    /// Waits until the query API and the OTLP/gRPC receiver answer, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("a client builds");
        let (query, otlp) = (format!("{}/api/services", self.url()), self.base_port + OTLP_GRPC_PORT_OFFSET);
        let awaited = "its query API and OTLP receiver did not answer";
        process::wait_ready("jaeger", pid, &self.marker(), &self.log(), READY_TIMEOUT, awaited, || async {
            // The collector starts its extensions (the query API) before its receivers.
            http.get(&query).send().await.is_ok_and(|r| r.status().is_success())
                && tokio::net::TcpStream::connect(("127.0.0.1", otlp)).await.is_ok()
        })
        .await
    }
}
