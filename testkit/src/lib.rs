//! The integration-test harness: real PostgreSQL 15 and real Apache Kafka 4 per region, started once
//! per test process and shared by its tests, each test isolated by its own database and topic prefix.
//!
//! ```no_run
//! # async fn demo() {
//! let region = &testkit::regions(1)[0];
//! let db = region.fresh_database().await; // migrated, owned by this test only
//! let prefix = testkit::unique_prefix(); // e.g. "t1a2b3c4d." for this test's topics
//! # }
//! ```
//!
//! Engines are local processes by default, started exactly as `ledgerctl up` starts them. With
//! `LEDGER_TEST_BACKEND=containers`, the same engines, with the same arguments and configuration
//! files, run in containers through testcontainers, from the images `scripts/containers.sh up`
//! builds locally, on the Docker engine `DOCKER_HOST` names (host network, loopback only). Every
//! [`Region`] method behaves the same on both, so every test runs unchanged on either.
//!
//! Architecture invariant: nothing a test process starts outlives it. Local engines are forked with
//! a parent-death signal (SIGKILL when the test process dies, however it dies) and are also killed
//! by an exit handler when the test binary returns, panicking tests included. Containers are
//! removed by a watchdog process when the test process's pipe to it closes, which also happens
//! however it dies.

mod containers;
pub mod kafka_util;
mod local;

/// A loopback port for a process a test is about to start, outside the kernel's ephemeral range
/// and not one this process had before (see `ledgerctl::process::free_port`).
pub use ledgerctl::process::free_port;

use std::sync::{Mutex, OnceLock};

/// Engine backend, chosen by `LEDGER_TEST_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Local processes (the default; no Docker engine needed).
    Local,
    /// testcontainers (needs a Docker engine).
    Containers,
}

impl Backend {
    /// Reads `LEDGER_TEST_BACKEND`: `local` (default) or `containers`. Anything else is a mistake
    /// worth stopping for rather than silently testing something else.
    pub fn from_env() -> Self {
        match std::env::var("LEDGER_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("local") => Self::Local,
            Ok("containers") => Self::Containers,
            Ok(other) => panic!("LEDGER_TEST_BACKEND must be `local` or `containers`, got {other:?}"),
        }
    }
}

/// Region names handed out in order; tests that need more regions get `region-<i>`.
const REGION_NAMES: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// One region's engines as a test sees them.
#[derive(Debug, Clone)]
pub struct Region {
    index: usize,
    name: String,
    pg_port: u16,
    kafka_bootstrap: String,
}

/// A database of one test's own, migrated.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
    /// A pool on it (bound to the calling test's runtime).
    pub pool: sqlx::PgPool,
}

enum Engines {
    Local(local::LocalEngines),
    Containers(containers::ContainerEngines),
}

fn engines() -> &'static Mutex<Option<Engines>> {
    static ENGINES: OnceLock<Mutex<Option<Engines>>> = OnceLock::new();
    ENGINES.get_or_init(|| Mutex::new(None))
}

fn lock() -> std::sync::MutexGuard<'static, Option<Engines>> {
    // A test that panicked while holding the lock leaves the engines usable; keep going.
    engines().lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on a private runtime in its own thread: start-up and readiness checks must not depend
/// on any test's runtime, because that runtime ends with its test.
fn on_private_runtime<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building a runtime").block_on(f)
    })
    .join()
    .expect("engine start-up panicked")
}

/// The first `n` regions, starting whatever is not running yet. Blocks while engines start.
pub fn regions(n: usize) -> Vec<Region> {
    let mut guard = lock();
    if guard.is_none() {
        register_exit_handler();
        *guard = Some(match Backend::from_env() {
            Backend::Local => Engines::Local(local::LocalEngines::new()),
            Backend::Containers => Engines::Containers(containers::ContainerEngines::new()),
        });
    }
    let engines = guard.as_mut().expect("set above");
    let names: Vec<String> =
        (0..n).map(|i| REGION_NAMES.get(i).map(|s| s.to_string()).unwrap_or_else(|| format!("region-{i}"))).collect();
    let endpoints = match engines {
        Engines::Local(e) => e.ensure(&names),
        Engines::Containers(e) => e.ensure(&names),
    };
    endpoints
        .into_iter()
        .enumerate()
        .map(|(index, (pg_port, kafka_bootstrap))| Region {
            index,
            name: names[index].clone(),
            pg_port,
            kafka_bootstrap,
        })
        .collect()
}

/// A prefix for this test's topics, unique in the test process and across runs.
pub fn unique_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

impl Region {
    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kafka's bootstrap address.
    pub fn kafka_bootstrap(&self) -> &str {
        &self.kafka_bootstrap
    }

    /// The URL of `database` on this region's PostgreSQL.
    pub fn postgres_url(&self, database: &str) -> String {
        let (user, password) = (ledgerctl::postgres::USER, ledgerctl::postgres::PASSWORD);
        format!("postgres://{user}:{password}@127.0.0.1:{}/{database}", self.pg_port)
    }

