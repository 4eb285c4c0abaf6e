//! `up`, `down`, `status`, and `stop`/`start` of one component, for the local multi-region stack.
//!
//! `up` checks everything it can before starting anything (binaries, jars, ports, state folders),
//! records each process in the manifest the moment it exists, and if any part fails to come up it
//! stops every process it started in this run, so a failed `up` leaves nothing half-started.

use crate::config::{RegionSpec, StackConfig};
use crate::containers::{self, ContainerSpec, ContainersEntry};
use crate::error::{Result, StackError};
use crate::jaeger::JaegerProcess;
use crate::kafka::{self, KafkaBroker, KafkaJars};
use crate::manifest::{Manifest, Pids, RegionEntry};
use crate::node::{NodeProcess, ReplicatorProcess};
use crate::postgres::{self, PgServer};
use crate::process::{self, Lifetime};
use crate::prometheus::PrometheusProcess;
use crate::reconcile::ReconcileProcess;
use crate::router::RouterProcess;
use crate::toxiproxy::ToxiproxyProcess;
use ledger_core::RegionId;
use nix::sys::signal::Signal;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long a component gets to shut down cleanly before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long topic creation may retry after the broker first answers.
pub const TOPICS_TIMEOUT: Duration = Duration::from_secs(60);

/// A part of a region that can be stopped and started on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// The regional PostgreSQL.
    Postgres,
    /// The regional Kafka broker.
    Kafka,
    /// The region node.
    Node,
    /// The replicator into the region (stopping it pauses replication into the region).
    Replicator,
}

impl Component {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Postgres => "postgres",
            Component::Kafka => "kafka",
            Component::Node => "node",
            Component::Replicator => "replicator",
        }
    }

    /// The signal that asks it to stop cleanly. SIGINT is PostgreSQL's "fast" shutdown: it does
    /// not wait for clients to disconnect.
    fn stop_signal(self) -> Signal {
        match self {
            Component::Postgres => Signal::SIGINT,
            Component::Kafka | Component::Node | Component::Replicator => Signal::SIGTERM,
        }
    }

    fn pid(self, pids: &mut Pids) -> &mut Option<u32> {
        match self {
            Component::Postgres => &mut pids.postgres,
            Component::Kafka => &mut pids.kafka,
            Component::Node => &mut pids.node,
            Component::Replicator => &mut pids.replicator,
        }
    }
}

/// Components in start order (each needs the ones before it); stop goes in reverse.
const START_ORDER: [Component; 4] = [Component::Postgres, Component::Kafka, Component::Node, Component::Replicator];

/// The stack's parts, built from a configuration.
pub struct Stack {
    cfg: StackConfig,
}

/// One component's health, for `status`.
#[derive(Debug, Clone)]
pub struct Health {
    /// Region name.
    pub region: String,
    /// Which part.
    pub component: Component,
    /// Its address.
    pub endpoint: String,
    /// Its pid, if recorded.
    pub pid: Option<u32>,
    /// Whether it answered.
    pub healthy: bool,
    /// Why not, when not.
    pub detail: String,
}

/// A process started during this command, to be stopped if the command fails.
struct Started {
    pid: u32,
    marker: String,
    signal: Signal,
    /// Its container, in container mode (removed too).
    container: Option<String>,
}

impl Stack {
    /// A stack for `cfg`.
    pub fn new(cfg: StackConfig) -> Self {
        Self { cfg }
    }

    fn pg(&self, region: &RegionSpec) -> PgServer {
        let dir = self.cfg.region_dir(&region.name);
        PgServer {
            bin_dir: self.cfg.pg_bin_dir.clone(),
            data_dir: dir.join("pg"),
            port: region.pg_port,
            log: dir.join("postgres.log"),
        }
    }

