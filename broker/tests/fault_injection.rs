//! Faults injected through the fault seam (`debug.faultInjection`, `/debug/faults`) into real
//! broker processes on loopback, no root and no network namespace: partitions and lost,
//! duplicated or reordered frames between live and backup, between a backup and its
//! voters, across a bridge and to the grouping handler, and a failing disk. Each test says
//! what the README promises and checks it, down to every receipted message.
//! (`quorum_partition.rs` cuts a real network with `ip netns` as root; this file is its
//! deterministic counterpart and runs anywhere.)

mod common;

use common::cluster::{synced_pair_with, Member, ROLE_TIMEOUT};
use common::{cli, eventually, reserve_port, signed_request, Broker, Conn, Deadline};
use duomq_testkit::timeouts;
use duomq_broker::admin::api::DEBUG_FAULTS;
use duomq_broker::cluster::Purpose;
use duomq_broker::faults::{Direction, DiskFault, FaultRules, FaultsStatus, FrameAction, FrameRule};
use duomq_broker::stomp::{Command, Frame};
use serde_json::Value;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "fault-injection-test-password";
/// Turns the seam on in a member's or broker's config.
const FAULTS_ON: &str = "debug:\n  faultInjection: true\n";

fn rules(frames: Vec<FrameRule>) -> FaultRules {
    FaultRules { frames, disk: None }
}

/// Everything between this member and `peer` (every peer, without one) is cut.
fn partition(peer: Option<&str>) -> FaultRules {
    rules(vec![FrameRule { peer: peer.map(str::to_string), ..FrameRule::new(FrameAction::Partition) }])
}

/// `action` on the next `count` replication frames of `kind` this live sends its backup.
fn on_replication(action: FrameAction, kind: &str, count: u64) -> FaultRules {
    rules(vec![FrameRule {
        direction: Some(Direction::Out),
        channel: Some(Purpose::Replicate),
        frames: vec![kind.to_string()],
        count: Some(count),
        ..FrameRule::new(action)
    }])
}

fn acted(status: &FaultsStatus) -> u64 {
    status.frames.first().map_or(0, |r| r.acted)
}

fn connect(port: u16) -> Conn {
    Conn::connect(port, &[("accept-version", "1.2"), ("host", "/")])
}

fn persistent_send(destination: &str, body: &str, receipt: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", destination)
        .header("persistent", "true")
        .header("receipt", receipt)
        .with_body(body.to_string())
}

/// Reads frames until a RECEIPT for each of `ids` came (in any order).
fn expect_receipts(conn: &mut Conn, ids: &[&str]) {
    let mut missing: Vec<&str> = ids.to_vec();
    let deadline = Deadline::after("a receipt for each send", ROLE_TIMEOUT);
    while !missing.is_empty() {
        let frame = conn.read_frame(deadline.left()).unwrap_or_else(|| deadline.fail(format!("none for {missing:?}")));
        assert_eq!(frame.command, Command::Receipt, "{frame:?}");
        let id = frame.get("receipt-id").unwrap_or_default().to_string();
        missing.retain(|m| *m != id);
    }
}

