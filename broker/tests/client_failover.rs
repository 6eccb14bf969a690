//! The failover client against the real broker binary: the broker is killed with SIGKILL
//! while a producer pipelines receipted persistent sends, then restarted on the same
//! ports and data dir. The client must reconnect by itself, resend what was not
//! receipted, and every receipt must complete; a consumer then finds every message.

mod common;

use common::{Broker, Deadline};
use duomq_broker::client::{AckMode, Client, ClientOptions, ConnectionEvent, ReceiptFuture, SendOptions};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const COUNT: u64 = 2000;
const WINDOW: usize = 16;
const DEST: &str = "/queue/failover";
/// How long the producer may take in all, the kill and restart included.
use duomq_testkit::timeouts::PRODUCE as PRODUCE_TIMEOUT;
/// Longest wait for one message at the consumer.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling period of waits on a condition (never a synchronisation by itself).
const POLL: Duration = Duration::from_millis(10);

/// Sends COUNT persistent messages with up to WINDOW receipts outstanding; counts the
/// receipts as they complete.
async fn produce(client: Client, receipted: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut window: VecDeque<(u64, ReceiptFuture)> = VecDeque::new();
    for seq in 0..COUNT {
        if window.len() == WINDOW {
            if let Some((n, receipt)) = window.pop_front() {
                receipt.await.map_err(|e| anyhow::anyhow!("receipt of message {n}: {e}"))?;
                receipted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let options = SendOptions { persistent: true, ..SendOptions::default() };
        window.push_back((seq, client.send_with_receipt(DEST, seq.to_string(), options).await?));
    }
    for (n, receipt) in window {
        receipt.await.map_err(|e| anyhow::anyhow!("receipt of message {n}: {e}"))?;
        receipted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_broker_killed_midway_when_restarted_on_the_same_address_should_complete_every_receipt() {
    let mut broker = Broker::start("client-failover", "");
    let url = format!(
        "failover:(stomp://127.0.0.1:{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms",
        broker.stomp_port
    );
    // The receipt wait spans the restart, journal recovery included.
    let options = ClientOptions { receipt_timeout: Duration::from_secs(60), ..ClientOptions::default() };
    let producer = Client::connect(&url, options).await.expect("connect the producer");
    let mut events = producer.events();
    let receipted = Arc::new(AtomicU64::new(0));
    let producing = tokio::spawn(produce(producer.clone(), Arc::clone(&receipted)));

    let deadline = Deadline::after("half the receipts", PRODUCE_TIMEOUT);
    while receipted.load(Ordering::Relaxed) < COUNT / 2 {
        deadline.check(|| format!("{} of {COUNT} receipted", receipted.load(Ordering::Relaxed)));
        assert!(!producing.is_finished(), "the producer stopped early: {:?}", producing.await);
        tokio::time::sleep(POLL).await;
    }
    let broker_port = broker.stomp_port;
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart_in_place();
        broker
    })
    .await
    .expect("restart the broker");

    tokio::time::timeout(PRODUCE_TIMEOUT, producing)
        .await
        .expect("the producer did not finish")
        .expect("the producer task panicked")
        .expect("every receipt completes");
    assert_eq!(receipted.load(Ordering::Relaxed), COUNT);
    assert!(producer.failovers() >= 1, "the client never failed over");
    assert_eq!(producer.connected_to().port, broker_port);
    let mut gaps = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ConnectionEvent::Reconnected { gap, .. } = event {
            gaps.push(gap);
        }
    }
    assert!(!gaps.is_empty(), "no Reconnected event");
    producer.disconnect().await.expect("disconnect the producer");

    let consumer = Client::connect(&format!("stomp://127.0.0.1:{broker_port}"), ClientOptions::default())
        .await
        .expect("connect the consumer");
    let mut sub = consumer.subscribe(DEST, AckMode::ClientIndividual, Some(100)).await.expect("subscribe");
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut drain_deadline = None;
    loop {
        let complete = seen.len() == COUNT as usize;
        if complete && drain_deadline.is_none() {
            drain_deadline = Some(Deadline::after("the queue draining after every message arrived", MESSAGE_TIMEOUT));
        }
        // Once every message is in, only duplicates can remain: take them until the queue
        // is empty (acks are applied asynchronously, hence the polling).
        if complete && broker.queue_depth(DEST) == 0 {
            break;
        }
        let wait = if complete { POLL * 10 } else { MESSAGE_TIMEOUT };
        match tokio::time::timeout(wait, sub.recv()).await {
            Ok(Some(message)) => {
                let seq: u64 = String::from_utf8_lossy(&message.body).parse().expect("numeric body");
                *seen.entry(seq).or_default() += 1;
                consumer.ack(&message).await.expect("ack");
            }
            Err(_) if complete => {
                let drained_in_time = drain_deadline.as_ref().is_some_and(|deadline| !deadline.passed());
                assert!(drained_in_time, "the queue did not drain after every message arrived");
            }
            other => {
                let missing: Vec<u64> = (0..COUNT).filter(|n| !seen.contains_key(n)).take(20).collect();
                panic!("{} of {COUNT} messages received ({other:?}); first missing: {missing:?}", seen.len());
            }
        }
    }
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "received all {COUNT} messages; {duplicates} duplicates from resends; failovers: {}; reconnect gaps: {gaps:?}",
        producer.failovers()
    );
    consumer.disconnect().await.expect("disconnect the consumer");
}
