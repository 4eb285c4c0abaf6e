//! One region's Apache Kafka 4 broker: the official jars from Maven Central (named by
//! `kafka/pom.xml`, fetched once into a cache with `mvn dependency:copy-dependencies`), run with the
//! machine's Java 17 as a single combined broker+controller in KRaft mode, storage formatted here,
//! broker auto-creation off (the topics are `ledger_schema`'s, created through its admin client).

use crate::error::{Result, StackError};
use crate::process::{self, Lifetime};
use base64::Engine;
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a fresh broker may take to answer metadata requests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `program -version`-style probes, mapping "not found" to a clear error.
fn probe(program: &Path, arg: &str, what: &'static str, fix: &'static str) -> Result<String> {
    match Command::new(program).arg(arg).output() {
        Ok(out) => Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(StackError::MissingBinary { what, path: program.to_path_buf(), fix })
        }
        Err(e) => Err(StackError::Io { path: program.to_path_buf(), source: e }),
    }
}

/// Fails unless `java` runs and is version 17 or newer (Kafka 4 brokers need 17).
pub fn check_java(java: &Path) -> Result<()> {
    const FIX: &str = "install it with `apt-get install -y openjdk-17-jre-headless` or set LEDGER_JAVA";
    let out = probe(java, "-version", "Java 17", FIX)?;
    let major = out
        .split('"')
        .nth(1)
        .and_then(|v| v.split(['.', '-', '+']).next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 17 {
        return Err(StackError::MissingBinary { what: "Java 17 or newer", path: java.to_path_buf(), fix: FIX });
    }
    Ok(())
}

/// The cached Kafka jars: `<cache>/libs`, refreshed whenever `kafka/pom.xml` changes.
#[derive(Debug, Clone)]
pub struct KafkaJars {
    /// Folder holding every runtime jar.
    pub libs: PathBuf,
}

impl KafkaJars {
    /// Returns the cached jars, downloading them with Maven first if the cache is missing or was
    /// made from another pom. The download goes to a private folder renamed into place at the end,
    /// so a failed or interrupted download never leaves a half-filled cache.
    ///
    /// Concurrent callers (parallel tests, two `up`s) take turns on a lock file: without it, a
    /// second download finishing late replaced the folder under brokers already started from the
    /// first, and they failed with missing classes.
    pub fn ensure(pom: &Path, cache: &Path, mvn: &Path) -> Result<Self> {
        let libs = cache.join("libs");
        let stamp = cache.join("libs.pom.xml");
        let wanted = std::fs::read(pom).map_err(StackError::io(pom))?;
        std::fs::create_dir_all(cache).map_err(StackError::io(cache))?;
        let lock_path = cache.join("libs.lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StackError::io(&lock_path))?;
        // Released when `lock` is dropped, on every return path.
        lock.lock().map_err(StackError::io(&lock_path))?;
        if libs.is_dir() && std::fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice()) {
            return Ok(Self { libs });
        }
        probe(mvn, "-v", "Maven", "install it with `apt-get install -y maven`")?;
        let staging = cache.join(format!("libs.partial-{}", std::process::id()));
        let log = cache.join("mvn.log");
        let _ = std::fs::remove_dir_all(&staging);
        let mut cmd = Command::new(mvn);
        cmd.arg("-B").arg("-f").arg(pom);
        cmd.arg("dependency:copy-dependencies");
        cmd.arg(format!("-DoutputDirectory={}", staging.display()));
        cmd.arg("-DincludeScope=runtime");
        let _ = std::fs::remove_file(&log);
        process::log_to(&mut cmd, &log)?;
        let status = cmd.status().map_err(StackError::io(mvn))?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let detail = output
                .lines()
                .find(|l| l.starts_with("[ERROR]") && l.len() > 8)
                .map(|l| l.trim_start_matches("[ERROR]").trim().to_owned())
                .unwrap_or_else(|| status.to_string());
            return Err(StackError::KafkaJars { pom: pom.to_path_buf(), detail });
        }
        let _ = std::fs::remove_dir_all(&libs);
        std::fs::rename(&staging, &libs).map_err(StackError::io(&libs))?;
        std::fs::write(&stamp, &wanted).map_err(StackError::io(&stamp))?;
        Ok(Self { libs })
    }

    /// The jars inside the `ledger/kafka` image (see `scripts/containers.sh`).
    pub fn in_image() -> Self {
        Self { libs: PathBuf::from("/opt/kafka/libs") }
    }

    fn classpath(&self) -> String {
        format!("{}/*", self.libs.display())
    }
}