/// Messages waiting in `queue` (pending plus in flight) as a member's `/status` shows them.
fn depth(member: &Member, queue: &str) -> u64 {
    let status = member.status().unwrap_or(Value::Null);
    status["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == queue))
        .map_or(0, |q| q["depth"].as_u64().unwrap_or(0) + q["inFlight"].as_u64().unwrap_or(0))
}

#[test]
fn given_fault_injection_off_the_endpoint_should_answer_404_and_on_it_should_take_only_signed_valid_rules() {
    let base = format!("ha:\n  cluster:\n    listen: 127.0.0.1:{}\n    password: {PASSWORD}\n", reserve_port());
    let off = Broker::start("faults-off", &base);
    for method in ["GET", "PUT", "DELETE"] {
        let (code, body) = signed_request("127.0.0.1", off.admin_port, method, DEBUG_FAULTS, "{}", Some(PASSWORD));
        assert_eq!(code, 404, "{method}: {body}");
        assert!(body.contains("debug.faultInjection: true"), "{method}: {body}");
    }
    assert!(!off.log_text().contains("FAULT INJECTION IS ON"));

    let base = format!("ha:\n  cluster:\n    listen: 127.0.0.1:{}\n    password: {PASSWORD}\n", reserve_port());
    let on = Broker::start("faults-on", &format!("{base}{FAULTS_ON}"));
    assert!(on.log_text().contains("FAULT INJECTION IS ON"), "a testing feature is announced loudly");
    let drop_all = serde_json::to_string(&rules(vec![FrameRule::new(FrameAction::Drop)])).expect("JSON");
    let (code, body) = signed_request("127.0.0.1", on.admin_port, "PUT", DEBUG_FAULTS, &drop_all, None);
    assert_eq!(code, 401, "unsigned: {body}");
    let (code, body) = signed_request("127.0.0.1", on.admin_port, "DELETE", DEBUG_FAULTS, "", Some("another-password"));
    assert_eq!(code, 401, "wrongly signed: {body}");
    let (code, body) = signed_request("127.0.0.1", on.admin_port, "PUT", DEBUG_FAULTS, r#"{"frames":[{"action":"delay"}]}"#, Some(PASSWORD));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("frames[0]: delay needs a delay"), "{body}");
    let (code, body) = signed_request("127.0.0.1", on.admin_port, "PUT", DEBUG_FAULTS, r#"{"frames":[{"action":"explode"}]}"#, Some(PASSWORD));
    assert_eq!(code, 400, "{body}");

    // A failing disk: the next fdatasync fails, and the SEND it carried with it.
    let mut client = on.connect();
    client.send_receipted("/queue/disk", "before", true);
    on.set_faults(&FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_next_syncs: 1, ..DiskFault::default() }) });
    client.send(&persistent_send("/queue/disk", "lost", "r-lost"));
    let refused = client.expect_frame();
    assert_eq!(refused.command, Command::Error, "a SEND whose fdatasync failed is not receipted: {refused:?}");
    let mut client = on.connect();
    client.send_receipted("/queue/disk", "after", true);
    assert_eq!(on.queue_depth("/queue/disk"), 2, "the failed message was not stored");
    assert_eq!(common::metric_value(on.admin_port, "duomq_fault_injections_total{action=\"fsync_fail\"}"), 1);
    let status = common::fault_status("127.0.0.1", on.admin_port, &on.config_path());
    assert_eq!(status.disk.map(|d| d.failed), Some(1));
    on.clear_faults();
    assert_eq!(common::fault_status("127.0.0.1", on.admin_port, &on.config_path()), FaultsStatus::default());
}

#[test]
fn given_a_partition_between_live_and_backup_should_hold_receipts_until_the_live_lets_the_backup_go_and_lose_nothing_after_healing() {
    let (_root, mut live, backup) = synced_pair_with("duomq-faults-part-", PASSWORD, FAULTS_ON);
    let mut producer = connect(live.stomp);
    for i in 0..20 {
        producer.send_receipted("/queue/ha", &format!("before {i}"), true);
    }
    live.set_faults(&partition(Some("node-b")));
    // Written after the cut: the synced backup cannot have it, so its receipt waits until
    // the live has given the backup up (ha.connectionTtl without a word) and goes on alone.
    let cut = Instant::now();
    producer.send_receipted("/queue/ha", "during 0", true);
    let waited = cut.elapsed();
    let status = live.status().expect("live status");
    assert_eq!(status["ha"]["alone"], true, "a receipt came while the live still counted its backup in sync: {status}");
    assert!(waited >= Duration::from_millis(500), "the receipt did not wait for the backup to be let go: {waited:?}");
    for i in 1..20 {
        producer.send_receipted("/queue/ha", &format!("during {i}"), true);
    }
    eventually("the backup lost its live", ROLE_TIMEOUT, || backup.log().contains("lost the live"));
    assert!(!backup.log().contains("becomes live"), "the lock file is the live's: the backup must not activate");

    live.clear_faults();
    backup.wait_synced_backup();
    for i in 0..5 {
        producer.send_receipted("/queue/ha", &format!("after {i}"), true);
    }
    drop(producer);
    live.kill9();
    backup.wait_live();
    assert_eq!(depth(&backup, "/queue/ha"), 45, "every receipted message, once");
}

