//! What the stack-starting tests of this crate share.

// Each test file uses its part.
#![allow(dead_code)]

/// Port bases for a stack of `regions` regions that nobody is using: PostgreSQL, Kafka, HTTP.
///
/// All of them lie below 32768, where Linux hands out ephemeral ports (32768-60999 by default):
/// a port checked free there can be taken by any outgoing connection before the stack binds it,
/// which once killed a test's broker at start-up. Every port `ledgerctl up` may use is checked:
/// per region PostgreSQL, Kafka's ten (listener, controller, peer links and proxies), the node
/// and the replicator's metrics; and off the HTTP base reconcile (+10), the router (+20),
/// Toxiproxy (+30, +40..+55), Jaeger (+60..+63) and Prometheus (+70).
pub fn free_port_bases(regions: u16) -> (u16, u16, u16) {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        // uuid's randomness is enough to spread parallel tests over the ranges.
        let r = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
        let (pg, http, kafka) = (10_000 + r % 1_990, 12_000 + r % 1_800, 14_000 + (r % 1_800) * 10);
        let regional = (0..regions).all(|i| {
            free(pg + i) && (0..10).all(|k| free(kafka + 10 * i + k)) && free(http + i) && free(http + 100 + i)
        });
        let shared = [10, 20, 30, 60, 61, 62, 63, 70].into_iter().chain(40..56).all(|o| free(http + o));
        if regional && shared {
            return (pg, kafka, http);
        }
    }
}

/// A stack's state folder (removed with the test) and free ports, and the `ledgerctl` commands
/// run on it; `down --purge` when dropped, however the test ends.
pub struct Env {
    pub dir: tempfile::TempDir,
    regions: String,
    pub pg_base: u16,
    pub kafka_base: u16,
    pub http_base: u16,
    /// Arguments every command gets (e.g. `--no-prometheus`).
    always: Vec<String>,
}

impl Env {
    /// A stack of `regions` in a fresh folder named after `prefix`.
    pub fn new(prefix: &str, regions: &[&str], always: &[&str]) -> Self {
        let (pg_base, kafka_base, http_base) = free_port_bases(regions.len() as u16);
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let always = always.iter().map(|a| (*a).to_owned()).collect();
        Self { dir, regions: regions.join(","), pg_base, kafka_base, http_base, always }
    }

    pub fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerctl"));
        cmd.arg("--state-dir").arg(self.state());
        cmd.args(["--regions", &self.regions]);
        cmd.args(["--pg-port-base", &self.pg_base.to_string(), "--kafka-port-base", &self.kafka_base.to_string()]);
        cmd.args(["--http-port-base", &self.http_base.to_string()]);
        cmd.args(&self.always);
        cmd.args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().expect("running ledgerctl")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["down", "--purge"]);
    }
}
