//! Traffic that runs through a scenario, as clients of a real deployment would: a
//! [`Producer`] and a [`Consumer`] on a failover URL (through the client Service), and a
//! [`MemberProbe`] that keeps writing to every member of a group directly and records which
//! member receipted when, to time a failover and to show that two members never accepted
//! sends at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use duomq_broker::client::{AckMode, Client, ClientOptions, Heartbeat, SendOptions, DEFAULT_STOMP_PORT};
use duomq_broker::network::demand::PATH_HEADER;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Env;
use duomq_testkit::{eventually_ok_every, timeouts, Deadline};

/// Pause between two sends of the producer: a steady trickle, light on two cores.
const PRODUCER_PAUSE: Duration = Duration::from_millis(20);
/// Pause between two sends of a probe to the member it is connected to.
const PROBE_PAUSE: Duration = Duration::from_millis(50);
/// Pause before a probe tries a member again (refused: a backup, fenced, or down).
const PROBE_RETRY: Duration = Duration::from_millis(100);
/// A probe's limits: it must notice quickly that a member stopped accepting.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_RECEIPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a producer's send may wait for its receipt, failovers included.
const PRODUCER_RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A failover URL through one address (a client Service): reconnect fast, forever.
pub fn failover_url(address: SocketAddr) -> String {
    format!("failover:(stomp://{address})?initialReconnectDelay=20ms&maxReconnectDelay=500ms&maxReconnectAttempts=-1")
}

/// Connects a failover client, retrying while the Service has no live endpoint yet.
pub async fn connect_failover(url: &str, options: ClientOptions, timeout: Duration) -> Result<Client> {
    let client = eventually_ok_every(&format!("a connection to {url}"), timeout, Duration::from_millis(250), || {
        let options = options.clone();
        async move {
            let connected = Client::connect(url, options).await;
            if let Err(e) = &connected {
                eprintln!("connect {url}: {e:#} (retrying)");
            }
            connected
        }
    })
    .await?;
    Ok(client)
}

