//! Networks of brokers end to end (store-and-forward bridges between groups), as a user
//! meets them: kubectl applies BrokerGroups, clients send and receive through the client
//! Services only, and faults hit the group that holds the consumer.
//!
//! - `bridge`: `manifests/examples/network.yaml`, two BrokerGroups joined by a connector
//!   (orders → billing). A batch sent to orders arrives once each, in order, at a consumer
//!   of billing; then, under a steady flow, billing's live is killed: the link follows the
//!   failover and every receipted message arrives once (no second stored copy), in order.
//! - `service`: four groups on two host pairs (`manifests/examples/host-pairs-network.yaml`).
//!   Messages sent through the BrokerGroup-wide Service on several connections land on
//!   different groups; one consumer through that same Service gets every one of them.
//! - `node`: the same four groups; producers through the BrokerGroup-wide Service, a consumer
//!   on one group's Service, and the node of that group's live fails: nothing receipted is
//!   lost, the links follow the failover. The node comes back and the groups fail back.
//! - `node-service`: the same, with the consumer through the BrokerGroup-wide Service too:
//!   when its live's node fails it reconnects to whichever live the Service picks, and still
//!   gets every receipted message, those already forwarded to its old group included.
//!
//! One local control plane and operator for all, one after the other (`node-service` last:
//! its node stays failed); `E2E_SCENARIOS=bridge,service` runs a subset. On a cluster
//! reached through kubectl only (`E2E_KUBECONFIG`, `E2E_KUBECTL_ONLY`) `bridge` runs through
//! `kubectl port-forward`; the others need the local plane (pod IPs for `/status`, four
//! nodes, node failure) and are skipped with a printed line.
//! What it must not do: reach a broker other than as a client or through `/status` (it never
//! changes a broker's state behind the operator's back).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::traffic::{connect_failover, failover_url, Producer};
use common::{group_status, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use duomq_broker::admin::api::BrokerStatus;
use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions};
use duomq_e2e::env::repo_root;
use duomq_testkit::{eventually_ok_every, Deadline};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// From Available to every connector of every live linked (the operator's `status.linked`).
const LINKED: Duration = Duration::from_secs(120);
/// From a fault to the status naming the new live: seconds after a kill, the node monitor's
/// grace plus the operator's release after a node failure; generous for slow CI.
const FAILOVER_SEEN: Duration = Duration::from_secs(120);
/// From the last receipt to every receipted message at the consumer, bridges and
/// failovers included.
const DELIVERED: Duration = Duration::from_secs(120);
/// For a steady flow to start, or to resume after a fault.
const FLOWING: Duration = Duration::from_secs(90);
/// From a consumer's SUBSCRIBE to its demand in the other lives' `/status`.
const DEMAND_SEEN: Duration = Duration::from_secs(30);

/// The batch of `bridge`.
const BATCH: usize = 100;
/// `service`: connections through the BrokerGroup-wide Service, and messages on each.
const CONNECTIONS: usize = 8;
const PER_CONNECTION: usize = 5;
/// `node`: producers through the BrokerGroup-wide Service.
const PRODUCERS: usize = 4;
/// Deliveries (across the bridge) before a fault, and after it before the traffic stops.
const FLOW_BEFORE: usize = 20;
const FLOW_AFTER: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_networked_broker_groups_when_clients_use_the_services_and_a_live_or_node_fails_should_deliver_every_receipted_message_once() -> Result<()> {
    let env = Env::start().await?;
    let result = run_all(&env).await;
    env.shutdown().await;
    result
}

/// What a scenario applies: namespace, manifest, BrokerGroups with the connectors all their
/// lives run together (all must be Available, Replicated and every connector linked).
struct Deployment {
    namespace: &'static str,
    manifest: &'static str,
    brokergroups: &'static [(&'static str, usize)],
}

/// billing runs no connector (it takes orders' inbound link); orders one, to billing's group.
const BRIDGE: Deployment = Deployment { namespace: "network-bridge", manifest: "manifests/examples/network.yaml", brokergroups: &[("billing", 0), ("orders", 1)] };
/// A full mesh of four groups: each live links to the three others.
const MESH: Deployment = Deployment { namespace: "network-mesh", manifest: "manifests/examples/host-pairs-network.yaml", brokergroups: &[("mesh", 12)] };

