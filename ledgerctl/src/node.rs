//! One region's node process (`region-node`), configured through a TOML file in the region's state
//! folder; the file's path on its command line is the marker that identifies its pid.

use crate::error::{Result, StackError};
use crate::process::{self, Lifetime};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a node may take to answer `/readyz` (it migrates and connects to Kafka first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A region node of ours.
#[derive(Debug, Clone)]
pub struct NodeProcess {
    /// The `region-node` binary.
    pub bin: PathBuf,
    /// The region's state folder (config and log go here).
    pub dir: PathBuf,
    /// Region name.
    pub region: String,
    /// HTTP port on 127.0.0.1.
    pub http_port: u16,
    /// The regional database.
    pub database_url: String,
    /// The regional Kafka.
    pub kafka_bootstrap: String,
    /// The development API key the node creates at start-up.
    pub api_key: String,
    /// The other regions (their events arrive mirrored).
    pub peers: Vec<String>,
    /// The other regions' node URLs, for anti-entropy (the node repairs what Kafka lost).
    pub peer_urls: Vec<(String, String)>,
    /// The key the nodes present to each other; each node accepts it with the replication scope.
    pub replication_key: String,
    /// The reconcile service's key (read, write and reconcile scopes), the same in every region.
    pub reconcile_key: String,
    /// The key signing `Ledger-Session` tokens, the same in every region.
    pub session_secret: String,
    /// Where spans go (Jaeger's OTLP/gRPC); empty: nowhere.
    pub otlp_endpoint: String,
    /// Node output.
    pub log: PathBuf,
}

/// The default `region-node` binary: next to the running `ledgerctl`, as cargo builds them.
pub fn default_bin() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name("region-node"))
        .unwrap_or_else(|_| PathBuf::from("region-node"))
}

impl NodeProcess {
    fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    /// The marker that identifies this node's pid.
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Fails when the binary is missing.
    pub fn check_binary(bin: &Path) -> Result<()> {
        if bin.is_file() {
            return Ok(());
        }
        Err(StackError::MissingBinary {
            what: "the region node",
            path: bin.to_path_buf(),
            fix: "build it with `cargo build -p region-node` (./dev up does) or set LEDGER_NODE_BIN",
        })
    }

    /// Writes the node's configuration file.
    pub fn write_config(&self) -> Result<()> {
        let mut toml = format!(
            "# Written by ledgerctl up.\nregion = {:?}\nhttp_addr = \"127.0.0.1:{}\"\ndatabase_url = {:?}\nkafka_bootstrap = {:?}\nbootstrap_api_key = {:?}\npeers = {:?}\nreplication_api_key = {:?}\nreconcile_api_key = {:?}\nsession_secret = {:?}\notlp_endpoint = {:?}\n",
            self.region,
            self.http_port,
            self.database_url,
            self.kafka_bootstrap,
            self.api_key,
            self.peers,
            self.replication_key,
            self.reconcile_key,
            self.session_secret,
            self.otlp_endpoint
        );
        // The local stack's webhook receivers run on this machine: loopback targets are allowed
        // here, and only here (the node refuses private targets by default).
        toml.push_str("webhook_allow_private_targets = true\n");
        toml.push_str("\n[peer_urls]\n");
        for (region, url) in &self.peer_urls {
            toml.push_str(&format!("{region:?} = {url:?}\n"));
        }
        let path = self.config_path();
        std::fs::write(&path, toml).map_err(StackError::io(&path))
    }

    /// Starts the node; returns at once (see [`NodeProcess::wait_ready`]).
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        Self::check_binary(&self.bin)?;
        let mut cmd = self.command()?;
        process::log_to(&mut cmd, &self.log)?;
        process::spawn(cmd, lifetime, "region-node")
    }

    /// Writes the configuration and returns the command that runs the node on it (as a process,
    /// or in a container: see [`crate::containers`]).
    pub fn command(&self) -> Result<Command> {
        self.write_config()?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(self.config_path());
        // The node's own settings come from the file only, not from this shell's environment.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEDGER_NODE_")) {
            cmd.env_remove(key);
        }
        Ok(cmd)
    }

    /// Waits until `/readyz` answers 200, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        let what = format!("the {} node on port {}", self.region, self.http_port);
        wait_until_serving(self.http_port, "/readyz", pid, &self.marker(), &what, &self.log).await
    }
}

