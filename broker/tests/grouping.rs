//! Clustered message grouping with real processes on loopback: a LOCAL grouping handler in
//! one group, REMOTE handlers in the others, network bridges between them. Every test
//! checks where each group's messages ended up, not just that they arrived.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::{cli, eventually, reserve_port, Broker, Conn};
use duomq_broker::stomp::{Command, Frame};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "grouping-test-password";
use duomq_testkit::timeouts::LINK as LINK_TIMEOUT;

/// One message as a consumer saw it.
#[derive(Debug, Clone)]
struct Seen {
    consumer: String,
    group: String,
    producer: String,
    seq: u64,
    redelivered: bool,
}

/// Consumers on raw STOMP connections, each in its own thread, acknowledging every message.
struct Consumers {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    count: Arc<AtomicUsize>,
}

impl Consumers {
    fn new() -> Consumers {
        Consumers { seen: Arc::default(), stop: Arc::default(), threads: Vec::new(), count: Arc::default() }
    }

    fn add(&mut self, name: &str, port: u16, destination: &str) {
        let mut conn = Conn::connect(port, &[("accept-version", "1.2"), ("host", "/")]);
        conn.subscribe("s", destination, "client-individual", &[]);
        let (seen, stop, count, name) = (Arc::clone(&self.seen), Arc::clone(&self.stop), Arc::clone(&self.count), name.to_string());
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(frame) = conn.read_frame(Duration::from_millis(200)) else { continue };
                if frame.command != Command::Message {
                    panic!("{name} got {} {:?}", frame.command, frame.headers);
                }
                let header = |k: &str| frame.get(k).unwrap_or_default().to_string();
                seen.lock().unwrap().push(Seen {
                    consumer: name.clone(),
                    group: header("JMSXGroupID"),
                    producer: header("producer"),
                    seq: header("duomq-seq").parse().unwrap_or(u64::MAX),
                    redelivered: frame.get("redelivered") == Some("true"),
                });
                count.fetch_add(1, Ordering::Relaxed);
                conn.ack(&frame, false);
            }
        }));
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("consumer thread");
        }
        Arc::try_unwrap(self.seen).map(|m| m.into_inner().unwrap()).unwrap_or_default()
    }
}

/// Checks that every group went to one consumer, and that each producer's messages of a
/// group came in the order sent; returns the owner of each group.
fn check_pinned(seen: &[Seen]) -> BTreeMap<String, String> {
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut disorder = Vec::new();
    for s in seen {
        owners.entry(s.group.clone()).or_default().insert(s.consumer.clone());
        if s.redelivered {
            continue;
        }
        let key = (s.producer.clone(), s.group.clone());
        if let Some(prev) = last.insert(key, s.seq) {
            if prev > s.seq {
                disorder.push(format!("{} {} {prev}>{}", s.producer, s.group, s.seq));
            }
        }
    }
    let split: Vec<_> = owners.iter().filter(|(_, c)| c.len() > 1).take(10).collect();
    assert!(split.is_empty(), "groups split between consumers: {split:?}");
    assert!(disorder.is_empty(), "out of order within a group: {:?}", &disorder[..disorder.len().min(10)]);
    owners.into_iter().map(|(g, c)| (g, c.into_iter().next().unwrap_or_default())).collect()
}

fn grouping_status(status: &Value) -> Value {
    status["grouping"].clone()
}

/// A standalone broker whose cluster port takes bridges and grouping links.
fn node(name: &str, cluster: u16, extra: &str) -> Broker {
    let config = format!("node:\n  id: {name}\nha:\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    password: {PASSWORD}\n{extra}");
    Broker::start(name, &config)
}

fn connectors(list: &[(&str, String)]) -> String {
    let mut out = String::from("network:\n  connectors:\n");
    for (name, uri) in list {
        out.push_str(&format!("    - name: {name}\n      uri: {uri}\n"));
    }
    out
}

