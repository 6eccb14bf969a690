//! The container runtime: a thin layer over the Docker API (bollard, with the API version
//! negotiated so a 20.10 daemon works). It creates the cluster's user-defined bridge
//! network, hands out pod IPs inside it, and runs, inspects, stops and removes containers.
//! Everything it creates carries the cluster's label; it never touches anything else.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EventMessage, ExecConfig};
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{Stream, StreamExt};
use tracing::{debug, info};

use super::error_chain;
use super::names;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("failed to connect to the Docker daemon (is Docker installed and running?)")]
    Connect(#[source] bollard::errors::Error),
    #[error("failed to inspect docker network {name}")]
    InspectNetwork {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("failed to create docker network {name}")]
    CreateNetwork {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("no free /24 subnet for docker network {name}: every candidate overlaps an existing network")]
    NoFreeSubnet { name: String },
    #[error("docker network {name} has no IPv4 gateway")]
    NoGateway { name: String },
    #[error("failed to {action} container {container}")]
    Container {
        action: &'static str,
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("failed to list containers")]
    List(#[source] bollard::errors::Error),
    #[error("failed to inspect image {image}")]
    Image {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("failed to run exec in container {container}")]
    Exec {
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The cluster's network as the runtime found or made it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub name: String,
    pub gateway: Ipv4Addr,
    /// The subnet when the network has one configured: pods then get fixed IPs from it.
    pub subnet: Option<(Ipv4Addr, u8)>,
    /// Whether this cluster (by its label) owns the network, and so removes it.
    pub owned: bool,
}

/// Connects to the local Docker daemon, at the highest API version both sides speak.
pub async fn connect() -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
    docker
        .negotiate_version()
        .await
        .map_err(DockerError::Connect)
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Finds the network `name`, or creates it as a labelled bridge with a free /24 subnet
/// (a subnet is what lets pods keep a fixed IP and makes aliases resolvable).
pub async fn ensure_network(
    docker: &Docker,
    name: &str,
    cluster: &str,
) -> Result<NetworkInfo, DockerError> {
    match docker.inspect_network(name, None).await {
        Ok(net) => {
            let config = net.ipam.and_then(|i| i.config).unwrap_or_default();
            let v4 = config
                .iter()
                .find(|c| c.subnet.as_deref().is_some_and(|s| parse_cidr(s).is_some()));
            let subnet = v4.and_then(|c| c.subnet.as_deref()).and_then(parse_cidr);
            let gateway = v4
                .and_then(|c| c.gateway.as_deref())
                .and_then(|g| g.parse().ok())
                .or_else(|| subnet.map(|(base, _)| offset(base, 1)))
                .ok_or_else(|| DockerError::NoGateway { name: name.into() })?;
            let owned = net
                .labels
                .unwrap_or_default()
                .get(names::DOCKER_LABEL_CLUSTER)
                .is_some_and(|v| v == cluster);
            Ok(NetworkInfo {
                name: name.into(),
                gateway,
                subnet,
                owned,
            })
        }
        Err(e) if is_not_found(&e) => create_network(docker, name, cluster).await,
        Err(source) => Err(DockerError::InspectNetwork {
            name: name.into(),
            source,
        }),
    }
}

async fn create_network(
    docker: &Docker,
    name: &str,
    cluster: &str,
) -> Result<NetworkInfo, DockerError> {
    let existing = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().build()))
        .await
        .map_err(|source| DockerError::InspectNetwork {
            name: name.into(),
            source,
        })?;
    let taken: Vec<(Ipv4Addr, u8)> = existing
        .iter()
        .flat_map(|n| n.ipam.iter().flat_map(|i| i.config.iter().flatten()))
        .filter_map(|c| c.subnet.as_deref().and_then(parse_cidr))
        .collect();
    // Candidates far from Docker's own default pools (172.17-31/16, 192.168/16).
    for third in 0..=255u8 {
        let base = Ipv4Addr::new(10, 213, third, 0);
        if taken.iter().any(|t| overlaps(*t, (base, 24))) {
            continue;
        }
        let gateway = offset(base, 1);
        let request = NetworkCreateRequest {
            name: name.into(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{base}/24")),
                    gateway: Some(gateway.to_string()),
                    ..IpamConfig::default()
                }]),
                ..Ipam::default()
            }),
            labels: Some(HashMap::from([(
                names::DOCKER_LABEL_CLUSTER.to_string(),
                cluster.to_string(),
            )])),
            ..NetworkCreateRequest::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {
                info!(network = %name, subnet = %format!("{base}/24"), "created docker network");
                return Ok(NetworkInfo {
                    name: name.into(),
                    gateway,
                    subnet: Some((base, 24)),
                    owned: true,
                });
            }
            // Another run took the subnet between our list and our create: try the next.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            }) if status_code == 403 || message.contains("overlap") => {
                debug!(network = %name, %message, "subnet taken; trying the next");
            }
            Err(source) => {
                return Err(DockerError::CreateNetwork {
                    name: name.into(),
                    source,
                })
            }
        }
    }
    Err(DockerError::NoFreeSubnet { name: name.into() })
}

