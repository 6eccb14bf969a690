//! One producer: sends stamped messages on its own connection until the measured interval
//! ends, keeping up to `window` receipts outstanding, and remembers which sequence
//! numbers the broker confirmed. It never decides what counts as lost; it only reports
//! what it was promised. In a grouped run it tags each message with its group and times
//! each receipt, first messages of a group apart from the rest.

use super::shared::Shared;
use crate::body::{wall_clock_ns, BodyWriter, Stamp};
use crate::groups::{GroupPlan, ReceiptLatencies};
use crate::selectors::HeaderCycle;
use crate::tally::SeqSet;
use anyhow::Context;
use duomq_broker::client::{Client, ClientError, ReceiptFuture, SendOptions};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What one producer sends.
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    pub id: u32,
    pub destination: String,
    pub size: usize,
    pub persistent: bool,
    /// Outstanding receipts allowed; 0 sends without receipts.
    pub window: u32,
    pub headers: Vec<(String, String)>,
    /// Message groups: the header and how messages spread over groups.
    pub groups: Option<(String, GroupPlan)>,
    /// A header whose value cycles over the messages (selector loads).
    pub cycle: Option<HeaderCycle>,
    /// Messages to send at most (a backlog fill); `None`: until the measured interval ends.
    pub limit: Option<u64>,
}

/// What a producer did, including after a failure.
#[derive(Debug, Default)]
pub struct ProducerOutcome {
    /// Receipted sequence numbers (every sent one with a window of 0).
    pub confirmed: SeqSet,
    /// Messages sent during the measured interval.
    pub measured_sent: u64,
    /// In a grouped run, the receipt latency of the measured sends.
    pub receipt_latencies: Option<ReceiptLatencies>,
    pub error: Option<String>,
}

/// Runs the producer to the end of the measured interval (or until `stop`), then waits
/// for its outstanding receipts and disconnects.
pub async fn produce(
    client: Client,
    spec: ProducerSpec,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> ProducerOutcome {
    let mut outcome = ProducerOutcome::default();
    let mut pending = VecDeque::with_capacity(spec.window as usize);
    let result = match spec.groups.is_some() {
        true => ReceiptLatencies::new().map(|l| outcome.receipt_latencies = Some(l)),
        false => Ok(()),
    };
    let result = result.and(send_loop(&client, &spec, &shared, &stop, &mut outcome, &mut pending).await);
    // Receipts abandoned by a failure no longer count as outstanding.
    shared.counters.outstanding.fetch_sub(pending.len() as i64, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::error!(producer = spec.id, error = format!("{e:#}"), "producer stopped early");
        outcome.error = Some(format!("producer {}: {e:#}", spec.id));
    }
    if let Err(e) = client.disconnect().await {
        tracing::debug!(producer = spec.id, error = %e, "disconnect failed");
    }
    outcome
}

async fn send_loop(
    client: &Client,
    spec: &ProducerSpec,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    outcome: &mut ProducerOutcome,
    pending: &mut VecDeque<Outstanding>,
) -> anyhow::Result<()> {
    let window = spec.window as usize;
    let mut bodies = BodyWriter::new(spec.size);
    let mut seq = 0u64;
    loop {
        // Wait for room before reading the clock, so the stamp is the real send time.
        while window > 0 && pending.len() >= window {
            settle_oldest(pending, outcome, shared).await?;
        }
        let now = wall_clock_ns();
        if stop.is_cancelled() || now >= shared.phases.measure_end_ns || spec.limit.is_some_and(|l| seq >= l) {
            break;
        }
        let body = bodies.body(Stamp { producer: spec.id, seq, sent_ns: now });
        let mut headers = spec.headers.clone();
        if let Some((header, plan)) = &spec.groups {
            headers.push((header.clone(), plan.group_name(seq)));
        }
        if let Some(cycle) = &spec.cycle {
            headers.push((cycle.name.clone(), cycle.value_for(seq).to_string()));
        }
        let options = SendOptions { persistent: spec.persistent, headers, ..SendOptions::default() };
        let measured = shared.phases.in_measured(now);
        if window == 0 {
            client
                .send(&spec.destination, body, options)
                .await
                .with_context(|| format!("failed to send message {seq}"))?;
            outcome.confirmed.insert(seq);
        } else {
            let receipt = client
                .send_with_receipt(&spec.destination, body, options)
                .await
                .with_context(|| format!("failed to send message {seq}"))?;
            let first = spec.groups.as_ref().is_some_and(|(_, plan)| plan.is_first(seq));
            let sent = std::time::Instant::now();
            let receipt = PendingReceipt::new(receipt, shared);
            pending.push_back(Outstanding { seq, first, measured, sent, receipt });
            shared.counters.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        if measured {
            outcome.measured_sent += 1;
        }
        seq += 1;
    }
    while !pending.is_empty() {
        settle_oldest(pending, outcome, shared).await?;
    }
    Ok(())
}

/// A sent message waiting for its RECEIPT.
struct Outstanding {
    seq: u64,
    /// The first message this producer sent in its group.
    first: bool,
    /// Sent during the measured interval.
    measured: bool,
    /// When the SEND was handed to the connection.
    sent: std::time::Instant,
    receipt: PendingReceipt,
}

/// Waits for the oldest outstanding receipt; the broker answers them in send order. The
/// receipt latency is taken when the wait ends: exact with a window of 1; with a larger
/// window a receipt that arrived while the producer was sending counts from then on.
async fn settle_oldest(
    pending: &mut VecDeque<Outstanding>,
    outcome: &mut ProducerOutcome,
    shared: &Shared,
) -> anyhow::Result<()> {
    let Some(Outstanding { seq, first, measured, sent, receipt }) = pending.pop_front() else { return Ok(()) };
    shared.counters.outstanding.fetch_sub(1, Ordering::Relaxed);
    receipt.wait().await.with_context(|| format!("failed to get the receipt of message {seq}"))?;
    if let (Some(latencies), true) = (&mut outcome.receipt_latencies, measured) {
        latencies.record(first, u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    outcome.confirmed.insert(seq);
    Ok(())
}

/// An outstanding receipt. When the run logs receipt times, a task of its own awaits it,
/// so the time is when the RECEIPT arrived, not when the producer got round to it (after
/// a failover, receipts that arrived just before the kill would otherwise look like the
/// first ones after it).
enum PendingReceipt {
    Plain(ReceiptFuture),
    Timed(tokio::task::JoinHandle<Result<(), ClientError>>),
}

impl PendingReceipt {
    fn new(receipt: ReceiptFuture, shared: &Arc<Shared>) -> PendingReceipt {
        if shared.receipts.is_none() {
            return PendingReceipt::Plain(receipt);
        }
        let shared = Arc::clone(shared);
        PendingReceipt::Timed(tokio::spawn(async move {
            receipt.await?;
            if let Some(log) = &shared.receipts {
                log.push(super::shared::nanos_since(shared.phases.started));
            }
            Ok(())
        }))
    }

    async fn wait(self) -> anyhow::Result<()> {
        match self {
            PendingReceipt::Plain(receipt) => Ok(receipt.await?),
            PendingReceipt::Timed(task) => Ok(task.await.context("a receipt task panicked")??),
        }
    }
}
