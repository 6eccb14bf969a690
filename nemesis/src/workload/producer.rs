//! A producer's life: numbered persistent sends with receipts at a steady rate, up to a
//! window of them waiting, each recorded with its outcome and the member that receipted
//! it. When the broker ends the session (an ERROR that is no failover, such as a refused
//! write), pending sends fail and a fresh client carries on with the next numbers.

use super::{body, connect, member_at, message_group, ProducerSpec, SessionEnds, Tracker, GROUP_HEADER, PRODUCER_HEADER, SEQ_HEADER};
use crate::cluster::config::Layout;
use crate::history::{Event, Recorder, SendOutcome, SendRecord};
use duomq_broker::client::{Client, SendOptions};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `stop`, then waits for the outcome of every send it made.
pub async fn run(spec: ProducerSpec, layout: Layout, recorder: Recorder, tracker: Arc<Tracker>, stop: CancellationToken) {
    let offset: u64 = spec.name.bytes().map(u64::from).sum();
    let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.001));
    let mut seq = 0u64;
    let mut pending = FuturesUnordered::new();
    let mut ended = SessionEnds::default();
    'sessions: while !stop.is_cancelled() {
        let Some(client) = connect(&spec.name, &spec.url, &layout, &recorder, &stop).await else { break };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break 'sessions,
                Some(record) = pending.next(), if !pending.is_empty() => finish(record, &recorder, &tracker),
                _ = tick.tick(), if pending.len() < spec.window => {
                    if client.failure().is_some() {
                        break;
                    }
                    let group = spec.grouped.then(|| message_group(seq, offset));
                    pending.push(send(client.clone(), spec.clone(), seq, group, layout.clone(), recorder.clone()));
                    tracker.sent.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                }
            }
        }
        // The session ended: its pending sends fail at once.
        while let Some(record) = pending.next().await {
            finish(record, &recorder, &tracker);
        }
        ended.log(&spec.name, client.failure().map(|e| duomq_broker::report::error_chain(&e)));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(super::RECONNECT_PAUSE) => {}
        }
    }
    while let Some(record) = pending.next().await {
        finish(record, &recorder, &tracker);
    }
}

fn finish(record: SendRecord, recorder: &Recorder, tracker: &Tracker) {
    match record.outcome {
        SendOutcome::Receipted => tracker.receipted(&record.producer, record.seq),
        SendOutcome::Failed => {
            tracker.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    recorder.record(Event::Send(record));
}

/// One send and its outcome. The member is named only when the client did not fail over
/// between handing the SEND over and its RECEIPT: then both crossed one connection.
async fn send(client: Client, spec: ProducerSpec, seq: u64, group: Option<String>, layout: Layout, recorder: Recorder) -> SendRecord {
    let t = recorder.now();
    let before = client.failovers();
    let at = client.connected_to().address();
    let settled = client.failovers();
    let mut headers = vec![(PRODUCER_HEADER.to_string(), spec.name.clone()), (SEQ_HEADER.to_string(), seq.to_string())];
    if let Some(g) = &group {
        headers.push((GROUP_HEADER.to_string(), g.clone()));
    }
    let options = SendOptions { persistent: true, headers, ..SendOptions::default() };
    let result = match client.send_with_receipt(spec.queue, body(&spec.name, seq), options).await {
        Ok(receipt) => receipt.await,
        Err(e) => Err(e),
    };
    let same_connection = before == settled && settled == client.failovers();
    let (outcome, member, error) = match result {
        Ok(()) => (SendOutcome::Receipted, member_at(&layout, &at).filter(|_| same_connection), None),
        Err(e) => (SendOutcome::Failed, None, Some(duomq_broker::report::error_chain(&e))),
    };
    SendRecord { t, producer: spec.name, queue: spec.queue.to_string(), group, seq, outcome, done_t: recorder.now(), member, error }
}