/// Two standalone brokers bridged both ways: `l` runs the local grouping handler, `r` a
/// remote one asking it; returns once `r` is linked to `l`'s handler.
fn bridged_local_and_remote() -> (Broker, Broker) {
    let (cl, cr) = (reserve_port(), reserve_port());
    let local = node("l", cl, &format!("{}grouping:\n  handler: local\n", connectors(&[("to-r", format!("tcp://127.0.0.1:{cr}"))])));
    let remote = node(
        "r",
        cr,
        &format!(
            "{}grouping:\n  handler: remote\n  address: masterslave:(tcp://127.0.0.1:{cl})\n  timeout: 5s\n",
            connectors(&[("to-l", format!("tcp://127.0.0.1:{cl}"))])
        ),
    );
    eventually("remote handler linked", LINK_TIMEOUT, || grouping_status(&remote.status())["connected"] == true);
    (local, remote)
}

fn send_grouped(port: u16, destination: &str, group: &str) -> Frame {
    let mut conn = Conn::connect(port, &[("accept-version", "1.2"), ("host", "/")]);
    conn.send(
        &Frame::new(Command::Send)
            .header("destination", destination)
            .header("persistent", "true")
            .header("JMSXGroupID", group)
            .header("receipt", "r1")
            .with_body("grouped".to_string()),
    );
    conn.read_frame(Duration::from_secs(15)).expect("an answer to the SEND")
}

