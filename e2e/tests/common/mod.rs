//! What the scenario tests share: where they run (the local control plane, or the cluster
//! `E2E_KUBECONFIG` names, reached with kubectl only), kubectl and status helpers, and the
//! traffic that runs through a scenario ([`traffic`]).

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod amqp;
pub mod operator_ha;
pub mod traffic;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use duomq_broker::admin::api::{BrokerStatus, DEFAULT_PORT as ADMIN_PORT};
use duomq_broker::admin::client::AdminClient;
use duomq_broker::client::DEFAULT_STOMP_PORT;
use duomq_operator::names;
use duomq_e2e::env::{build_images, kubectl, repo_root, require_kubectl, require_tools, wait_for, LocalControlPlane};
use duomq_e2e::forward::{Forwarder, Target};
use serde_json::Value;
use traffic::MemberAddresses;

/// Pulling nothing, starting the operator's pod: seconds here; generous for slow CI.
pub const OPERATOR_READY: Duration = Duration::from_secs(180);
/// From `kubectl apply` of a BrokerGroup to `Available`: broker containers start and sync.
pub const GROUP_AVAILABLE: Duration = Duration::from_secs(240);

/// A kubectl port forward: namespace, what it forwards to, and the port there.
type ForwardKey = (String, Target, u16);

/// Where the scenarios run.
pub struct Env {
    pub kubeconfig: PathBuf,
    /// The local control plane, when the scenarios may use what only it has (containers,
    /// API faults, nodes); `None` on a cluster reached through kubectl only.
    pub local: Option<LocalControlPlane>,
    /// On a cluster reached through kubectl only: `kubectl port-forward`s to Services and pods.
    forwards: Option<tokio::sync::Mutex<HashMap<ForwardKey, Forwarder>>>,
    /// A local control plane that the scenarios reach through kubectl only, as a real cluster.
    behind_kubeconfig: Option<LocalControlPlane>,
    _state: Option<tempfile::TempDir>,
}

impl Env {
    /// The cluster of `E2E_KUBECONFIG` (nothing is built: the images are those the manifests
    /// name), else a local control plane with images built from the binaries of this checkout,
    /// reached through kubectl only when `E2E_KUBECTL_ONLY` is set.
    pub async fn start() -> Result<Env> {
        if let Some(kc) = std::env::var_os("E2E_KUBECONFIG") {
            require_kubectl()?;
            return Ok(Env::kubectl_only(PathBuf::from(kc), None, None));
        }
        if std::env::var_os("E2E_KUBECTL_ONLY").is_some() {
            return Env::start_kubectl_only().await;
        }
        let (local, state) = start_local_plane().await?;
        Ok(Env { kubeconfig: local.kubeconfig.clone(), local: Some(local), forwards: None, behind_kubeconfig: None, _state: Some(state) })
    }

    /// A local control plane that the scenarios use as they use the cluster of
    /// `E2E_KUBECONFIG`: through kubectl only, so that this path is tested without one.
    pub async fn start_kubectl_only() -> Result<Env> {
        let (local, state) = start_local_plane().await?;
        Ok(Env::kubectl_only(local.kubeconfig.clone(), Some(local), Some(state)))
    }

    fn kubectl_only(kubeconfig: PathBuf, plane: Option<LocalControlPlane>, state: Option<tempfile::TempDir>) -> Env {
        Env { kubeconfig, local: None, forwards: Some(Default::default()), behind_kubeconfig: plane, _state: state }
    }

    pub fn local(&self) -> Result<&LocalControlPlane> {
        self.local.as_ref().context("this step needs the local control plane, not a cluster reached through kubectl only")
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        Ok(kubectl(&self.kubeconfig, args)?)
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.kubectl(&all)?;
        serde_json::from_str(&text).context("kubectl printed no JSON")
    }

    /// A kube client for the cluster, from the same kubeconfig kubectl uses.
    pub async fn kube_client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Where this machine reaches a Service's STOMP port: the local plane's proxy, or a
    /// loopback port forwarded by kubectl to the Service's ready pod (followed as it changes).
    pub async fn stomp_address(&self, namespace: &str, service: &str) -> Result<SocketAddr> {
        self.service_port(namespace, service, "stomp", DEFAULT_STOMP_PORT).await
    }

    /// Where this machine reaches a Service's AMQP port (`spec.amqp`), as [`Env::stomp_address`].
    pub async fn amqp_address(&self, namespace: &str, service: &str) -> Result<SocketAddr> {
        self.service_port(namespace, service, "amqp", amqp::PORT).await
    }

    /// The Service port named `name`, `port` on its pods.
    async fn service_port(&self, namespace: &str, service: &str, name: &str, port: u16) -> Result<SocketAddr> {
        match &self.local {
            Some(local) => local
                .cluster
                .service_address(namespace, service, name)
                .await
                .with_context(|| format!("no proxy for port {name} of service {namespace}/{service}")),
            None => self.forwarded(namespace, Target::Service(service.to_string()), port).await,
        }
    }

