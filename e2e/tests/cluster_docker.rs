//! The local cluster against the local API server, with real containers: a StatefulSet of
//! two brokers behind a headless Service becomes two Ready pods with IPs, bound claims and
//! DNS names (their own, and the Services' from the cluster DNS); a killed container
//! restarts; a deleted pod comes back with its data; a template change rolls from the
//! highest ordinal; a failed node takes its pod out of the Service. Also a Deployment, a
//! missing image and an unschedulable pod.
//!
//! Needs Docker, the local base image `duomq-base:bookworm` and a built broker
//! (`cargo build -p duomq-broker`); fails with a message naming the missing piece.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use duomq_e2e::apiserver::{self, ApiServerHandle, ApiServerOptions};
use duomq_e2e::cluster::{self, kubelet::claim_dir, ClusterHandle, ClusterOptions};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use duomq_testkit::Deadline;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pods of the broker image starting and turning Ready (image start, journal, probes).
const POD_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A killed container being noticed and restarted.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// A rolling update of two pods, each waiting for its successor to be Ready.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// Status changes the controllers make without starting containers.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// GET /version from inside a container, at the server its `$KUBECONFIG` names, with
/// nothing but bash (the base image has no HTTP client).
const CALL_API_FROM_CONTAINER: &str = r#"
url=$(sed -n 's#^ *server: *http://##p' "$KUBECONFIG")
exec 3<>"/dev/tcp/${url%%:*}/${url##*:}"
printf 'GET /version HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n' >&3
head -1 <&3
"#;
const BASE_IMAGE: &str = "duomq-base:bookworm";
const NAMESPACE: &str = "cluster-test";

/// The kit's wait at this file's pace: each check runs docker or API calls.
async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    Ok(duomq_testkit::eventually_ok_every(what, timeout, POLL_INTERVAL, check).await?)
}

fn docker_cli(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("failed to run docker {args:?} (is Docker installed?)"))?;
    if !out.status.success() {
        bail!(
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Removes, on drop, whatever of this run is left in Docker: containers and networks
/// carrying the run's cluster label, and the test image. Only things this run made.
struct DockerLeftovers {
    prefix: String,
    image: String,
}

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        let label = format!(
            "label={}={}",
            cluster::names::DOCKER_LABEL_CLUSTER,
            self.prefix
        );
        if let Ok(ids) = docker_cli(&["ps", "-aq", "--filter", &label]) {
            for id in ids.lines().filter(|l| !l.is_empty()) {
                let _ = docker_cli(&["rm", "-f", id]);
            }
        }
        if let Ok(nets) = docker_cli(&["network", "ls", "-q", "--filter", &label]) {
            for id in nets.lines().filter(|l| !l.is_empty()) {
                let _ = docker_cli(&["network", "rm", id]);
            }
        }
        let _ = docker_cli(&["image", "rm", "-f", &self.image]);
    }
}

/// The broker binary next to this test's target dir.
fn broker_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to find the test binary")?;
    // target/debug/deps/cluster_docker-… → target/debug/duomq-broker
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    let broker = dir.join("duomq-broker");
    if !broker.is_file() {
        bail!(
            "no broker binary at {}: run `cargo build -p duomq-broker` first",
            broker.display()
        );
    }
    Ok(broker)
}

/// The local base image, built with the repository's `images/build-base.sh` when missing
/// and the script is there (it serialises concurrent builds itself).
fn ensure_base_image() -> Result<()> {
    if docker_cli(&["image", "inspect", BASE_IMAGE]).is_ok() {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build-base.sh");
    if !script.is_file() {
        bail!("the local base image {BASE_IMAGE} is missing: build it with images/build-base.sh");
    }
    let status = Command::new("bash")
        .arg(&script)
        .arg("--tag")
        .arg(BASE_IMAGE)
        .status()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed to build {BASE_IMAGE}", script.display());
    }
    Ok(())
}