    fn kafka(&self, region: &RegionSpec) -> KafkaBroker {
        let dir = self.cfg.region_dir(&region.name);
        KafkaBroker {
            dir: dir.join("kafka"),
            port: region.kafka_port,
            controller_port: region.kafka_controller_port,
            heap_mb: self.cfg.kafka_heap_mb,
            java: self.cfg.java.clone(),
            log: dir.join("kafka.out"),
            peers: match self.cfg.toxiproxy_bin {
                Some(_) => (0..self.cfg.regions.len())
                    .filter(|j| self.cfg.regions[*j].name != region.name)
                    .map(|j| crate::toxiproxy::peer_listener(region, j))
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    /// The proxied link of `kind` from `source` into `target`, when Toxiproxy is configured.
    fn proxied_link(&self, kind: &str, source: &RegionSpec, target: &RegionSpec) -> Option<crate::toxiproxy::Link> {
        self.cfg.toxiproxy_bin.as_ref()?;
        let links = crate::toxiproxy::links(&self.cfg.regions).ok()?;
        crate::toxiproxy::link(&links, kind, source.name.as_str(), target.name.as_str()).cloned()
    }

    /// Toxiproxy, when configured.
    fn toxiproxy(&self) -> Result<Option<ToxiproxyProcess>> {
        let Some(bin) = &self.cfg.toxiproxy_bin else { return Ok(None) };
        Ok(Some(ToxiproxyProcess {
            bin: bin.clone(),
            dir: self.cfg.state_dir.join("toxiproxy"),
            port: self.cfg.toxiproxy_port,
            links: crate::toxiproxy::links(&self.cfg.regions)?,
        }))
    }

    /// Jaeger, when tracing is on.
    fn jaeger(&self) -> Option<JaegerProcess> {
        let bin = self.cfg.jaeger_bin.clone()?;
        Some(JaegerProcess {
            bin,
            dir: self.cfg.state_dir.join("jaeger"),
            base_port: self.cfg.regions.first().map(|r| r.http_port).unwrap_or_default(),
        })
    }

    /// Where every component sends its spans; empty without tracing.
    fn otlp_endpoint(&self) -> String {
        self.jaeger().map(|j| j.otlp_endpoint()).unwrap_or_default()
    }

    fn node(&self, region: &RegionSpec, api_key: &str) -> NodeProcess {
        let dir = self.cfg.region_dir(&region.name);
        NodeProcess {
            bin: self.cfg.node_bin.clone(),
            region: region.name.to_string(),
            http_port: region.http_port,
            database_url: self.pg(region).url(postgres::DATABASE),
            kafka_bootstrap: self.kafka(region).bootstrap(),
            api_key: api_key.to_owned(),
            peers: self.cfg.regions.iter().filter(|r| r.name != region.name).map(|r| r.name.to_string()).collect(),
            // Through the link's proxy when there is one, as replication is.
            peer_urls: self
                .cfg
                .regions
                .iter()
                .filter(|r| r.name != region.name)
                .map(|r| {
                    let proxied = self.proxied_link("http", r, region);
                    let addr = proxied.map(|l| l.listen).unwrap_or_else(|| format!("127.0.0.1:{}", r.http_port));
                    (r.name.to_string(), format!("http://{addr}"))
                })
                .collect(),
            replication_key: format!("{api_key}_replication"),
            reconcile_key: reconcile_key(api_key),
            // Derived like the other keys: stable across `up` runs, so tokens survive a restart.
            session_secret: format!("{api_key}_session"),
            otlp_endpoint: self.otlp_endpoint(),
            log: dir.join("node.log"),
            dir,
        }
    }

    fn replicator(&self, region: &RegionSpec) -> ReplicatorProcess {
        let dir = self.cfg.region_dir(&region.name);
        ReplicatorProcess {
            bin: self.cfg.replicator_bin.clone(),
            region: region.name.to_string(),
            bootstrap: self.kafka(region).bootstrap(),
            // Other regions' brokers through their link's proxy when there is one.
            sources: self
                .cfg
                .regions
                .iter()
                .map(|r| {
                    let proxied = self.proxied_link("kafka", r, region);
                    (r.name.to_string(), proxied.map(|l| l.listen).unwrap_or_else(|| self.kafka(r).bootstrap()))
                })
                .collect(),
            metrics_port: replicator_port(region),
            otlp_endpoint: self.otlp_endpoint(),
            log: dir.join("replicator.log"),
            dir,
        }
    }

    fn marker(&self, region: &RegionSpec, component: Component) -> String {
        match component {
            Component::Postgres => self.pg(region).marker(),
            Component::Kafka => self.kafka(region).marker(),
            Component::Node => self.node(region, "").marker(),
            Component::Replicator => self.replicator(region).marker(),
        }
    }

    fn entry(&self, region: &RegionSpec, pids: Pids) -> RegionEntry {
        let (pg, kafka) = (self.pg(region), self.kafka(region));
        RegionEntry {
            name: region.name.to_string(),
            http_url: format!("http://127.0.0.1:{}", region.http_port),
            postgres_url: pg.url(postgres::DATABASE),
            kafka_bootstrap: kafka.bootstrap(),
            pids,
            postgres_data_dir: pg.data_dir,
            kafka_dir: kafka.dir,
            postgres_port: region.pg_port,
            kafka_port: region.kafka_port,
            kafka_controller_port: region.kafka_controller_port,
            http_port: region.http_port,
        }
    }

    fn load(&self) -> Result<Manifest> {
        Manifest::load(&self.cfg.manifest_path())?.ok_or_else(|| {
            StackError::Config(format!("nothing is up: no {}; run `ledgerctl up`", self.cfg.manifest_path().display()))
        })
    }

    /// Spawns one component (detached, or as a container) and returns its pid. Does not wait.
    fn spawn(&self, region: &RegionSpec, component: Component, jars: &KafkaJars, api_key: &str) -> Result<u32> {
        if self.cfg.containers.is_some() {
            return self.spawn_container(region, component, api_key);
        }
        let child = match component {
            Component::Postgres => self.pg(region).start(Lifetime::Detached)?,
            Component::Kafka => self.kafka(region).start(jars, Lifetime::Detached)?,
            Component::Node => self.node(region, api_key).start(Lifetime::Detached)?,
            Component::Replicator => self.replicator(region).start(Lifetime::Detached)?,
        };
        Ok(child.id())
    }

    /// The container of `component` in `region`: named by its part, region and port (unique on
    /// the host network, so a test's stack and a developer's share an engine).
    fn container_name(&self, region: &RegionSpec, component: Component) -> String {
        let port = ports(region, component)[0].0;
        format!("ledger-{}-{}-{port}", component.name(), region.name)
    }

    /// The container of the router or the reconcile service.
    fn service_container_name(&self, service: &str) -> String {
        let port = if service == "router" { self.cfg.router_port } else { self.cfg.reconcile_port };
        format!("ledger-{service}-{port}")
    }

    /// Every container name of the stack.
    fn container_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.cfg.regions.iter().flat_map(|r| START_ORDER.map(|c| self.container_name(r, c))).collect();
        names.extend(["router", "reconcile"].map(|s| self.service_container_name(s)));
        names
    }

    /// Starts `component` of `region` in a container, with the command the process mode runs and
    /// the same configuration files (written here, on the mounted state folder).
    fn spawn_container(&self, region: &RegionSpec, component: Component, api_key: &str) -> Result<u32> {
        let images = self.cfg.containers.as_ref().expect("container mode");
        let dir = self.cfg.region_dir(&region.name);
        let marker = self.marker(region, component);
        let (image, script, user, shm_mb, log) = match component {
            Component::Postgres => {
                let pg = self.pg(region);
                (images.postgres.clone(), postgres_script(&pg), Some("0:0".to_owned()), Some(256), pg.log)
            }
            Component::Kafka => {
                let broker = self.kafka(region);
                (images.kafka.clone(), kafka_script(&broker), Some(containers::current_user()), None, broker.log)
            }
            Component::Node => {
                let node = self.node(region, api_key);
                let script = containers::exec_logged(&node.command()?, &node.log);
                (images.service("region-node"), script, Some(containers::current_user()), None, node.log)
            }
            Component::Replicator => {
                let replicator = self.replicator(region);
                let script = containers::exec_logged(&replicator.command()?, &replicator.log);
                (images.service("replicator"), script, Some(containers::current_user()), None, replicator.log)
            }
        };
        let spec = ContainerSpec {
            name: self.container_name(region, component),
            image,
            mounts: vec![dir],
            user,
            stop_signal: component.stop_signal(),
            shm_mb,
            script,
            state_dir: self.cfg.state_dir.clone(),
        };
        containers::run(&spec, &marker, &log)
    }

    /// Starts the router or the reconcile service in a container of its image; its pid and the
    /// container's name.
    fn service_container(
        &self,
        service: &str,
        cmd: &std::process::Command,
        dir: &std::path::Path,
        marker: &str,
        log: &std::path::Path,
    ) -> Result<(u32, Option<String>)> {
        let images = self.cfg.containers.as_ref().expect("container mode");
        let spec = ContainerSpec {
            name: self.service_container_name(service),
            image: images.service(service),
            mounts: vec![dir.to_path_buf()],
            user: Some(containers::current_user()),
            stop_signal: Signal::SIGTERM,
            shm_mb: None,
            script: containers::exec_logged(cmd, log),
            state_dir: self.cfg.state_dir.clone(),
        };
        Ok((containers::run(&spec, marker, log)?, Some(spec.name)))
    }

    /// Stops one part, a process or a container (see [`process::stop`], [`containers::stop`]).
    fn stop_part(&self, container: Option<&str>, pid: u32, marker: &str, signal: Signal) -> bool {
        match container {
            Some(name) => containers::stop(name, pid, marker, signal, STOP_GRACE),
            None => process::stop(pid, marker, signal, STOP_GRACE),
        }
    }

    /// The container of a region's part, in container mode.
    fn container_of(&self, region: &RegionSpec, component: Component) -> Option<String> {
        self.cfg.containers.as_ref().map(|_| self.container_name(region, component))
    }

    /// Waits until a started component serves; for PostgreSQL and Kafka also prepares the database
    /// and the topics.
    async fn ready(&self, region: &RegionSpec, component: Component, pid: u32, api_key: &str) -> Result<()> {
        match component {
            Component::Postgres => {
                let pg = self.pg(region);
                pg.wait_ready(pid).await?;
                pg.prepare_database(postgres::DATABASE).await?;
                pg.claim_region(postgres::DATABASE, &region.name).await
            }
            Component::Kafka => {
                let broker = self.kafka(region);
                broker.wait_ready(pid).await?;
                let topics = ledger_schema::region_topics("");
                Ok(ledger_schema::create_topics(&broker.bootstrap(), &topics, TOPICS_TIMEOUT).await?)
            }
            Component::Node => self.node(region, api_key).wait_ready(pid).await,
            Component::Replicator => self.replicator(region).wait_ready(pid).await,
        }
    }

    /// Brings every region up (idempotent: running parts are kept) and returns the manifest.
    pub async fn up(&self) -> Result<Manifest> {
        let mut started = Vec::new();
        let outcome = self.up_inner(&mut started).await;
        if outcome.is_err() {
            self.roll_back(&started);
        }
        outcome
    }

    async fn up_inner(&self, started: &mut Vec<Started>) -> Result<Manifest> {
        let cfg = &self.cfg;
        std::fs::create_dir_all(&cfg.state_dir).map_err(StackError::io(&cfg.state_dir))?;
        let mut manifest = Manifest::load(&cfg.manifest_path())?
            .unwrap_or_else(|| Manifest { state_dir: cfg.state_dir.clone(), ..Manifest::default() });
        let api_key = manifest.api_key.clone().unwrap_or_else(new_api_key);
        manifest.api_key = Some(api_key.clone());

        // 1. Everything that can be checked without starting anything.
        let jars = match &cfg.containers {
            Some(images) => {
                containers::check(images)?;
                manifest.containers = Some(ContainersEntry {
                    images: images.clone(),
                    docker_host: std::env::var("DOCKER_HOST").unwrap_or_default(),
                    names: self.container_names(),
                });
                KafkaJars::in_image()
            }
            None => {
                PgServer::check_binaries(&cfg.pg_bin_dir)?;
                kafka::check_java(&cfg.java)?;
                NodeProcess::check_binary(&cfg.node_bin)?;
                RouterProcess::check_binary(&cfg.router_bin)?;
                manifest.containers = None;
                KafkaJars::ensure(&cfg.kafka_pom, &cfg.kafka_cache_dir, &cfg.mvn)?
            }
        };
        let mut running: Vec<Pids> = Vec::new();
        for region in &cfg.regions {
            let mut known = manifest.region(region.name.as_str()).map(|r| r.pids.clone()).unwrap_or_default();
            for component in START_ORDER {
                let marker = self.marker(region, component);
                let slot = component.pid(&mut known);
                *slot = slot.filter(|p| process::is_ours_and_alive(*p, &marker));
                if slot.is_none() {
                    for (port, what) in ports(region, component) {
                        process::ensure_port_free(port, &format!("{what} of {}", region.name))?;
                    }
                }
            }
            running.push(known);
        }
        let router = self.router();
        if manifest.router_pid.filter(|p| process::is_ours_and_alive(*p, &router.marker())).is_none() {
            process::ensure_port_free(router.port, "the router")?;
        }
        let jaeger = self.jaeger();
        if let Some(j) = &jaeger {
            JaegerProcess::check_binary(&j.bin)?;
            if manifest.jaeger_pid.filter(|p| process::is_ours_and_alive(*p, &j.marker())).is_none() {
                for (port, what) in j.ports() {
                    process::ensure_port_free(port, what)?;
                }
            }
        }
        if let Some(p) = self.prometheus() {
            PrometheusProcess::check_binary(&p.bin)?;
            if manifest.prometheus_pid.filter(|pid| process::is_ours_and_alive(*pid, &p.marker())).is_none() {
                process::ensure_port_free(p.port, "Prometheus")?;
            }
        }
        let toxiproxy = self.toxiproxy()?;
        if let Some(t) = &toxiproxy {
            ToxiproxyProcess::check_binary(&t.bin)?;
            if manifest.toxiproxy_pid.filter(|p| process::is_ours_and_alive(*p, &t.marker())).is_none() {
                process::ensure_port_free(t.port, "toxiproxy")?;
                for link in &t.links {
                    let port = link.listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    process::ensure_port_free(port, &format!("the proxy {}", link.name))?;
                }
            }
            for (region, pids) in cfg.regions.iter().zip(&running) {
                if pids.kafka.is_none() {
                    for (_, bind, _) in self.kafka(region).peers {
                        process::ensure_port_free(bind, &format!("a peer listener of {}'s Kafka", region.name))?;
                    }
                }
            }
        }
        for (region, pids) in cfg.regions.iter().zip(&running) {
            let dir = cfg.region_dir(&region.name);
            std::fs::create_dir_all(&dir).map_err(StackError::io(&dir))?;
            // In containers, initdb and the storage format run in the container, from its image.
            if pids.postgres.is_none() {
                match &cfg.containers {
                    Some(_) => {
                        self.pg(region).has_cluster()?;
                    }
                    None => self.pg(region).init()?,
                }
            }
            if pids.kafka.is_none() {
                match &cfg.containers {
                    Some(_) => {
                        self.kafka(region).write_config()?;
                    }
                    None => self.kafka(region).init(&jars)?,
                }
            }
        }
        manifest.regions.retain(|r| cfg.regions.iter().any(|s| s.name.as_str() == r.name));

        // Jaeger first, so every component's first spans have somewhere to go.
        match &jaeger {
            Some(j) => self.up_jaeger(j, &mut manifest, started).await?,
            None => manifest.tracing_url = None,
        }
        if let Some(t) = &toxiproxy {
            self.up_toxiproxy(t, &mut manifest, started).await?;
        }

        // 2. Engines first, then nodes: start what is not running, record each pid at once, wait.
        let phases = [&[Component::Postgres, Component::Kafka][..], &[Component::Node, Component::Replicator][..]];
        for phase in phases {
            let mut waits = Vec::new();
            for (region, pids) in cfg.regions.iter().zip(running.iter_mut()) {
                for &component in phase {
                    let fresh = component.pid(pids).is_none();
                    if fresh {
                        let pid = self.spawn(region, component, &jars, &api_key)?;
                        started.push(Started {
                            pid,
                            marker: self.marker(region, component),
                            signal: component.stop_signal(),
                            container: self.container_of(region, component),
                        });
                        *component.pid(pids) = Some(pid);
                        let entry = self.entry(region, pids.clone());
                        match manifest.regions.iter_mut().find(|r| r.name == entry.name) {
                            Some(existing) => *existing = entry,
                            None => manifest.regions.push(entry),
                        }
                        manifest.save(&cfg.manifest_path())?;
                    }
                    let pid = component.pid(pids).expect("running or just started");
                    // Engines already running are still checked: topics or the database may be new.
                    if fresh || matches!(component, Component::Postgres | Component::Kafka) {
                        waits.push((region.clone(), component, pid));
                    }
                }
            }
            self.wait_all(waits, &api_key).await?;
        }
        for (region, pids) in cfg.regions.iter().zip(running) {
            let entry = self.entry(region, pids);
            match manifest.regions.iter_mut().find(|r| r.name == entry.name) {
                Some(existing) => *existing = entry,
                None => manifest.regions.push(entry),
            }
        }
        manifest.save(&cfg.manifest_path())?;
        self.up_router(&mut manifest, started).await?;
        self.up_reconcile(&mut manifest, started, &api_key).await?;
        if let Some(p) = self.prometheus() {
            self.up_prometheus(&p, &mut manifest, started).await?;
        }
        Ok(manifest)
    }

    fn router(&self) -> RouterProcess {
        RouterProcess {
            bin: self.cfg.router_bin.clone(),
            dir: self.cfg.state_dir.join("router"),
            port: self.cfg.router_port,
            regions: self
                .cfg
                .regions
                .iter()
                .map(|r| (r.name.to_string(), format!("http://127.0.0.1:{}", r.http_port)))
                .collect(),
            otlp_endpoint: self.otlp_endpoint(),
            log: self.cfg.state_dir.join("router").join("router.log"),
        }
    }

    /// The geo-router, once the nodes serve (kept if running).
    async fn up_router(&self, manifest: &mut Manifest, started: &mut Vec<Started>) -> Result<()> {
        let router = self.router();
        manifest.router_url = Some(router.url());
        let marker = router.marker();
        if manifest.router_pid.filter(|p| process::is_ours_and_alive(*p, &marker)).is_none() {
            process::ensure_port_free(router.port, "the router")?;
            let (pid, container) = match &self.cfg.containers {
                Some(_) => self.service_container("router", &router.command()?, &router.dir, &marker, &router.log)?,
                None => (router.start(Lifetime::Detached)?.id(), None),
            };
            started.push(Started { pid, marker, signal: Signal::SIGTERM, container });
            manifest.router_pid = Some(pid);
            manifest.save(&self.cfg.manifest_path())?;
            router.wait_ready(pid).await?;
        }
        manifest.save(&self.cfg.manifest_path())
    }

    fn reconcile(&self, api_key: &str) -> ReconcileProcess {
        let first = &self.cfg.regions[0];
        ReconcileProcess {
            bin: self.cfg.reconcile_bin.clone(),
            dir: self.cfg.state_dir.join("reconcile"),
            port: self.cfg.reconcile_port,
            database_url: self.pg(first).url(crate::reconcile::DATABASE),
            regions: self
                .cfg
                .regions
                .iter()
                .map(|r| (r.name.to_string(), format!("http://127.0.0.1:{}", r.http_port), self.kafka(r).bootstrap()))
                .collect(),
            node_key: reconcile_key(api_key),
            otlp_endpoint: self.otlp_endpoint(),
            log: self.cfg.state_dir.join("reconcile").join("reconcile.log"),
        }
    }

    /// Jaeger, before everything that sends it spans (kept if running).
    async fn up_jaeger(&self, j: &JaegerProcess, manifest: &mut Manifest, started: &mut Vec<Started>) -> Result<()> {
        manifest.tracing_url = Some(j.url());
        let marker = j.marker();
        if manifest.jaeger_pid.filter(|p| process::is_ours_and_alive(*p, &marker)).is_none() {
            let pid = j.start(Lifetime::Detached)?.id();
            started.push(Started { pid, marker, signal: Signal::SIGTERM, container: None });
            manifest.jaeger_pid = Some(pid);
            manifest.save(&self.cfg.manifest_path())?;
            j.wait_ready(pid).await?;
        }
        manifest.save(&self.cfg.manifest_path())
    }

    /// Prometheus over every component of the stack, when configured.
    fn prometheus(&self) -> Option<PrometheusProcess> {
        use crate::prometheus::{GLOBAL_REGION, Target};
        let bin = self.cfg.prometheus_bin.clone()?;
        let mut targets = Vec::new();
        for r in &self.cfg.regions {
            let (region, port) = (r.name.to_string(), r.http_port);
            targets.push(Target {
                component: "node",
                region: region.clone(),
                address: format!("127.0.0.1:{port}"),
                metrics_path: "/metrics",
            });
            targets.push(Target {
                component: "replicator",
                region,
                address: format!("127.0.0.1:{}", replicator_port(r)),
                metrics_path: "/metrics",
            });
        }
        targets.push(Target {
            component: "router",
            region: GLOBAL_REGION.into(),
            address: format!("127.0.0.1:{}", self.cfg.router_port),
            metrics_path: "/_router/metrics",
        });
        targets.push(Target {
            component: "reconcile",
            region: GLOBAL_REGION.into(),
            address: format!("127.0.0.1:{}", self.cfg.reconcile_port),
            metrics_path: "/metrics",
        });
        Some(PrometheusProcess {
            bin,
            dir: self.cfg.state_dir.join("prometheus"),
            port: self.cfg.prometheus_port,
            targets,
            rules: crate::prometheus::rules_file(),
        })
    }

    /// Prometheus, once everything it scrapes exists (kept if running).
    async fn up_prometheus(
        &self,
        p: &PrometheusProcess,
        manifest: &mut Manifest,
        started: &mut Vec<Started>,
    ) -> Result<()> {
        manifest.prometheus_url = Some(p.url());
        let marker = p.marker();
        if manifest.prometheus_pid.filter(|pid| process::is_ours_and_alive(*pid, &marker)).is_none() {
            let pid = p.start(Lifetime::Detached)?.id();
            started.push(Started { pid, marker, signal: Signal::SIGTERM, container: None });
            manifest.prometheus_pid = Some(pid);
            manifest.save(&self.cfg.manifest_path())?;
            p.wait_ready(pid).await?;
        }
        manifest.save(&self.cfg.manifest_path())
    }

    /// Toxiproxy, before the replicators that connect through it (kept if running).
    async fn up_toxiproxy(
        &self,
        t: &ToxiproxyProcess,
        manifest: &mut Manifest,
        started: &mut Vec<Started>,
    ) -> Result<()> {
        manifest.toxiproxy_url = Some(t.url());
        manifest.links = t.links.clone();
        let marker = t.marker();
        if manifest.toxiproxy_pid.filter(|p| process::is_ours_and_alive(*p, &marker)).is_none() {
            let pid = t.start(Lifetime::Detached)?.id();
            started.push(Started { pid, marker, signal: Signal::SIGTERM, container: None });
            manifest.toxiproxy_pid = Some(pid);
            manifest.save(&self.cfg.manifest_path())?;
            t.wait_ready(pid).await?;
        }
        manifest.save(&self.cfg.manifest_path())
    }

    /// The reconcile service: its database on the first region's instance, its development staff,
    /// its process (kept if running).
    async fn up_reconcile(&self, manifest: &mut Manifest, started: &mut Vec<Started>, api_key: &str) -> Result<()> {
        let service = self.reconcile(api_key);
        if self.cfg.containers.is_none() {
            ReconcileProcess::check_binary(&service.bin)?;
        }
        self.pg(&self.cfg.regions[0]).create_database(crate::reconcile::DATABASE).await?;
        manifest.reconcile_users = crate::reconcile::prepare(&service.database_url, &manifest.reconcile_users).await?;
        manifest.reconcile_database_url = Some(service.database_url.clone());
        manifest.reconcile_url = Some(format!("http://127.0.0.1:{}", service.port));
        let marker = service.marker();
        let alive = manifest.reconcile_pid.filter(|p| process::is_ours_and_alive(*p, &marker));
        if alive.is_none() {
            process::ensure_port_free(service.port, "the reconcile service")?;
            let (pid, container) = match &self.cfg.containers {
                Some(_) => {
                    self.service_container("reconcile", &service.command()?, &service.dir, &marker, &service.log)?
                }
                None => (service.start(Lifetime::Detached)?.id(), None),
            };
            started.push(Started { pid, marker, signal: Signal::SIGTERM, container });
            manifest.reconcile_pid = Some(pid);
            manifest.save(&self.cfg.manifest_path())?;
            service.wait_ready(pid).await?;
        }
        manifest.save(&self.cfg.manifest_path())
    }

    async fn wait_all(&self, waits: Vec<(RegionSpec, Component, u32)>, api_key: &str) -> Result<()> {
        let mut set = JoinSet::new();
        for (region, component, pid) in waits {
            let stack = Stack { cfg: self.cfg.clone() };
            let api_key = api_key.to_owned();
            set.spawn(async move { stack.ready(&region, component, pid, &api_key).await });
        }
        while let Some(joined) = set.join_next().await {
            joined.map_err(|e| StackError::Config(format!("a start-up task panicked: {e}")))??;
        }
        Ok(())
    }

    /// Stops what this command started and forgets it in the manifest.
    fn roll_back(&self, started: &[Started]) {
        let handles: Vec<_> = started
            .iter()
            .map(|s| {
                let (pid, marker, signal, container) = (s.pid, s.marker.clone(), s.signal, s.container.clone());
                std::thread::spawn(move || match container {
                    Some(name) => {
                        containers::stop(&name, pid, &marker, signal, STOP_GRACE);
                        containers::remove(&name);
                    }
                    None => {
                        process::stop(pid, &marker, signal, STOP_GRACE);
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        if let Ok(Some(mut manifest)) = Manifest::load(&self.cfg.manifest_path()) {
            for region in &mut manifest.regions {
                for component in START_ORDER {
                    let slot = component.pid(&mut region.pids);
                    if slot.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                        *slot = None;
                    }
                }
            }
            if manifest.reconcile_pid.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                manifest.reconcile_pid = None;
            }
            if manifest.router_pid.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                manifest.router_pid = None;
            }
            if manifest.toxiproxy_pid.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                manifest.toxiproxy_pid = None;
            }
            if manifest.jaeger_pid.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                manifest.jaeger_pid = None;
            }
            if manifest.prometheus_pid.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                manifest.prometheus_pid = None;
            }
            let _ = manifest.save(&self.cfg.manifest_path());
        }
    }

    /// The regions named (all when `None`), as the manifest records them.
    fn select<'m>(&self, manifest: &'m Manifest, region: Option<&str>) -> Result<Vec<&'m RegionEntry>> {
        let chosen: Vec<&RegionEntry> =
            manifest.regions.iter().filter(|r| region.is_none_or(|n| r.name == n)).collect();
        if chosen.is_empty() {
            let known: Vec<&str> = manifest.regions.iter().map(|r| r.name.as_str()).collect();
            return Err(StackError::Config(format!(
                "no region {:?} is up; known: {}",
                region.unwrap_or(""),
                known.join(", ")
            )));
        }
        Ok(chosen)
    }

    /// Stops `component` in `region` (every region when `None`), cleanly or with SIGKILL.
    pub fn stop(&self, component: Component, region: Option<&str>, kill: bool) -> Result<Vec<String>> {
        self.stop_with(component, region, if kill { Signal::SIGKILL } else { component.stop_signal() })
    }

    /// Stops `component` in `region` (every region when `None`) with `signal` (the chaos suite's
    /// PostgreSQL immediate stop is SIGQUIT), SIGKILL after a grace period.
    pub fn stop_with(&self, component: Component, region: Option<&str>, signal: Signal) -> Result<Vec<String>> {
        let mut manifest = self.load()?;
        let names: Vec<String> = self.select(&manifest, region)?.iter().map(|r| r.name.clone()).collect();
        let mut stopped = Vec::new();
        for entry in manifest.regions.iter_mut().filter(|r| names.contains(&r.name)) {
            let spec = spec_of(entry)?;
            let marker = self.marker(&spec, component);
            let container = self.container_of(&spec, component);
            if let Some(pid) = component.pid(&mut entry.pids).take()
                && self.stop_part(container.as_deref(), pid, &marker, signal)
            {
                stopped.push(format!("{} {} (pid {pid})", entry.name, component.name()));
            }
        }
        manifest.save(&self.cfg.manifest_path())?;
        Ok(stopped)
    }

    /// Starts `component` in `region` (every region when `None`) if it is not running, and waits
    /// until it serves.
    pub async fn start(&self, component: Component, region: Option<&str>) -> Result<Vec<String>> {
        let mut manifest = self.load()?;
        let api_key = manifest.api_key.clone().unwrap_or_else(new_api_key);
        let jars = match component {
            Component::Kafka if self.cfg.containers.is_some() => KafkaJars::in_image(),
            Component::Kafka => KafkaJars::ensure(&self.cfg.kafka_pom, &self.cfg.kafka_cache_dir, &self.cfg.mvn)?,
            _ => KafkaJars { libs: Default::default() },
        };
        let names: Vec<String> = self.select(&manifest, region)?.iter().map(|r| r.name.clone()).collect();
        let mut waits = Vec::new();
        let mut started = Vec::new();
        for entry in manifest.regions.iter_mut().filter(|r| names.contains(&r.name)) {
            let spec = spec_of(entry)?;
            let marker = self.marker(&spec, component);
            if component.pid(&mut entry.pids).is_some_and(|p| process::is_ours_and_alive(p, &marker)) {
                continue;
            }
            let pid = self.spawn(&spec, component, &jars, &api_key)?;
            *component.pid(&mut entry.pids) = Some(pid);
            started.push(format!("{} {} (pid {pid})", entry.name, component.name()));
            waits.push((spec, component, pid));
        }
        manifest.save(&self.cfg.manifest_path())?;
        self.wait_all(waits, &api_key).await?;
        Ok(started)
    }

    /// Stops every process recorded in the manifest, by pid (nodes first, so they can flush), and
    /// removes the manifest. With `purge`, also deletes the state folder (all local data). Returns
    /// a line per process stopped.
    pub fn down(&self, purge: bool) -> Result<Vec<String>> {
        let path = self.cfg.manifest_path();
        let mut stopped = Vec::new();
        let manifest = match Manifest::load(&path) {
            Ok(m) => m,
            // An unreadable manifest cannot name pids; purging is still possible and safe only if
            // the caller asked for it explicitly.
            Err(e) if purge => {
                eprintln!("ledgerctl: {e}; purging anyway");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(manifest) = manifest {
            // Prometheus first, so that it does not record the rest going down as an outage.
            if let Some(pid) = manifest.prometheus_pid
                && process::stop(pid, &crate::prometheus::marker_in(&self.cfg.state_dir), Signal::SIGTERM, STOP_GRACE)
            {
                stopped.push(format!("prometheus (pid {pid})"));
            }
            // The router and the reconcile service first: they call the nodes.
            let in_containers = self.cfg.containers.is_some();
            let router_container = in_containers.then(|| self.service_container_name("router"));
            if let Some(pid) = manifest.router_pid
                && self.stop_part(router_container.as_deref(), pid, &self.router().marker(), Signal::SIGTERM)
            {
                stopped.push(format!("router (pid {pid})"));
            }
            if let Some(pid) = manifest.reconcile_pid {
                let marker = self.reconcile("").marker();
                let container = in_containers.then(|| self.service_container_name("reconcile"));
                if self.stop_part(container.as_deref(), pid, &marker, Signal::SIGTERM) {
                    stopped.push(format!("reconcile (pid {pid})"));
                }
            }
            // Toxiproxy's marker is its proxy file in the state folder, whatever binary ran it.
            let toxiproxy_marker = self.cfg.state_dir.join("toxiproxy").join("toxiproxy.json").display().to_string();
            if let Some(pid) = manifest.toxiproxy_pid
                && process::stop(pid, &toxiproxy_marker, Signal::SIGTERM, STOP_GRACE)
            {
                stopped.push(format!("toxiproxy (pid {pid})"));
            }
            let phases = [&[Component::Replicator, Component::Node][..], &[Component::Kafka, Component::Postgres][..]];
            for phase in phases {
                let mut handles = Vec::new();
                for region in &manifest.regions {
                    let spec = spec_of(region)?;
                    for &component in phase {
                        let Some(pid) = component.pid(&mut region.pids.clone()).to_owned() else { continue };
                        let (marker, label, container) = (
                            self.marker(&spec, component),
                            format!("{} {} (pid {pid})", region.name, component.name()),
                            self.container_of(&spec, component),
                        );
                        handles.push(std::thread::spawn(move || {
                            let stopped = match container {
                                Some(name) => {
                                    containers::stop(&name, pid, &marker, component.stop_signal(), STOP_GRACE)
                                }
                                None => process::stop(pid, &marker, component.stop_signal(), STOP_GRACE),
                            };
                            stopped.then_some(label)
                        }));
                    }
                }
                stopped.extend(handles.into_iter().filter_map(|h| h.join().ok().flatten()));
            }
            // Jaeger last: the others flush their last spans to it as they stop. Its marker is its
            // configuration in the state folder, whatever binary ran it.
            let jaeger_marker = self.cfg.state_dir.join("jaeger").join("jaeger.yaml").display().to_string();
            if let Some(pid) = manifest.jaeger_pid
                && process::stop(pid, &jaeger_marker, Signal::SIGTERM, STOP_GRACE)
            {
                stopped.push(format!("jaeger (pid {pid})"));
            }
            // Stopped containers go too: every one of the stack, recorded or not.
            if in_containers {
                for name in self.container_names() {
                    containers::remove(&name);
                }
                containers::remove_all_of(&self.cfg.state_dir);
            }
            std::fs::remove_file(&path).map_err(StackError::io(&path))?;
        }
        if purge && self.cfg.state_dir.exists() {
            std::fs::remove_dir_all(&self.cfg.state_dir).map_err(StackError::io(&self.cfg.state_dir))?;
        }
        Ok(stopped)
    }

    /// Health of every recorded component.
    pub async fn status(&self) -> Result<Vec<Health>> {
        let Some(manifest) = Manifest::load(&self.cfg.manifest_path())? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for r in &manifest.regions {
            let spec = spec_of(r)?;
            for component in START_ORDER {
                let pid = *component.pid(&mut r.pids.clone());
                let alive = pid.is_some_and(|p| process::is_ours_and_alive(p, &self.marker(&spec, component)));
                let endpoint = match component {
                    Component::Postgres => format!("127.0.0.1:{}", r.postgres_port),
                    Component::Kafka => r.kafka_bootstrap.clone(),
                    Component::Node => r.http_url.clone(),
                    Component::Replicator => format!("http://127.0.0.1:{}", replicator_port(&spec)),
                };
                let answer = match component {
                    _ if !alive => Err("not running".into()),
                    Component::Postgres => postgres_answers(&r.postgres_url).await,
                    Component::Kafka => kafka_answers(&r.kafka_bootstrap).await,
                    Component::Node => node_answers(r.http_port).await,
                    Component::Replicator => match tokio::task::spawn_blocking({
                        let port = replicator_port(&spec);
                        move || crate::node::http_status(port, "/healthz")
                    })
                    .await
                    {
                        Ok(Some(200)) => Ok(()),
                        _ => Err("no answer".into()),
                    },
                };
                out.push(Health {
                    region: r.name.clone(),
                    component,
                    endpoint,
                    pid,
                    healthy: answer.is_ok(),
                    detail: answer.err().unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}

impl Stack {
    /// The router's health (its process alive and `/_router/healthz` answering): `None` when the
    /// manifest records none.
    pub async fn router_status(&self) -> Result<Option<(String, Option<u32>, bool)>> {
        let Some(manifest) = Manifest::load(&self.cfg.manifest_path())? else { return Ok(None) };
        let Some(url) = manifest.router_url.clone() else { return Ok(None) };
        let alive = manifest.router_pid.is_some_and(|p| process::is_ours_and_alive(p, &self.router().marker()));
        let port = self.cfg.router_port;
        let answers = alive
            && tokio::task::spawn_blocking(move || crate::node::http_status(port, "/_router/healthz") == Some(200))
                .await
                .unwrap_or(false);
        Ok(Some((url, manifest.router_pid, answers)))
    }

    /// The reconcile service's health: `None` when the manifest records none.
    pub async fn reconcile_status(&self) -> Result<Option<(String, Option<u32>, bool)>> {
        let Some(manifest) = Manifest::load(&self.cfg.manifest_path())? else { return Ok(None) };
        let Some(url) = manifest.reconcile_url.clone() else { return Ok(None) };
        let marker = self.reconcile("").marker();
        let alive = manifest.reconcile_pid.is_some_and(|p| process::is_ours_and_alive(p, &marker));
        let port = self.cfg.reconcile_port;
        let answers = alive
            && tokio::task::spawn_blocking(move || crate::node::http_status(port, "/healthz") == Some(200))
                .await
                .unwrap_or(false);
        Ok(Some((url, manifest.reconcile_pid, answers)))
    }
}

/// The ports a component listens on, with what they are for.
fn ports(region: &RegionSpec, component: Component) -> Vec<(u16, &'static str)> {
    match component {
        Component::Postgres => vec![(region.pg_port, "PostgreSQL")],
        Component::Kafka => vec![(region.kafka_port, "Kafka"), (region.kafka_controller_port, "the Kafka controller")],
        Component::Node => vec![(region.http_port, "the node")],
        Component::Replicator => vec![(replicator_port(region), "the replicator")],
    }
}

/// The replicator's metrics port: 100 above the region's HTTP port.
fn replicator_port(region: &RegionSpec) -> u16 {
    region.http_port.saturating_add(100)
}

/// The region as the manifest recorded it (ports may differ from the current flags).
fn spec_of(entry: &RegionEntry) -> Result<RegionSpec> {
    Ok(RegionSpec {
        name: RegionId::new(entry.name.clone()).map_err(|e| StackError::Config(e.to_string()))?,
        pg_port: entry.postgres_port,
        kafka_port: entry.kafka_port,
        kafka_controller_port: entry.kafka_controller_port,
        http_port: entry.http_port,
    })
}

/// The nodes' key for the reconcile service (`read`, `write` and `reconcile` scopes), derived from
/// the development key like the replication key.
pub fn reconcile_key(api_key: &str) -> String {
    format!("{api_key}_reconcile")
}

/// A development API key: 256 random bits. The nodes' replication key is derived from it
/// (`<key>_replication`), so it is as stable as the key across `up` runs.
fn new_api_key() -> String {
    format!("ldev_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

async fn postgres_answers(url: &str) -> std::result::Result<(), String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    if one == 1 { Ok(()) } else { Err("unexpected answer".into()) }
}

async fn kafka_answers(bootstrap: &str) -> std::result::Result<(), String> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().map_err(|e| e.to_string())?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        let topic = ledger_schema::events_topic("");
        let events = metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none());
        if events { Ok(()) } else { Err(format!("topic {topic} missing")) }
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn node_answers(port: u16) -> std::result::Result<(), String> {
    match tokio::task::spawn_blocking(move || crate::node::http_status(port, "/readyz")).await {
        Ok(Some(200)) => Ok(()),
        Ok(Some(status)) => Err(format!("/readyz answered {status}")),
        _ => Err("no answer".into()),
    }
}

/// The PostgreSQL container's script: as root, the data folder and log handed to the image's
/// `postgres` user (whose uid need not be the host's); then as that user `initdb` on the first
/// start and the server, both with [`PgServer`]'s arguments, output appended to the same log as a
/// local server's. Every step `exec`s, so the server is the container's main process (its pid the
/// one recorded, a SIGKILL to the container a crash of the postmaster).
fn postgres_script(pg: &PgServer) -> String {
    use containers::sh_quote;
    let data = pg.data_dir.display().to_string();
    let log = pg.log.display().to_string();
    let pwfile = std::path::Path::new("/tmp/initdb-password");
    let mut initdb = std::process::Command::new(pg.bin_dir.join("initdb"));
    initdb.args(pg.initdb_args(pwfile));
    let mut server = std::process::Command::new(pg.bin_dir.join("postgres"));
    server.args(pg.server_args());
    let as_postgres = format!(
        "set -e\n\
         if [ ! -s {version} ]; then\n\
         printf %s {password} > {pwfile}\n\
         {initdb} >> {log} 2>&1\n\
         rm -f {pwfile}\n\
         fi\n\
         {server}\n",
        version = sh_quote(&format!("{data}/PG_VERSION")),
        password = sh_quote(postgres::PASSWORD),
        pwfile = sh_quote(&pwfile.display().to_string()),
        initdb = containers::sh_command(&initdb),
        log = sh_quote(&log),
        server = containers::exec_logged(&server, &pg.log),
    );
    format!(
        "set -e\n\
         mkdir -p {data}\n\
         touch {log}\n\
         [ \"$(stat -c %u {data})\" = \"$(id -u postgres)\" ] || chown -R postgres:postgres {data}\n\
         chown postgres:postgres {log}\n\
         chmod 700 {data}\n\
         exec setpriv --reuid=postgres --regid=postgres --init-groups /bin/sh -c {inner}\n",
        data = sh_quote(&data),
        log = sh_quote(&log),
        inner = sh_quote(&as_postgres),
    )
}

/// The Kafka container's script: the storage format on the first start (the configuration files
/// are written by `ledgerctl` on the mounted folder), then the broker, with [`KafkaBroker`]'s
/// arguments and the image's jars.
fn kafka_script(broker: &KafkaBroker) -> String {
    let jars = KafkaJars::in_image();
    let mut format = std::process::Command::new(&broker.java);
    format.args(broker.format_java_args(&jars, &kafka::new_cluster_id()));
    let mut server = std::process::Command::new(&broker.java);
    server.args(broker.server_java_args(&jars));
    format!(
        "set -e\n\
         if [ ! -f {meta} ]; then {format} >> {log} 2>&1; fi\n\
         {server}\n",
        meta = containers::sh_quote(&broker.data_dir().join("meta.properties").display().to_string()),
        format = containers::sh_command(&format),
        log = containers::sh_quote(&broker.log.display().to_string()),
        server = containers::exec_logged(&server, &broker.log),
    )
}
