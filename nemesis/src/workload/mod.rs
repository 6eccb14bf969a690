//! The clients of a run: producers sending persistent messages with receipts, some with a
//! `JMSXGroupID`, and consumers acknowledging each message with a receipt, each on its
//! group's failover URL. They record everything they see in the history and count it in
//! a [`Tracker`], which tells the drain when every receipted message has arrived.
//!
//! Which clients exist is [`plan`]; a producer's life is [`producer`], a consumer's
//! [`consumer`].

pub mod consumer;
pub mod producer;

use crate::cluster::config::Layout;
use crate::history::{ClientRecord, Event, Recorder};
use bytes::Bytes;
use duomq_broker::client::{Client, ClientOptions, ConnectionEvent, Heartbeat};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Ungrouped messages; no consumer in `g0`, so `g0`'s producer's messages cross bridges.
pub const PLAIN_QUEUE: &str = "/queue/nemesis.plain";
/// Messages with a `JMSXGroupID`; consumers in every group, the handler in `g0` decides
/// which group takes each message group.
pub const GROUPED_QUEUE: &str = "/queue/nemesis.grouped";
/// What the run's queues start with (for counting their messages in `/status`).
pub const QUEUE_PREFIX: &str = "/queue/nemesis.";
pub const PRODUCER_HEADER: &str = "nemesis-producer";
pub const SEQ_HEADER: &str = "nemesis-seq";
pub const GROUP_HEADER: &str = "JMSXGroupID";
pub const FIRST_FOR_CONSUMER_HEADER: &str = "JMSXGroupFirstForConsumer";
/// Message groups every grouped producer cycles through, so each group gets messages from
/// producers in every live/backup group.
pub const MESSAGE_GROUPS: usize = 16;
/// Unacknowledged messages a consumer may hold.
const PREFETCH: u32 = 8;
/// Between attempts to open a fresh client while no member accepts, and after the broker
/// ended a session.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Client settings for every client of the run: heart-beats that notice a frozen member
/// within seconds, and receipts that may wait out a long failover.
pub fn client_options() -> ClientOptions {
    ClientOptions {
        heartbeat: Heartbeat { send: Duration::from_secs(1), receive: Duration::from_secs(1) },
        connect_timeout: Duration::from_secs(2),
        receipt_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    }
}

/// One producer.
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    pub name: String,
    /// The failover URL of the live/backup group it sends to.
    pub url: String,
    pub queue: &'static str,
    /// Sends carry `JMSXGroupID` `G00`..: the group of message `seq` is `(seq + offset) % MESSAGE_GROUPS`.
    pub grouped: bool,
    /// Messages a second.
    pub rate: f64,
    /// Sends waiting for their receipt at most.
    pub window: usize,
}

/// One consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub name: String,
    pub home: String,
    pub url: String,
    pub queue: &'static str,
}

/// Which clients a run has: in every group a plain and a grouped producer at `rate` each,
/// two grouped consumers, and a plain consumer (except in `g0` when there are others).
pub fn plan(layout: &Layout, rate: f64, window: usize) -> (Vec<ProducerSpec>, Vec<ConsumerSpec>) {
    let (mut producers, mut consumers) = (Vec::new(), Vec::new());
    let groups = layout.groups.len();
    for g in 0..groups {
        let (home, url) = (format!("g{g}"), layout.failover_url(g));
        for (queue, grouped, kind) in [(PLAIN_QUEUE, false, "plain"), (GROUPED_QUEUE, true, "grouped")] {
            producers.push(ProducerSpec { name: format!("p-{home}-{kind}"), url: url.clone(), queue, grouped, rate, window });
        }
        for i in 0..2 {
            consumers.push(ConsumerSpec { name: format!("c-{home}-grouped-{i}"), home: home.clone(), url: url.clone(), queue: GROUPED_QUEUE });
        }
        if g > 0 || groups == 1 {
            consumers.push(ConsumerSpec { name: format!("c-{home}-plain"), home: home.clone(), url: url.clone(), queue: PLAIN_QUEUE });
        }
    }
    (producers, consumers)
}

/// The body of message `seq` of `producer`: names both, padded to 128 bytes, so a
/// consumer can tell it arrived unchanged.
pub fn body(producer: &str, seq: u64) -> Bytes {
    let mut text = format!("{producer}:{seq}:");
    let fill = (b'a' + (seq % 26) as u8) as char;
    while text.len() < 128 {
        text.push(fill);
    }
    Bytes::from(text)
}

/// The message group of message `seq` of a grouped producer whose name hashes to `offset`.
pub fn message_group(seq: u64, offset: u64) -> String {
    format!("G{:02}", (seq + offset) % MESSAGE_GROUPS as u64)
}

/// A message: its producer's index (in [`Tracker::new`]'s list) and number.
type Key = (u32, u64);

/// Counts for progress lines, and which receipted messages have not been delivered yet.
#[derive(Debug)]
pub struct Tracker {
    producers: HashMap<String, u32>,
    state: Mutex<TrackerState>,
    pub sent: AtomicU64,
    pub receipted: AtomicU64,
    pub failed: AtomicU64,
    pub deliveries: AtomicU64,
}

#[derive(Debug, Default)]
struct TrackerState {
    delivered: HashSet<Key>,
    outstanding: HashSet<Key>,
}

impl Tracker {
    pub fn new(producers: &[ProducerSpec]) -> Tracker {
        Tracker {
            producers: producers.iter().zip(0u32..).map(|(p, i)| (p.name.clone(), i)).collect(),
            state: Mutex::default(),
            sent: AtomicU64::new(0),
            receipted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
        }
    }