/// Removes the network; a network already gone is fine. Whether it is gone.
pub async fn remove_network(docker: &Docker, name: &str) -> bool {
    match docker.remove_network(name).await {
        Ok(()) => {
            info!(network = %name, "removed docker network");
            true
        }
        Err(e) if is_not_found(&e) => true,
        Err(error) => {
            tracing::warn!(network = %name, error = %error_chain(&error), "failed to remove docker network");
            false
        }
    }
}

pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip.parse().ok()?, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// The address `n` after `base`.
pub fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

/// Hands out pod IPs of the subnet (from .10 on), each held by one pod uid until released.
#[derive(Debug, Default)]
pub struct IpAllocator {
    subnet: Option<(Ipv4Addr, u8)>,
    held: BTreeMap<Ipv4Addr, String>,
}

impl IpAllocator {
    pub fn new(subnet: Option<(Ipv4Addr, u8)>) -> Self {
        Self {
            subnet,
            held: BTreeMap::new(),
        }
    }

    /// The IP of pod `uid`: the one it holds, else `preferred` when free and in the subnet
    /// (the pod's previous IP), else the lowest free one. None without a subnet (Docker
    /// then picks) or when the subnet is full.
    pub fn allocate(&mut self, uid: &str, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (base, len) = self.subnet?;
        if let Some((ip, _)) = self.held.iter().find(|(_, u)| *u == uid) {
            return Some(*ip);
        }
        let size = 1u32 << (32 - u32::from(len));
        let in_subnet = |ip: Ipv4Addr| {
            let n = u32::from(ip).wrapping_sub(u32::from(base));
            (10..size - 1).contains(&n)
        };
        let ip = preferred
            .filter(|ip| in_subnet(*ip) && !self.held.contains_key(ip))
            .or_else(|| {
                (10..size.saturating_sub(1))
                    .map(|n| offset(base, n))
                    .find(|ip| !self.held.contains_key(ip))
            })?;
        self.held.insert(ip, uid.to_string());
        Some(ip)
    }

    pub fn release(&mut self, uid: &str) {
        self.held.retain(|_, u| u != uid);
    }
}

/// Whether the image exists locally; its id when it does.
pub async fn image_id(docker: &Docker, image: &str) -> Result<Option<String>, DockerError> {
    match docker.inspect_image(image).await {
        Ok(i) => Ok(i.id),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(DockerError::Image {
            image: image.into(),
            source,
        }),
    }
}

/// The image's configured user (`USER` in its Dockerfile), empty for root.
pub async fn image_user(docker: &Docker, image: &str) -> Result<String, DockerError> {
    let inspect = docker
        .inspect_image(image)
        .await
        .map_err(|source| DockerError::Image {
            image: image.into(),
            source,
        })?;
    Ok(inspect.config.and_then(|c| c.user).unwrap_or_default())
}

pub async fn inspect(
    docker: &Docker,
    container: &str,
) -> Result<Option<ContainerInspectResponse>, DockerError> {
    match docker.inspect_container(container, None).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(DockerError::Container {
            action: "inspect",
            container: container.into(),
            source,
        }),
    }
}

/// Creates and starts a container; returns its id.
pub async fn run(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
) -> Result<String, DockerError> {
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await
        .map_err(|source| DockerError::Container {
            action: "create",
            container: name.into(),
            source,
        })?;
    start(docker, name).await?;
    Ok(created.id)
}

