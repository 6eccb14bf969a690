//! JMS selectors (SUBSCRIBE's `selector` header) against the real broker process, driven
//! by stomp.py and the raw test client: competing selecting consumers on a queue each get
//! exactly their messages and what nobody selects waits for a later plain consumer; a
//! topic subscriber gets only the copies it selects (and `/metrics` counts each
//! evaluation); JMS header names (`JMSPriority`, `JMSDeliveryMode`) read their STOMP
//! headers; a browser sees only what it selects; a bad selector gets an ERROR naming the
//! position.

mod common;

use common::{body_text, eventually, metric_value, stomppy, Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::{Command, Frame};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a frame that must not come is waited for.
const QUIET: Duration = Duration::from_millis(800);

/// stomp.py helpers: a listener that records every frame, and `drain` that returns what
/// arrived until nothing did for a second.
const PRELUDE: &str = r#"
import json, os, queue, threading
import stomp

port = int(os.environ["PORT"])
events = queue.Queue()
receipts = set()
receipted = threading.Condition()

class Listener(stomp.ConnectionListener):
    def on_receipt(self, frame):
        events.put(("RECEIPT", frame.headers, frame.body))
        with receipted:
            receipts.add(frame.headers.get("receipt-id"))
            receipted.notify_all()
    def on_message(self, frame): events.put(("MESSAGE", frame.headers, frame.body))
    def on_error(self, frame): events.put(("ERROR", frame.headers, frame.body))

def connect():
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0), reconnect_attempts_max=1)
    conn.set_listener("l", Listener())
    conn.connect(wait=True)
    return conn

def wait_receipts(*ids, timeout=30):
    # stomp.py does not wait for a SUBSCRIBE's receipt: sends on another connection could
    # otherwise reach the broker before the subscription.
    with receipted:
        if not receipted.wait_for(lambda: receipts.issuperset(ids), timeout):
            raise SystemExit("no RECEIPT for %s within %ss" % (sorted(set(ids) - receipts), timeout))

def drain(quiet=1.0):
    out = []
    while True:
        try:
            kind, headers, body = events.get(timeout=quiet)
        except queue.Empty:
            return out
        out.append({"kind": kind, "headers": dict(headers), "body": body})

def send_all(conn, destination, messages):
    for body, headers in messages:
        conn.send(destination, body, headers=headers, receipt="r-" + body)
"#;

