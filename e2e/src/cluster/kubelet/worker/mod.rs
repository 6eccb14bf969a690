//! One pod's worker: syncs the pod with Docker until it is deleted. A sync prepares the
//! volumes, keeps the sandbox (the network namespace with the pod's IP and DNS aliases)
//! running, runs init containers in order, then keeps each container running under the
//! restart policy with a short, capped back-off, runs the probes that are due, and writes
//! the status when it changed. A pod with a deletion timestamp is stopped with its grace
//! period and then deleted for good.

mod probing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use probing::ProbeState;

use super::container::{build_container, resolve_env, ContainerInputs, PodContext};
use super::status::{pod_status, restarts, state_from_inspect, waiting, ContainerView, PodView};
use super::volumes::{self, HostVolume};
use super::{container_name, sandbox_name, Kubelet};
use crate::cluster::docker;
use crate::cluster::error_chain;
use crate::cluster::names;

/// How often a worker re-checks its containers without being woken.
const SYNC_PERIOD: Duration = Duration::from_secs(2);
/// Retry period while something the pod needs is missing (image, ConfigMap, claim).
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// Crash back-off: first restart at once, then doubling from this, capped below.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A container that ran this long before it exited restarts at once again.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_GRACE_SECONDS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    App,
}

/// What the worker knows about one container across its restarts.
#[derive(Debug)]
struct Record {
    restart_count: i32,
    last_state: Option<ContainerStateTerminated>,
    state: ContainerState,
    container_id: Option<String>,
    image_id: String,
    backoff: Duration,
    next_start: Option<Instant>,
    probes: ProbeState,
    done: bool,
}

impl Record {
    fn new(restart_count: i32, last_state: Option<ContainerStateTerminated>) -> Self {
        Self {
            restart_count,
            last_state,
            state: waiting("ContainerCreating", None),
            container_id: None,
            image_id: String::new(),
            backoff: Duration::ZERO,
            next_start: None,
            probes: ProbeState::default(),
            done: false,
        }
    }
}

pub(super) struct PodWorker {
    kubelet: Arc<Kubelet>,
    uid: String,
    namespace: String,
    name: String,
    node: String,
    records: HashMap<String, Record>,
    pod_ip: Option<String>,
    sandbox_ready: bool,
    start_time: Option<Time>,
    written: Option<PodStatus>,
}

/// The record of container `name`, new when unknown. A free function so the other fields
/// of the worker stay borrowable.
fn record_in<'a>(records: &'a mut HashMap<String, Record>, name: &str) -> &'a mut Record {
    records
        .entry(name.to_string())
        .or_insert_with(|| Record::new(0, None))
}

/// The back-off after `current`: the initial one, then doubling up to the cap.
fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        BACKOFF_INITIAL
    } else {
        (current * 2).min(BACKOFF_MAX)
    }
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