/// One broker of ours.
#[derive(Debug, Clone)]
pub struct KafkaBroker {
    /// The region folder for Kafka: config, data (`data/`) and logs live here.
    pub dir: PathBuf,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// KRaft controller port on 127.0.0.1.
    pub controller_port: u16,
    /// Heap size.
    pub heap_mb: u32,
    /// The java launcher.
    pub java: PathBuf,
    /// Broker output (stdout/stderr); the broker's own logs go to `dir/logs`.
    pub log: PathBuf,
    /// Extra listeners for readers in other regions: (name, bind port, advertised port); see
    /// [`crate::toxiproxy`].
    pub peers: Vec<(String, u16, u16)>,
}

impl KafkaBroker {
    /// The bootstrap address clients use.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The marker that identifies this broker's pid (its config path is on its command line).
    pub fn marker(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Where the configuration is written (on the broker's command line, hence its marker).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    /// Where the broker keeps its log segments; formatted storage has `meta.properties` in it.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The broker's configuration (`server.properties`). Shared with the test harness's
    /// containers, which write it into theirs.
    pub fn server_properties(&self) -> String {
        let (port, cport) = (self.port, self.controller_port);
        let (mut listeners, mut advertised, mut protocols) = (String::new(), String::new(), String::new());
        for (name, bind, adv) in &self.peers {
            listeners.push_str(&format!(",{name}://127.0.0.1:{bind}"));
            advertised.push_str(&format!(",{name}://127.0.0.1:{adv}"));
            protocols.push_str(&format!(",{name}:PLAINTEXT"));
        }
        let data = self.data_dir();
        let data = data.display();
        format!(
            "# Written by ledgerctl: a single-node broker+controller in KRaft mode for local development.\n\
             process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}{listeners}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}{advertised}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}\n\
             log.dirs={data}\n\
             # Topics are created by the launcher with their intended settings, never by accident.\n\
             auto.create.topics.enable=false\n\
             num.partitions=1\n\
             default.replication.factor=1\n\
             min.insync.replicas=1\n\
             # One broker: internal topics must have replication factor 1 or transactions never start.\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=10\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=10\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             num.network.threads=2\n\
             num.io.threads=4\n\
             background.threads=2\n\
             log.retention.hours=-1\n\
             # After a kill -9 the controller refuses the restarted broker until the old session\n\
             # expires; 3 s instead of 9 s makes chaos restarts quick without fencing a busy broker.\n\
             broker.session.timeout.ms=3000\n\
             broker.heartbeat.interval.ms=1000\n\
             # The controller writes (and fsyncs) a no-op record every 500 ms by default: idle churn.\n\
             metadata.max.idle.interval.ms=5000\n"
        )
    }

    /// The broker's logging configuration (`log4j2.yaml`, naming `dir/logs`).
    pub fn log4j_config(&self) -> String {
        let logs = self.dir.join("logs");
        format!(
            "Configuration:\n  Appenders:\n    RollingFile:\n      name: server\n      fileName: {logs}/server.log\n      filePattern: {logs}/server.log.%i\n      PatternLayout:\n        pattern: \"[%d] %p %m (%c)%n\"\n      Policies:\n        SizeBasedTriggeringPolicy:\n          size: 20MB\n      DefaultRolloverStrategy:\n        max: 3\n  Loggers:\n    Root:\n      level: INFO\n      AppenderRef:\n        - ref: server\n",
            logs = logs.display()
        )
    }

    /// Writes the configuration and formats storage unless it is already formatted.
    pub fn init(&self, jars: &KafkaJars) -> Result<()> {
        check_java(&self.java)?;
        if self.write_config()? {
            return Ok(());
        }
        let data = self.data_dir();
        let mut cmd = Command::new(&self.java);
        cmd.args(self.format_java_args(jars, &new_cluster_id()));
        process::log_to(&mut cmd, &self.log)?;
        let status = cmd.status().map_err(StackError::io(&self.java))?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&data);
            return Err(StackError::CommandFailed {
                what: "kafka storage format".into(),
                detail: format!("{status}: {}", process::last_line(&self.log)),
                log: self.log.clone(),
            });
        }
        Ok(())
    }

    /// Writes the configuration files; returns whether the storage is already formatted (an error
    /// when the data folder holds anything else).
    pub fn write_config(&self) -> Result<bool> {
        std::fs::create_dir_all(self.dir.join("logs")).map_err(StackError::io(&self.dir))?;
        let config = self.config_path();
        std::fs::write(&config, self.server_properties()).map_err(StackError::io(&config))?;
        let log4j = self.dir.join("log4j2.yaml");
        std::fs::write(&log4j, self.log4j_config()).map_err(StackError::io(&log4j))?;
        let data = self.data_dir();
        if data.join("meta.properties").is_file() {
            return Ok(true);
        }
        if data.exists() && std::fs::read_dir(&data).map_err(StackError::io(&data))?.next().is_some() {
            return Err(StackError::CorruptState {
                path: data,
                detail: "not empty, yet no meta.properties: not a formatted Kafka log folder".into(),
            });
        }
        Ok(false)
    }

