//! Durability against the real process: restarts, kill -9, torn tails, corrupt records,
//! segment reclamation, a full disk, memory back-pressure and graceful shutdown.

mod common;

use common::{body_text, eventually, http_get, Broker, Conn, Deadline, FRAME_TIMEOUT};
use duomq_testkit::timeouts;
use duomq_broker::stomp::{Command, Frame};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn drain(b: &Broker, dest: &str, ack: bool) -> Vec<String> {
    let mut c = b.connect();
    c.subscribe("d", dest, "client-individual", &[]);
    let mut out = vec![];
    let mut queued = std::collections::VecDeque::new();
    loop {
        let Some(m) = queued.pop_front().or_else(|| c.read_frame(Duration::from_millis(500))) else { break };
        assert_eq!(m.command, Command::Message);
        if ack {
            queued.extend(c.ack(&m, true));
        }
        out.push(body_text(&m));
    }
    out
}

fn segments(b: &Broker) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(b.data_dir.join("journal"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "seg")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn given_receipted_persistent_messages_when_killed_should_recover_unacked_only_in_order() {
    let mut b = Broker::start("kill-recover", "");
    let mut p = b.connect();
    for i in 0..50 {
        p.send_receipted("/queue/d", &format!("m{i:02}"), true);
    }
    // Non-persistent messages are not kept.
    p.send_receipted("/queue/d", "volatile", false);
    let mut c = b.connect();
    c.subscribe("s", "/queue/d", "client-individual", &[("activemq.prefetchSize", "10")]);
    let mut delivered = std::collections::VecDeque::new();
    for _ in 0..10 {
        let m = match delivered.pop_front() {
            Some(m) => m,
            None => c.expect(Command::Message),
        };
        delivered.extend(c.ack(&m, true));
    }
    b.kill9();
    b.restart();
    let got = drain(&b, "/queue/d", true);
    let want: Vec<String> = (10..50).map(|i| format!("m{i:02}")).collect();
    assert_eq!(got, want, "exactly the receipted, unacked persistent messages, in order");
    b.terminate();
    b.restart();
    assert!(drain(&b, "/queue/d", false).is_empty(), "acked messages never come back");
}

#[test]
fn given_sigterm_should_finish_inflight_sends_and_tell_clients() {
    let mut b = Broker::start("sigterm", "");
    let mut p = b.connect();
    for i in 0..200 {
        p.send(&Frame::new(Command::Send).header("destination", "/queue/t").header("persistent", "true").header("receipt", i.to_string()).with_body(format!("{i}")));
    }
    let mut receipted = 0;
    while let Some(f) = p.read_frame(FRAME_TIMEOUT) {
        if f.command == Command::Receipt {
            receipted += 1;
        }
        if receipted == 200 {
            break;
        }
    }
    let mut idle = b.connect();
    let status = b.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let bye = idle.expect(Command::Error);
    assert!(bye.get("message").unwrap_or("").contains("shutting down"));
    assert!(b.log_text().contains("broker stopped"));
    b.restart();
    assert_eq!(drain(&b, "/queue/t", false).len(), 200);
}

#[test]
fn given_torn_tail_should_truncate_and_keep_every_complete_record() {
    let mut b = Broker::start("torn", "");
    let mut p = b.connect();
    for i in 0..5 {
        p.send_receipted("/queue/t", &format!("ok{i}"), true);
    }
    b.kill9();
    // A crash in the middle of a write: half a record at the end.
    // It lands right after the last record, in the space the journal preallocated.
    let seg = segments(&b).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = records_end(&bytes);
    let torn = [0x30, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3];
    if bytes.len() < len + torn.len() {
        bytes.resize(len + torn.len(), 0);
    }
    bytes[len..len + torn.len()].copy_from_slice(&torn);
    std::fs::write(&seg, &bytes).unwrap();
    b.restart();
    assert!(b.log_text().contains("torn"), "recovery logs the truncation");
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, len, "torn tail cut off");
    let mut p = b.connect();
    p.send_receipted("/queue/t", "after", true);
    b.kill9();
    b.restart();
    assert_eq!(drain(&b, "/queue/t", false), ["ok0", "ok1", "ok2", "ok3", "ok4", "after"]);
}

