//! Day-two operations end to end, as a platform team runs them with kubectl, on the local
//! control plane with the operator installed from `manifests/install.yaml`:
//!
//! - `scale`: a BrokerGroup of three groups scaled to two under traffic. Producers on
//!   failover URLs (one starting on the third group's client Service, one on the
//!   BrokerGroup-wide Service), consumers on the first two groups' Services, and a batch
//!   queued on the third group with no consumer anywhere. `spec.groups: 2`: the third group
//!   drains (its pod labelled `duomq.io/role: draining`, `status.groups[2].drain` counting
//!   down, `Progressing` reason `ScalingDown`), then its StatefulSet and pods go while its
//!   claims stay; every receipted message and the whole batch are consumed from the two
//!   groups left, each from one stored copy.
//! - `hibernate`: messages sent, `duomq.io/hibernation: on` (no pod left, `Hibernated`
//!   True), `off`: the same live serves again and every message is consumed.
//! - `volumes`: `storage.size` raised on two BrokerGroups at once: one on a StorageClass
//!   with `allowVolumeExpansion` (its claims grow, its StatefulSet is recreated with the new
//!   claim template and adopts the running pods, which are not restarted; messages kept),
//!   one on a class without it (`Degraded` reason `VolumeExpansionRefused`, nothing
//!   deleted, nothing grown, and no longer Degraded once the size is set back); a smaller
//!   size afterwards is refused the same way (volumes never shrink).
//!
//! One local control plane and operator for all, one after the other, each in its own
//! namespace; `E2E_SCENARIOS=hibernate,volumes` runs a subset. On a cluster reached through
//! kubectl only they are skipped with a printed line: `volumes` creates StorageClasses the
//! local plane's resizer serves, and `scale` follows a Service whose endpoints go away,
//! which `kubectl port-forward` does not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::traffic::{failover_url, Consumer, Deliveries, Once, Producer};
use common::{condition, Env, GROUP_AVAILABLE};
use duomq_testkit::{eventually_ok_every, Deadline};
use duomq_broker::client::{Client, ClientOptions, SendOptions};
use duomq_operator::api::BrokerGroup;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::Value;

/// From `spec.groups` lowered to the removed group's StatefulSet gone: the drain (the
/// batch and the flow forwarded over the bridges) and the deletion; generous for CI.
const SCALED_DOWN: Duration = Duration::from_secs(150);
/// From Available to every bridge between the groups linked.
const LINKED: Duration = Duration::from_secs(120);
/// From the hibernation annotation to no pod left (brokers stop with a grace period).
const ASLEEP: Duration = Duration::from_secs(120);
/// From a larger `storage.size` to the grown claims and the recreated StatefulSet.
const EXPANDED: Duration = Duration::from_secs(90);
/// For a flow to start, and for every receipted message to be consumed.
const FLOWING: Duration = Duration::from_secs(90);
/// Pause between two looks at the status while something changes.
const POLL: Duration = Duration::from_millis(300);

/// `scale`: the batch queued on the removed group (enough for the drain to show in the
/// status a few times), and deliveries before and after.
const STRANDED: usize = 300;
const FLOW_BEFORE: usize = 20;
const FLOW_AFTER: usize = 20;
/// `hibernate` and `volumes`: messages kept across the operation.
const KEPT: usize = 200;

