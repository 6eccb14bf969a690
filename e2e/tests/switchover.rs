//! End-to-end: planned moves of the live role under load, as a user meets them. kubectl
//! installs the operator and applies a pair; a producer and a consumer run through the
//! client Service on a failover URL, and a probe writes to both members directly, for the
//! whole test. `duomq-operator switchover` hands the live role to the backup (reason
//! Switchover, annotation removed, allowFailback leaves it there); then an image upgrade (a
//! pod-template change through kubectl only) is rolled out in CloudNativePG's order (the backup first, a switchover to it,
//! then the former live; never two members down). At the end every receipted message has
//! arrived, two members never accepted sends at once, and the test prints how long clients
//! could not write at each move.
//!
//! Runs where the other scenarios run (see `common::Env`): the local control plane, or the
//! cluster of `E2E_KUBECONFIG` through kubectl only.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::traffic::{handover, longest_pause, runs, Accepted, GroupTraffic};
use common::{binaries_dir, condition, group_status, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use duomq_e2e::env::wait_for;

const NAMESPACE: &str = "default";
/// `duomq-operator switchover --wait`: the live drains its clients and hands over.
const SWITCHOVER_DONE: Duration = Duration::from_secs(120);
/// Two pods replaced one after the other, each resyncing, and a switchover between them.
const UPGRADE_DONE: Duration = Duration::from_secs(300);
/// How long the live chosen by the switchover is watched staying live once the former live
/// is back in sync, when failback would otherwise take the role back. Not synchronisation:
/// a time in which nothing may happen.
const NO_FAILBACK_HOLD: Duration = Duration::from_secs(10);
/// Receipts the producer must get after the last move before it stops.
const RECEIPTS_AFTER: usize = 20;

// The polls of kubectl block a worker thread; the traffic keeps two to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn given_a_pair_under_load_when_switched_over_and_then_upgraded_should_move_the_live_role_in_order_and_lose_nothing() -> Result<()> {
    let env = Env::start().await?;
    let result = planned_moves(&env).await;
    if result.is_err() {
        env.dump(NAMESPACE, "pair");
    }
    env.shutdown().await;
    result
}

/// `duomq-operator switchover --wait` from this checkout, as a user runs it; what it printed.
async fn switchover(env: &Env, to: &str) -> Result<String> {
    let mut cli = std::process::Command::new(binaries_dir()?.join("duomq-operator"));
    cli.args(["switchover", "--name", "pair", "--group", "pair-g0", "--to", to, "--namespace", NAMESPACE])
        .arg(format!("--wait={}s", SWITCHOVER_DONE.as_secs()))
        .env("KUBECONFIG", &env.kubeconfig);
    let out = tokio::task::spawn_blocking(move || cli.output()).await?.context("failed to run duomq-operator switchover")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "duomq-operator switchover failed: {said}");
    Ok(said)
}

/// When each move began and ended, for the interruption times.
struct Moves {
    switched: Instant,
    patched: Instant,
    settled: Instant,
}

async fn planned_moves(env: &Env) -> Result<()> {
    env.run_example_pair(NAMESPACE)?;
    let (first, second) = ("pair-g0-0", "pair-g0-1");
    let traffic = GroupTraffic::start(env, NAMESPACE, "pair-g0", &[first, second].map(String::from), first).await?;

    let switched = Instant::now();
    switch_over_to_the_backup(env, &traffic, first, second).await?;
    let patched = Instant::now();
    let settled = roll_out_an_upgrade(env, first, second).await?;

    let accepted = traffic.accepted();
    let report = traffic.finish(first, switched, RECEIPTS_AFTER).await?;
    println!("{report}");
    // As clients saw it, the live role moved twice: no failback, no extra move.
    let lives: Vec<String> = runs(&accepted).into_iter().map(|(member, ..)| member).collect();
    ensure!(lives == [first, second, first], "the members accepted sends in turn {lives:?}");
    print_interruptions(&accepted, first, second, &Moves { switched, patched, settled })?;
    env.kubectl(&["-n", NAMESPACE, "delete", "brokergroup", "pair", "--wait=true"])?;
    Ok(())
}

/// The CLI hands the live role from `first` to `second`; the status records it, the
/// annotation goes, and failback leaves `second` live once `first` is back in sync.
async fn switch_over_to_the_backup(env: &Env, traffic: &GroupTraffic, first: &str, second: &str) -> Result<()> {
    let since = Instant::now();
    let said = switchover(env, second).await?;
    ensure!(said.contains(&format!("{second} is live")), "{said}");
    traffic.wait_accepting(second, since, SWITCHOVER_DONE).await?;
    let bg = wait_for_brokergroup(env, NAMESPACE, "pair", "the switchover recorded and its annotation removed", SWITCHOVER_DONE, |bg| {
        let g = group_status(bg, 0);
        g["lastFailover"]["reason"] == "Switchover" && g["switchover"].is_null() && bg["metadata"]["annotations"]["duomq.io/switchover"].is_null()
    })
    .await?;
    ensure!(group_status(&bg, 0)["lastFailover"]["from"] == first, "{}", group_status(&bg, 0));
    let events = env.kubectl(&["-n", NAMESPACE, "get", "events", "--field-selector", "involvedObject.name=pair", "-o", "json"])?;
    ensure!(events.contains("SwitchedOver"), "no SwitchedOver event: {events}");

    env.kubectl(&["-n", NAMESPACE, "wait", "--for=condition=Replicated", "brokergroup/pair", &format!("--timeout={}s", GROUP_AVAILABLE.as_secs())])?;
    tokio::time::sleep(NO_FAILBACK_HOLD).await;
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"])?;
    ensure!(group_status(&bg, 0)["live"] == second, "failback undid the switchover: {}", group_status(&bg, 0));
    Ok(())
}

