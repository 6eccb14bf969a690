//! Dead letters and expiry with the real broker binary: a poison message NACKed by stomp.py
//! ends in `/queue/DLQ.<queue>` after `maxDeliveryAttempts`, each redelivery after its
//! (growing) redelivery delay, with the headers saying where it came from and why, and
//! stays there after kill -9; a consumer leaving with the message counts as a failed
//! delivery too, into a custom `deadLetterAddress`; expired messages are dropped or moved to
//! the `expiryAddress` (found by the periodic scan, or at dispatch); bad `addressSettings`
//! refuse to start, naming the entry.

mod common;

use common::{stomppy, Broker};
use duomq_broker::stomp::{Command, Frame};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a dead letter or an expired message may take to reach its queue.
const MOVE_TIMEOUT: Duration = Duration::from_secs(20);

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// stomp.py sends a persistent message, then takes it and NACKs it `ATTEMPTS` times;
/// then it checks nothing more comes from the queue and reads the dead-letter queue.
const POISON: &str = r#"
attempts = int(os.environ["ATTEMPTS"])
conn = connect()
conn.send("/queue/orders", "poison", headers={"persistent": "true", "kind": "bad"}, receipt="sent")
out = {"sent": next_event()}
conn.subscribe("/queue/orders", id="orders", ack="client-individual")
deliveries = []
for _ in range(attempts):
    m = next_event()
    deliveries.append(m)
    conn.nack(m["headers"]["ack"])
out["deliveries"] = deliveries
out["after_last"] = no_event(2)
conn.subscribe("/queue/DLQ.orders", id="dlq", ack="client-individual")
dead = next_event()
conn.ack(dead["headers"]["ack"], receipt="acked-dead")
out["dead"] = dead
out["dead_ack"] = next_event()
conn.disconnect()
print(json.dumps(out))
"#;

#[test]
fn given_a_poison_message_nacked_by_stomppy_should_end_in_its_dead_letter_queue_after_the_attempts_and_delays() {
    let mut b = Broker::start(
        "dlq-poison",
        "addressSettings:\n  - match: /queue/orders\n    maxDeliveryAttempts: 3\n    redeliveryDelay: 400ms\n    redeliveryMultiplier: 2\n",
    );
    let out = stomppy::script(POISON, b.stomp_port, &[("ATTEMPTS", "3".as_ref())]);
    let deliveries = out["deliveries"].as_array().expect("deliveries");
    let counts: Vec<&str> = deliveries.iter().map(|d| d["headers"]["JMSXDeliveryCount"].as_str().unwrap_or("?")).collect();
    assert_eq!(counts, ["1", "2", "3"], "JMSXDeliveryCount of each delivery");
    let redelivered: Vec<bool> = deliveries.iter().map(|d| d["headers"]["redelivered"] == "true").collect();
    assert_eq!(redelivered, [false, true, true]);
    // 400ms before the first redelivery, 800ms before the second (generous lower bounds:
    // the NACK leaves the client a little after the MESSAGE arrived).
    let at: Vec<f64> = deliveries.iter().map(|d| d["at"].as_f64().expect("at")).collect();
    assert!(at[1] - at[0] >= 0.35, "first redelivery after {:.3}s", at[1] - at[0]);
    assert!(at[2] - at[1] >= 0.75, "second redelivery after {:.3}s", at[2] - at[1]);
    assert!(out["after_last"].is_null(), "delivered a fourth time: {}", out["after_last"]);

    let dead = &out["dead"];
    assert_eq!(dead["body"], "poison");
    assert_eq!(dead["headers"]["kind"], "bad", "the original headers");
    assert_eq!(dead["headers"]["destination"], "/queue/DLQ.orders");
    assert_eq!(dead["headers"]["_AMQ_ORIG_ADDRESS"], "/queue/orders");
    assert_eq!(dead["headers"]["_AMQ_ORIG_MESSAGE_ID"], deliveries[0]["headers"]["message-id"]);
    assert_eq!(
        dead["headers"]["dlqDeliveryFailureCause"],
        "delivered 3 times (addressSettings maxDeliveryAttempts 3) without an acknowledgement"
    );
    assert_eq!(dead["headers"]["JMSXDeliveryCount"], "1", "a new message of its dead-letter queue");
    assert_eq!(out["dead_ack"]["kind"], "RECEIPT");
    assert_eq!(common::metric_value(b.admin_port, "duomq_messages_dead_lettered_total "), 1);

    // Moved in one journal record: after kill -9 it is in neither queue (it was acked in
    // the dead-letter queue) and was not put back into its original queue.
    b.restart_in_place();
    assert_eq!(b.queue_depth("/queue/orders"), 0);
    assert_eq!(b.queue_depth("/queue/DLQ.orders"), 0);
}

#[test]
fn given_a_dead_letter_not_consumed_should_survive_kill9_in_the_dead_letter_queue_only() {
    let mut b = Broker::start("dlq-kill", "addressSettings:\n  - match: '>'\n    maxDeliveryAttempts: 1\n");
    let mut c = b.connect();
    c.send_receipted("/queue/jobs", "once", true);
    c.subscribe("s", "/queue/jobs", "client-individual", &[]);
    let m = c.expect(Command::Message);
    assert_eq!(m.get("JMSXDeliveryCount"), Some("1"));
    c.send(&Frame::new(Command::Nack).header("id", m.get("ack").expect("ack")));
    common::eventually("the dead letter reaches /queue/DLQ.jobs", MOVE_TIMEOUT, || b.queue_depth("/queue/DLQ.jobs") == 1);
    drop(c);
    b.restart_in_place();
    assert_eq!((b.queue_depth("/queue/jobs"), b.queue_depth("/queue/DLQ.jobs")), (0, 1), "neither lost nor doubled");
}

