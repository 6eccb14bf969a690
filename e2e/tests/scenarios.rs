//! End-to-end scenarios, as a user meets duomq: kubectl installs the operator from
//! `manifests/install.yaml` (the operator runs from its image), applies a BrokerGroup, waits
//! for it, sends and receives through the client Service, kills the live broker's process,
//! watches the status tell the story, re-applies, deletes.
//!
//! By default they run on the local control plane of this crate (pods are Docker containers
//! of the images built from this checkout). With `E2E_KUBECONFIG` set they run against that
//! cluster instead, building nothing (the images the manifests name must be pullable there)
//! and using kubectl only: `kubectl port-forward` reaches the client Service and the pods,
//! and the live is killed by `kubectl delete pod --grace-period=0 --force`. The second test
//! runs that kubectl-only path on a local control plane, so it is tested without a cluster.
//! Missing Docker or kubectl fails the test with what to install: nothing is skipped.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::traffic::{failover_time, GroupTraffic};
use common::{condition, group_status, Env, GROUP_AVAILABLE};
use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions};
use duomq_e2e::env::{repo_root, wait_for};
use duomq_testkit::{timeouts, Deadline};

/// From kill -9 of the live to the status naming the backup as live.
const FAILOVER_SEEN: Duration = Duration::from_secs(120);
/// From the failover to the original member live again (restart, resync, failback).
const FAILBACK_SEEN: Duration = Duration::from_secs(180);
/// Garbage collection after `kubectl delete`.
const GC_DONE: Duration = Duration::from_secs(120);

/// For every message of the batch to be received again after a failover or failback.
const DELIVERED: Duration = Duration::from_secs(120);
const MESSAGES: usize = 200;
/// Receipts the producer must still get after the failback before the traffic stops.
const RECEIPTS_AFTER: usize = 20;

async fn send_receipted(address: SocketAddr, queue: &str, from: usize, count: usize) -> Result<()> {
    let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
    for i in from..from + count {
        client.send(queue, format!("m-{i}"), SendOptions { persistent: true, receipt: true, ..SendOptions::default() }).await?;
    }
    client.disconnect().await?;
    Ok(())
}

/// Receives and acknowledges up to `expected` messages into `got`. What it received stays
/// in `got` when the connection fails half-way (say a failback stops client traffic): those
/// messages are acknowledged and will not come again.
async fn receive_all(address: SocketAddr, queue: &str, expected: usize, got: &mut BTreeSet<String>) -> Result<()> {
    let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
    let mut sub = client.subscribe(queue, AckMode::ClientIndividual, Some(100)).await?;
    let deadline = Deadline::after(format!("{expected} messages from {queue}"), timeouts::RESUME);
    while got.len() < expected && !deadline.passed() {
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
    Ok(())
}

/// One scenario at a time: each starts its own cluster, and two cores are all there is.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_operator_installed_with_kubectl_when_a_pair_is_applied_should_serve_fail_over_fail_back_and_clean_up() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    run(Env::start().await?).await
}

/// The path `E2E_KUBECONFIG` takes, on a local control plane: kubectl port-forward to the
/// Service and pods, forced deletion of the live pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_cluster_reached_with_kubectl_only_when_a_pair_is_applied_should_serve_fail_over_fail_back_and_clean_up() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        println!("skipped: with E2E_KUBECONFIG set the other scenario already takes this path, on that cluster");
        return Ok(());
    }
    run(Env::start_kubectl_only().await?).await
}

async fn run(env: Env) -> Result<()> {
    let result = pair_scenario(&env).await;
    if result.is_err() {
        env.dump("default", "pair");
    }
    env.shutdown().await;
    result
}

