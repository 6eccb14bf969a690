//! Live/backup replication with real processes on loopback: failover under load after
//! kill -9 (repeated), restart of a former live as backup, failback, a switchover with the
//! CLI, a restarted backup resuming its copy (and getting a full one when its copy
//! diverged), and refusal of a backup with the wrong cluster password or group name.

mod common;

use common::cli;
use common::cluster::{Member, ROLE_TIMEOUT};
use common::eventually;
use std::process::Stdio;

struct Pair {
    root: tempfile::TempDir,
    a: Member,
    b: Member,
}

impl Pair {
    fn new(extra_a: &str) -> Pair {
        Pair::with(extra_a, "")
    }

    fn with(extra_a: &str, extra_b: &str) -> Pair {
        let root = tempfile::Builder::new().prefix("duomq-pair-").tempdir().unwrap();
        std::fs::write(root.path().join("password"), "a-long-random-cluster-password\n").unwrap();
        let mut a = Member::new(root.path(), "node-a");
        let mut b = Member::new(root.path(), "node-b");
        a.start(&[b.peer()], "primary", extra_a, root.path(), "g1", "password");
        a.wait_live();
        b.start(&[a.peer()], "backup", extra_b, root.path(), "g1", "password");
        b.wait_synced_backup();
        Pair { root, a, b }
    }

    fn failover_url(&self) -> String {
        format!(
            "failover:(stomp://{},stomp://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1",
            self.a.stomp_addr(),
            self.b.stomp_addr()
        )
    }

    fn restart(&mut self, which: char, role: &str, extra: &str) {
        let root = self.root.path().to_path_buf();
        let (me, other) = if which == 'a' { (&mut self.a, &self.b) } else { (&mut self.b, &self.a) };
        me.kill9();
        me.start(&[other.peer()], role, extra, &root, "g1", "password");
    }
}

#[test]
fn given_live_killed_under_load_ten_times_should_fail_over_and_lose_nothing_receipted() {
    // The default: backups acknowledge a batch once written, and fdatasync right after.
    kill_live_under_load(10, "");
}

#[test]
fn given_backups_that_ack_after_their_fsync_when_the_live_is_killed_under_load_should_lose_nothing_receipted() {
    kill_live_under_load(3, "  backupAck: synced\n");
}

/// Kills the live `rounds` times under a producer with receipts and checks that every
/// receipted message arrives once; `extra` goes into both members' `ha` section.
fn kill_live_under_load(rounds: usize, extra: &str) {
    let mut pair = Pair::with(extra, extra);
    let url = pair.failover_url();
    const PER_ROUND: usize = 3000;
    for round in 0..rounds {
        let (live, backup) = if pair.a.status().is_some_and(|s| s["role"] == "live") { ('a', 'b') } else { ('b', 'a') };
        let producer = cli(&[
            "send", "--url", &url, "--destination", "/queue/failover", "--count", &PER_ROUND.to_string(),
            "--size", "256", "--persistent", "--receipts", "--window", "16",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn producer");
        // Kill the live once the producer is well under way.
        let live_member = if live == 'a' { &pair.a } else { &pair.b };
        live_member.wait_under_way("/queue/failover", ((round * PER_ROUND) + PER_ROUND / 3) as u64);
        if live == 'a' { pair.a.kill9() } else { pair.b.kill9() }
        let survivor = if backup == 'a' { &pair.a } else { &pair.b };
        survivor.wait_live();
        // The former live comes back as the new backup.
        pair.restart(live, "backup", extra);
        let back = if live == 'a' { &pair.a } else { &pair.b };
        back.wait_synced_backup();
        let out = producer.wait_with_output().expect("producer finished");
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "producer failed in round {round}: {report}");
        println!("round {round}: killed {live}; producer: {}", report.lines().last().unwrap_or_default());
    }
    let activations = pair.a.log().matches("activating: this backup becomes live").count()
        + pair.b.log().matches("activating: this backup becomes live").count();
    assert_eq!(activations, rounds, "every kill made the backup activate");
    let total = PER_ROUND * rounds;
    let out = cli(&["receive", "--url", &url, "--destination", "/queue/failover", "--count", &total.to_string(), "--timeout", "10s"])
        .output()
        .expect("run consumer");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "consumer did not get every receipted message: {summary}");
    assert!(summary.contains(&format!("received {total} messages")), "{summary}");
    assert!(summary.contains(" 0 duplicates"), "a resent message was stored twice: {summary}");
}

