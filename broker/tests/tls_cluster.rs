//! TLS on the cluster port with real processes on loopback: a replicated pair over mutual
//! TLS failing over after kill -9, members refused (certificates from another CA, one
//! member in plaintext) with the reason on both sides and in the metrics, a network
//! bridge over TLS, and the certificate files rotated under load with nothing lost and
//! the live role never moving.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::tls::{LeafFiles, Pki};
use common::{cli, eventually, metric_value, Deadline};
use duomq_testkit::timeouts;
use duomq_broker::tls::pki::Leaf;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD_FILE: &str = "password";

fn root() -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("duomq-tls-pair-").tempdir().expect("tempdir");
    std::fs::write(root.path().join(PASSWORD_FILE), "a-long-random-cluster-password\n").expect("write the password");
    root
}

fn failover_url(a: &Member, b: &Member) -> String {
    format!(
        "failover:(stomp://{},stomp://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1",
        a.stomp_addr(),
        b.stomp_addr()
    )
}

/// Prints the first log line of `member` containing `needle` (the refusals, for the record).
fn show(member: &Member, needle: &str) {
    if let Some(line) = member.log().lines().find(|l| l.contains(needle)) {
        println!("{}: {line}", member.name);
    }
}

fn metric(member: &Member, line_start: &str) -> u64 {
    metric_value(member.admin, &format!("{line_start} "))
}

/// Receives `count` messages from `url` (`extra`: `--ca-file` and such) and returns the
/// consumer's summary line.
fn receive_all(url: &str, destination: &str, count: usize, extra: &[&str]) -> String {
    let out = cli(&["receive", "--url", url, "--destination", destination, "--count", &count.to_string(), "--timeout", "20s"])
        .args(extra)
        .output()
        .expect("run the consumer");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the consumer did not get every message: {summary}");
    summary
}

