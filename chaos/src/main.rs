//! `chaos`: the chaos suite's command line. `run` breaks an environment under load and checks it,
//! `check` re-runs the checker on a report folder, `sim` runs the deterministic simulation.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "chaos", about = "Faults under load against a multi-region ledger, and a checker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive load in every region, inject seeded faults, heal, check; exit 1 on any violation.
    Run(chaos::run::RunArgs),
    /// Check a report folder's history and observations again; exit 1 on any violation.
    Check {
        /// A folder written by `chaos run`.
        dir: PathBuf,
    },
    /// The deterministic simulation of the replication rules; exit 1 at the first failing seed.
    Sim(chaos::sim::SimArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Run(args) => match chaos::run::run(&args).await {
            Ok(outcome) => {
                match outcome.converged_after {
                    Some(d) => println!("chaos: regions converged {:.1} s after healing", d.as_secs_f64()),
                    None => println!("chaos: regions did NOT converge within {} s", args.converge_timeout_s),
                }
                println!("chaos: report {}", outcome.report_dir.join("index.html").display());
                println!("{}", outcome.verdict);
                if outcome.verdict.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(e) => {
                eprintln!("chaos: error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Check { dir } => match chaos::report::load(&dir) {
            Ok((history, observed)) => {
                let verdict = chaos::checker::check(&history, &observed);
                println!("{verdict}");
                if verdict.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            }
            Err(e) => {
                eprintln!("chaos: error: reading {}: {e}", dir.display());
                ExitCode::from(2)
            }
        },
        Cmd::Sim(args) => chaos::sim::main(&args),
    }
}
