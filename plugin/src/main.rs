//! `kubectl-duomq`: the kubectl plugin for duomq BrokerGroups (`kubectl duomq …` once the
//! binary is on PATH). It reads status and sets the annotations the operator acts on
//! (switchover, fenced members, hibernation); it never changes the spec or any object the
//! operator owns.

mod commands;
mod fenced;
mod view;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Parser)]
#[command(
    name = "kubectl-duomq",
    bin_name = "kubectl duomq",
    version,
    about = "Day-two commands for duomq BrokerGroups: see a BrokerGroup's groups and members, \
             move a live role, fence a member, hibernate a BrokerGroup, read a live's logs.",
    after_help = "Examples:\n  \
        kubectl duomq status pair\n  \
        kubectl duomq switchover pair pair-g0 pair-g0-1 --wait\n  \
        kubectl duomq fence pair pair-g0-1 --wait\n  \
        kubectl duomq hibernate pair --wait\n  \
        kubectl duomq logs pair pair-g0 -f"
)]
struct Cli {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// On failure, print every cause on its own line and the backtrace (captured with
    /// RUST_BACKTRACE=1), not one line.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// Which cluster and namespace, as kubectl takes them.
#[derive(Args)]
struct ClusterArgs {
    /// The BrokerGroup's namespace (default: the kubeconfig context's namespace).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the
    /// pod's service account).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
}

/// How long `--wait` waits, and whether it does.
#[derive(Args, Clone, Copy)]
struct WaitArgs {
    /// Wait until the status shows the change done.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits before giving up, e.g. 90s or 5m.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration, requires = "wait")]
    timeout: Duration,
}

impl WaitArgs {
    fn limit(self) -> Option<Duration> {
        self.wait.then_some(self.timeout)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// A tree for people.
    Tree,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// Show a BrokerGroup as a tree of its groups and members.
    ///
    /// The conditions, then each group with its live, epoch, failovers and switchovers,
    /// every member (role, synced, lag, pod phase and readiness), fenced members, a drain in
    /// progress, connectors and the grouping handler.
    Status {
        /// The BrokerGroup's name.
        brokergroup: String,
        /// Output format: tree (default), json or yaml.
        #[arg(short, long, value_enum, default_value = "tree")]
        output: Output,
    },
    /// Hand a group's live role to another member, with nothing lost.
    ///
    /// The running operator asks the live to hand over; it refuses unless the member is an
    /// in-sync backup. Sets the duomq.io/switchover annotation, as `duomq-operator
    /// switchover` does.
    Switchover {
        /// The BrokerGroup's name.
        brokergroup: String,
        /// The group, e.g. pair-g0 (`kubectl duomq status` lists them).
        group: String,
        /// The member pod that becomes live, e.g. pair-g0-1.
        pod: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Fence a member: it stops serving and never takes the live role.
    ///
    /// A fenced member stops serving and replicating and never takes the live role; its pod
    /// and data stay. A live is first switched over to an in-sync backup. Adds the pod to the
    /// duomq.io/fenced-members annotation, keeping the other entries.
    Fence {
        /// The BrokerGroup's name.
        brokergroup: String,
        /// The member pod to fence, e.g. pair-g0-1.
        pod: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Unfence a member: it rejoins its group as a backup.
    ///
    /// Removes the pod from the duomq.io/fenced-members annotation, keeping the other
    /// entries.
    Unfence {
        /// The BrokerGroup's name.
        brokergroup: String,
        /// The fenced member pod, e.g. pair-g0-1.
        pod: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Hibernate a BrokerGroup: its broker pods stop, its data stays.
    ///
    /// Every broker pod stops (lives last); volumes, Secrets and the spec stay, so `resume`
    /// brings the messages back. Sets duomq.io/hibernation=on.
    Hibernate {
        /// The BrokerGroup's name.
        brokergroup: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Resume a hibernated BrokerGroup.
    ///
    /// Its pods start again on their volumes. Sets duomq.io/hibernation=off.
    Resume {
        /// The BrokerGroup's name.
        brokergroup: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print the broker log of a group's live (or of another member with --member).
    ///
    /// The live is the one the status names, else the pod labelled duomq.io/role=live. The
    /// pod read is named on stderr, so the log itself can be piped.
    Logs {
        /// The BrokerGroup's name.
        brokergroup: String,
        /// The group, e.g. pair-g0.
        group: String,
        /// Keep printing new lines as the broker writes them.
        #[arg(short, long)]
        follow: bool,
        /// Print only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<i64>,
        /// A member pod of the group instead of its live.
        #[arg(long, value_name = "POD")]
        member: Option<String>,
    },
}

/// A failure prints one line (`error: …` with every cause) and exits 1; `--verbose` adds
/// the causes one per line and the backtrace.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    let result = tokio::runtime::Runtime::new()
        .context("failed to start the async runtime")
        .and_then(|runtime| runtime.block_on(dispatch(cli)));
    duomq_broker::report::exit_code(result, verbose)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let target = cli.cluster.connect().await?;
    match cli.command {
        Command::Status {
            brokergroup,
            output,
        } => {
            let view = commands::status(&target, &brokergroup).await?;
            let text = match output {
                Output::Tree => {
                    let enabled = std::io::IsTerminal::is_terminal(&std::io::stdout())
                        && std::env::var_os("NO_COLOR").is_none();
                    view::render_tree(&view, view::Palette { enabled })
                }
                Output::Json => serde_json::to_string_pretty(&view)? + "\n",
                Output::Yaml => serde_yaml::to_string(&view)?,
            };
            print!("{text}");
            Ok(())
        }
        Command::Switchover {
            brokergroup,
            group,
            pod,
            wait,
        } => commands::switchover(&target, &brokergroup, &group, &pod, wait.limit()).await,
        Command::Fence {
            brokergroup,
            pod,
            wait,
        } => commands::fence(&target, &brokergroup, &pod, true, wait.limit()).await,
        Command::Unfence {
            brokergroup,
            pod,
            wait,
        } => commands::fence(&target, &brokergroup, &pod, false, wait.limit()).await,
        Command::Hibernate { brokergroup, wait } => {
            commands::hibernate(&target, &brokergroup, true, wait.limit()).await
        }
        Command::Resume { brokergroup, wait } => {
            commands::hibernate(&target, &brokergroup, false, wait.limit()).await
        }
        Command::Logs {
            brokergroup,
            group,
            follow,
            tail,
            member,
        } => {
            let logs = commands::LogRequest {
                follow,
                tail,
                member,
            };
            commands::logs(&target, &brokergroup, &group, &logs).await
        }
    }
}

impl ClusterArgs {
    /// A client from the kubeconfig kubectl would use (or the one named), and the namespace.
    async fn connect(&self) -> anyhow::Result<commands::Target> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("failed to read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("failed to use kubeconfig {}", path.display()))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .context("failed to use the kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
            None => kube::Config::infer().await.context(
                "failed to find a Kubernetes API (no kubeconfig: set --kubeconfig or $KUBECONFIG)",
            )?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client =
            kube::Client::try_from(config).context("failed to make a Kubernetes client")?;
        Ok(commands::Target { client, namespace })
    }
}