fn send(url: &str, destination: &str, count: usize, extra: &[&str]) {
    let out = cli(&["send", "--url", url, "--destination", destination, "--count", &count.to_string(), "--size", "256", "--persistent", "--receipts", "--window", "32"])
        .args(extra)
        .output()
        .expect("run the producer");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn given_a_pair_over_mutual_tls_when_the_live_is_killed_should_take_over_with_every_receipted_message() {
    let root = root();
    let pki = Pki::new("pair");
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    let (leaf_a, leaf_b) = (pki.leaf("node-a"), pki.leaf("node-b"));
    a.start(&[b.peer()], "primary", &pki.config(&leaf_a, &["cluster"]), root.path(), "g1", PASSWORD_FILE);
    a.wait_live();
    b.start(&[a.peer()], "backup", &pki.config(&leaf_b, &["cluster"]), root.path(), "g1", PASSWORD_FILE);
    b.wait_synced_backup();
    assert!(b.log().contains("following the live live=node-a epoch=1 tls=TLSv1_3"), "the backup follows over TLS 1.3:\n{}", b.log());
    // The port speaks TLS only: a plaintext stranger gets no cluster frame back.
    let mut plain = std::net::TcpStream::connect(a.cluster_addr()).expect("connect to the cluster port");
    std::io::Write::write_all(&mut plain, b"\x00\x00\x00\x05\x01hello").expect("write plaintext");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut plain, &mut answer).unwrap_or(0);
    assert!(n == 0 || answer[0] == 0x15, "a TLS port answers plaintext with a TLS alert or nothing, got {:?}", &answer[..n]);

    let url = failover_url(&a, &b);
    const COUNT: usize = 3000;
    let producer = cli(&[
        "send", "--url", &url, "--destination", "/queue/tls", "--count", &COUNT.to_string(), "--size", "256", "--persistent", "--receipts", "--window", "16",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the producer");
    a.wait_under_way("/queue/tls", (COUNT / 3) as u64);
    a.kill9();
    b.wait_live();
    let out = producer.wait_with_output().expect("producer finished");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the producer failed: {report}");
    println!("producer: {}", report.lines().last().unwrap_or_default());
    let summary = receive_all(&url, "/queue/tls", COUNT, &[]);
    assert!(summary.contains(&format!("received {COUNT} messages")) && summary.contains(" 0 duplicates"), "{summary}");
    assert_eq!(metric(&b, "duomq_tls_handshake_failures_total{listener=\"cluster\"}"), 0);
}

/// Starts a live with the `tls:` section `tls_a` and a backup with `tls_b` ("": plaintext),
/// waits until the live has refused the backup's connections as `tls` and both logs say
/// why (`live_says`, `backup_says`), then checks that nothing moved: the live stays live and
/// alone, the backup never syncs nor activates.
fn refused_pair(tls_a: &str, tls_b: &str, live_says: &str, backup_says: &str) -> (tempfile::TempDir, Member, Member) {
    let root = root();
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start(&[b.peer()], "primary", tls_a, root.path(), "g1", PASSWORD_FILE);
    a.wait_live();
    b.start(&[a.peer()], "backup", tls_b, root.path(), "g1", PASSWORD_FILE);
    eventually("the live refuses the backup's connections", ROLE_TIMEOUT, || {
        metric(&a, "duomq_cluster_connections_refused_total{reason=\"tls\"}") >= 2
    });
    eventually("the live says why", ROLE_TIMEOUT, || a.log().contains(live_says));
    eventually("the backup says why", ROLE_TIMEOUT, || b.log().contains(backup_says));
    show(&a, "refused a cluster connection");
    show(&b, "cluster connection to a member refused");
    std::thread::sleep(Duration::from_secs(3));
    let (sa, sb) = (a.status().expect("live status"), b.status().expect("backup status"));
    assert_eq!((sa["role"].as_str(), sa["ha"]["alone"].as_bool()), (Some("live"), Some(true)), "{sa}");
    assert_eq!(sb["role"], "backup", "{sb}");
    assert_ne!(sb["ha"]["sync"]["state"], "synced", "{sb}");
    // The backup's /status says which member refused it and why, as its log does.
    let refused = &sb["ha"]["refusedBy"][0];
    assert_eq!(refused["member"].as_str(), Some(a.cluster_addr().as_str()), "{sb}");
    assert!(refused["reason"].as_str().is_some_and(|r| r.contains(backup_says)), "{sb}");
    assert!(!b.log().contains("activating"), "{}", b.log());
    (root, a, b)
}

#[test]
fn given_members_with_certificates_from_different_cas_should_refuse_to_replicate_and_say_why() {
    let (pki_a, pki_b) = (Pki::new("ca-one"), Pki::new("ca-two"));
    // The backup checks the live's certificate first; the live hears its alert.
    let (_root, a, b) = refused_pair(
        &pki_a.config(&pki_a.leaf("node-a"), &["cluster"]),
        &pki_b.config(&pki_b.leaf("node-b"), &["cluster"]),
        "received fatal alert: UnknownCA: the peer does not trust this member's certificate: the members' certificates are not from the same CA (tls.caFile)",
        "invalid peer certificate: UnknownIssuer: the members' certificates are not from the same CA (tls.caFile)",
    );
    assert!(metric(&b, "duomq_tls_handshake_failures_total{listener=\"cluster\"}") >= 1);
    assert!(metric(&a, "duomq_tls_handshake_failures_total{listener=\"cluster\"}") >= 1);
}

#[test]
fn given_a_member_with_an_expired_certificate_should_be_refused_and_say_why() {
    let pki = Pki::new("expiry");
    let now = std::time::SystemTime::now();
    let expired = Leaf { not_before: now - Duration::from_secs(7200), not_after: now - Duration::from_secs(3600), ..Leaf::new("node-b", Duration::ZERO).loopback() };
    // The live checks the backup's certificate and finds it expired; the backup hears why.
    refused_pair(
        &pki.config(&pki.leaf("node-a"), &["cluster"]),
        &pki.config(&pki.leaf_from(expired, "node-b-expired"), &["cluster"]),
        "invalid peer certificate: certificate expired",
        "received fatal alert: CertificateExpired: the peer refused this member's certificate: it has expired",
    );
}

#[test]
fn given_a_plaintext_member_and_a_tls_member_should_refuse_each_other_and_say_why() {
    let pki = Pki::new("mixed");
    let tls_live = pki.config(&pki.leaf("node-a"), &["cluster"]);
    let no_tls = "no TLS from the peer: tls.cluster.enabled must be on for every member or off for every one";
    let speaks_tls = "the peer speaks TLS and this end does not: tls.cluster.enabled must be the same on every member";
    refused_pair(&tls_live, "", no_tls, speaks_tls);
    // The reverse: a plaintext live, a TLS backup.
    refused_pair("", &pki.config(&pki.leaf("node-b"), &["cluster"]), speaks_tls, no_tls);
}

/// A standalone broker whose cluster port (TLS) takes bridges; `network` is its `network:` block.
fn bridge_node(name: &str, cluster: u16, tls: &str, network: &str) -> common::Broker {
    let config = format!("node:\n  id: {name}\nha:\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    password: bridge-password\n{tls}{network}");
    common::Broker::start(name, &config)
}

fn link_state(broker: &common::Broker) -> serde_json::Value {
    broker.status()["network"]["connectors"][0]["links"][0].clone()
}

#[test]
fn given_a_bridge_between_groups_over_tls_should_forward_messages() {
    let pki = Pki::new("bridge");
    let (ca, cb) = (common::reserve_port(), common::reserve_port());
    let network = format!("network:\n  connectors:\n    - name: to-b\n      uri: tcp://127.0.0.1:{cb}\n");
    let a = bridge_node("a", ca, &pki.config(&pki.leaf("a"), &["cluster"]), &network);
    let b = bridge_node("b", cb, &pki.config(&pki.leaf("b"), &["cluster"]), "");
    eventually("the bridge links over TLS", ROLE_TIMEOUT, || link_state(&a)["state"] == "linked");
    let b_url = format!("stomp://127.0.0.1:{}", b.stomp_port);
    let consumer = cli(&["receive", "--url", &b_url, "--destination", "/queue/bridged", "--count", "200", "--timeout", "30s"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the consumer");
    eventually("the remote's demand reaches the bridge", ROLE_TIMEOUT, || {
        link_state(&a)["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == "/queue/bridged"))
    });
    send(&format!("stomp://127.0.0.1:{}", a.stomp_port), "/queue/bridged", 200, &[]);
    let out = consumer.wait_with_output().expect("consumer finished");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && summary.contains("received 200 messages") && summary.contains(" 0 duplicates"), "{summary}");
    assert_eq!(metric_value(b.admin_port, "duomq_tls_handshake_failures_total{listener=\"cluster\"} "), 0);

    // A bridge whose certificate is from another CA is refused, and says why.
    let other = Pki::new("other");
    let cc = common::reserve_port();
    let to_b = format!("network:\n  connectors:\n    - name: to-b\n      uri: tcp://127.0.0.1:{cb}\n");
    let c = bridge_node("c", cc, &other.config(&other.leaf("c"), &["cluster"]), &to_b);
    eventually("the foreign bridge is refused", ROLE_TIMEOUT, || link_state(&c)["state"] == "refused");
    let error = link_state(&c)["lastError"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("not from the same CA"), "{error}");
    assert!(c.log_text().contains("bridge refused (check the certificates: tls.caFile, tls.cluster.enabled)"), "{}", c.log_text());
}

#[test]
fn given_a_remote_grouping_handler_over_tls_should_link_to_the_local_handler() {
    let pki = Pki::new("grouping");
    let (cl, cr) = (common::reserve_port(), common::reserve_port());
    let local = bridge_node("l", cl, &pki.config(&pki.leaf("l"), &["cluster"]), "grouping:\n  handler: local\n");
    let remote_grouping = format!("grouping:\n  handler: remote\n  address: masterslave:(tcp://127.0.0.1:{cl})\n  timeout: 5s\n");
    let remote = bridge_node("r", cr, &pki.config(&pki.leaf("r"), &["cluster"]), &remote_grouping);
    eventually("the remote handler links to the local one over TLS", ROLE_TIMEOUT, || {
        metric_value(remote.admin_port, "duomq_grouping_connected ") == 1 && local.log_text().contains("remote grouping handler connected")
    });
    assert_eq!(metric_value(local.admin_port, "duomq_cluster_connections_refused_total{reason=\"tls\"} "), 0);
}

/// A member's certificate files laid out as kubelet mounts a Secret: `tls.crt` and
/// `tls.key` are links into `..data`, itself a link to a timestamped directory, and an
/// update swaps `..data` in one rename, so both files change at once.
struct Mounted {
    dir: PathBuf,
    version: u32,
}

impl Mounted {
    fn new(dir: &Path, ca_pem: &str, leaf: &LeafFiles) -> Mounted {
        std::fs::create_dir_all(dir).expect("mount dir");
        let mut mounted = Mounted { dir: dir.to_path_buf(), version: 0 };
        mounted.update(ca_pem, &leaf.issued.cert_pem, &leaf.issued.key_pem);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).expect("link a file into ..data");
        }
        mounted
    }

    /// Writes a new version and swaps `..data` to it atomically (write then rename).
    fn update(&mut self, ca_pem: &str, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let target = self.dir.join(&version);
        std::fs::create_dir_all(&target).expect("version dir");
        std::fs::write(target.join("tls.crt"), cert_pem).expect("write tls.crt");
        std::fs::write(target.join("tls.key"), key_pem).expect("write tls.key");
        std::fs::write(target.join("ca.crt"), ca_pem).expect("write ca.crt");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("link the new version");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }

    fn config(&self, listeners: &[&str]) -> String {
        let on = |l: &str| listeners.contains(&l);
        format!(
            "tls:\n  certFile: {d}/tls.crt\n  keyFile: {d}/tls.key\n  caFile: {d}/ca.crt\n  reloadInterval: 1s\n  stomp:\n    enabled: {}\n  cluster:\n    enabled: {}\n",
            on("stomp"),
            on("cluster"),
            d = self.dir.display(),
        )
    }
}

/// The common name of the certificate a member's listener (the cluster port, or STOMP)
/// presents to a new connection (with `client` as this side's certificate).
fn presented_common_name(addr: &str, ca: &Path, client: &LeafFiles) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let config = duomq_broker::tls::client_config(ca, Some((&client.cert, &client.key)), duomq_broker::config::TlsVersion::V1_2)
            .expect("client TLS settings");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the listener");
        let stream = duomq_broker::tls::connect(tcp, "127.0.0.1", Some(tokio_rustls::TlsConnector::from(config)), Duration::from_secs(10))
            .await
            .expect("TLS handshake with the listener");
        stream.peer_common_name().expect("the member's certificate has a common name")
    })
}

