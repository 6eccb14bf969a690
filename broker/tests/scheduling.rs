//! Scheduled delivery with the real broker binary: stomp.py sends with
//! `AMQ_SCHEDULED_DELAY` and `AMQ_SCHEDULED_TIME` and gets each message no sooner than its
//! time while an unscheduled one comes at once; a scheduled message is held again after
//! kill -9 of the broker, and after a failover to the backup of a replicated pair, until
//! its time.

mod common;

use common::{stomppy, Broker, Conn};
use duomq_broker::stomp::{Command, Frame};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How late after its time a held message may arrive.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

const SCHEDULED: &str = r#"
conn = connect()
conn.subscribe("/queue/later", id="s", ack="auto")
sent = time.time()
conn.send("/queue/later", "delayed", headers={"persistent": "true", "AMQ_SCHEDULED_DELAY": "1500"})
conn.send("/queue/later", "timed", headers={"persistent": "true", "AMQ_SCHEDULED_TIME": str(int(sent * 1000) + 2500)})
conn.send("/queue/later", "now", headers={"persistent": "true"}, receipt="sent")
got = [next_event(), next_event(), next_event(), next_event()]
conn.disconnect()
print(json.dumps({"sent": sent, "events": got}))
"#;

#[test]
fn given_scheduled_messages_from_stomppy_should_hold_each_until_its_time_and_not_the_others() {
    let b = Broker::start("scheduled", "");
    let out = stomppy::script(SCHEDULED, b.stomp_port, &[]);
    let sent = out["sent"].as_f64().expect("sent");
    let messages: Vec<(String, f64)> = out["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "MESSAGE")
        .map(|e| (e["body"].as_str().unwrap_or("?").to_string(), e["at"].as_f64().expect("at") - sent))
        .collect();
    let order: Vec<&str> = messages.iter().map(|(body, _)| body.as_str()).collect();
    assert_eq!(order, ["now", "delayed", "timed"], "{messages:?}");
    assert!(messages[0].1 < 1.0, "the unscheduled message waited {:.3}s", messages[0].1);
    assert!(messages[1].1 >= 1.45, "AMQ_SCHEDULED_DELAY 1500 came after {:.3}s", messages[1].1);
    assert!(messages[2].1 >= 2.45, "AMQ_SCHEDULED_TIME +2500 came after {:.3}s", messages[2].1);
    assert_eq!(common::metric_value(b.admin_port, "duomq_scheduled_messages "), 0, "nothing held any more");
}

/// Sends a persistent message to `/queue/held` due at `due` (ms since the epoch), receipted.
fn send_scheduled(c: &mut Conn, due: u64) {
    c.send(
        &Frame::new(Command::Send)
            .header("destination", "/queue/held")
            .header("persistent", "true")
            .header("AMQ_SCHEDULED_TIME", due.to_string())
            .header("receipt", "held")
            .with_body("on time"),
    );
    c.expect(Command::Receipt);
}

/// Subscribes to `/queue/held` and checks the message comes, once, no sooner than `due`
/// (a client's clock reading at arrival can only be late, never early), marked its first
/// delivery. At least `min_hold` of holding must be left when the subscription is made, so
/// the test cannot pass by being slow.
fn expect_held_until(c: &mut Conn, due: u64, min_hold: Duration) {
    c.subscribe("s", "/queue/held", "auto", &[]);
    let left = Duration::from_millis(due.saturating_sub(now_millis()));
    assert!(left >= min_hold, "only {left:?} of the hold was left to check; the recovery took too long");
    let m = c.read_frame(left + RELEASE_TIMEOUT).unwrap_or_else(|| panic!("not delivered within {RELEASE_TIMEOUT:?} of its time"));
    let arrived = now_millis();
    assert_eq!(m.command, Command::Message);
    assert!(arrived + 50 >= due, "delivered {} ms before its time: {:?}", due - arrived, m.headers);
    assert_eq!(common::body_text(&m), "on time");
    assert_eq!(m.get("JMSXDeliveryCount"), Some("1"));
    assert_eq!(m.get("redelivered"), None, "held until a time still ahead: it cannot have been delivered before");
    assert!(c.read_frame(Duration::from_millis(500)).is_none(), "delivered twice");
    println!("delivered {} ms after its time", arrived.saturating_sub(due));
}

#[test]
fn given_a_scheduled_message_when_the_broker_is_killed_should_hold_it_again_until_its_time() {
    let mut b = Broker::start("scheduled-kill", "");
    let due = now_millis() + 6_000;
    let mut c = b.connect();
    send_scheduled(&mut c, due);
    common::eventually("the message is held", Duration::from_secs(10), || common::metric_value(b.admin_port, "duomq_scheduled_messages ") == 1);
    drop(c);
    b.restart_in_place();
    assert_eq!(common::metric_value(b.admin_port, "duomq_scheduled_messages "), 1, "held again after recovery");
    let mut c = b.connect();
    expect_held_until(&mut c, due, Duration::from_secs(2));
}

#[test]
fn given_a_scheduled_message_when_the_live_fails_over_should_be_held_by_the_backup_until_its_time() {
    let (_root, mut a, b) = common::cluster::synced_pair("duomq-sched-pair-", "a-long-random-cluster-password");

    let due = now_millis() + 15_000;
    let mut c = Conn::connect(a.stomp, &[("accept-version", "1.2"), ("host", "/")]);
    // Receipted once the synced backup holds the record too.
    send_scheduled(&mut c, due);
    drop(c);
    a.kill9();
    b.wait_live();
    let mut c = Conn::connect(b.stomp, &[("accept-version", "1.2"), ("host", "/")]);
    expect_held_until(&mut c, due, Duration::from_secs(3));
}