    /// Starts the broker; returns at once (see [`KafkaBroker::wait_ready`]).
    pub fn start(&self, jars: &KafkaJars, lifetime: Lifetime) -> Result<Child> {
        let mut cmd = Command::new(&self.java);
        cmd.args(self.server_java_args(jars));
        process::log_to(&mut cmd, &self.log)?;
        process::spawn(cmd, lifetime, "kafka")
    }

    /// `java`'s arguments to format the storage with `cluster_id` (KRaft), already formatted
    /// storage left alone. Shared with the test harness's containers.
    pub fn format_java_args(&self, jars: &KafkaJars, cluster_id: &str) -> Vec<String> {
        let mut args = vec!["-Xmx256m".to_owned(), "-cp".to_owned(), jars.classpath()];
        args.push("kafka.tools.StorageTool".to_owned());
        args.extend(format_args(cluster_id));
        args.push(self.config_path().display().to_string());
        args
    }

    /// `java`'s arguments to run the broker. Shared with the test harness's containers.
    pub fn server_java_args(&self, jars: &KafkaJars) -> Vec<String> {
        vec![
            // Start small and grow: three idle brokers should not reserve their whole heap up front.
            format!("-Xms{}m", (self.heap_mb / 4).max(64)),
            format!("-Xmx{}m", self.heap_mb),
            "-XX:+UseG1GC".to_owned(),
            "-XX:MaxGCPauseMillis=20".to_owned(),
            "-XX:+ExitOnOutOfMemoryError".to_owned(),
            "-Djava.awt.headless=true".to_owned(),
            format!("-Dlog4j2.configurationFile={}", self.dir.join("log4j2.yaml").display()),
            format!("-Dkafka.logs.dir={}", self.dir.join("logs").display()),
            "-cp".to_owned(),
            jars.classpath(),
            "kafka.Kafka".to_owned(),
            self.config_path().display().to_string(),
        ]
    }

    /// Waits until the broker answers a metadata request, failing early if `pid` dies.
    pub async fn wait_ready(&self, pid: u32) -> Result<()> {
        let started = Instant::now();
        loop {
            if answers_metadata(&self.bootstrap()).await {
                return Ok(());
            }
            let dead = !process::is_ours_and_alive(pid, &self.marker());
            if dead || started.elapsed() > READY_TIMEOUT {
                let server_log = self.dir.join("logs").join("server.log");
                // The broker logs through log4j into server.log; its stdout (`self.log`) holds only
                // what the JVM itself says (a bad flag, no memory), so a broker that stops on a
                // fatal error leaves the cause in server.log alone.
                let (detail, log) = match (dead, process::first_error(&server_log)) {
                    (true, Some(error)) => (format!("the broker exited: {error}"), server_log),
                    (true, None) => (format!("the broker exited: {}", process::last_line(&self.log)), self.log.clone()),
                    (false, _) => ("no answer to metadata requests".into(), server_log),
                };
                return Err(StackError::NotReady {
                    what: format!("Kafka on port {}", self.port),
                    waited_s: started.elapsed().as_secs(),
                    detail,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// True when the broker at `bootstrap` answers a metadata request within about a second.
pub async fn answers_metadata(bootstrap: &str) -> bool {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || metadata_ok(&bootstrap)).await.unwrap_or(false)
}

fn metadata_ok(bootstrap: &str) -> bool {
    let Ok(consumer) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "1000")
        .create::<rdkafka::consumer::BaseConsumer>()
    else {
        return false;
    };
    consumer.fetch_metadata(None, Duration::from_secs(1)).map(|m| !m.brokers().is_empty()).unwrap_or(false)
}

/// The storage tool's arguments up to the config path. The id goes as `--cluster-id=<id>`, one
/// argument: a random id may begin with '-' and would otherwise be read as an option.
fn format_args(cluster_id: &str) -> [String; 4] {
    ["format".into(), "--ignore-formatted".into(), format!("--cluster-id={cluster_id}"), "-c".into()]
}

/// A random KRaft cluster id: 16 random bytes in unpadded base64url, as Kafka's `Uuid` prints them.
pub fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: one run in 64 formatted storage with an id starting with '-', which the storage
    /// tool took for an option ("argument --cluster-id/-t: expected one argument").
    #[test]
    fn a_cluster_id_starting_with_a_dash_stays_one_argument() {
        let args = format_args("-Zx3Ab8mQz2p1YVmLw9c0A");
        assert_eq!(args[2], "--cluster-id=-Zx3Ab8mQz2p1YVmLw9c0A");
        assert_eq!(new_cluster_id().len(), 22);
    }
}
