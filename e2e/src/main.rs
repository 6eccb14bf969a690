//! `duomq-e2e`: a local Kubernetes control plane for trying duomq without a cluster. `up`
//! starts the API server, four simulated nodes (node-a … node-d) whose pods run as Docker containers, installs
//! the operator from its image and applies an example BrokerGroup, then prints how to use
//! kubectl with it.
//!
//! A failure prints one line, `error: <what failed>: <why>`, and exits 1; `--verbose` prints
//! each cause on its own line, and a backtrace when `RUST_BACKTRACE=1` is set (without
//! `--verbose`, `RUST_BACKTRACE` adds nothing to the line).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use duomq_e2e::env::{build_images, kubectl, repo_root, require_base_image_tools, require_tools, LocalControlPlane};

#[derive(Parser)]
#[command(name = "duomq-e2e", version, about = "A local Kubernetes control plane (API server, scheduler, StatefulSet and Deployment controllers, kubelets running pods as Docker containers) for trying and testing duomq without a cluster.")]
struct Cli {
    /// On failure, print every cause on its own line (and a backtrace with
    /// RUST_BACKTRACE=1), not one line.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the control plane, install the operator, apply an example and keep running
    /// until Ctrl-C (which removes every container it started).
    Up {
        /// Where volumes, kubeconfigs and logs go.
        #[arg(long, default_value = "e2e-state")]
        state_dir: PathBuf,
        /// BrokerGroup to apply once the operator runs (empty: none).
        #[arg(long, default_value = "manifests/examples/pair.yaml")]
        example: String,
        /// Rebuild the broker and operator images even if they hold the binaries already.
        #[arg(long)]
        rebuild_images: bool,
        /// Start only the control plane: no operator, no example.
        #[arg(long)]
        bare: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, cli.verbose) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", report(&error, cli.verbose));
            ExitCode::FAILURE
        }
    }
}

/// What a failure prints: by default one line, the causes joined by `: ` and any output
/// they quote folded onto that line; with `verbose`, anyhow's report (each cause on its own
/// line, then the backtrace when one was captured).
fn report(error: &anyhow::Error, verbose: bool) -> String {
    if verbose {
        return format!("error: {error:?}");
    }
    let chain = error.chain().map(|cause| cause.to_string().split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | "));
    format!("error: {}", chain.collect::<Vec<_>>().join(": "))
}

/// Logs go to `log` (the terminal keeps the steps and the KUBECONFIG line), or to stderr
/// with `verbose`.
fn init_logs(log: &std::path::Path, verbose: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    if verbose {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        let file = std::fs::File::create(log).with_context(|| format!("failed to create the log file {}", log.display()))?;
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
    }
    Ok(())
}

fn run(command: Cmd, verbose: bool) -> anyhow::Result<()> {
    let Cmd::Up { state_dir, example, rebuild_images, bare } = command;
    require_tools()?;
    if !bare {
        require_base_image_tools()?;
    }
    let state_dir = std::path::absolute(&state_dir).with_context(|| format!("bad --state-dir {}", state_dir.display()))?;
    std::fs::create_dir_all(&state_dir).with_context(|| format!("failed to create the state directory {}", state_dir.display()))?;
    let log = state_dir.join("duomq-e2e.log");
    init_logs(&log, verbose)?;
    if !verbose {
        println!("logs of the control plane: {}", log.display());
    }
    if !bare {
        let binaries = std::env::current_exe().context("failed to find this program's path")?.parent().map(PathBuf::from).unwrap_or_default();
        println!("building the broker and operator images (the first time: the base image too, with debootstrap, ~2 min)");
        for image in build_images(&binaries, rebuild_images, &state_dir)? {
            println!("image {image}");
        }
    }
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(async move {
        println!("starting the local control plane: an API server, nodes {}", duomq_e2e::env::NODES.join(", "));
        let prefix = format!("duomq-e2e-{}", std::process::id());
        let plane = LocalControlPlane::start(&state_dir, &prefix).await?;
        let kc = plane.kubeconfig.clone();
        if !bare {
            println!("installing the operator (manifests/install.yaml) and waiting until it is available");
            let install = repo_root().join("manifests/install.yaml");
            kubectl(&kc, &["apply", "--server-side", "-f", &install.to_string_lossy()])?;
            kubectl(&kc, &["-n", "duomq-system", "wait", "--for=condition=Available", "deployment", "--all", "--timeout=120s"])?;
            if !example.is_empty() {
                println!("applying {example}");
                kubectl(&kc, &["apply", "-f", &repo_root().join(&example).to_string_lossy()])?;
            }
        }
        println!(
            "\nThe local control plane is up.\n\n  export KUBECONFIG={}\n  kubectl get nodes\n  kubectl get brokergroups -w\n  kubectl get pods -o wide\n  kubectl describe brokergroup pair\n  kubectl logs pair-g0-0\n\nServices are reachable on this machine at the address in their e2e.duomq.io/proxy-<port> annotation:\n  kubectl get service pair-g0 -o jsonpath='{{.metadata.annotations}}'\n\nCtrl-C stops it and removes its containers.",
            kc.display()
        );
        tokio::signal::ctrl_c().await.context("failed to wait for Ctrl-C")?;
        println!("stopping: removing the containers and the network");
        tokio::time::timeout(Duration::from_secs(120), plane.shutdown()).await.ok();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_error_with_causes_and_quoted_output_when_reported_should_print_one_line() {
        let error = anyhow::anyhow!("build-base: error: debootstrap is not installed\n").context("images/build.sh broker failed");
        let line = report(&error, false);
        assert_eq!(line, "error: images/build.sh broker failed: build-base: error: debootstrap is not installed");
        assert!(!line.contains('\n'));
        assert!(report(&error, true).contains("Caused by:"));
    }
}
