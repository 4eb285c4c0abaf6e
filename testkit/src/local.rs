//! Local-process engines: the same `PgServer` and `KafkaBroker` that `ledgerctl up` uses, on free
//! ports, in a temporary folder, tied to the test process's lifetime.

use crate::on_private_runtime;
use ledgerctl::config::{DEFAULT_KAFKA_HEAP_MB, StackConfig};
use ledgerctl::kafka::{KafkaBroker, KafkaJars};
use ledgerctl::postgres::PgServer;
use ledgerctl::process::Lifetime;
use std::path::PathBuf;
use std::process::Child;

struct LocalRegion {
    pg: PgServer,
    /// `None` while a test has stopped it.
    pg_child: Option<Child>,
    broker: KafkaBroker,
    kafka_child: Option<Child>,
}

pub(crate) struct LocalEngines {
    dir: PathBuf,
    jars: KafkaJars,
    regions: Vec<LocalRegion>,
}

/// Temporary folders are named `<prefix><pid>-<random>`, so a later run can tell whose they were.
const FOLDER_PREFIX: &str = "ledger-testkit-";

/// A test process killed outright (SIGKILL) cannot delete its folder; the next run does.
fn remove_folders_of_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(FOLDER_PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            // The parent pid is the second field after the parenthesised command name.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)).and_then(|p| p.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// True while `pid` runs; a zombie has a /proc entry but runs nothing.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).is_some_and(|c| c != 'Z' && c != 'X'))
        .unwrap_or(false)
}

impl LocalEngines {
    pub(crate) fn new() -> Self {
        remove_folders_of_dead_runs();
        let prefix = format!("{FOLDER_PREFIX}{}-", std::process::id());
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir().expect("creating a temporary folder").keep();
        // The launcher's defaults name the binaries, the pom and the shared jar cache.
        let defaults = StackConfig::default_local();
        PgServer::check_binaries(&defaults.pg_bin_dir).unwrap_or_else(|e| panic!("{e}"));
        ledgerctl::kafka::check_java(&defaults.java).unwrap_or_else(|e| panic!("{e}"));
        let jars = KafkaJars::ensure(&defaults.kafka_pom, &defaults.kafka_cache_dir, &defaults.mvn)
            .unwrap_or_else(|e| panic!("{e}"));
        Self { dir, jars, regions: Vec::new() }
    }

    /// Starts regions until there are `names.len()`, and returns each one's (PostgreSQL port, Kafka
    /// bootstrap).
    pub(crate) fn ensure(&mut self, names: &[String]) -> Vec<(u16, String)> {
        let first_new = self.regions.len();
        for name in names.iter().skip(first_new) {
            let region_dir = self.dir.join(name);
            std::fs::create_dir_all(&region_dir).expect("creating a region folder");
            let pg = PgServer {
                bin_dir: StackConfig::default_local().pg_bin_dir,
                data_dir: region_dir.join("pg"),
                port: crate::free_port(),
                log: region_dir.join("postgres.log"),
            };
            let broker = KafkaBroker {
                peers: Vec::new(),
                dir: region_dir.join("kafka"),
                port: crate::free_port(),
                controller_port: crate::free_port(),
                heap_mb: DEFAULT_KAFKA_HEAP_MB,
                java: StackConfig::default_local().java,
                log: region_dir.join("kafka.out"),
            };
            pg.init().unwrap_or_else(|e| panic!("{e}"));
            broker.init(&self.jars).unwrap_or_else(|e| panic!("{e}"));
            let pg_child = pg.start(Lifetime::TiedToThisProcess).unwrap_or_else(|e| panic!("{e}"));
            let kafka_child = broker.start(&self.jars, Lifetime::TiedToThisProcess).unwrap_or_else(|e| panic!("{e}"));
            self.regions.push(LocalRegion { pg, pg_child: Some(pg_child), broker, kafka_child: Some(kafka_child) });
        }
        let waits: Vec<_> = self.regions[first_new..]
            .iter()
            .map(|r| {
                (
                    r.pg.clone(),
                    r.pg_child.as_ref().map(Child::id),
                    r.broker.clone(),
                    r.kafka_child.as_ref().map(Child::id),
                )
            })
            .collect();
        on_private_runtime(async move {
            for (pg, pg_pid, broker, kafka_pid) in waits {
                let (pg_pid, kafka_pid) = (pg_pid.expect("just started"), kafka_pid.expect("just started"));
                let (a, b) = tokio::join!(pg.wait_ready(pg_pid), broker.wait_ready(kafka_pid));
                a.and(b).unwrap_or_else(|e| panic!("{e}"));
            }
        });
        self.regions.iter().take(names.len()).map(|r| (r.pg.port, r.broker.bootstrap())).collect()
    }

