//! Message groups on one broker, over raw STOMP and the Rust client against the real binary: a group's
//! messages reach one consumer in order, groups spread evenly, a group moves (flagged
//! `JMSXGroupFirstForConsumer`) when its consumer disconnects, `JMSXGroupSeq: -1` closes
//! a group, and bindings past `grouping.maxGroups` are evicted and counted.

mod common;

use common::{body_text, eventually, metric_value, Broker, Conn, Deadline};
use duomq_broker::stomp::{Command, Frame};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long all expected messages may take to arrive.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one poll of a consumer waits for a frame before trying the next consumer.
const POLL: Duration = Duration::from_millis(100);
/// How long to watch for a frame that must not come.
const QUIET: Duration = Duration::from_millis(500);

/// Sends one grouped message (body `<group>-<seq>`) and waits for its receipt.
fn send_grouped(producer: &mut Conn, queue: &str, group: &str, seq: usize, close: bool) {
    let receipt = format!("{group}-{seq}");
    let mut f = Frame::new(Command::Send)
        .header("destination", queue)
        .header("receipt", receipt.clone())
        .header("JMSXGroupID", group)
        .with_body(format!("{group}-{seq}"));
    if close {
        f = f.header("JMSXGroupSeq", "-1");
    }
    producer.send(&f);
    let r = producer.expect(Command::Receipt);
    assert_eq!(r.get("receipt-id"), Some(receipt.as_str()));
}

/// Reads MESSAGE frames from every consumer until `count` arrived in all; returns them per consumer.
fn collect(consumers: &mut [Conn], count: usize) -> Vec<Vec<Frame>> {
    let mut got: Vec<Vec<Frame>> = consumers.iter().map(|_| Vec::new()).collect();
    let deadline = Deadline::after(format!("all {count} messages"), DELIVERY_TIMEOUT);
    while got.iter().map(Vec::len).sum::<usize>() < count {
        deadline.check(|| format!("only {} arrived", got.iter().map(Vec::len).sum::<usize>()));
        for (i, c) in consumers.iter_mut().enumerate() {
            while let Some(f) = c.read_frame(POLL) {
                assert_eq!(f.command, Command::Message, "unexpected frame {:?}", f.headers);
                got[i].push(f);
            }
        }
    }
    got
}

/// `(group, seq)` of a body `<group>-<seq>`.
fn group_and_seq(f: &Frame) -> (String, usize) {
    let body = body_text(f);
    let (g, s) = body.rsplit_once('-').expect("body <group>-<seq>");
    (g.to_string(), s.parse().expect("seq"))
}

fn first_for_consumer(f: &Frame) -> bool {
    f.get("JMSXGroupFirstForConsumer") == Some("true")
}

fn subscribed(broker: &Broker, queue: &str, ack: &str, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|i| {
            let mut c = broker.connect();
            c.subscribe(&format!("s{i}"), queue, ack, &[]);
            c
        })
        .collect()
}

#[test]
fn given_three_consumers_when_six_groups_are_sent_should_pin_each_group_to_one_consumer_in_order() {
    let broker = Broker::start("groups-pin", "");
    let queue = "/queue/groups-pin";
    let mut consumers = subscribed(&broker, queue, "auto", 3);
    let mut producer = broker.connect();
    for seq in 0..10 {
        for g in 0..6 {
            send_grouped(&mut producer, queue, &format!("g{g}"), seq, false);
        }
    }
    let got = collect(&mut consumers, 60);
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, frames) in got.iter().enumerate() {
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for f in frames {
            let (group, seq) = group_and_seq(f);
            assert_eq!(*owner.entry(group.clone()).or_insert(i), i, "group {group} reached two consumers");
            if let Some(prev) = last.insert(group.clone(), seq) {
                assert!(seq > prev, "group {group} out of order at consumer {i}: {seq} after {prev}");
            }
            assert_eq!(first_for_consumer(f), seq == 0, "JMSXGroupFirstForConsumer on {group}-{seq}");
        }
        assert_eq!(frames.len(), 20, "consumer {i} should own 2 of 6 groups");
    }
    assert_eq!(owner.len(), 6);
}