#[test]
fn given_consumers_leaving_with_the_message_should_dead_letter_it_to_the_custom_address() {
    let b = Broker::start(
        "dlq-custom",
        "addressSettings:\n  - match: '>'\n    maxDeliveryAttempts: 5\n  - match: /queue/pay.>\n    maxDeliveryAttempts: 2\n    deadLetterAddress: /queue/pay.failed\n",
    );
    let mut producer = b.connect();
    producer.send_receipted("/queue/pay.eu", "charge", true);
    for attempt in 1..=2 {
        let mut c = b.connect();
        c.subscribe("s", "/queue/pay.eu", "client", &[]);
        let m = c.expect(Command::Message);
        assert_eq!(m.get("JMSXDeliveryCount"), Some(attempt.to_string().as_str()));
        // The consumer goes away with the message unacknowledged.
        drop(c);
        common::eventually("the consumer is gone", MOVE_TIMEOUT, || {
            b.status()["queues"].as_array().is_some_and(|qs| qs.iter().all(|q| q["consumers"] == 0))
        });
    }
    common::eventually("the dead letter reaches /queue/pay.failed", MOVE_TIMEOUT, || b.queue_depth("/queue/pay.failed") == 1);
    assert_eq!(b.queue_depth("/queue/pay.eu"), 0);
    assert_eq!(b.queue_depth("/queue/DLQ.pay.eu"), 0, "the custom address, not the prefixed queue");
    let mut c = b.connect();
    c.subscribe("d", "/queue/pay.failed", "auto", &[]);
    let dead = c.expect(Command::Message);
    assert_eq!(common::body_text(&dead), "charge");
    assert_eq!(dead.get("_AMQ_ORIG_ADDRESS"), Some("/queue/pay.eu"));
    assert!(dead.get("dlqDeliveryFailureCause").is_some_and(|c| c.contains("delivered 2 times")), "{dead:?}");
}

#[test]
fn given_expired_messages_nobody_consumes_should_be_dropped_or_moved_by_the_scan() {
    let b = Broker::start(
        "expiry-scan",
        "destinations:\n  expiryScanPeriod: 200ms\naddressSettings:\n  - match: /queue/exp.moved\n    expiryAddress: /queue/exp.expired\n",
    );
    let mut c = b.connect();
    let soon = (now_millis() + 500).to_string();
    for (dest, expires) in [("/queue/exp.dropped", soon.as_str()), ("/queue/exp.moved", soon.as_str()), ("/queue/exp.moved", "0")] {
        c.send(
            &Frame::new(Command::Send)
                .header("destination", dest)
                .header("persistent", "true")
                .header("expires", expires)
                .header("receipt", "r")
                .with_body(format!("expires {expires}")),
        );
        c.expect(Command::Receipt);
    }
    common::eventually("expired messages leave their queues", MOVE_TIMEOUT, || {
        b.queue_depth("/queue/exp.dropped") == 0 && b.queue_depth("/queue/exp.expired") == 1
    });
    assert_eq!(b.queue_depth("/queue/exp.moved"), 1, "expires: 0 never expires");
    assert_eq!(common::metric_value(b.admin_port, "duomq_messages_expired_total{action=\"dropped\"} "), 1);
    assert_eq!(common::metric_value(b.admin_port, "duomq_messages_expired_total{action=\"moved\"} "), 1);
    c.subscribe("e", "/queue/exp.expired", "auto", &[]);
    let moved = c.expect(Command::Message);
    assert_eq!(moved.get("_AMQ_ORIG_ADDRESS"), Some("/queue/exp.moved"));
    assert_eq!(moved.get("expires"), None, "the copy does not expire again");
    let found: u64 = moved.get("_AMQ_ACTUAL_EXPIRY").and_then(|t| t.parse().ok()).expect("_AMQ_ACTUAL_EXPIRY");
    assert!(found >= soon.parse::<u64>().expect("millis"));
}

#[test]
fn given_an_expired_message_met_at_dispatch_should_never_be_delivered() {
    // No scan: only dispatch can find it.
    let b = Broker::start("expiry-dispatch", "destinations:\n  expiryScanPeriod: 0s\n");
    let mut c = b.connect();
    let past = (now_millis() - 1).to_string();
    c.send(&Frame::new(Command::Send).header("destination", "/queue/late").header("expires", past).header("receipt", "a").with_body("stale"));
    c.expect(Command::Receipt);
    c.send_receipted("/queue/late", "fresh", true);
    c.subscribe("s", "/queue/late", "auto", &[]);
    let m = c.expect(Command::Message);
    assert_eq!(common::body_text(&m), "fresh");
    assert!(c.read_frame(Duration::from_secs(1)).is_none(), "nothing else");
    assert_eq!(common::metric_value(b.admin_port, "duomq_messages_expired_total{action=\"dropped\"} "), 1);
    assert_eq!(b.queue_depth("/queue/late"), 0);
}

#[test]
fn given_bad_address_settings_should_refuse_to_start_naming_the_entry() {
    let dir = tempfile::Builder::new().prefix("duomq-addr-invalid-").tempdir().expect("tempdir");
    let cases = [
        ("addressSettings:\n  - match: '>'\n  - match: '>'\n    deadLetterAddress: /topic/dead\n", "addressSettings[1]", "deadLetterAddress"),
        ("addressSettings:\n  - match: /queue/a\n    redeliveryMultiplier: 0.5\n", "addressSettings[0]", "redeliveryMultiplier"),
        ("addressSettings:\n  - match: /queue/a..b\n", "addressSettings[0]", "match"),
    ];
    for (yaml, names, says) in cases {
        let text = common::refused_config(dir.path(), yaml);
        assert!(text.contains(names) && text.contains(says), "{yaml}: {text}");
    }
}

