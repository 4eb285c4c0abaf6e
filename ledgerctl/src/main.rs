//! `ledgerctl`: brings the local multi-region ledger up and down and reports its health.

use clap::{Args, Parser, Subcommand};
use ledgerctl::Manifest;
use ledgerctl::config::{self, StackConfig};
use ledgerctl::stack::{Component, Stack};
use std::path::PathBuf;
use std::process::ExitCode;

// The default allocator spent a fifth of the node's CPU under load (malloc consolidation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ledgerctl", about = "Local multi-region ledger: PostgreSQL + Kafka per region")]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct Opts {
    /// Where data, logs and env.json live.
    #[arg(long, env = "LEDGER_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Region names, comma-separated, in port order.
    #[arg(long, env = "LEDGER_REGIONS", value_delimiter = ',', global = true,
          default_values_t = config::DEFAULT_REGIONS.map(String::from))]
    regions: Vec<String>,
    /// PostgreSQL port of the first region (region i uses base + i).
    #[arg(long, env = "LEDGER_PG_PORT_BASE", default_value_t = config::DEFAULT_PG_PORT_BASE, global = true)]
    pg_port_base: u16,
    /// Kafka port of the first region (region i uses base + 10 i, its controller one above).
    #[arg(long, env = "LEDGER_KAFKA_PORT_BASE", default_value_t = config::DEFAULT_KAFKA_PORT_BASE, global = true)]
    kafka_port_base: u16,
    /// HTTP port of the first region's node (region i uses base + i).
    #[arg(long, env = "LEDGER_HTTP_PORT_BASE", default_value_t = config::DEFAULT_HTTP_PORT_BASE, global = true)]
    http_port_base: u16,
    /// Heap of each Kafka broker.
    #[arg(long, env = "LEDGER_KAFKA_HEAP_MB", default_value_t = config::DEFAULT_KAFKA_HEAP_MB, global = true)]
    kafka_heap_mb: u32,
    /// Folder of Debian's PostgreSQL 15 binaries.
    #[arg(long, env = "LEDGER_PG_BIN_DIR", global = true)]
    pg_bin_dir: Option<PathBuf>,
    /// The Java 17 launcher.
    #[arg(long, env = "LEDGER_JAVA", global = true)]
    java: Option<PathBuf>,
    /// The pom.xml naming the Kafka jars.
    #[arg(long, env = "LEDGER_KAFKA_POM", global = true)]
    kafka_pom: Option<PathBuf>,
    /// Where the Kafka jars are cached.
    #[arg(long, env = "LEDGER_KAFKA_CACHE", global = true)]
    kafka_cache: Option<PathBuf>,
    /// The region-node binary (default: next to ledgerctl).
    #[arg(long, env = "LEDGER_NODE_BIN", global = true)]
    node_bin: Option<PathBuf>,
    /// The replicator binary (default: next to ledgerctl).
    #[arg(long, env = "LEDGER_REPLICATOR_BIN", global = true)]
    replicator_bin: Option<PathBuf>,
    /// The reconcile binary (default: next to ledgerctl).
    #[arg(long, env = "LEDGER_RECONCILE_BIN", global = true)]
    reconcile_bin: Option<PathBuf>,
    /// The router binary (default: next to ledgerctl).
    #[arg(long, env = "LEDGER_ROUTER_BIN", global = true)]
    router_bin: Option<PathBuf>,
    /// Route every cross-region Kafka link through Toxiproxy (for the chaos suite).
    #[arg(long, global = true)]
    toxiproxy: bool,
    /// toxiproxy-server (default: .cache/toxiproxy/bin/toxiproxy-server, built by
    /// scripts/install-deps.sh).
    #[arg(long, env = "LEDGER_TOXIPROXY_BIN", global = true)]
    toxiproxy_bin: Option<PathBuf>,
    /// Start no Jaeger and export no spans (tracing is on whenever the Jaeger binary exists).
    #[arg(long, global = true)]
    no_tracing: bool,
    /// jaeger (default: .cache/jaeger/bin/jaeger, built by scripts/install-deps.sh).
    #[arg(long, env = "LEDGER_JAEGER_BIN", global = true)]
    jaeger_bin: Option<PathBuf>,
    /// Do not run Prometheus (it runs by default when `prometheus` is on PATH).
    #[arg(long, env = "LEDGER_NO_PROMETHEUS", global = true)]
    no_prometheus: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start every region's PostgreSQL, Kafka and node, then the router and the reconcile service;
    /// apply migrations, create topics, write env.json.
    Up {
        /// Run PostgreSQL, Kafka, the nodes, replicators, router and reconcile service as containers
        /// of the local images (`scripts/containers.sh up` and `images` build them) on the engine
        /// DOCKER_HOST names, on the host network; the rest of the stack's commands then act on them.
        #[arg(long)]
        containers: bool,
        /// Tag of our services' images (default: the git short commit, as
        /// `scripts/containers.sh images` tags them; `latest` is the last built).
        #[arg(long, env = "LEDGER_IMAGE_TAG")]
        image_tag: Option<String>,
    },
    /// Stop one component, in one region or all.
    Stop {
        /// postgres, kafka, node or replicator.
        component: Component,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// SIGKILL instead of a clean stop, as a crash would.
        #[arg(long)]
        kill: bool,
    },
    /// Start one stopped component again, in one region or all, and wait until it serves.
    Start {
        /// postgres, kafka, node or replicator.
        component: Component,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
    },
    /// Stop every process `up` started, by pid.
    Down {
        /// Also delete the state folder: all local data.
        #[arg(long)]
        purge: bool,
    },
    /// Print each part's health; exit 1 if any part is unhealthy or nothing runs.
    Status,
    /// Open-loop constant-rate transfer load against one region; writes the result as JSON.
    Bench(ledgerctl::bench::BenchArgs),
    /// Fault drills against the running stack.
    Drill {
        #[command(subcommand)]
        command: DrillCmd,
    },
    /// Show the components' logs merged in time order.
    Logs {
        /// node, replicator, router, reconcile, postgres, kafka, toxiproxy, or all (the Rust
        /// components: what one request's trace crosses).
        #[arg(default_value = "all")]
        component: ledgerctl::logs::LogComponent,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Keep printing what is appended.
        #[arg(long, short)]
        follow: bool,
        /// Only the lines of this trace (a W3C trace id: 32 hex digits).
        #[arg(long)]
        trace: Option<String>,
        /// Only the last N lines (before following).
        #[arg(long, short = 'n')]
        lines: Option<usize>,
    },
    /// The reconcile service's audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Kill one whole region under load through the router, bring it back, report RTO and RPO,
    /// and check that every acknowledged transfer exists exactly once everywhere.
    RegionLoss(ledgerctl::drill::DrillArgs),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the SHA-256 chain; exit 1 naming the first entry that does not match.
    Verify {
        /// The reconcile database (default: the running stack's, from env.json).
        #[arg(long)]
        database_url: Option<String>,
    },
}

