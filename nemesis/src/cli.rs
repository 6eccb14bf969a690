//! The command line: `run` a cluster under faults and check it, `check` a history again,
//! `plot` a history's timeline. Parsing only.

use crate::cluster::config::Arbiter;
use crate::faults::plan::FaultKind;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "duomq-nemesis",
    version,
    about = "Starts a cluster of duomq live/backup groups on loopback, runs producers and consumers against it while \
             applying random faults, then checks what the clients saw against the broker's promises",
    long_about = None
)]
pub struct Cli {
    /// On failure, print every cause on its own line and the backtrace.
    #[arg(long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster under faults, then check it. Writes history.jsonl, summary.md,
    /// summary.json and timeline.png to --out; exits 2 when the checker finds a violation.
    #[command(after_help = "Examples:\n  \
        duomq-nemesis run --out nemesis-out --duration 2m\n  \
        duomq-nemesis run --out nemesis-out --groups 3 --duration 10m --seed 7 --faults kill,stop,partition-bridge\n  \
        duomq-nemesis run --out nemesis-out --arbiter quorum --faults stop,partition-arbiter\n\n\
        What happens: every group is a primary and a backup (fileLock arbiter by default), each group bridges to \
        every other one, g0 runs the LOCAL grouping handler and the others REMOTE ones. In every group a producer \
        sends to /queue/nemesis.plain and one to /queue/nemesis.grouped (with JMSXGroupID), two consumers take the \
        grouped queue and, outside g0, one the plain queue; all on failover URLs, every send and ack with a receipt. \
        Every few seconds a fault hits a healthy group (a live and a synced backup) and is healed after a while: kill \
        (kill -9, then start), stop (SIGSTOP, then SIGCONT), restart (SIGTERM, then start), partition-backup, \
        partition-arbiter, partition-bridge, slow-fsync and disk-full (through the members' /debug/faults). When \
        --duration is up (or on \
        Ctrl-C) every fault heals, the producers stop, the consumers drain, the members stop, and the checker reads \
        the history. Broker logs are in OUT/logs, their data in OUT/cluster.")]
    Run(RunArgs),
    /// Check a history.jsonl again and print the summary (exits 2 on a violation).
    Check(CheckArgs),
    /// Draw a history's timeline (throughput, roles, faults) as a PNG.
    Plot(PlotArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory for the history, the summary, the plot, the members' logs and data. It
    /// must not hold a history already.
    #[arg(long)]
    pub out: PathBuf,
    /// Live/backup groups (two members each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub groups: u16,
    /// How long faults are applied (`90s`, `10m`, `1h`); healing and draining come after.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of the fault choices; a random one (printed) when left out.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault kinds to apply, comma-separated; by default every kind the arbiter allows
    /// (partition-arbiter needs --arbiter quorum). Any kind but kill, stop and restart turns
    /// the members' fault injection on (debug.faultInjection).
    #[arg(long, value_delimiter = ',')]
    pub faults: Option<Vec<FaultKind>>,
    /// Who lets a backup take over.
    #[arg(long, value_enum, default_value_t = Arbiter::FileLock)]
    pub arbiter: Arbiter,
    /// Messages a second per producer.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Sends per producer waiting for their receipt at most.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub window: u16,
    /// Faults in force at once, at most (never two in one group).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Shortest wait between one fault and the next.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_gap: Duration,
    /// Longest wait between one fault and the next.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub max_gap: Duration,
    /// The duomq-broker binary; by default the one next to this program.
    #[arg(long, env = "DUOMQ_BROKER")]
    pub broker: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The history.jsonl of a run.
    pub history: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The history.jsonl of a run.
    pub history: PathBuf,
    /// Where to write the PNG.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 90s, 10m or 1h ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_run_command_line_should_parse_durations_and_fault_lists() {
        let cli = Cli::try_parse_from(["duomq-nemesis", "run", "--out", "x", "--duration", "10m", "--faults", "kill,stop", "--seed", "9"]).expect("parse");
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.duration, Duration::from_secs(600));
        assert_eq!(args.faults, Some(vec![FaultKind::Kill, FaultKind::Stop]));
        assert_eq!(args.seed, Some(9));
        assert_eq!(args.groups, 3);
    }

    #[test]
    fn given_a_bad_value_should_refuse_it_naming_what_is_expected() {
        let error = Cli::try_parse_from(["duomq-nemesis", "run", "--out", "x", "--duration", "soon"]).expect_err("refused");
        assert!(error.to_string().contains("is not a duration like 90s"), "{error}");
        assert!(Cli::try_parse_from(["duomq-nemesis", "run", "--out", "x", "--faults", "flood"]).is_err());
        assert!(Cli::try_parse_from(["duomq-nemesis", "run", "--out", "x", "--groups", "0"]).is_err());
    }
}
