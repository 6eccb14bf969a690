//! Browsing (ActiveMQ's STOMP `browser:true`) against the real broker process: a browser
//! sees what a queue holds, waiting or in flight, without taking it; the browse ends with
//! a MESSAGE carrying `browser:end`; a deep queue streams page by page; topics are refused.

mod common;

use common::{body_text, metric_value, Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::{Command, Frame};
use std::time::{Duration, Instant};

/// How long a frame that must not come is waited for.
const QUIET: Duration = Duration::from_millis(800);

fn depth(b: &Broker, queue: &str) -> u64 {
    let series = |name: &str| metric_value(b.admin_port, &format!("{name}{{queue=\"{queue}\"}} "));
    series("duomq_queue_depth") + series("duomq_queue_in_flight")
}

fn browse(c: &mut Conn, id: &str, queue: &str, extra: &[(&str, &str)]) {
    c.subscribe(id, queue, "auto", &[&[("browser", "true")], extra].concat());
}

/// Reads a browse to its end: the bodies seen, in order, and the end frame.
fn browsed(c: &mut Conn) -> (Vec<Frame>, Frame) {
    let mut seen = Vec::new();
    loop {
        let f = c.expect(Command::Message);
        if f.get("browser") == Some("end") {
            return (seen, f);
        }
        seen.push(f);
    }
}

#[test]
fn given_browser_should_see_queued_and_in_flight_messages_without_consuming_them() {
    let b = Broker::start("browse-basic", "");
    let mut producer = b.connect();
    for i in 0..5 {
        producer.send_receipted("/queue/browsed", &format!("m{i}"), i % 2 == 0);
    }
    // A consumer holds m0 unacknowledged: in flight, still the queue's.
    let mut consumer = b.connect();
    consumer.subscribe("c", "/queue/browsed", "client-individual", &[("activemq.prefetchSize", "1")]);
    let m0 = consumer.expect(Command::Message);
    assert_eq!(body_text(&m0), "m0");

    let mut browser = b.connect();
    browse(&mut browser, "peek", "/queue/browsed", &[]);
    let (seen, end) = browsed(&mut browser);
    let bodies: Vec<String> = seen.iter().map(body_text).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    for f in &seen {
        assert_eq!(f.get("subscription"), Some("peek"));
        assert_eq!(f.get("destination"), Some("/queue/browsed"));
        assert!(f.get("message-id").is_some());
        assert_eq!(f.get("ack"), None, "a browsed message needs no ACK");
    }
    assert_eq!(end.get("subscription"), Some("peek"));
    assert!(end.body.is_empty());
    // Nothing was taken, and what arrives after the browse is not shown.
    assert_eq!(depth(&b, "/queue/browsed"), 5);
    producer.send_receipted("/queue/browsed", "m5", false);
    assert!(browser.read_frame(QUIET).is_none(), "the browse went on after its end");

    // The consumer still gets every message, m0 included.
    let mut got = vec![body_text(&m0)];
    let mut last = m0;
    while got.len() < 6 {
        // Prefetch 1: the next message comes once this one is acknowledged.
        let mut arrived = consumer.ack(&last, true);
        if arrived.is_empty() {
            arrived.push(consumer.expect(Command::Message));
        }
        got.extend(arrived.iter().map(body_text));
        last = arrived.pop().expect("a message");
    }
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4", "m5"]);
}

#[test]
fn given_deep_queue_browser_should_stream_it_page_by_page_in_order() {
    let b = Broker::start("browse-deep", "");
    const COUNT: usize = 3000;
    let mut producer = b.connect();
    for i in 0..COUNT {
        let mut f = Frame::new(Command::Send).header("destination", "/queue/deep").with_body(format!("{i:05}-{}", "x".repeat(200)));
        if i + 1 == COUNT {
            f = f.header("receipt", "last");
        }
        producer.send(&f);
    }
    producer.expect(Command::Receipt);
    assert_eq!(depth(&b, "/queue/deep"), COUNT as u64);

    let mut browser = b.connect();
    let started = Instant::now();
    // Pages of 100: thirty of them.
    browse(&mut browser, "deep", "/queue/deep", &[("activemq.prefetchSize", "100")]);
    let (seen, _) = browsed(&mut browser);
    let took = started.elapsed();
    assert_eq!(seen.len(), COUNT);
    let mut previous = None;
    for (i, f) in seen.iter().enumerate() {
        assert!(body_text(f).starts_with(&format!("{i:05}-")), "message {i} out of order");
        let id: u64 = f.get("message-id").and_then(|m| m.parse().ok()).expect("numeric message-id");
        assert!(previous.is_none_or(|p| id > p), "ids not increasing at {i}");
        previous = Some(id);
    }
    println!("browsed {COUNT} messages of 200 bytes in {took:?}");
    assert_eq!(depth(&b, "/queue/deep"), COUNT as u64, "browsing consumed");
}

#[test]
fn given_topic_browser_should_be_refused_and_unknown_queue_browses_empty() {
    let b = Broker::start("browse-topic", "");
    let mut c = b.connect();
    c.send(
        &Frame::new(Command::Subscribe)
            .header("id", "t")
            .header("destination", "/topic/prices")
            .header("browser", "true")
            .header("receipt", "browse-topic"),
    );
    let e = c.expect(Command::Error);
    assert_eq!(e.get("receipt-id"), Some("browse-topic"));
    assert!(body_text(&e).contains("/topic/prices is a topic; only queues can be browsed"), "{e:?}");
    assert!(c.closed_within(FRAME_TIMEOUT));

    let mut c = b.connect();
    browse(&mut c, "empty", "/queue/never-sent-to", &[]);
    let (seen, end) = browsed(&mut c);
    assert!(seen.is_empty());
    assert_eq!(end.get("destination"), Some("/queue/never-sent-to"));
    // The browser is no consumer: a message sent now stays queued.
    let mut producer = b.connect();
    producer.send_receipted("/queue/never-sent-to", "kept", true);
    assert!(c.read_frame(QUIET).is_none());
    assert_eq!(depth(&b, "/queue/never-sent-to"), 1);
    c.send(&Frame::new(Command::Unsubscribe).header("id", "empty").header("receipt", "u"));
    c.expect(Command::Receipt);
}

#[test]
fn given_browser_that_does_not_read_should_be_sent_no_more_than_its_socket_takes() {
    let b = Broker::start("browse-slow", "");
    // 32 MiB queued: far more than loopback socket buffers hold (a few MiB each way).
    const COUNT: usize = 2000;
    let body = "y".repeat(16 * 1024);
    let mut producer = b.connect();
    for i in 0..COUNT {
        let mut f = Frame::new(Command::Send).header("destination", "/queue/slow").with_body(format!("{i:05}-{body}"));
        if i + 1 == COUNT {
            f = f.header("receipt", "last");
        }
        producer.send(&f);
    }
    producer.expect(Command::Receipt);

    let mut browser = b.connect();
    browse(&mut browser, "slow", "/queue/slow", &[("activemq.prefetchSize", "50")]);
    // Not reading: the browse waits for the writer instead of queuing the whole queue.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!b.log_text().contains("browse complete"), "the browse queued everything for a client that reads nothing");
    let (seen, _) = browsed(&mut browser);
    assert_eq!(seen.len(), COUNT);
    assert!(seen.iter().enumerate().all(|(i, f)| body_text(f).starts_with(&format!("{i:05}-"))));
    common::eventually("the browse logged its end", FRAME_TIMEOUT, || b.log_text().contains("browse complete"));
    assert_eq!(depth(&b, "/queue/slow"), COUNT as u64);
}

#[test]
fn given_a_paged_queue_should_browse_the_paged_messages_too_in_order() {
    const COUNT: usize = 400;
    let b = Broker::start("browse-paged", "addressSettings:\n  - match: /queue/paged\n    maxSizeBytes: 64KiB\n    addressFullPolicy: page\n");
    let mut producer = b.connect();
    for i in 0..COUNT {
        producer.send_receipted("/queue/paged", &format!("{i:05}-{}", "x".repeat(1024)), true);
    }
    let paged = b.status()["queues"].as_array().and_then(|qs| qs.iter().find(|q| q["name"] == "/queue/paged").map(|q| q["paged"].as_u64().unwrap_or(0)));
    assert!(paged.is_some_and(|p| p > COUNT as u64 / 2), "most of it paged: {paged:?}");
    let mut browser = b.connect();
    browse(&mut browser, "peek", "/queue/paged", &[("activemq.prefetchSize", "50")]);
    let (seen, _) = browsed(&mut browser);
    let numbers: Vec<usize> = seen.iter().map(|f| body_text(f)[..5].parse().expect("number")).collect();
    assert_eq!(numbers, (0..COUNT).collect::<Vec<_>>(), "in memory, then paged, in order");
    // Nothing was taken: a consumer gets all of it.
    let mut consumer = b.connect();
    consumer.subscribe("c", "/queue/paged", "auto", &[]);
    for i in 0..COUNT {
        let m = consumer.expect(Command::Message);
        assert!(body_text(&m).starts_with(&format!("{i:05}-")), "message {i}: {}", &body_text(&m)[..5]);
    }
}
