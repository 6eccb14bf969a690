//! End-to-end: the kubectl plugin (`kubectl-duomq` of this checkout) against a running pair,
//! as a user runs it: `status` draws the tree (and `kubectl duomq status` finds the plugin on
//! PATH through kubectl's plugin lookup), `logs` prints the live's broker log (and follows
//! it), `switchover --wait` moves the live role and returns once the status shows it;
//! `fence`/`unfence` and `hibernate`/`resume` with `--wait` against the operator's side of
//! those annotations.
//!
//! Runs where the other scenarios run (see `common::Env`). The plugin binary must be built
//! (`cargo build -p kubectl-duomq`; `cargo test --workspace` builds it).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{binaries_dir, condition, group_status, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

const NAMESPACE: &str = "default";
/// `switchover --wait`: the live drains its clients and hands over.
const SWITCHOVER_DONE: Duration = Duration::from_secs(120);
/// `fence --wait`: the operator switches a fenced live over first, then the member reports it.
const FENCE_DONE: Duration = Duration::from_secs(180);
/// `hibernate --wait`/`resume --wait`: pods stopped one by one, or started and synced.
const HIBERNATION_DONE: Duration = Duration::from_secs(240);
/// `logs -f`: the first line of a running broker's log.
const FIRST_LOG_LINE: Duration = Duration::from_secs(30);

/// The plugin binary of this checkout, run with the scenario's kubeconfig.
struct Plugin {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

/// What one run printed.
struct Said {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Plugin {
    fn new(env: &Env) -> Result<Plugin> {
        let binary = binaries_dir()?.join("kubectl-duomq");
        ensure!(binary.is_file(), "{} is missing: run `cargo build -p kubectl-duomq` first", binary.display());
        Ok(Plugin { binary, kubeconfig: env.kubeconfig.clone() })
    }

