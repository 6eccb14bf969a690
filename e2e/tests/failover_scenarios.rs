//! Failover scenarios: three ways to lose a live broker, each while a producer and a
//! consumer run through the client Service and a probe writes to every member directly.
//! Each checks that no receipted message is lost, that two members never accepted sends at
//! once, that the status tells the story, and prints how long no member accepted sends.
//!
//! - `delete`: `kubectl delete pod` of the live.
//! - `fence`: the live cut off from the API server (the API server holds its requests) but
//!   still reachable by clients: it fences itself before the backup takes the Lease.
//! - `node`: failure of a node of a host-pair layout: both groups end up live on the other.
//!
//! And one for `spec.amqp`, with python-qpid-proton: `amqp`: durable messages through the
//! client Service's AMQP port; a connection straight to the backup is redirected to the
//! live; after the live is killed they are all received through the Service.
//!
//! They share one local control plane and operator and run one after the other, each in
//! its own namespace (`node` last: its node stays failed). `E2E_SCENARIOS=fence,node` runs a
//! subset (`amqp` runs before `node`). On a cluster reached through kubectl only (`E2E_KUBECONFIG`, or
//! `E2E_KUBECTL_ONLY=1` on the local plane) `delete` runs through `kubectl port-forward`;
//! `fence` and `node` need the local plane's API fault injection and nodes and are skipped,
//! each with a printed line saying so.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::amqp;
use common::traffic::{GroupTraffic, TrafficReport};
use common::{condition, group_status, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use duomq_e2e::env::repo_root;
use duomq_testkit::Deadline;
use serde_json::Value;

/// From the fault to the status naming the new live: the Lease duration (15 s) when the
/// live is cut off, seconds otherwise; generous for slow CI.
const FAILOVER_SEEN: Duration = Duration::from_secs(90);
/// Receipts the producer must get after the failover before it stops.
const RECEIPTS_AFTER: usize = 20;
/// The `amqp` scenario's durable messages, sent before the failover.
const AMQP_MESSAGES: usize = 50;
const AMQP_QUEUE: &str = "amqp.e2e";
/// For the AMQP clients to get through the client Service, which follows the live's role
/// label (and, after a failover, the new live once it is ready).
const AMQP_CLIENTS: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_live_broker_when_it_is_deleted_cut_off_or_its_node_fails_should_fail_over_without_losing_receipted_messages() -> Result<()> {
    let env = Env::start().await?;
    let result = run_all(&env).await;
    env.shutdown().await;
    result
}

/// The scenarios, in the order they run, with the BrokerGroup each applies.
const SCENARIOS: [(&str, &str); 4] = [("delete", "pair"), ("fence", "pair"), ("amqp", "pair"), ("node", "crossed")];

/// Scenarios only the local control plane can run, and what they need of it.
const NEED_THE_LOCAL_PLANE: [(&str, &str); 2] = [
    ("fence", "cuts the live off the API server (the local API server's fault injection)"),
    ("node", "fails a node (the local Docker kubelet)"),
];

async fn run_scenario(name: &str, env: &Env, namespace: &str) -> Result<Vec<TrafficReport>> {
    match name {
        "delete" => delete_the_live_pod(env, namespace).await,
        "fence" => cut_the_live_off_the_api(env, namespace).await,
        "amqp" => amqp_through_a_failover(env, namespace).await,
        "node" => fail_a_node_of_host_pairs(env, namespace).await,
        other => bail!("no scenario {other}"),
    }
}

async fn run_all(env: &Env) -> Result<()> {
    let selected = std::env::var("E2E_SCENARIOS").unwrap_or_default();
    env.install_operator()?;
    let mut failed = Vec::new();
    for (name, brokergroup) in SCENARIOS {
        if !selected.is_empty() && !selected.split(',').any(|s| s.trim() == name) {
            continue;
        }
        if let (None, Some((_, why))) = (&env.local, NEED_THE_LOCAL_PLANE.iter().find(|(n, _)| *n == name)) {
            println!("scenario {name}: skipped: it {why}, which a cluster reached through kubectl only does not offer");
            continue;
        }
        let namespace = format!("failover-{name}");
        let started = Instant::now();
        match run_scenario(name, env, &namespace).await {
            Ok(reports) => {
                for r in reports {
                    println!("scenario {name}: {r}");
                }
                println!("scenario {name}: passed in {:.0}s", started.elapsed().as_secs_f64());
            }
            Err(e) => {
                eprintln!("scenario {name} failed: {e:#}");
                env.dump(&namespace, brokergroup);
                failed.push(name);
            }
        }
    }
    ensure!(failed.is_empty(), "failed scenarios: {}", failed.join(", "));
    Ok(())
}

/// Creates `namespace`, applies `manifest` there and waits until the BrokerGroup is
/// Available with its backups in sync (only an in-sync backup may take over).
fn apply_in_namespace(env: &Env, namespace: &str, manifest: &str, name: &str) -> Result<()> {
    env.kubectl(&["create", "namespace", namespace])?;
    let file = repo_root().join(manifest);
    env.kubectl(&["-n", namespace, "apply", "-f", &file.to_string_lossy()])?;
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    for condition in ["Available", "Replicated"] {
        env.kubectl(&["-n", namespace, "wait", &format!("--for=condition={condition}"), &format!("brokergroup/{name}"), &timeout])?;
    }
    Ok(())
}

/// The status of a group once `new_live` is live, checked: the failover counted once,
/// from `old_live`, for one of `reasons`; printed as it was found.
async fn wait_for_failover(env: &Env, namespace: &str, name: &str, group: usize, old_live: &str, new_live: &str, reasons: &[&str]) -> Result<Value> {
    let bg = wait_for_brokergroup(env, namespace, name, &format!("{new_live} live in the status"), FAILOVER_SEEN, |bg| {
        group_status(bg, group)["live"] == new_live
    })
    .await?;
    let g = group_status(&bg, group);
    println!("status of group {group}: live {}, epoch {}, failovers {}, lastFailover {}", g["live"], g["epoch"], g["failovers"], g["lastFailover"]);
    ensure!(g["failovers"] == 1, "one failover counted: {g}");
    let last = &g["lastFailover"];
    ensure!(last["from"] == old_live && last["to"] == new_live, "lastFailover from {old_live} to {new_live}: {g}");
    ensure!(reasons.contains(&last["reason"].as_str().unwrap_or_default()), "lastFailover.reason one of {reasons:?}: {g}");
    Ok(bg)
}

fn members(name: &str, group: usize) -> Vec<String> {
    (0..2).map(|i| format!("{name}-g{group}-{i}")).collect()
}

/// Frees the machine for the next scenario; garbage collection removes the rest.
fn delete_brokergroup(env: &Env, namespace: &str, name: &str) -> Result<()> {
    env.kubectl(&["-n", namespace, "delete", "brokergroup", name, "--wait=false"])?;
    Ok(())
}

/// `kubectl delete pod` of the live: it shuts down, the backup takes over; the StatefulSet
/// recreates the pod, which comes back as the backup (no failback in this manifest).
async fn delete_the_live_pod(env: &Env, namespace: &str) -> Result<Vec<TrafficReport>> {
    apply_in_namespace(env, namespace, "e2e/tests/manifests/pair-no-failback.yaml", "pair")?;
    let [old, new] = <[String; 2]>::try_from(members("pair", 0)).map_err(|_| anyhow::anyhow!("two members"))?;
    let traffic = GroupTraffic::start(env, namespace, "pair-g0", &[old.clone(), new.clone()], &old).await?;

    let fault = Instant::now();
    env.kubectl(&["-n", namespace, "delete", "pod", &old, "--wait=false"])?;
    traffic.wait_accepting(&new, fault, FAILOVER_SEEN).await?;
    // The broker hands its Lease over on SIGTERM, and the operator releases the Lease of a
    // deleted pod: whichever is first names the reason.
    wait_for_failover(env, namespace, "pair", 0, &old, &new, &["LiveLost", "OperatorFailover"]).await?;
    let report = traffic.finish(&old, fault, RECEIPTS_AFTER).await?;

    // The recreated pod rejoins as the backup and the pair is whole again.
    let bg = wait_for_brokergroup(env, namespace, "pair", "the recreated member in sync", GROUP_AVAILABLE, |bg| condition(bg, "Replicated").as_deref() == Some("True")).await?;
    ensure!(group_status(&bg, 0)["live"] == new.as_str(), "the live stayed {new}: {}", group_status(&bg, 0));
    delete_brokergroup(env, namespace, "pair")?;
    Ok(vec![report])
}

/// The live's pod is cut off from the API server while clients still reach it: it cannot
/// renew its Lease, fences itself after renewDeadline (10 s) and refuses clients; the
/// backup takes the Lease once it has seen it unchanged for its duration (15 s). The probe
/// shows no 100 ms slot in which both accepted sends.
async fn cut_the_live_off_the_api(env: &Env, namespace: &str) -> Result<Vec<TrafficReport>> {
    apply_in_namespace(env, namespace, "e2e/tests/manifests/pair-no-failback.yaml", "pair")?;
    let [old, new] = <[String; 2]>::try_from(members("pair", 0)).map_err(|_| anyhow::anyhow!("two members"))?;
    let traffic = GroupTraffic::start(env, namespace, "pair-g0", &[old.clone(), new.clone()], &old).await?;

    let faults = env.local()?.api.faults();
    let ip = env.pod_ip(namespace, &old)?;
    let fault = Instant::now();
    faults.cut_off(ip);
    let served = traffic.wait_accepting(&new, fault, FAILOVER_SEEN).await;
    let status = match served {
        Ok(_) => wait_for_failover(env, namespace, "pair", 0, &old, &new, &["LiveLost"]).await,
        Err(e) => Err(e),
    };
    faults.restore(ip);
    status?;
    let report = traffic.finish(&old, fault, RECEIPTS_AFTER).await?;
    ensure!(report.shared_slots == 0, "two members receipted within one 100 ms slot: {}", report.timeline);

    // Back in touch with the API, the fenced member is the new live's backup.
    wait_for_brokergroup(env, namespace, "pair", "the fenced member back in sync", GROUP_AVAILABLE, |bg| condition(bg, "Replicated").as_deref() == Some("True")).await?;
    delete_brokergroup(env, namespace, "pair")?;
    Ok(vec![report])
}

/// `spec.amqp` on a pair, with python-qpid-proton: durable messages sent through the client
/// Service's AMQP port, each settled `accepted`; a connection straight to the backup is
/// closed with `amqp:connection:redirect` naming the live's stable name and AMQP port (as
/// the operator wrote it into `ha.members`); the live is killed (kill -9 of its container;
/// through kubectl only, forced deletion of its pod) and every accepted message is received
/// through the Service from the new live.
async fn amqp_through_a_failover(env: &Env, namespace: &str) -> Result<Vec<TrafficReport>> {
    apply_in_namespace(env, namespace, "e2e/tests/manifests/pair-amqp.yaml", "pair")?;
    let [old, new] = <[String; 2]>::try_from(members("pair", 0)).map_err(|_| anyhow::anyhow!("two members"))?;
    let service = env.amqp_address(namespace, "pair-g0").await?;

    // The Service's endpoints follow the role label the operator sets: retry as a client
    // would. Bodies are unique, so a resent message is counted once.
    let mut accepted = BTreeSet::new();
    let deadline = Deadline::after("every AMQP message accepted through the client Service", AMQP_CLIENTS);
    while accepted.len() < AMQP_MESSAGES {
        let (sent, error) = amqp::send_durable(service, AMQP_QUEUE, "amqp", accepted.len()..AMQP_MESSAGES).await?;
        accepted.extend(sent);
        if let Some(e) = error {
            ensure!(!deadline.passed(), "could not send over AMQP through the client Service: {e}");
            eprintln!("amqp send: {e} (retrying)");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("scenario amqp: {} durable messages accepted through the client Service", accepted.len());

    // The backup redirects to the live's stable name, on the AMQP port.
    let backup = env.member_amqp_address(namespace, &new).await?;
    let closed = amqp::close_of(backup).await?;
    let live_host = duomq_operator::names::member_host("pair-g0", &old, namespace);
    ensure!(
        closed.condition.as_deref() == Some("amqp:connection:redirect") && closed.network_host.as_deref() == Some(live_host.as_str()) && closed.port == Some(amqp::PORT),
        "the backup {new} redirects to {live_host}:{}: {closed:?}",
        amqp::PORT
    );
    println!("scenario amqp: the backup redirected to {live_host}:{} ({})", amqp::PORT, closed.description.unwrap_or_default());

    let how = env.kill_pod(namespace, &old)?;
    wait_for_failover(env, namespace, "pair", 0, &old, &new, &["LiveLost", "OperatorFailover"]).await?;

    // Through the same Service, now following the new live: every accepted message.
    let mut received = BTreeSet::new();
    let deadline = Deadline::after("every accepted AMQP message received through the client Service", AMQP_CLIENTS);
    while !accepted.is_subset(&received) {
        let (got, error) = amqp::receive_all(service, AMQP_QUEUE).await?;
        received.extend(got);
        if accepted.is_subset(&received) {
            break;
        }
        let missing = accepted.difference(&received).count();
        ensure!(!deadline.passed(), "after the failover ({how}) {missing} of {} accepted messages were not received; last error: {error:?}", accepted.len());
        eprintln!("amqp receive: {missing} missing, {} (retrying: the Service may still point at the old live)", error.unwrap_or_else(|| "no error".into()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(received.is_subset(&accepted), "received what was never sent: {:?}", received.difference(&accepted).collect::<Vec<_>>());
    println!("scenario amqp: after the failover ({how}) all {} received through the client Service from {new}", accepted.len());
    delete_brokergroup(env, namespace, "pair")?;
    Ok(Vec::new())
}

/// Two groups crossed over two nodes; one node fails: its containers die and the Node
/// turns NotReady; the operator releases the Leases of its lives and both groups end up
/// live on the other node.
async fn fail_a_node_of_host_pairs(env: &Env, namespace: &str) -> Result<Vec<TrafficReport>> {
    apply_in_namespace(env, namespace, "manifests/examples/host-pairs.yaml", "crossed")?;
    // The operator must survive the failure: fail the node of the pair its leader does not
    // run on (the standby may be anywhere; the Lease names the leader's pod).
    let leader = env.kubectl(&["-n", "duomq-system", "get", "lease", duomq_operator::names::OPERATOR_LEASE, "-o", "jsonpath={.spec.holderIdentity}"])?;
    ensure!(!leader.trim().is_empty(), "the operator has no leader yet");
    let operator_node = env.kubectl(&["-n", "duomq-system", "get", "pod", leader.trim(), "-o", "jsonpath={.spec.nodeName}"])?;
    let (failed, survivor) = if operator_node.trim() == "node-a" { ("node-b", "node-a") } else { ("node-a", "node-b") };
    let node_of = |pod: &str| env.kubectl(&["-n", namespace, "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]).map(|n| n.trim().to_string());

    let bg = env.json(&["-n", namespace, "get", "brokergroup", "crossed"])?;
    let mut plan = Vec::new();
    for group in 0..2 {
        let live = group_status(&bg, group)["live"].as_str().context("no live in the status")?.to_string();
        let members = members("crossed", group);
        let backup = members.iter().find(|m| **m != live).context("no backup")?.clone();
        ensure!(node_of(&live)? != node_of(&backup)?, "the members of group {group} share a node");
        let traffic = GroupTraffic::start(env, namespace, &format!("crossed-g{group}"), &members, &live).await?;
        plan.push((group, live, backup, traffic));
    }
    let lives_on_failed = plan.iter().filter(|(_, live, ..)| node_of(live).is_ok_and(|n| n == failed)).count();
    ensure!(lives_on_failed == 1, "host pairs: one live per node before the failure");

    let fault = Instant::now();
    env.local()?.cluster.fail_node(failed).await?;
    let mut reports = Vec::new();
    for (group, live, backup, traffic) in plan {
        let on_failed = node_of(&live)? == failed;
        if on_failed {
            traffic.wait_accepting(&backup, fault, FAILOVER_SEEN).await?;
            wait_for_failover(env, namespace, "crossed", group, &live, &backup, &["OperatorFailover"]).await?;
            reports.push(traffic.finish(&live, fault, RECEIPTS_AFTER).await?);
        } else {
            // The live on the surviving node keeps serving throughout.
            let before = traffic.wait_accepting(&live, fault, Duration::from_secs(10)).await?;
            ensure!(before.duration_since(fault) < Duration::from_secs(5), "group {group} stalled");
            let report = traffic.finish(&live, fault, RECEIPTS_AFTER).await?;
            ensure!(report.failover.is_none(), "group {group}: a member besides {live} accepted sends: {report}");
            reports.push(report);
        }
    }
    let bg = env.json(&["-n", namespace, "get", "brokergroup", "crossed"])?;
    for group in 0..2 {
        let live = group_status(&bg, group)["live"].as_str().unwrap_or_default().to_string();
        ensure!(node_of(&live)? == survivor, "group {group} live on {survivor}: {}", group_status(&bg, group));
    }
    let failovers: i64 = (0..2).filter_map(|g| group_status(&bg, g)["failovers"].as_i64()).sum();
    ensure!(failovers == 1, "one failover in all: {}", bg["status"]["groups"]);
    Ok(reports)
}
