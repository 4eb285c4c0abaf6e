//! Prometheus for the local stack (issue 15): `ledgerctl up` runs its own `prometheus` process
//! (Debian's package, not its system service) with a scrape configuration generated from the
//! stack's ports, every target labelled with `region` and `component`, and the repository's
//! `observability/alerts.yml` as its rules. The configuration file's path on its command line is
//! the marker that identifies its pid.

use crate::error::{Result, StackError};
use crate::manifest::Manifest;
use crate::process::{self, Lifetime};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Prometheus listens this far above the first region's HTTP port (18150 by default): clear of
/// reconcile (+10), the router (+20), Toxiproxy (+30, its links +40..+55) and Jaeger (+60..+62).
pub const PORT_OFFSET: u16 = 70;
/// Scrape and rule evaluation interval: short, so a local alert reaches `firing` within a minute
/// of its condition (a production Prometheus would use 15 s or more).
pub const INTERVAL: &str = "2s";
/// Local data is throw-away; a day is plenty to look back on a test or a drill.
const RETENTION: &str = "1d";
/// The `region` label of components that serve every region (the router, reconcile).
pub const GLOBAL_REGION: &str = "global";

/// The binary on `PATH` (Debian installs `/usr/bin/prometheus`), if there is one: Prometheus is
/// on by default wherever it is installed.
pub fn default_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("prometheus")).find(|p| p.is_file())
}

/// The rules file every Prometheus of ours loads.
pub fn rules_file() -> PathBuf {
    crate::config::repo_root().join("observability").join("alerts.yml")
}

/// The marker of the Prometheus of the stack whose state folder is `state_dir`: its
/// configuration file's path.
pub fn marker_in(state_dir: &Path) -> String {
    state_dir.join("prometheus").join("prometheus.yml").display().to_string()
}

/// The health of the Prometheus `manifest` records (its process ours and alive, `/-/ready`
/// answering): (URL, pid, healthy), or `None` when the manifest records none.
pub async fn status(manifest: &Manifest) -> Option<(String, Option<u32>, bool)> {
    let url = manifest.prometheus_url.clone()?;
    let marker = marker_in(&manifest.state_dir);
    let alive = manifest.prometheus_pid.is_some_and(|p| process::is_ours_and_alive(p, &marker));
    let port: Option<u16> = url.rsplit(':').next().and_then(|p| p.parse().ok());
    let answers = match port {
        Some(port) if alive => {
            tokio::task::spawn_blocking(move || crate::node::http_status(port, "/-/ready") == Some(200))
                .await
                .unwrap_or(false)
        }
        _ => false,
    };
    Some((url, manifest.prometheus_pid, answers))
}

/// One `/metrics` endpoint to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `node`, `replicator`, `router` or `reconcile`: the `component` label and the job name.
    pub component: &'static str,
    /// The `region` label: the region the process serves (a replicator's is its target region),
    /// [`GLOBAL_REGION`] for the router and reconcile.
    pub region: String,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// The endpoint's path.
    pub metrics_path: &'static str,
}

/// The Prometheus process of ours.
#[derive(Debug, Clone)]
pub struct PrometheusProcess {
    /// The `prometheus` binary.
    pub bin: PathBuf,
    /// Its state folder: configuration, data and log.
    pub dir: PathBuf,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// What it scrapes.
    pub targets: Vec<Target>,
    /// The alert rules it loads.
    pub rules: PathBuf,
}

/// A YAML scalar: JSON's quoting is valid YAML and escapes whatever a path may hold.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