/// A producer and a consumer through STOMP over TLS, failing over between the two members:
/// batches of [`Load::BATCH`] persistent, receipted messages, each to its own queue, each
/// batch received in full with no duplicate, until [`Load::finish`].
struct Load {
    started: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    producer: std::thread::JoinHandle<()>,
    consumer: std::thread::JoinHandle<usize>,
}

impl Load {
    const BATCH: usize = 500;

    fn start(a: &Member, b: &Member, ca_file: &Path) -> Load {
        let url = format!(
            "failover:(stomp+ssl://{},stomp+ssl://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1",
            a.stomp_addr(),
            b.stomp_addr()
        );
        let ca = ca_file.display().to_string();
        let started = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (url, started, stop, ca) = (url.clone(), Arc::clone(&started), Arc::clone(&stop), ca.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let k = started.fetch_add(1, Ordering::SeqCst);
                    send(&url, &format!("/queue/rotation-{k}"), Load::BATCH, &["--ca-file", &ca]);
                }
            })
        };
        let consumer = {
            let (started, stop) = (Arc::clone(&started), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut k = 0;
                loop {
                    if k < started.load(Ordering::SeqCst) {
                        let summary = receive_all(&url, &format!("/queue/rotation-{k}"), Load::BATCH, &["--ca-file", &ca]);
                        let whole = summary.contains(&format!("received {} messages", Load::BATCH)) && summary.contains(" 0 duplicates");
                        assert!(whole, "batch {k}: {summary}");
                        k += 1;
                    } else if stop.load(Ordering::SeqCst) {
                        return k;
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        Load { started, stop, producer, consumer }
    }

    /// Waits until `more` batches have started from now.
    fn wait_batches(&self, more: usize) {
        let from = self.started.load(Ordering::SeqCst);
        eventually(&format!("{more} more batches"), ROLE_TIMEOUT, || self.started.load(Ordering::SeqCst) >= from + more);
    }

    /// Stops the producer after its batch and waits for the consumer to have every batch.
    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.producer.join().expect("the producer thread");
        let batches = self.consumer.join().expect("the consumer thread");
        assert_eq!(batches, self.started.load(Ordering::SeqCst));
        println!("{batches} batches of {} sent and received under the rotation", Load::BATCH);
    }
}

/// A pair whose members read their files from kubelet-style mounts (`ca_pem` and a leaf of
/// `pki` each), STOMP and the cluster port on TLS: the live started, the backup in sync.
fn mounted_pair(pki: &Pki, ca_pem: &str) -> (tempfile::TempDir, Member, Member, Mounted, Mounted) {
    let root = root();
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    let mount_a = Mounted::new(&root.path().join("secret-a"), ca_pem, &pki.leaf("node-a"));
    let mount_b = Mounted::new(&root.path().join("secret-b"), ca_pem, &pki.leaf("node-b"));
    a.start(&[b.peer()], "primary", &mount_a.config(&["stomp", "cluster"]), root.path(), "g1", PASSWORD_FILE);
    a.wait_live();
    start_mounted_backup(&root, &mut b, &a, &mount_b);
    (root, a, b, mount_a, mount_b)
}

/// (Re)starts the backup `b` of `a` on its mount; a new replication connection, with the
/// files mounted now, and waits until it is in sync.
fn start_mounted_backup(root: &tempfile::TempDir, b: &mut Member, a: &Member, mount: &Mounted) {
    b.kill9();
    b.start(&[a.peer()], "backup", &mount.config(&["stomp", "cluster"]), root.path(), "g1", PASSWORD_FILE);
    b.wait_synced_backup();
}

#[test]
fn given_certificates_rotated_under_load_should_lose_nothing_and_keep_the_live_role() {
    let pki = Pki::new("rotation");
    let ca_pem = pki.ca.pem().cert_pem.clone();
    let (root, a, mut b, mut mount_a, mut mount_b) = mounted_pair(&pki, &ca_pem);
    let probe_client = pki.leaf("probe");
    assert_eq!(presented_common_name(&a.cluster_addr(), &pki.ca_file, &probe_client), "node-a");
    let epoch = a.status().expect("live status")["ha"]["epoch"].as_u64();

    // A producer and a consumer (STOMP over TLS, failover between both members) run
    // through the whole rotation.
    let load = Load::start(&a, &b, &pki.ca_file);
    load.wait_batches(3);

    // New leaves from the same CA, swapped in as kubelet does.
    let rotated = Instant::now();
    let new_a = pki.ca.issue(&Leaf::new("node-a-rotated", common::tls::VALID_FOR).loopback()).expect("issue");
    let new_b = pki.ca.issue(&Leaf::new("node-b-rotated", common::tls::VALID_FOR).loopback()).expect("issue");
    mount_a.update(&ca_pem, &new_a.cert_pem, &new_a.key_pem);
    mount_b.update(&ca_pem, &new_b.cert_pem, &new_b.key_pem);
    let reloaded = "duomq_tls_reloads_total{result=\"ok\"}";
    eventually("both members reload the files", Duration::from_secs(20), || metric(&a, reloaded) >= 1 && metric(&b, reloaded) >= 1);
    println!("reloaded within {:?}", rotated.elapsed());
    assert_eq!(metric(&a, "duomq_tls_reloads_total{result=\"failed\"}"), 0, "an atomic swap never loads half a pair");
    assert_eq!(presented_common_name(&a.cluster_addr(), &pki.ca_file, &probe_client), "node-a-rotated", "new connections see the new certificate");
    assert_eq!(presented_common_name(&b.cluster_addr(), &pki.ca_file, &probe_client), "node-b-rotated");
    assert_eq!(presented_common_name(&a.stomp_addr(), &pki.ca_file, &probe_client), "node-a-rotated", "and on STOMP");
    // Load goes on a while with the new certificates in place.
    load.wait_batches(2);
    load.finish();

    // Nothing moved: same live, same epoch, the replication link opened before the
    // rotation is the one still in use, and the backup is in sync.
    let status = a.status().expect("live status");
    assert_eq!((status["role"].as_str(), status["ha"]["epoch"].as_u64()), (Some("live"), epoch), "{status}");
    assert_eq!(b.log().matches("following the live").count(), 1, "the replication link never dropped:\n{}", b.log());
    assert!(!b.log().contains("activating"), "no failover");
    b.wait_synced_backup();

    // A new replication connection uses the new certificates on both ends.
    start_mounted_backup(&root, &mut b, &a, &mount_b);
    assert_eq!(metric(&a, "duomq_cluster_connections_refused_total{reason=\"tls\"}"), 0);
}

/// Reads until the peer closes the socket (true) or `within` passes (false).
fn closed_within(socket: &mut std::net::TcpStream, within: Duration) -> bool {
    let deadline = Deadline::after("the peer closing the socket", within);
    let mut buf = [0u8; 512];
    while !deadline.passed() {
        socket.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        match std::io::Read::read(socket, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn given_strangers_that_open_tcp_and_never_speak_tls_should_pin_no_place_past_the_deadline_and_a_backup_still_syncs() {
    // ha.cluster.maxPendingConnections' default.
    const LIMIT: usize = 16;
    let root = root();
    let pki = Pki::new("strangers");
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start(&[b.peer()], "primary", &pki.config(&pki.leaf("node-a"), &["cluster"]), root.path(), "g1", PASSWORD_FILE);
    a.wait_live();
    // LIMIT strangers, each reconnecting the moment its socket is closed and never sending
    // a ClientHello: every place stays taken.
    let stop = Arc::new(AtomicBool::new(false));
    let strangers: Vec<_> = (0..LIMIT)
        .map(|_| {
            let (addr, stop) = (a.cluster_addr(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut connections = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut socket) = std::net::TcpStream::connect(&addr) else { continue };
                    connections += 1;
                    while !stop.load(Ordering::Relaxed) && !closed_within(&mut socket, Duration::from_millis(200)) {}
                }
                connections
            })
        })
        .collect();
    eventually("the strangers take every place", ROLE_TIMEOUT, || metric(&a, "duomq_cluster_pending_connections") >= LIMIT as u64);
    // The backup's probes and connection take the places of strangers stalled a second or more.
    let syncing = Instant::now();
    b.start(&[a.peer()], "backup", &pki.config(&pki.leaf("node-b"), &["cluster"]), root.path(), "g1", PASSWORD_FILE);
    b.wait_synced_backup();
    println!("the backup synced {:?} after starting among {LIMIT} silent strangers", syncing.elapsed());
    stop.store(true, Ordering::Relaxed);
    let connections: u64 = strangers.into_iter().map(|t| t.join().expect("stranger thread")).sum();
    let displaced = metric(&a, "duomq_cluster_connections_refused_total{reason=\"pending_limit\"}");
    println!("strangers opened {connections} connections; {displaced} were turned away or displaced");
    assert!(displaced >= 1);
    // One silent socket alone is closed at the handshake deadline (10s).
    let mut silent = std::net::TcpStream::connect(a.cluster_addr()).expect("connect");
    let opened = Instant::now();
    assert!(closed_within(&mut silent, timeouts::HANDSHAKE_DEADLINE), "a socket that never spoke TLS outlived the handshake deadline");
    println!("a silent socket was closed after {:?}", opened.elapsed());
    assert!(metric(&a, "duomq_cluster_connections_refused_total{reason=\"timed_out\"}") >= 1);
    assert_eq!(metric(&a, "duomq_cluster_pending_connections"), 0);
}

#[test]
fn given_a_new_ca_rolled_in_through_a_bundle_under_load_should_keep_replicating_and_the_live_role() {
    let (old, new) = (Pki::new("old-ca"), Pki::new("new-ca"));
    let (old_pem, new_pem) = (old.ca.pem().cert_pem.clone(), new.ca.pem().cert_pem.clone());
    let bundle = format!("{old_pem}{new_pem}");
    let (root, a, mut b, mut mount_a, mut mount_b) = mounted_pair(&old, &old_pem);
    let epoch = a.status().expect("live status")["ha"]["epoch"].as_u64();
    // Clients trust both CAs throughout, as they would be handed the bundle first.
    let client_trust = root.path().join("client-ca.crt");
    std::fs::write(&client_trust, &bundle).expect("write the clients' CA bundle");
    let load = Load::start(&a, &b, &client_trust);
    load.wait_batches(2);

    let reloads = |m: &Member| metric(m, "duomq_tls_reloads_total{result=\"ok\"}");
    let leaf = |pki: &Pki, cn: &str| pki.ca.issue(&Leaf::new(cn, common::tls::VALID_FOR).loopback()).expect("issue");
    let (old_a, old_b) = (leaf(&old, "node-a-old"), leaf(&old, "node-b-old"));
    let (new_a, new_b) = (leaf(&new, "node-a-new"), leaf(&new, "node-b-new"));
    // 1. Both CAs trusted, old leaves. 2. New leaves. 3. The new CA only.
    let steps: [(&str, &str, &duomq_broker::tls::pki::Issued, &duomq_broker::tls::pki::Issued, &str); 3] = [
        ("bundle", &bundle, &old_a, &old_b, "node-a-old"),
        ("new leaves", &bundle, &new_a, &new_b, "node-a-new"),
        ("new CA only", &new_pem, &new_a, &new_b, "node-a-new"),
    ];
    let probe = new.leaf("probe");
    for (i, (step, ca, leaf_a, leaf_b, presented)) in steps.into_iter().enumerate() {
        mount_a.update(ca, &leaf_a.cert_pem, &leaf_a.key_pem);
        mount_b.update(ca, &leaf_b.cert_pem, &leaf_b.key_pem);
        let want = i as u64 + 1;
        eventually(&format!("both members load step {step}"), Duration::from_secs(20), || reloads(&a) >= want && reloads(&b) >= want);
        assert_eq!(presented_common_name(&a.cluster_addr(), &client_trust, &probe), presented, "step {step}");
        load.wait_batches(1);
    }
    // The replication link opened before the rotation never dropped; a new one opens with
    // the new CA alone on both ends.
    assert_eq!(b.log().matches("following the live").count(), 1, "the replication link never dropped:\n{}", b.log());
    load.finish();
    start_mounted_backup(&root, &mut b, &a, &mount_b);
    let status = a.status().expect("live status");
    assert_eq!((status["role"].as_str(), status["ha"]["epoch"].as_u64()), (Some("live"), epoch), "{status}");
    assert_eq!(metric(&a, "duomq_cluster_connections_refused_total{reason=\"tls\"}"), 0);
    assert!(!b.log().contains("activating"), "no failover");
}
