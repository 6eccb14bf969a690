//! The kubelet: one logical kubelet per simulated node, all in this process, running pods
//! as Docker containers. A dispatcher starts one worker per pod bound to a live node (like
//! the real kubelet's pod workers) and wakes it on pod changes and on Docker events of its
//! containers; `worker` syncs a pod. Failing a node aborts its workers and SIGKILLs its
//! containers; restoring it starts workers again, which restart the dead containers.
//!
//! It learns everything through the API (informers) and Docker; it writes only pod status
//! (status subresource) and the final DELETE of a gracefully deleted pod.

mod container;
mod probe;
mod status;
mod volumes;
mod worker;

pub use container::{expand, resolve_env, ConfigError, ObjectLookup, PodContext};
pub use probe::{resolve_target, ProbeTarget, ProbeTargetError};
pub use status::{pod_status, ContainerView, PodView};
pub use volumes::{claim_dir, plan_volume, VolumeError, VolumeFile, VolumePlan};

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::docker::{self, IpAllocator, NetworkInfo};
use super::names;
use super::watch::Informer;
use super::RESYNC_PERIOD;
use crate::cluster::error_chain;

/// How long to wait before re-subscribing to Docker events after the stream broke.
const EVENTS_RETRY: Duration = Duration::from_secs(1);

/// The informers the kubelet reads.
#[derive(Clone)]
pub struct KubeletInformers {
    pub pods: Informer<Pod>,
    pub config_maps: Informer<ConfigMap>,
    pub secrets: Informer<Secret>,
    pub claims: Informer<PersistentVolumeClaim>,
}

impl ObjectLookup for KubeletInformers {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.config_maps
            .get(Some(namespace), name)
            .map(|c| (*c).clone())
    }

    /// The Secret with `stringData` folded into `data`, as a real API server stores it
    /// (a server that keeps `stringData` as written still works here).
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        let mut secret = (*self.secrets.get(Some(namespace), name)?).clone();
        if let Some(strings) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(Default::default);
            for (k, v) in strings {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
        Some(secret)
    }
}

/// Settings of the kubelets.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub nodes: Vec<String>,
    pub cluster: String,
    pub network: NetworkInfo,
    pub state_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub sandbox_image: String,
    /// The cluster DNS server pod sandboxes use (Docker's embedded resolver forwards to
    /// it what it does not know); None: Docker's default.
    pub dns_server: Option<IpAddr>,
}

struct WorkerHandle {
    node: String,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

/// The kubelets of all simulated nodes.
pub struct Kubelet {
    client: Client,
    docker: Docker,
    config: KubeletConfig,
    informers: KubeletInformers,
    failed: Mutex<BTreeSet<String>>,
    workers: Mutex<HashMap<String, WorkerHandle>>,
    ips: Mutex<IpAllocator>,
    wake: Arc<Notify>,
    /// Ends every pod worker (shutdown, or the cluster handle dropped).
    cancel: CancellationToken,
}

impl Kubelet {
    pub fn new(
        client: Client,
        docker: Docker,
        config: KubeletConfig,
        informers: KubeletInformers,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        informers.pods.notify_on(wake.clone());
        informers.config_maps.notify_on(wake.clone());
        informers.secrets.notify_on(wake.clone());
        informers.claims.notify_on(wake.clone());
        Arc::new(Self {
            client,
            docker,
            ips: Mutex::new(IpAllocator::new(config.network.subnet)),
            config,
            informers,
            failed: Mutex::default(),
            workers: Mutex::default(),
            wake,
            cancel,
        })
    }

    /// The dispatcher and the Docker event listener, until the kubelet is cancelled.
    pub async fn run(self: Arc<Self>) {
        let cancel = self.cancel.clone();
        self.informers.pods.ready().await;
        let events = tokio::spawn(self.clone().listen_to_docker(cancel.clone()));
        let mut last_gc = tokio::time::Instant::now();
        loop {
            self.dispatch();
            if last_gc.elapsed() >= RESYNC_PERIOD {
                last_gc = tokio::time::Instant::now();
                self.remove_orphans().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RESYNC_PERIOD) => {}
            }
        }
        events.abort();
    }

