//! Durable topic subscriptions against the real broker process, driven by stomp.py:
//! what is published while the subscriber is away arrives when it comes back (ActiveMQ's
//! `activemq.subscriptionName` and Artemis's `durable-subscription-name` alike), and
//! survives kill -9 of the broker and a failover to the promoted backup; a selector keeps
//! only what it selects; UNSUBSCRIBE with the name removes the subscription and its
//! messages; a second consumer is refused; a plain topic subscriber still misses what is
//! published while it is away. With `addressFullPolicy: page` on its topic, an away
//! subscription's backlog is paged, survives kill -9 paged, and arrives in order.

mod common;

use common::stomppy::{client, session, Seen};
use common::{metric_value, Broker, Conn};
use duomq_broker::stomp::{Command, Frame};
use serde_json::{json, Value};

const TOPIC: &str = "/topic/prices";
/// How long a message that must come is waited for, in seconds.
const ARRIVE: f64 = 15.0;
/// How long a message that must not come is waited for, in seconds.
const QUIET: f64 = 1.5;

fn durable_subscribe(id: &str, name: &str) -> Value {
    json!({ "op": "subscribe", "destination": TOPIC, "id": id, "headers": { "activemq.subscriptionName": name } })
}

fn send(body: &str, persistent: bool) -> Value {
    json!({ "op": "send", "destination": TOPIC, "body": body, "persistent": persistent })
}

fn receive(count: usize) -> Value {
    json!({ "op": "receive", "count": count, "seconds": ARRIVE })
}

fn quiet() -> Value {
    json!({ "op": "quiet", "seconds": QUIET })
}

fn disconnect() -> Value {
    json!({ "op": "disconnect" })
}

fn on(b: &Broker, headers: Value, steps: Value) -> Seen {
    let seen = session("127.0.0.1", b.stomp_port, headers, steps);
    let bodies: Vec<String> = seen.messages.iter().map(|m| m.chars().take(16).collect()).collect();
    println!("stomp.py saw: {bodies:?} errors {:?}", seen.errors);
    seen
}

/// Publishes `bodies` (persistent as `persistent` says) to [`TOPIC`], each receipted.
fn publish(b: &Broker, bodies: &[(&str, bool)]) {
    let mut steps: Vec<Value> = bodies.iter().map(|(body, persistent)| send(body, *persistent)).collect();
    steps.push(disconnect());
    let seen = on(b, json!({}), Value::Array(steps));
    assert!(seen.errors.is_empty(), "publishing failed: {:?}", seen.errors);
}

/// The `/status` entry of durable subscription (`client_id`, `name`).
fn durable_status(status: &Value, client_id: &str, name: &str) -> Option<Value> {
    status["durableSubscriptions"]
        .as_array()
        .and_then(|subs| subs.iter().find(|d| d["clientId"] == client_id && d["name"] == name))
        .cloned()
}

#[test]
fn given_durable_subscriber_away_should_get_what_was_published_meanwhile_and_a_plain_subscriber_should_not() {
    let b = Broker::start("durable-away", "");
    // ActiveMQ's header, detached by a plain UNSUBSCRIBE; Artemis's header, detached by
    // the connection's end; a plain subscriber.
    let first = on(
        &b,
        client("app-1"),
        json!([durable_subscribe("s1", "prices-feed"), { "op": "unsubscribe", "id": "s1" }, disconnect()]),
    );
    assert_eq!(first.done, 3, "{:?}", first.raw);
    let artemis = json!({ "op": "subscribe", "destination": TOPIC, "id": "a1", "headers": { "durable-subscription-name": "audit" } });
    assert_eq!(on(&b, client("app-2"), json!([artemis, disconnect()])).done, 2);
    let plain = json!({ "op": "subscribe", "destination": TOPIC, "id": "p1" });
    assert_eq!(on(&b, json!({}), json!([plain, disconnect()])).done, 2);

    publish(&b, &[("m1", true), ("m2", false), ("m3", true)]);
    let status = b.status();
    let feed = durable_status(&status, "app-1", "prices-feed").expect("app-1's subscription in /status");
    assert_eq!((feed["topic"].as_str(), feed["depth"].as_u64(), feed["consumerAttached"].as_bool()), (Some(TOPIC), Some(3), Some(false)));
    assert_eq!(durable_status(&status, "app-2", "audit").expect("app-2's subscription")["depth"], 3);
    assert_eq!(metric_value(b.admin_port, "duomq_durable_subscriptions "), 2);

    let back = on(&b, client("app-1"), json!([durable_subscribe("s2", "prices-feed"), receive(3), quiet(), disconnect()]));
    assert_eq!(back.messages, ["m1", "m2", "m3"], "persistent and non-persistent alike, in order");
    let artemis = json!({ "op": "subscribe", "destination": TOPIC, "id": "a2", "headers": { "durable-subscription-name": "audit" } });
    assert_eq!(on(&b, client("app-2"), json!([artemis, receive(3), disconnect()])).messages, ["m1", "m2", "m3"]);
    let plain = json!({ "op": "subscribe", "destination": TOPIC, "id": "p2" });
    let missed = on(&b, json!({}), json!([plain, quiet(), disconnect()]));
    assert!(missed.messages.is_empty(), "a plain topic subscriber got what was published while it was away: {:?}", missed.messages);
    // Acknowledged: nothing is kept any more, and the subscriptions stay.
    let status = b.status();
    assert_eq!(durable_status(&status, "app-1", "prices-feed").expect("still there")["depth"], 0);
    assert_eq!(durable_status(&status, "app-2", "audit").expect("still there")["depth"], 0);
}

