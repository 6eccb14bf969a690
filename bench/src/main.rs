//! duomq-bench: a STOMP and AMQP 1.0 load generator for comparing brokers (duomq,
//! ActiveMQ, RabbitMQ) at equal durability. `run` drives producers and consumers and
//! reports throughput, end-to-end latency, the broker's footprint and correctness; `amqp`
//! does the same over AMQP 1.0; `failover` kills the live
//! member of a pair under load and measures the gaps; `fsync-rate` measures the
//! disk underneath; `test-certs` writes a throwaway CA and certificate for `stomp+ssl://`
//! runs. This file only parses the command line, sets up logging and the
//! runtime, and prints results; it must not measure anything itself.

mod amqp;
mod body;
mod certs;
mod cli;
mod failover;
mod footprint;
mod fsync_rate;
mod groups;
mod report;
mod run;
mod selectors;
mod tally;

use clap::Parser;
use cli::{Cli, Command};
use std::io::{IsTerminal, Write};

/// A failure prints one line (`error: …` with every cause) and exits 1; `--verbose` adds
/// the causes one per line and the backtrace. A grouped run that broke its groups prints
/// its report first, then fails.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    duomq_broker::report::exit_code(dispatch(cli), verbose)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("duomq_bench=info,warn")),
        )
        .init();
    let (mut group_violations, mut selector_mismatches) = (0, 0);
    let output = match cli.command {
        Command::Run(args) => {
            let report = match args.backlog {
                Some(messages) => block_on(run::backlog::backlog(&args, messages))?,
                None => block_on(run::run(&args))?,
            };
            warn_if_lost(report.lost, report.duplicates);
            group_violations = report.group_violations();
            selector_mismatches = report.selector_mismatches.unwrap_or(0);
            if args.json {
                report.to_json_line()? + "\n"
            } else {
                report.to_table()
            }
        }
        Command::Amqp(args) => {
            let report = block_on(amqp::run(&args))?;
            warn_if_lost(report.lost, report.duplicates);
            if args.json {
                report.to_json_line()? + "\n"
            } else {
                report.to_table()
            }
        }
        Command::Failover(args) => {
            let report = block_on(failover::failover(&args))?;
            warn_if_lost(report.lost, report.duplicates);
            if args.json {
                report.to_json_line()? + "\n"
            } else {
                report.to_text()
            }
        }
        Command::TestCerts(args) => {
            let report = certs::test_certs(&args)?;
            if args.json {
                report.to_json_line()? + "\n"
            } else {
                report.to_text()
            }
        }
        Command::FsyncRate(args) => {
            let report = fsync_rate::fsync_rate(&args)?;
            if args.json {
                report.to_json_line()? + "\n"
            } else {
                report.to_text()
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(output.as_bytes())?;
    stdout.flush()?;
    if selector_mismatches > 0 {
        anyhow::bail!(
            "{selector_mismatches} selector mismatches: consumers got messages their selector does not match (does the broker apply the STOMP selector header?)"
        );
    }
    if group_violations > 0 {
        anyhow::bail!(
            "{group_violations} message group violations: a group reached more than one consumer or came out of order"
        );
    }
    Ok(())
}

/// Runs a measurement's coordination on a fresh runtime (each connection gets a thread and
/// runtime of its own, see `run::threads`); pending tasks must not hold up exit.
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(work);
    runtime.shutdown_background();
    result
}

fn warn_if_lost(lost: u64, duplicates: u64) {
    if lost > 0 || duplicates > 0 {
        tracing::warn!(lost, duplicates, "the broker lost or duplicated messages");
    }
}
