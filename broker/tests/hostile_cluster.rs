//! The cluster port against strangers, with a real live broker process: sockets that
//! announce 64 MiB frames and push bytes at it, and more silent sockets than
//! `ha.cluster.maxPendingConnections`. The live's memory (VmRSS and its peak VmHWM from
//! `/proc`) stays bounded, the excess is closed at once with a reason, the handshake
//! deadline closes the rest, and a real backup still connects and syncs afterwards. A
//! backup's STOMP port, which only tells clients who is live, is bounded the same way.

mod common;

use bytes::BytesMut;
use common::cluster::{Member, Peer};
use common::{metric_value, proc_memory, Broker};
use duomq_broker::cluster::{ClusterCodec, ClusterFrame};
use std::io::{Read, Write};
use std::net::TcpStream;
use duomq_testkit::timeouts::{CLOSE as CLOSE_TIMEOUT, HANDSHAKE_DEADLINE as HANDSHAKE_DEADLINE_TIMEOUT};
use duomq_testkit::{eventually, Deadline};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// A live of group `g1` (a `Broker`, so the test knows its pid) and a backup, not started,
/// that it names as its member.
struct Group {
    root: tempfile::TempDir,
    live: Broker,
    live_cluster: u16,
    backup: Member,
}

impl Group {
    fn start(max_pending: usize) -> Group {
        let root = tempfile::Builder::new().prefix("duomq-hostile-cluster-").tempdir().expect("tempdir");
        std::fs::write(root.path().join("password"), "a-long-random-cluster-password\n").expect("write password");
        let backup = Member::new(root.path(), "node-b");
        let live_cluster = common::reserve_port();
        let config = format!(
            "node:\n  id: node-a\n\
             ha:\n  policy: replication\n  role: primary\n  groupName: g1\n  checkPeriod: 100ms\n  connectionTtl: 1s\n\
             \x20 cluster:\n    listen: 127.0.0.1:{live_cluster}\n    passwordFile: {pw}\n    maxPendingConnections: {max_pending}\n\
             \x20 members:\n    - name: node-b\n      cluster: {b_cluster}\n      stomp: {b_stomp}\n\
             \x20 arbiter:\n    kind: fileLock\n    lockFile: {lock}\n",
            pw = root.path().join("password").display(),
            b_cluster = backup.cluster_addr(),
            b_stomp = backup.stomp_addr(),
            lock = root.path().join("live.lock").display(),
        );
        let live = Broker::start("hostile-cluster-live", &config);
        Group { root, live, live_cluster, backup }
    }

    fn live_peer(&self) -> Peer {
        Peer {
            name: "node-a".into(),
            cluster: format!("127.0.0.1:{}", self.live_cluster),
            stomp: format!("127.0.0.1:{}", self.live.stomp_port),
            amqp: String::new(),
        }
    }

    /// Starts the backup and waits until it reports itself in sync with the live.
    fn backup_syncs(&mut self) {
        let peers = [self.live_peer()];
        self.backup.start(&peers, "backup", "", self.root.path(), "g1", "password");
        self.backup.wait_synced_backup();
    }

    fn metric(&self, line_start: &str) -> u64 {
        metric_value(self.live.admin_port, line_start)
    }
}

/// Reads `stream` until the peer closes it or `timeout` passes; the bytes read and whether
/// it was closed (end of stream or reset).
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Deadline::after("the peer closing the socket", timeout);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if deadline.passed() {
            return (got, false);
        }
        stream.set_read_timeout(Some(deadline.left_at_least(Duration::from_millis(1)))).expect("set read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (got, false)
            }
            Err(_) => return (got, true),
        }
    }
}

fn log_of(live: &Broker) -> String {
    std::fs::read_to_string(&live.log).unwrap_or_default()
}

fn wait_for_log(live: &Broker, needle: &str) {
    eventually(&format!("the live logging {needle:?}"), CLOSE_TIMEOUT, || log_of(live).contains(needle));
}

