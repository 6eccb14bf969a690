//! Everything that makes pods real on the local control plane: Nodes, a scheduler, one
//! Docker kubelet per simulated node, the StatefulSet and Deployment controllers, a
//! volume binder and host-side Service proxies. Like real cluster components they talk to
//! the API server only through a `kube::Client` (watches and API calls), so they work
//! against any API server; Docker is the only other thing they touch, and only what they
//! created (labelled with the run's `name_prefix`).
//!
//! What a pod gets: a sandbox container holding its network namespace on the cluster's
//! bridge network, with a fixed IP for its lifetime and DNS names
//! `{hostname}.{subdomain}.{namespace}.svc[.cluster.local]` and
//! `{ip-dashed}.{namespace}.pod[.cluster.local]` (search path and `ndots:5` as in a real
//! pod), and Service names `{service}.{namespace}.svc[.cluster.local]` and headless members
//! `{hostname}.{service}.{namespace}.svc[.cluster.local]` from the cluster DNS server
//! ([`dns`], on the network's gateway); one container per spec container joining it; volumes as host directories under
//! `state_dir`; the kubeconfig at `/var/run/duomq-e2e/kubeconfig`.
//!
//! Not there (by design, for now): Services have no virtual IP (a Service name resolves to
//! its endpoints' pod IPs; from the host, reach a Service through `service_address`);
//! no PersistentVolume objects, no ControllerRevisions (a pod recreated below a
//! StatefulSet's partition gets the current template), no Events, no `kubectl logs/exec`
//! through the API, no `hostNetwork`; HTTPS probes only check that the port accepts
//! connections.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), duomq_e2e::cluster::ClusterError> {
//! use duomq_e2e::cluster::{self, ClusterOptions};
//! let opts = ClusterOptions::new("e2e-1234", std::env::temp_dir().join("e2e-1234"));
//! // The containers reach the API server at the network's gateway: learn it first.
//! let gateway = cluster::prepare_network(&opts).await?;
//! # let _ = gateway;
//! let handle = cluster::start(client, opts).await?;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service};
use kube::Client;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod api;
pub mod deployment;
pub mod dns;
pub mod docker;
#[cfg(test)]
mod fixtures;
pub mod kubelet;
pub mod names;
pub mod node;
pub mod pods;
pub mod pvc;
pub mod quantity;
pub mod scheduler;
pub mod selector;
pub mod service;
pub mod statefulset;
pub mod watch;

use docker::{DockerError, NetworkInfo};
use kubelet::{Kubelet, KubeletConfig, KubeletInformers};
use node::NodeLifecycle;
use service::ServiceProxies;
use watch::Informer;

