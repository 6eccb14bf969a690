//! The `duomq-broker` command: run the broker, print its default config, send or receive
//! messages as a client, ask a live for a switchover, fence a member or drain a group, work
//! on the messages of a queue, and salvage a damaged journal.

mod cli;

use anyhow::Context;
use clap::{Parser, Subcommand};
use duomq_broker::config::{BrokerConfig, LogFormat, Override, DEFAULT_CONFIG_YAML};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "duomq-broker",
    version,
    about = "duomq's message broker: durable STOMP 1.2 queues and topics that survive kill -9",
    long_about = "duomq's message broker: durable STOMP 1.2 queues and topics that survive kill -9.\n\n\
        Start one on built-in defaults with `duomq-broker run` (STOMP on 127.0.0.1:61613, admin HTTP on \
        127.0.0.1:8161, data in ./data), then try `duomq-broker send` and `duomq-broker receive`."
)]
struct Cli {
    /// On failure, print every cause on its own line and the backtrace (captured with
    /// RUST_BACKTRACE=1), not one line.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Print the whole broker.yaml with every field at its default, commented.
    PrintDefaultConfig,
    /// Send messages to a queue or topic (try `send --help` for examples).
    #[command(long_about = cli::SEND_LONG_ABOUT)]
    Send(cli::SendArgs),
    /// Receive messages from a queue or topic (try `receive --help` for examples).
    #[command(long_about = cli::RECEIVE_LONG_ABOUT)]
    Receive(cli::ReceiveArgs),
    /// Hand a group's live role to an in-sync backup, with nothing lost (try `switchover --help`).
    #[command(long_about = cli::SWITCHOVER_LONG_ABOUT)]
    Switchover(cli::SwitchoverArgs),
    /// Fence a member of a group, or unfence it (try `fence --help`).
    #[command(long_about = cli::FENCE_LONG_ABOUT)]
    Fence(cli::FenceArgs),
    /// Drain a group into other groups before removing it (try `drain --help`).
    #[command(long_about = cli::DRAIN_LONG_ABOUT)]
    Drain(cli::DrainArgs),
    /// List queues; browse, purge, delete or move their messages (try `queue --help`).
    #[command(long_about = cli::QUEUE_LONG_ABOUT)]
    Queue(cli::QueueArgs),
    /// Repair a stopped broker's journal after damage (try `journal salvage --help`).
    Journal(cli::JournalArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// broker.yaml to read; without it the built-in defaults apply. DUOMQ_* environment
    /// variables override the file (DUOMQ_STORAGE__DATA_DIR=...), flags override both.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the journal (storage.dataDir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the STOMP listener (stomp.listen), e.g. 0.0.0.0:61613.
    #[arg(long, value_name = "ADDR")]
    stomp_listen: Option<String>,
    /// Address of the AMQP 1.0 listener (amqp.listen; amqp.enabled turns it on).
    #[arg(long, value_name = "ADDR")]
    amqp_listen: Option<String>,
    /// Address of the admin HTTP endpoint (admin.listen).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log filter (log.level), e.g. debug or duomq_broker=debug.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// For tests only: serve /debug/faults on the admin API, where signed requests inject
    /// faults into cluster traffic and journal fdatasyncs (debug.faultInjection).
    #[arg(long)]
    fault_injection: bool,
}

/// A failure prints one line (`error: …` with every cause) and exits 1; `--verbose` adds
/// the causes one per line and the backtrace.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    duomq_broker::report::exit_code(dispatch(cli), verbose)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_CONFIG_YAML}");
            Ok(())
        }
        Command::Run(args) => run(args),
        Command::Send(args) => client_runtime()?.block_on(cli::send(args)),
        Command::Receive(args) => client_runtime()?.block_on(cli::receive(args)),
        Command::Switchover(args) => client_runtime()?.block_on(cli::switchover(args)),
        Command::Fence(args) => client_runtime()?.block_on(cli::fence(args)),
        Command::Drain(args) => client_runtime()?.block_on(cli::drain(args)),
        Command::Queue(args) => client_runtime()?.block_on(cli::queue(args)),
        Command::Journal(args) => cli::journal(args),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("failed to start the async runtime")
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(d) = args.data_dir {
        overrides.push(Override { path: "storage.dataDir", value: d.display().to_string() });
    }
    if let Some(a) = args.stomp_listen {
        overrides.push(Override { path: "stomp.listen", value: a });
    }
    if let Some(a) = args.amqp_listen {
        overrides.push(Override { path: "amqp.listen", value: a });
    }
    if let Some(a) = args.admin_listen {
        overrides.push(Override { path: "admin.listen", value: a });
    }
    if let Some(l) = args.log_level {
        overrides.push(Override { path: "log.level", value: l });
    }
    if args.fault_injection {
        overrides.push(Override { path: "debug.faultInjection", value: "true".into() });
    }
    let config = BrokerConfig::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    init_logging(&config);
    let workers = config.runtime.effective_worker_threads();
    tracing::debug!(workers, "starting the async runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: closing clients and flushing the journal");
            on_signal.cancel();
        });
        duomq_broker::runtime::run(config, shutdown).await
    })?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(config: &BrokerConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