#[test]
fn given_replication_frames_lost_duplicated_or_reordered_should_hold_receipts_tolerate_repeats_resync_gaps_and_keep_every_message_once() {
    let (_root, mut live, backup) = synced_pair_with("duomq-faults-frames-", PASSWORD, FAULTS_ON);
    let mut producer = connect(live.stomp);
    producer.send_receipted("/queue/r", "m0", true);
    let resyncs = || backup.log().matches("frames went missing").count();

    // One append lost on the way while pings still pass: the backup is connected and in
    // sync, so the receipt waits for it.
    live.set_faults(&on_replication(FrameAction::Drop, "append", 1));
    producer.send(&persistent_send("/queue/r", "m1", "r1"));
    eventually("the append was dropped", ROLE_TIMEOUT, || acted(&live.fault_status()) == 1);
    assert!(producer.read_frame(timeouts::QUIET).is_none(), "a receipt came though the synced backup lacks the batch");
    // The next append starts past the end of the backup's copy: it refuses to leave a hole,
    // drops the connection and resyncs what it lacks.
    producer.send(&persistent_send("/queue/r", "m2", "r2"));
    expect_receipts(&mut producer, &["r1", "r2"]);
    eventually("the backup saw the gap", ROLE_TIMEOUT, || resyncs() == 1);
    backup.wait_synced_backup();

    // Appends sent twice are written twice at the same place: tolerated, no resync.
    live.set_faults(&on_replication(FrameAction::Duplicate, "append", 3));
    for i in 3..6 {
        producer.send_receipted("/queue/r", &format!("m{i}"), true);
    }
    assert_eq!(acted(&live.fault_status()), 3);
    assert_eq!(resyncs(), 1, "a repeated append needs no resync");
    backup.wait_synced_backup();

    // Two appends swapped: the later one arrives first, past the end of the copy: refused.
    live.set_faults(&on_replication(FrameAction::Reorder, "append", 1));
    producer.send(&persistent_send("/queue/r", "m6", "r6"));
    eventually("an append is held back", ROLE_TIMEOUT, || acted(&live.fault_status()) == 1);
    producer.send(&persistent_send("/queue/r", "m7", "r7"));
    expect_receipts(&mut producer, &["r6", "r7"]);
    eventually("the backup saw the swap", ROLE_TIMEOUT, || resyncs() == 2);
    live.clear_faults();
    backup.wait_synced_backup();

    drop(producer);
    live.kill9();
    backup.wait_live();
    assert_eq!(depth(&backup, "/queue/r"), 8, "every receipted message, none twice");
    // Readable, whole: the copy holds no hole and no torn record.
    common::receive_all(&format!("stomp://{}", backup.stomp_addr()), "/queue/r", 8);
}

/// `g1-a` and `g1-b` a pair on the quorum arbiter; `g2-a` and `g3-a` its voters (lives of
/// their own groups, whose backups are never started).
fn quorum_cluster(root: &std::path::Path) -> Vec<Member> {
    std::fs::write(root.join("password"), format!("{PASSWORD}\n")).expect("password file");
    let mut members: Vec<Member> = ["g1-a", "g1-b", "g2-a", "g3-a"].iter().map(|n| Member::new(root, n)).collect();
    let absent: Vec<Member> = ["g2-b", "g3-b"].iter().map(|n| Member::new(root, n)).collect();
    let voters: String = members[2..].iter().map(|m| format!("      - {}\n", m.cluster_addr())).collect();
    for m in &mut members[..2] {
        m.arbiter = format!("  arbiter:\n    kind: quorum\n    voteTimeout: 1s\n    retryInterval: 300ms\n    voters:\n{voters}");
    }
    for (i, m) in members[2..].iter_mut().enumerate() {
        m.arbiter = format!("  arbiter:\n    kind: fileLock\n    lockFile: {}\n", root.join(format!("voter-{i}.lock")).display());
        let group = format!("g{}", i + 2);
        m.start(&[absent[i].peer()], "primary", FAULTS_ON, root, &group, "password");
        m.wait_live();
    }
    let (b_peer, a_peer) = (members[1].peer(), members[0].peer());
    members[0].start(&[b_peer], "primary", FAULTS_ON, root, "g1", "password");
    members[0].wait_live();
    members[1].start(&[a_peer], "backup", FAULTS_ON, root, "g1", "password");
    members[1].wait_synced_backup();
    // The voters learn that the backup holds the live's writes a moment after it is in
    // sync; before that they would refuse it the live role.
    eventually("both voters recorded the backup as a holder of g1's writes", ROLE_TIMEOUT, || {
        members[2..].iter().all(|v| v.log().contains("holders=g1-a,g1-b"))
    });
    members
}