/// The scenarios, in the order they run, with what each runs on.
const SCENARIOS: [(&str, &Deployment); 4] = [("bridge", &BRIDGE), ("service", &MESH), ("node", &MESH), ("node-service", &MESH)];

/// Scenarios only the local control plane can run, and what they need of it.
const NEED_THE_LOCAL_PLANE: [(&str, &str); 3] = [
    ("service", "reads each live's /status at its pod IP to see where messages landed, on four nodes"),
    ("node", "fails a node (the local Docker kubelet) of a four-node host-pair layout"),
    ("node-service", "fails a node (the local Docker kubelet) of a four-node host-pair layout"),
];

async fn run_scenario(name: &str, env: &Env, namespace: &str) -> Result<()> {
    match name {
        "bridge" => bridge_follows_a_failover(env, namespace).await,
        "service" => service_delivers_the_whole_queue(env, namespace).await,
        "node" => node_fails_under_cross_group_traffic(env, namespace, ConsumerVia::GroupService).await,
        "node-service" => node_fails_under_cross_group_traffic(env, namespace, ConsumerVia::BrokerGroupService).await,
        other => bail!("no scenario {other}"),
    }
}

async fn run_all(env: &Env) -> Result<()> {
    let selected = std::env::var("E2E_SCENARIOS").unwrap_or_default();
    env.install_operator()?;
    let mut applied: Option<&str> = None;
    let mut failed = Vec::new();
    for (name, deployment) in SCENARIOS {
        if !selected.is_empty() && !selected.split(',').any(|s| s.trim() == name) {
            continue;
        }
        if let (None, Some((_, why))) = (&env.local, NEED_THE_LOCAL_PLANE.iter().find(|(n, _)| *n == name)) {
            println!("scenario {name}: skipped: it {why}, which a cluster reached through kubectl only does not offer");
            continue;
        }
        let started = Instant::now();
        let result = async {
            if applied != Some(deployment.namespace) {
                // The previous deployment's pods would only take CPU from this one.
                if let Some(previous) = SCENARIOS.iter().map(|(_, d)| *d).find(|d| Some(d.namespace) == applied) {
                    delete_brokergroups(env, previous)?;
                }
                apply(env, deployment).await?;
                applied = Some(deployment.namespace);
                println!("scenario {name}: {} applied, available and linked in {:.0}s", deployment.manifest, started.elapsed().as_secs_f64());
            }
            run_scenario(name, env, deployment.namespace).await
        }
        .await;
        match result {
            Ok(()) => println!("scenario {name}: passed in {:.0}s", started.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("scenario {name} failed: {e:#}");
                for (bg, _) in deployment.brokergroups {
                    env.dump(deployment.namespace, bg);
                }
                dump_network(env, deployment).await;
                failed.push(name);
            }
        }
    }
    ensure!(failed.is_empty(), "failed scenarios: {}", failed.join(", "));
    Ok(())
}

/// Creates the namespace, applies the manifest there and waits until every BrokerGroup is
/// Available with its backups in sync and every connector of every live linked.
async fn apply(env: &Env, d: &Deployment) -> Result<()> {
    env.kubectl(&["create", "namespace", d.namespace])?;
    let file = repo_root().join(d.manifest);
    env.kubectl(&["-n", d.namespace, "apply", "-f", &file.to_string_lossy()])?;
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    for (bg, _) in d.brokergroups {
        for condition in ["Available", "Replicated"] {
            env.kubectl(&["-n", d.namespace, "wait", &format!("--for=condition={condition}"), &format!("brokergroup/{bg}"), &timeout])?;
        }
    }
    for (bg, connectors) in d.brokergroups {
        wait_linked(env, d.namespace, bg, *connectors).await?;
    }
    Ok(())
}

