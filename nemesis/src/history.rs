//! The history of a run: what the clients saw, what the members said about themselves and
//! what the nemesis did, one JSON object per line (`history.jsonl`). Every record carries
//! `t`, seconds since the run started on one monotonic clock, so records written by
//! different tasks compare. A send is written once its outcome is known and a delivery
//! once its ack's outcome is, so each is one line.
//!
//! This module defines the records, writes them (a [`Recorder`] hands them to one writer
//! task) and reads them back; it judges nothing (that is the checker's job).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;
use tokio::sync::mpsc;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("failed to create {path}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line} is not a history record")]
    Parse { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("the history writer task failed")]
    Writer(#[source] tokio::task::JoinError),
}

/// Seconds since the run started, on the run's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { origin: Instant::now() }
    }

    pub fn now(&self) -> f64 {
        self.at(Instant::now())
    }

    /// `instant` on this clock (0 for an instant before the run).
    pub fn at(&self, instant: Instant) -> f64 {
        instant.saturating_duration_since(self.origin).as_secs_f64()
    }
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    Run(RunInfo),
    Send(SendRecord),
    Delivery(DeliveryRecord),
    Status(StatusRecord),
    Fault(FaultRecord),
    Process(ProcessRecord),
    Client(ClientRecord),
    Phase(PhaseRecord),
}

/// The first line: how the run was set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub t: f64,
    pub seed: u64,
    pub groups: usize,
    pub duration_seconds: f64,
    /// The fault kinds the run could apply.
    pub faults: Vec<String>,
    pub arbiter: String,
    pub members: Vec<MemberInfo>,
    pub broker_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub name: String,
    /// The live/backup group it belongs to (`g0`, `g1`, ...).
    pub group: String,
    /// Its STOMP address, as clients' failover URLs name it.
    pub stomp: String,
    pub primary: bool,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SendOutcome {
    /// The broker's RECEIPT came: the message is durable.
    Receipted,
    /// An error, a timeout or a lost session: the message may or may not be stored.
    Failed,
}

/// A persistent SEND with a receipt, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendRecord {
    /// When the producer handed it to its client.
    pub t: f64,
    pub producer: String,
    pub queue: String,
    /// Its `JMSXGroupID`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The producer's number for it, from 0 up, never reused.
    pub seq: u64,
    pub outcome: SendOutcome,
    /// When the outcome was known.
    pub done_t: f64,
    /// The member whose connection carried both the SEND and its RECEIPT; `None` when the
    /// client failed over in between (a resend) or the send failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an ACK (always asked with a receipt) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AckOutcome {
    /// The broker's RECEIPT came: the ack is durable, the message must never come back.
    Receipted,
    /// The connection the message came on was lost first: it will be redelivered.
    Lost,
    /// Another error (a timeout, a refusal): the ack may or may not have counted.
    Failed,
}

/// A MESSAGE a consumer took, and how its ack ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// When the consumer took it from its subscription.
    pub t: f64,
    pub consumer: String,
    /// The live/backup group the consumer's failover URL lists.
    pub home: String,
    /// Which broker-side consumer of this client delivered it: a new one for each
    /// connection (the ack token's consumer changes, or its delivery tags start again).
    pub session: u64,
    pub queue: String,
    /// The producer and number from the message's headers; `None` when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The broker's `message-id`.
    pub message_id: String,
    pub redelivered: bool,
    /// `JMSXGroupFirstForConsumer: true`: the first message of a group this consumer
    /// newly owns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_for_consumer: bool,
    /// The body is the one its producer sent for that number.
    pub intact: bool,
    pub ack: AckOutcome,
    pub ack_t: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_error: Option<String>,
}

/// A member's role as its `/status` said (or that it did not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MemberRole {
    Live,
    /// A backup in sync with its live: it could take over at once.
    SyncedBackup,
    /// A backup connecting or catching up.
    Backup,
    Starting,
    Stopping,
    Fenced,
    /// No answer within the poll's timeout: down, stopped, or too busy.
    Unreachable,
}

/// One poll of one member's `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    /// When the request was sent.
    pub t: f64,
    /// When the answer came (or the poll gave up).
    pub done_t: f64,
    pub member: String,
    pub group: String,
    pub role: MemberRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Messages of the run's queues waiting or in flight on this member (a live).
    #[serde(default)]
    pub messages: u64,
}

/// A fault applied or healed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRecord {
    pub t: f64,
    /// Pairs an `applied` record with its `healed` one.
    pub id: u64,
    pub fault: String,
    pub phase: FaultPhase,
    /// The member (or `a/b` for a cut between two) it hit.
    pub target: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultPhase {
    Applied,
    Healed,
    /// Applying or healing it failed; `detail` says why.
    Failed,
}

/// A broker process started, signalled or seen to exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    pub t: f64,
    pub member: String,
    /// `start`, `kill`, `term`, `stop`, `cont` or `exit`.
    pub action: String,
    pub pid: u32,
    /// The how-manyth process of this member (1 for the first).
    pub incarnation: u32,
}

/// A client's connection was lost or came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientRecord {
    pub t: f64,
    pub client: String,
    /// `lost`, `reconnected`, `gaveUp` or `newSession` (a fresh client after the broker
    /// ended the session with an error).
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A step of the run: `workload` (clients running), `faultsEnded`, `healed`,
/// `producersStopped`, `drained` or `end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseRecord {
    pub t: f64,
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What the writer task is handed.
#[derive(Debug)]
enum Entry {
    Event(Box<Event>),
    /// Everything recorded before is written; the file is complete.
    Close,
}

