//! Moving messages that leave their queue unconsumed: dead letters (handed back after
//! `maxDeliveryAttempts` deliveries) to the queue's dead-letter queue, expired messages to
//! its `expiryAddress` or nowhere.
//!
//! A move is a new message of the target queue with the original headers and body plus
//! headers saying where it came from and why (Artemis' `_AMQ_ORIG_ADDRESS`,
//! `_AMQ_ORIG_MESSAGE_ID`, `_AMQ_ACTUAL_EXPIRY`; ActiveMQ's `dlqDeliveryFailureCause`).
//! A persistent message is journaled into its target and acknowledged from its queue in one
//! record ([`Broker::commit`]), so a crash neither loses nor doubles it; until that record
//! is durable the message is in no queue's memory, and a crash recovers it where it was.
//! Moves never wait for memory room: they count against the broker-wide limit only. A
//! persistent move into a queue that pages (past its `maxSizeBytes`, `addressFullPolicy:
//! page`) is paged like a producer's message: the move's one record adds it to the journal
//! only, and it is read back as consumers catch up.
//!
//! A dead letter whose dead-letter queue is its own queue (a `deadLetterAddress` naming
//! it, or a `/queue/DLQ.…` queue with the default prefixed dead-letter queues) is dropped
//! with a warning instead of going round again, as Artemis does.

use super::accept::{Commit, Prepared, Settled};
use super::message::{now_millis, Message, Properties, EXPIRES_HEADER};
use super::queue::Queue;
use super::schedule::{Leaving, Move};
use super::Broker;
use crate::config::address::DEAD_LETTER_PREFIX;
use crate::config::DeadLetter;
use std::sync::Arc;

/// The destination a moved message came from (Artemis').
pub const ORIG_ADDRESS_HEADER: &str = "_AMQ_ORIG_ADDRESS";
/// The id the moved message had there (Artemis').
pub const ORIG_MESSAGE_ID_HEADER: &str = "_AMQ_ORIG_MESSAGE_ID";
/// When an expired message was found expired, milliseconds since the epoch (Artemis').
pub const ACTUAL_EXPIRY_HEADER: &str = "_AMQ_ACTUAL_EXPIRY";
/// Why a message was dead-lettered, a sentence (ActiveMQ's).
pub const FAILURE_CAUSE_HEADER: &str = "dlqDeliveryFailureCause";

impl Broker {
    /// Moves (or drops) a message that left `m.queue` (see the module docs).
    pub(super) fn apply_move(self: &Arc<Self>, m: Move) {
        let Move { queue, entry, why } = m;
        let original = &entry.message;
        let (target, headers) = match why {
            Leaving::DeadLetter { deliveries, max } => {
                let target = dead_letter_target(&queue);
                if target == *queue.name {
                    tracing::warn!(queue = %queue.name, id = original.id.0, deliveries, "dropping a dead letter of its own dead-letter queue");
                    return self.acknowledge_lazy(Settled::of(&entry));
                }
                let cause = format!("delivered {deliveries} times (addressSettings maxDeliveryAttempts {max}) without an acknowledgement");
                self.metrics.messages_dead_lettered.inc();
                tracing::info!(queue = %queue.name, id = original.id.0, dead_letter_queue = %target, "{cause}: dead-lettered");
                (target, moved_headers(original, &queue.name, &[(FAILURE_CAUSE_HEADER, cause)], false))
            }
            Leaving::Expired => {
                let Some(target) = queue.settings.expiry_address.as_deref() else {
                    self.metrics.message_expired(false);
                    tracing::debug!(queue = %queue.name, id = original.id.0, "expired message dropped");
                    return self.acknowledge_lazy(Settled::of(&entry));
                };
                self.metrics.message_expired(true);
                tracing::debug!(queue = %queue.name, id = original.id.0, expiry_address = target, "expired message moved");
                let expiry = [(ACTUAL_EXPIRY_HEADER, now_millis().to_string())];
                (target.to_string(), moved_headers(original, &queue.name, &expiry, true))
            }
        };
        let target = match self.resolve_unlimited(&target) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(queue = %queue.name, id = original.id.0, error = %e, "cannot move the message there; dropped");
                return self.acknowledge_lazy(Settled::of(&entry));
            }
        };
        let message = Arc::new(Message {
            id: self.next_message_id(),
            destination: match &target {
                super::Target::Queue(q) => Arc::clone(&q.name),
                super::Target::Topic(t) => Arc::clone(&t.name),
            },
            group: self.message_group(&headers),
            properties: Properties::from_headers(&headers),
            headers,
            body: original.body.clone(),
            persistent: original.persistent,
        });
        // Into a queue past its maxSizeBytes that pages, it is paged like any message
        // (decided at commit, right before its record is appended).
        let pageable = self.moved_pageable(&target, message.persistent);
        let reservation = self.reserve_broker_wide(if pageable { 0 } else { message.footprint() });
        let send = Prepared::moved(target, message, reservation, pageable);
        // Published once durable, by the acceptance's own task.
        drop(self.commit(vec![send], Settled::of(&entry), Commit::Grouped));
    }

    /// Takes the messages expired at `now` out of every queue (each then moved or dropped);
    /// returns how many.
    pub fn expire_pending(&self, now: u64) -> usize {
        let mut queues: Vec<Arc<Queue>> = self.queues.read().values().cloned().collect();
        for t in self.topics.read().values() {
            queues.extend(t.subscriber_queues());
        }
        let n: usize = queues.iter().map(|q| q.expire(now)).sum();
        if n > 0 {
            tracing::debug!(expired = n, "expiry scan");
        }
        n
    }
}