#[test]
fn given_a_quorum_pair_when_the_backup_is_cut_off_or_cut_from_its_live_only_should_stay_passive_and_activate_only_when_the_live_dies() {
    let root = tempfile::Builder::new().prefix("duomq-faults-quorum-").tempdir().expect("tempdir");
    let mut members = quorum_cluster(root.path());
    let denials = |m: &Member| m.log().matches("not activating").count();

    // The backup cut off from everyone: it loses its live and reaches no voter.
    members[1].set_faults(&partition(None));
    eventually("the isolated backup asked for votes it cannot get", ROLE_TIMEOUT, || denials(&members[1]) >= 3);
    assert!(members[1].log().contains("by an injected partition"), "the voters were unreachable");
    members[0].wait_for("live, and alone", |s| s["role"] == "live" && s["ha"]["alone"] == true);
    members[1].clear_faults();
    members[1].wait_synced_backup();

    // Only live and backup cut apart: the voters still reach the live and say no.
    let before = denials(&members[1]);
    members[0].set_faults(&partition(Some("g1-b")));
    eventually("the backup was denied by voters who see the live", ROLE_TIMEOUT, || {
        // Either reason: the voters see the live, or they know the backup left its in-sync set.
        let log = members[1].log();
        denials(&members[1]) >= before + 3 && (log.contains("live g1-a answers me") || log.contains("only g1-a held every confirmed write"))
    });
    assert!(!members[1].log().contains("becomes live"), "a backup activated beside a live: {}", members[1].log());
    assert_eq!(members[0].status().map(|s| s["role"].clone()), Some(Value::from("live")));
    members[0].clear_faults();
    members[1].wait_synced_backup();

    // The live really dies: the voters confirm it and the backup activates.
    members[0].kill9();
    members[1].wait_live();
    assert!(members[1].log().contains("voters confirm the live is gone"));
}

/// The split brain the quorum alone allowed: a live cut off from its backup and from every
/// voter. The voters cannot reach it and let the backup activate; the old live, left
/// without a synced backup and reaching no voter, must give its claim up (fence itself)
/// instead of serving beside the new live, and rejoin as its backup once healed.
#[test]
fn given_a_quorum_pair_when_the_live_is_cut_off_from_everyone_should_fence_it_while_the_backup_takes_over() {
    let root = tempfile::Builder::new().prefix("duomq-faults-split-").tempdir().expect("tempdir");
    let members = quorum_cluster(root.path());
    members[0].set_faults(&partition(None));
    members[1].wait_live();
    members[0].wait_for("fenced: it reaches no voter and has no synced backup", |s| s["role"] != "live");
    assert!(members[0].log().contains("a backup could win a vote"), "{}", members[0].log());
    members[0].clear_faults();
    members[0].wait_for("back as the new live's backup", |s| s["role"] == "backup" && s["ha"]["live"] == "g1-b");
    assert_eq!(members[1].status().map(|s| s["role"].clone()), Some(Value::from("live")));
}

/// The loss the nemesis found: the backup took over, went on alone and receipted a message,
/// and was then cut off from everyone. The old primary, restarted with its older journal,
/// found no live and started live: the message was gone. The voters now keep who holds the
/// newest writes, so the primary waits as a backup, and follows the other once healed.
#[test]
fn given_a_cut_off_live_holding_the_newest_writes_when_the_old_primary_restarts_should_keep_it_a_backup_and_lose_nothing() {
    let root = tempfile::Builder::new().prefix("duomq-faults-stale-").tempdir().expect("tempdir");
    let mut members = quorum_cluster(root.path());
    members[0].kill9();
    members[1].wait_live();
    let mut client = connect(members[1].stomp);
    client.send(&persistent_send("/queue/newest", "only the backup has it", "r-newest"));
    expect_receipts(&mut client, &["r-newest"]);
    drop(client);

    members[1].set_faults(&partition(None));
    let b_peer = members[1].peer();
    members[0].start(&[b_peer], "primary", FAULTS_ON, root.path(), "g1", "password");
    eventually("the restarted primary was refused the live role", ROLE_TIMEOUT, || members[0].log().contains("may not start live"));
    assert!(members[0].log().contains("only g1-b held every confirmed write"), "{}", members[0].log());
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(members[0].status().map(|s| s["role"].clone()), Some(Value::from("live")), "{}", members[0].log());

    members[1].clear_faults();
    members[0].wait_for("following the member with the newest writes", |s| s["role"] == "backup" && s["ha"]["live"] == "g1-b");
    assert_eq!(depth(&members[1], "/queue/newest"), 1, "the receipted message survived");
}