#[test]
fn given_corrupt_record_in_the_middle_should_refuse_to_start_naming_file_and_offset() {
    let mut b = Broker::start("corrupt", "");
    let mut p = b.connect();
    for i in 0..5 {
        p.send_receipted("/queue/c", &format!("payload-number-{i}"), true);
    }
    b.kill9();
    let seg = segments(&b).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let pos = bytes.windows(16).position(|w| w == b"payload-number-1").expect("record body on disk");
    bytes[pos] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let before = std::fs::read(&seg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .args(["run", "--data-dir"])
        .arg(&b.data_dir)
        .args(["--stomp-listen", &format!("127.0.0.1:{}", common::reserve_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", common::reserve_port())])
        .output()
        .expect("run broker");
    assert!(!out.status.success(), "start-up must stop on a corrupt record");
    let err = String::from_utf8_lossy(&out.stderr);
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name) && err.contains("offset"), "error names file and offset: {err}");
    assert_eq!(std::fs::read(&seg).unwrap(), before, "nothing modified");
}

#[test]
fn given_acked_messages_should_reclaim_segments() {
    let b = Broker::start("reclaim", "storage:\n  segmentSize: 64KiB\nstomp:\n  maxBodyBytes: 64KiB\n");
    let mut p = b.connect();
    let body = "x".repeat(4000);
    for _ in 0..100 {
        p.send_receipted("/queue/r", &body, true);
    }
    assert!(segments(&b).len() >= 5, "several segments written: {:?}", segments(&b));
    assert_eq!(drain(&b, "/queue/r", true).len(), 100);
    // Reclamation runs after the next group commit.
    p.send_receipted("/queue/other", "tick", true);
    eventually("the drained segments reclaimed", timeouts::RECLAIM, || {
        let reclaimed = segments(&b).len() <= 2;
        if !reclaimed {
            p.send_receipted("/queue/other", "tick", false);
        }
        reclaimed
    });
}

#[test]
fn given_full_queue_should_slow_producer_then_fail_with_error() {
    let b = Broker::start(
        "backpressure",
        "memory:\n  maxQueueBytes: 64KiB\n  maxBrokerBytes: 1MiB\n  producerBlockTimeout: 1s\n",
    );
    let mut p = b.connect();
    let body = "y".repeat(8 * 1024);
    let mut sent = 0;
    let started = Instant::now();
    let error = loop {
        p.send(&Frame::new(Command::Send).header("destination", "/queue/full").header("receipt", "r").with_body(body.clone()));
        let f = p.expect_frame();
        if f.command == Command::Error {
            break f;
        }
        sent += 1;
        assert!(sent < 100, "the producer was never slowed down");
    };
    assert!(error.get("message").unwrap_or("").contains("full"), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "producer waited before failing");
    assert!(b.status()["memoryBytes"].as_u64().unwrap() < 128 * 1024);
    // A consumer makes room; a producer blocked meanwhile proceeds.
    let port = b.stomp_port;
    let producer = std::thread::spawn(move || {
        let mut p = Conn::connect(port, &[("accept-version", "1.2")]);
        p.send(&Frame::new(Command::Send).header("destination", "/queue/full").header("receipt", "late").with_body("late"));
        p.expect(Command::Receipt);
    });
    let mut c = b.connect();
    c.subscribe("s", "/queue/full", "auto", &[]);
    let mut n = 0;
    while c.read_frame(Duration::from_secs(2)).is_some() {
        n += 1;
    }
    producer.join().expect("blocked producer finished");
    assert_eq!(n, sent + 1);
}

#[test]
fn given_admin_endpoint_should_report_health_status_and_metrics() {
    let b = Broker::start("admin", "");
    let mut p = b.connect();
    p.send_receipted("/queue/m", "abc", true);
    assert_eq!(http_get(b.admin_port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(b.admin_port, "/readyz").unwrap().0, 200);
    let s = b.status();
    assert_eq!(s["role"], "live");
    assert!(s["nodeId"].as_str().unwrap().starts_with("duomq-"));
    assert_eq!(s["queues"][0]["name"], "/queue/m");
    assert_eq!(s["queues"][0]["depth"], 1);
    assert!(s["connections"].as_u64().unwrap() >= 1);
    let (code, metrics) = http_get(b.admin_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "duomq_messages_in_total 1",
        "duomq_bytes_in_total 3",
        "duomq_queue_depth{queue=\"/queue/m\"} 1",
        "duomq_journal_fsync_seconds_bucket",
        "duomq_connections ",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
}

#[test]
fn given_bad_config_should_fail_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.yaml");
    std::fs::write(&cfg, "memory:\n  maxQueueBytes: 12parsecs\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duomq-broker")).arg("run").arg("-c").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory.maxQueueBytes"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .arg("run")
        .env("DUOMQ_STOMP__LISTEN", "not-an-address")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("stomp.listen"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duomq-broker")).arg("print-default-config").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("maxQueueBytes: 64MiB") && text.contains("# "));
}

/// A real full disk: the data dir on a 2 MiB tmpfs (needs root, as CI has).
#[test]
fn given_full_disk_should_error_producers_and_recover_when_space_returns() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test mounts a tmpfs and needs root (CI runs as root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(status.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut b = Broker::start_in(dir.path(), &mnt.join("data"), "storage:\n  segmentSize: 16MiB\n");
    let filler = mnt.join("filler");
    // Leave little room: fill the disk, keeping ~256 KiB free.
    let free = {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as usize * st.f_frsize as usize
    };
    std::fs::write(&filler, vec![0u8; free.saturating_sub(256 * 1024)]).unwrap();
    let body = "z".repeat(16 * 1024);
    let mut p = b.connect();
    let mut receipted = 0;
    let error = loop {
        p.send(&Frame::new(Command::Send).header("destination", "/queue/disk").header("persistent", "true").header("receipt", "r").with_body(body.clone()));
        let f = p.expect_frame();
        if f.command == Command::Error {
            break f;
        }
        receipted += 1;
        assert!(receipted < 100, "disk never filled");
    };
    assert!(error.get("message").unwrap_or("").contains("failed to persist"), "{error:?}");
    assert!(b.child.as_mut().unwrap().try_wait().unwrap().is_none(), "broker still running");
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let mut p = b.connect();
    p.send_receipted("/queue/disk", "after", true);
    b.kill9();
    b.restart();
    let got = drain(&b, "/queue/disk", false);
    assert_eq!(got.len(), receipted + 1, "every receipted message survived the full disk");
    assert_eq!(got.last().map(String::as_str), Some("after"));
}

#[test]
fn given_resent_message_id_should_store_once_also_after_a_crash() {
    let mut b = Broker::start("dedup", "");
    let mut p = b.connect();
    let send = send_with_id;
    send(&mut p, "producer-1");
    send(&mut p, "producer-1");
    send(&mut p, "producer-2");
    assert_eq!(b.queue_depth("/queue/dd"), 2);
    b.kill9();
    b.restart();
    let mut p = b.connect();
    send(&mut p, "producer-2");
    send(&mut p, "producer-3");
    let mut c = b.connect();
    c.subscribe("s", "/queue/dd", "client-individual", &[]);
    let mut got = vec![];
    let mut queued = std::collections::VecDeque::new();
    while let Some(m) = queued.pop_front().or_else(|| c.read_frame(Duration::from_millis(500))) {
        assert_eq!(m.headers.iter().filter(|(k, _)| k == "message-id").count(), 1, "one message-id, the broker's");
        got.push(m.get("dedup-id").unwrap_or_default().to_string());
        queued.extend(c.ack(&m, true));
    }
    assert_eq!(got, ["producer-1", "producer-2", "producer-3"]);
    // Acked, then a crash: a late resend of an acked message is still recognised.
    b.kill9();
    b.restart();
    let mut p = b.connect();
    send(&mut p, "producer-1");
    assert_eq!(b.queue_depth("/queue/dd"), 0, "a resend of an acked message was stored again");
}

/// Sends a persistent message to `/queue/dd` with producer message id `id` and waits for
/// its receipt.
fn send_with_id(p: &mut Conn, id: &str) {
    p.send(
        &Frame::new(Command::Send)
            .header("destination", "/queue/dd")
            .header("persistent", "true")
            .header("message-id", id)
            .header("receipt", id)
            .with_body(id.to_string()),
    );
    assert_eq!(p.expect(Command::Receipt).get("receipt-id"), Some(id));
}

#[test]
fn given_acked_message_id_whose_segment_was_reclaimed_should_still_be_recognised_after_a_crash() {
    let mut b = Broker::start("dedup-reclaimed", "storage:\n  segmentSize: 64KiB\nstomp:\n  maxBodyBytes: 64KiB\n");
    let mut p = b.connect();
    send_with_id(&mut p, "producer-1");
    assert_eq!(drain(&b, "/queue/dd", true).len(), 1);
    let first = segments(&b)[0].clone();
    let body = "x".repeat(4000);
    for _ in 0..100 {
        p.send_receipted("/queue/r", &body, true);
    }
    assert_eq!(drain(&b, "/queue/r", true).len(), 100);
    eventually("the segment of the first add reclaimed", timeouts::RECLAIM, || {
        let reclaimed = !first.exists();
        if !reclaimed {
            p.send_receipted("/queue/other", "tick", false);
        }
        reclaimed
    });
    b.kill9();
    b.restart();
    let mut p = b.connect();
    send_with_id(&mut p, "producer-1");
    assert_eq!(b.queue_depth("/queue/dd"), 0, "a resend whose add was reclaimed was stored again");
}

/// Where the records of a segment end: after its 32-byte header, frames of
/// `[u32 LE length][u32 LE crc32c][payload]` until a zero length or the end of the file.
fn records_end(segment: &[u8]) -> usize {
    let mut offset = 32;
    while let Some(len) = segment.get(offset..offset + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0 || offset + 8 + len > segment.len() {
            break;
        }
        offset += 8 + len;
    }
    offset
}

#[test]
fn given_a_producer_that_vanishes_mid_write_should_leave_every_stored_message_to_consumers_in_order() {
    // Persistent SENDs without receipts, then the socket closes at once: whatever the
    // journal took must reach consumers now (not only after a restart), in order, and a
    // resend of one of them must be recognised, not dropped as a duplicate of nothing.
    let b = Broker::start("vanish", "");
    let mut p = b.connect();
    for i in 0..300 {
        let f = Frame::new(Command::Send)
            .header("destination", "/queue/vanish")
            .header("persistent", "true")
            .header("message-id", format!("v-{i}"))
            .with_body(format!("m{i}"));
        p.send(&f);
    }
    drop(p);
    let deadline = Deadline::after("all 300 messages back", timeouts::MESSAGE);
    let got = loop {
        let got = drain(&b, "/queue/vanish", false);
        if got.len() == 300 || deadline.passed() {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    assert_eq!(got, expected);
}
