//! The geo-router of the local stack (`router`): one address in front of every region's node,
//! configured through a TOML file in the state folder whose path on its command line is the marker
//! that identifies its pid. Its latency table is static: the local regions are all on loopback, so
//! nothing could be measured; the figures are plausible round trips between the cloud regions the
//! names stand for, each region nearest to itself.

use crate::error::{Result, StackError};
use crate::process::{self, Lifetime};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// Milliseconds within one region.
const SAME_REGION_MS: u32 = 5;
/// Round trips between the default regions, roughly AWS us-east-1, eu-west-1 and ap-south-1.
const KNOWN_PAIRS_MS: [(&str, &str, u32); 3] =
    [("us-east", "eu-west", 75), ("us-east", "ap-south", 190), ("eu-west", "ap-south", 120)];
/// Other region names (`ledgerctl up --regions a,b`): this much, plus `OTHER_PAIR_MS_STEP` per
/// position apart in port order, so the table stays strict and each region nearest to itself.
const OTHER_PAIR_MS_BASE: u32 = 100;
/// See `OTHER_PAIR_MS_BASE`.
const OTHER_PAIR_MS_STEP: u32 = 10;

/// The latency from a client in region `i` to region `j` of `regions` (port order).
pub fn latency_ms(regions: &[String], i: usize, j: usize) -> u32 {
    if i == j {
        return SAME_REGION_MS;
    }
    let (a, b) = (regions[i].as_str(), regions[j].as_str());
    KNOWN_PAIRS_MS
        .iter()
        .find(|(x, y, _)| (*x == a && *y == b) || (*x == b && *y == a))
        .map(|(_, _, ms)| *ms)
        .unwrap_or(OTHER_PAIR_MS_BASE + OTHER_PAIR_MS_STEP * i.abs_diff(j) as u32)
}

/// The router process of ours.
#[derive(Debug, Clone)]
pub struct RouterProcess {
    /// The `router` binary.
    pub bin: PathBuf,
    /// Its state folder (config and log).
    pub dir: PathBuf,
    /// HTTP port on 127.0.0.1.
    pub port: u16,
    /// Every region: (name, node URL), in port order.
    pub regions: Vec<(String, String)>,
    /// Where spans go (Jaeger's OTLP/gRPC); empty: nowhere.
    pub otlp_endpoint: String,
    /// Its output.
    pub log: PathBuf,
}

/// The default `router` binary: next to the running `ledgerctl`.
pub fn default_bin() -> PathBuf {
    std::env::current_exe().map(|exe| exe.with_file_name("router")).unwrap_or_else(|_| PathBuf::from("router"))
}

impl RouterProcess {
    fn config_path(&self) -> PathBuf {
        self.dir.join("router.toml")
    }

    /// The marker that identifies its pid.
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Fails when the binary is missing.
    pub fn check_binary(bin: &Path) -> Result<()> {
        if bin.is_file() {
            return Ok(());
        }
        Err(StackError::MissingBinary {
            what: "the router",
            path: bin.to_path_buf(),
            fix: "build it with `cargo build -p router` (./dev up does) or set LEDGER_ROUTER_BIN",
        })
    }

    /// The configuration file's text: the regions, the static latency table, loopback clients in
    /// the first region; health settings are the router's defaults.
    pub fn config_toml(&self) -> String {
        let first = self.regions.first().map(|(name, _)| name.as_str()).unwrap_or_default();
        let mut toml = format!(
            "# Written by ledgerctl up.\nhttp_addr = \"127.0.0.1:{}\"\ndefault_client_region = {first:?}\notlp_endpoint = {:?}\n",
            self.port, self.otlp_endpoint
        );
        for (name, url) in &self.regions {
            toml.push_str(&format!("\n[[regions]]\nname = {name:?}\nurl = {url:?}\n"));
        }
        let names: Vec<String> = self.regions.iter().map(|(name, _)| name.clone()).collect();
        for (i, client) in names.iter().enumerate() {
            toml.push_str(&format!("\n[latency_ms.{client:?}]\n"));
            for (j, serving) in names.iter().enumerate() {
                toml.push_str(&format!("{serving:?} = {}\n", latency_ms(&names, i, j)));
            }
        }
        toml
    }

    /// Starts the router; returns at once.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        Self::check_binary(&self.bin)?;
        let mut cmd = self.command()?;
        process::log_to(&mut cmd, &self.log)?;
        process::spawn(cmd, lifetime, "router")
    }

    /// Writes the configuration and returns the command that runs the router on it.
    pub fn command(&self) -> Result<Command> {
        std::fs::create_dir_all(&self.dir).map_err(StackError::io(&self.dir))?;
        let path = self.config_path();
        std::fs::write(&path, self.config_toml()).map_err(StackError::io(&path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&path);
        // Its settings come from the file only: `LEDGER_ROUTER_BIN`, ledgerctl's own variable,
        // would be an unknown setting to it.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEDGER_ROUTER_")) {
            cmd.env_remove(key);
        }
        Ok(cmd)
    }

    /// Waits until `/_router/healthz` answers, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        crate::node::wait_until_serving(self.port, "/_router/healthz", pid, &self.marker(), "the router", &self.log)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_is_nearest_to_itself_and_the_table_is_symmetric() {
        for names in [vec!["us-east", "eu-west", "ap-south"], vec!["a", "b", "c", "d"]] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            for i in 0..names.len() {
                for j in 0..names.len() {
                    assert_eq!(latency_ms(&names, i, j), latency_ms(&names, j, i));
                    if i != j {
                        assert!(latency_ms(&names, i, i) < latency_ms(&names, i, j), "{names:?} {i} {j}");
                    }
                }
            }
        }
        let names: Vec<String> = ["us-east", "eu-west", "ap-south"].map(String::from).to_vec();
        assert_eq!(latency_ms(&names, 2, 1), 120, "ap-south's next nearest is eu-west");
    }
}
