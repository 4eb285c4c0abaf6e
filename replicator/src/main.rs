//! `replicator`: mirrors every other region's events into one target region until SIGTERM.

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use std::path::PathBuf;

// The default allocator spent a fifth of the node's CPU under load (malloc consolidation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "replicator", about = "Mirrors every other region's ledger events into one region's Kafka")]
struct Flags {
    /// TOML file: target_region, target_bootstrap, [[sources]] region/bootstrap, topic_prefix, metrics_addr, otlp_endpoint.
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let cfg: replicator::ReplicatorConfig =
        Figment::new().merge(Toml::file_exact(&flags.config)).merge(Env::prefixed("LEDGER_REPLICATOR_")).extract()?;
    let telemetry = ledger_telemetry::init(
        ledger_telemetry::Service { name: "replicator", region: &cfg.target_region },
        &cfg.otlp_endpoint,
        None,
    );
    let running = replicator::start(cfg).await?;
    tracing::info!(metrics = ?running.metrics_addr, "replicator running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.stop().await;
    telemetry.shutdown();
    Ok(())
}
