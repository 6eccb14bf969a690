//! End-to-end scenarios, as a user meets duomq: kubectl installs the operator from
//! `manifests/install.yaml` (the operator runs from its image), applies a BrokerGroup, waits
//! for it, sends and receives through the client Service, kills the live broker's process,
//! watches the status tell the story, re-applies, deletes.
//!
//! By default they run on the local control plane of this crate (pods are Docker containers
//! of the images built from this checkout). With `E2E_KUBECONFIG` set they run against that
//! cluster instead, building nothing (the images must be pullable there). Missing Docker or
//! kubectl fails the test with what to install: nothing is skipped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions};
use duomq_e2e::env::{build_images, kubectl, repo_root, require_tools, wait_for, LocalControlPlane};
use serde_json::Value;

/// Pulling nothing, starting the operator's pod: seconds here; generous for slow CI.
const OPERATOR_READY: Duration = Duration::from_secs(180);
/// From `kubectl apply` of a pair to `Available`: two broker containers start and sync.
const GROUP_AVAILABLE: Duration = Duration::from_secs(240);
/// From kill -9 of the live to the status naming the backup as live.
const FAILOVER_SEEN: Duration = Duration::from_secs(120);
/// From the failover to the original member live again (restart, resync, failback).
const FAILBACK_SEEN: Duration = Duration::from_secs(180);
/// Garbage collection after `kubectl delete`.
const GC_DONE: Duration = Duration::from_secs(120);

const MESSAGES: usize = 200;

struct Env {
    kubeconfig: PathBuf,
    local: Option<LocalControlPlane>,
    _state: Option<tempfile::TempDir>,
}

impl Env {
    async fn start() -> Result<Env> {
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

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        Ok(kubectl(&self.kubeconfig, args)?)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.kubectl(&all)?;
        serde_json::from_str(&text).context("kubectl printed no JSON")
    }

    /// Where this machine reaches a Service's STOMP port.
    async fn stomp_address(&self, service: &str) -> Result<SocketAddr> {
        match &self.local {
            Some(local) => {
                local.cluster.service_address("default", service, "stomp").await.with_context(|| format!("no proxy for service {service}"))
            }
            None => bail!("E2E_KUBECONFIG: reaching services of a real cluster needs `kubectl port-forward`, not supported by these tests yet"),
        }
    }

    async fn shutdown(self) {
        if let Some(local) = self.local {
            local.shutdown().await;
        }
    }
}

fn group_status(bg: &Value) -> &Value {
    &bg["status"]["groups"][0]
}