/// Where `queue`'s dead letters go; the queue itself when a prefixed dead-letter queue
/// would only add one more prefix.
fn dead_letter_target(queue: &Queue) -> String {
    let own = queue.name.strip_prefix("/queue/").is_some_and(|n| n.starts_with(DEAD_LETTER_PREFIX));
    if own && queue.settings.dead_letter == DeadLetter::Prefixed {
        return queue.name.to_string();
    }
    queue.settings.dead_letter_destination(&queue.name)
}

/// The original headers (without a previous move's, and without `expires` when it
/// expired) and where it came from, then `extra`.
fn moved_headers(original: &Message, from: &str, extra: &[(&str, String)], expired: bool) -> Vec<(String, String)> {
    let ours = [ORIG_ADDRESS_HEADER, ORIG_MESSAGE_ID_HEADER, ACTUAL_EXPIRY_HEADER, FAILURE_CAUSE_HEADER];
    let mut headers: Vec<(String, String)> = original
        .headers
        .iter()
        .filter(|(k, _)| !(ours.contains(&k.as_str()) || (expired && k == EXPIRES_HEADER)))
        .cloned()
        .collect();
    headers.push((ORIG_ADDRESS_HEADER.to_string(), from.to_string()));
    headers.push((ORIG_MESSAGE_ID_HEADER.to_string(), original.id.0.to_string()));
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AddressSettingsEntry, BrokerConfig, HumanDuration};
    use crate::engine::accept::Incoming;
    use crate::engine::message::ConsumerKey;
    use crate::engine::metrics::{EngineMetrics, EXPIRED_DROPPED, EXPIRED_MOVED};
    use crate::engine::queue::{AckMode, ConsumerHandle, Outbound};
    use crate::engine::Target;
    use crate::journal::JournalMetrics;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn open(dir: &std::path::Path, settings: Vec<AddressSettingsEntry>) -> Arc<Broker> {
        let mut config = BrokerConfig::default();
        config.storage.data_dir = dir.to_path_buf();
        config.node.id = "test".into();
        config.address_settings = settings;
        config.destinations.expiry_scan_period = HumanDuration(Duration::from_millis(100));
        match Broker::open(Arc::new(config), Vec::new(), JournalMetrics::unregistered(), EngineMetrics::default(), crate::faults::Faults::off(), false) {
            Ok((broker, _)) => broker,
            Err(e) => panic!("open broker: {e}"),
        }
    }

    fn queue(broker: &Broker, name: &str) -> Arc<Queue> {
        match broker.resolve(name) {
            Ok(Target::Queue(q)) => q,
            other => panic!("expected a queue, got {other:?}"),
        }
    }

    async fn send(broker: &Arc<Broker>, destination: &str, headers: &[(&str, &str)]) {
        let incoming = Incoming {
            destination: destination.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Bytes::from_static(b"poison"),
            persistent: true,
            dedup_id: None,
        };
        let acceptance = broker.accept(incoming, Commit::Grouped).await.expect("accept");
        acceptance.await.expect("durable").publish();
    }

    fn consumer(broker: &Broker, q: &Arc<Queue>) -> (ConsumerKey, mpsc::UnboundedReceiver<Outbound>) {
        let (handle, rx) = ConsumerHandle::for_test(broker.next_consumer_key().0, 10, AckMode::ClientIndividual);
        let key = handle.key;
        q.add_consumer(handle);
        (key, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> crate::engine::message::Delivery {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Outbound::Deliver(d))) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    fn header<'m>(m: &'m Message, name: &str) -> Option<&'m str> {
        m.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn given_a_poison_message_should_dead_letter_it_after_max_attempts_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = vec![AddressSettingsEntry { pattern: ">".into(), max_delivery_attempts: Some(2), ..Default::default() }];
        let broker = open(dir.path(), settings.clone());
        let stop = CancellationToken::new();
        tokio::spawn(crate::engine::schedule::run(Arc::clone(&broker), stop.clone()));
        send(&broker, "/queue/orders", &[("k", "v")]).await;
        let q = queue(&broker, "/queue/orders");
        let (key, mut rx) = consumer(&broker, &q);
        for n in 1..=2 {
            let d = next(&mut rx).await;
            assert_eq!(d.entry.deliveries, n);
            q.nack(key, d.tag, false).expect("nack");
        }
        let dlq = queue(&broker, "/queue/DLQ.orders");
        let (_, mut dead) = consumer(&broker, &dlq);
        let d = next(&mut dead).await;
        let m = &d.entry.message;
        assert_eq!(header(m, "k"), Some("v"));
        assert_eq!(header(m, ORIG_ADDRESS_HEADER), Some("/queue/orders"));
        assert_eq!(header(m, ORIG_MESSAGE_ID_HEADER), Some("0"));
        assert_eq!(header(m, FAILURE_CAUSE_HEADER), Some("delivered 2 times (addressSettings maxDeliveryAttempts 2) without an acknowledgement"));
        assert_eq!(&m.body[..], b"poison");
        assert_eq!(q.snapshot().depth + q.snapshot().in_flight, 0);
        assert_eq!(broker.metrics.messages_dead_lettered.get(), 1);
        stop.cancel();
        broker.close().expect("close");
        // One record moved it: after a restart it is in the dead-letter queue only.
        let reopened = open(dir.path(), settings);
        assert_eq!(queue(&reopened, "/queue/orders").snapshot().depth, 0);
        assert_eq!(queue(&reopened, "/queue/DLQ.orders").snapshot().depth, 1);
    }

    #[tokio::test]
    async fn given_expired_messages_should_drop_or_move_them_without_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = vec![AddressSettingsEntry {
            pattern: "/queue/moved".into(),
            expiry_address: Some("/queue/expired".into()),
            ..Default::default()
        }];
        let broker = open(dir.path(), settings);
        let stop = CancellationToken::new();
        tokio::spawn(crate::engine::schedule::run(Arc::clone(&broker), stop.clone()));
        let soon = (now_millis() + 200).to_string();
        send(&broker, "/queue/dropped", &[("expires", &soon)]).await;
        send(&broker, "/queue/moved", &[("expires", &soon)]).await;
        send(&broker, "/queue/moved", &[("expires", "0")]).await;
        let expired = queue(&broker, "/queue/expired");
        let (_, mut rx) = consumer(&broker, &expired);
        // Found by the scan (every 100ms here): nobody consumes these queues.
        let d = next(&mut rx).await;
        let m = &d.entry.message;
        assert_eq!(header(m, EXPIRES_HEADER), None, "it must not expire again");
        assert_eq!(header(m, ORIG_ADDRESS_HEADER), Some("/queue/moved"));
        assert!(header(m, ACTUAL_EXPIRY_HEADER).and_then(|t| t.parse::<u64>().ok()).is_some());
        assert_eq!(queue(&broker, "/queue/moved").snapshot().depth, 1, "expires 0 never expires");
        for _ in 0..100 {
            if queue(&broker, "/queue/dropped").snapshot().depth == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(queue(&broker, "/queue/dropped").snapshot().depth, 0);
        assert_eq!((broker.metrics.messages_expired(EXPIRED_DROPPED), broker.metrics.messages_expired(EXPIRED_MOVED)), (1, 1));
        stop.cancel();
    }

    #[tokio::test]
    async fn given_a_paging_dead_letter_queue_should_page_a_dead_letter_and_read_it_back_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings: Vec<AddressSettingsEntry> = [AddressSettingsEntry { pattern: "/queue/orders".into(), max_delivery_attempts: Some(1), ..Default::default() }]
        .into_iter()
        .chain(crate::engine::paging::test_kit::paging_past_64kib("/queue/DLQ.orders"))
        .collect();
        let broker = open(dir.path(), settings);
        let stop = CancellationToken::new();
        tokio::spawn(crate::engine::schedule::run(Arc::clone(&broker), stop.clone()));
        let big = "x".repeat(1024);
        for n in 0..100 {
            send(&broker, "/queue/DLQ.orders", &[("n", &n.to_string()), ("pad", &big)]).await;
        }
        let dlq = queue(&broker, "/queue/DLQ.orders");
        let before = dlq.snapshot();
        assert!(before.paged > 0, "the dead-letter queue pages: {before:?}");
        send(&broker, "/queue/orders", &[("n", "dead")]).await;
        let q = queue(&broker, "/queue/orders");
        let (key, mut rx) = consumer(&broker, &q);
        let d = next(&mut rx).await;
        q.nack(key, d.tag, false).expect("nack");
        for _ in 0..100 {
            if dlq.snapshot().paged > before.paged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = dlq.snapshot();
        assert_eq!((after.paged, after.depth, after.bytes), (before.paged + 1, before.depth, before.bytes), "paged, not held in memory: {after:?}");
        assert_eq!(broker.metrics.messages_dead_lettered.get(), 1);
        // Read back behind the others once consumers catch up.
        let got = crate::engine::paging::test_kit::drain(&broker, &dlq, 101).await;
        assert_eq!(got.last().map(|(n, _)| n.as_str()), Some("dead"));
        stop.cancel();
    }

    #[tokio::test]
    async fn given_a_dead_letter_queue_whose_messages_fail_should_drop_them_not_nest_queues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = vec![AddressSettingsEntry { pattern: ">".into(), max_delivery_attempts: Some(1), ..Default::default() }];
        let broker = open(dir.path(), settings);
        let stop = CancellationToken::new();
        tokio::spawn(crate::engine::schedule::run(Arc::clone(&broker), stop.clone()));
        send(&broker, "/queue/DLQ.orders", &[]).await;
        let q = queue(&broker, "/queue/DLQ.orders");
        let (key, mut rx) = consumer(&broker, &q);
        let d = next(&mut rx).await;
        q.nack(key, d.tag, false).expect("nack");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(q.snapshot().depth + q.snapshot().in_flight, 0);
        assert!(!broker.destination_names().iter().any(|n| n.contains("DLQ.DLQ")));
        assert_eq!(broker.metrics.messages_dead_lettered.get(), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn given_a_redelivery_delay_should_hold_the_nacked_message_but_not_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = vec![AddressSettingsEntry {
            pattern: ">".into(),
            redelivery_delay: Some(HumanDuration(Duration::from_millis(600))),
            ..Default::default()
        }];
        let broker = open(dir.path(), settings);
        let stop = CancellationToken::new();
        tokio::spawn(crate::engine::schedule::run(Arc::clone(&broker), stop.clone()));
        send(&broker, "/queue/q", &[]).await;
        let q = queue(&broker, "/queue/q");
        let (key, mut rx) = consumer(&broker, &q);
        let first = next(&mut rx).await;
        let nacked = std::time::Instant::now();
        q.nack(key, first.tag, false).expect("nack");
        send(&broker, "/queue/q", &[]).await;
        let other = next(&mut rx).await;
        assert_eq!(other.entry.message.id.0, 1, "a later message is not held back");
        let again = next(&mut rx).await;
        assert_eq!((again.entry.message.id.0, again.entry.deliveries, again.entry.redelivered), (0, 2, true));
        assert!(nacked.elapsed() >= Duration::from_millis(550), "redelivered after {:?}", nacked.elapsed());
        assert_eq!(broker.metrics.scheduled_messages.get(), 0);
        stop.cancel();
    }
}
