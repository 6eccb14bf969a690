//! The `kubernetes` arbiter with real broker processes and a Kubernetes API that serves
//! Leases (`common::kube_api`): the primary takes the group's Lease, the live lists its
//! synced backup in it; a backup takes over after the claim expires, at once when the
//! Lease is released, never when it is not listed in sync; a live cut off from the API
//! fences itself before anyone else may take over. A switchover asked for on the admin
//! endpoint hands the Lease to the named in-sync backup at once, with nothing lost, and is
//! refused for a member that is not in sync.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::kube_api::{Fault, KubeApi};
use common::{cli, eventually, receive_all, Deadline};
use duomq_broker::admin::{api, auth};
use duomq_broker::stomp::{Command, Frame};
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "duomq-test";
const GROUP: &str = "g1";

/// The Lease's timings, kept short so expiry happens within a test.
#[derive(Clone, Copy)]
struct Timing {
    duration: Duration,
    renew_deadline: Duration,
    renew_interval: Duration,
}

const FAST: Timing =
    Timing { duration: Duration::from_secs(2), renew_deadline: Duration::from_millis(1200), renew_interval: Duration::from_millis(300) };

/// Long enough that "well before expiry" is measurable.
const SLOW: Timing =
    Timing { duration: Duration::from_secs(20), renew_deadline: Duration::from_secs(12), renew_interval: Duration::from_millis(300) };

/// A deadline far enough from the duration that counting expiry from the fence instead of
/// from the last renewal shows.
const LATE_FENCE: Timing =
    Timing { duration: Duration::from_secs(6), renew_deadline: Duration::from_secs(5), renew_interval: Duration::from_millis(300) };

/// How late past `renewDeadline` a cut-off live may be seen fenced (the status poll, a
/// loaded machine).
const FENCE_SLACK: Duration = Duration::from_millis(800);

struct LeasePair {
    api: KubeApi,
    root: tempfile::TempDir,
    a: Member,
    b: Member,
    timing: Timing,
}

impl LeasePair {
    /// node-a (primary) takes the Lease and is live; node-b syncs and is listed in sync.
    fn new(timing: Timing) -> LeasePair {
        let api = KubeApi::start();
        let root = tempfile::Builder::new().prefix("duomq-lease-").tempdir().unwrap();
        std::fs::write(root.path().join("password"), "a-long-random-cluster-password\n").unwrap();
        let a = LeasePair::member(&api, root.path(), "node-a", timing);
        let b = LeasePair::member(&api, root.path(), "node-b", timing);
        let mut pair = LeasePair { api, root, a, b, timing };
        pair.start('a', "primary", "");
        pair.a.wait_live();
        pair.start('b', "backup", "");
        pair.b.wait_synced_backup();
        pair.wait_lease("listing node-b in sync", |l| in_sync(l) == ["node-b"]);
        pair
    }

    fn member(api: &KubeApi, root: &std::path::Path, name: &str, t: Timing) -> Member {
        let mut m = Member::new(root, name);
        m.arbiter = format!(
            "  arbiter:\n    kind: kubernetes\n    retryInterval: 100ms\n    lease:\n      duration: {}ms\n      renewDeadline: {}ms\n      renewInterval: {}ms\n",
            t.duration.as_millis(),
            t.renew_deadline.as_millis(),
            t.renew_interval.as_millis()
        );
        m.env = vec![
            ("KUBECONFIG".into(), api.kubeconfig(root, name).display().to_string()),
            ("POD_NAMESPACE".into(), NAMESPACE.into()),
        ];
        m
    }

    fn start(&mut self, which: char, role: &str, extra: &str) {
        let root = self.root.path().to_path_buf();
        let (me, other) = if which == 'a' { (&mut self.a, &self.b) } else { (&mut self.b, &self.a) };
        me.kill9();
        me.start(&[other.peer()], role, extra, &root, GROUP, "password");
    }

    fn lease(&self) -> Value {
        self.api.lease(NAMESPACE, GROUP).expect("the group's Lease exists")
    }

    fn wait_lease(&self, what: &str, check: impl Fn(&Value) -> bool) {
        eventually(&format!("the Lease becoming {what}"), ROLE_TIMEOUT, || self.api.lease(NAMESPACE, GROUP).is_some_and(|l| check(&l)));
    }

