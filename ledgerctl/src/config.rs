//! What the stack is made of: regions, their ports and where state and caches live. Resolved from
//! defaults, then the environment, then flags (clap does the last two), so the CLI and the test
//! harness build the same `StackConfig`.

use crate::error::{Result, StackError};
use ledger_core::RegionId;
use std::path::{Path, PathBuf};

/// Regions started when none are named.
pub const DEFAULT_REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// PostgreSQL port of the first region; region `i` uses `base + i`.
pub const DEFAULT_PG_PORT_BASE: u16 = 15432;
/// Kafka client port of the first region; region `i` uses `base + 10 * i` and the KRaft controller
/// listens one above its client port, so ten ports per region leave room for later listeners.
pub const DEFAULT_KAFKA_PORT_BASE: u16 = 19092;
/// HTTP port of the first region's node; region `i` uses `base + i`.
pub const DEFAULT_HTTP_PORT_BASE: u16 = 18080;
/// Kafka heap: three brokers, three PostgreSQL servers and a Rust build share 24 GiB, and a
/// single-node development broker is comfortable in 512 MiB.
pub const DEFAULT_KAFKA_HEAP_MB: u32 = 512;
/// Most regions one local stack runs; each costs a JVM and a PostgreSQL server.
pub const REGIONS_MAX: usize = 8;
/// The reconcile service listens this far above the first region's HTTP port (18090 by default).
pub const RECONCILE_PORT_OFFSET: u16 = 10;
/// The router listens this far above the first region's HTTP port (18100 by default), clear of
/// the nodes (one port per region, at most `REGIONS_MAX`) and of the reconcile service.
pub const ROUTER_PORT_OFFSET: u16 = 20;

/// One region's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// The region's name.
    pub name: RegionId,
    /// PostgreSQL's TCP port.
    pub pg_port: u16,
    /// Kafka's client (PLAINTEXT) port.
    pub kafka_port: u16,
    /// Kafka's KRaft controller port.
    pub kafka_controller_port: u16,
    /// The region node's HTTP port (started by the region-node issue).
    pub http_port: u16,
}

/// Everything the launcher needs to know.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The regions, in port order.
    pub regions: Vec<RegionSpec>,
    /// Where data, logs and `env.json` live (`.devstack` by default).
    pub state_dir: PathBuf,
    /// Where downloaded Kafka jars are cached (`.cache/kafka` by default); shared by tests.
    pub kafka_cache_dir: PathBuf,
    /// The pom.xml that names the Kafka jars.
    pub kafka_pom: PathBuf,
    /// Debian's PostgreSQL 15 binaries.
    pub pg_bin_dir: PathBuf,
    /// The Java 17 launcher.
    pub java: PathBuf,
    /// Maven.
    pub mvn: PathBuf,
    /// Kafka heap size.
    pub kafka_heap_mb: u32,
    /// The `region-node` binary.
    pub node_bin: PathBuf,
    /// The `replicator` binary.
    pub replicator_bin: PathBuf,
    /// The `reconcile` binary.
    pub reconcile_bin: PathBuf,
    /// The reconcile service's HTTP port (the first region's HTTP port + 10 by default).
    pub reconcile_port: u16,
    /// The `router` binary.
    pub router_bin: PathBuf,
    /// The router's HTTP port (the first region's HTTP port + 20 by default).
    pub router_port: u16,
    /// `toxiproxy-server`: when set, every cross-region Kafka link passes through a proxy of its
    /// own (see [`crate::toxiproxy`]), for the chaos suite.
    pub toxiproxy_bin: Option<PathBuf>,
    /// The proxy's API port (the first region's HTTP port + 30 by default).
    pub toxiproxy_port: u16,
    /// Jaeger, which every component sends its spans to; none: no tracing.
    pub jaeger_bin: Option<PathBuf>,
    /// `prometheus`: when set, `up` runs it over every component (see [`crate::prometheus`]).
    pub prometheus_bin: Option<PathBuf>,
    /// Prometheus's port.
    pub prometheus_port: u16,
    /// Run PostgreSQL, Kafka and our services as containers of these images (see
    /// [`StackConfig::in_containers`]); `None`: as local processes.
    pub containers: Option<crate::containers::Images>,
}

/// The repository root: where `kafka/pom.xml` and `migrations/` are.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("LEDGER_ROOT") {
        return PathBuf::from(root);
    }
    // This crate lives one level below the root; the binary is always built from the repository.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where `scripts/install-deps.sh` builds `toxiproxy-server`.
pub fn default_toxiproxy_bin() -> PathBuf {
    repo_root().join(".cache").join("toxiproxy").join("bin").join("toxiproxy-server")
}