impl PodWorker {
    pub(super) async fn run(kubelet: Arc<Kubelet>, pod: Pod, node: String, wake: Arc<Notify>) {
        let status = pod.status.clone().unwrap_or_default();
        // A kubelet that comes back (node restored) picks up restart counts where they were.
        let records = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .map(|s| {
                let last = s.last_state.as_ref().and_then(|l| l.terminated.clone());
                (s.name.clone(), Record::new(s.restart_count, last))
            })
            .collect();
        let mut worker = PodWorker {
            uid: pod.uid().unwrap_or_default(),
            namespace: pod.namespace().unwrap_or_else(|| "default".into()),
            name: pod.name_any(),
            kubelet,
            node,
            records,
            pod_ip: status.pod_ip.clone(),
            sandbox_ready: false,
            start_time: status.start_time.clone(),
            written: None,
        };
        loop {
            let current = worker
                .kubelet
                .informers
                .pods
                .get(Some(&worker.namespace), &worker.name)
                .filter(|p| p.uid().as_deref() == Some(worker.uid.as_str()));
            let next = match current {
                None => {
                    worker.teardown(Duration::ZERO).await;
                    return;
                }
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    worker.terminate(&p).await;
                    return;
                }
                Some(p) => worker.sync(&p).await,
            };
            tokio::select! {
                _ = worker.kubelet.cancel.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    fn cluster(&self) -> &str {
        &self.kubelet.config.cluster
    }

    fn docker(&self) -> &bollard::Docker {
        &self.kubelet.docker
    }

    fn host_ip(&self) -> String {
        self.kubelet.config.network.gateway.to_string()
    }

    /// One pass over the pod; returns when to look again.
    async fn sync(&mut self, pod: &Pod) -> Instant {
        let now = Instant::now();
        let mut next = now + SYNC_PERIOD;
        if self.start_time.is_none() {
            self.start_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let host_ip = self.host_ip();
        let prepared = {
            let ctx = PodContext {
                pod,
                pod_ip: self.pod_ip.as_deref(),
                host_ip: &host_ip,
            };
            let claims = &self.kubelet.informers.claims;
            let claim_exists = |claim: &str| claims.get(Some(&self.namespace), claim).is_some();
            volumes::prepare(
                &self.kubelet.config.state_dir,
                &ctx,
                &self.kubelet.informers,
                &claim_exists,
            )
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(error) => {
                debug!(pod = %self.name, error = %error_chain(&error), "volumes not ready");
                let message = error_chain(&error);
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    let r = record_in(&mut self.records, &c.name);
                    if r.container_id.is_none() {
                        r.state = waiting("ContainerCreating", Some(message.clone()));
                    }
                }
                self.write_status(pod).await;
                return now + RETRY_PERIOD;
            }
        };
        match self.ensure_sandbox(pod).await {
            Ok(()) => self.sandbox_ready = true,
            Err(message) => {
                self.sandbox_ready = false;
                warn!(pod = %self.name, %message, "failed to start pod sandbox");
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    record_in(&mut self.records, &c.name).state =
                        waiting("ContainerCreating", Some(message.clone()));
                }
                self.write_status(pod).await;
                return now + RETRY_PERIOD;
            }
        }
        let mut init_done = true;
        for c in spec.init_containers.iter().flatten() {
            if let Some(at) = self.sync_container(pod, c, Role::Init, &prepared).await {
                next = next.min(at);
            }
            if !record_in(&mut self.records, &c.name).done {
                init_done = false;
                break;
            }
        }
        if init_done {
            for c in &spec.containers {
                if let Some(at) = self.sync_container(pod, c, Role::App, &prepared).await {
                    next = next.min(at);
                }
                if let Some(at) = self.probe(pod, c).await {
                    next = next.min(at);
                }
            }
        }
        self.write_status_with(pod, init_done).await;
        next.max(Instant::now() + Duration::from_millis(50))
    }

    /// Keeps the sandbox running; a sandbox that had stopped is started again (same IP)
    /// and the app containers that outlived it are killed, to be restarted inside it.
    async fn ensure_sandbox(&mut self, pod: &Pod) -> Result<(), String> {
        let name = sandbox_name(self.cluster(), &self.namespace, &self.name, &self.uid);
        let inspect = docker::inspect(self.docker(), &name)
            .await
            .map_err(|e| error_chain(&e))?;
        let network = self.kubelet.config.network.name.clone();
        let running = match &inspect {
            Some(i) => i.state.as_ref().and_then(|s| s.running) == Some(true),
            None => false,
        };
        if !running {
            if inspect.is_some() {
                info!(pod = %self.name, "pod sandbox stopped; restarting it and its containers");
                for c in &pod.spec.clone().unwrap_or_default().containers {
                    let cname = container_name(
                        self.cluster(),
                        &self.namespace,
                        &self.name,
                        &self.uid,
                        &c.name,
                    );
                    docker::kill(self.docker(), &cname, "KILL")
                        .await
                        .map_err(|e| error_chain(&e))?;
                }
                docker::start(self.docker(), &name)
                    .await
                    .map_err(|e| error_chain(&e))?;
            } else {
                self.create_sandbox(pod, &name).await?;
            }
        }
        let inspect = docker::inspect(self.docker(), &name)
            .await
            .map_err(|e| error_chain(&e))?;
        self.pod_ip = inspect
            .and_then(|i| i.network_settings)
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty());
        Ok(())
    }