/// Waits until the BrokerGroup's status counts `connectors` connectors over its groups'
/// lives, every one linked (`connectorsLinked` per group, `linked` `n/n` in all).
async fn wait_linked(env: &Env, namespace: &str, name: &str, connectors: usize) -> Result<Value> {
    let expected = i64::try_from(connectors)?;
    wait_for_brokergroup(env, namespace, name, &format!("{connectors} connectors of {name} linked"), LINKED, |bg| {
        let groups = bg["status"]["groups"].as_array().map(Vec::as_slice).unwrap_or_default();
        let total: i64 = groups.iter().filter_map(|g| g["connectors"].as_i64()).sum();
        let linked: i64 = groups.iter().filter_map(|g| g["connectorsLinked"].as_i64()).sum();
        let summary_ok = connectors == 0 || bg["status"]["linked"] == format!("{connectors}/{connectors}").as_str();
        !groups.is_empty() && total == expected && linked == expected && summary_ok && groups.iter().all(|g| g["live"].is_string())
    })
    .await
}

fn delete_brokergroups(env: &Env, d: &Deployment) -> Result<()> {
    for (bg, _) in d.brokergroups {
        env.kubectl(&["-n", d.namespace, "delete", "brokergroup", bg, "--wait=false"])?;
    }
    Ok(())
}