#[test]
fn given_group_owner_disconnects_should_move_its_groups_in_order_flagged_first() {
    let broker = Broker::start("groups-move", "");
    let queue = "/queue/groups-move";
    let mut consumers = subscribed(&broker, queue, "client-individual", 2);
    let mut producer = broker.connect();
    for seq in 0..3 {
        send_grouped(&mut producer, queue, "g", seq, false);
    }
    let got = collect(&mut consumers, 3);
    let owner = got.iter().position(|f| !f.is_empty()).expect("an owner");
    assert_eq!(got[owner].iter().map(|f| group_and_seq(f).1).collect::<Vec<_>>(), vec![0, 1, 2]);
    // The owner goes away holding all three unacknowledged.
    let gone = consumers.remove(owner);
    gone.disconnect();
    let moved = collect(&mut consumers, 3).remove(0);
    assert_eq!(moved.iter().map(|f| group_and_seq(f).1).collect::<Vec<_>>(), vec![0, 1, 2], "redelivered in order");
    assert!(first_for_consumer(&moved[0]), "the new owner's first message of the group: {:?}", moved[0].headers);
    assert!(moved[1..].iter().all(|f| !first_for_consumer(f)));
    assert!(moved.iter().all(|f| f.get("redelivered") == Some("true")));
    send_grouped(&mut producer, queue, "g", 3, false);
    let next = collect(&mut consumers, 1).remove(0);
    assert_eq!(group_and_seq(&next[0]).1, 3);
    assert!(!first_for_consumer(&next[0]));
}

#[test]
fn given_group_closed_by_seq_minus_one_should_bind_the_next_message_afresh() {
    let broker = Broker::start("groups-close", "");
    let queue = "/queue/groups-close";
    let mut consumers = subscribed(&broker, queue, "auto", 2);
    let mut producer = broker.connect();
    send_grouped(&mut producer, queue, "g", 0, false);
    send_grouped(&mut producer, queue, "g", 1, true);
    let got = collect(&mut consumers, 2);
    let first = got.iter().position(|f| f.len() == 2).expect("both at one consumer");
    assert!(first_for_consumer(&got[first][0]) && !first_for_consumer(&got[first][1]));
    // Closed: the next message binds afresh, to the other consumer (both own no group; round robin).
    send_grouped(&mut producer, queue, "g", 2, false);
    let got = collect(&mut consumers, 1);
    assert_eq!(got[1 - first].len(), 1, "the next message binds afresh to the other consumer");
    assert!(first_for_consumer(&got[1 - first][0]));
}

#[test]
fn given_max_groups_when_more_groups_come_should_evict_idle_bindings_and_count_them() {
    let broker = Broker::start("groups-evict", "grouping:\n  maxGroups: 2\n");
    let queue = "/queue/groups-evict";
    let mut consumers = subscribed(&broker, queue, "auto", 1);
    let mut producer = broker.connect();
    for g in 0..5 {
        send_grouped(&mut producer, queue, &format!("g{g}"), 0, false);
    }
    let got = collect(&mut consumers, 5).remove(0);
    assert!(got.iter().all(first_for_consumer));
    eventually("three evictions counted", DELIVERY_TIMEOUT, || {
        metric_value(broker.admin_port, "duomq_group_bindings_evicted_total ") == 3
    });
    // g0 was evicted: its next message starts a new binding.
    send_grouped(&mut producer, queue, "g0", 1, false);
    let again = collect(&mut consumers, 1).remove(0);
    assert!(first_for_consumer(&again[0]));
    assert!(consumers[0].read_frame(QUIET).is_none());
}

