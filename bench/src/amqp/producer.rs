//! One AMQP producer: its own connection, session and sending link to the address; sends
//! stamped messages until the measured interval ends, keeping up to `in_flight` transfers
//! unsettled, and remembers which sequence numbers the broker settled `accepted`. Any
//! other outcome (rejected, released, modified) ends the producer with an error naming it:
//! the broker refused the message. It never decides what counts as lost.

use super::Endpoint;
use crate::body::{encode_body, wall_clock_ns, Stamp};
use crate::run::producer::ProducerOutcome;
use crate::run::shared::Shared;
use anyhow::Context;
use bytes::BytesMut;
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::messaging::{Data, Header, Message, Outcome};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Sendable, Sender};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What one producer sends.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub id: u32,
    pub size: usize,
    pub persistent: bool,
    /// Transfers sent and not yet settled by the broker, at most.
    pub in_flight: u32,
}

/// A producer attached to its address, not yet sending.
pub struct Producer {
    endpoint: Endpoint,
    sender: Sender,
}

/// Opens producer `index`'s connection and attaches its sending link to `address`.
pub async fn attach(url: &str, address: &str, index: u32) -> anyhow::Result<Producer> {
    let name = format!("duomq-bench-producer-{index}");
    let mut endpoint = Endpoint::open(url, &name).await?;
    let sender = Sender::attach(&mut endpoint.session, name, address)
        .await
        .with_context(|| format!("failed to attach a sending link to {address:?}"))?;
    Ok(Producer { endpoint, sender })
}

/// A transfer waiting for the broker's outcome.
struct Unsettled {
    seq: u64,
    outcome: DeliveryFut<Result<Outcome, SendError>>,
}

impl Producer {
    /// Sends to the end of the measured interval (or until `stop`), then waits for the
    /// outcomes still due, closes the link and the connection.
    pub async fn produce(mut self, spec: Spec, shared: Arc<Shared>, stop: CancellationToken) -> ProducerOutcome {
        let mut outcome = ProducerOutcome::default();
        let mut unsettled = VecDeque::with_capacity(spec.in_flight as usize);
        let result = self.send_loop(spec, &shared, &stop, &mut outcome, &mut unsettled).await;
        // Outcomes abandoned by a failure no longer count as outstanding.
        shared.counters.outstanding.fetch_sub(unsettled.len() as i64, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::error!(producer = spec.id, error = format!("{e:#}"), "producer stopped early");
            outcome.error = Some(format!("producer {}: {e:#}", spec.id));
        }
        super::closing("producer", "close the sending link", self.sender.close()).await;
        self.endpoint.close("producer").await;
        outcome
    }

    async fn send_loop(
        &mut self,
        spec: Spec,
        shared: &Shared,
        stop: &CancellationToken,
        outcome: &mut ProducerOutcome,
        unsettled: &mut VecDeque<Unsettled>,
    ) -> anyhow::Result<()> {
        let window = spec.in_flight.max(1) as usize;
        let header = Header { durable: spec.persistent, ..Header::default() };
        let mut seq = 0u64;
        loop {
            // Wait for room before reading the clock, so the stamp is the real send time.
            while unsettled.len() >= window {
                settle_oldest(unsettled, outcome, shared).await?;
            }
            tokio::select! {
                biased;
                () = shared.room_to_send() => {}
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(shared.phases.measure_end()) => break,
            }
            let now = wall_clock_ns();
            if stop.is_cancelled() || now >= shared.phases.measure_end_ns {
                break;
            }
            let mut body = BytesMut::with_capacity(spec.size.max(64));
            encode_body(Stamp { producer: spec.id, seq, sent_ns: now }, spec.size, &mut body);
            let message: Message<Data> =
                Message::builder().header(header.clone()).data(Binary::from(Vec::from(body))).build();
            let sendable = Sendable::builder().message(message).settled(false).build();
            let pending = self
                .sender
                .send_batchable(sendable)
                .await
                .with_context(|| format!("failed to send message {seq}"))?;
            unsettled.push_back(Unsettled { seq, outcome: pending });
            shared.counters.outstanding.fetch_add(1, Ordering::Relaxed);
            shared.counters.sent.fetch_add(1, Ordering::Relaxed);
            if shared.phases.in_measured(now) {
                outcome.measured_sent += 1;
            }
            seq += 1;
        }
        while !unsettled.is_empty() {
            settle_oldest(unsettled, outcome, shared).await?;
        }
        Ok(())
    }
}

/// Waits for the oldest transfer's outcome: accepted confirms it; anything else fails.
async fn settle_oldest(
    unsettled: &mut VecDeque<Unsettled>,
    outcome: &mut ProducerOutcome,
    shared: &Shared,
) -> anyhow::Result<()> {
    let Some(Unsettled { seq, outcome: pending }) = unsettled.pop_front() else { return Ok(()) };
    shared.counters.outstanding.fetch_sub(1, Ordering::Relaxed);
    match pending.await.with_context(|| format!("failed to get the outcome of message {seq}"))? {
        Outcome::Accepted(_) => {
            outcome.confirmed.insert(seq);
            Ok(())
        }
        other => anyhow::bail!("the broker settled message {seq} {}", describe(&other)),
    }
}

/// An outcome other than accepted, for the error: its name and the broker's reason.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted(_) => "accepted".to_string(),
        Outcome::Rejected(r) => match &r.error {
            Some(e) => format!("rejected: {:?}: {}", e.condition, e.description.as_deref().unwrap_or("no description")),
            None => "rejected, without a reason".to_string(),
        },
        Outcome::Released(_) => "released (not taken; the broker may be out of room)".to_string(),
        Outcome::Modified(_) => "modified (not taken)".to_string(),
        // Transactional outcomes: this producer declares no transaction.
        other => format!("{other:?}"),
    }
}
