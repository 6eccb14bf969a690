//! Services, the local way: for each port of each Service with a selector, a TCP proxy on
//! the host's loopback (an ephemeral port) that forwards every new connection to a ready
//! endpoint, chosen when the connection arrives, so a client that reconnects after a
//! failover reaches the new live. The proxy address is recorded on the Service as the
//! annotation `e2e.duomq.io/proxy-<port name>`; Endpoints objects are written too.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error_chain;
use super::names;
use super::pods::{is_ready, is_terminating};
use super::selector::map_selector_matches;
use super::watch::{next_round, Informer};

/// How long the proxy tries one endpoint before the next.
const ENDPOINT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Listener {
    key: String,
    port: i32,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Per Service (namespace, name): what was last written to its Endpoints.
type WrittenEndpoints = HashMap<(String, String), Vec<EndpointSubset>>;

struct Proxied {
    uid: String,
    listeners: Vec<Listener>,
}

impl Drop for Proxied {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.task.abort();
        }
    }
}

/// The host-side proxies of all Services.
#[derive(Clone)]
pub struct ServiceProxies {
    proxies: Arc<Mutex<HashMap<(String, String), Proxied>>>,
    endpoints_written: Arc<Mutex<WrittenEndpoints>>,
}

/// The annotation/lookup key of a service port: its name, or its number when unnamed.
pub fn port_key(port: &ServicePort) -> String {
    port.name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| port.port.to_string())
}

/// The pods a connection to `service` may go to: selected, not terminating, with an IP,
/// and Ready unless the Service publishes not-ready addresses. Sorted by name.
pub fn endpoints<'a>(service: &Service, pods: &'a [Arc<Pod>]) -> Vec<&'a Pod> {
    let spec = service.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let namespace = service.namespace();
    let any_readiness = spec.publish_not_ready_addresses == Some(true);
    let mut out: Vec<&Pod> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p.namespace() == namespace)
        .filter(|p| {
            map_selector_matches(
                &selector,
                p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
        })
        .filter(|p| !is_terminating(p))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .is_some_and(|ip| !ip.is_empty())
        })
        .filter(|p| any_readiness || is_ready(p))
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// The port on `pod` that service port `port` targets (targetPort by number or by the
/// name of a container port; the service port itself when unset).
pub fn target_port(port: &ServicePort, pod: &Pod) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => name.parse().ok().or_else(|| {
            pod.spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }),
    }
}

impl ServiceProxies {
    pub fn new() -> Self {
        Self {
            proxies: Arc::default(),
            endpoints_written: Arc::default(),
        }
    }

    /// The proxy address of `namespace/service` port `port` (name or number), if any.
    pub fn address(&self, namespace: &str, service: &str, port: &str) -> Option<SocketAddr> {
        let proxies = self.proxies.lock();
        let proxied = proxies.get(&(namespace.to_string(), service.to_string()))?;
        proxied
            .listeners
            .iter()
            .find(|l| l.key == port || l.port.to_string() == port)
            .map(|l| l.addr)
    }

    /// Keeps a proxy per Service port and the Endpoints objects current, until `cancel`.
    pub async fn run(
        self,
        client: Client,
        services: Informer<Service>,
        pods: Informer<Pod>,
        cancel: CancellationToken,
    ) {
        let wake = Arc::new(Notify::new());
        services.notify_on(wake.clone());
        pods.notify_on(wake.clone());
        services.ready().await;
        pods.ready().await;
        loop {
            let all = services.state();
            let keys: Vec<(String, String)> = all
                .iter()
                .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
                .collect();
            self.proxies.lock().retain(|k, _| keys.contains(k));
            for svc in &all {
                if let Err(error) = self.sync(&client, svc, &services, &pods).await {
                    warn!(service = %svc.name_any(), error = %error_chain(&error), "failed to sync service proxy");
                }
            }
            if !next_round(&wake, &cancel).await {
                break;
            }
        }
        self.proxies.lock().clear();
    }