    async fn create_sandbox(&mut self, pod: &Pod, name: &str) -> Result<(), String> {
        let config = &self.kubelet.config;
        let image = config.sandbox_image.clone();
        if docker::image_id(self.docker(), &image)
            .await
            .map_err(|e| error_chain(&e))?
            .is_none()
        {
            return Err(format!(
                "pod sandbox image \"{image}\" is not present locally (this cluster does not pull images)"
            ));
        }
        let previous = self.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        let ip = self.kubelet.ips.lock().allocate(&self.uid, previous);
        let spec = pod.spec.clone().unwrap_or_default();
        let hostname: String = spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name.clone())
            .chars()
            .take(63)
            .collect();
        let ns = &self.namespace;
        let mut aliases = Vec::new();
        let mut domainname = None;
        if let Some(sub) = spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            aliases.push(format!("{hostname}.{sub}.{ns}.svc"));
            aliases.push(format!("{hostname}.{sub}.{ns}.svc.cluster.local"));
            domainname = Some(format!("{sub}.{ns}.svc.cluster.local"));
        }
        if let Some(ip) = ip {
            let dashed = ip.to_string().replace('.', "-");
            aliases.push(format!("{dashed}.{ns}.pod"));
            aliases.push(format!("{dashed}.{ns}.pod.cluster.local"));
        }
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec!["sleep".into(), "infinity".into()]),
            hostname: Some(hostname),
            domainname,
            labels: Some(self.labels("", "sandbox", 0)),
            host_config: Some(HostConfig {
                network_mode: Some(config.network.name.clone()),
                dns: config.dns_server.map(|ip| vec![ip.to_string()]),
                dns_search: Some(vec![
                    format!("{ns}.svc.cluster.local"),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ]),
                dns_options: Some(vec!["ndots:5".into()]),
                ..HostConfig::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    config.network.name.clone(),
                    EndpointSettings {
                        ipam_config: ip.map(|ip| EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..EndpointIpamConfig::default()
                        }),
                        aliases: Some(aliases),
                        ..EndpointSettings::default()
                    },
                )])),
            }),
            ..ContainerCreateBody::default()
        };
        docker::run(self.docker(), name, body).await.map_err(|e| {
            // A half-created sandbox would block the next try.
            let docker_client = self.kubelet.docker.clone();
            let name = name.to_string();
            tokio::spawn(async move { docker::remove(&docker_client, &name).await });
            error_chain(&e)
        })?;
        info!(pod = %self.name, node = %self.node, ip = ?ip, "started pod sandbox");
        Ok(())
    }

    fn labels(&self, container: &str, role: &str, restart_count: i32) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (
                names::DOCKER_LABEL_CLUSTER.to_string(),
                self.cluster().to_string(),
            ),
            (names::DOCKER_LABEL_POD_UID.to_string(), self.uid.clone()),
            (
                names::DOCKER_LABEL_NAMESPACE.to_string(),
                self.namespace.clone(),
            ),
            (names::DOCKER_LABEL_POD.to_string(), self.name.clone()),
            (names::DOCKER_LABEL_NODE.to_string(), self.node.clone()),
            (names::DOCKER_LABEL_ROLE.to_string(), role.to_string()),
            (
                names::DOCKER_LABEL_RESTART_COUNT.to_string(),
                restart_count.to_string(),
            ),
        ]);
        if !container.is_empty() {
            labels.insert(
                names::DOCKER_LABEL_CONTAINER.to_string(),
                container.to_string(),
            );
        }
        labels
    }

    /// Brings one container towards running (or, for init containers, completed) under the
    /// restart policy; returns when it next needs attention (back-off expiry).
    async fn sync_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        role: Role,
        prepared: &BTreeMap<String, HostVolume>,
    ) -> Option<Instant> {
        let cname = container_name(
            self.cluster(),
            &self.namespace,
            &self.name,
            &self.uid,
            &c.name,
        );
        let inspect = match docker::inspect(self.docker(), &cname).await {
            Ok(i) => i,
            Err(error) => {
                warn!(container = %cname, error = %error_chain(&error), "failed to inspect container");
                return Some(Instant::now() + RETRY_PERIOD);
            }
        };
        let Some(inspect) = inspect else {
            // A container that failed to start waits out its back-off.
            if let Some(at) = record_in(&mut self.records, &c.name).next_start {
                if Instant::now() < at {
                    return Some(at);
                }
            }
            return self.start_container(pod, c, role, prepared, &cname).await;
        };
        let labelled_restarts = inspect
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(names::DOCKER_LABEL_RESTART_COUNT))
            .and_then(|v| v.parse().ok());
        let state = state_from_inspect(&inspect);
        let container_id = inspect.id.as_ref().map(|id| format!("docker://{id}"));
        let image_id = inspect
            .image
            .clone()
            .map(|i| format!("docker://{i}"))
            .unwrap_or_default();
        let r = record_in(&mut self.records, &c.name);
        if let Some(n) = labelled_restarts {
            r.restart_count = n;
        }
        r.container_id = container_id;
        r.image_id = image_id;
        if state.running.is_some() {
            r.state = state;
            return None;
        }
        let Some(term) = state.terminated.clone() else {
            // Created but never started (an aborted worker): start it now.
            if let Err(error) = docker::start(self.docker(), &cname).await {
                warn!(container = %cname, error = %error_chain(&error), "failed to start container");
            }
            return Some(Instant::now() + RETRY_PERIOD);
        };
        let r = record_in(&mut self.records, &c.name);
        r.probes = ProbeState::default();
        if role == Role::Init && term.exit_code == 0 {
            r.state = state;
            r.done = true;
            return None;
        }
        if !restarts(pod, term.exit_code) {
            r.state = state;
            return None;
        }
        let now = Instant::now();
        let next_start = match r.next_start {
            Some(at) => at,
            None => {
                let ran = match (&term.started_at, &term.finished_at) {
                    (Some(s), Some(f)) => f.0.duration_since(s.0).unsigned_abs(),
                    _ => Duration::ZERO,
                };
                r.backoff =
                    if ran >= BACKOFF_RESET_AFTER || r.restart_count == 0 && r.backoff.is_zero() {
                        Duration::ZERO
                    } else {
                        next_backoff(r.backoff)
                    };
                let at = now + r.backoff;
                r.next_start = Some(at);
                at
            }
        };
        if now < next_start {
            r.state = waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    r.backoff.as_secs(),
                    c.name,
                    self.name,
                    self.namespace,
                    self.uid
                )),
            );
            r.last_state = Some(term);
            return Some(next_start);
        }
        info!(pod = %self.name, container = %c.name, exit_code = term.exit_code, restart_count = r.restart_count + 1, "restarting container");
        r.last_state = Some(term);
        r.restart_count += 1;
        r.next_start = None;
        if let Err(error) = docker::remove(self.docker(), &cname).await {
            warn!(container = %cname, error = %error_chain(&error), "failed to remove exited container");
            return Some(now + RETRY_PERIOD);
        }
        self.start_container(pod, c, role, prepared, &cname).await
    }

    /// Creates and starts the container; on a problem with the spec or the image the
    /// container waits with the kubelet's reason, and the sync retries.
    async fn start_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        role: Role,
        prepared: &BTreeMap<String, HostVolume>,
        cname: &str,
    ) -> Option<Instant> {
        let retry = Some(Instant::now() + RETRY_PERIOD);
        let image = c.image.clone().unwrap_or_default();
        let image_id = match docker::image_id(self.docker(), &image).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                let never = c.image_pull_policy.as_deref() == Some("Never");
                let state = if never {
                    waiting(
                        "ErrImageNeverPull",
                        Some(format!(
                            "Container image \"{image}\" is not present with pull policy of Never"
                        )),
                    )
                } else {
                    waiting("ImagePullBackOff", Some(format!("Back-off pulling image \"{image}\": the image is not present locally and this cluster does not pull images; build it first")))
                };
                record_in(&mut self.records, &c.name).state = state;
                return retry;
            }
            Err(error) => {
                record_in(&mut self.records, &c.name).state =
                    waiting("ImageInspectError", Some(error_chain(&error)));
                return retry;
            }
        };
        let host_ip = self.host_ip();
        let image_user = match docker::image_user(self.docker(), &image).await {
            Ok(u) => u,
            Err(error) => {
                record_in(&mut self.records, &c.name).state =
                    waiting("ImageInspectError", Some(error_chain(&error)));
                return retry;
            }
        };
        let restart_count = record_in(&mut self.records, &c.name).restart_count;
        let built = {
            let ctx = PodContext {
                pod,
                pod_ip: self.pod_ip.as_deref(),
                host_ip: &host_ip,
            };
            let kubeconfig = self.kubelet.config.kubeconfig.as_deref();
            resolve_env(&ctx, c, &self.kubelet.informers)
                .map_err(|e| error_chain(&e))
                .and_then(|env| {
                    let mounts =
                        volumes::mounts(c, prepared, kubeconfig).map_err(|e| error_chain(&e))?;
                    build_container(ContainerInputs {
                        ctx,
                        container: c,
                        env,
                        image_user: &image_user,
                        sandbox: &sandbox_name(
                            self.cluster(),
                            &self.namespace,
                            &self.name,
                            &self.uid,
                        ),
                        mounts,
                        labels: self.labels(
                            &c.name,
                            if role == Role::Init { "init" } else { "app" },
                            restart_count,
                        ),
                        kubeconfig: kubeconfig.is_some(),
                    })
                    .map_err(|e| error_chain(&e))
                })
        };
        let body = match built {
            Ok(b) => b,
            Err(message) => {
                record_in(&mut self.records, &c.name).state =
                    waiting("CreateContainerConfigError", Some(message));
                return retry;
            }
        };
        match docker::run(self.docker(), cname, body).await {
            Ok(id) => {
                debug!(pod = %self.name, container = %c.name, restart_count, "started container");
                let r = record_in(&mut self.records, &c.name);
                r.container_id = Some(format!("docker://{id}"));
                r.image_id = format!("docker://{image_id}");
                r.state = ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(k8s_openapi::jiff::Timestamp::now())),
                    }),
                    ..ContainerState::default()
                };
                r.probes = ProbeState::default();
                r.next_start = None;
                // The next sync reads the real start time from Docker.
                Some(Instant::now() + Duration::from_millis(200))
            }
            Err(error) => {
                warn!(container = %cname, error = %error_chain(&error), "failed to run container");
                let _ = docker::remove(self.docker(), cname).await;
                let r = record_in(&mut self.records, &c.name);
                r.backoff = next_backoff(r.backoff);
                let at = Instant::now() + r.backoff;
                r.next_start = Some(at);
                r.state = waiting("RunContainerError", Some(error_chain(&error)));
                Some(at)
            }
        }
    }

    async fn write_status(&mut self, pod: &Pod) {
        self.write_status_with(pod, false).await;
    }

    async fn write_status_with(&mut self, pod: &Pod, init_done: bool) {
        let spec = pod.spec.clone().unwrap_or_default();
        let view_of = |w: &mut Self, c: &Container, role: Role| {
            let r = record_in(&mut w.records, &c.name);
            let running = r.state.running.is_some();
            let started = running && r.probes.started;
            ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: r.image_id.clone(),
                container_id: r.container_id.clone(),
                state: r.state.clone(),
                last_state: r.last_state.clone(),
                ready: if role == Role::Init {
                    r.done
                } else {
                    started && r.probes.ready
                },
                started,
                restart_count: r.restart_count,
            }
        };
        let init: Vec<ContainerView> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| view_of(self, c, Role::Init))
            .collect();
        let app: Vec<ContainerView> = spec
            .containers
            .iter()
            .map(|c| view_of(self, c, Role::App))
            .collect();
        // Transition times follow what this worker wrote last, which the store may lag.
        let mut basis = pod.clone();
        if let Some(w) = &self.written {
            basis.status = Some(w.clone());
        }
        let status = pod_status(&PodView {
            pod: &basis,
            host_ip: self.host_ip(),
            pod_ip: self.pod_ip.clone(),
            start_time: self.start_time.clone(),
            sandbox_ready: self.sandbox_ready,
            init_done: init_done || spec.init_containers.as_ref().is_none_or(|i| i.is_empty()),
            init,
            app,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.kubelet.client.clone(), &self.namespace);
        let patch = json!({ "status": status });
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if self.written.as_ref().and_then(|s| s.phase.as_ref()) != status.phase.as_ref() {
                    info!(pod = %self.name, namespace = %self.namespace, phase = ?status.phase, ip = ?status.pod_ip, "pod phase");
                }
                self.written = Some(status);
            }
            Err(error) => {
                warn!(pod = %self.name, error = %error_chain(&error), "failed to write pod status")
            }
        }
    }

    /// Graceful deletion: SIGTERM to every container, SIGKILL after the grace period, then
    /// the pod's final DELETE (grace 0, for this uid only).
    async fn terminate(&mut self, pod: &Pod) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(DEFAULT_GRACE_SECONDS)
            .max(0);
        info!(pod = %self.name, namespace = %self.namespace, grace_seconds = grace, "stopping pod");
        self.teardown(Duration::from_secs(grace as u64)).await;
        let api: Api<Pod> = Api::namespaced(self.kubelet.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&self.name, &params).await {
            Ok(_) => info!(pod = %self.name, namespace = %self.namespace, "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => {
                warn!(pod = %self.name, error = %error_chain(&error), "failed to delete pod")
            }
        }
    }

    /// Stops the app containers within `grace`, then removes every container of the pod,
    /// its IP and its own volumes (claims stay).
    async fn teardown(&mut self, grace: Duration) {
        let prefix = container_name(self.cluster(), &self.namespace, &self.name, &self.uid, "");
        let labels = [
            (names::DOCKER_LABEL_CLUSTER, self.cluster()),
            (names::DOCKER_LABEL_POD_UID, self.uid.as_str()),
        ];
        let containers = docker::list_labelled(self.docker(), &labels)
            .await
            .unwrap_or_default();
        let (sandboxes, others): (Vec<String>, Vec<String>) = containers
            .into_iter()
            .filter(|c| c.starts_with(&prefix))
            .partition(|c| c.ends_with("_POD"));
        let stops = others.iter().map(|c| docker::stop(self.docker(), c, grace));
        for result in futures::future::join_all(stops).await {
            if let Err(error) = result {
                warn!(pod = %self.name, error = %error_chain(&error), "failed to stop container");
            }
        }
        for c in others.iter().chain(&sandboxes) {
            if let Err(error) = docker::remove(self.docker(), c).await {
                warn!(container = %c, error = %error_chain(&error), "failed to remove container");
            }
        }
        self.kubelet.ips.lock().release(&self.uid);
        volumes::remove_pod_dir(&self.kubelet.config.state_dir, &self.uid);
    }
}
