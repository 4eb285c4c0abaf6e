//! The reconcile binary: `serve` (the default) runs the service; `staff`, `token` and
//! `audit-verify` administer its database.

use anyhow::Context;
use clap::{Parser, Subcommand};
use reconcile::case::Role;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Finance staff resolve the conflicts the ledger's regions report")]
struct Cli {
    /// TOML configuration (then RECONCILE_* variables override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service.
    Serve,
    /// Adds a staff member (or resets one); the password is read from RECONCILE_STAFF_PASSWORD.
    Staff {
        /// Username.
        username: String,
        /// viewer, resolver, approver or admin.
        role: String,
    },
    /// Issues an API token (printed once; only its hash is kept).
    Token {
        /// Its owner.
        username: String,
        /// Its role, at most the owner's.
        role: String,
        /// What it is for.
        label: String,
    },
    /// Recomputes the audit chain; exits 1 naming the first entry that does not match.
    AuditVerify,
}

fn role(s: &str) -> anyhow::Result<Role> {
    Role::parse(s).with_context(|| format!("unknown role {s:?}: viewer, resolver, approver or admin"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let env = std::env::vars().filter(|(k, _)| k != "RECONCILE_STAFF_PASSWORD");
    let cfg = reconcile::config::load(cli.config.as_deref(), env).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    // Reconcile serves every region; its `cloud.region` is where its database lives, the first
    // region's instance in the local stack.
    let region = cfg.regions.first().map(|r| r.name.clone()).unwrap_or_default();
    let telemetry = ledger_telemetry::init(
        ledger_telemetry::Service { name: "reconcile", region: &region },
        &cfg.otlp_endpoint,
        None,
    );
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let running = reconcile::start(cfg).await?;
            println!("reconcile listening on http://{}", running.addr());
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            running.stop().await;
        }
        Command::Staff { username, role: r } => {
            let password = std::env::var("RECONCILE_STAFF_PASSWORD").context("set RECONCILE_STAFF_PASSWORD")?;
            let pool = reconcile::connect(&cfg.database_url).await?;
            reconcile::auth::put_staff(&pool, &username, role(&r)?, &password).await?;
        }
        Command::Token { username, role: r, label } => {
            let pool = reconcile::connect(&cfg.database_url).await?;
            println!("{}", reconcile::auth::issue_token(&pool, &username, role(&r)?, &label).await?);
        }
        Command::AuditVerify => {
            let pool = reconcile::connect(&cfg.database_url).await?;
            match reconcile::audit::verify(&pool).await? {
                reconcile::audit::Verdict::Intact(n) => println!("audit trail intact: {n} entries"),
                reconcile::audit::Verdict::Broken { seq, why } => {
                    println!("audit trail broken at entry {seq}: {why}");
                    std::process::exit(1);
                }
            }
        }
    }
    telemetry.shutdown();
    Ok(())
}