    /// A new database for the calling test, with the regional migrations applied and the region
    /// claimed, plus a pool on it.
    pub async fn fresh_database(&self) -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let server = ledgerctl::postgres::PgServer {
            bin_dir: Default::default(),
            data_dir: Default::default(),
            port: self.pg_port,
            log: Default::default(),
        };
        let region = ledger_core::RegionId::new(self.name.clone()).expect("a valid region name");
        let db = name.clone();
        on_private_runtime(async move {
            server.prepare_database(&db).await?;
            server.claim_region(&db, &region).await
        })
        .unwrap_or_else(|e| panic!("preparing test database {name}: {e}"));
        let url = self.postgres_url(&name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        TestDb { url, name, pool }
    }

    /// A new, empty database for a service with a schema of its own (the reconcile service's), as
    /// a URL.
    pub fn empty_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let server = ledgerctl::postgres::PgServer {
            bin_dir: Default::default(),
            data_dir: Default::default(),
            port: self.pg_port,
            log: Default::default(),
        };
        let db = name.clone();
        on_private_runtime(async move { server.create_database(&db).await })
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        self.postgres_url(&name)
    }

    /// Creates the region's topics under `prefix` (see [`unique_prefix`]).
    pub async fn create_topics(&self, prefix: &str) {
        let (bootstrap, topics) = (self.kafka_bootstrap.clone(), ledger_schema::region_topics(prefix));
        on_private_runtime(async move {
            ledger_schema::create_topics(&bootstrap, &topics, std::time::Duration::from_secs(60)).await
        })
        .unwrap_or_else(|e| panic!("creating topics with prefix {prefix}: {e}"));
    }

    /// Kills the region's Kafka broker with SIGKILL (no clean shutdown) and waits until it is gone.
    pub fn kill_kafka(&self) {
        match lock().as_mut().expect("engines started") {
            Engines::Local(e) => e.kill_kafka(self.index),
            Engines::Containers(e) => e.kill_kafka(self.index),
        }
    }

    /// Starts the region's Kafka broker again on the same port and data, and waits until it answers.
    pub fn start_kafka(&self) {
        match lock().as_mut().expect("engines started") {
            Engines::Local(e) => e.start_kafka(self.index),
            Engines::Containers(e) => e.start_kafka(self.index),
        }
    }

    /// Stops the region's PostgreSQL with a fast shutdown (sessions ended, nothing committed lost)
    /// and waits until it is gone. Every test of the process using this region loses its
    /// database until [`Region::start_postgres`]: keep such a test in a test binary of its own.
    pub fn stop_postgres(&self) {
        match lock().as_mut().expect("engines started") {
            Engines::Local(e) => e.stop_postgres(self.index),
            Engines::Containers(e) => e.stop_postgres(self.index),
        }
    }

    /// Kills the region's PostgreSQL with SIGKILL, as a crash would: no shutdown, nothing flushed
    /// beyond what each commit already made durable. Locally the postmaster and every process it
    /// forked are killed by pid at once; a container gets SIGKILL through the Docker API, which
    /// takes every process in it down. Waits until it is gone. As with [`Region::stop_postgres`],
    /// keep such a test in a test binary of its own; [`Region::start_postgres`] brings it back.
    pub fn kill_postgres(&self) {
        match lock().as_mut().expect("engines started") {
            Engines::Local(e) => e.kill_postgres(self.index),
            Engines::Containers(e) => e.kill_postgres(self.index),
        }
    }

    /// Starts the region's PostgreSQL again on the same port and data, and waits until it accepts
    /// a login (after a kill, once crash recovery is done).
    pub fn start_postgres(&self) {
        match lock().as_mut().expect("engines started") {
            Engines::Local(e) => e.start_postgres(self.index),
            Engines::Containers(e) => e.start_postgres(self.index),
        }
    }

    /// The pid of the region's Kafka broker as this machine sees it (for containers, the
    /// container's main process); `None` while it is stopped.
    pub fn kafka_pid(&self) -> Option<u32> {
        match lock().as_ref().expect("engines started") {
            Engines::Local(e) => e.kafka_pid(self.index),
            Engines::Containers(e) => e.kafka_pid(self.index),
        }
    }

    /// The pid of the region's PostgreSQL server (postmaster) as this machine sees it; `None`
    /// while it is stopped.
    pub fn postgres_pid(&self) -> Option<u32> {
        match lock().as_ref().expect("engines started") {
            Engines::Local(e) => e.postgres_pid(self.index),
            Engines::Containers(e) => e.postgres_pid(self.index),
        }
    }
}

extern "C" fn stop_everything() {
    if let Some(engines) = lock().take() {
        match engines {
            Engines::Local(e) => e.shutdown(),
            Engines::Containers(e) => e.shutdown(),
        }
    }
}

#[allow(unsafe_code)]
fn register_exit_handler() {
    // SAFETY: atexit only stores the function pointer; `stop_everything` is a plain `extern "C" fn`
    // that neither unwinds nor relies on thread-locals, which are gone by the time it runs.
    let rc = unsafe { libc::atexit(stop_everything) };
    assert_eq!(rc, 0, "registering the test engines' exit handler");
}