/// Each live's network part of `/status`, for a failed scenario's log.
async fn dump_network(env: &Env, d: &Deployment) {
    for (bg, _) in d.brokergroups {
        let Ok(status) = env.json(&["-n", d.namespace, "get", "brokergroup", bg]) else { continue };
        for g in status["status"]["groups"].as_array().into_iter().flatten() {
            let Some(live) = g["live"].as_str() else { continue };
            match broker_status(env, d.namespace, live).await {
                Ok(s) => eprintln!("/status of {live}: network {}, queues {}", json(&s.network), json(&s.queues)),
                Err(e) => eprintln!("/status of {live}: {e:#}"),
            }
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `/status` of a pod's broker, at its pod IP (the local control plane only), signed with its
/// group's cluster password (see `Env::broker_status`).
async fn broker_status(env: &Env, namespace: &str, pod: &str) -> Result<BrokerStatus> {
    env.broker_status(namespace, pod).await
}

/// The live of each group of a BrokerGroup, in group order.
fn lives(env: &Env, namespace: &str, name: &str) -> Result<Vec<String>> {
    let bg = env.json(&["-n", namespace, "get", "brokergroup", name])?;
    let groups = bg["status"]["groups"].as_array().context("no groups in the status")?;
    groups.iter().map(|g| g["live"].as_str().map(String::from).with_context(|| format!("a group without a live: {g}"))).collect()
}

fn node_of(env: &Env, namespace: &str, pod: &str) -> Result<String> {
    Ok(env.kubectl(&["-n", namespace, "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])?.trim().to_string())
}

/// The members of group `group`: `{name}-g{group}-0` and `-1`.
fn members(name: &str, group: usize) -> [String; 2] {
    [0, 1].map(|i| format!("{name}-g{group}-{i}"))
}

/// Sends `{prefix}-{from}` … persistent and receipted on one plain connection (no failover,
/// so the Service picks one live for all of them).
async fn send_on_one_connection(address: SocketAddr, queue: &str, prefix: &str, from: usize, count: usize) -> Result<BTreeSet<String>> {
    let client = Client::connect(&format!("stomp://{address}"), ClientOptions::default()).await?;
    let mut sent = BTreeSet::new();
    for n in from..from + count {
        let body = format!("{prefix}-{n}");
        // A message-id makes a resend of the batch after a failed connection count once.
        let options = SendOptions { persistent: true, receipt: true, message_id: Some(body.clone()), ..SendOptions::default() };
        client.send(queue, body.clone(), options).await?;
        sent.insert(body);
    }
    client.disconnect().await?;
    Ok(sent)
}

/// Like [`send_on_one_connection`], retried while the Service has no live endpoint yet.
async fn send_batch(address: SocketAddr, queue: &str, prefix: &str, from: usize, count: usize) -> Result<BTreeSet<String>> {
    let sent = eventually_ok_every(&format!("a send of {prefix} through {address}"), FLOWING, Duration::from_millis(500), || async move {
        let sent = send_on_one_connection(address, queue, prefix, from, count).await;
        if let Err(e) = &sent {
            eprintln!("send {prefix} through {address}: {e:#} (retrying)");
        }
        sent
    })
    .await?;
    Ok(sent)
}

/// One MESSAGE as the consumer saw it.
#[derive(Debug, Clone)]
struct Delivery {
    body: String,
    /// The broker's id of the stored copy it came from: a second id for one body is a
    /// second stored copy, the same id again a redelivery.
    message_id: String,
    at: Instant,
}

/// A consumer on a failover URL with individual acks, recording every delivery in order.
struct Recorder {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Recorder {
    async fn start(url: &str, queue: &str) -> Result<Recorder> {
        let client = connect_failover(url, ClientOptions::default(), FLOWING).await?;
        let mut sub = client.subscribe(queue, AckMode::ClientIndividual, Some(100)).await?;
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (deliveries, stop) = (deliveries.clone(), stop.clone());
            async move {
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => break,
                        m = sub.recv() => m,
                    };
                    let Some(m) = message else { break };
                    let body = String::from_utf8_lossy(&m.body).into_owned();
                    deliveries.lock().push(Delivery { body, message_id: m.message_id.clone(), at: Instant::now() });
                    // An ack lost in a failover means a redelivery, which the tally tells apart.
                    client.ack(&m).await.ok();
                }
                client.disconnect().await.ok();
            }
        });
        Ok(Recorder { deliveries, stop, task })
    }

    /// Distinct bodies received so far.
    fn distinct(&self) -> usize {
        self.deliveries.lock().iter().map(|d| d.body.as_str()).collect::<BTreeSet<_>>().len()
    }

    fn first_after(&self, since: Instant) -> Option<Instant> {
        self.deliveries.lock().iter().map(|d| d.at).find(|at| *at > since)
    }

    /// Waits until `count` distinct bodies arrived.
    async fn wait_distinct(&self, count: usize, what: &str, timeout: Duration) -> Result<()> {
        eventually_ok_every(&format!("{what}: {count} messages"), timeout, Duration::from_millis(100), || async move {
            ensure!(self.distinct() >= count, "{} arrived", self.distinct());
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Waits until every body of `expected` arrived (or `timeout`), then stops.
    async fn finish(self, expected: &BTreeSet<String>, timeout: Duration) -> Result<Vec<Delivery>> {
        let deadline = Deadline::after("every expected message at the consumer", timeout);
        let missing = |d: &Mutex<Vec<Delivery>>| {
            let got: BTreeSet<String> = d.lock().iter().map(|d| d.body.clone()).collect();
            expected.iter().filter(|b| !got.contains(*b)).count()
        };
        while missing(&self.deliveries) > 0 && !deadline.passed() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop.cancel();
        self.task.await.context("consumer task failed")?;
        Ok(std::mem::take(&mut *self.deliveries.lock()))
    }
}

/// What the consumer got of what was receipted.
#[derive(Debug, Default)]
struct Tally {
    expected: usize,
    deliveries: usize,
    missing: Vec<String>,
    /// Bodies delivered again from the same stored copy (an ack lost in a failover).
    redelivered: usize,
    /// Bodies delivered from two stored copies: stored twice.
    stored_twice: Vec<String>,
    /// First arrivals that came before an earlier-numbered body of the same producer.
    out_of_order: Vec<String>,
}

impl Tally {
    fn of(deliveries: &[Delivery], expected: &BTreeSet<String>) -> Tally {
        let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
        let mut out_of_order = Vec::new();
        let mut redelivered = 0;
        for d in deliveries {
            let first = !ids.contains_key(d.body.as_str());
            let seen = ids.entry(&d.body).or_default();
            if !seen.insert(&d.message_id) {
                redelivered += 1;
            }
            let numbered = d.body.rsplit_once('-').and_then(|(p, n)| Some((p, n.parse::<u64>().ok()?)));
            if let (true, Some((producer, n))) = (first, numbered) {
                let last = latest.entry(producer).or_insert(n);
                if n < *last {
                    out_of_order.push(format!("{} after {producer}-{last}", d.body));
                }
                *last = (*last).max(n);
            }
        }
        Tally {
            expected: expected.len(),
            deliveries: deliveries.len(),
            missing: expected.iter().filter(|b| !ids.contains_key(b.as_str())).cloned().collect(),
            redelivered,
            stored_twice: ids.iter().filter(|(_, i)| i.len() > 1).map(|(b, _)| b.to_string()).collect(),
            out_of_order,
        }
    }

    fn ensure_complete(&self) -> Result<()> {
        ensure!(self.missing.is_empty(), "{} of {} receipted messages never arrived, e.g. {:?}", self.missing.len(), self.expected, first(&self.missing));
        Ok(())
    }

    fn ensure_once_in_order(&self) -> Result<()> {
        self.ensure_complete()?;
        ensure!(self.stored_twice.is_empty(), "{} messages arrived from two stored copies, e.g. {:?}", self.stored_twice.len(), first(&self.stored_twice));
        ensure!(self.out_of_order.is_empty(), "{} messages arrived out of order, e.g. {:?}", self.out_of_order.len(), first(&self.out_of_order));
        Ok(())
    }
}

/// `3-7, 9` for 3, 4, 5, 6, 7, 9.
fn ranges(mut numbers: Vec<usize>) -> String {
    numbers.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for n in numbers {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => out.push((n, n)),
        }
    }
    let text: Vec<String> = out.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    if text.is_empty() { "none".into() } else { text.join(", ") }
}

fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(3)]
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} receipted, {} missing, {} deliveries, {} redelivered (lost acks), {} stored twice, {} out of order",
            self.expected,
            self.missing.len(),
            self.deliveries,
            self.redelivered,
            self.stored_twice.len(),
            self.out_of_order.len()
        )
    }
}