const SCENARIOS: [&str; 3] = ["scale", "hibernate", "volumes"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_running_brokergroup_when_scaled_down_hibernated_or_its_volumes_grow_should_keep_every_message() -> Result<()> {
    let env = Env::start().await?;
    let result = run_all(&env).await;
    env.shutdown().await;
    result
}

async fn run_all(env: &Env) -> Result<()> {
    let selected = std::env::var("E2E_SCENARIOS").unwrap_or_default();
    let chosen: Vec<&str> = SCENARIOS.into_iter().filter(|s| selected.is_empty() || selected.split(',').any(|x| x.trim() == *s)).collect();
    if env.local.is_none() {
        for name in chosen {
            println!("scenario {name}: skipped: the day-two scenarios run on the local control plane only (its StorageClasses and volume resizer, and Services reached without kubectl port-forward while their endpoints go away)");
        }
        return Ok(());
    }
    env.install_operator()?;
    let mut failed = Vec::new();
    for name in chosen {
        let namespace = format!("day2-{name}");
        let started = Instant::now();
        env.kubectl(&["create", "namespace", &namespace])?;
        let result = match name {
            "scale" => scale_down_under_traffic(env, &namespace).await,
            "hibernate" => hibernate_and_resume(env, &namespace).await,
            "volumes" => expand_volumes(env, &namespace).await,
            other => bail!("no scenario {other}"),
        };
        match result {
            Ok(()) => println!("scenario {name}: passed in {:.0}s", started.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("scenario {name} failed after {:.0}s: {e:#}", started.elapsed().as_secs_f64());
                for bg in env.kubectl(&["-n", &namespace, "get", "brokergroups", "-o", "name"]).unwrap_or_default().lines() {
                    env.dump(&namespace, bg.trim_start_matches("brokergroup.duomq.io/"));
                }
                failed.push(name);
            }
        }
        // The next scenario's pods get the CPU.
        env.kubectl(&["-n", &namespace, "delete", "brokergroups", "--all", "--wait=false"]).ok();
    }
    ensure!(failed.is_empty(), "failed scenarios: {}", failed.join(", "));
    Ok(())
}

/// A BrokerGroup of `groups` replicated pairs.
fn brokergroup(name: &str, groups: usize, storage: &str) -> String {
    format!(
        "apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata:\n  name: {name}\nspec:\n  groups: {groups}\n  backupsPerGroup: 1\n  ha:\n    mode: replication\n  storage:\n{storage}"
    )
}

/// `kubectl apply` of `yaml` (in `namespace` unless empty).
fn apply(env: &Env, namespace: &str, yaml: &str) -> Result<()> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), yaml)?;
    let path = file.path().to_string_lossy().into_owned();
    let mut args = vec!["apply", "-f", &path];
    if !namespace.is_empty() {
        args.extend(["-n", namespace]);
    }
    env.kubectl(&args)?;
    Ok(())
}

/// Waits for `Available` and `Replicated` of each BrokerGroup.
fn wait_ready(env: &Env, namespace: &str, brokergroups: &[&str]) -> Result<()> {
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    for bg in brokergroups {
        for c in ["Available", "Replicated"] {
            env.kubectl(&["-n", namespace, "wait", &format!("--for=condition={c}"), &format!("brokergroup/{bg}"), &timeout])?;
        }
    }
    Ok(())
}

fn brokergroup_json(env: &Env, namespace: &str, name: &str) -> Result<Value> {
    env.json(&["-n", namespace, "get", "brokergroup", name])
}

/// The reason of a condition of a BrokerGroup.
fn reason(bg: &Value, kind: &str) -> Option<String> {
    bg["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind).and_then(|c| c["reason"].as_str()).map(String::from)
}

/// Waits for an Event of `reason` about BrokerGroup `name`; its message.
async fn event(env: &Env, namespace: &str, name: &str, reason: &str) -> Result<String> {
    until(&format!("an Event {reason} about {name}"), Duration::from_secs(30), || {
        let events = env.json(&["-n", namespace, "get", "events", "--field-selector", &format!("involvedObject.name={name}")])?;
        let found = events["items"].as_array().into_iter().flatten().find(|e| e["reason"] == reason);
        Ok(found.map(|e| e["message"].as_str().unwrap_or_default().to_string()))
    })
    .await
}

/// Polls until `check` yields a value, failing with what the BrokerGroup shows then.
async fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let found = eventually_ok_every(what, timeout, POLL, || {
        let checked = check();
        async move { checked?.context("not yet") }
    })
    .await?;
    Ok(found)
}

/// Sends `{prefix}-0` … persistent and receipted on one plain connection, each with its body
/// as message id, so that the batch sent again after a failed connection is stored once.
async fn send_batch(address: SocketAddr, queue: &str, prefix: &str, count: usize) -> Result<BTreeSet<String>> {
    let bodies: BTreeSet<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    let batch = &bodies;
    eventually_ok_every(&format!("sending {prefix} through {address}"), FLOWING, Duration::from_millis(500), || async move {
        let attempt = async {
            let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
            for body in batch {
                let options = SendOptions { persistent: true, receipt: true, message_id: Some(body.clone()), ..SendOptions::default() };
                client.send(queue, body.clone(), options).await?;
            }
            client.disconnect().await
        };
        let sent = attempt.await;
        if let Err(e) = &sent {
            eprintln!("send {prefix} through {address}: {e:#} (again)");
        }
        sent
    })
    .await?;
    Ok(bodies)
}

