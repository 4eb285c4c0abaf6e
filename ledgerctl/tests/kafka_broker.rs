//! The broker as the launcher and the test harness start it, when it cannot start: the error must
//! name the cause, which the broker writes to its log4j log and not to its stdout.

use ledgerctl::config::{DEFAULT_KAFKA_HEAP_MB, StackConfig};
use ledgerctl::kafka::{KafkaBroker, KafkaJars};
use ledgerctl::process::{self, Lifetime};

#[tokio::test]
async fn a_broker_whose_port_is_taken_exits_and_the_error_says_address_already_in_use() {
    let defaults = StackConfig::default_local();
    let jars = KafkaJars::ensure(&defaults.kafka_pom, &defaults.kafka_cache_dir, &defaults.mvn).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = KafkaBroker {
        dir: dir.path().join("kafka"),
        port: process::free_port(),
        controller_port: process::free_port(),
        heap_mb: DEFAULT_KAFKA_HEAP_MB,
        java: defaults.java,
        log: dir.path().join("kafka.out"),
        peers: Vec::new(),
    };
    // Someone else took the controller's port between choosing it and the broker binding it.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", broker.controller_port)).unwrap();
    broker.init(&jars).unwrap();
    let mut child = broker.start(&jars, Lifetime::TiedToThisProcess).unwrap();
    let error =
        broker.wait_ready(child.id()).await.expect_err("the broker cannot bind its controller port").to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert!(error.contains("the broker exited"), "{error}");
    let bind = format!("127.0.0.1:{}: Address already in use", broker.controller_port);
    assert!(error.contains(&bind), "the cause from server.log is named: {error}");
    assert!(error.contains("server.log"), "the error points at the log holding the cause: {error}");
}
