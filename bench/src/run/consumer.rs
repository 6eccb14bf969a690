//! One consumer: subscribes on its own connection, acknowledges what it receives as the
//! ack mode asks, and records each delivery (latency, first or duplicate) until told to
//! stop. It uses the duomq client unless the run needs SUBSCRIBE headers that client
//! cannot send; then it uses the small connection in [`super::raw`].

use super::raw::RawSubscriber;
use super::shared::Shared;
use crate::body::{parse_body, wall_clock_ns};
use crate::report::nanos_histogram;
use crate::selectors::HeaderCycle;
use crate::tally::{DeliveryCounts, Mark};
use anyhow::Context;
use duomq_broker::client::{AckMode, Client, ClientOptions, Message, Subscription};
use futures::FutureExt;
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How every consumer subscribes.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub url: String,
    pub options: ClientOptions,
    pub destination: String,
    pub ack: AckMode,
    pub prefetch: u32,
    /// Extra SUBSCRIBE headers; when present, the raw connection is used.
    pub subscribe_headers: Vec<(String, String)>,
    /// Selector loads: consumer c selects the cycle's value c (see [`crate::selectors`]);
    /// the raw connection is used.
    pub selectors: Option<HeaderCycle>,
}

/// A consumer that has subscribed, before it starts consuming.
pub enum Subscribed {
    Client { client: Client, subscription: Subscription },
    Raw(Box<RawSubscriber>),
}

impl Subscribed {
    /// The broker's `server` header from CONNECTED.
    pub fn server(&self) -> Option<String> {
        match self {
            Subscribed::Client { client, .. } => client.server().map(str::to_string),
            Subscribed::Raw(raw) => raw.server().map(str::to_string),
        }
    }

    /// The connection's failover events; `None` on the raw connection, which has none.
    pub fn events(&self) -> Option<tokio::sync::broadcast::Receiver<duomq_broker::client::ConnectionEvent>> {
        match self {
            Subscribed::Client { client, .. } => Some(client.events()),
            Subscribed::Raw(_) => None,
        }
    }

    /// Consumes until `stop`, or until the connection fails.
    pub async fn consume(
        self,
        spec: &ConsumerSpec,
        id: u32,
        mut recorder: Recorder,
        stop: CancellationToken,
    ) -> ConsumerOutcome {
        let result = match self {
            Subscribed::Client { client, subscription } => {
                let result = consume_with_client(&client, subscription, spec, &mut recorder, &stop).await;
                if let Err(e) = client.disconnect().await {
                    tracing::debug!(consumer = id, error = %e, "disconnect failed");
                }
                result
            }
            Subscribed::Raw(raw) => {
                let expect = spec.selectors.as_ref().map(|c| (c.name.as_str(), c.expected_for(id)));
                raw.consume(spec.ack, expect, &mut recorder, &stop).await
            }
        };
        let error = result.err().map(|e| {
            tracing::error!(consumer = id, error = format!("{e:#}"), "consumer stopped early");
            format!("consumer {id}: {e:#}")
        });
        recorder.into_outcome(error)
    }
}

/// Connects and subscribes consumer `index`.
pub async fn subscribe(spec: &ConsumerSpec, index: u32) -> anyhow::Result<Subscribed> {
    if spec.subscribe_headers.is_empty() && spec.selectors.is_none() {
        let client = Client::connect(&spec.url, spec.options.clone()).await?;
        let subscription = client.subscribe(&spec.destination, spec.ack, Some(spec.prefetch)).await?;
        return Ok(Subscribed::Client { client, subscription });
    }
    let mut raw = RawSubscriber::connect(&spec.url, &spec.options).await?;
    let mut headers = spec.subscribe_headers.clone();
    if let Some(cycle) = &spec.selectors {
        headers.push(("selector".to_string(), cycle.selector_for(index)));
    }
    raw.subscribe(&spec.destination, spec.ack, spec.prefetch, &headers).await?;
    Ok(Subscribed::Raw(Box::new(raw)))
}

/// What a consumer saw.
pub struct ConsumerOutcome {
    /// End-to-end latency, in nanoseconds, of first deliveries sent in the measured interval.
    pub latencies: Histogram<u64>,
    /// Messages of this run received during the measured interval.
    pub measured_received: u64,
    pub counts: DeliveryCounts,
    /// Deliveries whose header did not match this consumer's selector (selector loads).
    pub selector_mismatches: u64,
    pub error: Option<String>,
}

/// Books each delivery of one consumer.
pub struct Recorder {
    shared: Arc<Shared>,
    /// Which consumer this is, for the group check.
    consumer: u32,
    latencies: Histogram<u64>,
    measured_received: u64,
    counts: DeliveryCounts,
    selector_mismatches: u64,
    /// By producer: the highest sequence number this consumer got a first delivery of.
    newest_first: Vec<Option<u64>>,
}

impl Recorder {
    pub fn new(shared: Arc<Shared>, consumer: u32) -> anyhow::Result<Recorder> {
        Ok(Recorder {
            shared,
            consumer,
            latencies: nanos_histogram()?,
            measured_received: 0,
            counts: DeliveryCounts::default(),
            selector_mismatches: 0,
            newest_first: Vec::new(),
        })
    }