/// An upgrade rolled out by the operator: `first` (now the backup) replaced first, a
/// switchover to it, then `second`; never both down. Returns when the pair is whole again.
///
/// On the local control plane it is an image upgrade: the broker image under a new tag
/// (`<image>-upgrade`, the same bits), and every pod must end up running it. On a cluster
/// reached through kubectl only no image can be made, so it is a change of the pod template.
async fn roll_out_an_upgrade(env: &Env, first: &str, second: &str) -> Result<Instant> {
    let sts = env.json(&["-n", NAMESPACE, "get", "statefulset", "pair-g0"])?;
    let before = sts["status"]["updateRevision"].as_str().unwrap_or_default().to_string();
    let upgraded_image = match env.local {
        Some(_) => {
            let image = sts["spec"]["template"]["spec"]["containers"][0]["image"].as_str().context("the StatefulSet names no image")?;
            let upgraded = format!("{image}-upgrade");
            let tagged = std::process::Command::new("docker").args(["tag", image, &upgraded]).output().context("failed to run docker tag")?;
            ensure!(tagged.status.success(), "docker tag {image} {upgraded}: {}", String::from_utf8_lossy(&tagged.stderr));
            env.kubectl(&["-n", NAMESPACE, "patch", "brokergroup", "pair", "--type", "merge", "-p", &serde_json::json!({"spec": {"image": upgraded}}).to_string()])?;
            Some(upgraded)
        }
        None => {
            env.kubectl(&["-n", NAMESPACE, "patch", "brokergroup", "pair", "--type", "merge", "-p", r#"{"spec":{"podTemplate":{"annotations":{"e2e.duomq.io/rollout":"1"}}}}"#])?;
            None
        }
    };
    let mut updated_order: Vec<String> = Vec::new();
    let mut most_down = 0;
    let bg = wait_for("the rolling upgrade to finish", UPGRADE_DONE, || {
        let sts = env.json(&["-n", NAMESPACE, "get", "statefulset", "pair-g0"]).ok()?;
        let update = sts["status"]["updateRevision"].as_str().filter(|r| *r != before)?.to_string();
        let pods = env.json(&["-n", NAMESPACE, "get", "pods"]).ok()?;
        let items = pods["items"].as_array()?;
        let mut down = 0;
        for name in [first, second] {
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
        let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", "pair"]).ok()?;
        let whole = condition(&bg, "Available").as_deref() == Some("True") && condition(&bg, "Replicated").as_deref() == Some("True");
        (updated_order.len() == 2 && whole && group_status(&bg, 0)["live"] == first).then_some(bg)
    })
    .await?;
    let settled = Instant::now();
    ensure!(updated_order == [first, second], "updated in the wrong order (the backup goes first): {updated_order:?}");
    ensure!(most_down <= 1, "{most_down} members of the group were down at once");
    let g = group_status(&bg, 0);
    let last = &g["lastFailover"];
    ensure!(last["reason"] == "RollingUpgrade" && last["from"] == second && last["to"] == first, "lastFailover: {last}");
    // The switchover and the upgrade's switchover; a failback in between would add one.
    // Both moves were planned: counted as switchovers, none as a failover.
    ensure!(g["switchovers"] == 2 && g["failovers"] == 0, "two planned moves of the live role counted: {g}");
    if let Some(upgraded) = upgraded_image {
        for name in [first, second] {
            let pod = env.json(&["-n", NAMESPACE, "get", "pod", name])?;
            let image = &pod["spec"]["containers"][0]["image"];
            ensure!(image == upgraded.as_str(), "{name} runs {image} after the upgrade to {upgraded}");
        }
        let _ = std::process::Command::new("docker").args(["rmi", &upgraded]).output();
    }
    Ok(settled)
}

/// How long clients could not write at each move, from the probe's receipts: a handover
/// from the last receipt of the old live to the first of the new one; a member replaced
/// under a live that stayed, the live's longest pause meanwhile.
fn print_interruptions(accepted: &[Accepted], first: &str, second: &str, moves: &Moves) -> Result<()> {
    let (old_last, new_first) = handover(accepted, first, second, moves.switched).context("the probe saw no switchover")?;
    println!("interruption, switchover {first} -> {second}: {:.2}s", new_first.duration_since(old_last).as_secs_f64());
    let (up_last, up_first) = handover(accepted, second, first, moves.patched).context("the probe saw no switchover in the rolling upgrade")?;
    let steps = [
        (format!("{first} (backup) replaced, {second} live"), longest_pause(accepted, second, moves.patched, up_last)),
        (format!("switchover {second} -> {first}"), up_first.duration_since(up_last)),
        (format!("{second} (former live) replaced, {first} live"), longest_pause(accepted, first, up_first, moves.settled)),
    ];
    for (n, (step, took)) in steps.iter().enumerate() {
        println!("interruption, rolling upgrade step {}, {step}: {:.2}s", n + 1, took.as_secs_f64());
    }
    Ok(())
}
