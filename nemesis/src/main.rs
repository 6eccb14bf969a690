//! duomq-nemesis: starts a cluster of duomq live/backup groups on loopback, bridged and
//! with clustered message grouping, drives producers and consumers on failover URLs while
//! it kills, freezes and restarts members at random, then checks the history of what the
//! clients saw against the broker's promises (see `checker`). This file only parses the
//! command line, sets up logging and the runtime, and prints results.

mod checker;
mod cli;
mod cluster;
mod faults;
mod history;
mod plot;
mod report;
mod run;
mod workload;

use clap::Parser;
use cli::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;

/// The exit code when the checker found a violation (1 is an error of the run itself).
const VIOLATIONS: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("duomq_nemesis=info,warn")),
        )
        .init();
    match dispatch(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(violations) => {
            eprintln!("error: the checker found {violations} violations (see the summary)");
            ExitCode::from(VIOLATIONS)
        }
        Err(e) => duomq_broker::report::exit_code(Err::<(), _>(e), verbose),
    }
}

/// Runs the command; returns the number of violations found.
fn dispatch(cli: Cli) -> anyhow::Result<u64> {
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let outcome = runtime.block_on(run::run(&args))?;
            print!("{}", outcome.summary);
            eprintln!("history, summary.md, summary.json and timeline.png are in {}", args.out.display());
            Ok(outcome.report.violations())
        }
        Command::Check(args) => {
            let history = history::History::read(&args.history)?;
            let report = checker::check(&history);
            print!("{}", report::markdown(history.run.as_ref(), &report));
            Ok(report.violations())
        }
        Command::Plot(args) => {
            let history = history::History::read(&args.history)?;
            let title = match &history.run {
                Some(r) => format!("duomq-nemesis: {} groups, seed {}", r.groups, r.seed),
                None => "duomq-nemesis".to_string(),
            };
            plot::draw(&plot::Timeline::of(&history), &title, &args.out)?;
            Ok(0)
        }
    }
}