/// Sends persistent, receipted messages `{prefix}-{n}` one after the other until stopped.
pub struct Producer {
    receipted: Arc<Mutex<BTreeSet<String>>>,
    failed: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Producer {
    pub async fn start(url: &str, queue: &str, prefix: &str) -> Result<Producer> {
        let options = ClientOptions { receipt_timeout: PRODUCER_RECEIPT_TIMEOUT, ..ClientOptions::default() };
        let client = connect_failover(url, options, timeouts::CONNECT).await?;
        let receipted = Arc::new(Mutex::new(BTreeSet::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (receipted, failed, stop) = (receipted.clone(), failed.clone(), stop.clone());
            let (queue, prefix) = (queue.to_string(), prefix.to_string());
            async move {
                let durable = SendOptions { persistent: true, receipt: true, ..SendOptions::default() };
                for n in 0.. {
                    let body = format!("{prefix}-{n}");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        sent = client.send(&queue, body.clone(), durable.clone()) => match sent {
                            Ok(()) => {
                                receipted.lock().insert(body);
                            }
                            Err(e) => {
                                // Not receipted, so not promised: the checks ignore it.
                                eprintln!("producer: {body} not receipted: {e:#}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                    }
                    tokio::time::sleep(PRODUCER_PAUSE).await;
                }
                client.disconnect().await.ok();
            }
        });
        Ok(Producer { receipted, failed, stop, task })
    }

    pub fn receipted(&self) -> usize {
        self.receipted.lock().len()
    }

    /// Stops sending and returns the bodies the broker receipted, and how many sends failed.
    pub async fn stop(self) -> Result<(BTreeSet<String>, usize)> {
        self.stop.cancel();
        self.task.await.context("producer task failed")?;
        let receipted = std::mem::take(&mut *self.receipted.lock());
        Ok((receipted, self.failed.load(Ordering::Relaxed)))
    }
}

/// Receives from a queue with individual acknowledgements, each waiting for its receipt,
/// until stopped, recording every delivery of every body: the broker's message id, and
/// whether the ack was confirmed (see [`Seen`]).
pub struct Consumer {
    received: Arc<Mutex<Deliveries>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Consumer {
    pub async fn start(url: &str, queue: &str) -> Result<Consumer> {
        let client = connect_failover(url, ClientOptions::default(), timeouts::CONNECT).await?;
        let mut sub = client.subscribe(queue, AckMode::ClientIndividual, Some(100)).await?;
        let received = Arc::new(Mutex::new(Deliveries::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (received, stop) = (received.clone(), stop.clone());
            async move {
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => break,
                        m = sub.recv() => m,
                    };
                    let Some(message) = message else { break };
                    let body = String::from_utf8_lossy(&message.body).into_owned();
                    let mut seen = Seen {
                        message_id: message.message_id.clone(),
                        redelivered: message.redelivered,
                        via: message.headers.iter().find(|(k, _)| k == PATH_HEADER).map(|(_, v)| v.clone()),
                        acked: false,
                        ack_error: None,
                    };
                    // An ack lost in a failover is redelivered and counted again: fine.
                    match client.ack_with_receipt(&message).await {
                        Ok(()) => seen.acked = true,
                        Err(e) => seen.ack_error = Some(format!("{e:#}")),
                    }
                    received.lock().entry(body).or_default().push(seen);
                }
                client.disconnect().await.ok();
            }
        });
        Ok(Consumer { received, stop, task })
    }

    fn missing(&self, expected: &BTreeSet<String>) -> usize {
        let received = self.received.lock();
        expected.iter().filter(|b| !received.contains_key(*b)).count()
    }

    /// Waits until every body of `expected` has arrived, then stops; returns how many
    /// deliveries were redeliveries of a body already received.
    pub async fn finish(self, expected: &BTreeSet<String>, timeout: Duration) -> Result<usize> {
        let deadline = Deadline::after("every receipted message at the consumer", timeout);
        while self.missing(expected) > 0 && !deadline.passed() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop.cancel();
        let missing = self.missing(expected);
        let redelivered = self.received.lock().values().map(|seen| seen.len() - 1).sum();
        self.task.await.context("consumer task failed")?;
        ensure!(missing == 0, "{missing} of {} receipted messages never arrived", expected.len());
        Ok(redelivered)
    }

    /// Distinct bodies received so far.
    pub fn distinct(&self) -> usize {
        self.received.lock().len()
    }

    /// Whether `body` has arrived.
    pub fn has(&self, body: &str) -> bool {
        self.received.lock().contains_key(body)
    }

    /// Stops receiving and returns every delivery.
    pub async fn stop(self) -> Result<Deliveries> {
        self.stop.cancel();
        self.task.await.context("consumer task failed")?;
        Ok(std::mem::take(&mut *self.received.lock()))
    }
}

/// One delivery of a body.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The broker's id: a redelivery of the same stored copy has the same one; a copy
    /// forwarded over a bridge to another group gets that group's id.
    pub message_id: String,
    pub redelivered: bool,
    /// The groups a forwarded copy came through (`duomq-network-path`).
    pub via: Option<String>,
    /// The ack's RECEIPT came: the copy is consumed, durably.
    pub acked: bool,
    /// Why the ack was not confirmed.
    pub ack_error: Option<String>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "id {}", self.message_id)?;
        if self.redelivered {
            write!(f, " redelivered")?;
        }
        if let Some(via) = &self.via {
            write!(f, " via {via}")?;
        }
        match &self.ack_error {
            None if self.acked => write!(f, " acked"),
            None => write!(f, " not acked"),
            Some(e) => write!(f, " ack failed: {e}"),
        }
    }
}

/// Every delivery a consumer got: body → each delivery, in order.
pub type Deliveries = BTreeMap<String, Vec<Seen>>;