    async fn run(&self, args: &[&str]) -> Result<Said> {
        let out = tokio::process::Command::new(&self.binary)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", NAMESPACE])
            .output()
            .await
            .context("failed to run kubectl-duomq")?;
        Ok(Said { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
    }

    /// Runs a command that must succeed; its standard output.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let said = self.run(args).await?;
        ensure!(said.ok, "kubectl duomq {} failed: {}{}", args.join(" "), said.stdout, said.stderr);
        Ok(said.stdout)
    }

    async fn status_json(&self) -> Result<Value> {
        let text = self.ok(&["status", "pair", "-o", "json"]).await?;
        serde_json::from_str(&text).with_context(|| format!("status -o json printed no JSON: {text}"))
    }
}

/// Installs the operator, applies the example pair and waits until it is whole.
async fn running_pair(env: &Env) -> Result<()> {
    env.run_example_pair(NAMESPACE)?;
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    // The tree shows each pod's readiness, which lags the status by a probe period.
    env.kubectl(&["-n", NAMESPACE, "wait", "--for=condition=Ready", "pod", "-l", "app.kubernetes.io/instance=pair", &timeout])?;
    Ok(())
}

async fn scenario(env: &Env, steps: impl AsyncFnOnce(&Env, &Plugin) -> Result<()>) -> Result<()> {
    let result = async {
        let plugin = Plugin::new(env)?;
        running_pair(env).await?;
        steps(env, &plugin).await
    }
    .await;
    if result.is_err() {
        env.dump(NAMESPACE, "pair");
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_running_pair_when_the_plugin_shows_logs_and_switches_over_should_tell_and_move_the_live() -> Result<()> {
    let env = Env::start().await?;
    let result = scenario(&env, status_logs_switchover).await;
    env.shutdown().await;
    result
}

async fn status_logs_switchover(env: &Env, plugin: &Plugin) -> Result<()> {
    // The tree: the group, its live, both members with their pods.
    let tree = plugin.ok(&["status", "pair"]).await?;
    println!("$ kubectl duomq status pair\n{tree}");
    ensure!(!tree.contains('\u{1b}'), "colour off a terminal: {tree:?}");
    for line in ["BrokerGroup default/pair: 1/1 live", "conditions: ", "Available=True", "group pair-g0: live pair-g0-0, epoch", "pair-g0-0  live  pod Running, ready", "pair-g0-1  backup  synced  lag "] {
        ensure!(tree.contains(line), "the tree lacks {line:?}:\n{tree}");
    }
    let view = plugin.status_json().await?;
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"])?;
    ensure!(view["groups"][0]["epoch"] == group_status(&bg, 0)["epoch"], "status -o json {view} against {bg}");
    let yaml: Value = serde_yaml::from_str(&plugin.ok(&["status", "pair", "-o", "yaml"]).await?)?;
    ensure!(yaml["groups"][0]["members"][1]["pod"] == "pair-g0-1", "status -o yaml: {yaml}");

    // kubectl finds the plugin on PATH and hands it its arguments.
    let path = format!("{}:{}", binaries_dir()?.display(), std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("kubectl").args(["duomq", "status", "pair", "-n", NAMESPACE]).env("PATH", path).env("KUBECONFIG", &env.kubeconfig).output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && text.contains("group pair-g0: live pair-g0-0"), "kubectl duomq status: {text}{}", String::from_utf8_lossy(&out.stderr));

    // The live's log lines, the same kubectl prints.
    let said = plugin.run(&["logs", "pair", "pair-g0", "--tail", "5"]).await?;
    ensure!(said.ok && said.stderr.contains("logs of pair-g0-0 (live)"), "logs: {}{}", said.stdout, said.stderr);
    let lines: Vec<&str> = said.stdout.lines().collect();
    ensure!(!lines.is_empty() && lines.len() <= 5, "--tail 5 printed {} lines:\n{}", lines.len(), said.stdout);
    let kubectl_logs = env.kubectl(&["-n", NAMESPACE, "logs", "pair-g0-0", "-c", "broker", "--tail=400"])?;
    for line in &lines {
        ensure!(kubectl_logs.contains(line), "{line:?} is not in the live's log:\n{kubectl_logs}");
    }
    follow_prints_a_line(plugin).await?;

    // Refusals are one line and change nothing.
    let refused = plugin.run(&["switchover", "pair", "pair-g0", "pair-g0-7"]).await?;
    ensure!(!refused.ok && refused.stderr.trim_end().lines().count() == 1 && refused.stderr.contains("pair-g0-7 is not a member of pair-g0"), "{}", refused.stderr);
    let missing = plugin.run(&["status", "nope"]).await?;
    ensure!(!missing.ok && missing.stderr.contains("BrokerGroup default/nope not found"), "{}", missing.stderr);

    // The switchover: --wait returns once the status shows the new live.
    let said = plugin.ok(&["switchover", "pair", "pair-g0", "pair-g0-1", "--wait", "--timeout", &format!("{}s", SWITCHOVER_DONE.as_secs())]).await?;
    ensure!(said.contains("pair-g0-1 is live"), "{said}");
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"])?;
    ensure!(group_status(&bg, 0)["live"] == "pair-g0-1", "live after the switchover: {}", group_status(&bg, 0));
    // The plugin reports the counts the status holds (switchovers apart from failovers).
    let view = plugin.status_json().await?;
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"])?;
    let last = &view["groups"][0]["lastFailover"];
    ensure!(view["groups"][0]["live"] == "pair-g0-1" && last["reason"] == "Switchover" && last["from"] == "pair-g0-0", "{view}");
    // An absent count is 0, as the status type reads it.
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    for count in ["failovers", "switchovers"] {
        let same = n(&view[count]) == n(&bg["status"][count]) && n(&view["groups"][0][count]) == n(&group_status(&bg, 0)[count]);
        ensure!(same, "{count}: {view} against {bg}");
    }
    let said = plugin.run(&["logs", "pair", "pair-g0", "--tail", "1"]).await?;
    ensure!(said.ok && said.stderr.contains("logs of pair-g0-1 (live)"), "logs after the switchover: {}", said.stderr);
    let said = plugin.run(&["logs", "pair", "pair-g0", "--member", "pair-g0-0", "--tail", "1"]).await?;
    ensure!(said.ok && said.stderr.contains("logs of pair-g0-0 (member)"), "logs --member: {}", said.stderr);
    env.kubectl(&["-n", NAMESPACE, "delete", "brokergroup", "pair", "--wait=true"])?;
    Ok(())
}

/// `logs -f` prints the live's log as it goes: a first line within a bound, and it is still
/// running (following) after that line.
async fn follow_prints_a_line(plugin: &Plugin) -> Result<()> {
    let mut child = tokio::process::Command::new(&plugin.binary)
        .args(["logs", "pair", "pair-g0", "-f", "--tail", "1", "-n", NAMESPACE, "--kubeconfig"])
        .arg(&plugin.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(FIRST_LOG_LINE, lines.next_line()).await.context("logs -f printed nothing")??;
    ensure!(first.is_some_and(|l| !l.is_empty()), "logs -f ended without a line");
    ensure!(child.try_wait()?.is_none(), "logs -f exited instead of following");
    child.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_running_pair_when_a_member_is_fenced_and_the_group_hibernated_should_wait_for_each_and_come_back() -> Result<()> {
    let env = Env::start().await?;
    let result = scenario(&env, fence_and_hibernate).await;
    env.shutdown().await;
    result
}

async fn fence_and_hibernate(env: &Env, plugin: &Plugin) -> Result<()> {
    let annotation = |bg: &Value| bg["metadata"]["annotations"]["duomq.io/fenced-members"].as_str().map(String::from);
    let refused = plugin.run(&["fence", "pair", "other-g0-1"]).await?;
    ensure!(!refused.ok && refused.stderr.contains("other-g0-1 is not a member of BrokerGroup default/pair"), "{}", refused.stderr);

    // Another entry (a member of no group here, written by hand) is kept by both edits.
    env.kubectl(&["-n", NAMESPACE, "annotate", "brokergroup", "pair", r#"duomq.io/fenced-members=["gone-g0-1"]"#])?;
    let fence_done = format!("{}s", FENCE_DONE.as_secs());
    let said = plugin.ok(&["fence", "pair", "pair-g0-1", "--wait", "--timeout", &fence_done]).await?;
    ensure!(said.contains("pair-g0-1 is fenced"), "{said}");
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"])?;
    ensure!(annotation(&bg).as_deref() == Some(r#"["gone-g0-1","pair-g0-1"]"#), "annotation: {:?}", annotation(&bg));
    let tree = plugin.ok(&["status", "pair"]).await?;
    println!("$ kubectl duomq status pair (fenced)\n{tree}");
    ensure!(tree.contains("fenced: pair-g0-1") && tree.contains("group pair-g0: live pair-g0-0"), "{tree}");

    let said = plugin.ok(&["unfence", "pair", "pair-g0-1", "--wait", "--timeout", &fence_done]).await?;
    ensure!(said.contains("pair-g0-1 is unfenced"), "{said}");
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"])?;
    ensure!(annotation(&bg).as_deref() == Some(r#"["gone-g0-1"]"#), "annotation: {:?}", annotation(&bg));
    env.kubectl(&["-n", NAMESPACE, "annotate", "brokergroup", "pair", "duomq.io/fenced-members-"])?;
    wait_for_brokergroup(env, NAMESPACE, "pair", "the unfenced member back in sync", GROUP_AVAILABLE, |bg| condition(bg, "Replicated").as_deref() == Some("True")).await?;

    // Hibernation: no broker pod runs, then both come back and the pair is whole.
    let hibernation_done = format!("{}s", HIBERNATION_DONE.as_secs());
    let said = plugin.ok(&["hibernate", "pair", "--wait", "--timeout", &hibernation_done]).await?;
    ensure!(said.contains("BrokerGroup default/pair is hibernated"), "{said}");
    let pods = env.json(&["-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/instance=pair"])?;
    ensure!(pods["items"].as_array().is_some_and(Vec::is_empty), "pods run while hibernated: {pods}");
    let tree = plugin.ok(&["status", "pair"]).await?;
    println!("$ kubectl duomq status pair (hibernated)\n{tree}");
    ensure!(tree.lines().next().is_some_and(|l| l.ends_with(", hibernated")), "{tree}");

    let said = plugin.ok(&["resume", "pair", "--wait", "--timeout", &hibernation_done]).await?;
    ensure!(said.contains("BrokerGroup default/pair is resumed"), "{said}");
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    env.kubectl(&["-n", NAMESPACE, "wait", "--for=condition=Available", "brokergroup/pair", &timeout])?;
    env.kubectl(&["-n", NAMESPACE, "delete", "brokergroup", "pair", "--wait=true"])?;
    Ok(())
}
