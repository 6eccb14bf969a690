//! End-to-end: planned moves of the live role, as a user meets them. kubectl installs the
//! operator and applies a pair; `duomq-operator switchover` hands the live role to the
//! backup (reason Switchover, annotation removed, allowFailback leaves it there); then a
//! change of the pod template is rolled out in CloudNativePG's order (the backup first, a
//! switchover to it, then the former live; never two members down) and every receipted
//! message is still there.
//!
//! Runs on the local control plane of this crate, or with `E2E_KUBECONFIG` on that
//! cluster, like `scenarios.rs` (whose environment set-up this mirrors).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions};
use duomq_e2e::env::{build_images, kubectl, repo_root, require_tools, wait_for, LocalControlPlane};
use serde_json::Value;

const OPERATOR_READY: Duration = Duration::from_secs(180);
const GROUP_AVAILABLE: Duration = Duration::from_secs(240);
/// `duomq-operator switchover --wait`: the live drains its clients and hands over.
const SWITCHOVER_DONE: Duration = Duration::from_secs(120);
/// Two pods replaced one after the other, each resyncing, and a switchover between them.
const UPGRADE_DONE: Duration = Duration::from_secs(300);

const MESSAGES: usize = 100;
const QUEUE: &str = "/queue/planned";

struct Env {
    kubeconfig: PathBuf,
    /// Where this checkout's binaries are (the operator's CLI runs from there).
    binaries: PathBuf,
    local: Option<LocalControlPlane>,
    _state: Option<tempfile::TempDir>,
}

impl Env {
    async fn start() -> Result<Env> {
        require_tools()?;
        let binaries =
            std::env::current_exe()?.parent().and_then(Path::parent).map(PathBuf::from).context("no target directory")?;
        if let Some(kc) = std::env::var_os("E2E_KUBECONFIG") {
            return Ok(Env { kubeconfig: PathBuf::from(kc), binaries, local: None, _state: None });
        }
        build_images(&binaries, true)?;
        let state = tempfile::Builder::new().prefix("duomq-e2e-so-").tempdir()?;
        let local = LocalControlPlane::start(state.path(), &format!("duomq-e2e-so{}", std::process::id())).await?;
        Ok(Env { kubeconfig: local.kubeconfig.clone(), binaries, local: Some(local), _state: Some(state) })
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        Ok(kubectl(&self.kubeconfig, args)?)
    }

    fn get(&self, what: &str) -> Result<Value> {
        let text = self.kubectl(&["get", what, "-o", "json"])?;
        serde_json::from_str(&text).context("kubectl printed no JSON")
    }

    async fn stomp_address(&self) -> Result<SocketAddr> {
        let Some(local) = &self.local else {
            bail!("E2E_KUBECONFIG: reaching services of a real cluster needs `kubectl port-forward`, not supported by these tests yet")
        };
        local.cluster.service_address("default", "pair-g0", "stomp").await.context("no proxy for the client Service pair-g0")
    }

