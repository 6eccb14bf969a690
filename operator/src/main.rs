//! `duomq-operator`: runs the BrokerGroup controller, or renders, prints and generates what it
//! would apply, offline.

use duomq_operator::leader;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use duomq_operator::api::BrokerGroup;
use duomq_operator::controller::{self, metrics::Metrics, HttpBrokerStatus};
use duomq_operator::names::SWITCHOVER_ANNOTATION;
use duomq_operator::render::{generated_secrets, parse_documents, render_documents};
use kube::CustomResourceExt;
use prometheus_client::registry::Registry;
use tracing::info;

/// The CRD file, relative to the repository root, and its copy in the Helm chart.
const CRD_FILE: &str = "crds/brokergroups.duomq.io.yaml";
const CHART_CRD_FILE: &str = "charts/duomq-operator/crds/brokergroups.duomq.io.yaml";

#[derive(Parser)]
#[command(
    name = "duomq-operator",
    version,
    about = "Kubernetes operator for duomq: turns BrokerGroups into live/backup broker groups, keeps them running and reports failovers in their status."
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
    /// Run the controller against the cluster of the current kubeconfig (or the pod's service
    /// account). Serves /healthz, /readyz and /metrics on --listen.
    Run {
        /// Watch BrokerGroups in this namespace only (default: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Address of the health and metrics endpoint.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Log format: text or json.
        #[arg(long, env = "DUOMQ_OPERATOR_LOG_FORMAT", default_value = "text")]
        log_format: String,
        #[command(flatten)]
        election: ElectionArgs,
    },
    /// Print every object the operator would create for the BrokerGroups in FILE, without a
    /// cluster: for review, GitOps and debugging. BrokerGroups in the same file can be each
    /// other's network connector targets.
    Render {
        /// A YAML file with one or more BrokerGroups ("-" reads standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for BrokerGroups that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Hand the live role of one group to another member, with nothing lost: sets the
    /// duomq.io/switchover annotation on the BrokerGroup; the running operator asks the
    /// group's live to hand over (it refuses unless the target is an in-sync backup),
    /// records lastFailover.reason Switchover and removes the annotation once the target is
    /// live. A refusal shows as an Event and the Degraded condition (SwitchoverFailed).
    Switchover {
        /// The BrokerGroup's name.
        #[arg(long)]
        name: String,
        /// The group to switch over, e.g. orders-g0 (see status.groups[].name).
        #[arg(long)]
        group: String,
        /// The member pod that becomes live, e.g. orders-g0-1.
        #[arg(long)]
        to: String,
        /// The BrokerGroup's namespace (default: the kubeconfig's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Wait until the target is live (or this long has passed), e.g. 2m; 0 returns at once.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Print the BrokerGroup CustomResourceDefinition.
    Crd,
    /// Write the CRD into crds/ and the Helm chart (run from the repository root).
    Generate {
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

/// Leader election among replicas of `run`; see the README's "Operator high availability".
#[derive(clap::Args)]
#[command(next_help_heading = "Leader election")]
struct ElectionArgs {
    /// Elect one leader among the operator's replicas on the Lease duomq-operator-leader in
    /// the operator's namespace (POD_NAMESPACE, else the kubeconfig's): only the leader runs
    /// the controller; the others stand by (Ready, /readyz says "standby") and one takes over
    /// when the leader's claim lapses. The default.
    #[arg(long, overrides_with = "no_leader_election")]
    leader_election: bool,
    /// Run the controller at once, with no election: for a single local run only. Two
    /// operators running this way act at once.
    #[arg(long, overrides_with = "leader_election")]
    no_leader_election: bool,
    /// How long the leader's claim stands without a renewal; a standby takes over once it
    /// has seen the Lease unchanged this long. Whole seconds.
    #[arg(long, env = "DUOMQ_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    leader_lease_duration: std::time::Duration,
    /// The leader stops the controller and exits (non-zero) when no renewal got through for
    /// this long since the last one was sent; shorter than the lease duration, so it stops
    /// before a standby may take over.
    #[arg(long, env = "DUOMQ_OPERATOR_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    leader_renew_deadline: std::time::Duration,
    /// How often the leader renews its claim.
    #[arg(long, env = "DUOMQ_OPERATOR_RENEW_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    leader_renew_interval: std::time::Duration,
    /// How often a standby looks at the Lease, and the leader retries a failed renewal.
    #[arg(long, env = "DUOMQ_OPERATOR_RETRY_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    leader_retry_interval: std::time::Duration,
}

impl ElectionArgs {
    /// The election settings, or `None` with `--no-leader-election`.
    fn settings(&self, client: &kube::Client) -> Option<leader::ElectionSettings> {
        if self.no_leader_election {
            return None;
        }
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_string());
        Some(leader::ElectionSettings {
            lease_duration: self.leader_lease_duration,
            renew_deadline: self.leader_renew_deadline,
            renew_interval: self.leader_renew_interval,
            retry_interval: self.leader_retry_interval,
            ..leader::ElectionSettings::new(
                namespace,
                duomq_operator::names::OPERATOR_LEASE,
                leader::default_identity(),
            )
        })
    }
}

fn crd_yaml() -> anyhow::Result<String> {
    let body = serde_yaml::to_string(&BrokerGroup::crd()).context("failed to serialize the CRD")?;
    Ok(format!(
        "# Generated by `duomq-operator generate` from operator/src/api; do not edit.\n{body}"
    ))
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
        Command::Run {
            namespace,
            listen,
            log_format,
            election,
        } => {
            init_tracing(&log_format);
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            runtime.block_on(run(namespace, listen, election))
        }
        Command::Render { file, namespace } => {
            print!("{}", render_file(&file, &namespace)?);
            Ok(())
        }
        Command::Switchover {
            name,
            group,
            to,
            namespace,
            wait,
        } => {
            init_tracing("text");
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
            runtime.block_on(switchover(&name, &group, &to, namespace, wait))
        }
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Generate { root } => generate(&root),
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    // Colours only on a terminal: `kubectl logs` of the pod shows plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn generate(root: &Path) -> anyhow::Result<()> {
    let crd = crd_yaml()?;
    for file in [CRD_FILE, CHART_CRD_FILE] {
        let path = root.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        std::fs::write(&path, &crd)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("wrote {file}");
    }
    Ok(())
}

/// Renders every BrokerGroup of a YAML file. The output holds no secret: the generated
/// cluster-credentials Secrets are named on stderr instead.
fn render_file(file: &Path, namespace: &str) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("failed to read standard input")?
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("failed to read {}", file.display()))?
    };
    let groups = parse_documents(&text, namespace)?;
    let rendered = render_documents(&groups)?;
    for secret in generated_secrets(&groups) {
        eprintln!(
            "note: Secret {secret} (the cluster credentials) is not printed, so the output holds no password: \
             the operator creates it, or create it first: kubectl create secret generic {secret} \
             --from-literal={user}={default_user} --from-literal={password}=<password>",
            user = duomq_operator::names::CLUSTER_USER_KEY,
            default_user = duomq_operator::names::DEFAULT_CLUSTER_USER,
            password = duomq_operator::names::CLUSTER_PASSWORD_KEY,
        );
    }
    Ok(rendered)
}