/// Waits until every producer got `more` receipts beyond `from`.
async fn wait_receipts(producers: &[Producer], from: &[usize], more: usize, what: &str) -> Result<()> {
    eventually_ok_every(&format!("{what}: {more} receipts beyond {from:?} for every producer"), FLOWING, Duration::from_millis(100), || async move {
        let behind: Vec<usize> = producers.iter().zip(from).filter(|(p, f)| p.receipted() < *f + more).map(|(p, _)| p.receipted()).collect();
        ensure!(behind.is_empty(), "producers stuck at {behind:?} receipts");
        Ok(())
    })
    .await?;
    Ok(())
}

/// `bridge`: a batch across the orders → billing connector, then a steady flow through a
/// kill -9 of billing's live.
async fn bridge_follows_a_failover(env: &Env, namespace: &str) -> Result<()> {
    for bg in ["orders", "billing"] {
        wait_for_endpoints(env, namespace, bg, &lives(env, namespace, bg)?).await?;
    }
    let orders = env.stomp_address(namespace, "orders").await?;
    let billing = env.stomp_address(namespace, "billing").await?;

    // A batch sent before anyone consumes waits on orders; billing's consumer asks for it.
    let sent = send_batch(orders, "/queue/invoices", "invoice", 0, BATCH).await?;
    let started = Instant::now();
    let consumer = Recorder::start(&failover_url(billing), "/queue/invoices").await?;
    let deliveries = consumer.finish(&sent, DELIVERED).await?;
    let tally = Tally::of(&deliveries, &sent);
    println!("bridge: batch of {BATCH} sent to orders, at billing's consumer in {:.1}s: {tally}", started.elapsed().as_secs_f64());
    tally.ensure_once_in_order()?;
    ensure!(tally.deliveries == BATCH, "each message once: {tally}");

    // A steady flow, and kill -9 of billing's live while it runs.
    let consumer = Recorder::start(&failover_url(billing), "/queue/payments").await?;
    let producer = Producer::start(&failover_url(orders), "/queue/payments", "payment").await?;
    consumer.wait_distinct(FLOW_BEFORE, "the flow across the bridge", FLOWING).await?;
    let [first_member, second_member] = members("billing", 0);
    let live = lives(env, namespace, "billing")?.remove(0);
    let backup = if live == first_member { second_member } else { first_member };
    let fault = Instant::now();
    let how = env.kill_pod(namespace, &live)?;
    let before = consumer.distinct();
    wait_for_brokergroup(env, namespace, "billing", &format!("{backup} live in the status"), FAILOVER_SEEN, |bg| group_status(bg, 0)["live"] == backup.as_str()).await?;
    consumer.wait_distinct(before + FLOW_AFTER, "the flow across the bridge after the failover", FLOWING).await?;
    let resumed = consumer.first_after(fault + Duration::from_millis(500)).map(|at| at.duration_since(fault));
    let (receipted, not_receipted) = producer.stop().await?;
    let deliveries = consumer.finish(&receipted, DELIVERED).await?;
    let tally = Tally::of(&deliveries, &receipted);
    println!(
        "bridge: {how} of billing's live {live}: {tally}; {not_receipted} sends not receipted; deliveries resumed {} after the kill",
        resumed.map_or("never".into(), |d| format!("{:.1}s", d.as_secs_f64()))
    );
    tally.ensure_once_in_order()?;
    let orders_status = wait_linked(env, namespace, "orders", 1).await?;
    println!("bridge: orders linked again: {}", orders_status["status"]["linked"]);
    Ok(())
}

