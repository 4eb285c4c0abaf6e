//! Every way bringing the stack up or down can fail. Each message names the cause and the fix on one
//! line, because the reader is a developer at a terminal or a CI log.

use std::path::PathBuf;

/// A launcher failure.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A TCP port we need is held by a process that is not ours.
    #[error(
        "port {port} for {what} is already in use: stop what holds it (`ss -ltnp 'sport = :{port}'`) or choose other ports (see `ledgerctl up --help`)"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// What we wanted it for, e.g. "PostgreSQL of us-east".
        what: String,
    },
    /// A program we run is not installed.
    #[error("{what} not found at {path}: {fix}")]
    MissingBinary {
        /// The program, e.g. "PostgreSQL 15 (initdb)".
        what: &'static str,
        /// Where we looked.
        path: PathBuf,
        /// How to install it.
        fix: &'static str,
    },
    /// Maven could not resolve the Kafka jars.
    #[error(
        "downloading the Kafka jars with Maven failed ({detail}): check access to Maven Central, then run `mvn -f {pom} dependency:copy-dependencies` by hand to see the full error"
    )]
    KafkaJars {
        /// The pom.xml used.
        pom: PathBuf,
        /// The last meaningful line of Maven's output.
        detail: String,
    },
    /// A state folder exists but is not what we expect there.
    #[error(
        "state folder {path} is corrupt ({detail}): remove it with `ledgerctl down --purge` (this deletes the local data) and run `ledgerctl up` again"
    )]
    CorruptState {
        /// The folder.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A process we started exited or never became ready.
    #[error("{what} did not become ready within {waited_s} s ({detail}); its log is {log}")]
    NotReady {
        /// Which part.
        what: String,
        /// How long we waited.
        waited_s: u64,
        /// Why we gave up.
        detail: String,
        /// Where to look.
        log: PathBuf,
    },
    /// A helper command (initdb, the Kafka storage tool) failed.
    #[error("{what} failed ({detail}); its output is in {log}")]
    CommandFailed {
        /// Which command.
        what: String,
        /// Exit status and the last line of output.
        detail: String,
        /// Where its output went.
        log: PathBuf,
    },
    /// No Docker engine answers (`ledgerctl up --containers`).
    #[error(
        "no Docker engine answers at DOCKER_HOST={docker_host:?} ({detail}): start the project's own with `eval \"$(scripts/containers.sh up | tail -n 1)\"`"
    )]
    NoEngine {
        /// The engine asked.
        docker_host: String,
        /// The CLI's last line.
        detail: String,
    },
    /// Images the containers need are not in the engine.
    #[error(
        "the Docker engine at DOCKER_HOST={docker_host:?} has no image {images}: build the engines' with `scripts/containers.sh up` and ours with `cargo build --release --workspace --bins && scripts/containers.sh images` (or pass --image-tag)"
    )]
    MissingImages {
        /// The engine asked.
        docker_host: String,
        /// The missing images, comma-separated.
        images: String,
    },
    /// A Docker command failed.
    #[error("{what} failed: {detail}")]
    Docker {
        /// The command.
        what: String,
        /// The CLI's last line of error output.
        detail: String,
    },
    /// Bad configuration (region names, ports).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A PostgreSQL error after the server answered.
    #[error("postgresql at {url}: {source}")]
    Postgres {
        /// The server.
        url: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the regional migrations failed.
    #[error("migrations on {url}: {source}")]
    Migrate {
        /// The database.
        url: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A Kafka admin or client error after the broker answered.
    #[error("kafka at {bootstrap}: {detail}")]
    Kafka {
        /// The broker.
        bootstrap: String,
        /// What failed.
        detail: String,
    },
    /// Reading or writing a file of ours.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ledger_schema::TopicsError> for StackError {
    fn from(e: ledger_schema::TopicsError) -> Self {
        match e {
            ledger_schema::TopicsError::Client { bootstrap, source } => {
                Self::Kafka { bootstrap, detail: source.to_string() }
            }
            ledger_schema::TopicsError::Create { bootstrap, detail } => Self::Kafka { bootstrap, detail },
        }
    }
}

impl StackError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// The crate's result type.
pub type Result<T, E = StackError> = std::result::Result<T, E>;
