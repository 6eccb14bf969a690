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

/// Names of the simulated nodes of the local control plane: four, enough for two host pairs
/// (`manifests/examples/host-pairs-network.yaml`).
pub const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];

#[derive(Debug, Error)]
pub enum EnvError {
    #[error("{tool} is missing: {install}")]
    Missing { tool: &'static str, install: &'static str },
    #[error("failed to build image {image} from {binary}: {reason} (full output in {log})")]
    ImageBuild { image: String, binary: PathBuf, reason: String, log: PathBuf },
    #[error("failed to write {path}")]
    WriteLog { path: PathBuf, source: std::io::Error },
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

/// The Docker label `images/build.sh` puts on an image: the SHA-256 of the binary in it.
pub const BINARY_SHA256_LABEL: &str = "io.duomq.binary-sha256";
/// The Docker label `images/build.sh` puts on an image: the SHA-256 of its Dockerfile.
pub const DOCKERFILE_SHA256_LABEL: &str = "io.duomq.dockerfile-sha256";
/// The local base image `images/build.sh` builds on (with debootstrap, when missing).
pub const BASE_IMAGE: &str = "duomq-base:bookworm";

/// What [`ensure_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The image of that tag was built from the same binary: kept.
    Reused,
    /// Built now: the tag was missing, held another binary, or a rebuild was asked for.
    Built,
}

/// An image and the binary it holds.
#[derive(Debug, Clone)]
pub struct Image {
    pub tag: String,
    pub binary: PathBuf,
    pub sha256: String,
    pub outcome: ImageOutcome,
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.outcome {
            ImageOutcome::Reused => "reused: built from this binary before",
            ImageOutcome::Built => "built now",
        };
        write!(f, "{} holds {} (sha256 {}, {how})", self.tag, self.binary.display(), &self.sha256[..self.sha256.len().min(12)])
    }
}

/// The SHA-256 of a file, as `sha256sum` prints it.
pub fn sha256_of(path: &Path) -> Result<String, EnvError> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().filter(|h| h.len() == 64).map(String::from).ok_or_else(|| EnvError::Failed {
        command: format!("sha256sum {}", path.display()),
        output: text.into_owned(),
    })
}

/// The value of `label` on a local image; `None` when the image or the label is missing.
pub fn image_label(tag: &str, label: &str) -> Option<String> {
    let format = format!("{{{{index .Config.Labels \"{label}\"}}}}");
    let out = Command::new("docker").args(["image", "inspect", "--format", &format, tag]).output().ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !value.is_empty() && value != "<no value>").then_some(value)
}

/// Makes image `tag` hold `binary` (`name`: `broker` or `operator`): an image of that tag
/// built from the same binary and Dockerfile (its [`BINARY_SHA256_LABEL`] and
/// [`DOCKERFILE_SHA256_LABEL`]) is kept unless `rebuild`; any other is rebuilt with `images/build.sh`, whose output goes to `log_dir/image-<name>.log`.
pub fn ensure_image(name: &str, tag: &str, binary: &Path, rebuild: bool, log_dir: &Path) -> Result<Image, EnvError> {
    if !binary.is_file() {
        return Err(EnvError::Failed {
            command: format!("images/build.sh {name}"),
            output: format!("{} is missing: run `cargo build -p duomq-{name}` first", binary.display()),
        });
    }
    let sha256 = sha256_of(binary)?;
    let image = |outcome| Image { tag: tag.to_string(), binary: binary.to_path_buf(), sha256: sha256.clone(), outcome };
    let held = image_label(tag, BINARY_SHA256_LABEL);
    let dockerfile = sha256_of(&repo_root().join(format!("images/{name}.Dockerfile")))?;
    let same_dockerfile = image_label(tag, DOCKERFILE_SHA256_LABEL).as_deref() == Some(dockerfile.as_str());
    if !rebuild && same_dockerfile && held.as_deref() == Some(sha256.as_str()) {
        info!(image = %tag, sha256 = %sha256, "image holds this binary; reused");
        return Ok(image(ImageOutcome::Reused));
    }
    info!(image = %tag, binary = %binary.display(), held = held.as_deref().unwrap_or("nothing"), "building image");
    let previous = image_id(tag);
    let mut command = Command::new(repo_root().join("images/build.sh"));
    command.arg(name).arg("--binary").arg(binary).arg("--tag").arg(tag);
    run_build(command, tag, binary, &log_dir.join(format!("image-{name}.log")))?;
    // The image the tag held before, now untagged: removed unless a container still uses it
    // (then Docker refuses, harmlessly), so rebuilds do not pile up on the disk.
    if let Some(old) = previous.filter(|old| image_id(tag).as_ref() != Some(old)) {
        let _ = Command::new("docker").args(["image", "rm", &old]).output();
    }
    Ok(image(ImageOutcome::Built))
}