#[test]
fn given_broker_killed_should_keep_the_subscription_and_its_persistent_messages() {
    let mut b = Broker::start("durable-crash", "");
    assert_eq!(on(&b, client("app-3"), json!([durable_subscribe("s", "ledger"), disconnect()])).done, 2);
    publish(&b, &[("p1", true), ("n1", false), ("p2", true)]);
    b.restart();
    let status = b.status();
    assert_eq!(
        durable_status(&status, "app-3", "ledger").expect("the subscription was recovered")["depth"],
        2,
        "the persistent messages were recovered, the non-persistent one was not: {status}"
    );
    // Published after the restart with nobody connected: kept, because the definition was recovered.
    publish(&b, &[("p3", true)]);
    b.restart();
    let got = on(&b, client("app-3"), json!([durable_subscribe("s", "ledger"), receive(3), quiet(), disconnect()]));
    assert_eq!(got.messages, ["p1", "p2", "p3"]);
    // Acknowledged before the crash: never again.
    b.restart();
    let again = on(&b, client("app-3"), json!([durable_subscribe("s", "ledger"), quiet(), disconnect()]));
    assert!(again.messages.is_empty(), "acknowledged messages came back: {:?}", again.messages);
    assert_eq!(metric_value(b.admin_port, "duomq_durable_subscriptions "), 1);
}

#[test]
fn given_live_killed_should_find_the_subscription_and_its_messages_on_the_promoted_backup() {
    let (_root, mut a, b) = common::cluster::synced_pair("duomq-durable-pair-", "a-long-random-cluster-password");

    let subscribe = json!([durable_subscribe("s", "orders"), disconnect()]);
    assert_eq!(session(&a.ip, a.stomp, client("app-4"), subscribe).done, 2);
    let sends = json!([send("o1", true), send("o2", true), send("o3", true), disconnect()]);
    assert!(session(&a.ip, a.stomp, json!({}), sends).errors.is_empty());
    a.kill9();
    b.wait_live();
    b.wait_for("holding the durable subscription", |s| durable_status(s, "app-4", "orders").is_some_and(|d| d["depth"] == 3));
    let got = session(&b.ip, b.stomp, client("app-4"), json!([durable_subscribe("s", "orders"), receive(3), disconnect()]));
    assert_eq!(got.messages, ["o1", "o2", "o3"], "errors: {:?}", got.errors);
}

#[test]
fn given_unsubscribe_with_the_name_should_remove_the_subscription_and_its_messages() {
    let mut b = Broker::start("durable-unsubscribe", "");
    assert_eq!(on(&b, client("app-5"), json!([durable_subscribe("s", "reports"), disconnect()])).done, 2);
    publish(&b, &[("old-1", true), ("old-2", false)]);
    let remove = json!({ "op": "unsubscribe", "id": "s", "headers": { "activemq.subscriptionName": "reports" } });
    let removed = on(&b, client("app-5"), json!([remove, disconnect()]));
    assert_eq!(removed.done, 2, "{:?}", removed.raw);
    assert!(durable_status(&b.status(), "app-5", "reports").is_none(), "still listed after UNSUBSCRIBE with its name");
    assert_eq!(metric_value(b.admin_port, "duomq_durable_subscriptions "), 0);
    publish(&b, &[("between", true)]);
    // Its journal records were acknowledged: a restart brings back neither it nor its messages.
    b.restart();
    assert!(durable_status(&b.status(), "app-5", "reports").is_none(), "the removed subscription was recovered");
    let fresh = on(&b, client("app-5"), json!([durable_subscribe("s", "reports"), quiet(), disconnect()]));
    assert!(fresh.messages.is_empty(), "a new subscription of the same name got old messages: {:?}", fresh.messages);
    publish(&b, &[("new-1", true)]);
    let got = on(&b, client("app-5"), json!([durable_subscribe("s", "reports"), receive(1), quiet(), disconnect()]));
    assert_eq!(got.messages, ["new-1"]);
}