/// How often every controller re-checks the world even without a watch event.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(5);
/// How long `service_address` waits for a new Service to get its proxy.
pub const SERVICE_PROXY_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the controllers to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// How often a dropped handle's cleanup sweeps containers before giving up on the network.
const CLEANUP_SWEEPS: usize = 10;
/// Pause between cleanup sweeps, for in-flight container creations to land.
const CLEANUP_SWEEP_PAUSE: Duration = Duration::from_millis(300);
/// The default pod sandbox image: the local base image every duomq image is built on.
pub const DEFAULT_SANDBOX_IMAGE: &str = "duomq-base:bookworm";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("failed to reach Docker")]
    Docker(#[source] DockerError),
    #[error("failed to set up the docker network {name}")]
    Network {
        name: String,
        #[source]
        source: DockerError,
    },
    #[error("failed to create the state dir {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to register the nodes")]
    RegisterNodes(#[source] kube::Error),
    #[error("no node {node} in this cluster")]
    UnknownNode { node: String },
    #[error("failed to mark node {node} failed")]
    FailNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to mark node {node} restored")]
    RestoreNode {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// An error with its causes, `outer: inner: innermost`, for logs and pod status
/// messages (the error types print only their own step).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the local cluster is made of.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Simulated node names, e.g. node-a, node-b, node-c.
    pub nodes: Vec<String>,
    /// The user-defined bridge network of all pods; created if missing (and then removed
    /// on shutdown).
    pub docker_network: String,
    /// Host dirs for claim data (`claims/{namespace}/{claim}`, kept across pods) and
    /// per-pod ConfigMap/Secret/emptyDir files (`pods/{uid}`).
    pub state_dir: PathBuf,
    /// Mounted read-only into every container at `/var/run/duomq-e2e/kubeconfig`, with
    /// `KUBECONFIG` pointing at it: how in-cluster programs reach the API server.
    pub container_kubeconfig: Option<PathBuf>,
    /// Prefix of container names and value of the cluster label; unique per run.
    pub name_prefix: String,
    /// Image of the pod sandboxes (runs `sleep infinity`, holds the network namespace).
    pub sandbox_image: String,
}

impl ClusterOptions {
    /// Three nodes (node-a, node-b, node-c), network `{name_prefix}-net`, no kubeconfig,
    /// the default sandbox image.
    pub fn new(name_prefix: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        let name_prefix = name_prefix.into();
        Self {
            nodes: ["node-a", "node-b", "node-c"].map(String::from).to_vec(),
            docker_network: format!("{name_prefix}-net"),
            state_dir: state_dir.into(),
            container_kubeconfig: None,
            name_prefix,
            sandbox_image: DEFAULT_SANDBOX_IMAGE.into(),
        }
    }
}

/// Creates the cluster's docker network if missing and returns its gateway: the address
/// on which the API server must also listen for containers to reach it (and which the
/// kubeconfig given as `container_kubeconfig` must name). Call before `start` when the
/// API server needs to know it; `start` then takes the network over.
pub async fn prepare_network(opts: &ClusterOptions) -> Result<IpAddr, ClusterError> {
    let docker = docker::connect().await.map_err(ClusterError::Docker)?;
    let network = ensure_network(&docker, opts).await?;
    Ok(IpAddr::V4(network.gateway))
}

async fn ensure_network(
    docker: &Docker,
    opts: &ClusterOptions,
) -> Result<NetworkInfo, ClusterError> {
    docker::ensure_network(docker, &opts.docker_network, &opts.name_prefix)
        .await
        .map_err(|source| ClusterError::Network {
            name: opts.docker_network.clone(),
            source,
        })
}

/// Starts the nodes and every controller against the API server behind `client`.
pub async fn start(client: Client, opts: ClusterOptions) -> Result<ClusterHandle, ClusterError> {
    let docker = docker::connect().await.map_err(ClusterError::Docker)?;
    let network = ensure_network(&docker, &opts).await?;
    let cleanup = Cleanup {
        docker: docker.clone(),
        cluster: opts.name_prefix.clone(),
        network: network.owned.then(|| network.name.clone()),
        armed: true,
    };
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| ClusterError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    macro_rules! informer {
        ($k:ty) => {{
            let (informer, task) = Informer::<$k>::start(client.clone(), cancel.clone());
            tasks.push(task);
            informer
        }};
    }
    let pods = informer!(Pod);
    let nodes_informer = informer!(Node);
    let sets = informer!(StatefulSet);
    let deployments = informer!(Deployment);
    let services = informer!(Service);
    let claims = informer!(PersistentVolumeClaim);
    let config_maps = informer!(ConfigMap);
    let secrets = informer!(Secret);

    let nodes = NodeLifecycle::new(client.clone(), opts.nodes.clone(), network.gateway);
    nodes
        .register()
        .await
        .map_err(ClusterError::RegisterNodes)?;

    // Service names for the pods; without the port (not root, say) pods still resolve
    // their own names.
    let dns_server = match dns::bind(IpAddr::V4(network.gateway)).await {
        Ok(socket) => {
            tasks.push(tokio::spawn(dns::serve(socket, services.clone(), pods.clone(), cancel.clone())));
            Some(IpAddr::V4(network.gateway))
        }
        Err(error) => {
            warn!(error = %error_chain(&error), "no cluster DNS: Service names will not resolve in pods");
            None
        }
    };

    let kubelet = Kubelet::new(
        client.clone(),
        docker.clone(),
        KubeletConfig {
            nodes: opts.nodes.clone(),
            cluster: opts.name_prefix.clone(),
            network: network.clone(),
            state_dir: opts.state_dir.clone(),
            kubeconfig: opts.container_kubeconfig.clone(),
            sandbox_image: opts.sandbox_image.clone(),
            dns_server,
        },
        KubeletInformers {
            pods: pods.clone(),
            config_maps,
            secrets,
            claims: claims.clone(),
        },
        cancel.child_token(),
    );
    let proxies = ServiceProxies::new();
    tasks.push(tokio::spawn(nodes.clone().run(cancel.clone())));
    tasks.push(tokio::spawn(scheduler::run(
        client.clone(),
        pods.clone(),
        nodes_informer,
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(kubelet.clone().run()));
    tasks.push(tokio::spawn(statefulset::run(
        client.clone(),
        sets,
        pods.clone(),
        claims.clone(),
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(deployment::run(
        client.clone(),
        deployments,
        pods.clone(),
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(pvc::run(
        client.clone(),
        claims,
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(proxies.clone().run(
        client.clone(),
        services,
        pods.clone(),
        cancel.clone(),
    )));
    info!(cluster = %opts.name_prefix, nodes = ?opts.nodes, network = %network.name, gateway = %network.gateway, "local cluster started");
    Ok(ClusterHandle {
        opts,
        network,
        kubelet,
        nodes,
        pods,
        proxies,
        cancel,
        tasks,
        cleanup,
    })
}

/// The running local cluster. Dropping it without `shutdown` still removes its
/// containers and network (blocking, on a helper thread).
pub struct ClusterHandle {
    opts: ClusterOptions,
    network: NetworkInfo,
    kubelet: Arc<Kubelet>,
    nodes: Arc<NodeLifecycle>,
    pods: Informer<Pod>,
    proxies: ServiceProxies,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    cleanup: Cleanup,
}

impl ClusterHandle {
    fn check_node(&self, node: &str) -> Result<(), ClusterError> {
        if self.opts.nodes.iter().any(|n| n == node) {
            Ok(())
        } else {
            Err(ClusterError::UnknownNode { node: node.into() })
        }
    }

    /// Fails `node`: its containers get SIGKILL, its kubelet stops acting, the Node turns
    /// Ready Unknown with the unreachable taints and its pods turn not ready.
    pub async fn fail_node(&self, node: &str) -> Result<(), ClusterError> {
        self.check_node(node)?;
        self.kubelet.stop_node(node).await;
        self.nodes
            .mark_failed(node, &self.pods)
            .await
            .map_err(|source| ClusterError::FailNode {
                node: node.into(),
                source,
            })
    }

    /// Brings `node` back: Ready again, and its kubelet restarts its pods' containers.
    pub async fn restore_node(&self, node: &str) -> Result<(), ClusterError> {
        self.check_node(node)?;
        self.nodes
            .mark_restored(node)
            .await
            .map_err(|source| ClusterError::RestoreNode {
                node: node.into(),
                source,
            })?;
        self.kubelet.restore_node(node);
        Ok(())
    }

    /// The Docker container (name) of the pod's first container, e.g. for
    /// `docker kill -s KILL`; None when the pod is unknown or not bound here.
    pub fn container_of(&self, namespace: &str, pod: &str) -> Option<String> {
        self.kubelet.container_of(namespace, pod)
    }

    /// The docker network's gateway: the host as containers see it.
    pub fn gateway_ip(&self) -> IpAddr {
        IpAddr::V4(self.network.gateway)
    }

    /// The host loopback address that forwards to `port` (name or number) of the Service;
    /// waits up to `SERVICE_PROXY_WAIT` for a new Service's proxy.
    pub async fn service_address(
        &self,
        namespace: &str,
        service: &str,
        port: &str,
    ) -> Option<SocketAddr> {
        let deadline = tokio::time::Instant::now() + SERVICE_PROXY_WAIT;
        loop {
            if let Some(addr) = self.proxies.address(namespace, service, port) {
                return Some(addr);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every controller, removes every container it started and the network if it
    /// created it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            if tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err() {
                warn!("a controller did not stop in time");
            }
        }
        self.kubelet.shutdown().await;
        if let Some(network) = &self.cleanup.network {
            if !docker::remove_network(&self.cleanup.docker, network).await {
                // A straggler: the armed cleanup sweeps again.
                return;
            }
        }
        self.cleanup.armed = false;
        info!(cluster = %self.opts.name_prefix, "local cluster stopped");
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
        // Workers must not start containers while `Cleanup` removes them.
        drop(self.kubelet.abort_workers());
    }
}

/// Removes the cluster's containers and network when the handle is dropped without
/// `shutdown` (a failed test): on its own thread and runtime, since Drop cannot await.
struct Cleanup {
    docker: Docker,
    cluster: String,
    network: Option<String>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let docker = self.docker.clone();
        let cluster = self.cluster.clone();
        let network = self.network.clone();
        let worker = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(error) => {
                    warn!(%error, "failed to start the cleanup runtime; containers may be left");
                    return;
                }
            };
            runtime.block_on(async {
                // The daemon connection of the dropped runtime is unusable here.
                let docker = docker::connect().await.unwrap_or(docker);
                // A request of an aborted worker may still land: sweep until the network
                // has no endpoints left.
                for _ in 0..CLEANUP_SWEEPS {
                    kubelet::remove_cluster_containers(&docker, &cluster).await;
                    match &network {
                        Some(network) if docker::remove_network(&docker, network).await => break,
                        Some(_) => tokio::time::sleep(CLEANUP_SWEEP_PAUSE).await,
                        None => break,
                    }
                }
            });
        });
        if worker.join().is_err() {
            warn!("cluster cleanup panicked");
        }
    }
}
