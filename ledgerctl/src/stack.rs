//! `up`, `down` and `status` of the local multi-region stack.
//!
//! `up` checks everything it can before starting anything (binaries, jars, ports, state folders),
//! records each process in the manifest the moment it exists, and if any part fails to come up it
//! stops every process it started in this run, so a failed `up` leaves nothing half-started.

use crate::config::{RegionSpec, StackConfig};
use crate::error::{Result, StackError};
use crate::kafka::{self, KafkaBroker, KafkaJars};
use crate::manifest::{Manifest, Pids, RegionEntry};
use crate::postgres::{self, PgServer};
use crate::process::{self, Lifetime};
use nix::sys::signal::Signal;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long a component gets to shut down cleanly before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long topic creation may retry after the broker first answers.
pub const TOPICS_TIMEOUT: Duration = Duration::from_secs(60);

/// The stack's parts, built from a configuration.
pub struct Stack {
    cfg: StackConfig,
}

/// One component's health, for `status`.
#[derive(Debug, Clone)]
pub struct Health {
    /// Region name.
    pub region: String,
    /// "postgres" or "kafka".
    pub component: &'static str,
    /// Its address.
    pub endpoint: String,
    /// Its pid, if recorded.
    pub pid: Option<u32>,
    /// Whether it answered.
    pub healthy: bool,
    /// Why not, when not.
    pub detail: String,
}

/// A component started during this `up`, to be stopped if `up` fails.
struct Started {
    pid: u32,
    marker: String,
    signal: Signal,
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

    /// Brings every region up (idempotent: running parts are kept) and returns the manifest.
    pub async fn up(&self) -> Result<Manifest> {
        let mut started = Vec::new();
        match self.up_inner(&mut started).await {
            Ok(manifest) => Ok(manifest),
            Err(e) => {
                rollback(&started);
                // Forget what we just stopped; keep what was already running before this `up`.
                if let Ok(Some(mut manifest)) = Manifest::load(&self.cfg.manifest_path()) {
                    for region in &mut manifest.regions {
                        for pid in [&mut region.pids.postgres, &mut region.pids.kafka] {
                            if pid.is_some_and(|p| started.iter().any(|s| s.pid == p)) {
                                *pid = None;
                            }
                        }
                    }
                    let _ = manifest.save(&self.cfg.manifest_path());
                }
                Err(e)
            }
        }
    }

    async fn up_inner(&self, started: &mut Vec<Started>) -> Result<Manifest> {
        let cfg = &self.cfg;
        std::fs::create_dir_all(&cfg.state_dir).map_err(StackError::io(&cfg.state_dir))?;
        let mut manifest = Manifest::load(&cfg.manifest_path())?
            .unwrap_or_else(|| Manifest { state_dir: cfg.state_dir.clone(), ..Manifest::default() });

        // 1. Everything that can be checked without starting anything.
        PgServer::check_binaries(&cfg.pg_bin_dir)?;
        kafka::check_java(&cfg.java)?;
        let jars = KafkaJars::ensure(&cfg.kafka_pom, &cfg.kafka_cache_dir, &cfg.mvn)?;
        let mut plan = Vec::new();
        for region in &cfg.regions {
            let (pg, broker) = (self.pg(region), self.kafka(region));
            let known = manifest.region(region.name.as_str()).map(|r| r.pids.clone()).unwrap_or_default();
            let pg_pid = known.postgres.filter(|p| process::is_ours_and_alive(*p, &pg.marker()));
            let kafka_pid = known.kafka.filter(|p| process::is_ours_and_alive(*p, &broker.marker()));
            if pg_pid.is_none() {
                process::ensure_port_free(region.pg_port, &format!("PostgreSQL of {}", region.name))?;
            }
            if kafka_pid.is_none() {
                process::ensure_port_free(region.kafka_port, &format!("Kafka of {}", region.name))?;
                process::ensure_port_free(
                    region.kafka_controller_port,
                    &format!("the Kafka controller of {}", region.name),
                )?;
            }
            plan.push((region, pg, broker, pg_pid, kafka_pid));
        }
        for (region, pg, broker, pg_pid, kafka_pid) in &plan {
            std::fs::create_dir_all(cfg.region_dir(&region.name))
                .map_err(StackError::io(cfg.region_dir(&region.name)))?;
            if pg_pid.is_none() {
                pg.init()?;
            }
            if kafka_pid.is_none() {
                broker.init(&jars)?;
            }
        }

        // 2. Start what is not running, recording each pid at once.
        manifest.regions.retain(|r| cfg.regions.iter().any(|s| s.name.as_str() == r.name));
        for (region, pg, broker, pg_pid, kafka_pid) in &plan {
            let mut pids = Pids { postgres: *pg_pid, kafka: *kafka_pid };
            if pids.postgres.is_none() {
                let child = pg.start(Lifetime::Detached)?;
                started.push(Started { pid: child.id(), marker: pg.marker(), signal: Signal::SIGINT });
                pids.postgres = Some(child.id());
            }
            if pids.kafka.is_none() {
                let child = broker.start(&jars, Lifetime::Detached)?;
                started.push(Started { pid: child.id(), marker: broker.marker(), signal: Signal::SIGTERM });
                pids.kafka = Some(child.id());
            }
            let entry = self.entry(region, pids);
            match manifest.regions.iter_mut().find(|r| r.name == entry.name) {
                Some(existing) => *existing = entry,
                None => manifest.regions.push(entry),
            }
            manifest.save(&cfg.manifest_path())?;
        }

        // 3. Wait for every part, in parallel, then create the database and the topics.
        let mut waits = JoinSet::new();
        for (region, pg, broker, _, _) in &plan {
            let entry = manifest.region(region.name.as_str()).expect("recorded above").clone();
            let (pg, broker, name) = (pg.clone(), broker.clone(), region.name.to_string());
            waits.spawn(async move {
                let pg_pid = entry.pids.postgres.expect("recorded above");
                let kafka_pid = entry.pids.kafka.expect("recorded above");
                let (pg_ready, kafka_ready) = tokio::join!(pg.wait_ready(pg_pid), broker.wait_ready(kafka_pid));
                pg_ready?;
                pg.prepare_database(postgres::DATABASE).await?;
                pg.claim_region(postgres::DATABASE, &name).await?;
                kafka_ready?;
                kafka::create_topics(&broker.bootstrap(), &kafka::region_topics(""), TOPICS_TIMEOUT).await
            });
        }
        while let Some(joined) = waits.join_next().await {
            joined.map_err(|e| StackError::Config(format!("a start-up task panicked: {e}")))??;
        }
        manifest.save(&cfg.manifest_path())?;
        Ok(manifest)
    }