async fn pair_scenario(env: &Env) -> Result<()> {
    let root = repo_root();
    let file = |p: &str| root.join(p).to_string_lossy().into_owned();

    // Install: CRDs, RBAC and the operator Deployment, as the README says.
    env.install_operator()?;

    // A pair, Available.
    env.kubectl(&["apply", "-f", &file("manifests/examples/pair.yaml")])?;
    env.kubectl(&["wait", "--for=condition=Available", "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    let bg = env.json(&["get", "brokergroup", "pair"])?;
    ensure!(group_status(&bg, 0)["live"] == "pair-g0-0", "expected pair-g0-0 live: {}", bg["status"]);

    // Messages through the client Service, which follows the live (a ready pod labelled live).
    env.kubectl(&["wait", "--for=condition=Ready", "pod", "-l", "duomq.io/role=live", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    let address = env.stomp_address("default", "pair-g0").await?;
    // The Service's endpoints follow the role label the operator has just set: retry as a
    // client would. Bodies are unique, so a resent batch is counted once.
    let deadline = Deadline::after("a send through the client Service", timeouts::CONNECT);
    while let Err(e) = send_receipted(address, "/queue/e2e", 0, MESSAGES).await {
        ensure!(!deadline.passed(), "could not send through the client Service: {e:#}");
        eprintln!("send: {e:#} (retrying)");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Re-applying the unchanged BrokerGroup changes nothing.
    env.kubectl(&["apply", "-f", &file("manifests/examples/pair.yaml")])?;
    let sts = env.json(&["get", "statefulset", "pair-g0"])?;
    ensure!(sts["metadata"]["generation"] == 1, "re-apply changed the StatefulSet: generation {}", sts["metadata"]["generation"]);

    // A backup in sync first: only an in-sync backup may take the group's Lease.
    env.kubectl(&["wait", "--for=condition=Replicated", "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;

    // From here to the failback, a producer and a consumer run through the client Service on
    // a failover URL, and a probe writes to both members directly to time how long nobody
    // accepted sends. kill -9 of the live broker's process (through kubectl only: forced
    // deletion of its pod).
    let members = ["pair-g0-0", "pair-g0-1"].map(String::from);
    let traffic = GroupTraffic::start(env, "default", "pair-g0", &members, "pair-g0-0").await?;
    let killed_at = Instant::now();
    let how = env.kill_pod("default", "pair-g0-0")?;
    traffic.wait_accepting("pair-g0-1", killed_at, FAILOVER_SEEN).await?;
    let took = failover_time(&traffic.accepted(), "pair-g0-0", killed_at).context("no failover seen")?;
    println!("failover time, {how}: {:.2}s", took.as_secs_f64());

    // The status tells the story. The backup takes over within seconds and, with
    // allowFailback, hands the role back as soon as the restarted member has resynced, so the
    // operator may see either step first.
    let failed_over = wait_for("the failover to be counted", FAILOVER_SEEN, || {
        let bg = env.json(&["get", "brokergroup", "pair"]).ok()?;
        (group_status(&bg, 0)["failovers"].as_i64() >= Some(1)).then_some(bg)
    })
    .await?;
    let g = group_status(&failed_over, 0);
    // Failbacks count as switchovers: with none yet, the last move is the failover.
    if g["failovers"] == 1 && g["switchovers"].as_i64().unwrap_or(0) == 0 {
        ensure!(g["lastFailover"]["from"] == "pair-g0-0" && g["lastFailover"]["to"] == "pair-g0-1", "lastFailover: {g}");
        ensure!(["LiveLost", "OperatorFailover"].contains(&g["lastFailover"]["reason"].as_str().unwrap_or("")), "reason: {g}");
    }
    let events = env.kubectl(&["get", "events", "--field-selector", "involvedObject.name=pair", "-o", "json"])?;
    ensure!(events.contains("FailedOver"), "no FailedOver event: {events}");

    // Nothing acknowledged is lost: every receipted message is there, on the new live.
    let address = env.stomp_address("default", "pair-g0").await?;
    let got = wait_for_messages(address, MESSAGES).await?;
    ensure!(got.len() == MESSAGES, "received {} of {MESSAGES} receipted messages after failover", got.len());

    // allowFailback: the original member resyncs and takes the live role back.
    let back = wait_for("pair-g0-0 to be live again (failback)", FAILBACK_SEEN, || {
        let bg = env.json(&["get", "brokergroup", "pair"]).ok()?;
        (group_status(&bg, 0)["live"] == "pair-g0-0").then_some(bg)
    })
    .await?;
    ensure!(group_status(&back, 0)["lastFailover"]["reason"] == "Failback", "after failback: {}", group_status(&back, 0));
    // Counted apart: the failover is unplanned, the failback a planned hand-over.
    ensure!(
        group_status(&back, 0)["failovers"].as_i64() >= Some(1) && group_status(&back, 0)["switchovers"].as_i64() >= Some(1),
        "failover and failback counted apart: {}",
        group_status(&back, 0)
    );
    ensure!(condition(&back, "Available").as_deref() == Some("True"), "not Available after failback");
    // Under load all along: every message receipted through the failover and the failback
    // arrives, and the members took turns (pair-g0-0, pair-g0-1, then pair-g0-0 again).
    let failback_seen = Instant::now();
    traffic.wait_accepting("pair-g0-0", killed_at, FAILBACK_SEEN).await?;
    let report = traffic.finish("pair-g0-0", killed_at, RECEIPTS_AFTER).await?;
    println!("traffic through failover and failback: {report}");
    println!("failback seen in the status {:.1}s after the kill", (failback_seen - killed_at).as_secs_f64());

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
    let deadline = Deadline::after(format!("{expected} messages"), DELIVERED);
    let mut all = BTreeSet::new();
    while all.len() < expected && !deadline.passed() {
        match receive_all(address, "/queue/e2e", expected, &mut all).await {
            Ok(()) => {}
            Err(e) => eprintln!("receive: {e:#} (retrying: the Service may still point at the old live)"),
        }
    }
    Ok(all)
}
