//! testcontainers engines, for machines with a Docker engine (`LEDGER_TEST_BACKEND=containers`):
//! the same PostgreSQL 15 and Apache Kafka 4 (KRaft) images, configured like the local processes
//! (transaction-state topics with replication factor 1, broker auto-creation off). Host ports are
//! fixed per container so a stopped and restarted broker keeps its advertised address.

use crate::on_private_runtime;
use testcontainers::core::ContainerPort;
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, ImageExt};
use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::postgres::Postgres;

/// Same major versions as the local engines.
const POSTGRES_TAG: &str = "15";
const KAFKA_TAG: &str = "4.1.1";

struct ContainerRegion {
    pg_port: u16,
    kafka_port: u16,
    // Held so the containers live as long as the test process; dropped (removed) at exit.
    pg: Container<Postgres>,
    kafka: Container<Kafka>,
}

pub(crate) struct ContainerEngines {
    regions: Vec<ContainerRegion>,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("binding an ephemeral port");
    listener.local_addr().expect("ephemeral port").port()
}

impl ContainerEngines {
    pub(crate) fn new() -> Self {
        Self { regions: Vec::new() }
    }

    pub(crate) fn ensure(&mut self, names: &[String]) -> Vec<(u16, String)> {
        while self.regions.len() < names.len() {
            let (pg_port, kafka_port) = (free_port(), free_port());
            let pg = Postgres::default()
                .with_user(ledgerctl::postgres::USER)
                .with_password(ledgerctl::postgres::PASSWORD)
                .with_db_name("postgres")
                .with_fsync_enabled()
                .with_tag(POSTGRES_TAG)
                .with_mapped_port(pg_port, ContainerPort::Tcp(5432))
                .start()
                .unwrap_or_else(|e| panic!("starting a PostgreSQL container: {e}"));
            let kafka = Kafka::default()
                .with_jvm_image()
                .with_tag(KAFKA_TAG)
                .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
                .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
                .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
                .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
                .with_mapped_port(kafka_port, KAFKA_PORT)
                .start()
                .unwrap_or_else(|e| panic!("starting a Kafka container: {e}"));
            self.regions.push(ContainerRegion { pg_port, kafka_port, pg, kafka });
        }
        self.regions.iter().take(names.len()).map(|r| (r.pg_port, format!("127.0.0.1:{}", r.kafka_port))).collect()
    }

    pub(crate) fn kill_kafka(&mut self, index: usize) {
        // Zero seconds of grace: the container's process gets SIGKILL, like kill -9 locally.
        self.regions[index].kafka.stop_with_timeout(Some(0)).unwrap_or_else(|e| panic!("stopping Kafka: {e}"));
    }

    pub(crate) fn start_kafka(&mut self, index: usize) {
        let region = &self.regions[index];
        region.kafka.start().unwrap_or_else(|e| panic!("starting Kafka: {e}"));
        let bootstrap = format!("127.0.0.1:{}", region.kafka_port);
        let answered = on_private_runtime(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                if ledgerctl::kafka::answers_metadata(&bootstrap).await {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            false
        });
        assert!(answered, "the restarted Kafka container did not answer within 120 s");
    }

    pub(crate) fn stop_postgres(&mut self, index: usize) {
        // The postgres image's stop signal is SIGINT: a fast shutdown, as locally.
        self.regions[index].pg.stop().unwrap_or_else(|e| panic!("stopping PostgreSQL: {e}"));
    }

    pub(crate) fn start_postgres(&mut self, index: usize) {
        let region = &self.regions[index];
        region.pg.start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        let server = ledgerctl::postgres::PgServer {
            bin_dir: Default::default(),
            data_dir: Default::default(),
            port: region.pg_port,
            log: Default::default(),
        };
        let url = server.url("postgres");
        let answered = on_private_runtime(async move {
            use sqlx::Connection;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if sqlx::PgConnection::connect(&url).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            false
        });
        assert!(answered, "the restarted PostgreSQL container did not accept a login within 60 s");
    }

    pub(crate) fn shutdown(self) {
        // Dropping a container removes it.
        drop(self.regions);
    }
}