impl PrometheusProcess {
    /// The generated configuration's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("prometheus.yml")
    }

    /// The marker that identifies its pid.
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Its base URL (UI and API).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// Fails when the binary is missing.
    pub fn check_binary(bin: &Path) -> Result<()> {
        if bin.is_file() {
            return Ok(());
        }
        Err(StackError::MissingBinary {
            what: "Prometheus",
            path: bin.to_path_buf(),
            fix: "install Debian's package prometheus (scripts/install-deps.sh does) or pass --no-prometheus",
        })
    }

    /// The configuration file's text: one job per component, one static target per process.
    ///
    /// The router's job honours the labels it exports: its `region` label (on
    /// `ledger_router_region_healthy`) names the region a series is about and must not be
    /// renamed `exported_region` by the target's own `region` label.
    pub fn config_yaml(&self) -> String {
        let mut y = format!(
            "# Written by ledgerctl up.\nglobal:\n  scrape_interval: {INTERVAL}\n  scrape_timeout: {INTERVAL}\n  evaluation_interval: {INTERVAL}\n\nrule_files:\n  - {}\n\nscrape_configs:\n",
            quoted(&self.rules.display().to_string())
        );
        let mut jobs: Vec<&'static str> = Vec::new();
        for t in &self.targets {
            if !jobs.contains(&t.component) {
                jobs.push(t.component);
            }
        }
        for job in jobs {
            let targets: Vec<&Target> = self.targets.iter().filter(|t| t.component == job).collect();
            y.push_str(&format!(
                "  - job_name: {}\n    metrics_path: {}\n",
                quoted(job),
                quoted(targets[0].metrics_path)
            ));
            if job == "router" {
                y.push_str("    honor_labels: true\n");
            }
            y.push_str("    static_configs:\n");
            for t in targets {
                y.push_str(&format!(
                    "      - targets: [{}]\n        labels: {{region: {}, component: {}}}\n",
                    quoted(&t.address),
                    quoted(&t.region),
                    quoted(t.component)
                ));
            }
        }
        y
    }

    /// Writes the configuration and starts Prometheus; returns at once.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        Self::check_binary(&self.bin)?;
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).map_err(StackError::io(&data))?;
        let path = self.config_path();
        std::fs::write(&path, self.config_yaml()).map_err(StackError::io(&path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--storage.tsdb.retention.time={RETENTION}"))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port));
        process::log_to(&mut cmd, &self.log())?;
        process::spawn(cmd, lifetime, "prometheus")
    }

    /// Waits until `/-/ready` answers, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        crate::node::wait_until_serving(self.port, "/-/ready", pid, &self.marker(), "Prometheus", &self.log()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrometheusProcess {
        let target = |component, region: &str, port: u16, metrics_path| Target {
            component,
            region: region.into(),
            address: format!("127.0.0.1:{port}"),
            metrics_path,
        };
        PrometheusProcess {
            bin: PathBuf::from("prometheus"),
            dir: PathBuf::from("/tmp/state/prometheus"),
            port: 18150,
            targets: vec![
                target("node", "us-east", 18080, "/metrics"),
                target("node", "eu-west", 18081, "/metrics"),
                target("replicator", "us-east", 18180, "/metrics"),
                target("replicator", "eu-west", 18181, "/metrics"),
                target("router", GLOBAL_REGION, 18100, "/_router/metrics"),
                target("reconcile", GLOBAL_REGION, 18090, "/metrics"),
            ],
            rules: rules_file(),
        }
    }

    #[test]
    fn every_target_is_a_labelled_static_config_of_its_components_job() {
        let y = sample().config_yaml();
        assert_eq!(y.matches("job_name").count(), 4, "{y}");
        assert!(y.contains(
            "      - targets: [\"127.0.0.1:18181\"]\n        labels: {region: \"eu-west\", component: \"replicator\"}\n"
        ));
        assert!(y.contains("metrics_path: \"/_router/metrics\"\n    honor_labels: true\n"), "{y}");
        assert!(y.contains("alerts.yml"), "{y}");
    }

    /// `promtool check config` on the generated file; the rules file it names is checked too.
    #[test]
    fn promtool_accepts_the_generated_configuration() {
        let Some(promtool) = default_bin().map(|p| p.with_file_name("promtool")).filter(|p| p.is_file()) else {
            panic!("promtool missing: install Debian's package prometheus (scripts/install-deps.sh)");
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, sample().config_yaml()).unwrap();
        let out = Command::new(promtool).arg("check").arg("config").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