/// Nemesis finding 9: both members of a pair asked for votes around a fault, each won one
/// voter, and each voter kept the grant it gave for good, so neither could ever win both:
/// the group stayed without a live. Grants are tentative now: unused, they lapse, and once
/// healed one of the two wins and the other follows it.
#[test]
fn given_both_members_of_a_pair_winning_one_voter_each_should_end_with_one_live_once_healed() {
    let root = tempfile::Builder::new().prefix("duomq-faults-splitvote-").tempdir().expect("tempdir");
    let members = quorum_cluster(root.path());
    let cut_from = |peers: &[&str]| {
        rules(peers.iter().map(|p| FrameRule { peer: Some(p.to_string()), ..FrameRule::new(FrameAction::Partition) }).collect())
    };
    // The live cut off from everyone fences itself; its backup reaches one voter, g3-a,
    // which grants it a vote: one of two is not enough.
    members[1].set_faults(&cut_from(&["g2-a"]));
    members[0].set_faults(&partition(None));
    members[0].wait_for("the cut-off live fenced itself", |s| s["role"] != "live");
    eventually("g1-b won g3-a's vote only", ROLE_TIMEOUT, || members[1].log().contains("1 of 2 voters confirm the live is gone"));
    // The fenced live now reaches the other voter, g2-a, alone: it wins that one.
    members[0].set_faults(&cut_from(&["g1-b", "g3-a"]));
    eventually("g1-a won g2-a's vote only", ROLE_TIMEOUT, || {
        members[2].log().lines().any(|l| l.contains("voted") && l.contains("voter_for=g1-a") && l.contains("granted=true"))
    });
    assert!(members.iter().take(2).all(|m| m.status().is_some_and(|s| s["role"] != "live")), "nobody is live yet");

    members[0].clear_faults();
    members[1].clear_faults();
    let live_of = |m: &Member| m.status().and_then(|s| (s["role"] == "live").then_some(m.name.clone()));
    eventually("one of the two won every vote and is live", ROLE_TIMEOUT, || live_of(&members[0]).or(live_of(&members[1])).is_some());
    let (live, other) = if live_of(&members[0]).is_some() { (&members[0], &members[1]) } else { (&members[1], &members[0]) };
    other.wait_for("the other follows it", |s| s["role"] == "backup" && s["ha"]["live"] == live.name.as_str());
    assert_eq!(live.status().map(|s| s["role"].clone()), Some(Value::from("live")), "still live: {}", live.log());
}

/// A standalone broker whose cluster port takes bridges and grouping links, with the seam
/// on and a short link heartbeat (links give up after 3 s without a word).
fn node(name: &str, cluster: u16, extra: &str) -> Broker {
    let config = format!(
        "node:\n  id: {name}\nha:\n  checkPeriod: 100ms\n  connectionTtl: 1s\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    password: {PASSWORD}\n{FAULTS_ON}{extra}"
    );
    Broker::start(name, &config)
}

fn link_state(broker: &Broker, connector: &str) -> Value {
    broker.status()["network"]["connectors"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == connector))
        .map_or(Value::Null, |c| c["links"][0]["state"].clone())
}