/// Builds the broker image for this run (tag unique to the run) from the local base.
fn build_broker_image(tag: &str, work: &Path) -> Result<()> {
    docker_cli(&["version", "--format", "{{.Server.Version}}"])
        .context("Docker is required for this test: install it and start the daemon")?;
    ensure_base_image()?;
    let context = work.join("image");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(broker_binary()?, context.join("duomq-broker"))?;
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\n\
             RUN echo 'duomq:x:10001:10001::/var/lib/duomq:/usr/sbin/nologin' >>/etc/passwd \
             && echo 'duomq:x:10001:' >>/etc/group && mkdir -p /var/lib/duomq && chown 10001:10001 /var/lib/duomq\n\
             COPY duomq-broker /usr/local/bin/duomq-broker\n\
             USER 10001:10001\n\
             ENTRYPOINT [\"/usr/local/bin/duomq-broker\"]\n"
        ),
    )?;
    docker_cli(&["build", "-q", "-t", tag, &context.to_string_lossy()])?;
    Ok(())
}

/// API server, cluster and the run's Docker leftovers, torn down in that order.
struct Fixture {
    api: Option<ApiServerHandle>,
    cluster: Option<ClusterHandle>,
    client: Client,
    image: String,
    state_dir: PathBuf,
    _leftovers: DockerLeftovers,
    _work: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("e2e-cl-{}", &run[..8]);
        let image = format!("duomq-e2e/broker:{prefix}");
        let leftovers = DockerLeftovers {
            prefix: prefix.clone(),
            image: image.clone(),
        };
        let work = tempfile::tempdir()?;
        build_broker_image(&image, work.path())?;

        let state_dir = work.path().join("cluster");
        let mut opts = ClusterOptions::new(&prefix, &state_dir);
        let gateway = cluster::prepare_network(&opts).await?;
        let api = apiserver::start(ApiServerOptions {
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SocketAddr::new(gateway, 0),
            ],
            ..ApiServerOptions::default()
        })
        .await?;
        let container_url = api
            .urls()
            .into_iter()
            .find(|u| u.contains(&gateway.to_string()))
            .ok_or_else(|| anyhow!("the API server does not listen on the gateway {gateway}"))?;
        let kubeconfig = work.path().join("container-kubeconfig");
        api.write_kubeconfig(&kubeconfig, &container_url)?;
        opts.container_kubeconfig = Some(kubeconfig);
        let client = api.client();
        let cluster = cluster::start(client.clone(), opts).await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &from_json(json!({ "metadata": { "name": NAMESPACE } }))?,
            )
            .await?;
        Ok(Self {
            api: Some(api),
            cluster: Some(cluster),
            client,
            image,
            state_dir,
            _leftovers: leftovers,
            _work: work,
        })
    }

    fn cluster(&self) -> &ClusterHandle {
        self.cluster.as_ref().expect("cluster runs until shutdown")
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    async fn pod(&self, name: &str) -> Result<Pod> {
        Ok(self.api::<Pod>().get(name).await?)
    }

    /// Stops the cluster (which must remove its containers and network), then the API.
    async fn shutdown(mut self) -> Result<String> {
        let prefix = self._leftovers.prefix.clone();
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await;
        }
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
        Ok(prefix)
    }
}

fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(value)?)
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && condition(pod, "Ready").as_deref() == Some("True")
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

fn broker_statefulset(image: &str, revision: &str) -> serde_json::Value {
    json!({
        "metadata": { "name": "brokers", "namespace": NAMESPACE },
        "spec": {
            "replicas": 2,
            "serviceName": "brokers-hl",
            "selector": { "matchLabels": { "app": "brokers" } },
            "template": {
                "metadata": { "labels": { "app": "brokers" }, "annotations": { "e2e/revision": revision } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": { "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001, "runAsNonRoot": true },
                    "containers": [{
                        "name": "broker",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "args": ["run", "--stomp-listen", "0.0.0.0:61613", "--admin-listen", "0.0.0.0:8161", "--data-dir", "/var/lib/duomq/$(POD_NAME)"],
                        "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                        "ports": [
                            { "name": "stomp", "containerPort": 61613 },
                            { "name": "admin", "containerPort": 8161 }
                        ],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "admin" }, "periodSeconds": 1, "failureThreshold": 1 },
                        "livenessProbe": { "tcpSocket": { "port": "stomp" }, "periodSeconds": 2, "failureThreshold": 5 },
                        "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": { "drop": ["ALL"] } },
                        "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/duomq" }]
                    }]
                }
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
            }]
        }
    })
}