#[test]
fn given_unauthenticated_sockets_announcing_64_mib_frames_when_they_push_bytes_should_keep_rss_bounded_and_let_a_backup_sync() {
    const SOCKETS: usize = 48;
    const PUSH_PER_SOCKET: u64 = 8 * MIB;
    const BOUND: u64 = 64 * MIB;
    // A cap above the number of sockets: what is measured here is the frame limit alone.
    let mut group = Group::start(64);
    let pid = group.live.pid();
    let rss_before = proc_memory(pid, "VmRSS:");
    let hwm_before = proc_memory(pid, "VmHWM:");

    // Every socket announces a 64 MiB hello and pushes 8 MiB of it, all at once; the
    // sockets stay open until every one has pushed (or been cut off), so a live that
    // buffered them would hold 48 x 8 MiB = 384 MiB.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(SOCKETS + 1));
    let pushers: Vec<_> = (0..SOCKETS)
        .map(|_| {
            let (addr, barrier) = (format!("127.0.0.1:{}", group.live_cluster), std::sync::Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).expect("connect to the cluster port");
                stream.set_write_timeout(Some(Duration::from_secs(20))).expect("set write timeout");
                let mut header = (64u32 * 1024 * 1024).to_be_bytes().to_vec();
                header.push(0x01);
                let chunk = vec![0x5a_u8; 64 * 1024];
                let mut pushed = 0u64;
                if stream.write_all(&header).is_ok() {
                    while pushed < PUSH_PER_SOCKET && stream.write_all(&chunk).is_ok() {
                        pushed += chunk.len() as u64;
                    }
                }
                barrier.wait();
                pushed
            })
        })
        .collect();
    barrier.wait();
    let rss_during = proc_memory(pid, "VmRSS:");
    let hwm_during = proc_memory(pid, "VmHWM:");
    let pushed: Vec<u64> = pushers.into_iter().map(|t| t.join().expect("pusher thread")).collect();
    println!(
        "VmRSS {} MiB before, {} MiB with the sockets open; VmHWM {} MiB before, {} MiB after; \
         bytes accepted per socket (by the kernel): max {} KiB",
        rss_before / MIB,
        rss_during / MIB,
        hwm_before / MIB,
        hwm_during / MIB,
        pushed.iter().max().copied().unwrap_or(0) / 1024,
    );
    assert!(
        hwm_during < rss_before + BOUND,
        "peak RSS {} MiB went past {} MiB before + {} MiB",
        hwm_during / MIB,
        rss_before / MIB,
        BOUND / MIB
    );

    wait_for_log(&group.live, "allowed before authentication");
    let refused = group.metric("duomq_cluster_connections_refused_total{reason=\"frame_too_large\"}");
    assert_eq!(refused, SOCKETS as u64, "every socket is refused for its frame size");
    group.backup_syncs();
}

#[test]
fn given_more_silent_unauthenticated_sockets_than_the_limit_should_turn_the_excess_away_and_close_the_rest_at_the_deadline() {
    const LIMIT: usize = 16;
    const SOCKETS: usize = 40;
    let group = Group::start(LIMIT);
    let addr = format!("127.0.0.1:{}", group.live_cluster);
    let mut sockets: Vec<TcpStream> =
        (0..SOCKETS).map(|_| TcpStream::connect(&addr).expect("connect to the cluster port")).collect();

    // LIMIT of them wait in their handshake; every other one is turned away at once, with
    // a Refused frame naming the limit.
    eventually("the excess sockets turned away", CLOSE_TIMEOUT, || {
        group.metric("duomq_cluster_connections_refused_total{reason=\"pending_limit\"}") >= (SOCKETS - LIMIT) as u64
    });
    assert_eq!(group.metric("duomq_cluster_pending_connections "), LIMIT as u64);
    let (mut open, mut told) = (Vec::new(), 0);
    for socket in sockets.iter_mut() {
        let (bytes, closed) = read_until_closed(socket, Duration::from_millis(100));
        let frame = ClusterCodec::new(4096).decode(&mut BytesMut::from(&bytes[..])).ok().flatten();
        if matches!(&frame, Some(ClusterFrame::Refused { reason }) if reason.contains("ha.cluster.maxPendingConnections")) {
            told += 1;
        }
        if !closed {
            open.push(socket);
        }
    }
    assert_eq!(open.len(), LIMIT, "sockets still open");
    assert!(told > 0, "no socket turned away was told why");
    assert!(log_of(&group.live).contains("ha.cluster.maxPendingConnections"), "{}", log_of(&group.live));

    // Those that stay silent are closed by the handshake deadline.
    for socket in open {
        let (_, closed) = read_until_closed(socket, HANDSHAKE_DEADLINE_TIMEOUT);
        assert!(closed, "a silent socket outlived the handshake deadline");
    }
    assert_eq!(group.metric("duomq_cluster_connections_refused_total{reason=\"timed_out\"}"), LIMIT as u64);
    assert_eq!(group.metric("duomq_cluster_pending_connections "), 0);
}