/// What consumers got of the bodies `expected`: how many never arrived (examples), how
/// many deliveries repeated a body whose ack was lost (at-least-once: a redelivery, from
/// the same stored copy or from that copy forwarded to another group meanwhile), and which
/// bodies were consumed twice: two copies (two message ids) each acknowledged with a
/// receipt, which is a message stored twice (a producer's resend stored by two groups, say),
/// or one copy delivered again after its ack was receipted. Never right.
#[derive(Debug, Default)]
pub struct Once {
    pub expected: usize,
    pub missing: Vec<String>,
    pub redelivered: usize,
    /// Of the redeliveries, the ones that came as another copy (forwarded after the lost ack).
    pub moved: usize,
    pub stored_twice: Vec<String>,
    /// How each body of `stored_twice` arrived.
    pub details: Vec<String>,
    /// How a few bodies of `moved` arrived.
    pub moved_examples: Vec<String>,
}

impl Once {
    /// Tallies the deliveries of several consumers together.
    pub fn of<'a>(all: impl IntoIterator<Item = &'a Deliveries>, expected: &BTreeSet<String>) -> Once {
        let mut merged: BTreeMap<&str, Vec<(usize, &Seen)>> = BTreeMap::new();
        for (consumer, deliveries) in all.into_iter().enumerate() {
            for (body, seen) in deliveries {
                merged.entry(body).or_default().extend(seen.iter().map(|s| (consumer, s)));
            }
        }
        let mut once = Once { expected: expected.len(), ..Once::default() };
        once.missing = expected.iter().filter(|b| !merged.contains_key(b.as_str())).cloned().collect();
        for (body, seen) in &merged {
            let copies: BTreeSet<(usize, &str)> = seen.iter().map(|(c, s)| (*c, s.message_id.as_str())).collect();
            let acked: BTreeSet<(usize, &str)> = seen.iter().filter(|(_, s)| s.acked).map(|(c, s)| (*c, s.message_id.as_str())).collect();
            once.redelivered += seen.len() - 1;
            once.moved += copies.len() - 1;
            if copies.len() > 1 && once.moved_examples.len() < 3 {
                let how: Vec<String> = seen.iter().map(|(c, s)| format!("consumer {c}: {s}")).collect();
                once.moved_examples.push(format!("{body}: {}", how.join("; ")));
            }
            // The same copy delivered again after its ack was confirmed: the ack was lost
            // after all, which is as wrong as a second copy.
            let back_after_ack = seen.iter().enumerate().any(|(i, (c, s))| seen[..i].iter().any(|(c0, s0)| c0 == c && s0.message_id == s.message_id && s0.acked));
            if acked.len() > 1 || back_after_ack {
                once.stored_twice.push(body.to_string());
                let how: Vec<String> = seen.iter().map(|(c, s)| format!("consumer {c}: {s}")).collect();
                once.details.push(format!("{body}: {}", how.join("; ")));
            }
        }
        once
    }

    /// Every expected body arrived, and none was consumed from two stored copies.
    pub fn ensure(&self) -> Result<()> {
        ensure!(self.missing.is_empty(), "receipted messages never arrived, e.g. {:?}: {self}", &self.missing[..self.missing.len().min(5)]);
        ensure!(self.stored_twice.is_empty(), "messages consumed from two stored copies: {}: {self}", self.details[..self.details.len().min(5)].join(" | "));
        Ok(())
    }
}

impl std::fmt::Display for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} expected, {} missing, {} redelivered after a lost ack ({} of them another copy, forwarded meanwhile), {} stored twice",
            self.expected,
            self.missing.len(),
            self.redelivered,
            self.moved,
            self.stored_twice.len()
        )?;
        if !self.moved_examples.is_empty() {
            write!(f, "; e.g. {}", self.moved_examples.join(" | "))?;
        }
        Ok(())
    }
}

/// One send a member receipted: sent at `sent`, receipted at `receipted`.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub member: String,
    pub sent: Instant,
    pub receipted: Instant,
}