    pub(crate) fn kill_kafka(&mut self, index: usize) {
        if let Some(mut child) = self.regions[index].kafka_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn start_kafka(&mut self, index: usize) {
        self.kill_kafka(index);
        let region = &mut self.regions[index];
        let child = region.broker.start(&self.jars, Lifetime::TiedToThisProcess).unwrap_or_else(|e| panic!("{e}"));
        let (broker, pid) = (region.broker.clone(), child.id());
        region.kafka_child = Some(child);
        on_private_runtime(async move { broker.wait_ready(pid).await }).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the region's PostgreSQL with a fast shutdown (SIGINT, as `ledgerctl stop postgres`
    /// does: open sessions are ended, nothing committed is lost) and waits until it has exited.
    pub(crate) fn stop_postgres(&mut self, index: usize) {
        if let Some(mut child) = self.regions[index].pg_child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Kills the region's PostgreSQL as a crash of its machine or container would: the postmaster
    /// and every process it forked at once, with SIGKILL, nothing flushed or shut down. The
    /// postmaster is stopped first so that it forks nothing more while its children are listed.
    /// Waits until they are all gone: a new postmaster refuses to start while an old backend still
    /// holds the shared memory.
    pub(crate) fn kill_postgres(&mut self, index: usize) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Some(mut child) = self.regions[index].pg_child.take() else { return };
        let postmaster = child.id();
        let _ = kill(Pid::from_raw(postmaster as i32), Signal::SIGSTOP);
        let children = children_of(postmaster);
        for pid in &children {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while children.iter().any(|pid| is_alive(*pid)) {
            assert!(std::time::Instant::now() < deadline, "PostgreSQL's processes outlived SIGKILL by 30 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts the region's PostgreSQL again on the same port and data, and waits until it accepts
    /// a login.
    pub(crate) fn start_postgres(&mut self, index: usize) {
        self.stop_postgres(index);
        let region = &mut self.regions[index];
        let child = region.pg.start(Lifetime::TiedToThisProcess).unwrap_or_else(|e| panic!("{e}"));
        let (pg, pid) = (region.pg.clone(), child.id());
        region.pg_child = Some(child);
        on_private_runtime(async move { pg.wait_ready(pid).await }).unwrap_or_else(|e| panic!("{e}"));
    }

    pub(crate) fn kafka_pid(&self, index: usize) -> Option<u32> {
        self.regions[index].kafka_child.as_ref().map(Child::id)
    }

    pub(crate) fn postgres_pid(&self, index: usize) -> Option<u32> {
        self.regions[index].pg_child.as_ref().map(Child::id)
    }

    /// SIGKILLs every engine and deletes the folder. Runs from the exit handler: no panics, no
    /// threads, nothing graceful (the data is throw-away).
    pub(crate) fn shutdown(mut self) {
        for region in &mut self.regions {
            if let Some(child) = region.pg_child.as_mut() {
                let _ = child.kill();
            }
            if let Some(child) = region.kafka_child.as_mut() {
                let _ = child.kill();
            }
        }
        for region in &mut self.regions {
            if let Some(child) = region.pg_child.as_mut() {
                let _ = child.wait();
            }
            if let Some(child) = region.kafka_child.as_mut() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