    /// `duomq-operator switchover`, as a user runs it.
    fn switchover(&self, to: &str) -> Result<String> {
        let out = std::process::Command::new(self.binaries.join("duomq-operator"))
            .args(["switchover", "--name", "pair", "--group", "pair-g0", "--to", to, "--namespace", "default"])
            .arg(format!("--wait={}s", SWITCHOVER_DONE.as_secs()))
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .context("failed to run duomq-operator switchover")?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "duomq-operator switchover failed: {said}");
        Ok(said)
    }

    /// Sends `count` receipted messages through the client Service, retrying while its
    /// endpoints follow a new live (bodies are unique, so a resent batch counts once).
    async fn send(&self, from: usize, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let address = self.stomp_address().await?;
            let sent = async {
                let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
                for i in from..from + count {
                    let options = SendOptions { persistent: true, receipt: true, ..SendOptions::default() };
                    client.send(QUEUE, format!("m-{i}"), options).await?;
                }
                client.disconnect().await?;
                anyhow::Ok(())
            };
            match sent.await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => eprintln!("send: {e:#} (retrying)"),
                Err(e) => bail!("could not send through the client Service: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every distinct body on the queue, reading until `expected` or a minute passed.
    async fn receive(&self, expected: usize) -> Result<BTreeSet<String>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = BTreeSet::new();
        while got.len() < expected && Instant::now() < deadline {
            let address = self.stomp_address().await?;
            let received = async {
                let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
                let mut sub = client.subscribe(QUEUE, AckMode::ClientIndividual, Some(100)).await?;
                while got.len() < expected {
                    match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
                        Ok(Some(m)) => {
                            got.insert(String::from_utf8_lossy(&m.body).into_owned());
                            client.ack(&m).await?;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                client.disconnect().await?;
                anyhow::Ok(())
            };
            if let Err(e) = received.await {
                eprintln!("receive: {e:#} (retrying)");
            }
        }
        Ok(got)
    }

    async fn shutdown(self) {
        if let Some(local) = self.local {
            local.shutdown().await;
        }
    }
}

fn group(bg: &Value) -> &Value {
    &bg["status"]["groups"][0]
}

fn condition_true(bg: &Value, kind: &str) -> bool {
    bg["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_pair_when_switched_over_and_then_upgraded_should_move_the_live_role_in_order_and_lose_nothing() -> Result<()> {
    let env = Env::start().await?;
    let result = planned_moves(&env).await;
    if result.is_err() {
        for args in [&["get", "brokergroups,pods,statefulsets", "-o", "wide"][..], &["get", "brokergroup", "pair", "-o", "yaml"][..]] {
            eprintln!("$ kubectl {}\n{}", args.join(" "), env.kubectl(args).unwrap_or_else(|e| e.to_string()));
        }
    }
    env.shutdown().await;
    result
}

async fn planned_moves(env: &Env) -> Result<()> {
    let root = repo_root();
    let file = |p: &str| root.join(p).to_string_lossy().into_owned();
    env.kubectl(&["apply", "--server-side", "-f", &file("manifests/install.yaml")])?;
    env.kubectl(&["-n", "duomq-system", "wait", "--for=condition=Available", "deployment/duomq-operator", &format!("--timeout={}s", OPERATOR_READY.as_secs())])?;
    env.kubectl(&["apply", "-f", &file("manifests/examples/pair.yaml")])?;
    for condition in ["Available", "Replicated"] {
        env.kubectl(&["wait", &format!("--for=condition={condition}"), "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    }
    env.kubectl(&["wait", "--for=condition=Ready", "pod", "-l", "duomq.io/role=live", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    env.send(0, MESSAGES).await?;

    // A switchover with the CLI: the backup becomes live, the annotation goes.
    let said = env.switchover("pair-g0-1")?;
    ensure!(said.contains("pair-g0-1 is live"), "{said}");
    let bg = wait_for("the switchover to be recorded and its annotation removed", SWITCHOVER_DONE, || {
        let bg = env.get("brokergroup/pair").ok()?;
        let recorded = group(&bg)["lastFailover"]["reason"] == "Switchover" && group(&bg)["switchover"].is_null();
        (recorded && bg["metadata"]["annotations"]["duomq.io/switchover"].is_null()).then_some(bg)
    })
    .await?;
    ensure!(group(&bg)["lastFailover"]["from"] == "pair-g0-0", "{}", group(&bg));
    let events = env.kubectl(&["get", "events", "--field-selector", "involvedObject.name=pair", "-o", "json"])?;
    ensure!(events.contains("SwitchedOver"), "no SwitchedOver event: {events}");
    env.kubectl(&["wait", "--for=condition=Replicated", "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    env.send(MESSAGES, MESSAGES).await?;

    // allowFailback leaves a live chosen by a switchover alone: still pair-g0-1 a while on.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let bg = env.get("brokergroup/pair")?;
    ensure!(group(&bg)["live"] == "pair-g0-1", "failback undid the switchover: {}", group(&bg));

    // A change of the pod template: rolled out by the operator, in order.
    let before = env.get("statefulset/pair-g0")?["status"]["updateRevision"].as_str().unwrap_or_default().to_string();
    env.kubectl(&["patch", "brokergroup", "pair", "--type", "merge", "-p", r#"{"spec":{"podTemplate":{"annotations":{"e2e.duomq.io/rollout":"1"}}}}"#])?;
    let mut updated_order: Vec<String> = Vec::new();
    let mut most_down = 0;
    let bg = wait_for("the rolling upgrade to finish", UPGRADE_DONE, || {
        let sts = env.get("statefulset/pair-g0").ok()?;
        let update = sts["status"]["updateRevision"].as_str().filter(|r| *r != before)?.to_string();
        let pods = env.get("pods").ok()?;
        let items = pods["items"].as_array()?;
        let mut down = 0;
        for name in ["pair-g0-0", "pair-g0-1"] {
            let pod = items.iter().find(|p| p["metadata"]["name"] == name);
            let up = pod.is_some_and(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running");
            if !up {
                down += 1;
            }
            let current = pod.is_some_and(|p| p["metadata"]["labels"]["controller-revision-hash"] == update.as_str());
            if up && current && !updated_order.iter().any(|n| n == name) {
                updated_order.push(name.to_string());
            }
        }
        most_down = most_down.max(down);
        let bg = env.get("brokergroup/pair").ok()?;
        let settled = updated_order.len() == 2 && condition_true(&bg, "Available") && condition_true(&bg, "Replicated");
        (settled && group(&bg)["live"] == "pair-g0-0").then_some(bg)
    })
    .await?;
    ensure!(updated_order == ["pair-g0-0", "pair-g0-1"], "updated in the wrong order (the backup goes first): {updated_order:?}");
    ensure!(most_down <= 1, "{most_down} members of the group were down at once");
    let last = &group(&bg)["lastFailover"];
    ensure!(last["reason"] == "RollingUpgrade" && last["from"] == "pair-g0-1" && last["to"] == "pair-g0-0", "lastFailover: {last}");

    // Nothing receipted is lost.
    let got = env.receive(2 * MESSAGES).await?;
    ensure!(got.len() == 2 * MESSAGES, "received {} of {} receipted messages", got.len(), 2 * MESSAGES);
    env.kubectl(&["delete", "brokergroup", "pair", "--wait=true"])?;
    Ok(())
}
