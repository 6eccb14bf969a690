//! What the scenario tests share: where they run (the local control plane, or the cluster
//! `E2E_KUBECONFIG` names), kubectl and status helpers, and the traffic that runs through a
//! scenario ([`traffic`]).

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod traffic;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use duomq_e2e::env::{build_images, kubectl, repo_root, require_tools, wait_for, LocalControlPlane};
use serde_json::Value;

/// Pulling nothing, starting the operator's pod: seconds here; generous for slow CI.
pub const OPERATOR_READY: Duration = Duration::from_secs(180);
/// From `kubectl apply` of a BrokerGroup to `Available`: broker containers start and sync.
pub const GROUP_AVAILABLE: Duration = Duration::from_secs(240);

/// Where the scenarios run.
pub struct Env {
    pub kubeconfig: PathBuf,
    pub local: Option<LocalControlPlane>,
    _state: Option<tempfile::TempDir>,
}

impl Env {
    /// The cluster of `E2E_KUBECONFIG`, else a local control plane with images built from
    /// the binaries of this checkout.
    pub async fn start() -> Result<Env> {
        require_tools()?;
        if let Some(kc) = std::env::var_os("E2E_KUBECONFIG") {
            return Ok(Env { kubeconfig: PathBuf::from(kc), local: None, _state: None });
        }
        let binaries = std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(PathBuf::from)
            .context("no target directory")?;
        build_images(&binaries, true)?;
        let state = tempfile::Builder::new().prefix("duomq-e2e-").tempdir()?;
        let prefix = format!("duomq-e2e-t{}", std::process::id());
        let local = LocalControlPlane::start(state.path(), &prefix).await?;
        Ok(Env { kubeconfig: local.kubeconfig.clone(), local: Some(local), _state: Some(state) })
    }

    pub fn local(&self) -> Result<&LocalControlPlane> {
        self.local.as_ref().context("this step needs the local control plane (E2E_KUBECONFIG is set)")
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

    /// Where this machine reaches a Service's STOMP port.
    pub async fn stomp_address(&self, namespace: &str, service: &str) -> Result<SocketAddr> {
        match &self.local {
            Some(local) => local
                .cluster
                .service_address(namespace, service, "stomp")
                .await
                .with_context(|| format!("no proxy for service {namespace}/{service}")),
            None => bail!("E2E_KUBECONFIG: reaching services of a real cluster needs `kubectl port-forward`, not supported by these tests yet"),
        }
    }

    /// The pod's IP (on the local plane, reachable from this machine).
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Result<IpAddr> {
        let text = self.kubectl(&["-n", namespace, "get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?;
        text.trim().parse().with_context(|| format!("pod {namespace}/{pod} has no IP: {text:?}"))
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

    /// What a person would look at first when a scenario in `namespace` failed: objects,
    /// the BrokerGroup's status, the last lines of each pod's broker.
    pub fn dump(&self, namespace: &str, brokergroup: &str) {
        let ns = ["-n", namespace];
        for args in [&["get", "brokergroups,pods,statefulsets", "-o", "wide"][..], &["get", "brokergroup", brokergroup, "-o", "yaml"][..]] {
            let all = [&ns[..], args].concat();
            eprintln!("$ kubectl {}\n{}", all.join(" "), self.kubectl(&all).unwrap_or_else(|e| e.to_string()));
        }
        let Some(local) = &self.local else { return };
        let pods = self.kubectl(&["-n", namespace, "get", "pods", "-o", "name"]).unwrap_or_default();
        for pod in pods.lines().filter_map(|p| p.strip_prefix("pod/")) {
            if let Some(c) = local.cluster.container_of(namespace, pod) {
                if let Ok(o) = std::process::Command::new("docker").args(["logs", "--tail", "40", &c]).output() {
                    eprintln!("$ docker logs {pod}\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                }
            }
        }
    }

    pub async fn shutdown(self) {
        if let Some(local) = self.local {
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

/// Polls the BrokerGroup until `check` accepts its JSON.
pub async fn wait_for_brokergroup(env: &Env, namespace: &str, name: &str, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Result<Value> {
    Ok(wait_for(what, timeout, || {
        let bg = env.json(&["-n", namespace, "get", "brokergroup", name]).ok()?;
        check(&bg).then_some(bg)
    })
    .await?)
}