impl StackConfig {
    /// Builds a configuration from region names and port bases.
    pub fn new(
        regions: &[String],
        pg_port_base: u16,
        kafka_port_base: u16,
        http_port_base: u16,
        state_dir: PathBuf,
    ) -> Result<Self> {
        if regions.is_empty() || regions.len() > REGIONS_MAX {
            return Err(StackError::Config(format!("between 1 and {REGIONS_MAX} regions, got {}", regions.len())));
        }
        let mut specs = Vec::with_capacity(regions.len());
        for (i, name) in regions.iter().enumerate() {
            let name = RegionId::new(name.trim()).map_err(|e| StackError::Config(e.to_string()))?;
            if specs.iter().any(|s: &RegionSpec| s.name == name) {
                return Err(StackError::Config(format!("region {name} named twice")));
            }
            let offset = |base: u16, step: usize| -> Result<u16> {
                u16::try_from(usize::from(base) + i * step).map_err(|_| {
                    StackError::Config(format!("port base {base} leaves no room for {} regions", regions.len()))
                })
            };
            let kafka_port = offset(kafka_port_base, 10)?;
            specs.push(RegionSpec {
                name,
                pg_port: offset(pg_port_base, 1)?,
                kafka_port,
                kafka_controller_port: kafka_port
                    .checked_add(1)
                    .ok_or_else(|| StackError::Config("kafka port base too high".into()))?,
                http_port: offset(http_port_base, 1)?,
            });
        }
        let root = repo_root();
        Ok(Self {
            regions: specs,
            state_dir,
            kafka_cache_dir: root.join(".cache").join("kafka"),
            kafka_pom: root.join("kafka").join("pom.xml"),
            pg_bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            java: PathBuf::from("java"),
            mvn: PathBuf::from("mvn"),
            kafka_heap_mb: DEFAULT_KAFKA_HEAP_MB,
            node_bin: crate::node::default_bin(),
            replicator_bin: crate::node::default_replicator_bin(),
            reconcile_bin: crate::reconcile::default_bin(),
            reconcile_port: http_port_base
                .checked_add(RECONCILE_PORT_OFFSET)
                .ok_or_else(|| StackError::Config("http port base too high".into()))?,
            router_bin: crate::router::default_bin(),
            router_port: http_port_base
                .checked_add(ROUTER_PORT_OFFSET)
                .ok_or_else(|| StackError::Config("http port base too high".into()))?,
            toxiproxy_bin: None,
            toxiproxy_port: http_port_base
                .checked_add(crate::toxiproxy::API_PORT_OFFSET)
                .ok_or_else(|| StackError::Config("http port base too high".into()))?,
            jaeger_bin: None,
            prometheus_bin: crate::prometheus::default_bin(),
            prometheus_port: http_port_base
                .checked_add(crate::prometheus::PORT_OFFSET)
                .ok_or_else(|| StackError::Config("http port base too high".into()))?,
            containers: None,
        })
    }

    /// The same stack in containers of `images`: the binaries are the images' (paths inside them).
    pub fn in_containers(&mut self, images: crate::containers::Images) {
        use crate::containers::{self, Images};
        self.pg_bin_dir = PathBuf::from(containers::PG_BIN_DIR);
        self.java = PathBuf::from(containers::JAVA);
        self.node_bin = Images::service_bin("region-node");
        self.replicator_bin = Images::service_bin("replicator");
        self.router_bin = Images::service_bin("router");
        self.reconcile_bin = Images::service_bin("reconcile");
        self.containers = Some(images);
    }

    /// The configuration of a running stack, from its manifest: its regions and port bases, its
    /// state folder, and Toxiproxy if it was started with it. Binaries are the defaults.
    pub fn from_manifest(manifest: &crate::manifest::Manifest) -> Result<Self> {
        let first =
            manifest.regions.first().ok_or_else(|| StackError::Config("the manifest names no region".into()))?;
        let names: Vec<String> = manifest.regions.iter().map(|r| r.name.clone()).collect();
        let mut cfg =
            Self::new(&names, first.postgres_port, first.kafka_port, first.http_port, manifest.state_dir.clone())?;
        if manifest.toxiproxy_url.is_some() {
            cfg.toxiproxy_bin = Some(default_toxiproxy_bin());
        }
        if manifest.tracing_url.is_some() {
            cfg.jaeger_bin = Some(crate::jaeger::default_bin());
        }
        if let Some(c) = &manifest.containers {
            cfg.in_containers(c.images.clone());
        }
        Ok(cfg)
    }

    /// The default three regions on the default ports, state in `<repo>/.devstack`.
    pub fn default_local() -> Self {
        let regions: Vec<String> = DEFAULT_REGIONS.iter().map(|s| s.to_string()).collect();
        Self::new(
            &regions,
            DEFAULT_PG_PORT_BASE,
            DEFAULT_KAFKA_PORT_BASE,
            DEFAULT_HTTP_PORT_BASE,
            repo_root().join(".devstack"),
        )
        .expect("the default configuration is valid")
    }

    /// The manifest's path.
    pub fn manifest_path(&self) -> PathBuf {
        self.state_dir.join("env.json")
    }

    /// A region's state folder.
    pub fn region_dir(&self, region: &RegionId) -> PathBuf {
        self.state_dir.join(region.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ports_are_assigned_per_region_from_the_bases() {
        let cfg = StackConfig::new(&names(&["a", "b"]), 100, 200, 300, "/tmp/x".into()).unwrap();
        assert_eq!(cfg.regions[1].pg_port, 101);
        assert_eq!(cfg.regions[1].kafka_port, 210);
        assert_eq!(cfg.regions[1].kafka_controller_port, 211);
        assert_eq!(cfg.regions[1].http_port, 301);
    }

    #[test]
    fn bad_region_lists_are_refused() {
        assert!(StackConfig::new(&[], 1, 2, 3, "/x".into()).is_err());
        assert!(StackConfig::new(&names(&["a", "a"]), 1, 2, 3, "/x".into()).is_err());
        assert!(StackConfig::new(&names(&["Bad Name"]), 1, 2, 3, "/x".into()).is_err());
        assert!(StackConfig::new(&names(&["a", "b"]), 65535, 2, 3, "/x".into()).is_err());
    }
}
