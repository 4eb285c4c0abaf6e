//! Container engines (`LEDGER_TEST_BACKEND=containers`): the same PostgreSQL 15 and Kafka broker as
//! the local processes, run from the images `scripts/containers.sh up` builds locally
//! (`ledger/postgres:15`, `ledger/kafka:<kafka/pom.xml's version>`; no registry is involved),
//! through testcontainers, on a Docker engine named by `DOCKER_HOST`.
//!
//! - **Same configuration**: each container runs `initdb`/`postgres` and the storage format and
//!   broker with the arguments and files `ledgerctl`'s [`PgServer`] and [`KafkaBroker`] generate for
//!   local processes (durability on, transaction state log replication factor 1, auto topic
//!   creation off...), with paths inside the image.
//! - **Host network, loopback only**: no bridge, no port mapping. A free port is chosen per
//!   container and passed in its command; the engines bind 127.0.0.1 as locally. A container
//!   stopped and started again (kill and restart) keeps its port and its data (its own layer).
//! - **Readiness**: a login (PostgreSQL) or a metadata answer (Kafka), failing early when the
//!   container's main process, which the host sees by pid, exits.
//! - **Nothing outlives the test process**: every container is labelled with its owner, and a
//!   watchdog process (`sh`, with the `docker` CLI) removes the owner's containers once the test
//!   process is gone, however it went (its pipe from the test process reaches end of file). The next
//!   run also removes the containers of test processes that no longer exist.
//!
//! Debian 12's engine (docker.io 20.10) speaks Docker API 1.41 at most and refuses a request for a
//! newer version. testcontainers 0.27 (bollard 0.20) names 1.52, yet its requests reach the engine
//! without any version in the path (bollard/issues/736), so the engine answers with its own: if a
//! later bollard puts the version back, an engine of API 1.52 or newer is needed.

use ledgerctl::kafka::{KafkaBroker, KafkaJars};
use ledgerctl::postgres::PgServer;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testcontainers::bollard::Docker;
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const POSTGRES_IMAGE: &str = "ledger/postgres";
const POSTGRES_TAG: &str = "15";
const KAFKA_IMAGE: &str = "ledger/kafka";
/// Paths inside the images (see `scripts/containers.sh`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_DATA: &str = "/var/lib/postgresql/data";
const KAFKA_DIR: &str = "/var/lib/kafka";
const KAFKA_LIBS: &str = "/opt/kafka/libs";
const JAVA: &str = "/usr/bin/java";
/// Labels: the owning test process's random id (what its watchdog removes) and its pid.
const OWNER_LABEL: &str = "ledger.testkit.owner";
const PID_LABEL: &str = "ledger.testkit.pid";
/// How long a stopped PostgreSQL may take over its fast shutdown before the engine kills it.
const STOP_GRACE_S: i32 = 60;

/// The Kafka version `kafka/pom.xml` names, which is the image's tag.
fn kafka_tag() -> &'static str {
    const POM: &str = include_str!("../../kafka/pom.xml");
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(version, _)| version.trim())
        .expect("kafka/pom.xml names <kafka.version>")
}

struct ContainerRegion {
    /// The server as seen from inside its container (paths) and from the host (port).
    pg: PgServer,
    pg_container: ContainerAsync<GenericImage>,
    /// The container's main process as the host sees it; `None` while stopped.
    pg_pid: Option<u32>,
    broker: KafkaBroker,
    kafka_container: ContainerAsync<GenericImage>,
    kafka_pid: Option<u32>,
}

pub(crate) struct ContainerEngines {
    /// Every Docker call runs here: the engine client's connections belong to the runtime that
    /// opened them, so one runtime lives as long as the engines.
    rt: tokio::runtime::Runtime,
    docker: Docker,
    owner: String,
    /// Holds the write end of the watchdog's stdin; the watchdog acts when it closes.
    watchdog: Child,
    regions: Vec<ContainerRegion>,
}

/// One word for `sh`, whatever it contains.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn sh_command(program: &str, args: &[String]) -> String {
    std::iter::once(program).chain(args.iter().map(String::as_str)).map(sh_quote).collect::<Vec<_>>().join(" ")
}

fn is_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry but runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).is_some_and(|c| c != 'Z' && c != 'X'))
        .unwrap_or(false)
}

