//! Toxiproxy between the regions (issue 14): with `--toxiproxy`, all traffic between two regions
//! passes through proxies of their own, so the chaos suite can cut, slow, throttle or reset one
//! direction between two regions and nothing else. Two links per direction: `kafka-a-to-b` carries
//! what the replicator into `b` reads from `a`'s broker, `http-a-to-b` the anti-entropy pulls of
//! `b`'s node from `a`'s node (a partition that left the repair path open would be no partition).
//!
//! Kafka clients connect to whatever address the broker advertises, so a proxy in front of the
//! bootstrap port alone would be bypassed after the first metadata answer. Each broker therefore
//! has one extra listener per peer region, advertised at that link's proxy port: a client that
//! came in through the proxy is told to keep using it.

use crate::config::RegionSpec;
use crate::error::{Result, StackError};
use crate::process::{self, Lifetime};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A broker's peer listeners sit at its client port + 2 + the peer's index, their proxies at
/// + 6 + the index: both inside the ten ports each region's Kafka has, for up to four regions.
pub const REGIONS_MAX: usize = 4;
const LISTENER_OFFSET: u16 = 2;
const PROXY_OFFSET: u16 = 6;
/// The proxy's API listens this far above the first region's HTTP port (18110 by default).
pub const API_PORT_OFFSET: u16 = 30;
/// The HTTP links listen from this far above the first region's HTTP port, one port per ordered
/// pair (16 for four regions), clear of the router, reconcile and the replicators' metrics (+100).
pub const HTTP_LINKS_OFFSET: u16 = 40;
/// How long the server may take to answer its API.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One direction between two regions, for one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The proxy's name: `<kind>-<source>-to-<target>`.
    pub name: String,
    /// `kafka` (replication) or `http` (anti-entropy).
    pub kind: String,
    /// The region whose broker is read.
    pub source: String,
    /// The region whose replicator reads it.
    pub target: String,
    /// Where the target region's process connects (the proxy).
    pub listen: String,
    /// The source region's broker listener for this target, or its node.
    pub upstream: String,
}

/// The broker listener of region `source` reserved for readers in region `target`: (listener
/// name, bind port, advertised port).
pub fn peer_listener(source: &RegionSpec, target_index: usize) -> (String, u16, u16) {
    let i = target_index as u16;
    (format!("PEER{target_index}"), source.kafka_port + LISTENER_OFFSET + i, source.kafka_port + PROXY_OFFSET + i)
}

/// Every link between `regions`, in port order.
pub fn links(regions: &[RegionSpec]) -> Result<Vec<Link>> {
    if regions.len() > REGIONS_MAX {
        return Err(StackError::Config(format!(
            "toxiproxy links fit in each broker's ten ports for at most {REGIONS_MAX} regions, got {}",
            regions.len()
        )));
    }
    let mut out = Vec::new();
    let http_base = regions.first().map(|r| r.http_port).unwrap_or_default() + HTTP_LINKS_OFFSET;
    for (i, source) in regions.iter().enumerate() {
        for (j, target) in regions.iter().enumerate().filter(|(_, t)| t.name != source.name) {
            let (_, bind, advertised) = peer_listener(source, j);
            let (s, t) = (source.name.to_string(), target.name.to_string());
            out.push(Link {
                name: format!("kafka-{s}-to-{t}"),
                kind: "kafka".into(),
                source: s.clone(),
                target: t.clone(),
                listen: format!("127.0.0.1:{advertised}"),
                upstream: format!("127.0.0.1:{bind}"),
            });
            out.push(Link {
                name: format!("http-{s}-to-{t}"),
                kind: "http".into(),
                source: s,
                target: t,
                listen: format!("127.0.0.1:{}", http_base + (i * REGIONS_MAX + j) as u16),
                upstream: format!("127.0.0.1:{}", source.http_port),
            });
        }
    }
    Ok(out)
}

/// The link of `kind` from `source` to `target`.
pub fn link<'l>(links: &'l [Link], kind: &str, source: &str, target: &str) -> Option<&'l Link> {
    links.iter().find(|l| l.kind == kind && l.source == source && l.target == target)
}

/// The proxy server of ours.
#[derive(Debug, Clone)]
pub struct ToxiproxyProcess {
    /// `toxiproxy-server` (Go module github.com/Shopify/toxiproxy/v2 v2.5.0, `cmd/server`).
    pub bin: PathBuf,
    /// Its state folder (proxy list and log).
    pub dir: PathBuf,
    /// Its API port on 127.0.0.1.
    pub port: u16,
    /// The proxies it serves.
    pub links: Vec<Link>,
}