/// Sets the switchover annotation, then optionally waits for the target to be live.
async fn switchover(
    name: &str,
    group: &str,
    to: &str,
    namespace: Option<String>,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    use kube::api::Api;
    let client = kube::Client::try_default()
        .await
        .context("failed to find a Kubernetes API (kubeconfig or in-cluster service account)")?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<BrokerGroup> = Api::namespaced(client, &namespace);
    let bg = api
        .get(name)
        .await
        .with_context(|| format!("failed to read BrokerGroup {namespace}/{name}"))?;
    let text = duomq_operator::controller::request_switchover(&api, &bg, group, to).await?;
    println!("asked for a switchover of {group} to {to} ({SWITCHOVER_ANNOTATION}={text})");
    if wait.is_zero() {
        println!(
            "the operator carries it out; `kubectl describe brokergroup {name}` shows its events"
        );
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let bg = api
            .get(name)
            .await
            .with_context(|| format!("failed to read BrokerGroup {namespace}/{name}"))?;
        let status = bg.status.unwrap_or_default();
        let live = status
            .groups
            .iter()
            .find(|g| g.name == group)
            .and_then(|g| g.live.clone());
        if live.as_deref() == Some(to) {
            println!("{to} is live");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let why = status
                .conditions
                .iter()
                .find(|c| c.reason == "SwitchoverFailed" && c.status == "True")
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            anyhow::bail!(
                "{to} is not live after {wait:?} (live: {}){why}",
                live.as_deref().unwrap_or("none")
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

struct Http {
    registry: Registry,
    ready: std::sync::atomic::AtomicBool,
    /// This replica's part in the leader election; `None` without one.
    role: Option<tokio::sync::watch::Receiver<leader::Role>>,
}

async fn run(
    namespace: Option<String>,
    listen: SocketAddr,
    election: ElectionArgs,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to find a Kubernetes API (kubeconfig or in-cluster service account)")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let elector = election
        .settings(&client)
        .map(|settings| leader::Elector::new(client.clone(), settings))
        .transpose()?
        .map(|elector| {
            elector.with_metrics(leader::LeaderMetrics {
                leader: metrics.leader.clone(),
                transitions: metrics.leader_transitions.clone(),
            })
        });
    let ctx = Arc::new(controller::Context::new(
        client.clone(),
        metrics.clone(),
        Arc::new(HttpBrokerStatus),
    ));
    let http = Arc::new(Http {
        registry,
        ready: std::sync::atomic::AtomicBool::new(false),
        role: elector.as_ref().map(leader::Elector::role),
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(http.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    // The bound address: with port 0 the system picked one.
    let listen = listener.local_addr().unwrap_or(listen);
    info!(%listen, namespace = namespace.as_deref().unwrap_or("(all)"), "duomq-operator starting");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // A standby is Ready: it is healthy, and only the Lease decides who acts.
    http.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let controller = controller::run(client, namespace, ctx);
    let outcome = match &elector {
        None => {
            info!("leader election is off: running the controller at once");
            metrics.leader.set(1);
            controller.await;
            Ok(())
        }
        Some(elector) => {
            let s = elector.settings();
            info!(lease = %s.lease, namespace = %s.namespace, identity = %s.identity, "leader election: standing by until this replica holds the Lease");
            // On losing the Lease the controller is already dropped: exit non-zero, and the
            // Deployment restarts this replica as a standby.
            elector.lead(controller).await.map_err(anyhow::Error::from)
        }
    };
    server.abort();
    info!("duomq-operator stopped");
    outcome
}

/// Ready once serving; the body says whether this replica leads or stands by.
async fn readyz(State(http): State<Arc<Http>>) -> impl IntoResponse {
    if !http.ready.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string());
    }
    let role = match http.role.as_ref().map(|r| r.borrow().clone()) {
        None => "ready\n".to_string(),
        Some(leader::Role::Leader) => "ready: leader\n".to_string(),
        Some(leader::Role::Standby {
            leader: Some(holder),
        }) => {
            format!("ready: standby (leader: {holder})\n")
        }
        Some(leader::Role::Standby { leader: None }) => "ready: standby\n".to_string(),
    };
    (StatusCode::OK, role)
}

async fn metrics_text(State(http): State<Arc<Http>>) -> impl IntoResponse {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &http.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