    fn key(&self, producer: &str, seq: u64) -> Option<Key> {
        Some((*self.producers.get(producer)?, seq))
    }

    pub fn receipted(&self, producer: &str, seq: u64) {
        self.receipted.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = self.key(producer, seq) {
            let mut s = self.state.lock();
            if !s.delivered.contains(&key) {
                s.outstanding.insert(key);
            }
        }
    }

    pub fn delivered(&self, producer: &str, seq: u64) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = self.key(producer, seq) {
            let mut s = self.state.lock();
            s.outstanding.remove(&key);
            s.delivered.insert(key);
        }
    }

    /// Receipted messages not delivered yet.
    pub fn outstanding(&self) -> usize {
        self.state.lock().outstanding.len()
    }
}

/// Logs why the broker ended a client's session: at info the first time a reason comes up,
/// at debug while it repeats (a full disk ends a session a few times a second).
#[derive(Debug, Default)]
pub struct SessionEnds {
    last: Option<String>,
    repeats: u64,
}

impl SessionEnds {
    pub fn log(&mut self, client: &str, reason: Option<String>) {
        let reason = reason.unwrap_or_else(|| "the connection closed".into());
        if self.last.as_ref() == Some(&reason) {
            self.repeats += 1;
            tracing::debug!(client, reason, repeats = self.repeats, "the broker ended the session again; opening a new one");
            return;
        }
        tracing::info!(client, reason, "the broker ended the session; opening a new one");
        self.last = Some(reason);
        self.repeats = 0;
    }
}

/// A fresh client on `url`, retrying while no member accepts; `None` once `stop` fires.
/// Its connection events go to the history under `name`.
pub async fn connect(name: &str, url: &str, layout: &Layout, recorder: &Recorder, stop: &CancellationToken) -> Option<Client> {
    loop {
        match Client::connect(url, client_options()).await {
            Ok(client) => {
                let member = member_at(layout, &client.connected_to().address());
                recorder.record(Event::Client(ClientRecord { t: recorder.now(), client: name.into(), event: "newSession".into(), member, detail: String::new() }));
                tokio::spawn(forward_events(name.to_string(), client.events(), layout.clone(), recorder.clone()));
                return Some(client);
            }
            Err(e) => tracing::debug!(client = name, error = %duomq_broker::report::error_chain(&e), "no member accepted; trying again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// The member whose STOMP address is `address`.
pub fn member_at(layout: &Layout, address: &str) -> Option<String> {
    layout.members().find(|m| m.stomp_addr() == address).map(|m| m.name.clone())
}

/// Records a client's connection losses and reconnects until the client is gone.
async fn forward_events(name: String, mut events: tokio::sync::broadcast::Receiver<ConnectionEvent>, layout: Layout, recorder: Recorder) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(client = name, missed = n, "missed connection events");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let clock = recorder.clock();
        let (t, kind, member, detail) = match event {
            ConnectionEvent::Lost { at, member, reason } => (clock.at(at), "lost", member_at(&layout, &member.address()), reason),
            ConnectionEvent::Reconnected { at, member, gap } => {
                (clock.at(at), "reconnected", member_at(&layout, &member.address()), format!("after {} ms", gap.as_millis()))
            }
            ConnectionEvent::GaveUp { at, reason, .. } => (clock.at(at), "gaveUp", None, reason),
            _ => continue,
        };
        recorder.record(Event::Client(ClientRecord { t, client: name.clone(), event: kind.into(), member, detail }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::Arbiter;
    use std::path::Path;

    #[test]
    fn given_three_groups_should_plan_producers_everywhere_and_no_plain_consumer_in_g0() {
        let mut port = 30_000;
        let layout = Layout::new(Path::new("run"), 3, Arbiter::FileLock, || {
            port += 1;
            port
        });
        let (producers, consumers) = plan(&layout, 5.0, 4);
        assert_eq!(producers.len(), 6);
        assert!(producers.iter().filter(|p| p.grouped).count() == 3);
        let plain: Vec<&str> = consumers.iter().filter(|c| c.queue == PLAIN_QUEUE).map(|c| c.home.as_str()).collect();
        assert_eq!(plain, ["g1", "g2"]);
        assert_eq!(consumers.iter().filter(|c| c.queue == GROUPED_QUEUE).count(), 6);
    }

    #[test]
    fn given_a_message_should_make_a_body_that_names_it_and_a_group_that_cycles() {
        let b = body("p-g0-plain", 42);
        assert_eq!(b.len(), 128);
        assert!(b.starts_with(b"p-g0-plain:42:"));
        assert_ne!(body("p-g0-plain", 42), body("p-g0-plain", 43));
        assert_eq!(message_group(0, 3), "G03");
        assert_eq!(message_group(15, 3), "G02");
    }

    #[test]
    fn given_a_delivery_before_its_receipt_should_not_count_it_outstanding() {
        let (producers, _) = plan(&Layout::new(Path::new("run"), 1, Arbiter::FileLock, || 1), 1.0, 1);
        let tracker = Tracker::new(&producers);
        tracker.receipted("p-g0-plain", 0);
        tracker.delivered("p-g0-plain", 1);
        tracker.receipted("p-g0-plain", 1);
        assert_eq!(tracker.outstanding(), 1);
        tracker.delivered("p-g0-plain", 0);
        assert_eq!(tracker.outstanding(), 0);
    }
}