    fn node_is_mine(&self, node: &str) -> bool {
        self.config.nodes.iter().any(|n| n == node) && !self.failed.lock().contains(node)
    }

    /// Starts a worker for every pod on a live node that has none, and wakes all others.
    fn dispatch(self: &Arc<Self>) {
        if self.cancel.is_cancelled() {
            return;
        }
        let pods = self.informers.pods.state();
        let mut workers = self.workers.lock();
        workers.retain(|_, w| !w.task.is_finished());
        for pod in &pods {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let uid = pod.uid().unwrap_or_default();
            if !self.node_is_mine(&node) || uid.is_empty() {
                continue;
            }
            if let Some(w) = workers.get(&uid) {
                w.wake.notify_one();
                continue;
            }
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(worker::PodWorker::run(
                self.clone(),
                (**pod).clone(),
                node.clone(),
                wake.clone(),
            ));
            debug!(pod = %pod.name_any(), %node, "started pod worker");
            workers.insert(uid, WorkerHandle { node, wake, task });
        }
        // Workers of pods no longer in the store find out and clean up.
        for w in workers.values() {
            w.wake.notify_one();
        }
    }

    async fn listen_to_docker(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let mut stream = Box::pin(docker::events(&self.docker, &self.config.cluster));
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = stream.next() => e,
                };
                match event {
                    Some(Ok(event)) => {
                        let attrs = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                        if let Some(uid) = attrs.get(names::DOCKER_LABEL_POD_UID) {
                            debug!(action = ?event.action, pod_uid = %uid, "docker event");
                            if let Some(w) = self.workers.lock().get(uid) {
                                w.wake.notify_one();
                            }
                        }
                    }
                    Some(Err(error)) => {
                        warn!(error = %error_chain(&error), "docker event stream failed; resubscribing");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(EVENTS_RETRY) => {}
            }
        }
    }

    /// Container garbage collection: removes the containers (and frees the IP) of pods that
    /// are gone from the API without a worker to clean up after them, e.g. pods force
    /// deleted while their node was down. Containers of failed nodes stay until the node
    /// is back.
    async fn remove_orphans(&self) {
        let labels = [(names::DOCKER_LABEL_CLUSTER, self.config.cluster.as_str())];
        let containers = match docker::list_labelled_with_labels(&self.docker, &labels).await {
            Ok(c) => c,
            Err(error) => {
                warn!(error = %error_chain(&error), "failed to list containers for garbage collection");
                return;
            }
        };
        let live_uids: BTreeSet<String> = self
            .informers
            .pods
            .state()
            .iter()
            .filter_map(|p| p.uid())
            .collect();
        for (name, labels) in containers {
            let (Some(uid), Some(node)) = (
                labels.get(names::DOCKER_LABEL_POD_UID),
                labels.get(names::DOCKER_LABEL_NODE),
            ) else {
                continue;
            };
            let orphan = !live_uids.contains(uid)
                && self.node_is_mine(node)
                && !self.workers.lock().contains_key(uid);
            if orphan {
                info!(container = %name, pod_uid = %uid, "removing container of a pod that is gone");
                if let Err(error) = docker::remove(&self.docker, &name).await {
                    warn!(container = %name, error = %error_chain(&error), "failed to remove orphaned container");
                }
                self.ips.lock().release(uid);
            }
        }
    }

    /// Stops acting for `node`: aborts its pod workers and SIGKILLs its containers.
    pub async fn stop_node(&self, node: &str) {
        self.failed.lock().insert(node.to_string());
        let stopped: Vec<JoinHandle<()>> = {
            let mut workers = self.workers.lock();
            let uids: Vec<String> = workers
                .iter()
                .filter(|(_, w)| w.node == node)
                .map(|(uid, _)| uid.clone())
                .collect();
            uids.iter()
                .filter_map(|uid| workers.remove(uid))
                .map(|w| {
                    w.task.abort();
                    w.task
                })
                .collect()
        };
        for task in stopped {
            let _ = task.await;
        }
        let labels = [
            (names::DOCKER_LABEL_CLUSTER, self.config.cluster.as_str()),
            (names::DOCKER_LABEL_NODE, node),
        ];
        match docker::list_labelled(&self.docker, &labels).await {
            Ok(containers) => {
                for c in containers {
                    if let Err(error) = docker::kill(&self.docker, &c, "KILL").await {
                        warn!(container = %c, error = %error_chain(&error), "failed to kill container of failed node");
                    }
                }
            }
            Err(error) => {
                warn!(%node, error = %error_chain(&error), "failed to list containers of failed node")
            }
        }
        info!(%node, "kubelet stopped");
    }

    /// Acts for `node` again: its pods get workers, which restart their containers.
    pub fn restore_node(&self, node: &str) {
        self.failed.lock().remove(node);
        self.wake.notify_one();
        info!(%node, "kubelet started again");
    }

    /// The Docker container name of the pod's first container, if the pod runs here.
    pub fn container_of(&self, namespace: &str, pod: &str) -> Option<String> {
        let p = self.informers.pods.get(Some(namespace), pod)?;
        let spec = p.spec.as_ref()?;
        let node = spec.node_name.as_deref()?;
        if !self.config.nodes.iter().any(|n| n == node) {
            return None;
        }
        let first = spec.containers.first()?;
        Some(container_name(
            &self.config.cluster,
            namespace,
            pod,
            &p.uid()?,
            &first.name,
        ))
    }

    /// Cancels and aborts every worker at once, without waiting for them.
    pub fn abort_workers(&self) -> Vec<JoinHandle<()>> {
        self.cancel.cancel();
        self.workers
            .lock()
            .drain()
            .map(|(_, w)| {
                w.task.abort();
                w.task
            })
            .collect()
    }

    /// Ends every worker and removes every container of this cluster.
    pub async fn shutdown(&self) {
        for task in self.abort_workers() {
            let _ = task.await;
        }
        // A create or start request that an aborted worker had already sent may still land
        // in the daemon after the first sweep: sweep until a listing comes back empty.
        for _ in 0..SHUTDOWN_SWEEPS {
            if !remove_cluster_containers(&self.docker, &self.config.cluster).await {
                break;
            }
            tokio::time::sleep(SHUTDOWN_SWEEP_PAUSE).await;
        }
    }
}