/// Polls `GET path` until it answers 200, failing early if `pid` (identified by `marker`) dies or
/// after [`READY_TIMEOUT`]: the readiness wait of every service of ours.
pub(crate) async fn wait_until_serving(
    port: u16,
    path: &'static str,
    pid: u32,
    marker: &str,
    what: &str,
    log: &Path,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if tokio::task::spawn_blocking(move || http_status(port, path) == Some(200)).await.unwrap_or(false) {
            return Ok(());
        }
        let dead = !process::is_ours_and_alive(pid, marker);
        if dead || started.elapsed() > READY_TIMEOUT {
            return Err(StackError::NotReady {
                what: what.to_owned(),
                waited_s: started.elapsed().as_secs(),
                detail: if dead {
                    format!("it exited: {}", process::last_line(log))
                } else {
                    format!("{path} never answered 200")
                },
                log: log.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status code of `GET path` on 127.0.0.1:`port`, or `None` if nothing answers. A few lines of
/// HTTP/1.0 rather than an HTTP client: this is the launcher's only request.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(3);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The replicator into one region: it mirrors every other region's events into this region's Kafka.
#[derive(Debug, Clone)]
pub struct ReplicatorProcess {
    /// The `replicator` binary.
    pub bin: PathBuf,
    /// The region's state folder.
    pub dir: PathBuf,
    /// The target region.
    pub region: String,
    /// The target region's Kafka.
    pub bootstrap: String,
    /// Every region: (name, Kafka bootstrap).
    pub sources: Vec<(String, String)>,
    /// Port of its `/metrics` and `/healthz`.
    pub metrics_port: u16,
    /// Where spans go (Jaeger's OTLP/gRPC); empty: nowhere.
    pub otlp_endpoint: String,
    /// Its output.
    pub log: PathBuf,
}

/// The default `replicator` binary: next to the running `ledgerctl`.
pub fn default_replicator_bin() -> PathBuf {
    std::env::current_exe().map(|exe| exe.with_file_name("replicator")).unwrap_or_else(|_| PathBuf::from("replicator"))
}

impl ReplicatorProcess {
    fn config_path(&self) -> PathBuf {
        self.dir.join("replicator.toml")
    }

    /// The marker that identifies this replicator's pid.
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Starts the replicator; returns at once.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        if !self.bin.is_file() {
            return Err(StackError::MissingBinary {
                what: "the replicator",
                path: self.bin.clone(),
                fix: "build it with `cargo build -p replicator` (./dev up does) or set LEDGER_REPLICATOR_BIN",
            });
        }
        let mut cmd = self.command()?;
        process::log_to(&mut cmd, &self.log)?;
        process::spawn(cmd, lifetime, "replicator")
    }

    /// Writes the configuration and returns the command that runs the replicator on it.
    pub fn command(&self) -> Result<Command> {
        let mut toml = format!(
            "# Written by ledgerctl up.\ntarget_region = {:?}\ntarget_bootstrap = {:?}\nmetrics_addr = \"127.0.0.1:{}\"\notlp_endpoint = {:?}\n",
            self.region, self.bootstrap, self.metrics_port, self.otlp_endpoint
        );
        for (region, bootstrap) in &self.sources {
            toml.push_str(&format!("\n[[sources]]\nregion = {region:?}\nbootstrap = {bootstrap:?}\n"));
        }
        let path = self.config_path();
        std::fs::write(&path, toml).map_err(StackError::io(&path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&path);
        Ok(cmd)
    }

    /// Waits until `/healthz` answers, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        let what = format!("the replicator into {}", self.region);
        wait_until_serving(self.metrics_port, "/healthz", pid, &self.marker(), &what, &self.log).await
    }
}