#[test]
fn given_a_remote_handler_should_bind_each_new_group_once_through_the_local_one_and_reach_its_consumer() {
    let (local, remote) = bridged_local_and_remote();
    // One consumer on each broker: every group lands wholly on one of them.
    let mut consumers = Consumers::new();
    consumers.add("at-l", local.stomp_port, "/queue/orders");
    consumers.add("at-r", remote.stomp_port, "/queue/orders");
    eventually("bridges see both consumers", LINK_TIMEOUT, || {
        [&local, &remote].iter().all(|b| {
            b.status()["network"]["connectors"][0]["links"][0]["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == "/queue/orders"))
        })
    });
    let mut producers = Vec::new();
    for (name, port) in [("pl", local.stomp_port), ("pr", remote.stomp_port)] {
        producers.push(
            cli(&[
                "send", "--url", &format!("stomp://127.0.0.1:{port}"), "--destination", "/queue/orders", "--count", "400",
                "--groups", "40", "--persistent", "--receipts", "--window", "16", "--header", &format!("producer={name}"),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("producer"),
        );
    }
    for p in producers {
        let out = p.wait_with_output().expect("producer");
        assert!(out.status.success(), "producer: {}", String::from_utf8_lossy(&out.stderr));
    }
    eventually("all 800 consumed", LINK_TIMEOUT, || consumers.count() >= 800);
    let bound: u64 = [&local, &remote]
        .iter()
        .map(|b| b.status()["queues"].as_array().and_then(|qs| qs.iter().find(|q| q["name"] == "/queue/orders")).map_or(0, |q| q["groups"].as_u64().unwrap_or(0)))
        .sum();
    assert!(bound >= 40, "every group is bound to a consumer (a bridge's, where it is owned elsewhere): {bound}");
    let seen = consumers.finish();
    assert_eq!(seen.len(), 800, "each message once");
    let owners = check_pinned(&seen);
    assert_eq!(owners.len(), 40);
    let l = grouping_status(&local.status());
    assert_eq!(l["handler"], "local");
    assert_eq!(l["bindings"], 40, "one binding per group at the handler: {l}");
    let r = grouping_status(&remote.status());
    assert_eq!(r["handler"], "remote");
    assert!(r["bindings"].as_u64().unwrap_or(0) > 0 && r["bindings"].as_u64().unwrap_or(99) <= 40, "{r}");
    assert!(common::metric_value(local.admin_port, "duomq_grouping_bindings") == 40);
}

#[test]
fn given_the_local_handler_unreachable_should_refuse_new_groups_with_the_timeout_error_and_keep_known_ones_flowing() {
    let (cl, cr) = (reserve_port(), reserve_port());
    let mut local = node("l", cl, "grouping:\n  handler: local\n");
    let remote = node("r", cr, &format!("grouping:\n  handler: remote\n  address: masterslave:(tcp://127.0.0.1:{cl})\n  timeout: 1500ms\n"));
    eventually("remote handler linked", LINK_TIMEOUT, || grouping_status(&remote.status())["connected"] == true);
    let mut consumer = Conn::connect(remote.stomp_port, &[("accept-version", "1.2"), ("host", "/")]);
    consumer.subscribe("s", "/queue/jobs", "auto", &[]);
    assert_eq!(send_grouped(remote.stomp_port, "/queue/jobs", "known").command, Command::Receipt);
    assert_eq!(consumer.expect(Command::Message).get("JMSXGroupID"), Some("known"));
    local.kill9();
    eventually("remote sees the handler gone", LINK_TIMEOUT, || grouping_status(&remote.status())["connected"] == false);
    let started = Instant::now();
    let refused = send_grouped(remote.stomp_port, "/queue/jobs", "new-one");
    assert_eq!(refused.command, Command::Error, "{refused:?}");
    let message = refused.get("message").unwrap_or_default().to_string();
    assert!(message.contains("\"new-one\"") && message.contains("1.5s") && message.contains("grouping.timeout"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "it waited for the timeout");
    assert_eq!(remote.queue_depth("/queue/jobs"), 0, "nothing stored");
    // A group decided before keeps flowing from the cache.
    assert_eq!(send_grouped(remote.stomp_port, "/queue/jobs", "known").command, Command::Receipt);
    assert_eq!(consumer.expect(Command::Message).get("JMSXGroupID"), Some("known"));
    assert!(grouping_status(&remote.status())["timeoutsTotal"].as_u64().unwrap_or(0) >= 1);
    // The handler comes back with its binding (journaled): the new group is accepted.
    local.restart_in_place();
    eventually("remote relinked", LINK_TIMEOUT, || grouping_status(&remote.status())["connected"] == true);
    assert_eq!(grouping_status(&local.status())["bindings"], 1, "the binding of `known` survived the restart");
    assert_eq!(send_grouped(remote.stomp_port, "/queue/jobs", "new-one").command, Command::Receipt);
}

#[test]
fn given_producers_before_any_consumer_should_hold_the_groups_undecided_and_decide_them_where_a_consumer_appears() {
    let (local, remote) = bridged_local_and_remote();
    // Nobody consumes anywhere: the groups stay undecided where they were sent.
    for (name, b) in [("pl", &local), ("pr", &remote)] {
        let out = cli(&[
            "send", "--url", &format!("stomp://127.0.0.1:{}", b.stomp_port), "--destination", "/queue/late", "--count", "50",
            "--groups", "10", "--persistent", "--receipts", "--window", "8", "--header", &format!("producer={name}"),
        ])
        .output()
        .expect("producer");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(grouping_status(&local.status())["bindings"], 0, "no binding without a consumer");
    assert_eq!(local.queue_depth("/queue/late"), 50);
    // The first consumer appears on r: every group is decided there, l's messages cross.
    let mut consumers = Consumers::new();
    consumers.add("at-r", remote.stomp_port, "/queue/late");
    eventually("all 100 consumed at r", LINK_TIMEOUT, || consumers.count() >= 100);
    // A consumer on l now changes nothing: the groups are r's.
    consumers.add("at-l", local.stomp_port, "/queue/late");
    let out = cli(&[
        "send", "--url", &format!("stomp://127.0.0.1:{}", local.stomp_port), "--destination", "/queue/late", "--count", "20",
        "--groups", "10", "--persistent", "--receipts", "--header", "producer=pl2",
    ])
    .output()
    .expect("producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("all 120 consumed", LINK_TIMEOUT, || consumers.count() >= 120);
    let seen = consumers.finish();
    assert_eq!(seen.len(), 120, "each message once");
    let owners = check_pinned(&seen);
    assert!(owners.values().all(|c| c == "at-r"), "every group stayed where it was decided: {owners:?}");
    assert_eq!(grouping_status(&local.status())["bindings"], 10);
}

#[test]
fn given_a_group_timeout_should_reap_unused_bindings_and_bind_them_afresh() {
    let cl = reserve_port();
    let local = node("l", cl, "grouping:\n  handler: local\n  groupTimeout: 1s\n  reaperPeriod: 200ms\n");
    let mut consumer = Conn::connect(local.stomp_port, &[("accept-version", "1.2"), ("host", "/")]);
    consumer.subscribe("s", "/queue/reap", "auto", &[]);
    for g in ["a", "b", "c"] {
        assert_eq!(send_grouped(local.stomp_port, "/queue/reap", g).command, Command::Receipt);
    }
    assert_eq!(grouping_status(&local.status())["bindings"], 3);
    eventually("bindings reaped", LINK_TIMEOUT, || {
        let g = grouping_status(&local.status());
        g["bindings"] == 0 && g["reapedTotal"] == 3
    });
    assert_eq!(send_grouped(local.stomp_port, "/queue/reap", "a").command, Command::Receipt);
    assert_eq!(grouping_status(&local.status())["bindings"], 1);
}

#[test]
fn given_a_client_should_not_reach_the_handlers_reserved_destination() {
    let local = node("l", reserve_port(), "grouping:\n  handler: local\n");
    let mut conn = Conn::connect(local.stomp_port, &[("accept-version", "1.2"), ("host", "/")]);
    conn.send(&Frame::new(Command::Send).header("destination", "/queue/$duomq.grouping").header("receipt", "r").with_body("x".to_string()));
    let error = conn.expect(Command::Error);
    assert!(error.get("message").unwrap_or_default().contains("reserved"), "{error:?}");
}

fn members_of(root: &Path, group: &str) -> [Member; 2] {
    [Member::new(root, &format!("{group}-0")), Member::new(root, &format!("{group}-1"))]
}

fn masterslave(pair: &[Member; 2]) -> String {
    format!("masterslave:(tcp://{},tcp://{})", pair[0].cluster_addr(), pair[1].cluster_addr())
}

fn start_pair(root: &Path, pair: &mut [Member; 2], group: &str, extra: &str) {
    std::fs::write(root.join("password"), format!("{PASSWORD}\n")).expect("password file");
    let (peer0, peer1) = (pair[0].peer(), pair[1].peer());
    pair[0].start(&[peer1], "primary", extra, root, group, "password");
    pair[0].wait_live();
    pair[1].start(&[peer0], "backup", extra, root, group, "password");
    pair[1].wait_synced_backup();
}

fn failover_url(pair: &[Member; 2]) -> String {
    format!("failover:(stomp://{},stomp://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms", pair[0].stomp_addr(), pair[1].stomp_addr())
}

#[test]
fn given_three_pairs_when_the_local_handlers_live_is_killed_mid_run_should_keep_every_group_on_its_consumer_and_lose_nothing() {
    const GROUPS: u64 = 200;
    const PER_PRODUCER: u64 = GROUPS * 17;
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut g1 = members_of(roots[0].path(), "g1");
    let mut g2 = members_of(roots[1].path(), "g2");
    let mut g3 = members_of(roots[2].path(), "g3");
    let (u1, u2, u3) = (masterslave(&g1), masterslave(&g2), masterslave(&g3));
    let remote = format!("grouping:\n  handler: remote\n  address: {u1}\n  timeout: 10s\n");
    start_pair(roots[0].path(), &mut g1, "g1", &format!("{}grouping:\n  handler: local\n", connectors(&[("to-g2", u2.clone()), ("to-g3", u3.clone())])));
    start_pair(roots[1].path(), &mut g2, "g2", &format!("{}{remote}", connectors(&[("to-g1", u1.clone()), ("to-g3", u3.clone())])));
    start_pair(roots[2].path(), &mut g3, "g3", &format!("{}{remote}", connectors(&[("to-g1", u1.clone()), ("to-g2", u2.clone())])));
    for live in [&g1[0], &g2[0], &g3[0]] {
        live.wait_for("every connector linked", |s| {
            s["network"]["connectors"].as_array().is_some_and(|cs| cs.len() == 2 && cs.iter().all(|c| c["links"][0]["state"] == "linked"))
        });
    }
    for live in [&g2[0], &g3[0]] {
        live.wait_for("remote handler linked", |s| s["grouping"]["connected"] == true);
    }
    // Consumers in two of the groups (none where the handler lives, whose live dies).
    let mut consumers = Consumers::new();
    consumers.add("g2-a", g2[0].stomp, "/queue/orders");
    consumers.add("g2-b", g2[0].stomp, "/queue/orders");
    consumers.add("g3-a", g3[0].stomp, "/queue/orders");
    g1[0].wait_for("demand from g2 and g3", |s| {
        s["network"]["connectors"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["links"][0]["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == "/queue/orders"))))
    });
    // Half the groups start at g3, so g3 owns them and the other groups forward theirs.
    let out = cli(&[
        "send", "--url", &failover_url(&g3), "--destination", "/queue/orders", "--count", &(GROUPS / 2).to_string(),
        "--groups", &GROUPS.to_string(), "--persistent", "--receipts", "--header", "producer=p0",
    ])
    .output()
    .expect("first producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A producer on every group, all with the same 200 group ids.
    let producers: Vec<_> = [("p1", &g1), ("p2", &g2), ("p3", &g3)]
        .into_iter()
        .map(|(name, pair)| {
            cli(&[
                "send", "--url", &failover_url(pair), "--destination", "/queue/orders", "--count", &PER_PRODUCER.to_string(),
                "--groups", &GROUPS.to_string(), "--persistent", "--receipts", "--window", "32", "--header", &format!("producer={name}"),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start producer")
        })
        .collect();
    let total = (PER_PRODUCER * 3 + GROUPS / 2) as usize;
    eventually("a third consumed", ROLE_TIMEOUT * 4, || consumers.count() >= total / 3);
    let bindings_before = g1[0].status().map(|s| s["grouping"]["bindings"].clone()).unwrap_or_default();
    // The handler's live dies mid-run: its backup takes over with every binding.
    assert!(consumers.count() < total * 2 / 3, "the kill comes mid-run");
    g1[0].kill9();
    g1[1].wait_live();
    g1[1].wait_for("handler back with every binding", |s| s["grouping"]["bindings"] == bindings_before);
    for live in [&g2[0], &g3[0]] {
        live.wait_for("remote handler relinked to g1-1", |s| s["grouping"]["connected"] == true && s["grouping"]["linkedTo"] == format!("tcp://{}", g1[1].cluster_addr()));
    }
    for p in producers {
        let out = p.wait_with_output().expect("producer");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains(&format!("{PER_PRODUCER} receipted")), "producer: {text}");
    }
    eventually("everything consumed", ROLE_TIMEOUT * 4, || consumers.count() >= total);
    std::thread::sleep(Duration::from_millis(500));
    let seen = consumers.finish();
    let owners = check_pinned(&seen);
    assert_eq!(owners.len() as u64, GROUPS, "every group reached a consumer");
    let mut got: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for s in &seen {
        got.entry(s.producer.clone()).or_default().insert(s.seq);
    }
    for p in ["p1", "p2", "p3"] {
        let seqs = got.get(p).cloned().unwrap_or_default();
        let missing: Vec<u64> = (0..PER_PRODUCER).filter(|s| !seqs.contains(s)).take(20).collect();
        assert!(missing.is_empty(), "{p}: receipted and never delivered: {missing:?}");
    }
    let repeats = seen.len() - total;
    let redelivered = seen.iter().filter(|s| s.redelivered).count();
    assert!(repeats <= redelivered, "a repeat is only a redelivery: {repeats} repeats, {redelivered} redelivered");
    let spread: BTreeMap<&str, usize> = owners.values().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.as_str()).or_default() += 1;
        m
    });
    assert!(spread.keys().any(|c| c.starts_with("g2")) && spread.keys().any(|c| c.starts_with("g3")), "groups owned in g2 and in g3: {spread:?}");
    for c in ["g2", "g3"] {
        let forwarded: u64 = [&g1[1], &g2[0], &g3[0]]
            .iter()
            .filter_map(|m| m.status())
            .flat_map(|s| s["network"]["connectors"].as_array().cloned().unwrap_or_default())
            .filter(|conn| conn["name"] == format!("to-{c}"))
            .map(|conn| conn["links"][0]["forwardedOut"].as_u64().unwrap_or(0))
            .sum();
        assert!(forwarded > 0, "grouped messages crossed the bridges to {c}");
    }
    eprintln!("groups per consumer: {spread:?}; {} deliveries, {redelivered} redelivered", seen.len());
}
