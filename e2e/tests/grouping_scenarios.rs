//! Clustered message grouping end to end, as a user meets it: `manifests/examples/grouping.yaml`
//! (three groups, group 0's live runs the LOCAL grouping handler, the others ask it), clients
//! through each group's client Service only.
//!
//! - `pinned`: `duomq-broker send --groups` through every group's Service, the same group
//!   ids from each; `duomq-broker receive --print-header JMSXGroupID` consumers on groups 1
//!   and 2 (two on group 1, so pinning inside a broker counts too). Every message arrives,
//!   every group id reaches one consumer only, in order per producer; the status names the
//!   handler's group, its live, its bindings and both REMOTE handlers linked.
//! - `handler-failover`: grouped producers on every group keep sending while the LOCAL
//!   handler's live pod is deleted (`kubectl delete pod`, as the failover scenarios do):
//!   the status names the group's new live with the bindings, the producers keep getting
//!   receipts, no group changes its consumer and nothing receipted is lost; then message
//!   groups never seen before, sent through a REMOTE group, are decided by the new live and
//!   pinned too, and the status counts their bindings besides the old ones.
//! - `handler-kill`: the same with kill -9 of the handler's new live (its container; the
//!   kubelet restarts it in its pod), so the handler moves back to the first member.
//!
//! One local control plane and operator; the scenarios run in this order on one BrokerGroup
//! (the later ones check the consumers `pinned` left running). On a cluster reached
//! through kubectl only (`E2E_KUBECONFIG`, `E2E_KUBECTL_ONLY`) it runs through
//! `kubectl port-forward`s to the Services. What it must not do: reach a broker other than
//! as a client (the CLI or the client library) or through the BrokerGroup's status.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::traffic::{connect_failover, failover_url};
use common::{binaries_dir, condition, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use duomq_broker::admin::api::BrokerStatus;
use duomq_broker::client::{ClientOptions, SendOptions};
use duomq_e2e::env::repo_root;
use duomq_testkit::{eventually_ok_every, Deadline};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// From Available to every bridge linked and both REMOTE handlers linked to the LOCAL one.
const LINKED: Duration = Duration::from_secs(120);
/// From the pod's deletion to the status naming the handler group's new live.
const FAILOVER_SEEN: Duration = Duration::from_secs(90);
/// From the last send to every receipted message at a consumer, bridges included.
const DELIVERED: Duration = Duration::from_secs(120);
/// For a flow to start, or to resume after the failover; for a Service to list its live.
const FLOWING: Duration = Duration::from_secs(90);
/// From a change in a live's `/status` to the BrokerGroup's status showing it (the operator
/// looks again every few seconds).
const STATUS_SEEN: Duration = Duration::from_secs(60);
/// Lines of a consumer's stderr kept for a failed run's log.
const CONSUMER_LOG_LINES: usize = 20;
/// How long one `duomq-broker send` of the batch may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

const NAMESPACE: &str = "grouping";
const BROKER_GROUP: &str = "orders";
const MANIFEST: &str = "manifests/examples/grouping.yaml";
const GROUPS: usize = 3;
/// Bridges of three groups in a full mesh: each live links to the two others.
const CONNECTORS: usize = GROUPS * (GROUPS - 1);
const QUEUE: &str = "/queue/grouped";
/// Message groups (JMSXGroupID g0 … g{N-1}), the same from every producer.
const MESSAGE_GROUPS: usize = 20;
/// `pinned`: messages each group's producer sends.
const BATCH: usize = 200;
/// `handler-failover`: receipts every producer gets before the fault and after it.
const FLOW_BEFORE: usize = 20;
const FLOW_AFTER: usize = 30;
/// `handler-failover`: after the failover, messages in message groups never seen before.
const LATE_BATCH: usize = 50;
const LATE_GROUPS: usize = 5;
/// Pause between two sends of a `handler-failover` producer: a steady trickle.
const PRODUCER_PAUSE: Duration = Duration::from_millis(20);

const GROUP_HEADER: &str = "JMSXGroupID";
/// The headers `duomq-broker send` numbers its messages with (broker/src/cli).
const RUN_HEADER: &str = "duomq-run";
const SEQ_HEADER: &str = "duomq-seq";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_groups_with_grouping_when_producers_send_groups_everywhere_and_the_handlers_live_is_deleted_should_keep_every_group_on_one_consumer_and_lose_nothing() -> Result<()> {
    let env = Env::start().await?;
    let result = run(&env).await;
    if result.is_err() {
        env.dump(NAMESPACE, BROKER_GROUP);
        dump_lives(&env).await;
    }
    env.shutdown().await;
    result
}

async fn run(env: &Env) -> Result<()> {
    env.install_operator()?;
    let started = Instant::now();
    apply(env).await?;
    println!("{MANIFEST} applied, available, linked and grouping connected in {:.0}s", started.elapsed().as_secs_f64());
    let services = group_services(env).await?;

    // Two consumers on group 1, one on group 2.
    let mut consumers = Vec::new();
    for (name, group) in [("c1a", 1), ("c1b", 1), ("c2", 2)] {
        consumers.push(CliConsumer::start(name, services[group]).await?);
    }

    for c in &consumers {
        c.wait_subscribed().await?;
    }
    wait_for_demand(env, &[(1, 2), (2, 1)]).await?;

    let result = async {
        let started = Instant::now();
        pinned(env, &services, &consumers).await?;
        println!("scenario pinned: passed in {:.0}s", started.elapsed().as_secs_f64());
        for fault in [Fault::Delete, Fault::Kill] {
            let started = Instant::now();
            handler_failover(env, &services, &consumers, fault).await?;
            println!("scenario {}: passed in {:.0}s", fault.scenario(), started.elapsed().as_secs_f64());
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        consumers.iter().for_each(CliConsumer::print_log);
    }
    result?;

    for c in consumers {
        c.stop().await;
    }
    env.kubectl(&["-n", NAMESPACE, "delete", "brokergroup", BROKER_GROUP, "--wait=false"])?;
    Ok(())
}

/// Applies the example in its namespace and waits until it is Available, Replicated, its
/// bridges linked and both REMOTE handlers linked to the LOCAL one.
async fn apply(env: &Env) -> Result<Value> {
    env.kubectl(&["create", "namespace", NAMESPACE])?;
    let file = repo_root().join(MANIFEST);
    env.kubectl(&["-n", NAMESPACE, "apply", "-f", &file.to_string_lossy()])?;
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    for c in ["Available", "Replicated"] {
        env.kubectl(&["-n", NAMESPACE, "wait", &format!("--for=condition={c}"), &format!("brokergroup/{BROKER_GROUP}"), &timeout])?;
    }
    let linked = format!("{CONNECTORS}/{CONNECTORS}");
    let remotes = format!("{}/{}", GROUPS - 1, GROUPS - 1);
    wait_for_brokergroup(env, NAMESPACE, BROKER_GROUP, "bridges linked and the REMOTE handlers linked to the LOCAL one", LINKED, |bg| {
        bg["status"]["linked"] == linked.as_str() && bg["status"]["grouping"]["remotesConnected"] == remotes.as_str() && bg["status"]["grouping"]["live"].is_string()
    })
    .await
    .map_err(|e| {
        let status = env.json(&["-n", NAMESPACE, "get", "brokergroup", BROKER_GROUP]).map(|bg| bg["status"].clone()).unwrap_or_default();
        e.context(format!("status: linked {}, grouping {}", status["linked"], status["grouping"]))
    })
}

/// Each group's client Service (`orders-g<i>`), once it lists that group's live.
async fn group_services(env: &Env) -> Result<Vec<SocketAddr>> {
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", BROKER_GROUP])?;
    let mut out = Vec::new();
    for g in 0..GROUPS {
        let service = format!("{BROKER_GROUP}-g{g}");
        let live = bg["status"]["groups"][g]["live"].as_str().with_context(|| format!("group {g} has no live"))?.to_string();
        wait_for_endpoint(env, &service, &live).await?;
        out.push(env.stomp_address(NAMESPACE, &service).await?);
    }
    Ok(out)
}

/// Waits until the Service's ready endpoints are exactly `live`.
async fn wait_for_endpoint(env: &Env, service: &str, live: &str) -> Result<()> {
    eventually_ok_every(&format!("the endpoints of Service {service} being the live {live}"), FLOWING, Duration::from_millis(250), || async move {
        let endpoints = env.json(&["-n", NAMESPACE, "get", "endpoints", service])?;
        let ready: Vec<&str> = endpoints["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
            .filter_map(|a| a["targetRef"]["name"].as_str())
            .collect();
        ensure!(ready == [live], "they are {ready:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// Waits until every group's live sees, for each `(group, consumers)`, that many consumers of
/// the queue on that group: its own queue's count on that group's live, the other lives'
/// links' demand from it. A message group is decided by where its first message can go, so
/// a message sent before the consumers' demand crossed the bridges binds its group to the
/// group it landed on. Needs the lives' `/status` at their pod IPs: on a cluster reached
/// through kubectl only it says so and does not wait.
async fn wait_for_demand(env: &Env, consumers: &[(usize, u64)]) -> Result<()> {
    if env.local.is_none() {
        println!("the consumers are subscribed; their demand on the other groups is not observable through kubectl only: sending without waiting for it");
        return Ok(());
    }
    let started = Instant::now();
    eventually_ok_every("the consumers' demand reaching every live", FLOWING, Duration::from_millis(250), || async move {
        let lives = lives(env)?;
        let mut waiting = Vec::new();
        for (g, live) in lives.iter().enumerate() {
            let status = match broker_status(env, live).await {
                Ok(s) => s,
                Err(e) => {
                    waiting.push(format!("{live}: {e:#}"));
                    continue;
                }
            };
            for (group, count) in consumers {
                let name = format!("{BROKER_GROUP}-g{group}");
                let seen = if *group == g {
                    status.queues.iter().find(|q| q.name == QUEUE).is_some_and(|q| q.consumers >= *count)
                } else {
                    let links = status.network.iter().flat_map(|n| &n.connectors).flat_map(|c| &c.links);
                    links.filter(|l| l.remote_group.as_deref() == Some(name.as_str())).any(|l| l.remote_demand.iter().any(|d| d == QUEUE))
                };
                if !seen {
                    waiting.push(format!("{live} does not see the consumers of {name}"));
                }
            }
        }
        ensure!(waiting.is_empty(), "{}", waiting.join("; "));
        Ok(())
    })
    .await?;
    println!("consumers' demand seen by every live after {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The live of each group, in group order, as the status names them.
fn lives(env: &Env) -> Result<Vec<String>> {
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", BROKER_GROUP])?;
    let groups = bg["status"]["groups"].as_array().context("no groups in the status")?;
    groups.iter().map(|g| g["live"].as_str().map(String::from).with_context(|| format!("a group without a live: {g}"))).collect()
}

/// `/status` of a pod's broker, at its pod IP (the local control plane only), signed with its
/// group's cluster password (see `Env::broker_status`).
async fn broker_status(env: &Env, pod: &str) -> Result<BrokerStatus> {
    env.broker_status(NAMESPACE, pod).await
}

/// For a failed run: each live's queue and grouping as its `/status` says (local plane only).
async fn dump_lives(env: &Env) {
    if env.local.is_none() {
        return;
    }
    let Ok(lives) = lives(env) else { return };
    for live in lives {
        match broker_status(env, &live).await {
            Ok(s) => {
                let queue = s.queues.iter().find(|q| q.name == QUEUE);
                eprintln!("/status of {live}: {QUEUE} {}, grouping {}", json(&queue), json(&s.grouping));
            }
            Err(e) => eprintln!("/status of {live}: {e:#}"),
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `duomq-broker`, built next to this test.
fn broker_binary() -> Result<std::path::PathBuf> {
    let path = binaries_dir()?.join("duomq-broker");
    ensure!(path.exists(), "{} is missing: cargo build -p duomq-broker", path.display());
    Ok(path)
}

/// One message as a consumer printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    group: String,
    run: String,
    seq: u64,
}

impl Seen {
    /// `JMSXGroupID:g3<TAB>duomq-run:ab12<TAB>duomq-seq:7<TAB>message 7`.
    fn parse(line: &str) -> Option<Seen> {
        let mut fields = line.split('\t');
        let mut next = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix(':').map(String::from);
        let group = next(GROUP_HEADER)?;
        let run = next(RUN_HEADER)?;
        let seq = next(SEQ_HEADER)?.parse().ok()?;
        Some(Seen { group, run, seq })
    }
}

/// A `duomq-broker receive` process on one group's Service (a failover URL, so it follows
/// the group's live), printing each message's group, run and sequence number.
struct CliConsumer {
    name: &'static str,
    child: Child,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The last lines of its stderr.
    log: Arc<Mutex<Vec<String>>>,
    /// It printed that the broker confirmed its SUBSCRIBE.
    subscribed: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl CliConsumer {
    async fn start(name: &'static str, service: SocketAddr) -> Result<CliConsumer> {
        let mut child = Command::new(broker_binary()?)
            .args(["receive", "--url", &failover_url(service), "--destination", QUEUE, "--timeout", "30m", "--prefetch", "10"])
            .args(["--print-header", GROUP_HEADER, "--print-header", RUN_HEADER, "--print-header", SEQ_HEADER])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("failed to start duomq-broker receive")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        // Its progress and errors, the last few kept for a failed run's log.
        tokio::spawn({
            let (log, subscribed) = (log.clone(), subscribed.clone());
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("subscribed to ") {
                        subscribed.store(true, Ordering::Relaxed);
                    }
                    let mut log = log.lock();
                    if log.len() == CONSUMER_LOG_LINES {
                        log.remove(0);
                    }
                    log.push(line);
                }
            }
        });
        let reader = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match Seen::parse(&line) {
                        Some(s) => seen.lock().push(s),
                        None => eprintln!("consumer {name}: unexpected line {line:?}"),
                    }
                }
            }
        });
        Ok(CliConsumer { name, child, seen, log, subscribed, reader })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// Waits until the broker confirmed its subscription.
    async fn wait_subscribed(&self) -> Result<()> {
        eventually_ok_every(&format!("consumer {} subscribing", self.name), FLOWING, Duration::from_millis(100), || async move {
            ensure!(self.subscribed.load(Ordering::Relaxed), "its stderr: {}", self.log.lock().join("; "));
            Ok(())
        })
        .await?;
        Ok(())
    }

    fn print_log(&self) {
        eprintln!("consumer {}: stderr ends with:\n{}", self.name, self.log.lock().join("\n"));
    }

    async fn stop(mut self) {
        self.child.start_kill().ok();
        self.child.wait().await.ok();
        self.reader.await.ok();
    }
}

/// What the consumers got, judged against what the producers had receipted.
#[derive(Debug, Default)]
struct Tally {
    expected: usize,
    deliveries: usize,
    missing: Vec<(String, u64)>,
    /// (run, seq) delivered more than once (a redelivery after a lost ack, or a copy).
    repeated: usize,
    /// Message groups that reached more than one consumer, with those consumers.
    split: BTreeMap<String, BTreeSet<&'static str>>,
    /// First arrivals at a consumer that came before an earlier message of the same run and group.
    out_of_order: Vec<String>,
    /// Consumers and the number of message groups each owns (of every message they got).
    owners: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn of(consumers: &[CliConsumer], expected: &BTreeSet<(String, u64)>) -> Tally {
        let mut t = Tally { expected: expected.len(), ..Tally::default() };
        let mut got: BTreeMap<(String, u64), usize> = BTreeMap::new();
        let mut owners: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
        for c in consumers {
            let mut latest: BTreeMap<(String, String), u64> = BTreeMap::new();
            let mut first = BTreeSet::new();
            for s in c.seen() {
                owners.entry(s.group.clone()).or_default().insert(c.name);
                if expected.contains(&(s.run.clone(), s.seq)) {
                    t.deliveries += 1;
                    *got.entry((s.run.clone(), s.seq)).or_default() += 1;
                }
                if !first.insert((s.run.clone(), s.seq)) {
                    continue;
                }
                let last = latest.entry((s.run.clone(), s.group.clone())).or_insert(s.seq);
                if s.seq < *last {
                    t.out_of_order.push(format!("{}: {} {}#{} after #{last}", c.name, s.group, s.run, s.seq));
                }
                *last = (*last).max(s.seq);
            }
        }
        t.missing = expected.iter().filter(|k| !got.contains_key(*k)).cloned().collect();
        t.repeated = got.values().filter(|n| **n > 1).count();
        for (group, cs) in &owners {
            for c in cs {
                *t.owners.entry(c).or_default() += 1;
            }
            if cs.len() > 1 {
                t.split.insert(group.clone(), cs.clone());
            }
        }
        t
    }

    fn ensure_pinned_and_complete(&self) -> Result<()> {
        ensure!(self.missing.is_empty(), "{} of {} messages never arrived, e.g. {:?}", self.missing.len(), self.expected, &self.missing[..self.missing.len().min(3)]);
        ensure!(self.split.is_empty(), "message groups reached more than one consumer: {:?}", self.split);
        ensure!(self.out_of_order.is_empty(), "{} messages arrived out of order, e.g. {:?}", self.out_of_order.len(), &self.out_of_order[..self.out_of_order.len().min(3)]);
        Ok(())
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} expected, {} missing, {} deliveries, {} delivered more than once, {} groups split, {} out of order; groups per consumer {:?}",
            self.expected,
            self.missing.len(),
            self.deliveries,
            self.repeated,
            self.split.len(),
            self.out_of_order.len(),
            self.owners
        )
    }
}

/// Waits until the consumers hold every message of `expected`, then tallies.
async fn wait_delivered(consumers: &[CliConsumer], expected: &BTreeSet<(String, u64)>, timeout: Duration) -> Tally {
    let deadline = Deadline::after("every expected message at the consumers", timeout);
    loop {
        let tally = Tally::of(consumers, expected);
        if tally.missing.is_empty() || deadline.passed() {
            return tally;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `duomq-broker send` of `count` persistent, receipted messages in `groups` message groups
/// `{prefix}0` … through group `g`'s Service; its summary line.
async fn cli_send(g: usize, service: SocketAddr, count: usize, groups: usize, prefix: &str) -> Result<String> {
    let child = Command::new(broker_binary()?)
        .args(["send", "--url", &format!("stomp://{service}"), "--destination", QUEUE, "--count", &count.to_string()])
        .args(["--groups", &groups.to_string(), "--group-prefix", prefix, "--persistent", "--receipts", "--window", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("failed to start duomq-broker send")?;
    let out = tokio::time::timeout(SEND_TIMEOUT, child.wait_with_output()).await.with_context(|| format!("duomq-broker send through group {g} took over {SEND_TIMEOUT:?}"))??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "duomq-broker send through group {g} failed: {}", stderr.trim());
    Ok(format!("through group {g}: {}", stderr.lines().last().unwrap_or_default()))
}

/// `pinned`: a `duomq-broker send --groups` batch through every group's Service at once;
/// every message reaches the consumers, each group one consumer.
async fn pinned(env: &Env, services: &[SocketAddr], consumers: &[CliConsumer]) -> Result<()> {
    let started = Instant::now();
    let sends = services.iter().enumerate().map(|(g, service)| cli_send(g, *service, BATCH, MESSAGE_GROUPS, "g"));
    for line in futures::future::try_join_all(sends).await? {
        println!("pinned: {line}");
    }
    let sent = started.elapsed();

    // The runs are the three sends' random ids: every message carries one.
    let runs = eventually_ok_every(&format!("messages of all {GROUPS} sends at the consumers"), DELIVERED, Duration::from_millis(250), || async move {
        let runs: BTreeSet<String> = consumers.iter().flat_map(|c| c.seen()).map(|s| s.run).collect();
        ensure!(runs.len() == GROUPS, "of {} sends", runs.len());
        Ok(runs)
    })
    .await?;
    let expected: BTreeSet<(String, u64)> = runs.iter().flat_map(|r| (0..BATCH as u64).map(move |n| (r.clone(), n))).collect();
    let tally = wait_delivered(consumers, &expected, DELIVERED).await;
    println!("pinned: {} messages in {MESSAGE_GROUPS} groups sent through {GROUPS} groups in {:.1}s, delivered in {:.1}s: {tally}", expected.len(), sent.as_secs_f64(), started.elapsed().as_secs_f64());
    tally.ensure_pinned_and_complete()?;
    ensure!(tally.owners.len() >= 2, "every group went to one consumer ({:?}): nothing was spread", tally.owners);

    // The operator reads the lives' /status on its next look.
    let wanted = MESSAGE_GROUPS as i64;
    let bg = wait_for_brokergroup(env, NAMESPACE, BROKER_GROUP, &format!("{wanted} bindings in status.grouping"), STATUS_SEEN, |bg| bg["status"]["grouping"]["bindings"].as_i64().unwrap_or(0) >= wanted)
        .await
        .map_err(|e| {
            let status = env.json(&["-n", NAMESPACE, "get", "brokergroup", BROKER_GROUP]).map(|bg| bg["status"]["grouping"].clone()).unwrap_or_default();
            e.context(format!("status.grouping {status}"))
        })?;
    let grouping = &bg["status"]["grouping"];
    println!("pinned: status.grouping {grouping}");
    ensure!(grouping["localGroup"] == format!("{BROKER_GROUP}-g0").as_str(), "localGroup: {grouping}");
    ensure!(grouping["live"] == bg["status"]["groups"][0]["live"], "the handler's live is group 0's live: {grouping}");
    ensure!(grouping["timeouts"].as_i64() == Some(0), "no decision timed out: {grouping}");
    Ok(())
}

/// Sends persistent, receipted messages of `MESSAGE_GROUPS` groups through a failover URL
/// until stopped, numbered like `duomq-broker send` (run = its name).
struct GroupedProducer {
    run: String,
    receipted: Arc<Mutex<BTreeSet<u64>>>,
    refused: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl GroupedProducer {
    async fn start(run: &str, service: SocketAddr) -> Result<GroupedProducer> {
        let options = ClientOptions { receipt_timeout: Duration::from_secs(60), ..ClientOptions::default() };
        let client = connect_failover(&failover_url(service), options, FLOWING).await?;
        let (receipted, refused) = (Arc::new(Mutex::new(BTreeSet::new())), Arc::new(Mutex::new(Vec::new())));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (receipted, refused, stop, run) = (receipted.clone(), refused.clone(), stop.clone(), run.to_string());
            async move {
                for n in 0u64.. {
                    let headers = vec![
                        (GROUP_HEADER.to_string(), format!("g{}", n % MESSAGE_GROUPS as u64)),
                        (RUN_HEADER.to_string(), run.clone()),
                        (SEQ_HEADER.to_string(), n.to_string()),
                    ];
                    let options = SendOptions { persistent: true, receipt: true, headers, ..SendOptions::default() };
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        sent = client.send(QUEUE, format!("{run}-{n}"), options) => match sent {
                            Ok(()) => {
                                receipted.lock().insert(n);
                            }
                            // Not receipted, so not promised: the checks ignore it.
                            Err(e) => refused.lock().push(format!("#{n}: {e:#}")),
                        },
                    }
                    tokio::time::sleep(PRODUCER_PAUSE).await;
                }
                client.disconnect().await.ok();
            }
        });
        Ok(GroupedProducer { run: run.to_string(), receipted, refused, stop, task })
    }

    fn receipted(&self) -> usize {
        self.receipted.lock().len()
    }

    /// Stops; the (run, seq) of every receipted message, and the sends that failed.
    async fn stop(self) -> Result<(BTreeSet<(String, u64)>, Vec<String>)> {
        self.stop.cancel();
        self.task.await.context("producer task failed")?;
        let receipted = self.receipted.lock().iter().map(|n| (self.run.clone(), *n)).collect();
        let refused = std::mem::take(&mut *self.refused.lock());
        Ok((receipted, refused))
    }
}

/// The run id of the `duomq-broker send` whose group ids start with `prefix`, once a
/// consumer got one of its messages.
async fn wait_for_run(consumers: &[CliConsumer], prefix: &str) -> Result<String> {
    let run = eventually_ok_every(&format!("a message of the groups {prefix}*"), DELIVERED, Duration::from_millis(250), || async move {
        consumers.iter().flat_map(|c| c.seen()).find(|s| s.group.starts_with(prefix)).map(|s| s.run).ok_or("none arrived")
    })
    .await?;
    Ok(run)
}

/// Waits until every producer has `more` receipts beyond `from`.
async fn wait_receipts(producers: &[GroupedProducer], from: &[usize], more: usize, what: &str) -> Result<()> {
    eventually_ok_every(&format!("{what}: {more} receipts beyond {from:?} for every producer"), FLOWING, Duration::from_millis(100), || async move {
        let counts: Vec<usize> = producers.iter().map(GroupedProducer::receipted).collect();
        ensure!(counts.iter().zip(from).all(|(n, f)| *n >= f + more), "producers at {counts:?} receipts");
        Ok(())
    })
    .await?;
    Ok(())
}

/// How the LOCAL handler's live is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kubectl delete pod`: the broker stops on SIGTERM and hands its Lease over.
    Delete,
    /// kill -9 of its container (`kubectl delete pod --force` through kubectl only).
    Kill,
}

impl Fault {
    fn scenario(self) -> &'static str {
        match self {
            Fault::Delete => "handler-failover",
            Fault::Kill => "handler-kill",
        }
    }

    /// The prefix of the message groups first sent after this fault.
    fn late_prefix(self) -> &'static str {
        match self {
            Fault::Delete => "after-delete-",
            Fault::Kill => "after-kill-",
        }
    }
}

/// `handler-failover` and `handler-kill`: grouped producers through every group while the
/// LOCAL handler's live is lost.
async fn handler_failover(env: &Env, services: &[SocketAddr], consumers: &[CliConsumer], fault: Fault) -> Result<()> {
    let scenario = fault.scenario();
    // Which consumer owns each group after `pinned`: no group may move.
    let before: BTreeMap<String, &'static str> = consumers.iter().flat_map(|c| c.seen().into_iter().map(move |s| (s.group, c.name))).collect();
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", BROKER_GROUP])?;
    let handler = bg["status"]["grouping"]["live"].as_str().context("no handler live in the status")?.to_string();
    let bindings_before = bg["status"]["grouping"]["bindings"].as_i64().unwrap_or(0);
    let backup = (0..2).map(|i| format!("{BROKER_GROUP}-g0-{i}")).find(|m| *m != handler).context("no backup")?;

    let mut producers = Vec::new();
    for (g, service) in services.iter().enumerate() {
        // Runs named per scenario: (run, seq) must not repeat one of an earlier scenario.
        producers.push(GroupedProducer::start(&format!("{scenario}-p{g}"), *service).await?);
    }
    wait_receipts(&producers, &[0; GROUPS], FLOW_BEFORE, "before the fault").await?;

    let at = Instant::now();
    let how = match fault {
        Fault::Delete => {
            env.kubectl(&["-n", NAMESPACE, "delete", "pod", &handler, "--wait=false"])?;
            "kubectl delete pod"
        }
        Fault::Kill => env.kill_pod(NAMESPACE, &handler)?,
    };
    let bg = wait_for_brokergroup(env, NAMESPACE, BROKER_GROUP, &format!("{backup} as the grouping handler's live"), FAILOVER_SEEN, |bg| {
        bg["status"]["grouping"]["live"] == backup.as_str() && bg["status"]["grouping"]["bindings"].is_i64()
    })
    .await?;
    let took = at.elapsed();
    println!("{scenario}: {how} of {handler}; the status names {backup} after {:.1}s: {}", took.as_secs_f64(), bg["status"]["grouping"]);
    let at_failover: Vec<usize> = producers.iter().map(GroupedProducer::receipted).collect();
    wait_receipts(&producers, &at_failover, FLOW_AFTER, "after the failover").await?;

    let mut expected = BTreeSet::new();
    for p in producers {
        let (receipted, refused) = p.stop().await?;
        if !refused.is_empty() {
            println!("{scenario}: {} sends of {} not receipted, e.g. {:?}", refused.len(), receipted.first().map_or("?", |(r, _)| r.as_str()), &refused[..refused.len().min(3)]);
        }
        expected.extend(receipted);
    }
    let tally = wait_delivered(consumers, &expected, DELIVERED).await;
    println!("{scenario}: {tally}");
    tally.ensure_pinned_and_complete()?;
    let moved: Vec<String> = consumers
        .iter()
        .flat_map(|c| c.seen().into_iter().map(move |s| (s.group, c.name)))
        .filter_map(|(group, c)| before.get(&group).filter(|b| **b != c).map(|b| format!("{group}: {b} → {c}")))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ensure!(moved.is_empty(), "message groups changed consumer across the failover: {moved:?}");

    // Message groups never seen before, through a REMOTE group: decided by the new live.
    let line = cli_send(2, services[2], LATE_BATCH, LATE_GROUPS, fault.late_prefix()).await?;
    let run = wait_for_run(consumers, fault.late_prefix()).await?;
    let late: BTreeSet<(String, u64)> = (0..LATE_BATCH as u64).map(|n| (run.clone(), n)).collect();
    let tally = wait_delivered(consumers, &late, DELIVERED).await;
    println!("{scenario}: {LATE_GROUPS} new message groups {line}: {tally}");
    tally.ensure_pinned_and_complete()?;

    let bg = wait_for_brokergroup(env, NAMESPACE, BROKER_GROUP, "the recreated member in sync and both REMOTE handlers linked", GROUP_AVAILABLE, |bg| {
        condition(bg, "Replicated").as_deref() == Some("True") && bg["status"]["grouping"]["remotesConnected"] == format!("{}/{}", GROUPS - 1, GROUPS - 1).as_str()
    })
    .await?;
    let grouping = &bg["status"]["grouping"];
    println!("{scenario}: afterwards status.grouping {grouping} (bindings before the fault: {bindings_before})");
    ensure!(grouping["live"] == backup.as_str(), "the handler stayed on {backup}: {grouping}");
    let wanted = bindings_before + LATE_GROUPS as i64;
    let bg = wait_for_brokergroup(env, NAMESPACE, BROKER_GROUP, &format!("{wanted} bindings in status.grouping"), STATUS_SEEN, |bg| bg["status"]["grouping"]["bindings"].as_i64().unwrap_or(0) >= wanted)
        .await
        .with_context(|| format!("the new live should hold the {bindings_before} bindings from before the fault and {LATE_GROUPS} new ones"))?;
    println!("{scenario}: status.grouping {}", bg["status"]["grouping"]);
    handler_moved_event(env, scenario, &handler, &backup)?;
    Ok(())
}

/// The operator's event when the handler moved from `from` to `to`.
fn handler_moved_event(env: &Env, scenario: &str, from: &str, to: &str) -> Result<()> {
    let events = env.json(&["-n", NAMESPACE, "get", "events"])?;
    let moved: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "GroupingHandlerMoved")
        .filter_map(|e| e["message"].as_str().or_else(|| e["note"].as_str()))
        .filter(|m| m.contains(&format!("from {from} to {to}")))
        .collect();
    match moved.as_slice() {
        [] => bail!("no GroupingHandlerMoved event from {from} to {to} in namespace {NAMESPACE}"),
        events => println!("{scenario}: event {events:?}"),
    }
    Ok(())
}