fn send_batch(broker: &Broker, destination: &str, count: usize) {
    let url = format!("stomp://127.0.0.1:{}", broker.stomp_port);
    let out = cli(&["send", "--url", &url, "--destination", destination, "--count", &count.to_string(), "--persistent", "--receipts", "--window", "16"])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn background_consumer(broker: &Broker, destination: &str, count: usize) -> Child {
    let url = format!("stomp://127.0.0.1:{}", broker.stomp_port);
    cli(&["receive", "--url", &url, "--destination", destination, "--count", &count.to_string(), "--timeout", "90s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consumer")
}

#[test]
fn given_a_bridge_cut_then_healed_and_forwards_repeated_or_swapped_should_deliver_every_message_once() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = node("a", ca, &format!("network:\n  connectors:\n    - name: to-b\n      uri: tcp://127.0.0.1:{cb}\n"));
    let b = node("b", cb, "");
    eventually("bridge linked", timeouts::LINK, || link_state(&a, "to-b") == "linked");
    let consumer = background_consumer(&b, "/queue/orders", 300);
    eventually("the bridge sees the remote consumer", timeouts::LINK, || {
        a.status()["network"]["connectors"][0]["links"][0]["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == "/queue/orders"))
    });
    send_batch(&a, "/queue/orders", 100);

    // Cut: the link dies of silence and cannot come back; messages wait here, stored.
    a.set_faults(&partition(Some("b")));
    eventually("the link is down", timeouts::LINK, || link_state(&a, "to-b") != "linked");
    send_batch(&a, "/queue/orders", 100);
    assert!(a.queue_depth("/queue/orders") > 0, "the messages sent while cut off wait at the source");
    a.clear_faults();
    eventually("the link is back", timeouts::LINK, || link_state(&a, "to-b") == "linked");

    // Forwards repeated and swapped on the wire: the receiver stores a repeat once (its
    // dedup id) and takes swapped ones as they come.
    a.set_faults(&rules(vec![
        FrameRule { direction: Some(Direction::Out), frames: vec!["forward".into()], count: Some(20), ..FrameRule::new(FrameAction::Duplicate) },
        FrameRule { direction: Some(Direction::Out), frames: vec!["forward".into()], count: Some(5), ..FrameRule::new(FrameAction::Reorder) },
    ]));
    send_batch(&a, "/queue/orders", 100);
    let out = consumer.wait_with_output().expect("consumer");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && summary.contains("received 300 messages") && summary.contains("0 duplicates"), "{summary}");
    let status = common::fault_status("127.0.0.1", a.admin_port, &a.config_path());
    assert_eq!(status.frames.iter().map(|r| r.acted).collect::<Vec<_>>(), vec![20, 5], "every fault acted");
    eventually("the source settled everything", timeouts::LINK, || a.queue_depth("/queue/orders") == 0);
    assert_eq!(b.queue_depth("/queue/orders"), 0, "nothing left over, nothing stored twice");
}

fn send_grouped(port: u16, group: &str) -> Frame {
    let mut conn = connect(port);
    conn.send(&persistent_send("/queue/jobs", "grouped", "r1").header("JMSXGroupID", group));
    conn.read_frame(timeouts::FRAME).expect("an answer to the SEND")
}

fn grouping_connected(broker: &Broker) -> bool {
    broker.status()["grouping"]["connected"] == true
}

#[test]
fn given_the_grouping_handler_silent_or_cut_off_should_refuse_new_groups_after_the_timeout_keep_known_ones_and_recover_when_healed() {
    let (cl, cr) = (reserve_port(), reserve_port());
    let _local = node("l", cl, "grouping:\n  handler: local\n");
    let remote = node("r", cr, &format!("grouping:\n  handler: remote\n  address: masterslave:(tcp://127.0.0.1:{cl})\n  timeout: 1500ms\n"));
    eventually("remote handler linked", timeouts::LINK, || grouping_connected(&remote));
    let mut consumer = connect(remote.stomp_port);
    consumer.subscribe("s", "/queue/jobs", "auto", &[]);
    assert_eq!(send_grouped(remote.stomp_port, "known").command, Command::Receipt);
    assert_eq!(consumer.expect(Command::Message).get("JMSXGroupID"), Some("known"));

    // The handler's answers lost on the way: the link is up, the decision never comes.
    remote.set_faults(&rules(vec![FrameRule { direction: Some(Direction::In), frames: vec!["group-decision".into()], ..FrameRule::new(FrameAction::Drop) }]));
    let started = Instant::now();
    let refused = send_grouped(remote.stomp_port, "unanswered");
    let message = refused.get("message").unwrap_or_default().to_string();
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    assert!(message.contains("\"unanswered\"") && message.contains("1.5s") && message.contains("did not answer"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "it waited for grouping.timeout");

    // The handler unreachable: cut off on the grouping channel only.
    remote.set_faults(&rules(vec![FrameRule { peer: Some("l".into()), channel: Some(Purpose::Grouping), ..FrameRule::new(FrameAction::Partition) }]));
    eventually("the remote handler lost the link", timeouts::LINK, || !grouping_connected(&remote));
    let refused = send_grouped(remote.stomp_port, "new-one");
    let message = refused.get("message").unwrap_or_default().to_string();
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    assert!(message.contains("grouping.timeout") && message.contains("unreachable"), "{message}");
    assert_eq!(remote.queue_depth("/queue/jobs"), 0, "nothing refused was stored");
    // A group decided before keeps flowing from the remote handler's cache.
    assert_eq!(send_grouped(remote.stomp_port, "known").command, Command::Receipt);
    assert_eq!(consumer.expect(Command::Message).get("JMSXGroupID"), Some("known"));

    remote.clear_faults();
    eventually("the remote handler relinked", timeouts::LINK, || grouping_connected(&remote));
    assert_eq!(send_grouped(remote.stomp_port, "new-one").command, Command::Receipt);
    assert_eq!(consumer.expect(Command::Message).get("JMSXGroupID"), Some("new-one"));
}
