//! `router`: the geo-router in front of every region's node, until SIGTERM or SIGINT.

use clap::Parser;
use router::config::{Flags, resolve};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    let cfg = resolve(&flags, std::env::vars())?;
    let router = router::start(cfg).await?;
    tracing::info!(addr = %router.addr(), "router listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    router.shutdown().await;
    Ok(())
}