    async fn sync(
        &self,
        client: &Client,
        svc: &Service,
        services: &Informer<Service>,
        pods: &Informer<Pod>,
    ) -> Result<(), kube::Error> {
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let key = (namespace.clone(), name.clone());
        let uid = svc.uid().unwrap_or_default();
        let ports: Vec<ServicePort> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let wanted: Vec<(String, i32)> = ports.iter().map(|p| (port_key(p), p.port)).collect();
        let current: Option<Vec<(String, i32)>> = self
            .proxies
            .lock()
            .get(&key)
            .filter(|p| p.uid == uid)
            .map(|p| {
                p.listeners
                    .iter()
                    .map(|l| (l.key.clone(), l.port))
                    .collect()
            });
        if current.as_ref() != Some(&wanted) {
            let mut listeners = Vec::new();
            for port in &ports {
                let listener = match TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(error) => {
                        warn!(service = %name, error = %error_chain(&error), "failed to bind service proxy");
                        continue;
                    }
                };
                let Ok(addr) = listener.local_addr() else {
                    continue;
                };
                let task = tokio::spawn(serve(
                    listener,
                    namespace.clone(),
                    name.clone(),
                    port_key(port),
                    services.clone(),
                    pods.clone(),
                ));
                info!(service = %name, %namespace, port = %port_key(port), %addr, "service proxy listening");
                listeners.push(Listener {
                    key: port_key(port),
                    port: port.port,
                    addr,
                    task,
                });
            }
            self.proxies.lock().insert(
                key.clone(),
                Proxied {
                    uid: uid.clone(),
                    listeners,
                },
            );
        }
        let annotations: BTreeMap<String, String> = {
            let proxies = self.proxies.lock();
            proxies.get(&key).map_or_else(BTreeMap::new, |p| {
                p.listeners
                    .iter()
                    .map(|l| {
                        (
                            format!("{}{}", names::PROXY_ANNOTATION_PREFIX, l.key),
                            l.addr.to_string(),
                        )
                    })
                    .collect()
            })
        };
        let existing = svc.metadata.annotations.clone().unwrap_or_default();
        if annotations.iter().any(|(k, v)| existing.get(k) != Some(v)) {
            let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
            let patch = json!({ "metadata": { "annotations": annotations } });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        self.write_endpoints(client, svc, &pods.state()).await
    }

    async fn write_endpoints(
        &self,
        client: &Client,
        svc: &Service,
        pods: &[Arc<Pod>],
    ) -> Result<(), kube::Error> {
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            return Ok(());
        }
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let mut with_not_ready = svc.clone();
        if let Some(s) = with_not_ready.spec.as_mut() {
            s.publish_not_ready_addresses = Some(true);
        }
        let publish_all = spec.publish_not_ready_addresses == Some(true);
        let address = |p: &Pod| EndpointAddress {
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            hostname: p.spec.as_ref().and_then(|s| s.hostname.clone()),
            node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                namespace: p.metadata.namespace.clone(),
                uid: p.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
        };
        let all = endpoints(&with_not_ready, pods);
        let (ready, not_ready): (Vec<&Pod>, Vec<&Pod>) =
            all.into_iter().partition(|p| publish_all || is_ready(p));
        let first = ready.first().or(not_ready.first()).copied();
        let subsets: Vec<EndpointSubset> = match first {
            None => vec![],
            Some(sample) => vec![EndpointSubset {
                addresses: (!ready.is_empty()).then(|| ready.iter().map(|p| address(p)).collect()),
                not_ready_addresses: (!not_ready.is_empty())
                    .then(|| not_ready.iter().map(|p| address(p)).collect()),
                ports: Some(
                    spec.ports
                        .iter()
                        .flatten()
                        .filter_map(|p| {
                            Some(EndpointPort {
                                name: p.name.clone(),
                                port: i32::from(target_port(p, sample)?),
                                protocol: p.protocol.clone(),
                                app_protocol: p.app_protocol.clone(),
                            })
                        })
                        .collect(),
                ),
            }],
        };
        let key = (namespace.clone(), name.clone());
        if self.endpoints_written.lock().get(&key) == Some(&subsets) {
            return Ok(());
        }
        let endpoints_obj = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: svc.metadata.labels.clone(),
                ..ObjectMeta::default()
            },
            subsets: Some(subsets.clone()),
        };
        let api: Api<Endpoints> = Api::namespaced(client.clone(), &namespace);
        let params = PatchParams::apply(names::MANAGER_ENDPOINTS).force();
        let mut body = serde_json::to_value(&endpoints_obj).unwrap_or_default();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Endpoints");
        api.patch(&name, &params, &Patch::Apply(&body)).await?;
        self.endpoints_written.lock().insert(key, subsets);
        Ok(())
    }
}