    /// What the consumer saw, with the error that ended it early, if any.
    pub fn into_outcome(self, error: Option<String>) -> ConsumerOutcome {
        ConsumerOutcome {
            latencies: self.latencies,
            measured_received: self.measured_received,
            counts: self.counts,
            selector_mismatches: self.selector_mismatches,
            error,
        }
    }

    /// Books a delivery that its consumer's selector should not have let through.
    pub fn selector_mismatch(&mut self) {
        self.selector_mismatches += 1;
    }

    /// Books one delivered body, received now; `redelivered` is the MESSAGE's
    /// `redelivered` header.
    pub fn record(&mut self, body: &[u8], redelivered: bool) {
        let now = wall_clock_ns();
        let shared = &*self.shared;
        shared.counters.received.fetch_add(1, Ordering::Relaxed);
        shared.received_one();
        let stamp = match parse_body(body) {
            // Stamped before this run started: left in the queue by an earlier one.
            Some(stamp) if stamp.sent_ns >= shared.phases.start_ns => stamp,
            _ => {
                self.counts.add(Mark::Foreign, redelivered, false);
                return;
            }
        };
        let mark = shared.deliveries.mark(stamp.producer, stamp.seq);
        let lost_since_first = match (&shared.generations, mark) {
            (Some(generations), Mark::First) => {
                generations.first_delivery(stamp.producer, stamp.seq);
                false
            }
            (Some(generations), Mark::Again) => generations.lost_since_first(stamp.producer, stamp.seq),
            _ => false,
        };
        self.counts.add(mark, redelivered, lost_since_first);
        if mark == Mark::Foreign {
            return;
        }
        if mark == Mark::First && !in_order(&mut self.newest_first, stamp.producer, stamp.seq) {
            shared.counters.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(arrivals), Mark::First) = (&shared.arrivals, mark) {
            arrivals.push(super::shared::nanos_since(shared.phases.started));
        }
        if let (Some(groups), Mark::First) = (&shared.groups, mark) {
            groups.delivered(self.consumer, stamp.producer, stamp.seq);
        }
        if shared.phases.in_measured(now) {
            self.measured_received += 1;
        }
        if mark == Mark::First && shared.phases.in_measured(stamp.sent_ns) {
            self.latencies.saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
        }
    }
}

/// A queue hands each consumer a producer's messages in the order they were sent, so a
/// first delivery older than one the consumer already had is out of order (redeliveries
/// after a failover come again, but they are not first deliveries). `newest_first` holds,
/// by producer, the highest sequence number the consumer got a first delivery of.
fn in_order(newest_first: &mut Vec<Option<u64>>, producer: u32, seq: u64) -> bool {
    let Ok(index) = usize::try_from(producer) else { return true };
    if newest_first.len() <= index {
        newest_first.resize(index + 1, None);
    }
    match newest_first[index] {
        Some(newest) if seq < newest => false,
        _ => {
            newest_first[index] = Some(seq);
            true
        }
    }
}

/// Messages between cumulative ACKs in `client` mode: half the prefetch, so the broker
/// never runs out of window.
pub fn cumulative_ack_every(prefetch: u32) -> u32 {
    (prefetch / 2).max(1)
}

async fn consume_with_client(
    client: &Client,
    mut subscription: Subscription,
    spec: &ConsumerSpec,
    recorder: &mut Recorder,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let ack_every = cumulative_ack_every(spec.prefetch);
    // In `client` mode: the newest message not yet covered by a cumulative ACK.
    let mut unacked: Option<Message> = None;
    let mut since_ack = 0u32;
    while !stop.is_cancelled() {
        let message = match subscription.recv().now_or_never() {
            Some(message) => message,
            None => {
                // Idle: settle what a cumulative ACK still owes before waiting.
                if let Some(last) = unacked.take() {
                    client.ack(&last).await.context("failed to acknowledge")?;
                    since_ack = 0;
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    message = subscription.recv() => message,
                }
            }
        };
        let Some(message) = message else {
            return Err(client
                .failure()
                .map_or_else(|| anyhow::anyhow!("the broker closed the connection"), Into::into));
        };
        recorder.record(&message.body, message.redelivered);
        match spec.ack {
            AckMode::Auto => {}
            AckMode::ClientIndividual => client.ack(&message).await.context("failed to acknowledge")?,
            AckMode::Client => {
                since_ack += 1;
                if since_ack >= ack_every {
                    client.ack(&message).await.context("failed to acknowledge")?;
                    since_ack = 0;
                    unacked = None;
                } else {
                    unacked = Some(message);
                }
            }
        }
    }
    if let Some(last) = unacked {
        client.ack(&last).await.context("failed to acknowledge")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::in_order;

    #[test]
    fn given_first_deliveries_should_count_only_an_older_one_of_the_same_producer_out_of_order() {
        let mut newest = Vec::new();
        assert!(in_order(&mut newest, 1, 5));
        assert!(in_order(&mut newest, 0, 9), "another producer has its own order");
        assert!(in_order(&mut newest, 1, 6));
        assert!(!in_order(&mut newest, 1, 3), "older than 6");
        assert!(in_order(&mut newest, 1, 7), "an out-of-order one does not move the mark back");
        assert!(!in_order(&mut newest, 0, 8));
    }
}