/// `service`: messages sent on several connections through the BrokerGroup-wide Service
/// land on different groups; one consumer through the same Service receives them all.
async fn service_delivers_the_whole_queue(env: &Env, namespace: &str) -> Result<()> {
    let lives = lives(env, namespace, "mesh")?;
    wait_for_endpoints(env, namespace, "mesh", &lives).await?;
    let mesh = env.stomp_address(namespace, "mesh").await?;
    let mut sent = BTreeSet::new();
    for c in 0..CONNECTIONS {
        // One prefix per connection: each connection's messages must keep their order.
        sent.extend(send_batch(mesh, "/queue/spread", &format!("spread{c}"), 0, PER_CONNECTION).await?);
    }
    // Where they landed: no consumer yet, so nothing has crossed a bridge.
    let mut landed = Vec::new();
    for live in lives {
        let status = broker_status(env, namespace, &live).await?;
        let enqueued = status.queues.iter().find(|q| q.name == "/queue/spread").map_or(0, |q| q.enqueued_total);
        landed.push((live, enqueued));
    }
    let groups_used = landed.iter().filter(|(_, n)| *n > 0).count();
    println!("service: {} messages on {CONNECTIONS} connections landed on {landed:?}", sent.len());
    ensure!(groups_used >= 2, "the Service spread the connections over one live only: {landed:?}");

    let started = Instant::now();
    let consumer = Recorder::start(&failover_url(mesh), "/queue/spread").await?;
    let deliveries = consumer.finish(&sent, DELIVERED).await?;
    let tally = Tally::of(&deliveries, &sent);
    println!("service: one consumer through the BrokerGroup-wide Service got them in {:.1}s: {tally}", started.elapsed().as_secs_f64());
    tally.ensure_once_in_order()?;
    ensure!(tally.deliveries == sent.len(), "each message once: {tally}");
    Ok(())
}

/// Where the consumer of a node scenario connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumerVia {
    /// Its group's client Service, which follows that group's live.
    GroupService,
    /// The BrokerGroup-wide Service: on a failover it lands on whichever live comes next.
    BrokerGroupService,
}