fn services() -> Vec<serde_json::Value> {
    vec![
        json!({
            "metadata": { "name": "brokers-hl", "namespace": NAMESPACE },
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": { "app": "brokers" },
                "ports": [{ "name": "stomp", "port": 61613 }]
            }
        }),
        json!({
            "metadata": { "name": "brokers", "namespace": NAMESPACE },
            "spec": {
                "selector": { "app": "brokers" },
                "ports": [{ "name": "admin", "port": 80, "targetPort": "admin" }]
            }
        }),
    ]
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(STATUS_TIMEOUT, stream.read_to_string(&mut response)).await??;
    if !response.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path} via {addr}: {}",
            response.lines().next().unwrap_or("no response")
        );
    }
    Ok(response)
}

/// Waits until both broker pods run, are Ready and have IPs; returns their uids.
async fn both_ready(f: &Fixture) -> Result<Vec<String>> {
    eventually(
        "brokers-0 and brokers-1 Running and Ready",
        POD_READY_TIMEOUT,
        || async {
            let mut uids = Vec::new();
            for name in ["brokers-0", "brokers-1"] {
                let pod = f.pod(name).await?;
                if !running_and_ready(&pod) || pod_ip(&pod).is_none() {
                    bail!(
                        "{name} is {:?}",
                        pod.status
                            .as_ref()
                            .map(|s| (&s.phase, &s.container_statuses))
                    );
                }
                uids.push(pod.uid().unwrap_or_default());
            }
            Ok(uids)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_statefulset_of_brokers_when_run_on_local_cluster_should_behave_like_kubernetes(
) -> Result<()> {
    let f = Fixture::start().await?;
    let ns = NAMESPACE;

    for svc in services() {
        f.api::<Service>()
            .create(&PostParams::default(), &from_json(svc)?)
            .await?;
    }
    let sets = f.api::<StatefulSet>();
    sets.create(
        &PostParams::default(),
        &from_json(broker_statefulset(&f.image, "1"))?,
    )
    .await?;

    // Two Ready pods with IPs on different nodes (spread), claims Bound, status counted.
    let first_uids = both_ready(&f).await?;
    let p0 = f.pod("brokers-0").await?;
    let p1 = f.pod("brokers-1").await?;
    let node0 = p0
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("brokers-0 bound")?;
    let node1 = p1
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("brokers-1 bound")?;
    assert_ne!(
        node0, node1,
        "free to choose, the scheduler spreads the pods"
    );
    for claim in ["data-brokers-0", "data-brokers-1"] {
        eventually(&format!("claim {claim} Bound"), STATUS_TIMEOUT, || async {
            let c = f.api::<PersistentVolumeClaim>().get(claim).await?;
            let status = c.status.clone().unwrap_or_default();
            match (
                status.phase.as_deref(),
                status.capacity.and_then(|c| c.get("storage").cloned()),
            ) {
                (Some("Bound"), Some(q)) if q.0 == "1Gi" => Ok(()),
                other => bail!("claim is {other:?}"),
            }
        })
        .await?;
    }
    eventually(
        "statefulset status readyReplicas 2",
        STATUS_TIMEOUT,
        || async {
            let s = sets.get("brokers").await?.status.unwrap_or_default();
            match (s.ready_replicas, s.updated_replicas, s.observed_generation) {
                (Some(2), Some(2), Some(_)) => Ok(()),
                other => bail!("status {other:?}"),
            }
        },
    )
    .await?;

    // Each pod's DNS name resolves from the other container.
    let c0 = f
        .cluster()
        .container_of(ns, "brokers-0")
        .context("container of brokers-0")?;
    let c1 = f
        .cluster()
        .container_of(ns, "brokers-1")
        .context("container of brokers-1")?;
    for (from, name, want) in [
        (&c0, "brokers-1.brokers-hl".to_string(), pod_ip(&p1)),
        (
            &c1,
            format!("brokers-0.brokers-hl.{ns}.svc.cluster.local"),
            pod_ip(&p0),
        ),
        (&c1, format!("brokers-0.brokers-hl.{ns}.svc"), pod_ip(&p0)),
    ] {
        let resolved = docker_cli(&["exec", from, "getent", "hosts", &name])?;
        assert_eq!(
            resolved.split_whitespace().next().map(String::from),
            want,
            "{name} from {from}"
        );
    }

    // Service names resolve through the cluster DNS, to the Service's endpoints: the
    // ClusterIP Service by its short name (search path) and full name, the headless one
    // too; an unknown Service does not resolve.
    let both: BTreeSet<String> = [pod_ip(&p0), pod_ip(&p1)].into_iter().flatten().collect();
    for name in ["brokers".to_string(), format!("brokers.{ns}.svc"), format!("brokers.{ns}.svc.cluster.local"), "brokers-hl".to_string()] {
        let resolved = docker_cli(&["exec", &c0, "getent", "ahostsv4", &name])?;
        let ips: BTreeSet<String> = resolved.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
        assert_eq!(ips, both, "{name} from {c0}");
    }
    assert!(docker_cli(&["exec", &c0, "getent", "hosts", "nothing-here"]).is_err(), "an unknown name resolves");

    // The pod's user can write its claim; the data is on the host under the claim's dir.
    docker_cli(&[
        "exec",
        &c0,
        "sh",
        "-c",
        "echo kept > /var/lib/duomq/e2e-marker",
    ])?;
    let host_marker = claim_dir(&f.state_dir, ns, "data-brokers-0").join("e2e-marker");
    assert_eq!(std::fs::read_to_string(&host_marker)?.trim(), "kept");

    // A container killed from outside is restarted: restartCount 1, lastState 137.
    docker_cli(&["kill", "-s", "KILL", &c1])?;
    eventually(
        "brokers-1 restarted after docker kill",
        RESTART_TIMEOUT,
        || async {
            let pod = f.pod("brokers-1").await?;
            let cs = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            let s = cs.first().context("container status")?;
            let last = s
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .map(|t| t.exit_code);
            if s.restart_count == 1
                && last == Some(137)
                && s.state.as_ref().is_some_and(|st| st.running.is_some())
            {
                Ok(())
            } else {
                bail!(
                    "restartCount {} lastState {last:?} state {:?}",
                    s.restart_count,
                    s.state
                )
            }
        },
    )
    .await?;
    assert_eq!(
        f.pod("brokers-1").await?.uid(),
        Some(first_uids[1].clone()),
        "same pod, restarted container"
    );

    // A deleted pod comes back with the same name and the same claim data.
    f.api::<Pod>()
        .delete("brokers-0", &DeleteParams::default())
        .await?;
    eventually(
        "brokers-0 recreated and Ready",
        POD_READY_TIMEOUT,
        || async {
            let pod = f.pod("brokers-0").await?;
            if pod.uid() != Some(first_uids[0].clone()) && running_and_ready(&pod) {
                Ok(())
            } else {
                bail!(
                    "brokers-0 uid {:?} phase {:?}",
                    pod.uid(),
                    pod.status.and_then(|s| s.phase)
                )
            }
        },
    )
    .await?;
    let c0 = f
        .cluster()
        .container_of(ns, "brokers-0")
        .context("container of new brokers-0")?;
    assert_eq!(
        docker_cli(&["exec", &c0, "cat", "/var/lib/duomq/e2e-marker"])?,
        "kept"
    );

    // A template change rolls from the highest ordinal, one at a time.
    let before = both_ready(&f).await?;
    let patch = json!({ "spec": { "template": { "metadata": { "annotations": { "e2e/revision": "2" } } } } });
    sets.patch("brokers", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let mut replaced_order: Vec<&str> = Vec::new();
    let deadline = Deadline::after("the rollout", ROLLOUT_TIMEOUT);
    while replaced_order.len() < 2 {
        if deadline.passed() {
            bail!("timed out after {:?} waiting for the rollout; replaced {replaced_order:?}", deadline.timeout());
        }
        for (i, name) in ["brokers-0", "brokers-1"].into_iter().enumerate() {
            if let Ok(pod) = f.pod(name).await {
                if pod.uid() != Some(before[i].clone()) && !replaced_order.contains(&name) {
                    replaced_order.push(name);
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert_eq!(
        replaced_order,
        vec!["brokers-1", "brokers-0"],
        "highest ordinal first"
    );
    both_ready(&f).await?;
    eventually(
        "update revision becomes current",
        STATUS_TIMEOUT,
        || async {
            let s = sets.get("brokers").await?.status.unwrap_or_default();
            if s.current_revision.is_some()
                && s.current_revision == s.update_revision
                && s.updated_replicas == Some(2)
            {
                Ok(())
            } else {
                bail!("status {s:?}")
            }
        },
    )
    .await?;

    // The Service proxy reaches a Ready pod; a failed node takes its pod out.
    let admin = f
        .cluster()
        .service_address(ns, "brokers", "admin")
        .await
        .context("proxy of brokers/admin")?;
    assert!(admin.ip().is_loopback());
    let svc = f.api::<Service>().get("brokers").await?;
    assert_eq!(
        svc.annotations().get("e2e.duomq.io/proxy-admin"),
        Some(&admin.to_string()),
        "the proxy address is recorded on the Service"
    );
    http_get(admin, "/healthz").await?;
    let node0 = f
        .pod("brokers-0")
        .await?
        .spec
        .and_then(|s| s.node_name)
        .context("brokers-0 bound")?;
    f.cluster().fail_node(&node0).await?;
    eventually(
        "brokers-0 not Ready on the failed node",
        STATUS_TIMEOUT,
        || async {
            match condition(&f.pod("brokers-0").await?, "Ready").as_deref() {
                Some("False") => Ok(()),
                other => bail!("Ready {other:?}"),
            }
        },
    )
    .await?;
    let node = Api::<Node>::all(f.client.clone()).get(&node0).await?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    assert_eq!(ready.map(|c| c.status).as_deref(), Some("Unknown"));
    let c0 = f
        .cluster()
        .container_of(ns, "brokers-0")
        .context("container of brokers-0")?;
    eventually(
        "the failed node's container stopped",
        STATUS_TIMEOUT,
        || async {
            match docker_cli(&["inspect", "-f", "{{.State.Running}}", &c0])?.as_str() {
                "false" => Ok(()),
                other => bail!("running: {other}"),
            }
        },
    )
    .await?;
    for _ in 0..4 {
        // Every new connection goes to the one Ready pod.
        let status = http_get(admin, "/status").await?;
        assert!(status.contains("200 OK"));
    }
    f.cluster().restore_node(&node0).await?;
    eventually(
        "brokers-0 Ready again after its node came back",
        POD_READY_TIMEOUT,
        || async {
            let pod = f.pod("brokers-0").await?;
            let restarts = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map(|c| c.restart_count);
            if running_and_ready(&pod) && restarts >= Some(1) {
                Ok(())
            } else {
                bail!(
                    "brokers-0 restarts {restarts:?} ready {:?}",
                    condition(&pod, "Ready")
                )
            }
        },
    )
    .await?;

    // A pod force-deleted while its node is down comes back elsewhere; once the node is
    // back, its kubelet removes the old pod's containers.
    let old = f.pod("brokers-1").await?;
    let old_uid = old.uid().context("uid")?;
    let node1 = old
        .spec
        .and_then(|s| s.node_name)
        .context("brokers-1 bound")?;
    f.cluster().fail_node(&node1).await?;
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    f.api::<Pod>().delete("brokers-1", &force).await?;
    eventually(
        "brokers-1 recreated on a live node",
        POD_READY_TIMEOUT,
        || async {
            let pod = f.pod("brokers-1").await?;
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if pod.uid() != Some(old_uid.clone())
                && running_and_ready(&pod)
                && node != Some(node1.clone())
            {
                Ok(())
            } else {
                bail!("brokers-1 on {node:?} ready {:?}", condition(&pod, "Ready"))
            }
        },
    )
    .await?;
    f.cluster().restore_node(&node1).await?;
    let old_label = format!("label={}={old_uid}", cluster::names::DOCKER_LABEL_POD_UID);
    eventually(
        "the force-deleted pod's containers removed",
        STATUS_TIMEOUT,
        || async {
            match docker_cli(&["ps", "-aq", "--filter", &old_label])?.as_str() {
                "" => Ok(()),
                left => bail!("containers left: {left}"),
            }
        },
    )
    .await?;

    let prefix = f.shutdown().await?;
    let label = format!("label={}={prefix}", cluster::names::DOCKER_LABEL_CLUSTER);
    assert_eq!(
        docker_cli(&["ps", "-aq", "--filter", &label])?,
        "",
        "shutdown removes every container"
    );
    assert_eq!(
        docker_cli(&["network", "ls", "-q", "--filter", &label])?,
        "",
        "shutdown removes the network"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_deployment_missing_image_and_impossible_placement_when_run_should_behave_like_kubernetes(
) -> Result<()> {
    let f = Fixture::start().await?;
    let deployments = f.api::<Deployment>();
    let config_maps = f.api::<ConfigMap>();
    config_maps
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "settings", "namespace": NAMESPACE },
                "data": { "greeting": "hello", "other": "unused" }
            }))?,
        )
        .await?;
    f.api::<Secret>()
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "creds", "namespace": NAMESPACE },
                "stringData": { "password": "s3cret" }
            }))?,
        )
        .await?;
    let deployment = json!({
        "metadata": { "name": "single", "namespace": NAMESPACE },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "single" } },
            "template": {
                "metadata": { "labels": { "app": "single" } },
                "spec": {
                    "initContainers": [{
                        "name": "prepare",
                        "image": f.image,
                        "command": ["sh", "-c", "echo prepared-by-$(WHO) > /scratch/marker"],
                        "env": [{ "name": "WHO", "value": "init" }],
                        "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }]
                    }],
                    "containers": [{
                        "name": "broker",
                        "image": f.image,
                        "args": ["run", "--stomp-listen", "0.0.0.0:61613", "--admin-listen", "0.0.0.0:8161", "--data-dir", "/scratch/data"],
                        "env": [
                            { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
                            { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }
                        ],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": 8161 }, "periodSeconds": 1 },
                        "livenessProbe": { "exec": { "command": ["test", "-f", "/scratch/marker"] }, "periodSeconds": 1 },
                        "volumeMounts": [
                            { "name": "scratch", "mountPath": "/scratch" },
                            { "name": "settings", "mountPath": "/etc/settings" },
                            { "name": "creds", "mountPath": "/etc/settings/creds" }
                        ],
                        "securityContext": { "readOnlyRootFilesystem": true }
                    }],
                    "volumes": [
                        { "name": "scratch", "emptyDir": {} },
                        { "name": "settings", "configMap": { "name": "settings", "items": [{ "key": "greeting", "path": "greeting.txt" }] } },
                        { "name": "creds", "secret": { "secretName": "creds", "defaultMode": 292 } }
                    ]
                }
            }
        }
    });
    deployments
        .create(&PostParams::default(), &from_json(deployment)?)
        .await?;
    let pods = f.api::<Pod>();
    pods.create(&PostParams::default(), &from_json(json!({
        "metadata": { "name": "no-image", "namespace": NAMESPACE },
        "spec": { "containers": [{ "name": "c", "image": "duomq-e2e/missing:none", "imagePullPolicy": "Never" }] }
    }))?)
    .await?;
    pods.create(
        &PostParams::default(),
        &from_json(json!({
            "metadata": { "name": "nowhere", "namespace": NAMESPACE },
            "spec": {
                "nodeSelector": { "disk": "ssd" },
                "containers": [{ "name": "c", "image": f.image }]
            }
        }))?,
    )
    .await?;

    eventually("deployment Available", POD_READY_TIMEOUT, || async {
        let d = deployments.get("single").await?;
        let s = d.status.clone().unwrap_or_default();
        let available = s
            .conditions
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Available" && c.status == "True");
        if available && s.available_replicas == Some(1) && s.updated_replicas == Some(1) {
            Ok(())
        } else {
            let pods: Vec<_> = pods
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .map(|p| {
                    (
                        p.name_any(),
                        p.status
                            .map(|s| (s.init_container_statuses, s.container_statuses)),
                    )
                })
                .collect();
            bail!("status {:?}; pods {pods:?}", d.status)
        }
    })
    .await?;
    let owned: Vec<Pod> = pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.labels().get("app").map(String::as_str) == Some("single"))
        .collect();
    assert_eq!(owned.len(), 1);
    let first = owned[0].name_any();
    assert!(
        first.starts_with("single-"),
        "named like a ReplicaSet's pod: {first}"
    );

    // The init container ran first (its env expanded into the command), the volumes are
    // mounted, env comes from the Secret and the downward API, and the exec liveness probe
    // keeps passing.
    let c = f
        .cluster()
        .container_of(NAMESPACE, &first)
        .context("container of the deployment's pod")?;
    assert_eq!(
        docker_cli(&["exec", &c, "cat", "/scratch/marker"])?,
        "prepared-by-init"
    );
    assert_eq!(
        docker_cli(&["exec", &c, "cat", "/etc/settings/greeting.txt"])?,
        "hello"
    );
    assert_eq!(
        docker_cli(&["exec", &c, "ls", "/etc/settings"])?,
        "creds\ngreeting.txt",
        "only the listed items, and the nested mount point"
    );
    assert_eq!(
        docker_cli(&["exec", &c, "sh", "-c", "echo $PASSWORD"])?,
        "s3cret"
    );
    // A Secret volume nested in the ConfigMap's mount, on a read-only root filesystem.
    let nested = ["exec", &c, "cat", "/etc/settings/creds/password"];
    assert_eq!(docker_cli(&nested)?, "s3cret");
    let mode = [
        "exec",
        &c,
        "stat",
        "-c",
        "%a",
        "/etc/settings/creds/password",
    ];
    assert_eq!(docker_cli(&mode)?, "444");
    let node = owned[0]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("bound")?;
    assert_eq!(docker_cli(&["exec", &c, "sh", "-c", "echo $NODE"])?, node);
    // In-cluster programs reach the API server through the mounted kubeconfig.
    let version = docker_cli(&["exec", &c, "bash", "-c", CALL_API_FROM_CONTAINER])?;
    assert!(
        version.starts_with("HTTP/1.1 200"),
        "GET /version from the pod: {version}"
    );
    let pod = f.pod(&first).await?;
    let init = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.clone())
        .unwrap_or_default();
    let init_exit = init
        .first()
        .and_then(|s| s.state.clone())
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(init_exit, Some(0));
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));
    let restarts = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().map(|s| s.restart_count));
    assert_eq!(restarts, Some(0), "the exec liveness probe passes");

    // A ConfigMap change reaches the running pod's files.
    let patch = json!({ "data": { "greeting": "hello again" } });
    config_maps
        .patch("settings", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually(
        "ConfigMap update in the mounted file",
        STATUS_TIMEOUT,
        || async {
            match docker_cli(&["exec", &c, "cat", "/etc/settings/greeting.txt"])?.as_str() {
                "hello again" => Ok(()),
                other => bail!("file says {other:?}"),
            }
        },
    )
    .await?;

    // A template change replaces the pod (a new one first, then the old one goes).
    let patch = json!({ "spec": { "template": { "metadata": { "annotations": { "e2e/revision": "2" } } } } });
    deployments
        .patch("single", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually("deployment rolled out", POD_READY_TIMEOUT, || async {
        let d = deployments.get("single").await?;
        let s = d.status.clone().unwrap_or_default();
        let progressing = s
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.reason);
        let done = s.observed_generation >= d.metadata.generation
            && s.replicas == Some(1)
            && s.updated_replicas == Some(1)
            && s.available_replicas == Some(1)
            && progressing.as_deref() == Some("NewReplicaSetAvailable");
        let old_gone = pods.get_opt(&first).await?.is_none();
        if done && old_gone {
            Ok(())
        } else {
            bail!("status {:?}, old pod gone {old_gone}", d.status)
        }
    })
    .await?;

    eventually(
        "no-image waiting with ErrImageNeverPull",
        STATUS_TIMEOUT,
        || async {
            let pod = f.pod("no-image").await?;
            let reason = pod
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.first().cloned())
                .and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .and_then(|w| w.reason);
            match reason.as_deref() {
                Some("ErrImageNeverPull") => Ok(()),
                other => bail!("waiting reason {other:?}"),
            }
        },
    )
    .await?;

    eventually("nowhere unschedulable", STATUS_TIMEOUT, || async {
        let pod = f.pod("nowhere").await?;
        let scheduled = pod.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "PodScheduled");
        match scheduled {
            Some(c) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
                let message = c.message.unwrap_or_default();
                assert!(
                    message.starts_with("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."),
                    "{message}"
                );
                Ok(())
            }
            other => bail!("PodScheduled {other:?}"),
        }
    })
    .await?;
    let _: IpAddr = f.cluster().gateway_ip();
    f.shutdown().await?;
    Ok(())
}