pub async fn start(docker: &Docker, container: &str) -> Result<(), DockerError> {
    docker
        .start_container(container, None)
        .await
        .map_err(|source| DockerError::Container {
            action: "start",
            container: container.into(),
            source,
        })
}

/// `docker stop -t grace`: SIGTERM, then SIGKILL after the grace period.
pub async fn stop(docker: &Docker, container: &str, grace: Duration) -> Result<(), DockerError> {
    let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    match docker
        .stop_container(
            container,
            Some(StopContainerOptionsBuilder::default().t(t).build()),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 304: already stopped.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(source) => Err(DockerError::Container {
            action: "stop",
            container: container.into(),
            source,
        }),
    }
}

/// Sends `signal`; a container that is gone or not running is fine.
pub async fn kill(docker: &Docker, container: &str, signal: &str) -> Result<(), DockerError> {
    match docker
        .kill_container(
            container,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal(signal)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(source) => Err(DockerError::Container {
            action: "kill",
            container: container.into(),
            source,
        }),
    }
}

/// Force-removes a container and its anonymous volumes; a container already gone is fine.
pub async fn remove(docker: &Docker, container: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(source) => Err(DockerError::Container {
            action: "remove",
            container: container.into(),
            source,
        }),
    }
}

/// Names of all containers (running or not) carrying every label of `labels`.
pub async fn list_labelled(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<String>, DockerError> {
    Ok(list_labelled_with_labels(docker, labels)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// All containers (running or not) carrying every label of `labels`: name and labels.
pub async fn list_labelled_with_labels(
    docker: &Docker,
    labels: &[(&str, &str)],
) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
    let filters = HashMap::from([(
        "label",
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(DockerError::List)?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.first()?.trim_start_matches('/').to_string();
            Some((name, c.labels.unwrap_or_default()))
        })
        .collect())
}

/// Container events (die, start, oom) of this cluster's containers, as they happen.
pub fn events(
    docker: &Docker,
    cluster: &str,
) -> impl Stream<Item = Result<EventMessage, bollard::errors::Error>> {
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["die".into(), "start".into(), "oom".into()]),
        (
            "label",
            vec![format!("{}={cluster}", names::DOCKER_LABEL_CLUSTER)],
        ),
    ]);
    docker.events(Some(
        EventsOptionsBuilder::default().filters(&filters).build(),
    ))
}

/// Runs `cmd` in the container and returns its exit code (None if Docker gave none).
pub async fn exec(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
) -> Result<Option<i64>, DockerError> {
    let err = |source| DockerError::Exec {
        container: container.into(),
        source,
    };
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..ExecConfig::default()
            },
        )
        .await
        .map_err(err)?;
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.map_err(err)?
    {
        while let Some(chunk) = output.next().await {
            if chunk.is_err() {
                break;
            }
        }
    }
    let inspected = docker.inspect_exec(&created.id).await.map_err(err)?;
    Ok(inspected.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_subnet_when_allocating_should_hand_out_distinct_ips_and_keep_them_per_pod() {
        let mut ips = IpAllocator::new(Some((Ipv4Addr::new(10, 213, 0, 0), 24)));
        let a = ips.allocate("a", None);
        let b = ips.allocate("b", None);
        assert_eq!(a, Some(Ipv4Addr::new(10, 213, 0, 10)));
        assert_eq!(b, Some(Ipv4Addr::new(10, 213, 0, 11)));
        assert_eq!(ips.allocate("a", None), a);
        ips.release("a");
        assert_eq!(ips.allocate("c", Some(Ipv4Addr::new(10, 213, 0, 11))), a);
        assert_eq!(
            ips.allocate("d", Some(Ipv4Addr::new(10, 213, 0, 42))),
            Some(Ipv4Addr::new(10, 213, 0, 42))
        );
    }

    #[test]
    fn given_subnets_when_checking_overlap_should_compare_common_prefix() {
        let net = |s: &str| parse_cidr(s).unwrap();
        assert!(overlaps(net("172.17.0.0/16"), net("172.17.5.0/24")));
        assert!(!overlaps(net("10.213.0.0/24"), net("10.213.1.0/24")));
        assert!(overlaps(net("10.0.0.0/8"), net("10.213.1.0/24")));
    }
}