impl Default for ServiceProxies {
    fn default() -> Self {
        Self::new()
    }
}

async fn serve(
    listener: TcpListener,
    namespace: String,
    service: String,
    port: String,
    services: Informer<Service>,
    pods: Informer<Pod>,
) {
    let turn = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let (namespace, service, port) = (namespace.clone(), service.clone(), port.clone());
        let (services, pods, turn) = (services.clone(), pods.clone(), turn.clone());
        tokio::spawn(async move {
            let Some(svc) = services.get(Some(&namespace), &service) else {
                return;
            };
            let Some(sp) = svc
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .find(|p| port_key(p) == port)
                .cloned()
            else {
                return;
            };
            let all = pods.state();
            let candidates: Vec<SocketAddr> = endpoints(&svc, &all)
                .into_iter()
                .filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                    Some(SocketAddr::new(ip, target_port(&sp, p)?))
                })
                .collect();
            if candidates.is_empty() {
                debug!(%service, %namespace, %peer, "no endpoint; closing connection");
                return;
            }
            let start = turn.fetch_add(1, Ordering::Relaxed);
            for i in 0..candidates.len() {
                let target = candidates[(start + i) % candidates.len()];
                match tokio::time::timeout(ENDPOINT_CONNECT_TIMEOUT, TcpStream::connect(target))
                    .await
                {
                    Ok(Ok(mut upstream)) => {
                        let mut client = client;
                        debug!(%service, %peer, %target, "proxying connection");
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    _ => debug!(%service, %target, "endpoint did not accept; trying the next"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };
    use rstest::rstest;

    fn pod(name: &str, role: &str, ready: bool, ip: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([("role".to_string(), role.to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("stomp".into()),
                        container_port: 61613,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn service(publish_not_ready: bool) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("client".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("role".to_string(), "live".to_string())])),
                publish_not_ready_addresses: Some(publish_not_ready),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[rstest]
    #[case::ready_only(false, vec!["a"])]
    #[case::publish_not_ready(true, vec!["a", "b"])]
    fn given_pods_when_resolving_endpoints_should_select_matching_live_pods(
        #[case] publish_not_ready: bool,
        #[case] expected: Vec<&str>,
    ) {
        let pods = vec![
            pod("b", "live", false, Some("10.0.0.2")),
            pod("a", "live", true, Some("10.0.0.1")),
            pod("c", "backup", true, Some("10.0.0.3")),
            pod("d", "live", true, None),
        ];
        let names: Vec<String> = endpoints(&service(publish_not_ready), &pods)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, expected);
    }

    #[rstest]
    #[case::named(Some(IntOrString::String("stomp".into())), Some(61613))]
    #[case::numbered(Some(IntOrString::Int(8161)), Some(8161))]
    #[case::unset(None, Some(1234))]
    #[case::unknown_name(Some(IntOrString::String("nope".into())), None)]
    fn given_service_port_when_resolving_target_should_use_container_ports(
        #[case] target: Option<IntOrString>,
        #[case] expected: Option<u16>,
    ) {
        let port = ServicePort {
            port: 1234,
            target_port: target,
            ..Default::default()
        };
        assert_eq!(target_port(&port, &pod("a", "live", true, None)), expected);
    }
}
