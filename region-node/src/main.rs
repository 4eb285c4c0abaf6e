//! `region-node`: runs one region's node until SIGTERM or SIGINT, then shuts down gracefully.

use clap::Parser;
use region_node::config::{Flags, resolve};

// The default allocator spent a fifth of the node's CPU under load (malloc consolidation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let cfg = resolve(&flags, std::env::vars())?;
    let telemetry = region_node::telemetry::init(&cfg.region, &cfg.otlp_endpoint, None);
    let node = region_node::start(cfg).await?;
    tracing::info!(addr = %node.addr(), "region node listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    telemetry.shutdown();
    Ok(())
}