fn condition(bg: &Value, kind: &str) -> Option<String> {
    bg["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind).and_then(|c| c["status"].as_str()).map(String::from)
}

async fn send_receipted(address: SocketAddr, queue: &str, from: usize, count: usize) -> Result<()> {
    let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
    for i in from..from + count {
        client.send(queue, format!("m-{i}"), SendOptions { persistent: true, receipt: true, ..SendOptions::default() }).await?;
    }
    client.disconnect().await?;
    Ok(())
}

async fn receive_all(address: SocketAddr, queue: &str, expected: usize) -> Result<BTreeSet<String>> {
    let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
    let mut sub = client.subscribe(queue, AckMode::ClientIndividual, Some(100)).await?;
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Some(m)) => {
                got.insert(String::from_utf8_lossy(&m.body).into_owned());
                client.ack(&m).await?;
            }
            Ok(None) => break,
            Err(_) => continue,
        }
    }
    client.disconnect().await?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_operator_installed_with_kubectl_when_a_pair_is_applied_should_serve_fail_over_fail_back_and_clean_up() -> Result<()> {
    let env = Env::start().await?;
    let result = pair_scenario(&env).await;
    if result.is_err() {
        // What a person would look at first.
        for args in [&["get", "brokergroups,pods,statefulsets", "-A", "-o", "wide"][..], &["get", "brokergroup", "pair", "-o", "yaml"][..]] {
            eprintln!("$ kubectl {}\n{}", args.join(" "), env.kubectl(args).unwrap_or_else(|e| e.to_string()));
        }
        if let Some(local) = &env.local {
            for pod in ["pair-g0-0", "pair-g0-1"] {
                if let Some(c) = local.cluster.container_of("default", pod) {
                    let logs = std::process::Command::new("docker").args(["logs", "--tail", "40", &c]).output();
                    if let Ok(o) = logs {
                        eprintln!("$ docker logs {pod}\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                    }
                }
            }
        }
    }
    env.shutdown().await;
    result
}

async fn pair_scenario(env: &Env) -> Result<()> {
    let root = repo_root();
    let file = |p: &str| root.join(p).to_string_lossy().into_owned();

    // Install: CRDs, RBAC and the operator Deployment, as the README says.
    env.kubectl(&["apply", "--server-side", "-f", &file("manifests/install.yaml")])?;
    env.kubectl(&["-n", "duomq-system", "wait", "--for=condition=Available", "deployment/duomq-operator", &format!("--timeout={}s", OPERATOR_READY.as_secs())])?;

    // A pair, Available.
    env.kubectl(&["apply", "-f", &file("manifests/examples/pair.yaml")])?;
    env.kubectl(&["wait", "--for=condition=Available", "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    let bg = env.json(&["get", "brokergroup", "pair"])?;
    ensure!(group_status(&bg)["live"] == "pair-g0-0", "expected pair-g0-0 live: {}", bg["status"]);

    // Messages through the client Service, which follows the live (a ready pod labelled live).
    env.kubectl(&["wait", "--for=condition=Ready", "pod", "-l", "duomq.io/role=live", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    let address = env.stomp_address("pair-g0").await?;
    // The Service's endpoints follow the role label the operator has just set: retry as a
    // client would. Bodies are unique, so a resent batch is counted once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = send_receipted(address, "/queue/e2e", 0, MESSAGES).await {
        ensure!(Instant::now() < deadline, "could not send through the client Service: {e:#}");
        eprintln!("send: {e:#} (retrying)");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Re-applying the unchanged BrokerGroup changes nothing.
    env.kubectl(&["apply", "-f", &file("manifests/examples/pair.yaml")])?;
    let sts = env.json(&["get", "statefulset", "pair-g0"])?;
    ensure!(sts["metadata"]["generation"] == 1, "re-apply changed the StatefulSet: generation {}", sts["metadata"]["generation"]);

    // A backup in sync first: only an in-sync backup may take the group's Lease.
    env.kubectl(&["wait", "--for=condition=Replicated", "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;

    // kill -9 of the live broker's process.
    let local = env.local.as_ref().context("the kill step needs the local control plane")?;
    let container = local.cluster.container_of("default", "pair-g0-0").context("no container for pair-g0-0")?;
    let killed = std::process::Command::new("docker").args(["kill", "--signal", "KILL", &container]).output()?;
    ensure!(killed.status.success(), "docker kill: {}", String::from_utf8_lossy(&killed.stderr));

    // The status tells the story. The backup takes over within seconds and, with
    // allowFailback, hands the role back as soon as the restarted member has resynced, so the
    // operator may see either step first.
    let failed_over = wait_for("the failover to be counted", FAILOVER_SEEN, || {
        let bg = env.json(&["get", "brokergroup", "pair"]).ok()?;
        (group_status(&bg)["failovers"].as_i64() >= Some(1)).then_some(bg)
    })
    .await?;
    let g = group_status(&failed_over);
    if g["failovers"] == 1 {
        ensure!(g["lastFailover"]["from"] == "pair-g0-0" && g["lastFailover"]["to"] == "pair-g0-1", "lastFailover: {g}");
        ensure!(["LiveLost", "OperatorFailover"].contains(&g["lastFailover"]["reason"].as_str().unwrap_or("")), "reason: {g}");
    }
    let events = env.kubectl(&["get", "events", "--field-selector", "involvedObject.name=pair", "-o", "json"])?;
    ensure!(events.contains("FailedOver"), "no FailedOver event: {events}");

    // Nothing acknowledged is lost: every receipted message is there, on the new live.
    let address = env.stomp_address("pair-g0").await?;
    let got = wait_for_messages(address, MESSAGES).await?;
    ensure!(got.len() == MESSAGES, "received {} of {MESSAGES} receipted messages after failover", got.len());

    // allowFailback: the original member resyncs and takes the live role back.
    let back = wait_for("pair-g0-0 to be live again (failback)", FAILBACK_SEEN, || {
        let bg = env.json(&["get", "brokergroup", "pair"]).ok()?;
        (group_status(&bg)["live"] == "pair-g0-0").then_some(bg)
    })
    .await?;
    ensure!(group_status(&back)["lastFailover"]["reason"] == "Failback", "after failback: {}", group_status(&back));
    ensure!(group_status(&back)["failovers"].as_i64() >= Some(2), "failover and failback counted: {}", group_status(&back));
    ensure!(condition(&back, "Available").as_deref() == Some("True"), "not Available after failback");

    // Deleting the BrokerGroup garbage-collects everything it owned.
    env.kubectl(&["delete", "brokergroup", "pair", "--wait=true"])?;
    wait_for("everything the pair owned to be deleted", GC_DONE, || {
        let left = env.kubectl(&["get", "statefulsets,services,configmaps,poddisruptionbudgets,secrets", "-l", "app.kubernetes.io/instance=pair", "-o", "name"]).ok()?;
        left.trim().is_empty().then_some(())
    })
    .await?;
    Ok(())
}

async fn wait_for_messages(address: SocketAddr, expected: usize) -> Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut all = BTreeSet::new();
    while all.len() < expected && Instant::now() < deadline {
        match receive_all(address, "/queue/e2e", expected - all.len()).await {
            Ok(got) => all.extend(got),
            Err(e) => eprintln!("receive: {e:#} (retrying: the Service may still point at the old live)"),
        }
    }
    Ok(all)
}