impl Opts {
    fn config(&self) -> Result<StackConfig, ledgerctl::StackError> {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| config::repo_root().join(".devstack"));
        let mut cfg =
            StackConfig::new(&self.regions, self.pg_port_base, self.kafka_port_base, self.http_port_base, state_dir)?;
        cfg.kafka_heap_mb = self.kafka_heap_mb;
        if let Some(dir) = &self.pg_bin_dir {
            cfg.pg_bin_dir = dir.clone();
        }
        if let Some(java) = &self.java {
            cfg.java = java.clone();
        }
        if let Some(pom) = &self.kafka_pom {
            cfg.kafka_pom = pom.clone();
        }
        if let Some(cache) = &self.kafka_cache {
            cfg.kafka_cache_dir = cache.clone();
        }
        if let Some(bin) = &self.node_bin {
            cfg.node_bin = bin.clone();
        }
        if let Some(bin) = &self.replicator_bin {
            cfg.replicator_bin = bin.clone();
        }
        if let Some(bin) = &self.reconcile_bin {
            cfg.reconcile_bin = bin.clone();
        }
        if let Some(bin) = &self.router_bin {
            cfg.router_bin = bin.clone();
        }
        if self.no_prometheus {
            cfg.prometheus_bin = None;
        }
        // A stack started with Toxiproxy keeps it for every later command (a replicator restarted
        // by `start` must read through its proxies again).
        let proxied = Manifest::load(&cfg.manifest_path()).ok().flatten().is_some_and(|m| m.toxiproxy_url.is_some());
        if self.toxiproxy || self.toxiproxy_bin.is_some() || proxied {
            cfg.toxiproxy_bin = Some(self.toxiproxy_bin.clone().unwrap_or_else(config::default_toxiproxy_bin));
        }
        // A stack started in containers stays in containers for every later command.
        if let Some(c) = Manifest::load(&cfg.manifest_path()).ok().flatten().and_then(|m| m.containers) {
            cfg.in_containers(c.images);
        }
        let jaeger = self.jaeger_bin.clone().unwrap_or_else(ledgerctl::jaeger::default_bin);
        cfg.jaeger_bin = (!self.no_tracing && jaeger.is_file()).then_some(jaeger);
        Ok(cfg)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ledgerctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, ledgerctl::StackError> {
    let mut cfg = cli.opts.config()?;
    // A component restarted (`start`) in a stack brought up without Jaeger gets no OTLP endpoint
    // nobody listens on; `up` decides afresh.
    if let Cmd::Up { containers: true, image_tag } = &cli.command {
        let images = ledgerctl::containers::Images::new(&cfg.kafka_pom, image_tag.clone())?;
        cfg.in_containers(images);
    }
    if !matches!(cli.command, Cmd::Up { .. })
        && Manifest::load(&cfg.manifest_path()).ok().flatten().is_some_and(|m| m.tracing_url.is_none())
    {
        cfg.jaeger_bin = None;
    }
    let manifest_path = cfg.manifest_path();
    let stack_cfg = cfg.clone();
    let stack = Stack::new(cfg);
    match cli.command {
        Cmd::Up { .. } => {
            let manifest = stack.up().await?;
            if let Some(c) = &manifest.containers {
                println!(
                    "containers: {} (images {}, {}, ledger/*:{})",
                    c.names.join(" "),
                    c.images.postgres,
                    c.images.kafka,
                    c.images.services_tag
                );
            }
            for r in &manifest.regions {
                println!(
                    "{:<10} postgres {}  kafka {}  http {}",
                    r.name, r.postgres_url, r.kafka_bootstrap, r.http_url
                );
            }
            if let Some(key) = &manifest.api_key {
                println!("api key: {key}");
            }
            if let Some(url) = &manifest.router_url {
                println!("router     {url}  (nearest healthy region; X-Client-Region to choose where you are)");
            }
            if let Some(url) = &manifest.tracing_url {
                println!("tracing    {url}  (Jaeger: /search, /api/traces/<trace id>)");
            }
            if let Some(url) = &manifest.prometheus_url {
                println!("prometheus {url}  (every component's /metrics; alerts at {url}/alerts)");
            }
            if let Some(url) = &manifest.toxiproxy_url {
                println!("toxiproxy  {url}  ({} cross-region Kafka links)", manifest.links.len());
            }
            if let Some(url) = &manifest.reconcile_url {
                let staff: Vec<String> =
                    manifest.reconcile_users.iter().map(|s| format!("{} ({})", s.username, s.role)).collect();
                println!("reconcile  {url}  staff: {} (passwords and tokens in env.json)", staff.join(", "));
            }
            println!("manifest: {}", manifest_path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { component, region, kill } => {
            let stopped = stack.stop(component, region.as_deref(), kill)?;
            if stopped.is_empty() {
                println!("no {} of ours was running", component.name());
            }
            for line in stopped {
                println!("stopped {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Start { component, region } => {
            let started = stack.start(component, region.as_deref()).await?;
            if started.is_empty() {
                println!("{} already running", component.name());
            }
            for line in started {
                println!("started {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { purge } => {
            let stopped = stack.down(purge)?;
            if stopped.is_empty() {
                println!("nothing of ours was running");
            }
            for line in stopped {
                println!("stopped {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(mut args) => {
            // The manifest of the stack this invocation names (--state-dir), unless given.
            args.manifest.get_or_insert(manifest_path);
            let outcome = if args.baseline {
                ledgerctl::bench::compare::run(&args).await.map(|r| ledgerctl::bench::compare::print(&r))
            } else {
                ledgerctl::bench::run(&args).await.map(|r| ledgerctl::bench::print(&r))
            };
            match outcome {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("ledgerctl: error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Drill { command: DrillCmd::RegionLoss(args) } => {
            let report = ledgerctl::drill::region_loss(&stack, &manifest_path, &args).await?;
            ledgerctl::drill::print(&report);
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Audit { command: AuditCmd::Verify { database_url } } => {
            let url = match database_url {
                Some(url) => url,
                None => ledgerctl::Manifest::load(&manifest_path)?.and_then(|m| m.reconcile_database_url).ok_or_else(
                    || {
                        ledgerctl::StackError::Config(
                            "no reconcile database: run `ledgerctl up` or pass --database-url".into(),
                        )
                    },
                )?,
            };
            match ledgerctl::reconcile::verify_audit(&url).await? {
                reconcile::audit::Verdict::Intact(n) => {
                    println!("audit trail intact: {n} entries");
                    Ok(ExitCode::SUCCESS)
                }
                reconcile::audit::Verdict::Broken { seq, why } => {
                    println!("audit trail broken at entry {seq}: {why}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Logs { component, region, follow, trace, lines } => {
            let cfg = match ledgerctl::Manifest::load(&manifest_path)? {
                // The running stack's regions and folders, whatever flags this invocation has.
                Some(m) => ledgerctl::StackConfig::from_manifest(&m)?,
                None => stack_cfg,
            };
            if let Some(r) = &region
                && !cfg.regions.iter().any(|s| s.name.as_str() == r)
            {
                return Err(ledgerctl::StackError::Config(format!("no region {r:?}")));
            }
            let sources = ledgerctl::logs::sources(&cfg, component, region.as_deref());
            ledgerctl::logs::show(&sources, trace.as_deref(), lines, follow)
                .await
                .map_err(|e| ledgerctl::StackError::Io { path: cfg.state_dir.clone(), source: e })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => {
            let health = stack.status().await?;
            if health.is_empty() {
                println!("not running (no {})", manifest_path.display());
                return Ok(ExitCode::FAILURE);
            }
            for h in &health {
                let pid = h.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                let state = if h.healthy { "healthy".to_owned() } else { format!("UNHEALTHY: {}", h.detail) };
                println!("{:<10} {:<9} {:<22} pid {:<8} {state}", h.region, h.component.name(), h.endpoint, pid);
            }
            let mut healthy = health.iter().all(|h| h.healthy);
            if let Some((url, pid, ok)) = stack.router_status().await? {
                let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                let state = if ok { "healthy" } else { "UNHEALTHY: not running or not answering /_router/healthz" };
                println!("{:<10} {:<9} {:<22} pid {:<8} {state}", "all", "router", url, pid);
                healthy &= ok;
            }
            if let Some((url, pid, ok)) = stack.reconcile_status().await? {
                let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                let state = if ok { "healthy" } else { "UNHEALTHY: not running or not answering /healthz" };
                println!("{:<10} {:<9} {:<22} pid {:<8} {state}", "all", "reconcile", url, pid);
                healthy &= ok;
            }
            let manifest = Manifest::load(&manifest_path)?;
            if let Some((url, pid, ok)) = match &manifest {
                Some(m) => ledgerctl::prometheus::status(m).await,
                None => None,
            } {
                let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                let state = if ok { "healthy" } else { "UNHEALTHY: not running or not answering /-/ready" };
                println!("{:<10} {:<9} {:<22} pid {:<8} {state}", "all", "prometheus", url, pid);
                healthy &= ok;
            }
            Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