/// Hands records to the writer task; clones share it. Recording never blocks.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Entry>,
    clock: Clock,
}

/// The task writing the history; [`HistoryWriter::finish`] completes the file.
#[derive(Debug)]
pub struct HistoryWriter {
    tx: mpsc::UnboundedSender<Entry>,
    task: tokio::task::JoinHandle<Result<(), HistoryError>>,
}

impl HistoryWriter {
    /// Writes what was recorded so far and closes the file; later records are dropped
    /// (a task still winding down cannot hold the file open).
    pub async fn finish(self) -> Result<(), HistoryError> {
        let _ = self.tx.send(Entry::Close);
        self.task.await.map_err(HistoryError::Writer)?
    }
}

impl Recorder {
    /// A recorder and the task writing `path`.
    pub fn create(path: &Path, clock: Clock) -> Result<(Recorder, HistoryWriter), HistoryError> {
        let file = std::fs::File::create(path).map_err(|source| HistoryError::Create { path: path.to_path_buf(), source })?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Entry>();
        let path = path.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            let fail = |source| HistoryError::Write { path: path.clone(), source };
            while let Some(Entry::Event(event)) = rx.blocking_recv() {
                serde_json::to_writer(&mut out, &event).map_err(|e| fail(e.into()))?;
                out.write_all(b"\n").map_err(fail)?;
            }
            out.flush().map_err(fail)
        });
        Ok((Recorder { tx: tx.clone(), clock }, HistoryWriter { tx, task }))
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn now(&self) -> f64 {
        self.clock.now()
    }

    pub fn record(&self, event: Event) {
        // Only fails once the writer is gone, at the very end of a run.
        let _ = self.tx.send(Entry::Event(Box::new(event)));
    }
}

/// A history read back, split by kind, each list in file order.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub run: Option<RunInfo>,
    pub sends: Vec<SendRecord>,
    pub deliveries: Vec<DeliveryRecord>,
    pub statuses: Vec<StatusRecord>,
    pub faults: Vec<FaultRecord>,
    pub processes: Vec<ProcessRecord>,
    pub clients: Vec<ClientRecord>,
    pub phases: Vec<PhaseRecord>,
}

impl History {
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> History {
        let mut h = History::default();
        for event in events {
            match event {
                Event::Run(r) => h.run = Some(r),
                Event::Send(s) => h.sends.push(s),
                Event::Delivery(d) => h.deliveries.push(d),
                Event::Status(s) => h.statuses.push(s),
                Event::Fault(f) => h.faults.push(f),
                Event::Process(p) => h.processes.push(p),
                Event::Client(c) => h.clients.push(c),
                Event::Phase(p) => h.phases.push(p),
            }
        }
        h
    }

    /// Reads a `history.jsonl`; blank lines are skipped, anything else must be a record.
    pub fn read(path: &Path) -> Result<History, HistoryError> {
        let file = std::fs::File::open(path).map_err(|source| HistoryError::Read { path: path.to_path_buf(), source })?;
        let mut events = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| HistoryError::Read { path: path.to_path_buf(), source })?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|source| HistoryError::Parse { path: path.to_path_buf(), line: n + 1, source })?;
            events.push(event);
        }
        Ok(History::from_events(events))
    }

    /// When the last record happened.
    pub fn end(&self) -> f64 {
        let last = |ts: &mut dyn Iterator<Item = f64>| ts.fold(0.0f64, f64::max);
        [
            last(&mut self.sends.iter().map(|s| s.done_t)),
            last(&mut self.deliveries.iter().map(|d| d.ack_t)),
            last(&mut self.statuses.iter().map(|s| s.done_t)),
            last(&mut self.faults.iter().map(|f| f.t)),
            last(&mut self.phases.iter().map(|p| p.t)),
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_records_when_written_and_read_back_should_come_back_the_same_split_by_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let send = SendRecord {
            t: 1.5,
            producer: "p0".into(),
            queue: "/queue/q".into(),
            group: Some("G1".into()),
            seq: 7,
            outcome: SendOutcome::Receipted,
            done_t: 1.6,
            member: Some("g0-a".into()),
            error: None,
        };
        let phase = PhaseRecord { t: 2.0, phase: "end".into(), detail: String::new() };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let (recorder, writer) = Recorder::create(&path, Clock::start()).expect("create");
            recorder.record(Event::Send(send.clone()));
            recorder.record(Event::Phase(phase.clone()));
            writer.finish().await.expect("write");
            recorder.record(Event::Phase(phase.clone()));
        });
        let history = History::read(&path).expect("read");
        assert_eq!(history.sends, vec![send]);
        assert_eq!(history.phases, vec![phase]);
        assert_eq!(history.end(), 2.0);
    }

    #[test]
    fn given_a_line_that_is_no_record_when_read_should_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        std::fs::write(&path, "{\"kind\":\"phase\",\"t\":0,\"phase\":\"end\"}\n\n{\"kind\":\"nope\"}\n").expect("write");
        let error = History::read(&path).expect_err("a bad line");
        assert!(matches!(error, HistoryError::Parse { line: 3, .. }), "{error}");
    }
}