#[derive(Serialize)]
struct ProxyConfig<'a> {
    name: &'a str,
    listen: &'a str,
    upstream: &'a str,
    enabled: bool,
}

impl ToxiproxyProcess {
    fn config_path(&self) -> PathBuf {
        self.dir.join("toxiproxy.json")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("toxiproxy.log")
    }

    /// The marker that identifies its pid (its proxy list's path is on its command line).
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Its API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Fails when the binary is missing.
    pub fn check_binary(bin: &Path) -> Result<()> {
        if bin.is_file() {
            return Ok(());
        }
        Err(StackError::MissingBinary {
            what: "toxiproxy-server",
            path: bin.to_path_buf(),
            fix: "scripts/install-deps.sh builds it into .cache/toxiproxy/bin (go install of \
                  github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0)",
        })
    }

    /// Starts the server with every link's proxy created from its file; returns at once.
    pub fn start(&self, lifetime: Lifetime) -> Result<Child> {
        Self::check_binary(&self.bin)?;
        std::fs::create_dir_all(&self.dir).map_err(StackError::io(&self.dir))?;
        let proxies: Vec<ProxyConfig> = self
            .links
            .iter()
            .map(|l| ProxyConfig { name: &l.name, listen: &l.listen, upstream: &l.upstream, enabled: true })
            .collect();
        let path = self.config_path();
        let text = serde_json::to_string_pretty(&proxies).expect("proxies serialize");
        std::fs::write(&path, text).map_err(StackError::io(&path))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-host").arg("127.0.0.1").arg("-port").arg(self.port.to_string()).arg("-config").arg(&path);
        process::log_to(&mut cmd, &self.log())?;
        process::spawn(cmd, lifetime, "toxiproxy-server")
    }

    /// Waits until the API lists every proxy, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("a client builds");
        let proxies = format!("{}/proxies", self.url());
        let awaited = "its API did not list every proxy";
        process::wait_ready("toxiproxy-server", pid, &self.marker(), &self.log(), READY_TIMEOUT, awaited, || async {
            let Ok(r) = http.get(&proxies).send().await else { return false };
            let Ok(listed) = r.json::<serde_json::Map<String, serde_json::Value>>().await else { return false };
            self.links.iter().all(|l| listed.contains_key(&l.name))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_inside_each_brokers_ports_and_never_collide() {
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let cfg = crate::config::StackConfig::new(&names, 15432, 19092, 18080, "/x".into()).unwrap();
        let links = links(&cfg.regions).unwrap();
        assert_eq!(links.len(), 24, "every ordered pair, Kafka and HTTP");
        let mut ports: Vec<String> = links.iter().flat_map(|l| [l.listen.clone(), l.upstream.clone()]).collect();
        ports.retain(|p| links.iter().all(|l| l.kind != "http" || &l.upstream != p));
        for r in &cfg.regions {
            ports.push(format!("127.0.0.1:{}", r.kafka_port));
            ports.push(format!("127.0.0.1:{}", r.kafka_controller_port));
            ports.push(format!("127.0.0.1:{}", r.http_port));
            ports.push(format!("127.0.0.1:{}", r.http_port + 100));
        }
        ports.push(format!("127.0.0.1:{}", cfg.reconcile_port));
        ports.push(format!("127.0.0.1:{}", cfg.router_port));
        ports.push(format!("127.0.0.1:{}", cfg.toxiproxy_port));
        let jaeger = crate::jaeger::JaegerProcess { bin: "/x".into(), dir: "/x".into(), base_port: 18080 };
        ports.extend(jaeger.ports().map(|(port, _)| format!("127.0.0.1:{port}")));
        let all = ports.len();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), all, "no port used twice");
        for l in links.iter().filter(|l| l.kind == "kafka") {
            let source = cfg.regions.iter().find(|r| r.name.as_str() == l.source).unwrap();
            for addr in [&l.listen, &l.upstream] {
                let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
                assert!((source.kafka_port..source.kafka_port + 10).contains(&port), "{l:?}");
            }
        }
        let five: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let cfg = crate::config::StackConfig::new(&five, 15432, 19092, 18080, "/x".into()).unwrap();
        assert!(super::links(&cfg.regions).is_err());
    }
}