/// How a probe reaches each member's STOMP port.
#[derive(Clone)]
pub enum MemberAddresses {
    /// The pod IP, looked up again on each connection, so a recreated pod is followed (the
    /// local control plane: pod IPs are reachable from this machine).
    PodIps(Box<Api<Pod>>),
    /// A loopback port forwarded by kubectl to each member, following a recreated pod.
    Forwarded(Arc<BTreeMap<String, SocketAddr>>),
}

impl MemberAddresses {
    async fn stomp(&self, member: &str) -> Option<SocketAddr> {
        match self {
            MemberAddresses::PodIps(pods) => {
                let ip: IpAddr = pods.get_opt(member).await.ok()??.status?.pod_ip?.parse().ok()?;
                Some(SocketAddr::new(ip, DEFAULT_STOMP_PORT))
            }
            MemberAddresses::Forwarded(addresses) => addresses.get(member).copied(),
        }
    }
}

/// Writes persistent, receipted messages to every member of a group directly (see
/// [`MemberAddresses`]), and records every receipt. A backup or fenced member refuses CONNECT, so only a member that accepts sends
/// shows up.
pub struct MemberProbe {
    accepted: Arc<Mutex<Vec<Accepted>>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl MemberProbe {
    pub fn start(addresses: MemberAddresses, members: &[String], queue: &str) -> MemberProbe {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let tasks = members
            .iter()
            .map(|member| {
                tokio::spawn(probe_member(addresses.clone(), member.clone(), queue.to_string(), accepted.clone(), stop.clone()))
            })
            .collect();
        MemberProbe { accepted, stop, tasks }
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().clone()
    }

    /// Waits until `member` has receipted a send made after `since`.
    pub async fn wait_accepting(&self, member: &str, since: Instant, timeout: Duration) -> Result<Instant> {
        let at = eventually_ok_every(&format!("{member} receipting a send"), timeout, Duration::from_millis(50), || async move {
            self.accepted.lock().iter().filter(|a| a.member == member && a.sent >= since).map(|a| a.receipted).min().ok_or("none yet")
        })
        .await?;
        Ok(at)
    }

    pub async fn stop(self) -> Vec<Accepted> {
        self.stop.cancel();
        for task in self.tasks {
            task.await.ok();
        }
        std::mem::take(&mut *self.accepted.lock())
    }
}

async fn probe_member(addresses: MemberAddresses, member: String, queue: String, accepted: Arc<Mutex<Vec<Accepted>>>, stop: CancellationToken) {
    let options = ClientOptions {
        connect_timeout: PROBE_CONNECT_TIMEOUT,
        receipt_timeout: PROBE_RECEIPT_TIMEOUT,
        heartbeat: Heartbeat::OFF,
        ..ClientOptions::default()
    };
    let durable = SendOptions { persistent: true, receipt: true, ..SendOptions::default() };
    while !stop.is_cancelled() {
        if let Some(address) = addresses.stomp(&member).await {
            let url = format!("stomp://{address}");
            if let Ok(client) = Client::connect(&url, options.clone()).await {
                while !stop.is_cancelled() {
                    let sent = Instant::now();
                    if client.send(&queue, "probe", durable.clone()).await.is_err() {
                        break;
                    }
                    accepted.lock().push(Accepted { member: member.clone(), sent, receipted: Instant::now() });
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(PROBE_PAUSE) => {}
                    }
                }
                client.disconnect().await.ok();
                continue;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(PROBE_RETRY) => {}
        }
    }
}

/// The receipts in runs of one member each, in the order sent: `(member, first sent, last
/// receipted)`. Two members were never accepting at once when each run ends before the
/// next begins.
pub fn runs(accepted: &[Accepted]) -> Vec<(String, Instant, Instant)> {
    let mut sorted: Vec<&Accepted> = accepted.iter().collect();
    sorted.sort_by_key(|a| a.sent);
    let mut out: Vec<(String, Instant, Instant)> = Vec::new();
    for a in sorted {
        match out.last_mut() {
            Some((member, _, end)) if *member == a.member => *end = (*end).max(a.receipted),
            _ => out.push((a.member.clone(), a.sent, a.receipted)),
        }
    }
    out
}

/// Fails when two members receipted sends at overlapping times: a run of one member
/// must have ended (last receipt) before the next member's run began (first send).
pub fn ensure_one_accepting_at_a_time(accepted: &[Accepted]) -> Result<()> {
    let runs = runs(accepted);
    for pair in runs.windows(2) {
        let ((a, _, a_end), (b, b_start, _)) = (&pair[0], &pair[1]);
        ensure!(a_end < b_start, "{a} and {b} both accepted sends around the same time (split brain): {a} last receipted {:?} after {b} first sent", a_end.duration_since(*b_start));
    }
    Ok(())
}

/// Which members receipted, per `slot` after `origin`.
fn slots(accepted: &[Accepted], origin: Instant, slot: Duration) -> BTreeMap<u64, BTreeSet<&str>> {
    let mut slots: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for a in accepted.iter().filter(|a| a.receipted >= origin) {
        let n = (a.receipted.duration_since(origin).as_nanos() / slot.as_nanos()) as u64;
        slots.entry(n).or_default().insert(&a.member);
    }
    slots
}

/// Which members receipted in each `slot` after `origin` (only slots where that changes),
/// e.g. `+0.0s pair-g0-0 | +9.8s - | +14.9s pair-g0-1`.
pub fn slot_timeline(accepted: &[Accepted], origin: Instant, slot: Duration) -> String {
    let slots = slots(accepted, origin, slot);
    let last = slots.keys().last().copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut previous: Option<String> = None;
    for n in 0..=last {
        let who = slots.get(&n).map(|s| s.iter().copied().collect::<Vec<_>>().join("+")).unwrap_or_else(|| "-".into());
        if previous.as_ref() != Some(&who) {
            out.push(format!("+{:.1}s {who}", (slot * n as u32).as_secs_f64()));
            previous = Some(who);
        }
    }
    out.join(" | ")
}

/// How many slots after `origin` had more than one member receipting.
pub fn shared_slots(accepted: &[Accepted], origin: Instant, slot: Duration) -> usize {
    slots(accepted, origin, slot).values().filter(|s| s.len() > 1).count()
}

/// From `fault` to the first receipt of a member other than `old_live` for a send made
/// after the fault: how long clients could not write.
pub fn failover_time(accepted: &[Accepted], old_live: &str, fault: Instant) -> Option<Duration> {
    accepted.iter().filter(|a| a.member != old_live && a.sent >= fault).map(|a| a.receipted.duration_since(fault)).min()
}

/// A handover from `from` to `to` as clients saw it: the first receipt of `to` for a send
/// made after `since`, and the last receipt of `from` before it. Between the two, neither
/// accepted sends.
pub fn handover(accepted: &[Accepted], from: &str, to: &str, since: Instant) -> Option<(Instant, Instant)> {
    let first_new = accepted.iter().filter(|a| a.member == to && a.sent >= since).map(|a| a.receipted).min()?;
    let last_old = accepted.iter().filter(|a| a.member == from && a.receipted <= first_new).map(|a| a.receipted).max()?;
    Some((last_old, first_new))
}

/// The longest time within `from..to` in which `member` receipted nothing: how long a live
/// that stayed live kept its clients waiting.
pub fn longest_pause(accepted: &[Accepted], member: &str, from: Instant, to: Instant) -> Duration {
    let mut at: Vec<Instant> = accepted.iter().filter(|a| a.member == member && (from..to).contains(&a.receipted)).map(|a| a.receipted).collect();
    at.sort();
    let edges = std::iter::once(from).chain(at).chain(std::iter::once(to)).collect::<Vec<_>>();
    edges.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default()
}

/// All the traffic of one group through a scenario: a producer and a consumer on a
/// failover URL through the group's client Service, and a probe of every member.
pub struct GroupTraffic {
    group: String,
    queue: String,
    producer: Producer,
    consumer: Consumer,
    probe: MemberProbe,
}

/// What the traffic of one group saw.
#[derive(Debug)]
pub struct TrafficReport {
    pub group: String,
    pub receipted: usize,
    pub not_receipted: usize,
    pub redelivered: usize,
    /// From the fault to the first receipt of another member; none when only the old live
    /// accepted sends.
    pub failover: Option<Duration>,
    /// Which members receipted, per 100 ms after the fault.
    pub timeline: String,
    /// 100 ms slots after the fault in which more than one member receipted.
    pub shared_slots: usize,
}

/// Slots of the timeline a report prints.
const TIMELINE_SLOT: Duration = Duration::from_millis(100);

impl GroupTraffic {
    /// Starts the traffic of group `group` (its client Service) of a BrokerGroup whose
    /// members are `members`, and waits until it flows: the producer has receipts and `live`
    /// accepts the probe's sends.
    pub async fn start(env: &Env, namespace: &str, group: &str, members: &[String], live: &str) -> Result<GroupTraffic> {
        let url = failover_url(env.stomp_address(namespace, group).await?);
        let queue = format!("/queue/{group}");
        let consumer = Consumer::start(&url, &queue).await?;
        let producer = Producer::start(&url, &queue, group).await?;
        let probe = MemberProbe::start(env.member_addresses(namespace, members).await?, members, &format!("/queue/{group}-probe"));
        probe.wait_accepting(live, Instant::now(), timeouts::RECEIPTS).await?;
        let receipts = &producer;
        eventually_ok_every(&format!("{group}: the producer's first receipts"), timeouts::RECEIPTS, Duration::from_millis(100), || async move {
            ensure!(receipts.receipted() >= 10, "{} so far", receipts.receipted());
            Ok(())
        })
        .await?;
        Ok(GroupTraffic { group: group.to_string(), queue, producer, consumer, probe })
    }