/// Consumers of `queue` on each of `services` (failover URLs) until, together, they got
/// every body of `expected` (or `timeout`); what they got.
async fn consume(env: &Env, namespace: &str, services: &[&str], queue: &str, expected: &BTreeSet<String>, timeout: Duration) -> Result<Once> {
    let mut consumers = Vec::new();
    for service in services {
        consumers.push(Consumer::start(&failover_url(env.stomp_address(namespace, service).await?), queue).await?);
    }
    drain_consumers(consumers, expected, timeout).await
}

/// Stops `consumers` once they got every body of `expected` together (or after `timeout`),
/// and tallies what they got.
async fn drain_consumers(consumers: Vec<Consumer>, expected: &BTreeSet<String>, timeout: Duration) -> Result<Once> {
    let deadline = Deadline::after("every expected message at the consumers", timeout);
    let missing = |consumers: &[Consumer]| expected.iter().filter(|b| !consumers.iter().any(|c| c.has(b))).count();
    while missing(&consumers) > 0 && !deadline.passed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all: Vec<Deliveries> = Vec::new();
    for consumer in consumers {
        all.push(consumer.stop().await?);
    }
    Ok(Once::of(&all, expected))
}

/// The live of each group, in order, from the status.
fn lives(bg: &Value) -> Result<Vec<String>> {
    let groups = bg["status"]["groups"].as_array().context("no groups in the status")?;
    groups.iter().map(|g| g["live"].as_str().map(String::from).with_context(|| format!("a group without a live: {g}"))).collect()
}

/// What the scale-down looked like from outside, while it ran.
#[derive(Debug, Default)]
struct DrainSeen {
    /// `status.groups[].drain` of the removed group, each distinct one written.
    progress: Vec<String>,
    most_left: i64,
    forwarded: i64,
    scaling_down: bool,
    draining_label: bool,
}

impl DrainSeen {
    fn saw_status(&mut self, bg: &Value, removed: &str) {
        let groups = bg["status"]["groups"].as_array().map(Vec::as_slice).unwrap_or_default();
        if let Some(drain) = groups.iter().find(|g| g["name"] == removed).map(|g| &g["drain"]).filter(|d| d.is_object()) {
            let text = drain.to_string();
            if self.progress.last() != Some(&text) {
                self.progress.push(text);
            }
            self.most_left = self.most_left.max(drain["messagesLeft"].as_i64().unwrap_or(0));
            self.forwarded = self.forwarded.max(drain["forwarded"].as_i64().unwrap_or(0));
        }
        self.scaling_down |= reason(bg, "Progressing").as_deref() == Some("ScalingDown") && condition(bg, "Progressing").as_deref() == Some("True");
    }
}

/// Watches of the BrokerGroup and of the pods labelled `duomq.io/role=draining`, filling a
/// [`DrainSeen`] with every change until stopped.
struct DrainWatch {
    seen: Arc<Mutex<DrainSeen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DrainWatch {
    async fn start(env: &Env, namespace: &str, bg: &str, removed: &str) -> Result<DrainWatch> {
        let client = env.kube_client().await?;
        let seen = Arc::new(Mutex::new(DrainSeen::default()));
        let brokergroups: Api<BrokerGroup> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let by_name = watcher::Config::default().fields(&format!("metadata.name={bg}"));
        let statuses = {
            let (seen, removed) = (seen.clone(), removed.to_string());
            watcher(brokergroups, by_name).applied_objects().for_each(move |b| {
                if let Ok(value) = b.map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::to_value(b)?)) {
                    seen.lock().saw_status(&value, &removed);
                }
                std::future::ready(())
            })
        };
        let draining = watcher::Config::default().labels("duomq.io/role=draining");
        let labels = {
            let (seen, removed) = (seen.clone(), format!("{removed}-"));
            watcher(pods, draining).applied_objects().for_each(move |p| {
                if p.is_ok_and(|p| p.name_any().starts_with(&removed)) {
                    seen.lock().draining_label = true;
                }
                std::future::ready(())
            })
        };
        Ok(DrainWatch { seen, tasks: vec![tokio::spawn(statuses), tokio::spawn(labels)] })
    }

    fn stop(self) -> DrainSeen {
        for task in &self.tasks {
            task.abort();
        }
        std::mem::take(&mut *self.seen.lock())
    }
}

