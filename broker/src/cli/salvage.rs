//! `duomq-broker journal salvage`: the explicit way past journal damage that makes the
//! broker refuse to start. A thin front for `duomq_broker::journal::salvage`: it finds
//! the journal, names the salvage folder and prints one line per action. It must not
//! repair anything itself.

use std::path::{Path, PathBuf};

use duomq_broker::config::{BrokerConfig, Override};
use duomq_broker::journal;

/// What `journal salvage --help` says.
pub const SALVAGE_LONG_ABOUT: &str = "\
Get a broker past a damaged journal, keeping a copy of everything it changes.

When the broker refuses to start with \"segment ... is corrupt at byte offset N\", a journal
record it had already synced (and may have confirmed to a client) no longer reads back: a disk
error, a flipped bit, a zeroed page. The broker does not guess; it stops and changes nothing.
(A crash that cut the last write short is no damage: the broker cuts that torn tail itself.)

Step by step:
  1. Stop the broker: salvage refuses while a broker holds the journal.
  2. See what it would do:  duomq-broker journal salvage --data-dir DIR --dry-run
  3. Salvage:               duomq-broker journal salvage --data-dir DIR
  4. Start the broker again.

For each damaged place it prints one line:
  padded ...  records synced after the damage follow it: the damaged bytes are overwritten
              with padding, and every record after them is recovered;
  cut ...     nothing synced follows the damage: the segment file is cut there.
Before it changes a byte it copies the bytes it replaces or cuts into DIR/salvage-<UTC time>/,
one file per place named after the segment and the byte range, and syncs them.

What it costs: messages whose records lay in those bytes are lost (their bytes are in the
copy); acknowledgements in them are forgotten, so those messages are delivered again. A
damaged segment header is not repaired: the command names the file to move away.";

/// `duomq-broker journal ...`
#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    #[command(subcommand)]
    command: JournalCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JournalCommand {
    /// Cut damage out of the journal so the broker starts, keeping a copy (see --help).
    #[command(long_about = SALVAGE_LONG_ABOUT)]
    Salvage(SalvageArgs),
}

/// `duomq-broker journal salvage ...`
#[derive(clap::Args, Debug)]
pub struct SalvageArgs {
    /// The broker's data directory (storage.dataDir); the journal is its `journal` folder.
    /// Default: storage.dataDir of --config, else ./data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// broker.yaml to take storage.dataDir from, as `run --config` does.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Say what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs a `journal` subcommand. A failure is printed as one line (each cause once, no
/// backtrace whatever RUST_BACKTRACE says) and ends the process with status 1.
pub fn journal(args: JournalArgs) -> anyhow::Result<()> {
    let result = match args.command {
        JournalCommand::Salvage(args) => salvage(args),
    };
    if let Err(error) = result {
        eprintln!("error: {}", one_line(&error));
        std::process::exit(1);
    }
    Ok(())
}

fn salvage(args: SalvageArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(dir) = &args.data_dir {
        overrides.push(Override { path: "storage.dataDir", value: dir.display().to_string() });
    }
    let config = BrokerConfig::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    let data_dir = config.storage.data_dir;
    let journal_dir = data_dir.join("journal");
    let salvage_dir = data_dir.join(format!("salvage-{}", timestamp()));
    if args.dry_run {
        let planned = journal::plan_salvage(&journal_dir, &salvage_dir)?;
        for action in &planned {
            println!("would have {action}");
        }
        println!("{}; dry run: nothing was changed", summary(&journal_dir, planned.len()));
        return Ok(());
    }
    let actions = journal::salvage(&journal_dir, &salvage_dir)?;
    for action in &actions {
        println!("{action}");
    }
    if actions.is_empty() {
        println!("{}", summary(&journal_dir, 0));
    } else {
        println!("{}; the broker can start again", summary(&journal_dir, actions.len()));
    }
    Ok(())
}

fn summary(journal_dir: &Path, places: usize) -> String {
    match places {
        0 => format!("the journal in {} reads cleanly: nothing to salvage", journal_dir.display()),
        1 => format!("1 damaged place in the journal in {}", journal_dir.display()),
        n => format!("{n} damaged places in the journal in {}", journal_dir.display()),
    }
}

/// UTC now as `20261206T110753Z`: sortable, and safe in a folder name anywhere.
fn timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}

/// An error and its causes on one line, each cause once.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