    /// `POST /ha/switchover` to `member`, signed with the cluster password (or with
    /// `password`, to test refusals).
    fn switchover(&self, member: &Member, to: &str, password: &str) -> (u16, Value) {
        let body = serde_json::json!({ "to": to }).to_string();
        let signature = auth::sign(password.as_bytes(), "POST", api::SWITCHOVER, body.as_bytes(), auth::unix_now());
        let (code, reply) = common::http_post_at(&member.ip, member.admin, api::SWITCHOVER, &[(auth::SIGNATURE_HEADER, &signature)], &body)
            .expect("the admin endpoint answers");
        (code, serde_json::from_str(&reply).unwrap_or(Value::String(reply)))
    }

    /// `duomq-broker switchover` against `member`, with the members' password file.
    fn switchover_cli(&self, member: &Member, to: &str) -> std::process::Output {
        let admin = format!("{}:{}", member.ip, member.admin);
        let password_file = self.root.path().join("password").display().to_string();
        cli(&["switchover", "--admin", &admin, "--to", to, "--password-file", &password_file]).output().expect("run the switchover CLI")
    }

    /// Samples both members' roles every 10 ms until the returned flag is set; the thread
    /// returns (elapsed, role of a, role of b) samples.
    fn watch_roles(&self) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<RoleSample>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let member = |m: &Member| (m.ip.clone(), m.admin, m.config_path());
        let (flag, a, b) = (Arc::clone(&stop), member(&self.a), member(&self.b));
        let watcher = std::thread::spawn(move || {
            let role_at = |(ip, port, config): &(String, u16, std::path::PathBuf)| {
                common::http_get_admin(ip, *port, "/status", config)
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .and_then(|s| s["role"].as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push((started.elapsed(), role_at(&a), role_at(&b)));
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        (stop, watcher)
    }

    /// Starts a receipted producer of `total` messages through the failover URL and waits
    /// until node-a has stored 500 of them.
    fn producer_under_way(&self, queue: &str, total: usize) -> std::process::Child {
        let producer = cli(&[
            "send", "--url", &self.failover_url(), "--destination", queue, "--count", &total.to_string(),
            "--size", "256", "--persistent", "--receipts", "--window", "16",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn producer");
        self.a.wait_for("busy", |s| {
            s["queues"].as_array().and_then(|q| q.iter().find(|q| q["name"] == queue)).is_some_and(|q| q["enqueuedTotal"].as_u64().unwrap_or(0) >= 500)
        });
        producer
    }

    fn failover_url(&self) -> String {
        format!(
            "failover:(stomp://{},stomp://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1",
            self.a.stomp_addr(),
            self.b.stomp_addr()
        )
    }
}

/// When, and the roles of node-a and node-b then.
type RoleSample = (Duration, String, String);

fn holder(lease: &Value) -> Option<&str> {
    lease["spec"]["holderIdentity"].as_str()
}

fn epoch(lease: &Value) -> u64 {
    lease["metadata"]["annotations"]["duomq.io/epoch"].as_str().and_then(|e| e.parse().ok()).unwrap_or(0)
}

fn in_sync(lease: &Value) -> Vec<&str> {
    lease["metadata"]["annotations"]["duomq.io/in-sync"].as_str().unwrap_or("").split(',').filter(|n| !n.is_empty()).collect()
}

fn set_in_sync(lease: &mut Value, nodes: &str) {
    lease["metadata"]["annotations"]["duomq.io/in-sync"] = nodes.into();
}

fn role(m: &Member) -> String {
    m.status().and_then(|s| s["role"].as_str().map(str::to_string)).unwrap_or_else(|| "unreachable".into())
}

fn send(url: &str, queue: &str, count: usize) {
    let out = cli(&["send", "--url", url, "--destination", queue, "--count", &count.to_string(), "--persistent", "--receipts", "--window", "8"])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn given_pair_with_lease_when_live_killed_under_load_should_take_the_lease_after_expiry_and_lose_nothing_receipted() {
    let mut pair = LeasePair::new(FAST);
    let lease = pair.lease();
    assert_eq!((holder(&lease), epoch(&lease), lease["spec"]["leaseTransitions"].as_i64()), (Some("node-a"), 1, Some(1)));
    assert_eq!(lease["spec"]["leaseDurationSeconds"].as_i64(), Some(2));
    let (_, metrics) = common::http_get(pair.a.admin, "/metrics").unwrap();
    assert!(metrics.contains("duomq_ha_lease_renewals_total{result=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("duomq_ha_fenced 0"), "{metrics}");

    const TOTAL: usize = 3000;
    let url = pair.failover_url();
    let producer = pair.producer_under_way("/queue/lease", TOTAL);
    pair.a.kill9();
    let killed = Instant::now();
    pair.b.wait_live();
    let takeover = killed.elapsed();
    println!("takeover after kill -9 (lease duration {:?}): {takeover:?}", pair.timing.duration);
    // The claim expires `duration` after the live's last renewal, which came at most one
    // renew interval (plus its request) before the kill; the backup watched it happen.
    let earliest = pair.timing.duration - pair.timing.renew_interval - Duration::from_millis(100);
    assert!(takeover >= earliest, "the backup took the Lease before the claim could expire: {takeover:?}");
    let lease = pair.lease();
    assert_eq!((holder(&lease), epoch(&lease), lease["spec"]["leaseTransitions"].as_i64()), (Some("node-b"), 2, Some(2)));

    // The former live comes back as a backup and is listed in sync by the new live.
    pair.start('a', "backup", "");
    pair.a.wait_synced_backup();
    pair.wait_lease("listing node-a in sync", |l| holder(l) == Some("node-b") && in_sync(l) == ["node-a"]);
    let out = producer.wait_with_output().expect("producer finished");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    let summary = receive_all(&url, "/queue/lease", TOTAL);
    assert!(summary.contains(" 0 duplicates"), "a resent message was stored twice: {summary}");
}

#[test]
fn given_dead_live_when_the_lease_is_released_should_take_over_well_before_expiry() {
    let mut pair = LeasePair::new(SLOW);
    send(&pair.failover_url(), "/queue/released", 100);
    pair.a.kill9();
    // What the operator does when it knows the live's pod is gone.
    pair.api.edit(NAMESPACE, GROUP, |l| l["spec"]["holderIdentity"] = Value::Null);
    let released = Instant::now();
    pair.b.wait_live();
    let takeover = released.elapsed();
    println!("takeover after release (lease duration {:?}): {takeover:?}", pair.timing.duration);
    assert!(takeover < pair.timing.duration / 4, "a released Lease is taken at once, not after expiry: {takeover:?}");
    assert_eq!(holder(&pair.lease()), Some("node-b"));
    receive_all(&format!("stomp://{}", pair.b.stomp_addr()), "/queue/released", 100);
}

#[test]
fn given_live_cut_off_from_the_api_should_fence_within_renew_deadline_and_never_serve_alongside_the_new_live() {
    let pair = LeasePair::new(FAST);
    send(&pair.failover_url(), "/queue/fenced", 50);
    // Watch both roles for the whole transition.
    let (stop, watcher) = pair.watch_roles();
    pair.api.fail("node-a", Fault::Silence);
    let cut = Instant::now();
    pair.a.wait_for("fenced", |s| s["role"] == "fenced");
    let fenced = cut.elapsed();
    let (_, metrics) = common::http_get(pair.a.admin, "/metrics").unwrap();
    println!("fenced after the cut (renewDeadline {:?}): {fenced:?}", pair.timing.renew_deadline);
    assert!(fenced <= pair.timing.renew_deadline + FENCE_SLACK, "fenced too late: {fenced:?}");
    assert!(metrics.contains("duomq_ha_fenced 1") || role(&pair.a) != "fenced", "{metrics}");
    // A fenced member serves nobody: a new client gets an ERROR, not CONNECTED.
    assert!(common::Conn::try_connect(pair.a.stomp).is_none(), "the fenced member accepted a client");
    pair.b.wait_live();
    let takeover = cut.elapsed();
    println!("takeover after the cut (lease duration {:?}): {takeover:?}", pair.timing.duration);
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.join().expect("watcher");
    let both = samples.iter().find(|(_, a, b)| a == "live" && b == "live");
    assert!(both.is_none(), "both members were live at {both:?}");
    let first_fenced = samples.iter().find(|(_, a, _)| a == "fenced").map(|s| s.0);
    let first_b_live = samples.iter().find(|(_, _, b)| b == "live").map(|s| s.0);
    assert!(first_fenced < first_b_live || first_b_live.is_none(), "fenced at {first_fenced:?}, new live at {first_b_live:?}");
    assert!(pair.a.log().contains("lost the group's Lease: fencing"), "{}", pair.a.log());
    // Every receipted message is on the new live; the old one rejoins once it reaches the API.
    receive_all(&format!("stomp://{}", pair.b.stomp_addr()), "/queue/fenced", 50);
    pair.api.heal("node-a");
    pair.a.wait_synced_backup();
    let lease = pair.lease();
    assert_eq!((holder(&lease), epoch(&lease)), (Some("node-b"), 2));
}

#[test]
fn given_live_cut_off_from_the_api_should_be_replaced_a_lease_duration_after_its_last_renewal_not_after_its_fence() {
    let pair = LeasePair::new(LATE_FENCE);
    pair.api.fail("node-a", Fault::Silence);
    let cut = Instant::now();
    pair.b.wait_live();
    let takeover = cut.elapsed();
    println!("takeover after the cut (duration {:?}, renewDeadline {:?}): {takeover:?}", pair.timing.duration, pair.timing.renew_deadline);
    // The backup watched the renewals while following, so the Lease expires `duration`
    // after the last one it saw; counting from the fence would take deadline + duration.
    assert!(takeover >= pair.timing.duration - pair.timing.renew_interval * 2, "took a Lease not yet expired: {takeover:?}");
    assert!(takeover < pair.timing.renew_deadline + pair.timing.duration - Duration::from_secs(2), "took over late: {takeover:?}");
    assert_eq!(epoch(&pair.lease()), 2);
}

#[test]
fn given_live_alone_when_stopped_and_restarted_should_take_its_released_lease_back() {
    let mut pair = LeasePair::new(FAST);
    pair.b.kill9();
    pair.wait_lease("listing nobody in sync", |l| in_sync(l).is_empty());
    send(&format!("stomp://{}", pair.a.stomp_addr()), "/queue/alone", 100);
    assert!(pair.a.terminate().success(), "{}", pair.a.log());
    let lease = pair.lease();
    assert_eq!((holder(&lease), in_sync(&lease)), (None, vec!["node-a"]), "released, naming only itself: {lease}");
    pair.start('a', "primary", "");
    pair.a.wait_live();
    assert_eq!((holder(&pair.lease()), epoch(&pair.lease())), (Some("node-a"), 2));
    receive_all(&format!("stomp://{}", pair.a.stomp_addr()), "/queue/alone", 100);
}

#[test]
fn given_synced_backup_restarted_after_its_live_died_should_still_take_over() {
    let mut pair = LeasePair::new(FAST);
    send(&pair.failover_url(), "/queue/restarted", 100);
    pair.a.kill9();
    pair.b.kill9();
    // A new process: it knows its journal is a complete copy only from what it recorded.
    pair.start('b', "backup", "");
    pair.b.wait_live();
    assert_eq!(holder(&pair.lease()), Some("node-b"));
    receive_all(&format!("stomp://{}", pair.b.stomp_addr()), "/queue/restarted", 100);
}

/// How long a backup that is not listed in sync is watched: well past the claim.
const NOT_IN_SYNC_WINDOW: Duration = Duration::from_secs(6);

#[test]
fn given_backup_not_listed_in_sync_when_live_dies_should_not_take_over() {
    let mut pair = LeasePair::new(FAST);
    pair.a.kill9();
    // As if the live had lost its backup just before it died.
    pair.api.edit(NAMESPACE, GROUP, |l| set_in_sync(l, ""));
    let window = Deadline::after("the end of the not-in-sync window", NOT_IN_SYNC_WINDOW);
    let said = Deadline::after("the backup saying why it does not take over", ROLE_TIMEOUT);
    while !window.passed() || !pair.b.log().contains("node-b is not in the in-sync list of node-a") {
        assert_ne!(role(&pair.b), "live", "a backup that is not in sync took over");
        said.check(|| format!("log:\n{}", pair.b.log()));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(holder(&pair.lease()), Some("node-a"));
    // Listed again, it takes over: the list alone held it back.
    pair.api.edit(NAMESPACE, GROUP, |l| set_in_sync(l, "node-b"));
    pair.b.wait_live();
    assert_eq!(holder(&pair.lease()), Some("node-b"));
}

#[test]
fn given_former_live_back_with_failback_should_be_handed_the_lease_at_once() {
    let mut pair = LeasePair::new(FAST);
    pair.a.kill9();
    pair.b.wait_live();
    pair.start('a', "primary", "  allowFailback: true\n");
    pair.a.wait_live();
    pair.b.wait_synced_backup();
    let lease = pair.lease();
    assert_eq!(holder(&lease), Some("node-a"));
    assert!(epoch(&lease) >= 3, "every change of holder raises the epoch: {lease}");
    // node-b released the Lease (no holder) and node-a took it: no wait for expiry.
    let writes = pair.api.writes();
    let released = writes.iter().rposition(|(who, _, holder)| who == "node-b" && holder.is_none());
    let taken = writes.iter().rposition(|(who, _, holder)| who == "node-a" && holder.as_deref() == Some("node-a"));
    assert!(released.is_some() && released < taken, "{writes:?}");
    pair.wait_lease("listing node-b in sync", |l| in_sync(l) == ["node-b"]);
}

const PASSWORD: &str = "a-long-random-cluster-password";

#[test]
fn given_producer_running_when_switched_over_to_the_synced_backup_should_hand_the_lease_over_at_once_lose_nothing_and_never_have_two_lives() {
    let pair = LeasePair::new(SLOW);
    const TOTAL: usize = 3000;
    let url = pair.failover_url();
    let producer = pair.producer_under_way("/queue/switchover", TOTAL);
    let (stop, watcher) = pair.watch_roles();
    let asked = Instant::now();
    let (code, reply) = pair.switchover(&pair.a, "node-b", PASSWORD);
    assert_eq!(code, 200, "{reply}");
    assert_eq!((reply["from"].as_str(), reply["to"].as_str(), reply["epoch"].as_u64()), (Some("node-a"), Some("node-b"), Some(2)), "{reply}");
    pair.b.wait_live();
    let took = asked.elapsed();
    println!("switchover took {took:?} (lease duration {:?})", pair.timing.duration);
    assert!(took < pair.timing.duration / 2, "a handed-over Lease is taken at once, not after expiry: {took:?}");
    // The former live follows the new one and sends its clients there.
    pair.a.wait_synced_backup();
    let mut client = common::Conn::raw(pair.a.stomp);
    client.send(&Frame::new(Command::Connect).header("accept-version", "1.2").header("host", "/"));
    let error = client.expect(Command::Error);
    let message = error.get("message").unwrap_or_default().to_string();
    assert!(message.contains(&format!("live is stomp://{}", pair.b.stomp_addr())), "{message}");
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.join().expect("watcher");
    let both = samples.iter().find(|(_, a, b)| a == "live" && b == "live");
    assert!(both.is_none(), "both members were live at {both:?}");
    let lease = pair.lease();
    assert_eq!((holder(&lease), epoch(&lease)), (Some("node-b"), 2), "one transition, one epoch up: {lease}");
    assert!(lease["metadata"]["annotations"]["duomq.io/handover-to"].is_null(), "the hand-over is done: {lease}");
    let writes = pair.api.writes();
    let handed = writes.iter().rposition(|(who, _, holder)| who == "node-a" && holder.is_none());
    let taken = writes.iter().rposition(|(who, _, holder)| who == "node-b" && holder.as_deref() == Some("node-b"));
    assert!(handed.is_some() && handed < taken, "{writes:?}");
    pair.wait_lease("listing node-a in sync", |l| holder(l) == Some("node-b") && in_sync(l) == ["node-a"]);
    let (_, metrics) = common::http_get(pair.a.admin, "/metrics").unwrap();
    assert!(metrics.contains("duomq_ha_switchover_requests_total{result=\"done\"} 1"), "{metrics}");

    let out = producer.wait_with_output().expect("producer finished");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
    let summary = receive_all(&url, "/queue/switchover", TOTAL);
    assert!(summary.contains(" 0 duplicates"), "a resent message was stored twice: {summary}");
}

#[test]
fn given_a_switchover_to_a_member_not_in_sync_or_unsigned_should_refuse_and_stay_live() {
    let mut pair = LeasePair::new(FAST);
    let (code, reply) = pair.switchover(&pair.a, "node-b", "a-wrong-password");
    assert_eq!(code, 401, "{reply}");
    let (code, reply) = pair.switchover(&pair.b, "node-a", PASSWORD);
    assert_eq!(code, 409, "{reply}");
    assert!(reply["error"].as_str().unwrap_or_default().contains("not live"), "{reply}");
    let (code, reply) = pair.switchover(&pair.a, "node-a", PASSWORD);
    assert_eq!(code, 409, "{reply}");
    pair.b.kill9();
    pair.wait_lease("listing nobody in sync", |l| in_sync(l).is_empty());
    let (code, reply) = pair.switchover(&pair.a, "node-b", PASSWORD);
    assert_eq!(code, 409, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("node-b is not an in-sync backup"), "{reply}");
    let out = pair.switchover_cli(&pair.a, "node-b");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("switchover refused, nothing changed"), "{said}");
    // Nothing changed: still live, still serving, same holder and epoch.
    assert_eq!(role(&pair.a), "live");
    send(&format!("stomp://{}", pair.a.stomp_addr()), "/queue/refused", 10);
    let lease = pair.lease();
    assert_eq!((holder(&lease), epoch(&lease)), (Some("node-a"), 1));
}

#[test]
fn given_a_lease_handed_over_to_another_member_should_not_take_it_until_the_hand_over_lapses() {
    let mut pair = LeasePair::new(FAST);
    pair.a.kill9();
    // As if node-a had handed the Lease to a third member that never took it.
    pair.api.edit(NAMESPACE, GROUP, |l| {
        l["spec"]["holderIdentity"] = Value::Null;
        l["metadata"]["annotations"]["duomq.io/handover-to"] = "node-c".into();
    });
    let edited = Instant::now();
    pair.b.wait_live();
    let took = edited.elapsed();
    println!("took the lapsed hand-over after {took:?} (lease duration {:?})", pair.timing.duration);
    assert!(took >= pair.timing.duration, "an in-sync backup took a Lease handed over to another member: {took:?}");
    assert!(pair.b.log().contains("the Lease was handed over to node-c"), "{}", pair.b.log());
    let lease = pair.lease();
    assert_eq!((holder(&lease), epoch(&lease)), (Some("node-b"), 2));
    assert!(lease["metadata"]["annotations"]["duomq.io/handover-to"].is_null(), "{lease}");
}

/// How long a switched-over primary is watched for a failback it must not ask for: the
/// failback above happens within a second or two of the primary being in sync.
const NO_FAILBACK_WINDOW: Duration = Duration::from_secs(4);

#[test]
fn given_a_primary_with_failback_when_switched_over_away_should_stay_a_backup() {
    let mut pair = LeasePair::new(FAST);
    // node-a restarts: it yields to node-b, resyncs and takes the role back (allowFailback) ...
    pair.start('a', "primary", "  allowFailback: true\n");
    pair.a.wait_for("live again by failback", |s| s["role"] == "live" && s["ha"]["epoch"].as_u64() >= Some(3));
    pair.b.wait_synced_backup();
    // ... but not after it handed the role over on purpose (here with the CLI).
    let out = pair.switchover_cli(&pair.a, "node-b");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("node-a handed the live role to node-b"), "{said}");
    pair.a.wait_synced_backup();
    let window = Deadline::after("the end of the no-failback window", NO_FAILBACK_WINDOW);
    while !window.passed() {
        assert_eq!(role(&pair.b), "live", "node-a took the role back after a switchover:\n{}", pair.a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pair.a.log().contains("handed the role over on purpose"), "{}", pair.a.log());
}
