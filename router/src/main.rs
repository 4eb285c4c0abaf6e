//! `router`: the geo-router in front of every region's node, until SIGTERM or SIGINT.

use clap::Parser;
use router::config::{Flags, resolve};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let cfg = resolve(&flags, std::env::vars())?;
    // The router serves every region; its `cloud.region` is where it runs, the default client
    // region (the first region in the local stack).
    let region = cfg.default_client_region.clone();
    let telemetry =
        ledger_telemetry::init(ledger_telemetry::Service { name: "router", region: &region }, &cfg.otlp_endpoint, None);
    let router = router::start(cfg).await?;
    tracing::info!(addr = %router.addr(), "router listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    router.shutdown().await;
    telemetry.shutdown();
    Ok(())
}
