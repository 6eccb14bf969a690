//! Fencing members by an admin request (`POST /ha/fence`) with real processes on loopback:
//! a fenced replication backup stops replicating, is not ready and does not take over
//! when its live is killed, and resyncs once unfenced; a live is fenced only with `force`,
//! and then its backup takes over with every receipted message; a fenced shared-store
//! backup leaves the journal lock alone, a fenced shared-database backup the lease, and a
//! forced shared-database live gives the lease up, as a forced live with the Kubernetes
//! arbiter gives up the group's Lease (taken by its backup at once, not after expiry).
//! Unsigned and wrongly signed requests are refused.

mod common;

use common::cluster::{Member, Peer, ROLE_TIMEOUT};
use common::{cli, http_get_at, receive_all, Deadline};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PASSWORD: &str = "a-long-random-cluster-password";
const FENCE: &str = "/ha/fence";
const FENCE_ON: &str = r#"{"fenced":true}"#;
const FENCE_FORCED: &str = r#"{"fenced":true,"force":true}"#;
const UNFENCE: &str = r#"{"fenced":false}"#;
/// How long a fenced member is watched not taking over: several times what an unfenced
/// backup needs to (a retry every 100 ms to 500 ms).
const NO_TAKEOVER_WINDOW: Duration = Duration::from_secs(6);

/// A replicated pair: node-a live, node-b its synced backup, both with the password file.
fn pair(root: &Path) -> (Member, Member) {
    std::fs::write(root.join("password"), format!("{PASSWORD}\n")).unwrap();
    let mut a = Member::new(root, "node-a");
    let mut b = Member::new(root, "node-b");
    a.start(&[b.peer()], "primary", "", root, "g1", "password");
    a.wait_live();
    b.start(&[a.peer()], "backup", "", root, "g1", "password");
    b.wait_synced_backup();
    (a, b)
}

fn failover_url(members: &[&Member]) -> String {
    let list: Vec<String> = members.iter().map(|m| format!("stomp://{}", m.stomp_addr())).collect();
    format!("failover:({})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1", list.join(","))
}