#[test]
fn given_a_second_consumer_or_no_client_id_should_refuse_the_durable_subscribe() {
    let b = Broker::start("durable-refused", "");
    // The first consumer stays attached over a raw connection.
    let mut holder = Conn::connect(b.stomp_port, &[("accept-version", "1.2"), ("host", "/"), ("client-id", "app-6")]);
    holder.subscribe("s", TOPIC, "client-individual", &[("activemq.subscriptionName", "alerts")]);
    let second = on(&b, client("app-6"), json!([durable_subscribe("s2", "alerts"), disconnect()]));
    assert_eq!(second.done, 0);
    assert!(
        second.errors.first().is_some_and(|e| e.contains("\"alerts\"") && e.contains("already has a consumer")),
        "{:?}",
        second.errors
    );
    // The refusal took nothing from the first: it still gets what is published.
    publish(&b, &[("a1", true)]);
    let m = holder.expect(Command::Message);
    assert_eq!(common::body_text(&m), "a1");
    holder.ack(&m, true);
    // Detached, another consumer may attach at once.
    holder.send(&Frame::new(Command::Unsubscribe).header("id", "s").header("receipt", "gone"));
    holder.expect(Command::Receipt);
    let next = on(&b, client("app-6"), json!([durable_subscribe("s3", "alerts"), quiet(), disconnect()]));
    assert!(next.errors.is_empty() && next.messages.is_empty(), "{:?}", next.raw);

    let anonymous = on(&b, json!({}), json!([durable_subscribe("s", "alerts"), disconnect()]));
    assert!(anonymous.errors.first().is_some_and(|e| e.contains("client-id")), "{:?}", anonymous.errors);
}

#[test]
fn given_a_durable_subscription_with_a_selector_should_keep_only_what_it_selects_across_a_restart() {
    let mut b = Broker::start("durable-selector", "");
    let selecting = |selector: &str| {
        json!({ "op": "subscribe", "destination": TOPIC, "id": "s", "headers": { "activemq.subscriptionName": "dear", "selector": selector } })
    };
    let priced = |body: &str, price: u32| json!({ "op": "send", "destination": TOPIC, "body": body, "persistent": true, "headers": { "price": price.to_string() } });
    assert_eq!(on(&b, client("app-7"), json!([selecting("price > 10"), disconnect()])).done, 2);
    let sent = on(&b, json!({}), json!([priced("cheap-1", 5), priced("dear-1", 20), priced("cheap-2", 10), priced("dear-2", 11), disconnect()]));
    assert!(sent.errors.is_empty(), "{:?}", sent.errors);
    b.restart();
    let recovered = durable_status(&b.status(), "app-7", "dear").expect("the subscription was recovered");
    assert_eq!((recovered["depth"].as_u64(), recovered["selector"].as_str()), (Some(2), Some("price > 10")), "{recovered}");
    let got = on(&b, client("app-7"), json!([selecting("price > 10"), receive(2), quiet(), disconnect()]));
    assert_eq!(got.messages, ["dear-1", "dear-2"]);
    // Another selector makes it another subscription: what the old one kept is dropped.
    assert!(on(&b, json!({}), json!([priced("dear-3", 30), disconnect()])).errors.is_empty());
    let changed = on(&b, client("app-7"), json!([selecting("price > 100"), quiet(), disconnect()]));
    assert!(changed.errors.is_empty() && changed.messages.is_empty(), "{:?}", changed.raw);
    assert_eq!(durable_status(&b.status(), "app-7", "dear").expect("listed")["selector"], "price > 100");
    // A selector that does not parse is refused, as on any subscription.
    let bad = on(&b, client("app-7"), json!([selecting("price >"), disconnect()]));
    assert_eq!(bad.errors, ["invalid selector"]);
}

