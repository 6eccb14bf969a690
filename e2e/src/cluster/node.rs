//! Node objects and their lifecycle: registers one Node per simulated node, keeps the
//! Ready heartbeat of live ones fresh, and on a node failure does what the node lifecycle
//! controller does (Ready Unknown, unreachable taints, the node's pods marked not ready).
//! Talks only to the API; the kubelet stops and restarts the containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, Node, NodeAddress, NodeCondition, NodeSpec,
    NodeStatus, NodeSystemInfo, Pod, PodCondition, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::BTreeSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error_chain;
use super::watch::Informer;
use super::{api, names};

/// How often live nodes post their Ready heartbeat.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The Node object of a fresh, ready node.
pub fn build_node(name: &str, host_ip: Ipv4Addr) -> Node {
    let capacity = BTreeMap::from([
        ("cpu".to_string(), Quantity("2".into())),
        ("memory".to_string(), Quantity("8Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("50Gi".into())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                (names::LABEL_HOSTNAME.to_string(), name.to_string()),
                (names::LABEL_OS.to_string(), "linux".to_string()),
                (
                    names::LABEL_ARCH.to_string(),
                    std::env::consts::ARCH
                        .replace("x86_64", "amd64")
                        .replace("aarch64", "arm64"),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: host_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            conditions: Some(conditions(true, &now(), None)),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: uuid::Uuid::new_v4().to_string(),
                container_runtime_version: "docker://local".into(),
                kernel_version: String::new(),
                kube_proxy_version: String::new(),
                kubelet_version: names::KUBELET_VERSION.into(),
                machine_id: name.into(),
                operating_system: "linux".into(),
                os_image: "duomq e2e local node".into(),
                system_uuid: name.into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

/// The node's conditions: Ready (True while the kubelet posts, Unknown once it stopped)
/// and the pressure conditions, all False. `previous` keeps transition times.
fn conditions(ready: bool, now: &Time, previous: Option<&[NodeCondition]>) -> Vec<NodeCondition> {
    let keep = |type_: &str, status: &str| {
        previous
            .and_then(|p| p.iter().find(|c| c.type_ == type_ && c.status == status))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone())
    };
    let pressure = |type_: &str, reason: &str, message: &str| {
        let status = if ready { "False" } else { "Unknown" };
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(if ready {
                reason.into()
            } else {
                "NodeStatusUnknown".into()
            }),
            message: Some(if ready {
                message.into()
            } else {
                "Kubelet stopped posting node status.".into()
            }),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(keep(type_, status)),
        }
    };
    let ready_status = if ready { "True" } else { "Unknown" };
    vec![
        pressure(
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        pressure(
            "DiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        pressure(
            "PIDPressure",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        NodeCondition {
            type_: "Ready".into(),
            status: ready_status.into(),
            reason: Some(
                if ready {
                    "KubeletReady"
                } else {
                    "NodeStatusUnknown"
                }
                .into(),
            ),
            message: Some(
                if ready {
                    "kubelet is posting ready status"
                } else {
                    "Kubelet stopped posting node status."
                }
                .into(),
            ),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(keep("Ready", ready_status)),
        },
    ]
}

/// Registers (or takes over) the Node objects and posts heartbeats for live nodes.
pub struct NodeLifecycle {
    client: Client,
    nodes: Vec<String>,
    host_ip: Ipv4Addr,
    failed: Mutex<BTreeSet<String>>,
}

impl NodeLifecycle {
    pub fn new(client: Client, nodes: Vec<String>, host_ip: Ipv4Addr) -> Arc<Self> {
        Arc::new(Self {
            client,
            nodes,
            host_ip,
            failed: Mutex::default(),
        })
    }

    /// Creates every Node (an existing one gets its labels and a Ready status).
    pub async fn register(&self) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        for name in &self.nodes {
            let node = build_node(name, self.host_ip);
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => info!(node = %name, "registered node"),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let patch = json!({ "metadata": { "labels": node.metadata.labels } });
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                Err(e) => return Err(e),
            }
            // Status through the status subresource: servers may drop it on create.
            self.post_status(name, true).await?;
        }
        Ok(())
    }

    async fn post_status(&self, name: &str, ready: bool) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let previous = api
            .get_status(name)
            .await
            .ok()
            .and_then(|n| n.status)
            .and_then(|s| s.conditions);
        let node = build_node(name, self.host_ip);
        let mut status = node.status.unwrap_or_default();
        status.conditions = Some(conditions(ready, &now(), previous.as_deref()));
        api::patch_status(&api, name, &status).await?;
        Ok(())
    }

    /// Heartbeats of live nodes until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT_PERIOD) => {}
            }
            let live: Vec<String> = {
                let failed = self.failed.lock();
                self.nodes
                    .iter()
                    .filter(|n| !failed.contains(*n))
                    .cloned()
                    .collect()
            };
            for name in live {
                if let Err(error) = self.post_status(&name, true).await {
                    warn!(node = %name, error = %error_chain(&error), "failed to post node heartbeat");
                }
            }
        }
    }

    /// What the node lifecycle controller does once a kubelet stopped posting: Ready
    /// Unknown, the unreachable taints, and every pod of the node not ready, its
    /// containers shown terminated.
    pub async fn mark_failed(&self, name: &str, pods: &Informer<Pod>) -> Result<(), kube::Error> {
        self.failed.lock().insert(name.to_string());
        self.post_status(name, false).await?;
        self.set_unreachable_taints(name, true).await?;
        for pod in pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name) {
                continue;
            }
            if let Err(error) = mark_pod_not_ready(&self.client, &pod).await {
                warn!(pod = %pod.name_any(), error = %error_chain(&error), "failed to mark pod of failed node not ready");
            }
        }
        info!(node = %name, "node failed");
        Ok(())
    }

    /// The node is back: Ready True, taints gone.
    pub async fn mark_restored(&self, name: &str) -> Result<(), kube::Error> {
        self.failed.lock().remove(name);
        self.set_unreachable_taints(name, false).await?;
        self.post_status(name, true).await?;
        info!(node = %name, "node restored");
        Ok(())
    }

    async fn set_unreachable_taints(&self, name: &str, on: bool) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = api.get(name).await?;
        let mut taints: Vec<Taint> = node.spec.and_then(|s| s.taints).unwrap_or_default();
        taints.retain(|t| t.key != names::TAINT_UNREACHABLE);
        if on {
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint {
                    key: names::TAINT_UNREACHABLE.into(),
                    effect: effect.into(),
                    time_added: Some(now()),
                    value: None,
                });
            }
        }
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "taints": taints } })),
        )
        .await?;
        Ok(())
    }
}