fn send(url: &str, queue: &str, count: usize) {
    let out = cli(&["send", "--url", url, "--destination", queue, "--count", &count.to_string(), "--persistent", "--receipts", "--window", "16"])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn fence(member: &Member, body: &str) -> serde_json::Value {
    let (code, reply) = member.admin_post(FENCE, body, Some(PASSWORD));
    assert_eq!(code, 200, "{} {body}: {reply}", member.name);
    serde_json::from_str(&reply).expect("a JSON reply")
}

fn wait_admin_fenced(member: &Member) {
    member.wait_for("fenced by an admin request", |s| s["role"] == "fenced" && s["adminFenced"] == true);
    let (code, reason) = member.readyz();
    assert_eq!(code, 503, "a fenced member is not ready: {reason}");
    assert!(reason.contains("fenced by an admin request"), "{reason}");
}

/// Watches `member` for [`NO_TAKEOVER_WINDOW`]: it must stay fenced and never become live.
fn assert_stays_fenced(member: &Member) {
    let window = Deadline::after("the end of the no-takeover window", NO_TAKEOVER_WINDOW);
    while !window.passed() {
        let status = member.status().expect("a fenced member still answers /status");
        assert_eq!(status["role"], "fenced", "{}: {status}", member.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = member.log();
    assert!(!log.contains("activating: this backup becomes live") && !log.contains("took the shared journal lock"), "{log}");
}

fn metric(member: &Member, name: &str) -> Option<String> {
    let (_, page) = http_get_at(&member.ip, member.admin, "/metrics").expect("GET /metrics");
    page.lines().find(|l| l.starts_with(name)).map(str::to_string)
}

#[test]
fn given_a_fenced_replication_backup_should_stop_replicating_never_take_over_and_resync_once_unfenced() {
    let root = tempfile::Builder::new().prefix("duomq-fence-").tempdir().unwrap();
    let (mut a, mut b) = pair(root.path());

    // Unsigned, wrongly signed: refused, nothing changes.
    let (code, reply) = b.admin_post(FENCE, FENCE_ON, None);
    assert_eq!(code, 401, "{reply}");
    let (code, reply) = b.admin_post(FENCE, FENCE_ON, Some("a-guessed-password"));
    assert_eq!(code, 401, "{reply}");
    assert_eq!(b.status().unwrap()["role"], "backup");

    let (code, reply) = b.admin_post("/ha/drain", r#"{"targets":["g2"]}"#, Some(PASSWORD));
    assert_eq!(code, 409, "a backup does not drain: {reply}");

    let reply = fence(&b, FENCE_ON);
    assert_eq!((&reply["node"], &reply["fenced"]), (&"node-b".into(), &true.into()), "{reply}");
    wait_admin_fenced(&b);
    assert_eq!(fence(&b, FENCE_ON)["fenced"], true, "fencing twice is fencing once");
    assert_eq!(metric(&b, "duomq_admin_fenced ").as_deref(), Some("duomq_admin_fenced 1"));
    // The live lets it go and carries on alone, serving clients.
    a.wait_for("alone", |s| s["ha"]["alone"] == true && s["ha"]["backups"].as_array().is_some_and(Vec::is_empty));
    let url_a = failover_url(&[&a]);
    send(&url_a, "/queue/while-fenced", 200);

    // Unfenced, it rejoins and catches up with what it missed.
    assert_eq!(fence(&b, UNFENCE)["fenced"], false);
    b.wait_synced_backup();
    assert_eq!(b.status().unwrap()["adminFenced"], serde_json::Value::Null, "omitted once unfenced");
    a.wait_for("its backup caught up", |s| {
        s["ha"]["backups"].as_array().is_some_and(|b| b.len() == 1 && b[0]["state"] == "synced" && b[0]["lagRecords"] == 0)
    });

    // Fenced again, it does not take over when the live dies.
    fence(&b, FENCE_ON);
    wait_admin_fenced(&b);
    a.kill9();
    assert_stays_fenced(&b);

    // The former live comes back; the fenced member still holds its data and rejoins.
    a.start(&[b.peer()], "primary", "", root.path(), "g1", "password");
    a.wait_live();
    fence(&b, UNFENCE);
    b.wait_synced_backup();
    receive_all(&url_a, "/queue/while-fenced", 200);
    let fence_requests = metric(&b, "duomq_admin_fence_requests_total{result=\"fenced\"}").unwrap_or_default();
    assert!(fence_requests.ends_with(" 3"), "{fence_requests}");
    b.kill9();
}

#[test]
fn given_a_live_should_refuse_a_fence_without_force_and_with_force_let_its_backup_take_over_losing_nothing_receipted() {
    const UNDER_LOAD: usize = 3000;
    let root = tempfile::Builder::new().prefix("duomq-fence-live-").tempdir().unwrap();
    let (a, b) = pair(root.path());
    let url = failover_url(&[&a, &b]);

    let (code, reply) = a.admin_post(FENCE, FENCE_ON, Some(PASSWORD));
    assert_eq!(code, 409, "{reply}");
    assert!(reply.contains("switch the live role over"), "{reply}");
    assert_eq!(a.status().unwrap()["role"], "live");

    let producer = cli(&[
        "send", "--url", &url, "--destination", "/queue/fenced-live", "--count", &UNDER_LOAD.to_string(), "--size", "256",
        "--persistent", "--receipts", "--window", "16",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn producer");
    a.wait_under_way("/queue/fenced-live", (UNDER_LOAD / 3) as u64);
    fence(&a, FENCE_FORCED);
    b.wait_live();
    wait_admin_fenced(&a);
    let out = common::output_within(producer, ROLE_TIMEOUT * 2).expect("producer finished");
    assert!(out.status.success(), "producer: {}", String::from_utf8_lossy(&out.stderr));
    assert!(a.log().contains("fenced by an admin request (force)"), "{}", a.log());

    // Unfenced, the former live follows the new one.
    fence(&a, UNFENCE);
    a.wait_synced_backup();
    let summary = receive_all(&url, "/queue/fenced-live", UNDER_LOAD);
    assert!(summary.contains(" 0 duplicates"), "a resent message was stored twice: {summary}");
}

#[test]
fn given_a_fenced_shared_store_backup_should_leave_the_lock_alone_until_unfenced() {
    let root = tempfile::Builder::new().prefix("duomq-fence-shared-").tempdir().unwrap();
    let store = root.path().join("shared-data");
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    let cluster = |m: &Member| format!("  cluster:\n    listen: {}\n    password: {PASSWORD}\n", m.cluster_addr());
    let (peer_a, peer_b): (Peer, Peer) = (a.peer(), b.peer());
    a.start_shared_store_with(&store, &[peer_b], "primary", "g1", &cluster(&a));
    a.wait_live();
    b.start_shared_store_with(&store, &[peer_a], "backup", "g1", &cluster(&b));
    b.wait_for("a backup", |s| s["role"] == "backup");
    send(&failover_url(&[&a, &b]), "/queue/kept", 100);

    let (code, reply) = a.admin_post(FENCE, FENCE_ON, Some(PASSWORD));
    assert_eq!(code, 409, "a live without force: {reply}");
    fence(&b, FENCE_ON);
    wait_admin_fenced(&b);
    a.kill9();
    assert_stays_fenced(&b);

    // Unfenced with the CLI, it takes the free lock and serves what the live stored.
    let password = root.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let admin = format!("{}:{}", b.ip, b.admin);
    let out = cli(&["fence", "--admin", &admin, "--unfence", "--password-file", &password.display().to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.wait_live();
    receive_all(&failover_url(&[&b]), "/queue/kept", 100);
}

#[test]
fn given_a_fenced_shared_database_backup_should_not_take_the_lease_and_a_forced_live_should_release_it() {
    let root = tempfile::Builder::new().prefix("duomq-fence-db-").tempdir().unwrap();
    let pg = common::postgres::Postgres::start("fence");
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    let cluster = |m: &Member| format!("ha:\n  cluster:\n    listen: {}\n    password: {PASSWORD}\n", m.cluster_addr());
    a.start_shared_database(&pg.url(), &[b.peer()], "primary", "g1", &cluster(&a));
    a.wait_live();
    b.start_shared_database(&pg.url(), &[a.peer()], "backup", "g1", &cluster(&b));
    b.wait_for("a backup", |s| s["role"] == "backup" && s["ha"]["live"] == "node-a");
    send(&failover_url(&[&a, &b]), "/queue/kept", 50);

    fence(&b, FENCE_ON);
    wait_admin_fenced(&b);
    // The lease (3 s) runs out; an unfenced backup would take it within a poll (200 ms).
    a.kill9();
    assert_stays_fenced(&b);
    fence(&b, UNFENCE);
    b.wait_live();
    receive_all(&failover_url(&[&b]), "/queue/kept", 50);

    // A forced fence of the live releases the lease after its last write; the backup takes
    // it and serves what the fenced live stored.
    let peer_b = b.peer();
    a.start_shared_database(&pg.url(), &[peer_b], "backup", "g1", &cluster(&a));
    a.wait_for("a backup", |s| s["role"] == "backup" && s["ha"]["live"] == "node-b");
    send(&failover_url(&[&a, &b]), "/queue/moved", 50);
    fence(&b, FENCE_FORCED);
    a.wait_live();
    wait_admin_fenced(&b);
    assert!(b.log().contains("fenced by an admin request (force)"), "{}", b.log());
    receive_all(&failover_url(&[&a]), "/queue/moved", 50);
}

#[test]
fn given_a_lease_live_fenced_with_force_should_release_the_lease_so_its_backup_takes_over_well_before_expiry() {
    const LEASE_DURATION: Duration = Duration::from_secs(20);
    let api = common::kube_api::KubeApi::start();
    let root = tempfile::Builder::new().prefix("duomq-fence-lease-").tempdir().unwrap();
    std::fs::write(root.path().join("password"), format!("{PASSWORD}\n")).unwrap();
    let lease_member = |name: &str| {
        let mut m = Member::new(root.path(), name);
        m.arbiter = format!(
            "  arbiter:\n    kind: kubernetes\n    retryInterval: 100ms\n    lease:\n      duration: {}ms\n      renewDeadline: 12000ms\n      renewInterval: 300ms\n",
            LEASE_DURATION.as_millis()
        );
        m.env = vec![
            ("KUBECONFIG".into(), api.kubeconfig(root.path(), name).display().to_string()),
            ("POD_NAMESPACE".into(), "duomq-test".into()),
        ];
        m
    };
    let (mut a, mut b) = (lease_member("node-a"), lease_member("node-b"));
    a.start(&[b.peer()], "primary", "", root.path(), "g1", "password");
    a.wait_live();
    b.start(&[a.peer()], "backup", "", root.path(), "g1", "password");
    b.wait_synced_backup();
    let lease = || api.lease("duomq-test", "g1").unwrap_or_default();
    common::eventually("the Lease lists node-b in sync", ROLE_TIMEOUT, || lease()["metadata"]["annotations"]["duomq.io/in-sync"] == "node-b");
    send(&failover_url(&[&a, &b]), "/queue/lease", 100);

    fence(&a, FENCE_FORCED);
    let fenced = Instant::now();
    b.wait_live();
    let takeover = fenced.elapsed();
    println!("takeover after a forced fence (lease duration {LEASE_DURATION:?}): {takeover:?}");
    assert!(takeover < LEASE_DURATION / 4, "the fenced live released the Lease: taken at once, not after expiry: {takeover:?}");
    assert_eq!(lease()["spec"]["holderIdentity"], "node-b");
    wait_admin_fenced(&a);
    receive_all(&failover_url(&[&b]), "/queue/lease", 100);
}