/// `node` and `node-service`: producers through the BrokerGroup-wide Service, a consumer on
/// one group (see [`ConsumerVia`]); the node of that group's live fails. `node` then brings
/// the node back and waits for the failback, so that `node-service` finds the layout whole.
async fn node_fails_under_cross_group_traffic(env: &Env, namespace: &str, via: ConsumerVia) -> Result<()> {
    // The operator must survive the failure: fail a node it does not run on.
    let operator_node = env.kubectl(&["-n", "duomq-system", "get", "pods", "-l", "app.kubernetes.io/name=duomq-operator", "-o", "jsonpath={.items[0].spec.nodeName}"])?;
    let operator_node = operator_node.trim();
    let lives = lives(env, namespace, "mesh")?;
    let mesh = env.stomp_address(namespace, "mesh").await?;
    let queue = match via {
        ConsumerVia::GroupService => "/queue/cross",
        ConsumerVia::BrokerGroupService => "/queue/cross-service",
    };
    let (consumer, group) = match via {
        ConsumerVia::GroupService => {
            let mut group = None;
            for (g, live) in lives.iter().enumerate() {
                if node_of(env, namespace, live)? != operator_node {
                    group = Some(g);
                    break;
                }
            }
            let group = group.context("every live runs on the operator's node")?;
            let own = env.stomp_address(namespace, &format!("mesh-g{group}")).await?;
            (Recorder::start(&failover_url(own), queue).await?, group)
        }
        ConsumerVia::BrokerGroupService => consumer_off_the_operator_node(env, namespace, mesh, queue, &lives, operator_node).await?,
    };
    let live = lives[group].clone();
    let failed = node_of(env, namespace, &live)?;
    let backup = members("mesh", group).into_iter().find(|m| *m != live).context("no backup")?;
    ensure!(node_of(env, namespace, &backup)? != failed, "the members of group {group} share a node");

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        producers.push(Producer::start(&failover_url(mesh), queue, &format!("p{p}")).await?);
    }
    consumer.wait_distinct(FLOW_BEFORE * PRODUCERS, "the flow into the consumer's group", FLOWING).await?;

    let receipted_at_fault: Vec<usize> = producers.iter().map(Producer::receipted).collect();
    let fault = Instant::now();
    env.local()?.cluster.fail_node(&failed).await?;
    let bg = wait_for_brokergroup(env, namespace, "mesh", &format!("{backup} live in the status"), FAILOVER_SEEN, |bg| group_status(bg, group)["live"] == backup.as_str()).await?;
    let took = fault.elapsed();
    let receipted_at_failover: Vec<usize> = producers.iter().map(Producer::receipted).collect();
    wait_receipts(&producers, &receipted_at_failover, FLOW_AFTER, "after the failover").await?;
    let mut receipted = BTreeSet::new();
    let mut not_receipted = 0;
    for producer in producers {
        let (r, n) = producer.stop().await?;
        receipted.extend(r);
        not_receipted += n;
    }
    let deliveries = consumer.finish(&receipted, DELIVERED).await?;
    let tally = Tally::of(&deliveries, &receipted);
    println!(
        "{via:?}: {failed} failed (group {group}'s live {live}, the consumer's group): {backup} live in the status after {:.1}s, lastFailover {}; {tally}; {not_receipted} sends not receipted",
        took.as_secs_f64(),
        group_status(&bg, group)["lastFailover"]
    );
    if !tally.missing.is_empty() {
        let missing: BTreeSet<String> = tally.missing.iter().cloned().collect();
        let found = stranded(env, namespace, queue, &missing).await;
        eprintln!("{via:?}: where the {} missing messages are: {found}", missing.len());
        for (p, (at_fault, at_failover)) in receipted_at_fault.iter().zip(&receipted_at_failover).enumerate() {
            let prefix = format!("p{p}-");
            let numbers: Vec<usize> = missing.iter().filter_map(|b| b.strip_prefix(&prefix)?.parse().ok()).collect();
            eprintln!("{via:?}: p{p} had {at_fault} receipts at the fault and {at_failover} when the status named the new live; missing: {}", ranges(numbers));
        }
    }
    tally.ensure_complete()?;

    if via == ConsumerVia::GroupService {
        let restored = Instant::now();
        env.local()?.cluster.restore_node(&failed).await?;
        wait_for_brokergroup(env, namespace, "mesh", "every group back on its first node, in sync", GROUP_AVAILABLE, |bg| {
            let back = lives.iter().enumerate().all(|(g, l)| group_status(bg, g)["live"] == l.as_str());
            back && common::condition(bg, "Replicated").as_deref() == Some("True")
        })
        .await?;
        wait_linked(env, namespace, "mesh", 12).await?;
        println!("{via:?}: {failed} restored; failed back, in sync and linked after {:.1}s", restored.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Waits until the Service's Endpoints list exactly the pods `lives`, ready: a client of the
/// Service may then reach every group. (The BrokerGroup is Available, and its status names
/// the lives, a few seconds before their pods pass the readiness probe: a connection in
/// between finds fewer endpoints, or none.)
async fn wait_for_endpoints(env: &Env, namespace: &str, service: &str, lives: &[String]) -> Result<()> {
    let expected: BTreeSet<&str> = lives.iter().map(String::as_str).collect();
    let started = Instant::now();
    let expected = &expected;
    let listed = eventually_ok_every(&format!("the endpoints of Service {service} being the lives {expected:?}"), FLOWING, Duration::from_millis(250), || async move {
        let endpoints = env.json(&["-n", namespace, "get", "endpoints", service])?;
        let ready: BTreeSet<String> = endpoints["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
            .filter_map(|a| a["targetRef"]["name"].as_str().map(String::from))
            .collect();
        ensure!(ready.iter().map(String::as_str).collect::<BTreeSet<_>>() == *expected, "they are {ready:?}");
        Ok(())
    })
    .await;
    if let Err(e) = listed {
        let pods = env.kubectl(&["-n", namespace, "get", "pods", "-o", "wide", "-L", "duomq.io/role"]).unwrap_or_default();
        bail!("{e}:\n{pods}");
    }
    println!("Service {service}: endpoints {expected:?} after {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// For a failed scenario: which group's live holds the `missing` messages of `queue` (its
/// `/status` depth), and whether a consumer on that group's own Service gets them: stranded
/// there, not lost.
async fn stranded(env: &Env, namespace: &str, queue: &str, missing: &BTreeSet<String>) -> String {
    let Ok(lives) = lives(env, namespace, "mesh") else { return "no lives in the status".into() };
    let mut out = Vec::new();
    for (group, live) in lives.iter().enumerate() {
        let depth = match broker_status(env, namespace, live).await {
            Ok(s) => s.queues.iter().find(|q| q.name == queue).map_or(0, |q| q.depth),
            Err(e) => {
                out.push(format!("{live}: {e:#}"));
                continue;
            }
        };
        if depth == 0 {
            continue;
        }
        let recovered = async {
            let own = env.stomp_address(namespace, &format!("mesh-g{group}")).await?;
            let consumer = Recorder::start(&failover_url(own), queue).await?;
            let got = consumer.finish(missing, Duration::from_secs(20)).await?;
            anyhow::Ok(got.iter().filter(|d| missing.contains(&d.body)).map(|d| d.body.clone()).collect::<BTreeSet<_>>().len())
        }
        .await;
        match recovered {
            Ok(n) => out.push(format!("{live} (group {group}) holds {depth} with no consumer; a consumer on Service mesh-g{group} got {n} of the missing")),
            Err(e) => out.push(format!("{live} (group {group}) holds {depth}; consuming them through mesh-g{group} failed: {e:#}")),
        }
    }
    out.join("; ")
}

/// A consumer through the BrokerGroup-wide Service on a group whose live does not run on
/// the operator's node, and that group. Its group is the one the other lives' links see
/// demand from; a consumer on the operator's node is closed and the next connection goes to
/// the next live.
async fn consumer_off_the_operator_node(env: &Env, namespace: &str, mesh: SocketAddr, queue: &str, lives: &[String], operator_node: &str) -> Result<(Recorder, usize)> {
    for _ in 0..lives.len() {
        let consumer = Recorder::start(&failover_url(mesh), queue).await?;
        let group = demand_from(env, namespace, lives, queue).await?;
        if node_of(env, namespace, &lives[group])? != operator_node {
            return Ok((consumer, group));
        }
        consumer.finish(&BTreeSet::new(), Duration::ZERO).await?;
    }
    bail!("every connection through the Service reached a live on the operator's node {operator_node}")
}

/// The one group whose demand for `queue` the other lives' links report (the group with its
/// consumer), once only one does.
async fn demand_from(env: &Env, namespace: &str, lives: &[String], queue: &str) -> Result<usize> {
    let only = eventually_ok_every(&format!("a single group asking for {queue}"), DEMAND_SEEN, Duration::from_millis(250), || async move {
        let mut groups = BTreeSet::new();
        for live in lives {
            let Ok(status) = broker_status(env, namespace, live).await else { continue };
            let links = status.network.iter().flat_map(|n| &n.connectors).flat_map(|c| &c.links);
            groups.extend(links.filter(|l| l.remote_demand.iter().any(|d| d == queue)).filter_map(|l| l.remote_group.clone()));
        }
        match groups.iter().collect::<Vec<_>>()[..] {
            [only] => Ok(only.clone()),
            _ => Err(format!("groups asking: {groups:?}")),
        }
    })
    .await?;
    only.rsplit_once("-g").and_then(|(_, n)| n.parse().ok()).with_context(|| format!("a remote group named {only}"))
}