async fn mark_pod_not_ready(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    let t = now();
    let status = pod.status.clone().unwrap_or_default();
    let mut conditions: Vec<PodCondition> = status.conditions.unwrap_or_default();
    for c in conditions
        .iter_mut()
        .filter(|c| c.type_ == "Ready" || c.type_ == "ContainersReady")
    {
        if c.status != "False" {
            c.last_transition_time = Some(t.clone());
        }
        c.status = "False".into();
        c.reason = Some("NodeNotReady".into());
        c.message = Some("node is not ready".into());
    }
    let containers: Vec<_> = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .map(|mut s| {
            let started_at = s
                .state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .and_then(|r| r.started_at.clone());
            if s.state.as_ref().is_some_and(|st| st.terminated.is_none()) {
                s.state = Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 137,
                        reason: Some("Error".into()),
                        message: Some("the node failed".into()),
                        started_at,
                        finished_at: Some(t.clone()),
                        container_id: s.container_id.clone(),
                        signal: None,
                    }),
                    ..ContainerState::default()
                });
            }
            s.ready = false;
            s.started = Some(false);
            s
        })
        .collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let status = json!({ "conditions": conditions, "containerStatuses": containers });
    api::patch_status(&api, &pod.name_any(), &status).await?;
    Ok(())
}