/// The same with duomq's Rust client (`duomq_broker::client`): three consumers, a producer
/// of 12 groups; one consumer leaves and its groups move, flagged, in order; a group closed
/// with `JMSXGroupSeq: -1` binds afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_rust_client_should_see_groups_pinned_moved_flagged_and_closed() {
    use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions, Subscription};
    let broker = Broker::start("groups-rust-client", "");
    let url = format!("stomp://127.0.0.1:{}", broker.stomp_port);
    let mut consumers: Vec<(Client, Subscription)> = Vec::new();
    for _ in 0..3 {
        let c = Client::connect(&url, ClientOptions::default()).await.expect("connect a consumer");
        let s = c.subscribe("/queue/rust-groups", AckMode::ClientIndividual, Some(100)).await.expect("subscribe");
        consumers.push((c, s));
    }
    let producer = Client::connect(&url, ClientOptions::default()).await.expect("connect the producer");
    let send = |group: String, seq: usize, close: bool| {
        let mut headers = vec![("JMSXGroupID".to_string(), group.clone())];
        if close {
            headers.push(("JMSXGroupSeq".to_string(), "-1".to_string()));
        }
        let producer = &producer;
        async move {
            let options = SendOptions { persistent: true, receipt: true, headers, ..SendOptions::default() };
            producer.send("/queue/rust-groups", format!("{group}-{seq}"), options).await.expect("send");
        }
    };
    for seq in 0..5 {
        for g in 0..12 {
            send(format!("g{g}"), seq, false).await;
        }
    }
    // Every consumer drains what it got: (group, seq, first-flag) in arrival order.
    async fn drain(c: &Client, s: &mut Subscription, want: usize, wait: Duration, out: &mut Vec<(String, usize, bool)>) {
        while out.len() < want {
            let Ok(Some(m)) = tokio::time::timeout(wait, s.recv()).await else { break };
            let body = String::from_utf8_lossy(&m.body).into_owned();
            let (g, seq) = body.split_once('-').expect("group-seq body");
            let first = m.headers.iter().any(|(k, v)| k == "JMSXGroupFirstForConsumer" && v == "true");
            out.push((g.to_string(), seq.parse().expect("seq"), first));
            c.ack(&m).await.expect("ack");
        }
    }
    let mut got: Vec<Vec<(String, usize, bool)>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for (i, (c, s)) in consumers.iter_mut().enumerate() {
        drain(c, s, 20, Duration::from_secs(10), &mut got[i]).await;
    }
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, seen) in got.iter().enumerate() {
        assert_eq!(seen.len(), 20, "4 groups of 5 on each consumer: {seen:?}");
        for (g, seq, first) in seen {
            assert_eq!(*owner.entry(g.clone()).or_insert(i), i, "group {g} reached two consumers");
            assert_eq!(*first, *seq == 0, "only a group's first message is flagged: {g}-{seq}");
        }
        for g in owner.iter().filter(|(_, c)| **c == i).map(|(g, _)| g) {
            let seqs: Vec<usize> = seen.iter().filter(|(x, _, _)| x == g).map(|(_, s, _)| *s).collect();
            assert_eq!(seqs, (0..5).collect::<Vec<_>>(), "group {g} in order");
        }
    }
    // Consumer 0 leaves: its groups move to the others, flagged on their next message.
    let (leaver, sub) = consumers.remove(0);
    drop(sub);
    leaver.disconnect().await.expect("disconnect");
    let moved: Vec<String> = owner.iter().filter(|(_, c)| **c == 0).map(|(g, _)| g.clone()).collect();
    for g in &moved {
        send(g.clone(), 5, false).await;
    }
    // One of the others' groups is closed, then sent again: it binds afresh, flagged.
    let kept = owner.iter().find(|(_, c)| **c == 1).map(|(g, _)| g.clone()).expect("a group of consumer 1");
    send(kept.clone(), 5, true).await;
    send(kept.clone(), 6, false).await;
    let mut after: Vec<(String, usize, bool)> = Vec::new();
    let deadline = Deadline::after("the moved groups' and the reopened group's messages", DELIVERY_TIMEOUT);
    while after.len() < moved.len() + 2 && !deadline.passed() {
        for (c, s) in consumers.iter_mut() {
            let mut one = Vec::new();
            drain(c, s, 1, POLL, &mut one).await;
            after.extend(one);
        }
    }
    for g in &moved {
        let firsts: Vec<bool> = after.iter().filter(|(x, _, _)| x == g).map(|(_, _, f)| *f).collect();
        assert_eq!(firsts, vec![true], "{g} moved with its first message flagged: {after:?}");
    }
    let closed: Vec<(usize, bool)> = after.iter().filter(|(x, _, _)| *x == kept).map(|(_, s, f)| (*s, *f)).collect();
    assert_eq!(closed, vec![(5, false), (6, true)], "closing keeps the message, the next one binds afresh");
}