    /// Stops every process recorded in the manifest, by pid, and removes the manifest. With `purge`,
    /// also deletes the state folder (all local data). Returns a line per process stopped.
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
            let mut handles = Vec::new();
            for region in &manifest.regions {
                let parts = [
                    ("kafka", region.pids.kafka, region.kafka_dir.join("server.properties"), Signal::SIGTERM),
                    // SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
                    ("postgres", region.pids.postgres, region.postgres_data_dir.clone(), Signal::SIGINT),
                ];
                for (component, pid, marker, signal) in parts {
                    let Some(pid) = pid else { continue };
                    let label = format!("{} {component} (pid {pid})", region.name);
                    handles.push(std::thread::spawn(move || {
                        process::stop(pid, &marker.display().to_string(), signal, STOP_GRACE).then_some(label)
                    }));
                }
            }
            stopped.extend(handles.into_iter().filter_map(|h| h.join().ok().flatten()));
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
            let pg_marker = r.postgres_data_dir.display().to_string();
            let pg_alive = r.pids.postgres.is_some_and(|p| process::is_ours_and_alive(p, &pg_marker));
            let pg_answer = if pg_alive { postgres_answers(&r.postgres_url).await } else { Err("not running".into()) };
            out.push(Health {
                region: r.name.clone(),
                component: "postgres",
                endpoint: format!("127.0.0.1:{}", r.postgres_port),
                pid: r.pids.postgres,
                healthy: pg_answer.is_ok(),
                detail: pg_answer.err().unwrap_or_default(),
            });
            let kafka_marker = r.kafka_dir.join("server.properties").display().to_string();
            let kafka_alive = r.pids.kafka.is_some_and(|p| process::is_ours_and_alive(p, &kafka_marker));
            let kafka_answer =
                if kafka_alive { kafka_answers(&r.kafka_bootstrap).await } else { Err("not running".into()) };
            out.push(Health {
                region: r.name.clone(),
                component: "kafka",
                endpoint: r.kafka_bootstrap.clone(),
                pid: r.pids.kafka,
                healthy: kafka_answer.is_ok(),
                detail: kafka_answer.err().unwrap_or_default(),
            });
        }
        Ok(out)
    }
}

fn rollback(started: &[Started]) {
    let handles: Vec<_> = started
        .iter()
        .map(|s| {
            let (pid, marker, signal) = (s.pid, s.marker.clone(), s.signal);
            std::thread::spawn(move || process::stop(pid, &marker, signal, STOP_GRACE))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
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
        let events = metadata.topics().iter().any(|t| t.name() == kafka::EVENTS_TOPIC && t.error().is_none());
        if events { Ok(()) } else { Err(format!("topic {} missing", kafka::EVENTS_TOPIC)) }
    })
    .await
    .map_err(|e| e.to_string())?
}
