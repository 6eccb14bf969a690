//! Draining a group (`POST /ha/drain`) with real processes on loopback: two standalone
//! groups bridged to each other, messages queued on one with no consumer anywhere; the
//! drain moves every message to the other exactly once, refuses and closes the drained
//! group's clients and stops its demand; without a linked bridge it reports stuck and why;
//! a kill -9 of the draining live loses nothing and a second request completes the drain.

mod common;

use common::cluster::Member;
use common::{cli, eventually, reserve_port, receive_all, Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::{Command, Frame};
use serde_json::Value;
use std::time::Duration;

const PASSWORD: &str = "drain-test-password";
const DRAIN: &str = "/ha/drain";
/// How long a bridge may take to link, or a drain to finish.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A standalone broker (its group is its node id) with a cluster port for bridges and, if
/// `to` is given, a connector `to-<group>` to that cluster port.
fn node(name: &str, cluster: u16, to: Option<(&str, u16)>) -> Broker {
    let mut config = format!("node:\n  id: {name}\nha:\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    password: {PASSWORD}\n");
    if let Some((group, port)) = to {
        config.push_str(&format!("network:\n  connectors:\n    - name: to-{group}\n      uri: tcp://127.0.0.1:{port}\n"));
    }
    Broker::start(name, &config)
}

fn url(b: &Broker) -> String {
    format!("stomp://127.0.0.1:{}", b.stomp_port)
}

fn link(b: &Broker, connector: &str) -> Value {
    b.status()["network"]["connectors"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == connector))
        .map(|c| c["links"][0].clone())
        .unwrap_or(Value::Null)
}

fn wait_linked(b: &Broker, connector: &str) {
    eventually(&format!("{connector} linked"), TIMEOUT, || link(b, connector)["state"] == "linked");
}