    /// Where this machine reaches the AMQP port of one member (a pod) directly: its pod IP
    /// on the local plane, else a loopback port forwarded by kubectl.
    pub async fn member_amqp_address(&self, namespace: &str, pod: &str) -> Result<SocketAddr> {
        match &self.local {
            Some(_) => Ok(SocketAddr::new(self.pod_ip(namespace, pod)?, amqp::PORT)),
            None => self.forwarded(namespace, Target::Pod(pod.to_string()), amqp::PORT).await,
        }
    }

    /// Where this machine reaches the STOMP port of each of `members` (pods).
    pub async fn member_addresses(&self, namespace: &str, members: &[String]) -> Result<MemberAddresses> {
        if self.local.is_some() {
            return Ok(MemberAddresses::PodIps(Box::new(kube::Api::namespaced(self.kube_client().await?, namespace))));
        }
        let mut forwarded = BTreeMap::new();
        for member in members {
            forwarded.insert(member.clone(), self.forwarded(namespace, Target::Pod(member.clone()), DEFAULT_STOMP_PORT).await?);
        }
        Ok(MemberAddresses::Forwarded(Arc::new(forwarded)))
    }

    async fn forwarded(&self, namespace: &str, target: Target, port: u16) -> Result<SocketAddr> {
        let forwards = self.forwards.as_ref().context("no port forwards on the local control plane")?;
        let mut forwards = forwards.lock().await;
        let key = (namespace.to_string(), target.clone(), port);
        if let Some(f) = forwards.get(&key) {
            return Ok(f.local_addr());
        }
        let forwarder = Forwarder::start(&self.kubeconfig, namespace, target, port).await?;
        let address = forwarder.local_addr();
        forwards.insert(key, forwarder);
        Ok(address)
    }