/// Sweeps of [`Kubelet::shutdown`], and the pause between them.
const SHUTDOWN_SWEEPS: usize = 10;
const SHUTDOWN_SWEEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(300);

/// Force-removes every container carrying the cluster's label; true when it found any (or
/// could not list them), so the caller may look again.
pub async fn remove_cluster_containers(docker_client: &Docker, cluster: &str) -> bool {
    match docker::list_labelled(docker_client, &[(names::DOCKER_LABEL_CLUSTER, cluster)]).await {
        Ok(containers) => {
            let found = !containers.is_empty();
            for c in containers {
                if let Err(error) = docker::remove(docker_client, &c).await {
                    warn!(container = %c, error = %error_chain(&error), "failed to remove container");
                }
            }
            found
        }
        Err(error) => {
            warn!(error = %error_chain(&error), "failed to list the cluster's containers");
            true
        }
    }
}

/// `{cluster}_{namespace}_{pod}_{uid prefix}_{container}`: Kubernetes names never contain
/// `_`, so names of different pods cannot collide, and the uid keeps a pod apart from an
/// earlier pod of the same name whose containers are still around (a StatefulSet pod
/// force-deleted on a failed node and recreated elsewhere).
pub fn container_name(
    cluster: &str,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
) -> String {
    let uid: String = uid.chars().take(8).collect();
    format!("{cluster}_{namespace}_{pod}_{uid}_{container}")
}

/// The pod's sandbox, which holds its network namespace: container `POD` (upper case, so
/// no container of the spec can have its name).
pub fn sandbox_name(cluster: &str, namespace: &str, pod: &str, uid: &str) -> String {
    container_name(cluster, namespace, pod, uid, "POD")
}