#[test]
fn given_former_live_restarted_should_come_back_as_backup_or_take_the_role_back_with_failback() {
    let mut pair = Pair::new("");
    // A backup in sync could take over at once, so it counts as ready (rolling updates).
    assert_eq!(pair.b.readyz().0, 200, "synced backup: {:?}", pair.b.readyz());
    let (_, metrics) = common::http_get(pair.a.admin, "/metrics").unwrap();
    for line in ["duomq_ha_live 1", "duomq_ha_backups_synced 1", "duomq_ha_alone 0", "duomq_ha_epoch 1"] {
        assert!(metrics.contains(line), "live metrics lack {line}:\n{metrics}");
    }
    let url = pair.failover_url();
    let send = |n: &str, q: &str| {
        let out = cli(&["send", "--url", &url, "--destination", q, "--count", n, "--persistent", "--receipts", "--window", "8"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    send("200", "/queue/fb");
    pair.a.kill9();
    pair.b.wait_live();
    send("100", "/queue/fb");
    // Without failback the former live stays a backup.
    pair.restart('a', "primary", "");
    pair.a.wait_synced_backup();
    assert_eq!(pair.b.status().unwrap()["role"], "live");
    // With failback it takes the role back once in sync, and the other steps down.
    pair.restart('a', "primary", "  allowFailback: true\n");
    pair.a.wait_live();
    pair.b.wait_synced_backup();
    let epoch = pair.a.status().unwrap()["ha"]["epoch"].as_u64().unwrap();
    assert!(epoch >= 3, "every change of live raises the epoch: {epoch}");
    let out = cli(&["receive", "--url", &url, "--destination", "/queue/fb", "--count", "300", "--timeout", "5s"]).output().unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{summary}");
    // A member that took over cannot know what its predecessor delivered: all flagged.
    assert!(summary.contains("(300 redelivered"), "{summary}");
}

#[test]
fn given_pair_with_lock_file_when_switched_over_with_the_cli_should_hand_over_and_lose_nothing() {
    let pair = Pair::new("");
    let url = pair.failover_url();
    let out = cli(&["send", "--url", &url, "--destination", "/queue/so", "--count", "300", "--persistent", "--receipts", "--window", "8"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = format!("{}:{}", pair.a.ip, pair.a.admin);
    let password = pair.root.path().join("password").display().to_string();
    let out = cli(&["switchover", "--admin", &admin, "--to", "node-b", "--password-file", &password]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pair.b.wait_live();
    pair.a.wait_synced_backup();
    assert_eq!(pair.b.status().unwrap()["ha"]["epoch"], 2, "one change of live");
    let out = cli(&["receive", "--url", &url, "--destination", "/queue/so", "--count", "300", "--timeout", "5s"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn given_backup_with_wrong_password_or_group_should_be_refused_and_both_sides_log_why() {
    let root = tempfile::Builder::new().prefix("duomq-refuse-").tempdir().unwrap();
    std::fs::write(root.path().join("password"), "the-right-password\n").unwrap();
    std::fs::write(root.path().join("wrong"), "a-wrong-password\n").unwrap();
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start(&[b.peer()], "primary", "", root.path(), "g1", "password");
    a.wait_live();
    b.start(&[a.peer()], "backup", "", root.path(), "g1", "wrong");
    eventually("the backup reporting the refusal", ROLE_TIMEOUT, || b.log().contains("cluster credentials"));
    assert_ne!(b.status().unwrap()["ha"]["sync"]["state"], "synced");
    let (code, reason) = b.readyz();
    assert_eq!(code, 503, "a refused backup is not ready: {reason}");
    assert!(a.log().contains("refused a cluster connection"), "live logs why:\n{}", a.log());
    b.kill9();
    // Same password, another group: refused too, naming both groups.
    b.start(&[a.peer()], "backup", "", root.path(), "g2", "password");
    eventually("both members reporting the group mismatch", ROLE_TIMEOUT, || b.log().contains("g1") && b.log().contains("g2") && a.log().contains("group"));
    assert_eq!(a.status().unwrap()["ha"]["backups"].as_array().map(Vec::len), Some(0));
}

/// Sends `count` persistent, receipted messages of `size` bytes to `queue`.
fn send(url: &str, queue: &str, count: usize, size: usize) {
    let out = cli(&[
        "send", "--url", url, "--destination", queue, "--count", &count.to_string(), "--size", &size.to_string(),
        "--persistent", "--receipts", "--window", "32",
    ])
    .output()
    .expect("run producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The journal bytes the live streamed to reach sync, from its latest "backup in sync" line.
fn streamed_bytes_of_last_sync(live: &Member) -> u64 {
    let log = live.log();
    let line = log.lines().rev().find(|l| l.contains("backup in sync")).expect("a backup reached sync");
    let field = line.split_whitespace().find_map(|w| w.strip_prefix("streamed_bytes=")).expect("streamed_bytes field");
    field.parse().expect("a byte count")
}

/// Waits until the backup and the live both report no lag in records.
fn wait_for_no_record_lag(live: &Member, backup: &Member) {
    backup.wait_for("caught up in records", |s| s["ha"]["sync"]["state"] == "synced" && s["ha"]["sync"]["lagRecords"] == 0);
    live.wait_for("seeing its backup caught up in records", |s| {
        s["ha"]["backups"].as_array().is_some_and(|b| b.len() == 1 && b[0]["state"] == "synced" && b[0]["lagRecords"] == 0)
    });
}

/// A pair whose live holds `count` messages of 1 KiB in `queue`, its backup caught up.
fn pair_holding(queue: &str, count: usize) -> (Pair, String) {
    let pair = Pair::new("");
    let url = pair.failover_url();
    send(&url, queue, count, 1024);
    wait_for_no_record_lag(&pair.a, &pair.b);
    (pair, url)
}

#[test]
fn given_backup_restarted_behind_a_large_journal_should_resume_without_a_full_copy_and_lose_nothing() {
    let (mut pair, url) = pair_holding("/queue/resume", 10_000);
    let (_, metrics) = common::http_get(pair.a.admin, "/metrics").unwrap();
    assert!(metrics.contains("duomq_ha_replication_lag_records 0"), "{metrics}");

    pair.b.kill9();
    send(&url, "/queue/resume", 200, 1024);
    pair.restart('b', "backup", "");
    pair.b.wait_synced_backup();
    assert!(pair.a.log().contains("sending only what it lacks"), "{}", pair.a.log());
    let streamed = streamed_bytes_of_last_sync(&pair.a);
    println!("the restarted backup resumed with {streamed} bytes streamed");
    assert!(streamed < 2 * 1024 * 1024, "a resumed backup got {streamed} bytes, more than the 200 messages it lacked");
    wait_for_no_record_lag(&pair.a, &pair.b);

    pair.a.kill9();
    pair.b.wait_live();
    let summary = common::receive_all(&url, "/queue/resume", 10_200);
    assert!(summary.contains("received 10200 messages"), "{summary}");
}

/// Appends a valid record holding no operation after the records of the newest segment in
/// `journal`: a copy that now holds a record its live never wrote.
fn append_foreign_record(journal: &std::path::Path) {
    let newest = std::fs::read_dir(journal)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a mirrored segment");
    let data = std::fs::read(&newest).unwrap();
    let mut end = 32;
    while end + 8 <= data.len() {
        let len = u32::from_le_bytes(data[end..end + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        end += 8 + len;
    }
    let payload = [0u8; 4];
    let mut record = (payload.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    let file = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &record, end as u64).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn given_backup_whose_copy_diverged_should_get_a_full_copy_and_lose_nothing() {
    let (mut pair, url) = pair_holding("/queue/diverged", 500);
    pair.b.kill9();
    append_foreign_record(&pair.b.dir.join("data").join("journal"));
    pair.restart('b', "backup", "");
    pair.b.wait_synced_backup();
    assert!(pair.a.log().contains("full copy: the backup's journal is no prefix of ours"), "{}", pair.a.log());
    let streamed = streamed_bytes_of_last_sync(&pair.a);
    println!("the diverged backup got {streamed} bytes");
    assert!(streamed > 500 * 1024, "the whole journal was sent again: {streamed} bytes");
    wait_for_no_record_lag(&pair.a, &pair.b);

    pair.a.kill9();
    pair.b.wait_live();
    let summary = common::receive_all(&url, "/queue/diverged", 500);
    assert!(summary.contains("received 500 messages"), "{summary}");
}
