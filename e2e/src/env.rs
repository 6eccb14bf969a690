//! Where end-to-end scenarios run: on a real cluster when `E2E_KUBECONFIG` names one
//! (nothing is built or started), otherwise on the local control plane this crate provides,
//! started here with the operator and broker images built from this checkout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::info;

use crate::{apiserver, cluster};

/// Names of the simulated nodes of the local control plane.
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

#[derive(Debug, Error)]
pub enum EnvError {
    #[error("{tool} is required for the end-to-end tests: {install}")]
    Missing { tool: &'static str, install: &'static str },
    #[error("failed to run {command}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {output}")]
    Failed { command: String, output: String },
    #[error("failed to start the local API server")]
    ApiServer(#[from] apiserver::ApiServerError),
    #[error("failed to start the local cluster")]
    Cluster(#[from] cluster::ClusterError),
    #[error("failed to create a state directory")]
    StateDir(#[source] std::io::Error),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
}

/// The repository root (this crate lives in `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The image tags the chart and the operator use by default.
pub fn image_tags() -> (String, String) {
    let version = env!("CARGO_PKG_VERSION");
    (format!("duomq/broker:{version}"), format!("duomq/operator:{version}"))
}

fn run(command: &mut Command) -> Result<Output, EnvError> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|source| EnvError::Spawn { command: shown.clone(), source })?;
    if !output.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        return Err(EnvError::Failed { command: shown, output: text });
    }
    Ok(output)
}

/// Fails with what to install when kubectl, all a cluster of `E2E_KUBECONFIG` needs, is missing.
pub fn require_kubectl() -> Result<(), EnvError> {
    match Command::new("kubectl").arg("version").arg("--client").output() {
        Ok(_) => Ok(()),
        Err(_) => Err(EnvError::Missing { tool: "kubectl", install: "install kubectl (the Kubernetes CLI) on the PATH" }),
    }
}

/// Fails with what to install when a tool the local control plane needs is missing.
pub fn require_tools() -> Result<(), EnvError> {
    require_kubectl()?;
    match Command::new("docker").arg("info").output() {
        Err(_) => Err(EnvError::Missing { tool: "docker", install: "install Docker Engine" }),
        Ok(o) if !o.status.success() => {
            Err(EnvError::Missing { tool: "docker", install: "start the Docker daemon (systemctl start docker, or dockerd)" })
        }
        Ok(_) => Ok(()),
    }
}

/// Builds the broker and operator images from binaries next to this one (cargo builds every
/// workspace binary for `cargo test --workspace`), unless an image of that tag exists and
/// `rebuild` is false.
pub fn build_images(binaries: &Path, rebuild: bool) -> Result<(), EnvError> {
    let (broker, operator) = image_tags();
    for (name, tag) in [("broker", broker), ("operator", operator)] {
        let exists = Command::new("docker").args(["image", "inspect", &tag]).output().is_ok_and(|o| o.status.success());
        if exists && !rebuild {
            continue;
        }
        let binary = binaries.join(format!("duomq-{name}"));
        if !binary.exists() {
            return Err(EnvError::Failed {
                command: format!("images/build.sh {name}"),
                output: format!("{} is missing: run `cargo build -p duomq-{name}` first", binary.display()),
            });
        }
        info!(image = %tag, "building image");
        run(Command::new(repo_root().join("images/build.sh")).arg(name).arg("--binary").arg(&binary).arg("--tag").arg(&tag))?;
    }
    Ok(())
}

/// The local control plane: API server, nodes, kubelets and controllers.
pub struct LocalControlPlane {
    pub api: apiserver::ApiServerHandle,
    pub cluster: cluster::ClusterHandle,
    /// Kubeconfig for programs on this machine (kubectl, tests).
    pub kubeconfig: PathBuf,
    pub state_dir: PathBuf,
}

impl LocalControlPlane {
    /// Starts everything, with state (volumes, kubeconfigs) under `state_dir`.
    pub async fn start(state_dir: &Path, name_prefix: &str) -> Result<LocalControlPlane, EnvError> {
        std::fs::create_dir_all(state_dir).map_err(EnvError::StateDir)?;
        let mut options = cluster::ClusterOptions::new(name_prefix, state_dir.join("cluster"));
        options.nodes = NODES.iter().map(|n| n.to_string()).collect();
        let gateway = cluster::prepare_network(&options).await?;
        let kubeconfig = state_dir.join("kubeconfig");
        let api = apiserver::start(apiserver::ApiServerOptions {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0)), SocketAddr::new(gateway, 0)],
            kubeconfig: Some(kubeconfig.clone()),
            watch_history: 10_000,
        })
        .await?;
        // Containers reach the API server on the network's gateway.
        let gateway_text = gateway.to_string();
        let inside = api.urls().into_iter().find(|u| u.contains(&gateway_text)).unwrap_or_else(|| api.url());
        let container_kubeconfig = state_dir.join("kubeconfig-in-cluster");
        api.write_kubeconfig(&container_kubeconfig, &inside)?;
        options.container_kubeconfig = Some(container_kubeconfig);
        let cluster = cluster::start(api.client(), options).await?;
        info!(api = %api.url(), kubeconfig = %kubeconfig.display(), "local control plane up");
        Ok(LocalControlPlane { api, cluster, kubeconfig, state_dir: state_dir.to_path_buf() })
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
        self.api.shutdown().await;
    }
}

/// Runs kubectl against `kubeconfig`, returning stdout; an error carries stderr.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, EnvError> {
    let out = run(Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it yields a value or `timeout` passes.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T, EnvError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(EnvError::Timeout { what: what.to_string(), after: timeout });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