/// The ID of a local image, `None` when there is none of that tag.
fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", tag]).output().ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !id.is_empty()).then_some(id)
}

/// Fails with what to install when building an image would need the base image and the
/// tool that builds it (debootstrap) is missing, before anything else starts.
pub fn require_base_image_tools() -> Result<(), EnvError> {
    let base = Command::new("docker").args(["image", "inspect", BASE_IMAGE]).output().is_ok_and(|o| o.status.success());
    let debootstrap = ["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"].iter().any(|d| Path::new(d).join("debootstrap").is_file());
    if base || debootstrap {
        return Ok(());
    }
    Err(EnvError::Missing {
        tool: "debootstrap",
        install: "apt-get install debootstrap (needed once, to build the local base image duomq-base:bookworm), or run scripts/up, which installs it",
    })
}

/// Makes the broker and operator images (the tags the chart and the operator use) hold the
/// binaries in `binaries` (cargo builds every workspace binary for `cargo test --workspace`);
/// see [`ensure_image`].
pub fn build_images(binaries: &Path, rebuild: bool, log_dir: &Path) -> Result<Vec<Image>, EnvError> {
    let (broker, operator) = image_tags();
    [("broker", broker), ("operator", operator)]
        .into_iter()
        .map(|(name, tag)| ensure_image(name, &tag, &binaries.join(format!("duomq-{name}")), rebuild, log_dir))
        .collect()
}

/// The PostgreSQL image of the shared-database scenarios (`images/build-postgres.sh`).
pub const POSTGRES_IMAGE: &str = "duomq/postgres:15";

/// Makes [`POSTGRES_IMAGE`] hold PostgreSQL as `images/postgres.Dockerfile` says: the
/// script keeps an image built from the same files and builds it otherwise (Debian's
/// postgresql-15 with apt, on the local base image), its output in
/// `log_dir/image-postgres.log`.
pub fn ensure_postgres_image(log_dir: &Path) -> Result<String, EnvError> {
    let mut command = Command::new(repo_root().join("images/build-postgres.sh"));
    command.arg("--tag").arg(POSTGRES_IMAGE);
    let dockerfile = repo_root().join("images/postgres.Dockerfile");
    run_build(command, POSTGRES_IMAGE, &dockerfile, &log_dir.join("image-postgres.log"))?;
    Ok(POSTGRES_IMAGE.to_string())
}

/// Runs an image build script of `images/` for `image` (built from `source`), its whole
/// output in `log`; a failure names the last line the script printed.
fn run_build(mut command: Command, image: &str, source: &Path, log: &Path) -> Result<(), EnvError> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(EnvError::StateDir)?;
    }
    let shown = format!("{command:?}");
    let output = command.output().map_err(|source| EnvError::Spawn { command: shown.clone(), source })?;
    let text = format!("$ {shown}\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    std::fs::write(log, &text).map_err(|source| EnvError::WriteLog { path: log.to_path_buf(), source })?;
    if !output.status.success() {
        // The scripts end on the line that says what went wrong.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("the image build failed").trim().to_string();
        return Err(EnvError::ImageBuild { image: image.to_string(), binary: source.to_path_buf(), reason, log: log.to_path_buf() });
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