/// `scale`: three groups to two under traffic, nothing lost.
async fn scale_down_under_traffic(env: &Env, namespace: &str) -> Result<()> {
    let bg = "scale";
    let removed = "scale-g2";
    apply(env, namespace, &brokergroup(bg, 3, "    size: 1Gi\n"))?;
    wait_ready(env, namespace, &[bg])?;
    // Three lives, each bridged to the two others.
    let status = until("six bridges linked", LINKED, || {
        let s = brokergroup_json(env, namespace, bg)?;
        Ok((s["status"]["linked"] == "6/6").then_some(s))
    })
    .await?;
    let before = lives(&status)?;
    println!("scale: three groups available, lives {before:?}, bridges {}", status["status"]["linked"]);

    let removed_address = env.stomp_address(namespace, removed).await?;
    let whole = env.stomp_address(namespace, bg).await?;
    let stranded = send_batch(removed_address, "/queue/stranded", "stranded", STRANDED).await?;
    let consumers = [
        Consumer::start(&failover_url(env.stomp_address(namespace, "scale-g0").await?), "/queue/flow").await?,
        Consumer::start(&failover_url(env.stomp_address(namespace, "scale-g1").await?), "/queue/flow").await?,
    ];
    // One producer starts on the group to be removed and must move on when it drains.
    let both = format!("failover:(stomp://{removed_address},stomp://{whole})?initialReconnectDelay=20ms&maxReconnectDelay=500ms&maxReconnectAttempts=-1");
    let producers = [Producer::start(&both, "/queue/flow", "from-g2").await?, Producer::start(&failover_url(whole), "/queue/flow", "via-service").await?];
    until("the flow into the first two groups", FLOWING, || Ok((consumers.iter().map(Consumer::distinct).sum::<usize>() >= FLOW_BEFORE).then_some(()))).await?;

    let claims_before = claims_of(env, namespace, removed)?;
    // Every status write and pod label is seen through watches: a drain of a few hundred
    // messages may be over between two polls.
    let watch = DrainWatch::start(env, namespace, bg, removed).await?;
    let patched = Instant::now();
    env.kubectl(&["-n", namespace, "patch", "brokergroup", bg, "--type=merge", "-p", r#"{"spec":{"groups":2}}"#])?;
    until("the removed group's StatefulSet deleted", SCALED_DOWN, || {
        let sets = env.kubectl(&["-n", namespace, "get", "statefulsets", "-o", "name"])?;
        Ok((!sets.contains(removed)).then_some(()))
    })
    .await?;
    let took = patched.elapsed();
    // The last status writes and pod changes before the deletion reach the watches.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = watch.stop();
    println!(
        "scale: {removed} drained and deleted {:.1}s after spec.groups: 2; drain status seen: {}; at most {} messages left, {} forwarded; Progressing ScalingDown seen: {}; pod labelled draining seen: {}",
        took.as_secs_f64(),
        seen.progress.join(" → "),
        seen.most_left,
        seen.forwarded,
        seen.scaling_down,
        seen.draining_label
    );
    ensure!(!seen.progress.is_empty(), "status.groups never showed the drain of {removed}");
    ensure!(seen.forwarded >= STRANDED as i64, "the drain should have moved at least the {STRANDED} stranded messages: {seen:?}");
    ensure!(seen.scaling_down, "Progressing never had reason ScalingDown");
    ensure!(seen.draining_label, "the removed group's live was never labelled duomq.io/role=draining");
    for reason in ["Draining", "GroupRemoved"] {
        println!("scale: Event {reason}: {}", event(env, namespace, bg, reason).await?);
    }

    until("the removed group's pods gone", SCALED_DOWN, || {
        let pods = env.kubectl(&["-n", namespace, "get", "pods", "-o", "name"])?;
        Ok((!pods.contains(removed)).then_some(()))
    })
    .await?;
    let claims_after = claims_of(env, namespace, removed)?;
    ensure!(claims_after == claims_before && claims_after.len() == 2, "the removed group's claims must be kept: before {claims_before:?}, after {claims_after:?}");
    let status = until("two groups in the status, no longer scaling down", SCALED_DOWN, || {
        let s = brokergroup_json(env, namespace, bg)?;
        let two = s["status"]["groups"].as_array().is_some_and(|g| g.len() == 2);
        Ok((two && reason(&s, "Progressing").as_deref() != Some("ScalingDown") && condition(&s, "Available").as_deref() == Some("True")).then_some(s))
    })
    .await?;
    println!("scale: now {:?}, Progressing {:?}; claims kept: {claims_after:?}", lives(&status)?, reason(&status, "Progressing"));

    // Both producers go on, on the two groups left.
    let at: Vec<usize> = producers.iter().map(Producer::receipted).collect();
    until("receipts after the scale-down", FLOWING, || Ok(producers.iter().zip(&at).all(|(p, n)| p.receipted() >= n + FLOW_AFTER).then_some(()))).await?;
    let mut receipted = BTreeSet::new();
    let mut not_receipted = 0;
    for producer in producers {
        let (r, n) = producer.stop().await?;
        receipted.extend(r);
        not_receipted += n;
    }
    let flow = drain_consumers(consumers.into(), &receipted, FLOWING).await?;
    println!("scale: flow through the scale-down: {flow}; {not_receipted} sends not receipted");
    flow.ensure()?;
    let batch = consume(env, namespace, &["scale-g0", "scale-g1"], "/queue/stranded", &stranded, FLOWING).await?;
    println!("scale: the batch queued on {removed}, consumed from the groups left: {batch}");
    batch.ensure()?;
    Ok(())
}

/// The claims in `namespace` of the members of `group`, with their requested size.
fn claims_of(env: &Env, namespace: &str, group: &str) -> Result<BTreeMap<String, String>> {
    let list = env.json(&["-n", namespace, "get", "pvc"])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let name = c["metadata"]["name"].as_str()?;
            name.starts_with(&format!("data-{group}-")).then(|| (name.to_string(), c["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or_default().to_string()))
        })
        .collect())
}

/// `hibernate`: every pod stops and comes back; the messages stay.
async fn hibernate_and_resume(env: &Env, namespace: &str) -> Result<()> {
    let bg = "sleepy";
    apply(env, namespace, &brokergroup(bg, 1, "    size: 1Gi\n"))?;
    wait_ready(env, namespace, &[bg])?;
    let live = lives(&brokergroup_json(env, namespace, bg)?)?.remove(0);
    let sent = send_batch(env.stomp_address(namespace, "sleepy-g0").await?, "/queue/kept", "kept", KEPT).await?;

    let started = Instant::now();
    env.kubectl(&["-n", namespace, "annotate", "--overwrite", "brokergroup", bg, "duomq.io/hibernation=on"])?;
    until("no pod left and Hibernated True", ASLEEP, || {
        let pods = env.kubectl(&["-n", namespace, "get", "pods", "-o", "name"])?;
        let s = brokergroup_json(env, namespace, bg)?;
        Ok((pods.trim().is_empty() && condition(&s, "Hibernated").as_deref() == Some("True")).then_some(()))
    })
    .await?;
    let asleep = started.elapsed();
    let replicas = env.kubectl(&["-n", namespace, "get", "statefulset", "sleepy-g0", "-o", "jsonpath={.spec.replicas}"])?;
    ensure!(replicas.trim() == "0", "a hibernated group's StatefulSet should ask for 0 replicas, not {replicas}");
    let claims = claims_of(env, namespace, "sleepy-g0")?;
    ensure!(claims.len() == 2, "the claims stay while hibernated: {claims:?}");

    let woken = Instant::now();
    env.kubectl(&["-n", namespace, "annotate", "--overwrite", "brokergroup", bg, "duomq.io/hibernation=off"])?;
    wait_ready(env, namespace, &[bg])?;
    let status = until(&format!("{live} live again"), GROUP_AVAILABLE, || {
        let s = brokergroup_json(env, namespace, bg)?;
        let back = lives(&s).ok().is_some_and(|l| l == [live.clone()]) && condition(&s, "Hibernated").as_deref() != Some("True");
        Ok(back.then_some(s))
    })
    .await?;
    println!(
        "hibernate: every pod gone {:.1}s after hibernation: on; {live} live again {:.1}s after off (Hibernated {:?}, reason {:?})",
        asleep.as_secs_f64(),
        woken.elapsed().as_secs_f64(),
        condition(&status, "Hibernated"),
        reason(&status, "Hibernated")
    );
    for reason in ["Hibernated", "Resumed"] {
        println!("hibernate: Event {reason}: {}", event(env, namespace, bg, reason).await?);
    }
    let kept = consume(env, namespace, &["sleepy-g0"], "/queue/kept", &sent, FLOWING).await?;
    println!("hibernate: the {KEPT} messages sent before: {kept}");
    kept.ensure()?;
    Ok(())
}

/// A pod's uid and its broker container's restart count.
fn pod_identity(env: &Env, namespace: &str, pod: &str) -> Result<(String, i64, Option<String>)> {
    let p = env.json(&["-n", namespace, "get", "pod", pod])?;
    let uid = p["metadata"]["uid"].as_str().context("a pod without uid")?.to_string();
    let restarts = p["status"]["containerStatuses"].as_array().into_iter().flatten().filter_map(|c| c["restartCount"].as_i64()).sum();
    let controller = p["metadata"]["ownerReferences"].as_array().into_iter().flatten().find(|r| r["controller"] == true).and_then(|r| r["uid"].as_str()).map(String::from);
    Ok((uid, restarts, controller))
}

fn statefulset(env: &Env, namespace: &str, name: &str) -> Result<Value> {
    env.json(&["-n", namespace, "get", "statefulset", name])
}

/// The claim's requested and provisioned size.
fn claim_sizes(env: &Env, namespace: &str, claim: &str) -> Result<(String, String)> {
    let c = env.json(&["-n", namespace, "get", "pvc", claim])?;
    let at = |p: &str| c.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    Ok((at("/spec/resources/requests/storage"), at("/status/capacity/storage")))
}

/// `volumes`: `storage.size` 1Gi → 2Gi on an expandable class and on one that is not.
async fn expand_volumes(env: &Env, namespace: &str) -> Result<()> {
    let classes = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: day2-expandable\nprovisioner: e2e.duomq.io/hostpath\nallowVolumeExpansion: true\n---\napiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: day2-fixed\nprovisioner: e2e.duomq.io/hostpath\n";
    // kubectl keeps discovery per API server address for hours, and a former local plane
    // on the same port served no StorageClasses: refresh it (api-resources does) first.
    env.kubectl(&["api-resources", "-o", "name"])?;
    apply(env, "", classes)?;
    apply(env, namespace, &brokergroup("grow", 1, "    size: 1Gi\n    storageClassName: day2-expandable\n"))?;
    apply(env, namespace, &brokergroup("fixed", 1, "    size: 1Gi\n    storageClassName: day2-fixed\n"))?;
    wait_ready(env, namespace, &["grow", "fixed"])?;
    let sent = send_batch(env.stomp_address(namespace, "grow-g0").await?, "/queue/kept", "kept", KEPT).await?;
    let members = |bg: &str| [0, 1].map(|i| format!("{bg}-g0-{i}"));
    let mut before = BTreeMap::new();
    for pod in members("grow").into_iter().chain(members("fixed")) {
        before.insert(pod.clone(), pod_identity(env, namespace, &pod)?);
    }
    let uid_of = |v: &Value| v["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let (grow_set, fixed_set) = (uid_of(&statefulset(env, namespace, "grow-g0")?), uid_of(&statefulset(env, namespace, "fixed-g0")?));

    let started = Instant::now();
    for bg in ["grow", "fixed"] {
        env.kubectl(&["-n", namespace, "patch", "brokergroup", bg, "--type=merge", "-p", r#"{"spec":{"storage":{"size":"2Gi"}}}"#])?;
    }
    let grown = until("grow's claims at 2Gi and its StatefulSet recreated with 2Gi", EXPANDED, || {
        let claims: Vec<(String, String)> = members("grow").iter().map(|p| claim_sizes(env, namespace, &format!("data-{p}"))).collect::<Result<_>>()?;
        let Ok(set) = statefulset(env, namespace, "grow-g0") else { return Ok(None) };
        let template = set.pointer("/spec/volumeClaimTemplates/0/spec/resources/requests/storage").and_then(Value::as_str).unwrap_or_default().to_string();
        let done = claims.iter().all(|(request, capacity)| request == "2Gi" && capacity == "2Gi") && uid_of(&set) != grow_set && template == "2Gi";
        Ok(done.then_some((claims, uid_of(&set))))
    })
    .await?;
    let took = started.elapsed();
    let (_, new_set) = &grown;
    // The recreated StatefulSet adopts the running pods: same pods, not restarted.
    let adopted = until("grow's pods adopted by the new StatefulSet", EXPANDED, || {
        let now: Vec<_> = members("grow").iter().map(|p| pod_identity(env, namespace, p)).collect::<Result<_>>()?;
        Ok(now.iter().all(|(_, _, owner)| owner.as_deref() == Some(new_set.as_str())).then_some(now))
    })
    .await?;
    for (pod, (uid, restarts, _)) in members("grow").iter().zip(&adopted) {
        let (uid_before, restarts_before, _) = &before[pod];
        ensure!(uid == uid_before && restarts == restarts_before, "{pod} was replaced or restarted: uid {uid_before} → {uid}, restarts {restarts_before} → {restarts}");
    }
    let refused = until("fixed Degraded with reason VolumeExpansionRefused", EXPANDED, || {
        let s = brokergroup_json(env, namespace, "fixed")?;
        let refused = condition(&s, "Degraded").as_deref() == Some("True") && reason(&s, "Degraded").as_deref() == Some("VolumeExpansionRefused");
        Ok(refused.then_some(s))
    })
    .await?;
    let message = refused["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Degraded")).map(|c| c["message"].to_string()).unwrap_or_default();
    println!("volumes: grow's claims {:?} and StatefulSet at 2Gi {:.1}s after the change, its pods adopted, not restarted; fixed: Degraded VolumeExpansionRefused: {message}", grown.0, took.as_secs_f64());
    ensure!(uid_of(&statefulset(env, namespace, "fixed-g0")?) == fixed_set, "fixed's StatefulSet must not be deleted when its claims cannot grow");
    for pod in members("fixed") {
        let (request, capacity) = claim_sizes(env, namespace, &format!("data-{pod}"))?;
        ensure!(request == "1Gi" && capacity == "1Gi", "data-{pod} must stay 1Gi: {request}/{capacity}");
        let (uid, restarts, _) = pod_identity(env, namespace, &pod)?;
        let (uid_before, restarts_before, _) = &before[&pod];
        ensure!(&uid == uid_before && restarts == *restarts_before, "{pod} was replaced or restarted");
    }
    // Setting the size back is what the condition's message says to do: it clears.
    env.kubectl(&["-n", namespace, "patch", "brokergroup", "fixed", "--type=merge", "-p", r#"{"spec":{"storage":{"size":"1Gi"}}}"#])?;
    until("fixed no longer Degraded once storage.size is back at 1Gi", EXPANDED, || {
        let s = brokergroup_json(env, namespace, "fixed")?;
        Ok((condition(&s, "Degraded").as_deref() == Some("False")).then_some(()))
    })
    .await?;
    println!("volumes: Event VolumeExpanding: {}", event(env, namespace, "grow", "VolumeExpanding").await?);
    let grow = brokergroup_json(env, namespace, "grow")?;
    ensure!(condition(&grow, "Available").as_deref() == Some("True") && condition(&grow, "Degraded").as_deref() != Some("True"), "grow should be Available and not Degraded: {}", grow["status"]["conditions"]);
    let kept = consume(env, namespace, &["grow-g0"], "/queue/kept", &sent, FLOWING).await?;
    println!("volumes: the {KEPT} messages sent before the expansion: {kept}");
    kept.ensure()?;

    // Volumes never shrink: back to 1Gi is refused the same way, and nothing is deleted.
    env.kubectl(&["-n", namespace, "patch", "brokergroup", "grow", "--type=merge", "-p", r#"{"spec":{"storage":{"size":"1Gi"}}}"#])?;
    let shrink = until("grow Degraded with reason VolumeExpansionRefused after a smaller size", EXPANDED, || {
        let s = brokergroup_json(env, namespace, "grow")?;
        let refused = condition(&s, "Degraded").as_deref() == Some("True") && reason(&s, "Degraded").as_deref() == Some("VolumeExpansionRefused");
        Ok(refused.then(|| s["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Degraded")).map(|c| c["message"].to_string()).unwrap_or_default()))
    })
    .await?;
    println!("volumes: grow back to 1Gi: Degraded VolumeExpansionRefused: {shrink}");
    ensure!(&uid_of(&statefulset(env, namespace, "grow-g0")?) == new_set, "grow's StatefulSet must not be deleted for a size its claims cannot take");
    Ok(())
}
