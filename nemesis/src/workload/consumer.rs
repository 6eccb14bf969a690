//! A consumer's life: subscribe with individual acks, and for each message record what
//! arrived, then acknowledge it with a receipt and record how that ended. Each record
//! names the broker-side consumer that delivered the message (a "session"): a new one
//! starts whenever the ack token's consumer changes or its delivery tags start again,
//! which happens exactly when the client reconnected.

use super::{body, connect, ConsumerSpec, SessionEnds, Tracker, FIRST_FOR_CONSUMER_HEADER, GROUP_HEADER, PREFETCH, PRODUCER_HEADER, SEQ_HEADER};
use crate::cluster::config::Layout;
use crate::history::{AckOutcome, DeliveryRecord, Event, Recorder};
use duomq_broker::client::{AckMode, ClientError, Message};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Between attempts to subscribe while the client cannot.
const SUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);

/// Tells broker-side consumers apart in one client's stream of messages.
#[derive(Debug, Default)]
pub struct Sessions {
    current: u64,
    last: Option<(String, u64)>,
}

impl Sessions {
    /// The session of a message with ack token `ack` (`<consumer>-<tag>`).
    pub fn of(&mut self, ack: Option<&str>) -> u64 {
        let parsed = ack.and_then(|a| a.split_once('-')).and_then(|(c, t)| Some((c.to_string(), t.parse::<u64>().ok()?)));
        let new = match (&self.last, &parsed) {
            (Some((consumer, tag)), Some((c, t))) => consumer != c || t <= tag,
            (None, _) | (_, None) => true,
        };
        if new {
            self.current += 1;
        }
        self.last = parsed;
        self.current
    }
}

/// Runs until `stop`.
pub async fn run(spec: ConsumerSpec, layout: Layout, recorder: Recorder, tracker: Arc<Tracker>, stop: CancellationToken) {
    let mut sessions = Sessions::default();
    let mut ended = SessionEnds::default();
    'clients: while !stop.is_cancelled() {
        let Some(client) = connect(&spec.name, &spec.url, &layout, &recorder, &stop).await else { break };
        let mut subscription = loop {
            match client.subscribe(spec.queue, AckMode::ClientIndividual, Some(PREFETCH)).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(consumer = spec.name, error = %duomq_broker::report::error_chain(&e), "failed to subscribe; trying again");
                    if client.failure().is_some() {
                        continue 'clients;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break 'clients,
                _ = tokio::time::sleep(SUBSCRIBE_PAUSE) => {}
            }
        };
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = client.disconnect().await;
                    break 'clients;
                }
                m = subscription.recv() => m,
            };
            let Some(message) = message else {
                ended.log(&spec.name, client.failure().map(|e| duomq_broker::report::error_chain(&e)));
                tokio::select! {
                    _ = stop.cancelled() => break 'clients,
                    _ = tokio::time::sleep(super::RECONNECT_PAUSE) => continue 'clients,
                }
            };
            let t = recorder.now();
            let session = sessions.of(message.ack.as_deref());
            let (producer, seq) = (message.header(PRODUCER_HEADER).map(str::to_string), message.header(SEQ_HEADER).and_then(|s| s.parse().ok()));
            if let (Some(p), Some(s)) = (&producer, seq) {
                tracker.delivered(p, s);
            }
            let ack = client.ack_with_receipt(&message).await;
            recorder.record(Event::Delivery(record(&spec, &message, t, session, producer, seq, ack, recorder.now())));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    spec: &ConsumerSpec,
    message: &Message,
    t: f64,
    session: u64,
    producer: Option<String>,
    seq: Option<u64>,
    ack: Result<(), ClientError>,
    ack_t: f64,
) -> DeliveryRecord {
    let intact = match (&producer, seq) {
        (Some(p), Some(s)) => message.body == body(p, s),
        _ => false,
    };
    let (ack, ack_error) = match ack {
        Ok(()) => (AckOutcome::Receipted, None),
        Err(e) => (ack_outcome(&e), Some(duomq_broker::report::error_chain(&e))),
    };
    DeliveryRecord {
        t,
        consumer: spec.name.clone(),
        home: spec.home.clone(),
        session,
        queue: message.destination.clone(),
        producer,
        seq,
        group: message.header(GROUP_HEADER).map(str::to_string),
        message_id: message.message_id.clone(),
        redelivered: message.redelivered,
        first_for_consumer: message.header(FIRST_FOR_CONSUMER_HEADER) == Some("true"),
        intact,
        ack,
        ack_t,
        ack_error,
    }
}

/// An ack whose connection is gone was never applied (the message comes again); any other
/// failure leaves it unknown.
fn ack_outcome(error: &ClientError) -> AckOutcome {
    match error {
        ClientError::AckLost { .. } | ClientError::Closed | ClientError::Io(_) | ClientError::FailoverExhausted { .. } => AckOutcome::Lost,
        _ => AckOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_ack_tokens_should_start_a_session_when_the_consumer_changes_or_its_tags_start_again() {
        let mut s = Sessions::default();
        let sessions: Vec<u64> = ["7-0", "7-1", "7-2", "9-0", "9-1", "9-0", "9-1", "4-5"].iter().map(|a| s.of(Some(a))).collect();
        assert_eq!(sessions, [1, 1, 1, 2, 2, 3, 3, 4]);
    }
}