/// Bodies of the MESSAGEs stomp.py got on subscription `id`.
fn bodies(events: &serde_json::Value, id: &str) -> BTreeSet<String> {
    kinds(events, "MESSAGE")
        .filter(|e| e["headers"]["subscription"] == id)
        .map(|e| e["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn kinds<'a>(events: &'a serde_json::Value, kind: &'a str) -> impl Iterator<Item = &'a serde_json::Value> {
    events.as_array().into_iter().flatten().filter(move |e| e["kind"] == kind)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every message `conn` gets until none comes for [`QUIET`], acknowledged.
fn receive_until_quiet(conn: &mut Conn) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    while let Some(f) = conn.read_frame(QUIET) {
        assert_eq!(f.command, Command::Message, "{:?}", f.headers);
        if f.get("ack").is_some() {
            conn.ack(&f, false);
        }
        got.insert(body_text(&f));
    }
    got
}

const QUEUE_CONSUMERS: &str = r#"
conn = connect()
conn.subscribe("/queue/orders", id="eu", ack="auto", headers={"selector": "region = 'eu'"}, receipt="sub-eu")
conn.subscribe("/queue/orders", id="us-big", ack="auto", headers={"selector": "region = 'us' AND amount > 100"}, receipt="sub-us")
wait_receipts("sub-eu", "sub-us")
send_all(connect(), "/queue/orders", [
    ("m1", {"region": "eu", "amount": "50"}),
    ("m2", {"region": "us", "amount": "150", "persistent": "true"}),
    ("m3", {"region": "us", "amount": "50"}),
    ("m4", {"region": "eu", "amount": "500", "persistent": "true"}),
    ("m5", {"region": "apac", "amount": "1000"}),
    ("m6", {}),
    ("m7", {"region": "us", "amount": "lots"}),
    ("m8", {"region": "us", "amount": "101"}),
    ("m9", {"region": "EU"}),
])
print(json.dumps(drain()))
"#;

#[test]
fn given_two_selecting_consumers_on_a_queue_should_each_get_exactly_theirs_and_leave_the_rest_for_a_later_consumer() {
    let b = Broker::start("selector-queue", "");
    let events = stomppy(&format!("{PRELUDE}{QUEUE_CONSUMERS}"), b.stomp_port, &[]);
    println!("stomp.py saw: {events:#}");
    assert_eq!(kinds(&events, "RECEIPT").count(), 11, "two SUBSCRIBEs and nine SENDs receipted");
    assert_eq!(kinds(&events, "ERROR").count(), 0);
    assert_eq!(bodies(&events, "eu"), set(&["m1", "m4"]));
    assert_eq!(bodies(&events, "us-big"), set(&["m2", "m8"]), "'lots' is no number: unknown, not selected");

    // Nobody selected the other five: they wait for a later consumer, which gets them all.
    eventually("the selecting consumers' deliveries settled", FRAME_TIMEOUT, || b.queue_depth("/queue/orders") == 5);
    let mut plain = b.connect();
    plain.subscribe("later", "/queue/orders", "client-individual", &[]);
    assert_eq!(receive_until_quiet(&mut plain), set(&["m3", "m5", "m6", "m7", "m9"]));
    eventually("the queue emptied", FRAME_TIMEOUT, || b.queue_depth("/queue/orders") == 0);
}

const TOPIC_SUBSCRIBERS: &str = r#"
conn = connect()
conn.subscribe("/topic/prices", id="acme", ack="auto", headers={"selector": "symbol = 'ACME' AND price >= 10.5"}, receipt="sub-acme")
conn.subscribe("/topic/prices", id="all", ack="auto", receipt="sub-all")
wait_receipts("sub-acme", "sub-all")
send_all(connect(), "/topic/prices", [
    ("p1", {"symbol": "ACME", "price": "10.5"}),
    ("p2", {"symbol": "ACME", "price": "9.99"}),
    ("p3", {"symbol": "INIT", "price": "20"}),
    ("p4", {"symbol": "ACME", "price": "1.1e1"}),
    ("p5", {"symbol": "ACME"}),
])
print(json.dumps(drain()))
"#;

#[test]
fn given_a_topic_subscriber_with_a_selector_should_get_only_the_copies_it_selects() {
    let b = Broker::start("selector-topic", "");
    let events = stomppy(&format!("{PRELUDE}{TOPIC_SUBSCRIBERS}"), b.stomp_port, &[]);
    println!("stomp.py saw: {events:#}");
    assert_eq!(kinds(&events, "RECEIPT").count(), 7);
    assert_eq!(bodies(&events, "acme"), set(&["p1", "p4"]));
    assert_eq!(bodies(&events, "all"), set(&["p1", "p2", "p3", "p4", "p5"]), "a plain subscriber is unaffected");
    // Each copy is evaluated once, at fan-out: the others are never queued.
    let evaluations = |result: &str| metric_value(b.admin_port, &format!("duomq_selector_evaluations_total{{result=\"{result}\"}} "));
    assert_eq!((evaluations("match"), evaluations("nomatch")), (2, 3));
}

const BAD_SELECTOR: &str = r#"
conn = connect()
conn.subscribe("/queue/orders", id="bad", ack="auto", headers={"selector": "region = 'eu' AND amount >"}, receipt="sub-bad")
print(json.dumps(drain()))
"#;

#[test]
fn given_a_bad_selector_should_answer_an_error_naming_the_position() {
    let b = Broker::start("selector-bad", "");
    let events = stomppy(&format!("{PRELUDE}{BAD_SELECTOR}"), b.stomp_port, &[]);
    println!("stomp.py saw: {events:#}");
    let errors: Vec<_> = kinds(&events, "ERROR").collect();
    assert_eq!(errors.len(), 1, "{events:#}");
    assert_eq!(errors[0]["headers"]["message"], "invalid selector");
    assert_eq!(
        errors[0]["body"].as_str().unwrap_or_default().trim(),
        "selector error at position 27: expected a value after '>', found the end of the selector"
    );
    assert_eq!(kinds(&events, "RECEIPT").count(), 0, "the SUBSCRIBE was refused");

    // The raw client sees the same; the broker goes on serving others.
    let mut c = b.connect();
    c.send(&Frame::new(Command::Subscribe).header("id", "s").header("destination", "/queue/orders").header("selector", "(a = 1"));
    let error = c.expect(Command::Error);
    assert_eq!(error.get("message"), Some("invalid selector"));
    assert!(body_text(&error).contains("position 7: expected ')' to close the '(' at position 1"), "{}", body_text(&error));
    assert!(c.closed_within(FRAME_TIMEOUT));
    let mut producer = b.connect();
    producer.send_receipted("/queue/orders", "kept", false);
    assert_eq!(b.queue_depth("/queue/orders"), 1);
}

/// SEND with headers, receipted.
fn send_with(conn: &mut Conn, destination: &str, body: &str, headers: &[(&str, &str)]) {
    let mut f = Frame::new(Command::Send).header("destination", destination).header("receipt", format!("r-{body}")).with_body(body.to_string());
    for (k, v) in headers {
        f = f.header(*k, *v);
    }
    conn.send(&f);
    assert_eq!(conn.expect(Command::Receipt).get("receipt-id"), Some(format!("r-{body}").as_str()));
}

#[test]
fn given_jms_header_names_should_select_on_priority_and_delivery_mode() {
    let b = Broker::start("selector-jms", "");
    let mut producer = b.connect();
    let queue = "/queue/jms";
    send_with(&mut producer, queue, "p9-persistent", &[("priority", "9"), ("persistent", "true")]);
    send_with(&mut producer, queue, "p9-transient", &[("priority", "9")]);
    send_with(&mut producer, queue, "p7-persistent", &[("priority", "7"), ("persistent", "true")]);
    send_with(&mut producer, queue, "default-priority", &[("persistent", "true")]);
    send_with(&mut producer, queue, "p3-persistent", &[("priority", "3"), ("persistent", "true")]);

    let mut urgent = b.connect();
    urgent.subscribe("urgent", queue, "client-individual", &[("selector", "JMSPriority >= 7 AND JMSDeliveryMode = 'PERSISTENT'")]);
    assert_eq!(receive_until_quiet(&mut urgent), set(&["p9-persistent", "p7-persistent"]));
    let mut normal = b.connect();
    normal.subscribe("normal", queue, "client-individual", &[("selector", "JMSPriority = 4")]);
    assert_eq!(receive_until_quiet(&mut normal), set(&["default-priority"]), "no priority header reads as JMS's default, 4");
    let mut transient = b.connect();
    transient.subscribe("transient", queue, "client-individual", &[("selector", "jmsdeliverymode = 'NON_PERSISTENT' OR JMSDeliveryMode = 'NON_PERSISTENT'")]);
    assert_eq!(receive_until_quiet(&mut transient), set(&["p9-transient"]));
    eventually("only p3 left", FRAME_TIMEOUT, || b.queue_depth(queue) == 1);
}

#[test]
fn given_a_browser_with_a_selector_should_see_only_what_it_selects() {
    let b = Broker::start("selector-browse", "");
    let mut producer = b.connect();
    for (body, region) in [("b1", "eu"), ("b2", "us"), ("b3", "eu")] {
        send_with(&mut producer, "/queue/browsed", body, &[("region", region)]);
    }
    let mut browser = b.connect();
    browser.subscribe("peek", "/queue/browsed", "auto", &[("browser", "true"), ("selector", "region = 'eu'")]);
    let mut seen = Vec::new();
    loop {
        let f = browser.expect(Command::Message);
        if f.get("browser") == Some("end") {
            break;
        }
        seen.push(body_text(&f));
    }
    assert_eq!(seen, ["b1", "b3"]);
    assert_eq!(b.queue_depth("/queue/browsed"), 3, "browsing took nothing");
}