    /// Waits until `member` accepts the probe's sends made after `since`.
    pub async fn wait_accepting(&self, member: &str, since: Instant, timeout: Duration) -> Result<Instant> {
        self.probe.wait_accepting(member, since, timeout).await
    }

    /// Every send the probe saw receipted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.probe.accepted()
    }

    /// Lets the producer get `more` receipts, stops it, waits for the consumer to receive
    /// every receipted message, and checks that members never accepted sends at once.
    pub async fn finish(self, old_live: &str, fault: Instant, more: usize) -> Result<TrafficReport> {
        let group = self.group;
        let before = self.producer.receipted();
        let producer = &self.producer;
        eventually_ok_every(&format!("{group}: the producer's receipts after the failover"), timeouts::RESUME, Duration::from_millis(100), || async move {
            ensure!(producer.receipted() >= before + more, "{} of {} so far", producer.receipted(), before + more);
            Ok(())
        })
        .await?;
        let accepted = self.probe.stop().await;
        let (receipted, not_receipted) = self.producer.stop().await?;
        let redelivered = self.consumer.finish(&receipted, timeouts::RESUME).await.with_context(|| format!("{group} on {}", self.queue))?;
        let timeline = slot_timeline(&accepted, fault, TIMELINE_SLOT);
        ensure_one_accepting_at_a_time(&accepted).with_context(|| format!("{group}: {timeline}"))?;
        let failover = failover_time(&accepted, old_live, fault);
        let shared_slots = shared_slots(&accepted, fault, TIMELINE_SLOT);
        Ok(TrafficReport { group, receipted: receipted.len(), not_receipted, redelivered, failover, timeline, shared_slots })
    }
}

impl std::fmt::Display for TrafficReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}; {} receipted, all received ({} redelivered), {} not receipted; accepting per 100ms after the fault: {}",
            self.group,
            self.failover.map_or("no failover".into(), |d| format!("failover {:.2}s", d.as_secs_f64())),
            self.receipted,
            self.redelivered,
            self.not_receipted,
            self.timeline
        )
    }
}