/// Runs kubectl against the fixture's API server, as a user on this machine would.
fn kubectl_at(kubeconfig: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("failed to run kubectl (is it installed? scripts/test installs it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_pod_with_output_when_kubectl_logs_should_print_tail_pick_container_and_follow() -> Result<()> {
    let f = Fixture::start().await?;
    let kubeconfig = f.state_dir.with_file_name("kubeconfig");
    f.api
        .as_ref()
        .context("api runs until shutdown")?
        .write_kubeconfig(&kubeconfig, &f.api.as_ref().context("api")?.url())?;
    // Writes three lines (one on stderr), then one more once the test creates /tmp/go.
    // (stdout and stderr are separate pipes: the pauses keep their lines in order.)
    let talk = "echo line 1; echo line 2; sleep 0.5; echo oops >&2; sleep 0.5; echo line 3; \
                until [ -e /tmp/go ]; do sleep 0.2; done; echo after-follow; exec sleep 3600";
    f.api::<Pod>()
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "talker", "namespace": NAMESPACE },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        { "name": "talk", "image": BASE_IMAGE, "imagePullPolicy": "Never", "command": ["bash", "-c", talk] },
                        { "name": "quiet", "image": BASE_IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"] }
                    ]
                }
            }))?,
        )
        .await?;
    let logs = |args: &[&str]| -> Result<(bool, String, String)> {
        let mut all = vec!["-n", NAMESPACE, "logs", "talker"];
        all.extend_from_slice(args);
        let out = kubectl_at(&kubeconfig, &all)?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let printed = eventually("kubectl logs talker -c talk to print three lines", POD_READY_TIMEOUT, || {
        let answer = logs(&["-c", "talk"]);
        async move {
            match answer? {
                (true, out, _) if out.contains("line 3") => Ok(out),
                other => bail!("kubectl logs: {other:?}"),
            }
        }
    })
    .await?;
    assert_eq!(printed, "line 1\nline 2\noops\nline 3\n");

    let (ok, out, err) = logs(&["-c", "talk", "--tail=1"])?;
    assert!(ok, "kubectl logs --tail=1: {err}");
    assert_eq!(out, "line 3\n");
    let (ok, out, err) = logs(&["-c", "talk", "--tail=2", "--timestamps"])?;
    assert!(ok, "kubectl logs --timestamps: {err}");
    let stamped: Vec<&str> = out.lines().collect();
    assert_eq!(stamped.len(), 2, "{out}");
    assert!(stamped.iter().all(|l| l.split_once(' ').is_some_and(|(ts, _)| ts.parse::<jiff::Timestamp>().is_ok())), "{out}");
    let (ok, out, err) = logs(&["-c", "talk", "--limit-bytes=4"])?;
    assert!(ok, "kubectl logs --limit-bytes: {err}");
    assert_eq!(out, "line");
    // Without -c, kubectl picks the first container, as against a real cluster.
    let (ok, out, _) = logs(&[])?;
    assert!(ok && out.starts_with("line 1\n"), "kubectl logs talker: {out}");
    let (ok, out, err) = logs(&["-c", "quiet"])?;
    assert!(ok && out.is_empty(), "kubectl logs -c quiet: {out} {err}");

    let (ok, _, err) = logs(&["-c", "nope"])?;
    assert!(!ok && err.contains("container nope is not valid for pod talker"), "{err}");
    let (ok, _, err) = logs(&["-c", "talk", "--previous"])?;
    assert!(!ok && err.contains("previous terminated container \"talk\" in pod \"talker\" not found"), "{err}");
    let missing = kubectl_at(&kubeconfig, &["-n", NAMESPACE, "logs", "nobody"])?;
    let missing_err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && missing_err.contains("pods \"nobody\" not found"), "{missing_err}");

    // -f streams what the container writes after kubectl started.
    let mut follow = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["-n", NAMESPACE, "logs", "talker", "-c", "talk", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("failed to start kubectl logs -f")?;
    let mut stdout = follow.stdout.take().context("no stdout")?;
    let mut seen = String::new();
    let deadline = Deadline::after("line 3 from kubectl logs -f", STATUS_TIMEOUT);
    while !seen.contains("line 3\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(deadline.left(), stdout.read(&mut buf)).await.context("kubectl logs -f printed no line 3")??;
        ensure_some(n)?;
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let container = docker_cli(&[
        "ps",
        "-q",
        "--filter",
        &format!("label={}={}", cluster::names::DOCKER_LABEL_POD, "talker"),
        "--filter",
        &format!("label={}={}", cluster::names::DOCKER_LABEL_CONTAINER, "talk"),
        "--filter",
        &format!("label={}={}", cluster::names::DOCKER_LABEL_CLUSTER, f._leftovers.prefix),
    ])?;
    docker_cli(&["exec", container.trim(), "touch", "/tmp/go"])?;
    while !seen.contains("after-follow\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(deadline.left(), stdout.read(&mut buf)).await.context("kubectl logs -f did not stream the new line")??;
        ensure_some(n)?;
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(seen, "line 1\nline 2\noops\nline 3\nafter-follow\n");
    follow.kill().await?;
    f.shutdown().await?;
    Ok(())
}

/// A read of 0 bytes: the stream ended before what the test waits for.
fn ensure_some(n: usize) -> Result<()> {
    if n == 0 {
        bail!("the stream ended");
    }
    Ok(())
}