#[test]
fn given_strangers_holding_every_handshake_place_when_a_backup_connects_should_displace_a_stalled_one_and_sync() {
    const LIMIT: usize = 16;
    let mut group = Group::start(LIMIT);
    // LIMIT strangers, each reconnecting the moment its socket is closed and saying nothing:
    // every place stays taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let strangers: Vec<_> = (0..LIMIT)
        .map(|_| {
            let (addr, stop) = (format!("127.0.0.1:{}", group.live_cluster), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut connections = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut socket) = TcpStream::connect(&addr) else { continue };
                    connections += 1;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if read_until_closed(&mut socket, Duration::from_millis(200)).1 {
                            break;
                        }
                    }
                }
                connections
            })
        })
        .collect();
    eventually("the strangers taking every place", CLOSE_TIMEOUT, || group.metric("duomq_cluster_pending_connections ") >= LIMIT as u64);
    // Members' probes and the backup's own connection find every place taken; each takes
    // the place of a stranger stalled for a second or more.
    group.backup_syncs();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connections: u64 = strangers.into_iter().map(|t| t.join().expect("stranger thread")).sum();
    let displaced = group.metric("duomq_cluster_connections_refused_total{reason=\"pending_limit\"}");
    println!("strangers opened {connections} connections; {displaced} were turned away or displaced");
    assert!(group.metric("duomq_cluster_pending_connections ") <= LIMIT as u64);
}

#[test]
fn given_clients_pushing_16_mib_connect_frames_at_a_backup_should_keep_its_rss_bounded_and_still_name_the_live() {
    const SOCKETS: usize = 40;
    const PUSH_PER_SOCKET: u64 = 8 * MIB;
    const BOUND: u64 = 64 * MIB;
    let root = tempfile::Builder::new().prefix("duomq-hostile-backup-").tempdir().expect("tempdir");
    std::fs::write(root.path().join("password"), "a-long-random-cluster-password\n").expect("write password");
    let mut live = Member::new(root.path(), "node-a");
    let backup_cluster = common::reserve_port();
    let backup_peer = Peer { name: "node-b".into(), cluster: format!("127.0.0.1:{backup_cluster}"), stomp: "127.0.0.1:1".into(), amqp: String::new() };
    live.start(&[backup_peer], "primary", "", root.path(), "g1", "password");
    live.wait_live();
    let config = format!(
        "node:\n  id: node-b\n\
         ha:\n  policy: replication\n  role: backup\n  groupName: g1\n  checkPeriod: 100ms\n  connectionTtl: 1s\n\
         \x20 cluster:\n    listen: 127.0.0.1:{backup_cluster}\n    passwordFile: {pw}\n\
         \x20 members:\n    - name: node-a\n      cluster: {a_cluster}\n      stomp: {a_stomp}\n\
         \x20 arbiter:\n    kind: fileLock\n    lockFile: {lock}\n",
        pw = root.path().join("password").display(),
        a_cluster = live.cluster_addr(),
        a_stomp = live.stomp_addr(),
        lock = root.path().join("live.lock").display(),
    );
    // Ready once in sync with the live.
    let backup = Broker::start("hostile-backup", &config);
    let pid = backup.pid();
    let rss_before = proc_memory(pid, "VmRSS:");

    let barrier = std::sync::Arc::new(std::sync::Barrier::new(SOCKETS + 1));
    let pushers: Vec<_> = (0..SOCKETS)
        .map(|_| {
            let (port, barrier) = (backup.stomp_port, std::sync::Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the backup's STOMP port");
                stream.set_write_timeout(Some(Duration::from_secs(20))).expect("set write timeout");
                let chunk = vec![b'x'; 64 * 1024];
                let mut pushed = 0u64;
                if stream.write_all(b"CONNECT\naccept-version:1.2\ncontent-length:16777215\n\n").is_ok() {
                    while pushed < PUSH_PER_SOCKET && stream.write_all(&chunk).is_ok() {
                        pushed += chunk.len() as u64;
                    }
                }
                barrier.wait();
                let (answer, _) = read_until_closed(&mut stream, CLOSE_TIMEOUT);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    barrier.wait();
    let hwm_during = proc_memory(pid, "VmHWM:");
    let answers: Vec<String> = pushers.into_iter().map(|t| t.join().expect("pusher thread")).collect();
    println!("backup VmRSS {} MiB before; VmHWM {} MiB with the sockets open", rss_before / MIB, hwm_during / MIB);
    assert!(
        hwm_during < rss_before + BOUND,
        "peak RSS {} MiB went past {} MiB before + {} MiB",
        hwm_during / MIB,
        rss_before / MIB,
        BOUND / MIB
    );
    // A reset may swallow the answer to a client whose bytes were still unread; most get it.
    let named = answers.iter().filter(|a| a.starts_with("ERROR") && a.contains("not live")).count();
    assert!(named > 0, "no pusher was told who is live: {answers:?}");

    let mut client = common::Conn::raw(backup.stomp_port);
    client.send(&duomq_broker::stomp::Frame::new(duomq_broker::stomp::Command::Connect).header("accept-version", "1.2"));
    let error = client.expect(duomq_broker::stomp::Command::Error);
    let message = error.get("message").unwrap_or_default().to_string();
    assert!(message.contains(&live.stomp_addr()), "{message}");
}