impl ContainerEngines {
    pub(crate) fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-containers")
            .enable_all()
            .build()
            .expect("building the containers backend's runtime");
        let docker = Docker::connect_with_defaults().unwrap_or_else(|e| panic!("connecting to the Docker engine: {e}"));
        let owner = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let watchdog = start_watchdog(&owner);
        let engines = Self { rt, docker, owner, watchdog, regions: Vec::new() };
        engines.block(async {
            let docker = &engines.docker;
            let engine = docker.version().await.unwrap_or_else(|e| {
                panic!(
                    "no Docker engine at DOCKER_HOST={:?}: {e}; start one with `scripts/containers.sh up`",
                    std::env::var("DOCKER_HOST").unwrap_or_default()
                )
            });
            for (image, tag) in [(POSTGRES_IMAGE, POSTGRES_TAG), (KAFKA_IMAGE, kafka_tag())] {
                if docker.inspect_image(&format!("{image}:{tag}")).await.is_err() {
                    panic!(
                        "the Docker engine (version {}) has no image {image}:{tag}; build it with `scripts/containers.sh up`",
                        engine.version.unwrap_or_default()
                    );
                }
            }
            remove_containers_of_dead_runs(docker).await;
        });
        engines
    }

    /// Runs `f` to completion on the backend's runtime, from any thread (a test's runtime included).
    fn block<T: Send>(&self, f: impl Future<Output = T> + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| self.rt.block_on(f)).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts regions until there are `names.len()`, and returns each one's (PostgreSQL port, Kafka
    /// bootstrap).
    pub(crate) fn ensure(&mut self, names: &[String]) -> Vec<(u16, String)> {
        let first_new = self.regions.len();
        for name in names.iter().skip(first_new) {
            let region = self.block(self.start_region(name));
            self.regions.push(region);
        }
        self.regions.iter().take(names.len()).map(|r| (r.pg.port, r.broker.bootstrap())).collect()
    }

    fn request(
        &self,
        image: &str,
        tag: &str,
        name: String,
        script: String,
    ) -> testcontainers::ContainerRequest<GenericImage> {
        GenericImage::new(image, tag)
            .with_container_name(name)
            .with_network("host")
            // Port publishing means nothing on the host network; ask for none.
            .with_host_config_modifier(|host| {
                host.publish_all_ports = Some(false);
                host.port_bindings = None;
            })
            .with_label(OWNER_LABEL, self.owner.clone())
            .with_label(PID_LABEL, std::process::id().to_string())
            .with_cmd(["sh".to_owned(), "-c".to_owned(), script])
            .with_startup_timeout(Duration::from_secs(120))
    }

    async fn start_region(&self, name: &str) -> ContainerRegion {
        let pg = PgServer {
            bin_dir: PG_BIN.into(),
            data_dir: PG_DATA.into(),
            port: crate::free_port(),
            log: PathBuf::new(),
        };
        let broker = KafkaBroker {
            peers: Vec::new(),
            dir: KAFKA_DIR.into(),
            port: crate::free_port(),
            controller_port: crate::free_port(),
            heap_mb: ledgerctl::config::DEFAULT_KAFKA_HEAP_MB,
            java: JAVA.into(),
            log: PathBuf::new(),
        };
        let prefix = format!("ledger-testkit-{}-{name}", self.owner);
        let pg_request = self
            .request(POSTGRES_IMAGE, POSTGRES_TAG, format!("{prefix}-postgres"), postgres_script(&pg))
            .with_user("postgres")
            // PostgreSQL's dynamic shared memory lives in /dev/shm (64 MiB by default in a container).
            .with_shm_size(256 << 20);
        let kafka_request = self.request(KAFKA_IMAGE, kafka_tag(), format!("{prefix}-kafka"), kafka_script(&broker));
        let (pg_container, kafka_container) = tokio::join!(pg_request.start(), kafka_request.start());
        let pg_container = pg_container.unwrap_or_else(|e| panic!("starting the PostgreSQL container of {name}: {e}"));
        let kafka_container = kafka_container.unwrap_or_else(|e| panic!("starting the Kafka container of {name}: {e}"));
        let (pg_pid, kafka_pid) =
            tokio::join!(self.wait_postgres(&pg, &pg_container), self.wait_kafka(&broker, &kafka_container));
        ContainerRegion { pg, pg_container, pg_pid: Some(pg_pid), broker, kafka_container, kafka_pid: Some(kafka_pid) }
    }

    /// The host pid of a running container's main process.
    async fn main_pid(&self, container: &ContainerAsync<GenericImage>) -> u32 {
        let inspected = self
            .docker
            .inspect_container(container.id(), None::<InspectContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("inspecting container {}: {e}", container.id()));
        let state = inspected.state.unwrap_or_default();
        match state.pid {
            Some(pid) if pid > 0 && state.running == Some(true) => pid as u32,
            _ => panic!(
                "container {} is not running (exit code {:?}); its output:\n{}",
                container.id(),
                state.exit_code,
                output(container).await
            ),
        }
    }

    /// Waits until the server accepts a login; returns its host pid. The container's state, not
    /// the pid, tells whether it died: right after a start the pid still runs the container
    /// runtime's own init, before it becomes `sh` and then `postgres`.
    async fn wait_postgres(&self, pg: &PgServer, container: &ContainerAsync<GenericImage>) -> u32 {
        let url = pg.url("postgres");
        self.wait_ready(container, ledgerctl::postgres::READY_TIMEOUT, "PostgreSQL", || async {
            use sqlx::Connection;
            match sqlx::PgConnection::connect(&url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    true
                }
                Err(_) => false,
            }
        })
        .await
    }

    /// Waits until the broker answers a metadata request; returns its host pid.
    async fn wait_kafka(&self, broker: &KafkaBroker, container: &ContainerAsync<GenericImage>) -> u32 {
        let bootstrap = broker.bootstrap();
        self.wait_ready(container, ledgerctl::kafka::READY_TIMEOUT, "Kafka", || {
            ledgerctl::kafka::answers_metadata(&bootstrap)
        })
        .await
    }

    async fn wait_ready<F: Future<Output = bool>>(
        &self,
        container: &ContainerAsync<GenericImage>,
        timeout: Duration,
        what: &str,
        ready: impl Fn() -> F,
    ) -> u32 {
        let started = Instant::now();
        loop {
            if ready().await {
                return self.main_pid(container).await;
            }
            if !container.is_running().await.unwrap_or(true) || started.elapsed() > timeout {
                panic!(
                    "{what} in container {} not ready after {} s (running: {:?}); its output:\n{}",
                    container.id(),
                    started.elapsed().as_secs(),
                    container.is_running().await,
                    output(container).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to the container's main process through the engine's API (the kernel then kills
    /// every other process of the container), and waits until the engine reports it stopped.
    async fn kill(&self, container: &ContainerAsync<GenericImage>, pid: Option<u32>) {
        let options = KillContainerOptions { signal: "SIGKILL".into() };
        if let Err(e) = self.docker.kill_container(container.id(), Some(options)).await {
            // 409: it was not running, which is what was asked.
            if !e.to_string().contains("409") && !e.to_string().contains("is not running") {
                panic!("killing container {}: {e}", container.id());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running = container.is_running().await.unwrap_or(true);
            if !running && pid.is_none_or(|pid| !is_alive(pid)) {
                return;
            }
            assert!(Instant::now() < deadline, "container {} still runs 30 s after SIGKILL", container.id());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn kill_kafka(&mut self, index: usize) {
        let region = &self.regions[index];
        self.block(self.kill(&region.kafka_container, region.kafka_pid));
        self.regions[index].kafka_pid = None;
    }

    pub(crate) fn start_kafka(&mut self, index: usize) {
        self.kill_kafka(index);
        let region = &self.regions[index];
        let pid = self.block(async {
            region.kafka_container.start().await.unwrap_or_else(|e| panic!("starting the Kafka container again: {e}"));
            self.wait_kafka(&region.broker, &region.kafka_container).await
        });
        self.regions[index].kafka_pid = Some(pid);
    }

    /// A fast shutdown: the image's stop signal is SIGINT, as `ledgerctl stop postgres` sends.
    pub(crate) fn stop_postgres(&mut self, index: usize) {
        let region = &self.regions[index];
        self.block(async {
            region
                .pg_container
                .stop_with_timeout(Some(STOP_GRACE_S))
                .await
                .unwrap_or_else(|e| panic!("stopping the PostgreSQL container: {e}"));
        });
        self.regions[index].pg_pid = None;
    }

    pub(crate) fn kill_postgres(&mut self, index: usize) {
        let region = &self.regions[index];
        self.block(self.kill(&region.pg_container, region.pg_pid));
        self.regions[index].pg_pid = None;
    }

    /// Starts the same container again (same port, same data) and waits for a login. A running one
    /// is stopped first, as locally.
    pub(crate) fn start_postgres(&mut self, index: usize) {
        if self.regions[index].pg_pid.is_some() {
            self.stop_postgres(index);
        }
        let region = &self.regions[index];
        let pid = self.block(async {
            region
                .pg_container
                .start()
                .await
                .unwrap_or_else(|e| panic!("starting the PostgreSQL container again: {e}"));
            self.wait_postgres(&region.pg, &region.pg_container).await
        });
        self.regions[index].pg_pid = Some(pid);
    }

    pub(crate) fn kafka_pid(&self, index: usize) -> Option<u32> {
        self.regions[index].kafka_pid
    }

    pub(crate) fn postgres_pid(&self, index: usize) -> Option<u32> {
        self.regions[index].pg_pid
    }

    /// Runs from the exit handler: closes the watchdog's pipe, which makes it remove every
    /// container of this process, and waits for it. Nothing else is dropped: the runtime and the
    /// containers' handles would need a runtime of their own this late.
    pub(crate) fn shutdown(self) {
        let Self { rt, docker, mut watchdog, regions, .. } = self;
        drop(watchdog.stdin.take());
        let _ = watchdog.wait();
        std::mem::forget((rt, docker, regions));
    }
}

/// The PostgreSQL container's command: `initdb` on the first start (the container's data folder is
/// empty), then the server, both with `PgServer`'s arguments. `exec`: the server is the container's
/// main process, so a SIGKILL to the container reaches it, as a crash would.
fn postgres_script(pg: &PgServer) -> String {
    let pwfile = pg.data_dir.with_extension("initdb-password");
    let data = pg.data_dir.display().to_string();
    format!(
        "set -e\n\
         if [ ! -s {version} ]; then\n\
         printf %s {password} > {pwfile}\n\
         {initdb}\n\
         rm -f {pwfile}\n\
         fi\n\
         exec {postgres}\n",
        version = sh_quote(&format!("{data}/PG_VERSION")),
        password = sh_quote(ledgerctl::postgres::PASSWORD),
        pwfile = sh_quote(&pwfile.display().to_string()),
        initdb = sh_command(&format!("{PG_BIN}/initdb"), &pg.initdb_args(&pwfile)),
        postgres = sh_command(&format!("{PG_BIN}/postgres"), &pg.server_args()),
    )
}

/// The Kafka container's command: `KafkaBroker`'s configuration files, the storage format on the
/// first start (with a cluster id fixed now, so a restart finds the same), then the broker.
fn kafka_script(broker: &KafkaBroker) -> String {
    let jars = KafkaJars { libs: KAFKA_LIBS.into() };
    let dir = broker.dir.display().to_string();
    format!(
        "set -e\n\
         mkdir -p {logs}\n\
         printf %s {properties} > {config}\n\
         printf %s {log4j} > {log4j_path}\n\
         if [ ! -f {meta} ]; then {format}; fi\n\
         exec {server}\n",
        logs = sh_quote(&format!("{dir}/logs")),
        properties = sh_quote(&broker.server_properties()),
        config = sh_quote(&broker.config_path().display().to_string()),
        log4j = sh_quote(&broker.log4j_config()),
        log4j_path = sh_quote(&format!("{dir}/log4j2.yaml")),
        meta = sh_quote(&broker.data_dir().join("meta.properties").display().to_string()),
        format = sh_command(JAVA, &broker.format_java_args(&jars, &ledgerctl::kafka::new_cluster_id())),
        server = sh_command(JAVA, &broker.server_java_args(&jars)),
    )
}

/// The last lines a container wrote, for error messages.
async fn output(container: &ContainerAsync<GenericImage>) -> String {
    let mut text = String::new();
    for bytes in [container.stdout_to_vec().await, container.stderr_to_vec().await].into_iter().flatten() {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A process that outlives the test process just long enough to remove its containers: it reads
/// its stdin, a pipe only the test process holds open, until end of file. Signals a terminal sends
/// the whole job (Ctrl-C) are ignored so that it still gets to the removal.
fn start_watchdog(owner: &str) -> Child {
    let script = format!(
        "trap '' INT HUP TERM QUIT\n\
         while read -r _; do :; done\n\
         ids=$(docker ps -aq --filter label={OWNER_LABEL}={owner})\n\
         [ -z \"$ids\" ] || docker rm -f -v $ids >/dev/null\n"
    );
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the containers' watchdog (sh): {e}"));
    let docker_cli = Command::new("docker").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        docker_cli.is_ok_and(|s| s.success()),
        "the `docker` CLI is needed to remove the test containers when a test process dies (Debian's docker.io has it)"
    );
    watchdog
}

/// Removes the containers of test processes that are gone (a watchdog killed with them, say).
async fn remove_containers_of_dead_runs(docker: &Docker) {
    let filters = HashMap::from([("label".to_owned(), vec![PID_LABEL.to_owned()])]);
    let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let Ok(containers) = docker.list_containers(Some(options)).await else { return };
    for container in containers {
        let pid = container.labels.as_ref().and_then(|l| l.get(PID_LABEL)).and_then(|p| p.parse::<u32>().ok());
        if let (Some(id), Some(pid)) = (container.id, pid)
            && !is_alive(pid)
        {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            let _ = docker.remove_container(&id, Some(options)).await;
        }
    }
}
