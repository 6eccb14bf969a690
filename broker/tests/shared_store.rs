//! Shared-store master/slave with real processes: two members on one data directory.
//! The first takes the journal lock and is live; the second refuses clients, waits as a
//! ready backup, and takes over after a kill -9 of the live with every receipted message;
//! the former live comes back as the backup.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::{cli, receive_all, Conn};
use duomq_broker::stomp::{Command as Stomp, Frame};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Messages sent before the failover and only received after it: all of them recovered
/// by the new live, so all flagged redelivered.
const BEFORE: usize = 100;
/// Messages a producer sends while the live is killed.
const UNDER_LOAD: usize = 3000;

fn send(url: &str, queue: &str, count: usize) -> Command {
    let count = count.to_string();
    cli(&["send", "--url", url, "--destination", queue, "--count", &count, "--size", "256", "--persistent", "--receipts", "--window", "16"])
}

fn metrics(member: &Member) -> String {
    common::http_get_at(&member.ip, member.admin, "/metrics").expect("GET /metrics").1
}

#[test]
fn given_shared_store_pair_when_live_killed_should_fail_over_with_every_receipted_message_and_old_live_return_as_slave() {
    let root = tempfile::Builder::new().prefix("duomq-shared-").tempdir().unwrap();
    let store = root.path().join("shared-data");
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start_shared_store(&store, &[b.peer()], "primary", "g1");
    a.wait_live();
    b.start_shared_store(&store, &[a.peer()], "backup", "g1");
    b.wait_for("a backup", |s| s["role"] == "backup");
    b.wait_ready();
    let status = b.status().expect("backup status");
    assert_eq!((&status["ha"]["group"], &status["ha"]["live"], &status["ha"]["epoch"]), (&"g1".into(), &"node-a".into(), &1.into()), "{status}");

    // The backup answers clients with an ERROR naming the live.
    let mut refused = Conn::raw(b.stomp);
    refused.send(&Frame::new(Stomp::Connect).header("accept-version", "1.2"));
    let error = refused.expect(Stomp::Error);
    let message = error.get("message").unwrap_or_default().to_string();
    assert!(message.starts_with("not live") && message.contains(&a.stomp_addr()), "{message}");

    let url = format!(
        "failover:(stomp://{},stomp://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1",
        a.stomp_addr(),
        b.stomp_addr()
    );
    let out = send(&url, "/queue/before", BEFORE).output().expect("send before the failover");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let producer = send(&url, "/queue/load", UNDER_LOAD).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn producer");
    a.wait_under_way("/queue/load", (UNDER_LOAD / 3) as u64);

    a.kill9();
    let killed = Instant::now();
    b.wait_live();
    println!("slave live {:?} after the kill (retry interval 100ms)", killed.elapsed());
    assert!(killed.elapsed() < ROLE_TIMEOUT);
    let out = producer.wait_with_output().expect("producer finished");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "producer failed across the failover: {report}");
    println!("producer: {}", report.lines().last().unwrap_or_default());
    assert!(b.log().contains("took the shared journal lock"), "{}", b.log());

    // The former live comes back; the lock is taken, so it waits as the ready backup.
    a.start_shared_store(&store, &[b.peer()], "primary", "g1");
    a.wait_for("a backup of node-b", |s| s["role"] == "backup" && s["ha"]["live"] == "node-b");
    a.wait_ready();
    let epoch = b.status().expect("live status")["ha"]["epoch"].as_u64();
    assert_eq!(epoch, Some(2), "taking the lock raises the epoch");
    for (member, line) in [(&b, "duomq_ha_live 1"), (&b, "duomq_ha_epoch 2"), (&b, "duomq_ha_alone 0"), (&a, "duomq_ha_live 0")] {
        assert!(metrics(member).contains(line), "{} metrics lack {line}:\n{}", member.name, metrics(member));
    }

    let summary = receive_all(&url, "/queue/before", BEFORE);
    // The new live cannot know what its predecessor delivered: every recovered one is flagged.
    assert!(summary.contains(&format!("({BEFORE} redelivered")), "{summary}");
    let summary = receive_all(&url, "/queue/load", UNDER_LOAD);
    assert!(summary.contains(" 0 duplicates"), "a resent message was stored twice: {summary}");
}

#[test]
fn given_backup_member_alone_on_a_free_store_should_take_the_lock_and_a_restart_should_not_flag_its_own_messages() {
    let root = tempfile::Builder::new().prefix("duomq-shared-alone-").tempdir().unwrap();
    let store = root.path().join("shared-data");
    let mut b = Member::new(root.path(), "node-b");
    b.start_shared_store(&store, &[], "backup", "g1");
    b.wait_live();
    let url = format!("stomp://{}", b.stomp_addr());
    let out = send(&url, "/queue/own", 50).output().expect("send");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.kill9();
    b.start_shared_store(&store, &[], "backup", "g1");
    b.wait_live();
    // It was the last live itself: what it recovers was not handed out by anyone else.
    let summary = receive_all(&url, "/queue/own", 50);
    assert!(summary.contains("(0 redelivered"), "{summary}");
}