#[test]
fn given_durable_subscription_full_while_away_should_hold_producers_back_and_keep_its_whole_backlog() {
    // A plain subscriber this far behind would be cut off (slowTopicSubscriber: disconnect);
    // a durable subscription is a queue: with addressFullPolicy block its producers wait,
    // then are refused, and what it holds stays (with page, the default, it would page).
    let b = Broker::start(
        "durable-full",
        "memory:\n  maxQueueBytes: 64KiB\n  maxBrokerBytes: 1MiB\n  producerBlockTimeout: 300ms\n  slowTopicSubscriber: disconnect\n\
         addressSettings:\n  - match: /topic/prices\n    addressFullPolicy: block\n",
    );
    assert_eq!(on(&b, client("app-8"), json!([durable_subscribe("s", "bulk"), disconnect()])).done, 2);
    let big = json!({ "op": "send", "destination": TOPIC, "body": "x", "size": 4096, "persistent": true });
    let sends: Vec<Value> = (0..40).map(|_| big.clone()).collect();
    let producer = on(&b, json!({}), Value::Array(sends));
    let stored = producer.done;
    assert!((5..40).contains(&stored), "the producer was never held back: {stored} of 40 stored");
    assert!(producer.errors.first().is_some_and(|e| e.contains("destination is full")), "{:?}", producer.errors);
    assert_eq!(durable_status(&b.status(), "app-8", "bulk").expect("listed")["depth"], stored as u64);
    assert_eq!(metric_value(b.admin_port, "duomq_slow_topic_subscribers_disconnected "), 0);
    let got = on(&b, client("app-8"), json!([durable_subscribe("s", "bulk"), receive(stored), quiet(), disconnect()]));
    assert_eq!(got.messages.len(), stored, "every receipted message arrives, and nothing more");
}

#[test]
fn given_a_paging_topic_should_page_an_away_subscription_backlog_and_deliver_it_in_order_after_kill_9() {
    const COUNT: usize = 3000;
    let mut b = Broker::start("durable-paging", "addressSettings:\n  - match: /topic/prices\n    maxSizeBytes: 256KiB\n    addressFullPolicy: page\n");
    let subscriber = [("accept-version", "1.2"), ("host", "/"), ("client-id", "app-9")];
    let mut away = Conn::connect(b.stomp_port, &subscriber);
    away.subscribe("s", TOPIC, "client-individual", &[("activemq.subscriptionName", "backlog")]);
    away.disconnect();
    // Pipelined, the last one receipted: every earlier one is stored once it arrives.
    let mut producer = b.connect();
    let codec = duomq_broker::stomp::StompCodec::new(Default::default());
    let mut bytes = bytes::BytesMut::new();
    for n in 0..COUNT {
        let mut f = Frame::new(Command::Send).header("destination", TOPIC).header("persistent", "true").header("n", n.to_string()).with_body("x".repeat(1024));
        if n == COUNT - 1 {
            f = f.header("receipt", "last");
        }
        codec.encode(&f, &mut bytes);
    }
    producer.send_bytes(&bytes).expect("send");
    producer.expect(Command::Receipt);
    let paged = |b: &Broker| durable_status(&b.status(), "app-9", "backlog").map(|d| (d["depth"].as_u64().unwrap_or(0), d["paged"].as_u64().unwrap_or(0)));
    let (depth, held) = paged(&b).expect("listed");
    assert!(held > COUNT as u64 / 2 && depth + held == COUNT as u64, "most of the backlog is paged: depth {depth}, paged {held}");

    b.kill9();
    b.restart();
    let (depth, held) = paged(&b).expect("recovered");
    assert!(held > COUNT as u64 / 2 && depth + held == COUNT as u64, "recovered paged: depth {depth}, paged {held}");
    let mut back = Conn::connect(b.stomp_port, &subscriber);
    back.subscribe("s", TOPIC, "client-individual", &[("activemq.subscriptionName", "backlog"), ("activemq.prefetchSize", "100")]);
    for n in 0..COUNT {
        let m = back.expect(Command::Message);
        assert_eq!(m.get("n"), Some(n.to_string().as_str()), "lost, doubled or reordered");
        back.ack(&m, false);
    }
    assert_eq!(paged(&b), Some((0, 0)));
}