    /// Kills a pod's broker at once, returning how. On the local plane: `docker kill -s KILL`
    /// of its container (the kubelet restarts it in the same pod). Through kubectl only:
    /// `kubectl delete pod --grace-period=0 --force`, the closest a user gets; the kubelet
    /// still stops the container with a short grace, and the StatefulSet recreates the pod.
    pub fn kill_pod(&self, namespace: &str, pod: &str) -> Result<&'static str> {
        let Some(local) = &self.local else {
            self.kubectl(&["-n", namespace, "delete", "pod", pod, "--grace-period=0", "--force"])?;
            return Ok("forced deletion of the live pod");
        };
        let container = local.cluster.container_of(namespace, pod).with_context(|| format!("no container for {pod}"))?;
        let killed = std::process::Command::new("docker").args(["kill", "--signal", "KILL", &container]).output()?;
        ensure!(killed.status.success(), "docker kill: {}", String::from_utf8_lossy(&killed.stderr));
        Ok("kill -9 of the live container")
    }

    /// The pod's IP (on the local plane, reachable from this machine).
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Result<IpAddr> {
        let text = self.kubectl(&["-n", namespace, "get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?;
        text.trim().parse().with_context(|| format!("pod {namespace}/{pod} has no IP: {text:?}"))
    }

    /// `/status` of a pod's broker at its pod IP (the local control plane only), signed with
    /// its BrokerGroup's cluster password, from the Secret the operator created (or the one
    /// `spec.ha.clusterCredentialsSecret` names), as the operator signs it.
    pub async fn broker_status(&self, namespace: &str, pod: &str) -> Result<BrokerStatus> {
        let address = SocketAddr::new(self.pod_ip(namespace, pod)?, ADMIN_PORT);
        let password = self.cluster_password(namespace, pod)?;
        let client = AdminClient::new(&address.to_string())?.with_password(&password);
        client.status().await.with_context(|| format!("GET /status of {pod}"))
    }

    /// The cluster password of the BrokerGroup `pod` belongs to, read once per group.
    fn cluster_password(&self, namespace: &str, pod: &str) -> Result<String> {
        static PASSWORDS: std::sync::OnceLock<parking_lot::Mutex<HashMap<(String, String), String>>> = std::sync::OnceLock::new();
        let label = format!("jsonpath={{.metadata.labels.{}}}", names::LABEL_INSTANCE.replace('.', "\\."));
        let group = self.kubectl(&["-n", namespace, "get", "pod", pod, "-o", &label])?.trim().to_string();
        ensure!(!group.is_empty(), "pod {namespace}/{pod} has no {} label", names::LABEL_INSTANCE);
        let key = (namespace.to_string(), group.clone());
        if let Some(password) = PASSWORDS.get_or_init(Default::default).lock().get(&key) {
            return Ok(password.clone());
        }
        let bg = self.json(&["-n", namespace, "get", "brokergroup", &group])?;
        let secret = bg["spec"]["ha"]["clusterCredentialsSecret"].as_str().map_or_else(|| names::generated_cluster_secret(&group), str::to_string);
        let path = format!("jsonpath={{.data.{}}}", names::CLUSTER_PASSWORD_KEY);
        let encoded = self.kubectl(&["-n", namespace, "get", "secret", &secret, "-o", &path])?;
        let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim())
            .with_context(|| format!("Secret {namespace}/{secret}: {} is not base64", names::CLUSTER_PASSWORD_KEY))?;
        let password = String::from_utf8(decoded).with_context(|| format!("Secret {namespace}/{secret}: the password is not UTF-8"))?;
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        PASSWORDS.get_or_init(Default::default).lock().insert(key, password.clone());
        Ok(password)
    }

    /// `kubectl apply --server-side` of the install bundle, then waits for the operator.
    pub fn install_operator(&self) -> Result<()> {
        let install = repo_root().join("manifests/install.yaml");
        self.kubectl(&["apply", "--server-side", "-f", &install.to_string_lossy()])?;
        self.kubectl(&[
            "-n",
            "duomq-system",
            "wait",
            "--for=condition=Available",
            "deployment/duomq-operator",
            &format!("--timeout={}s", OPERATOR_READY.as_secs()),
        ])?;
        Ok(())
    }

    /// Installs the operator, applies `manifests/examples/pair.yaml` in `namespace` and waits
    /// until the pair is Available and Replicated.
    pub fn run_example_pair(&self, namespace: &str) -> Result<()> {
        self.install_operator()?;
        let pair = repo_root().join("manifests/examples/pair.yaml");
        self.kubectl(&["-n", namespace, "apply", "-f", &pair.to_string_lossy()])?;
        let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
        for condition in ["Available", "Replicated"] {
            self.kubectl(&["-n", namespace, "wait", &format!("--for=condition={condition}"), "brokergroup/pair", &timeout])?;
        }
        Ok(())
    }

    /// What a person would look at first when a scenario in `namespace` failed: objects,
    /// the BrokerGroup's status, the last lines of each pod's broker.
    pub fn dump(&self, namespace: &str, brokergroup: &str) {
        let ns = ["-n", namespace];
        for args in [&["get", "brokergroups,pods,statefulsets", "-o", "wide"][..], &["get", "brokergroup", brokergroup, "-o", "yaml"][..]] {
            let all = [&ns[..], args].concat();
            eprintln!("$ kubectl {}\n{}", all.join(" "), self.kubectl(&all).unwrap_or_else(|e| e.to_string()));
        }
        let pods = self.kubectl(&["-n", namespace, "get", "pods", "-o", "name"]).unwrap_or_default();
        for pod in pods.lines().filter_map(|p| p.strip_prefix("pod/")) {
            let Some(local) = &self.local else {
                let logs = self.kubectl(&["-n", namespace, "logs", "--tail=40", pod]).unwrap_or_else(|e| e.to_string());
                eprintln!("$ kubectl logs --tail=40 {pod}\n{logs}");
                continue;
            };
            if let Some(c) = local.cluster.container_of(namespace, pod) {
                if let Ok(o) = std::process::Command::new("docker").args(["logs", "--tail", "40", &c]).output() {
                    eprintln!("$ docker logs {pod}\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                }
            }
        }
    }

    pub async fn shutdown(self) {
        // Stops kubectl before the cluster it talks to.
        drop(self.forwards);
        for local in [self.local, self.behind_kubeconfig].into_iter().flatten() {
            local.shutdown().await;
        }
    }
}

/// The status of group `index` of a BrokerGroup.
pub fn group_status(bg: &Value, index: usize) -> &Value {
    &bg["status"]["groups"][index]
}

/// The status (`True`/`False`/`Unknown`) of a condition of a BrokerGroup.
pub fn condition(bg: &Value, kind: &str) -> Option<String> {
    bg["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind).and_then(|c| c["status"].as_str()).map(String::from)
}

/// Where this checkout's binaries are: the target directory this test was built in.
pub fn binaries_dir() -> Result<PathBuf> {
    std::env::current_exe()?.parent().and_then(Path::parent).map(PathBuf::from).context("no target directory")
}

/// A local control plane with images holding the binaries next to this test's.
async fn start_local_plane() -> Result<(LocalControlPlane, tempfile::TempDir)> {
    require_tools()?;
    // Images already holding these binaries are reused; their build logs stay in the target dir.
    let binaries = binaries_dir()?;
    build_images(&binaries, false, &binaries.join("e2e-image-logs"))?;
    let state = tempfile::Builder::new().prefix("duomq-e2e-").tempdir()?;
    // Tests of one binary may each start a plane: their containers and networks must differ.
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!("duomq-e2e-t{}-{n}", std::process::id());
    let local = LocalControlPlane::start(state.path(), &prefix).await?;
    Ok((local, state))
}

/// Polls the BrokerGroup until `check` accepts its JSON.
pub async fn wait_for_brokergroup(env: &Env, namespace: &str, name: &str, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Result<Value> {
    Ok(wait_for(what, timeout, || {
        let bg = env.json(&["-n", namespace, "get", "brokergroup", name]).ok()?;
        check(&bg).then_some(bg)
    })
    .await?)
}