fn send(b: &Broker, queue: &str, count: usize, size: usize) {
    let out = cli(&[
        "send", "--url", &url(b), "--destination", queue, "--count", &count.to_string(), "--size", &size.to_string(),
        "--persistent", "--receipts", "--window", "64",
    ])
    .output()
    .expect("run producer");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn drain(b: &Broker, targets: &[&str], password: Option<&str>) -> (u16, String) {
    let body = serde_json::json!({ "targets": targets }).to_string();
    common::signed_post("127.0.0.1", b.admin_port, DRAIN, &body, password)
}

/// Asks for the drain (signed) and returns its progress.
fn drain_ok(b: &Broker, targets: &[&str]) -> Value {
    let (code, reply) = drain(b, targets, Some(PASSWORD));
    assert_eq!(code, 200, "{reply}");
    serde_json::from_str(&reply).expect("a DrainStatus")
}

fn wait_drained(b: &Broker) -> Value {
    eventually("drained", TIMEOUT, || b.status()["drain"]["state"] == "drained");
    b.status()["drain"].clone()
}

fn enqueued_total(b: &Broker, queue: &str) -> u64 {
    b.status()["queues"].as_array().and_then(|qs| qs.iter().find(|q| q["name"] == queue)).map_or(0, |q| q["enqueuedTotal"].as_u64().unwrap_or(0))
}

/// The ERROR a draining group answers or closes a client with.
fn assert_draining_error(frame: Option<Frame>) {
    let frame = frame.expect("an ERROR frame before the connection closes");
    assert_eq!(frame.command, Command::Error, "{frame:?}");
    let message = frame.get("message").unwrap_or_default().to_string();
    assert!(message.starts_with("not live") && message.contains("draining and being removed"), "{message}");
}

#[test]
fn given_two_bridged_groups_when_one_is_drained_should_move_every_message_once_and_refuse_its_clients() {
    const N: usize = 1000;
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = node("a", ca, Some(("b", cb)));
    let b = node("b", cb, Some(("a", ca)));
    wait_linked(&a, "to-b");
    wait_linked(&b, "to-a");
    // A client of b with a consumer: its demand reaches a until the drain.
    let mut client = b.connect();
    client.subscribe("s1", "/queue/elsewhere", "client-individual", &[]);
    eventually("b's demand seen by a", TIMEOUT, || link(&a, "to-b")["remoteDemandCount"] == 1);
    send(&b, "/queue/drain", N, 256);
    assert_eq!(b.queue_depth("/queue/drain"), N as u64);
    assert_eq!(enqueued_total(&a, "/queue/drain"), 0, "a has no consumer: nothing crossed yet");

    let (code, reply) = drain(&b, &["a"], None);
    assert_eq!(code, 401, "unsigned: {reply}");
    let (code, reply) = drain(&b, &["a"], Some("a-guessed-password"));
    assert_eq!(code, 401, "wrongly signed: {reply}");
    assert!(b.status()["drain"].is_null(), "nothing began");

    let began = std::time::Instant::now();
    let progress = drain_ok(&b, &["a"]);
    assert_eq!(progress["targets"], serde_json::json!(["a"]), "{progress}");
    assert!(progress["state"] == "draining" || progress["state"] == "drained", "{progress}");
    // The open client is told and closed; a new one is refused.
    assert_draining_error(client.read_frame(FRAME_TIMEOUT));
    assert!(client.closed_within(FRAME_TIMEOUT));
    let mut late = Conn::raw(b.stomp_port);
    late.send(&Frame::new(Command::Connect).header("accept-version", "1.2"));
    assert_draining_error(late.read_frame(FRAME_TIMEOUT));

    let done = wait_drained(&b);
    println!("drained {N} messages of 256 bytes in {:?} (debug build)", began.elapsed());
    assert_eq!((&done["messagesLeft"], &done["forwarded"]), (&0.into(), &(N as u64).into()), "{done}");
    assert_eq!(b.queue_depth("/queue/drain"), 0);
    eventually("b's demand withdrawn", TIMEOUT, || link(&a, "to-b")["remoteDemandCount"] == 0);
    assert_eq!(drain_ok(&b, &["a"])["state"], "drained", "asking again answers the progress");
    assert_eq!(common::metric_value(b.admin_port, "duomq_drained_messages_total "), N as u64);
    assert_eq!(common::metric_value(b.admin_port, "duomq_draining "), 1);

    // Every message is at a, once.
    assert_eq!(enqueued_total(&a, "/queue/drain"), N as u64);
    let summary = receive_all(&url(&a), "/queue/drain", N);
    assert!(summary.contains(" 0 duplicates"), "{summary}");
    assert_eq!(a.queue_depth("/queue/drain"), 0);
}

#[test]
fn given_no_linked_bridge_to_a_target_should_report_stuck_with_the_reason_and_refuse_a_drain_into_itself() {
    let c = node("c", reserve_port(), None);
    send(&c, "/queue/stays", 10, 64);
    let (code, reply) = drain(&c, &["c"], Some(PASSWORD));
    assert_eq!(code, 400, "{reply}");
    let progress = drain_ok(&c, &["a"]);
    assert_eq!((&progress["state"], &progress["messagesLeft"]), (&"stuck".into(), &10.into()), "{progress}");
    let reason = progress["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no network connector"), "{reason}");
    assert_eq!(c.status()["drain"]["state"], "stuck");
    assert_eq!(c.queue_depth("/queue/stays"), 10, "nothing goes anywhere");

    // A connector whose target does not answer: stuck, naming the link and its error.
    let d = node("d", reserve_port(), Some(("nobody", reserve_port())));
    send(&d, "/queue/stays", 10, 64);
    let progress = drain_ok(&d, &["nobody"]);
    assert_eq!(progress["state"], "stuck", "{progress}");
    let reason = progress["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("to-nobody (tcp://127.0.0.1:") && reason.contains("connecting"), "{reason}");
}

#[test]
fn given_the_draining_live_killed_mid_drain_should_lose_nothing_and_complete_when_asked_again() {
    const N: usize = 20_000;
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = node("a", ca, None);
    let mut b = node("b", cb, Some(("a", ca)));
    wait_linked(&b, "to-a");
    send(&b, "/queue/moving", N, 512);
    drain_ok(&b, &["a"]);
    eventually("some forwarded", TIMEOUT, || b.status()["drain"]["forwarded"].as_u64().unwrap_or(0) >= 1000);
    b.restart_in_place();
    // Not persistent: the restarted live serves clients again until asked.
    let status = b.status();
    assert!(status["drain"].is_null(), "{status}");
    let left = b.queue_depth("/queue/moving");
    assert!(left > 0 && left < N as u64, "killed mid-drain: {left} of {N} left");
    wait_linked(&b, "to-a");
    drain_ok(&b, &["a"]);
    let done = wait_drained(&b);
    assert_eq!(done["messagesLeft"], 0, "{done}");
    let summary = receive_all(&url(&a), "/queue/moving", N);
    assert!(summary.contains(" 0 duplicates"), "{summary}");
    assert_eq!(a.queue_depth("/queue/moving"), 0, "nothing stored twice");
}

#[test]
fn given_a_replicated_group_whose_live_dies_mid_drain_should_refuse_the_backup_and_finish_from_the_new_live_with_the_cli() {
    const N: usize = 10_000;
    let ca = reserve_port();
    let a = node("a", ca, None);
    let root = tempfile::Builder::new().prefix("duomq-drain-pair-").tempdir().unwrap();
    std::fs::write(root.path().join("password"), format!("{PASSWORD}\n")).unwrap();
    let password = root.path().join("password").display().to_string();
    let to_a = format!("network:\n  connectors:\n    - name: to-a\n      uri: tcp://127.0.0.1:{ca}\n");
    let mut b0 = Member::new(root.path(), "b0");
    let mut b1 = Member::new(root.path(), "b1");
    b0.start(&[b1.peer()], "primary", &to_a, root.path(), "gb", "password");
    b0.wait_live();
    b1.start(&[b0.peer()], "backup", &to_a, root.path(), "gb", "password");
    b1.wait_synced_backup();
    let linked = |m: &Member| m.wait_for("to-a linked", |s| s["network"]["connectors"][0]["links"][0]["state"] == "linked");
    linked(&b0);
    let url_b = format!("failover:(stomp://{},stomp://{})", b0.stomp_addr(), b1.stomp_addr());
    let out = cli(&["send", "--url", &url_b, "--destination", "/queue/pair", "--count", &N.to_string(), "--size", "512", "--persistent", "--receipts", "--window", "64"])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let admin = |m: &Member| format!("{}:{}", m.ip, m.admin);
    let out = cli(&["drain", "--admin", &admin(&b1), "--target", "a", "--password-file", &password]).output().expect("run drain");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("not live"), "a backup refuses: {said}");

    let (code, reply) = b0.admin_post(DRAIN, r#"{"targets":["a"]}"#, Some(PASSWORD));
    assert_eq!(code, 200, "{reply}");
    b0.wait_for("some forwarded", |s| s["drain"]["forwarded"].as_u64().unwrap_or(0) >= 500);
    b0.kill9();
    b1.wait_live();
    assert!(b1.status().unwrap()["drain"].is_null(), "a drain is the live term's: the new live is asked again");
    linked(&b1);
    let out = cli(&["drain", "--admin", &admin(&b1), "--target", "a", "--password-file", &password, "--timeout", "2m"])
        .output()
        .expect("run drain");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("drained: 0 messages left"), "{said}");
    let summary = receive_all(&url(&a), "/queue/pair", N);
    assert!(summary.contains(" 0 duplicates"), "{summary}");
    assert_eq!(a.queue_depth("/queue/pair"), 0, "nothing stored twice");
}
