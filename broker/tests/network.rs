//! Networks of brokers with real processes on loopback: store-and-forward bridges between
//! groups (demand, failover of either side, networkTTL in a ring, duplex, topics through one
//! conduit, destination filters, a wrong password). Every test counts what arrives where.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::{cli, eventually, reserve_port, Broker};
use duomq_broker::cluster::Purpose;
use duomq_broker::faults::{Direction, DiskFault, FaultRules, FrameAction, FrameRule};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// How long a bridge may take to link, or messages to cross it.
const LINK_TIMEOUT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "network-test-password";

/// A standalone broker whose cluster port takes bridges; `network` is its `network:` block.
struct Node {
    broker: Broker,
}

impl Node {
    fn start(name: &str, cluster: u16, network: &str) -> Node {
        Node::start_as(name, cluster, network, "duomq-cluster")
    }

    /// A node whose cluster user is `user` (the password is the shared one).
    fn start_as(name: &str, cluster: u16, network: &str, user: &str) -> Node {
        let config = format!("node:\n  id: {name}\nha:\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    user: {user}\n    password: {PASSWORD}\n{network}");
        Node { broker: Broker::start(name, &config) }
    }

    fn url(&self) -> String {
        format!("stomp://127.0.0.1:{}", self.broker.stomp_port)
    }

    fn status(&self) -> Value {
        self.broker.status()
    }

    fn link(&self, connector: &str) -> Value {
        link_of(&self.status(), connector)
    }
}

fn link_of(status: &Value, connector: &str) -> Value {
    status["network"]["connectors"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == connector))
        .map(|c| c["links"][0].clone())
        .unwrap_or(Value::Null)
}

fn connectors(list: &[(&str, String, &str)]) -> String {
    let mut out = String::from("network:\n  connectors:\n");
    for (name, uri, extra) in list {
        out.push_str(&format!("    - name: {name}\n      uri: {uri}\n"));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

fn tcp(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn send(url: &str, destination: &str, count: usize) {
    let out = cli(&["send", "--url", url, "--destination", destination, "--count", &count.to_string(), "--persistent", "--receipts", "--window", "64"])
        .output()
        .expect("run producer");
    assert!(out.status.success(), "producer failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts a consumer in the background that prints each body (`message N`) to stdout.
fn consumer(url: &str, destination: &str, count: usize, timeout: &str) -> Child {
    cli(&["receive", "--url", url, "--destination", destination, "--count", &count.to_string(), "--timeout", timeout, "--print"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consumer")
}

/// Waits for a background consumer; returns the sequence numbers it printed and its summary.
fn finish(child: Child) -> (Vec<u64>, String) {
    let out = child.wait_with_output().expect("wait for consumer");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    let seqs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("message ").and_then(|n| n.trim().parse().ok()))
        .collect();
    (seqs, summary)
}

fn linked(node: &Node, connector: &str) {
    eventually(&format!("connector {connector} linked"), LINK_TIMEOUT, || node.link(connector)["state"] == "linked");
}

fn remote_wants(node: &Node, connector: &str, destination: &str) {
    eventually(&format!("{connector} sees demand for {destination}"), LINK_TIMEOUT, || {
        node.link(connector)["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == destination))
    });
}

#[test]
fn given_a_consumer_on_the_remote_when_messages_are_sent_here_should_forward_each_once_and_keep_nothing_here() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start("b", cb, "");
    linked(&a, "to-b");
    // A backlog waiting here with no consumer anywhere stays here...
    send(&a.url(), "/queue/orders", 50);
    assert_eq!(a.broker.queue_depth("/queue/orders"), 50);
    // ...and moves to the remote once a consumer appears there.
    let got = consumer(&b.url(), "/queue/orders", 250, "20s");
    remote_wants(&a, "to-b", "/queue/orders");
    send(&a.url(), "/queue/orders", 200);
    let (seqs, summary) = finish(got);
    assert!(summary.contains("received 250 messages") && summary.contains("0 duplicates"), "{summary}");
    let expected: Vec<u64> = (0..50).chain(0..200).collect();
    assert_eq!(seqs, expected, "messages arrive in the order each producer sent them");
    eventually("source settled everything", LINK_TIMEOUT, || a.broker.queue_depth("/queue/orders") == 0);
    let link = a.link("to-b");
    assert_eq!(link["forwardedOut"], 250, "{link}");
    assert_eq!(link["remoteGroup"], "b");
    let inbound = &b.status()["network"]["inbound"][0];
    assert_eq!(inbound["forwardedIn"], 250, "{inbound}");
    assert!(common::metric_value(a.broker.admin_port, "duomq_bridge_forwarded_total{connector=\"to-b\",direction=\"out\"}") == 250);
}

#[test]
fn given_a_static_list_should_link_to_each_broker_and_forward_to_whichever_asks() {
    let (ca, cb, cc) = (reserve_port(), reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("edge", format!("static:({},{})", tcp(cb), tcp(cc)), "")]));
    let b = Node::start("b", cb, "");
    let c = Node::start("c", cc, "");
    eventually("both links of the static list up", LINK_TIMEOUT, || {
        let links = a.status()["network"]["connectors"][0]["links"].clone();
        links.as_array().is_some_and(|l| l.len() == 2 && l.iter().all(|x| x["state"] == "linked"))
    });
    let at_b = consumer(&b.url(), "/queue/to-b", 20, "20s");
    let at_c = consumer(&c.url(), "/queue/to-c", 20, "20s");
    eventually("demand from both", LINK_TIMEOUT, || {
        let links = a.status()["network"]["connectors"][0]["links"].clone();
        links.as_array().is_some_and(|l| l.iter().all(|x| x["remoteDemandCount"] == 1))
    });
    send(&a.url(), "/queue/to-b", 20);
    send(&a.url(), "/queue/to-c", 20);
    assert_eq!(finish(at_b).0, (0..20).collect::<Vec<u64>>());
    assert_eq!(finish(at_c).0, (0..20).collect::<Vec<u64>>());
}

#[test]
fn given_local_and_remote_consumers_should_serve_local_ones_first() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start("b", cb, "");
    linked(&a, "to-b");
    let remote = consumer(&b.url(), "/queue/jobs", 1, "4s");
    remote_wants(&a, "to-b", "/queue/jobs");
    let local = consumer(&a.url(), "/queue/jobs", 100, "20s");
    eventually("local consumer subscribed", LINK_TIMEOUT, || {
        a.status()["queues"].as_array().is_some_and(|qs| qs.iter().any(|q| q["name"] == "/queue/jobs" && q["consumers"] == 2))
    });
    send(&a.url(), "/queue/jobs", 100);
    let (seqs, summary) = finish(local);
    assert_eq!(seqs.len(), 100, "the local consumer (prefetch 100) had room for all: {summary}");
    let (remote_seqs, _) = finish(remote);
    assert!(remote_seqs.is_empty(), "a network consumer ranks below local ones: {remote_seqs:?}");
}

#[test]
fn given_a_ring_of_three_should_reach_two_bridges_away_only_with_ttl_two_and_never_loop() {
    for ttl in [1u8, 2] {
        let (ca, cb, cc) = (reserve_port(), reserve_port(), reserve_port());
        let opt = format!("networkTTL: {ttl}");
        let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), &opt)]));
        let b = Node::start("b", cb, &connectors(&[("to-c", tcp(cc), &opt)]));
        let c = Node::start("c", cc, &connectors(&[("to-a", tcp(ca), &opt)]));
        linked(&a, "to-b");
        linked(&b, "to-c");
        linked(&c, "to-a");
        let far = consumer(&c.url(), "/queue/ring", 30, if ttl == 1 { "3s" } else { "20s" });
        remote_wants(&b, "to-c", "/queue/ring");
        if ttl == 2 {
            remote_wants(&a, "to-b", "/queue/ring");
        }
        send(&a.url(), "/queue/ring", 30);
        let (seqs, summary) = finish(far);
        if ttl == 1 {
            assert!(seqs.is_empty(), "ttl 1: c is two bridges from a: {summary}");
            assert_eq!(a.broker.queue_depth("/queue/ring"), 30, "ttl 1: the messages stay where they were sent");
            assert!(a.link("to-b")["remoteDemand"].as_array().is_some_and(|d| d.is_empty()), "ttl 1: b does not relay c's demand");
        } else {
            assert_eq!(seqs, (0..30).collect::<Vec<u64>>(), "ttl 2: each message once, in order: {summary}");
            // No loop: nothing goes round again, every queue ends empty, counts add up.
            std::thread::sleep(Duration::from_millis(500));
            for n in [&a, &b, &c] {
                assert_eq!(n.broker.queue_depth("/queue/ring"), 0);
            }
            assert_eq!(a.link("to-b")["forwardedOut"], 30);
            assert_eq!(b.link("to-c")["forwardedOut"], 30);
            assert_eq!(c.link("to-a")["forwardedOut"], 0);
        }
    }
}

#[test]
fn given_a_duplex_link_should_carry_messages_back_over_the_same_connection() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "duplex: true")]));
    // b has no connector of its own: everything it sends crosses a's link.
    let b = Node::start("b", cb, "");
    linked(&a, "to-b");
    let at_a = consumer(&a.url(), "/queue/back", 40, "20s");
    eventually("b sees a's demand over the duplex link", LINK_TIMEOUT, || {
        b.status()["network"]["inbound"][0]["localDemandCount"].as_u64().is_some()
            && a.link("to-b")["localDemandCount"].as_u64() == Some(1)
    });
    send(&b.url(), "/queue/back", 40);
    let (seqs, summary) = finish(at_a);
    assert_eq!(seqs, (0..40).collect::<Vec<u64>>(), "{summary}");
    assert_eq!(a.link("to-b")["forwardedIn"], 40);
    assert_eq!(b.status()["network"]["inbound"][0]["forwardedOut"], 40);
}

#[test]
fn given_two_subscribers_on_the_remote_should_forward_each_topic_message_once_through_one_conduit() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start("b", cb, "");
    linked(&a, "to-b");
    let s1 = consumer(&b.url(), "/topic/prices", 25, "20s");
    let s2 = consumer(&b.url(), "/topic/prices", 25, "20s");
    eventually("both subscribers counted in b's demand", LINK_TIMEOUT, || {
        a.link("to-b")["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == "/topic/prices"))
            && b.status()["queues"].as_array().is_some_and(|qs| qs.iter().any(|q| q["name"] == "/topic/prices" && q["consumers"] == 2))
    });
    let out = cli(&["send", "--url", &a.url(), "--destination", "/topic/prices", "--count", "25", "--receipts"]).output().unwrap();
    assert!(out.status.success());
    for s in [s1, s2] {
        let (seqs, summary) = finish(s);
        assert_eq!(seqs, (0..25).collect::<Vec<u64>>(), "{summary}");
    }
    assert_eq!(a.link("to-b")["forwardedOut"], 25, "one conduit: each message crossed once, not once per subscriber");
}

#[test]
fn given_excluded_and_statically_included_destinations_should_hold_back_the_first_and_push_the_second() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let filters = "excludedDestinations: [\"/queue/secret.>\"]\nstaticallyIncludedDestinations: [\"/queue/pushed\"]";
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), filters)]));
    let b = Node::start("b", cb, "");
    linked(&a, "to-b");
    let secret = consumer(&b.url(), "/queue/secret.plans", 10, "3s");
    let open = consumer(&b.url(), "/queue/open", 10, "20s");
    remote_wants(&a, "to-b", "/queue/open");
    send(&a.url(), "/queue/secret.plans", 10);
    send(&a.url(), "/queue/open", 10);
    send(&a.url(), "/queue/pushed", 10);
    assert_eq!(finish(open).0.len(), 10);
    assert!(finish(secret).0.is_empty(), "an excluded destination never crosses");
    assert_eq!(a.broker.queue_depth("/queue/secret.plans"), 10);
    // Statically included: pushed with no consumer on b.
    eventually("statically included queue pushed to b", LINK_TIMEOUT, || b.broker.queue_depth("/queue/pushed") == 10);
    assert_eq!(a.broker.queue_depth("/queue/pushed"), 0);
}

#[test]
fn given_a_wrong_password_on_the_connector_should_refuse_log_retry_and_forward_nothing() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "password: not-the-password")]));
    let b = Node::start("b", cb, "");
    let waiting = consumer(&b.url(), "/queue/x", 5, "3s");
    send(&a.url(), "/queue/x", 5);
    eventually("connector refused", LINK_TIMEOUT, || a.link("to-b")["state"] == "refused");
    let link = a.link("to-b");
    assert!(link["lastError"].as_str().is_some_and(|e| e.contains("failed to prove the cluster credentials")), "{link}");
    assert!(a.broker.log_text().contains("bridge refused (check the remote's cluster user and password)"));
    assert!(b.broker.log_text().contains("refused a cluster connection"));
    assert!(finish(waiting).0.is_empty(), "nothing crosses a refused link");
    assert_eq!(a.broker.queue_depth("/queue/x"), 5);
    // Still retrying: the remote keeps counting handshakes the connector gave up on (it
    // checks the remote's proof first, so it never proves anything with a wrong password).
    let refused = || common::metric_value(b.broker.admin_port, "duomq_cluster_connections_refused_total{reason=\"closed\"}");
    let before = refused();
    eventually("connector retries", LINK_TIMEOUT, || refused() > before);
}

#[test]
fn given_the_right_password_with_another_cluster_user_should_refuse_the_link() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start_as("b", cb, "", "another-user");
    eventually("connector refused", LINK_TIMEOUT, || a.link("to-b")["state"] == "refused");
    let link = a.link("to-b");
    assert!(
        link["lastError"].as_str().is_some_and(|e| e.contains("another cluster user or password")),
        "{link}"
    );
    assert!(b.broker.log_text().contains("refused a cluster connection"));
}

fn start_pair(root: &Path, names: [&str; 2], group: &str, extra: &str) -> (Member, Member) {
    std::fs::write(root.join("password"), format!("{PASSWORD}\n")).unwrap();
    let mut m0 = Member::new(root, names[0]);
    let mut m1 = Member::new(root, names[1]);
    m0.start(&[m1.peer()], "primary", extra, root, group, "password");
    m0.wait_live();
    m1.start(&[m0.peer()], "backup", extra, root, group, "password");
    m1.wait_synced_backup();
    (m0, m1)
}

fn failover_url(m0: &Member, m1: &Member) -> String {
    format!("failover:(stomp://{},stomp://{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms", m0.stomp_addr(), m1.stomp_addr())
}

fn forwarded_out(m: &Member) -> u64 {
    m.status().map(|s| link_of(&s, "to-b")["forwardedOut"].as_u64().unwrap_or(0)).unwrap_or(0)
}

#[test]
fn given_two_pairs_when_each_live_is_killed_during_the_flow_should_deliver_every_receipted_message_once_in_order() {
    let (ra, rb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut b0, b1) = start_pair(rb.path(), ["b0", "b1"], "gb", "");
    let to_b = connectors(&[("to-b", format!("masterslave:(tcp://{},tcp://{})", b0.cluster_addr(), b1.cluster_addr()), "")]);
    let (mut a0, a1) = start_pair(ra.path(), ["a0", "a1"], "ga", &to_b);
    a0.wait_for("connector to-b linked", |s| link_of(s, "to-b")["state"] == "linked");
    const N: usize = 6000;
    // Until nothing more comes: a consumer that fails over is sent again what it had not
    // acknowledged durably (flagged redelivered), so it may count more than N.
    let got = consumer(&failover_url(&b0, &b1), "/queue/flow", N + 1000, "10s");
    a0.wait_for("b's consumer seen as demand", |s| {
        link_of(s, "to-b")["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == "/queue/flow"))
    });
    let producer = cli(&["send", "--url", &failover_url(&a0, &a1), "--destination", "/queue/flow", "--count", &N.to_string(), "--persistent", "--receipts", "--window", "64"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start producer");
    // The target group's live dies mid-flow: the bridge follows to its new live.
    eventually("a quarter forwarded", ROLE_TIMEOUT, || forwarded_out(&a0) >= (N / 4) as u64);
    b0.kill9();
    b1.wait_live();
    a0.wait_for("connector to-b relinked to b1", |s| {
        let l = link_of(s, "to-b");
        l["state"] == "linked" && l["remoteNode"] == "b1"
    });
    // Then the source group's live dies: its backup resends what b had not confirmed.
    eventually("half forwarded", ROLE_TIMEOUT, || forwarded_out(&a0) >= (N / 2) as u64);
    a0.kill9();
    a1.wait_live();
    a1.wait_for("a1's connector linked", |s| link_of(s, "to-b")["state"] == "linked");
    let out = producer.wait_with_output().expect("producer");
    let sent = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && sent.contains(&format!("{N} receipted")), "producer: {sent}");
    let (seqs, summary) = finish(got);
    let status = || format!("a1: {}\nb1: {}", a1.status().unwrap_or_default(), b1.status().unwrap_or_default());
    let mut first_seen = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for seq in &seqs {
        if seen.insert(*seq) {
            first_seen.push(*seq);
        }
    }
    if first_seen != (0..N as u64).collect::<Vec<u64>>() {
        let missing: Vec<u64> = (0..N as u64).filter(|s| !seen.contains(s)).collect();
        let disorder = first_seen.windows(2).filter(|w| w[0] > w[1]).take(10).map(|w| format!("{}>{}", w[0], w[1])).collect::<Vec<_>>();
        for m in [&a0, &a1, &b0, &b1] {
            let _ = std::fs::copy(m.dir.join("broker.log"), std::env::temp_dir().join(format!("network-failure-{}.log", m.name)));
        }
        panic!(
            "every receipted message, in the order sent: {} missing {:?}, out of order {disorder:?}\nconsumer: {summary}\n{}",
            missing.len(),
            &missing[..missing.len().min(80)],
            status()
        );
    }
    let redelivered: usize = summary.split(" redelivered").next().and_then(|s| s.rsplit('(').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(seqs.len() - N <= redelivered, "a repeat is only ever a redelivery to the failed-over consumer\nconsumer: {summary}\n{}", status());
    // Stored once on the target: nothing is left over there.
    assert_eq!(b1.status().map(|s| s["queues"][0]["depth"].clone()), Some(serde_json::json!(0)), "{}", status());
}

#[test]
fn given_a_password_file_that_appears_later_should_refuse_that_link_only_and_then_link() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("remote-password");
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), &format!("passwordFile: {}", file.display()))]));
    let b = Node::start("b", cb, "");
    eventually("link refused while the file is missing", LINK_TIMEOUT, || {
        let l = a.link("to-b");
        l["state"] == "refused" && l["lastError"].as_str().is_some_and(|e| e.contains("remote-password"))
    });
    // The broker itself serves clients meanwhile.
    send(&a.url(), "/queue/meanwhile", 3);
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    linked(&a, "to-b");
    let got = consumer(&b.url(), "/queue/meanwhile", 3, "20s");
    assert_eq!(finish(got).0, vec![0, 1, 2]);
}

#[test]
fn given_a_consumer_that_moves_back_should_replay_what_was_forwarded_but_not_consumed() {
    // Two groups bridged both ways (as a BrokerGroup's mesh is). Messages sent on a follow
    // a consumer to b; the consumer leaves b after five and reappears on a: the rest, with
    // no consumer left on b, go back to a (replayWhenNoConsumers), each once.
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start("b", cb, &connectors(&[("to-a", tcp(ca), "")]));
    linked(&a, "to-b");
    linked(&b, "to-a");
    let first = consumer(&b.url(), "/queue/moving", 5, "20s");
    remote_wants(&a, "to-b", "/queue/moving");
    send(&a.url(), "/queue/moving", 50);
    let (got_first, _) = finish(first);
    assert_eq!(got_first, (0..5).collect::<Vec<u64>>());
    eventually("the rest forwarded to b", LINK_TIMEOUT, || b.broker.queue_depth("/queue/moving") == 45);
    let second = consumer(&a.url(), "/queue/moving", 45, "20s");
    let (got_second, summary) = finish(second);
    assert_eq!(got_second, (5..50).collect::<Vec<u64>>(), "{summary}");
    eventually("b empty", LINK_TIMEOUT, || b.broker.queue_depth("/queue/moving") == 0);
}

#[test]
fn given_a_durable_subscription_on_the_remote_with_its_consumer_away_should_forward_the_topic_to_it() {
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start("b", cb, "");
    linked(&a, "to-b");
    let client = common::stomppy::client("app-net");
    let subscribe = serde_json::json!({ "op": "subscribe", "destination": "/topic/prices", "id": "s", "headers": { "activemq.subscriptionName": "feed" } });
    let port = b.broker.stomp_port;
    assert_eq!(common::stomppy::session("127.0.0.1", port, client.clone(), serde_json::json!([subscribe, { "op": "disconnect" }])).done, 2);
    // Nobody is attached on b, yet b asks a for the topic.
    remote_wants(&a, "to-b", "/topic/prices");
    send(&a.url(), "/topic/prices", 20);
    eventually("b keeps the topic's messages for its durable subscription", LINK_TIMEOUT, || {
        b.status()["durableSubscriptions"][0]["depth"] == 20
    });
    let receive = serde_json::json!({ "op": "receive", "count": 20, "seconds": 15 });
    let got = common::stomppy::session("127.0.0.1", port, client, serde_json::json!([subscribe, receive, { "op": "disconnect" }]));
    let expected: Vec<String> = (0..20).map(|n| format!("message {n}")).collect();
    assert_eq!(got.messages.len(), 20, "{:?}", got.raw);
    assert!(got.messages.iter().zip(&expected).all(|(m, e)| m.starts_with(e.as_str())), "{:?}", got.messages);
}

fn wants(status: &Value, connector: &str, destination: &str) -> bool {
    link_of(status, connector)["remoteDemand"].as_array().is_some_and(|d| d.iter().any(|x| x == destination))
}

#[test]
fn given_the_source_live_killed_before_the_remote_confirmed_should_send_again_only_to_that_group() {
    // Group ga bridges to b and c. Everything goes to b, whose consumer takes it, while ga
    // never hears b's confirmations (dropped) and its live dies. Now only c wants the
    // queue; ga's backup must send the messages again to b (which knows them), never to c.
    const N: usize = 20;
    let ra = tempfile::tempdir().unwrap();
    let (cb, cc) = (reserve_port(), reserve_port());
    let b = Node::start("b", cb, "");
    let c = Node::start("c", cc, "");
    let extra = format!("debug:\n  faultInjection: true\n{}", connectors(&[("to-b", tcp(cb), ""), ("to-c", tcp(cc), "")]));
    let (mut a0, a1) = start_pair(ra.path(), ["a0", "a1"], "ga", &extra);
    a0.wait_for("both connectors linked", |s| link_of(s, "to-b")["state"] == "linked" && link_of(s, "to-c")["state"] == "linked");
    let confirmations = FrameRule { direction: Some(Direction::In), channel: Some(Purpose::Bridge), frames: vec!["forwarded".into()], ..FrameRule::new(FrameAction::Drop) };
    a0.set_faults(&FaultRules { frames: vec![confirmations], disk: None });
    let on_b = consumer(&b.url(), "/queue/pinned", N, "20s");
    a0.wait_for("b's demand", |s| wants(s, "to-b", "/queue/pinned"));
    send(&failover_url(&a0, &a1), "/queue/pinned", N);
    let (got_b, summary) = finish(on_b);
    // Each once and in order: what b stored behind the forward it failed to store stays
    // unpublished until that one comes again and is stored.
    assert_eq!(got_b, (0..N as u64).collect::<Vec<u64>>(), "{summary}");
    let on_c = consumer(&c.url(), "/queue/pinned", N, "15s");
    a0.wait_for("c's demand only", |s| wants(s, "to-c", "/queue/pinned") && !wants(s, "to-b", "/queue/pinned"));
    assert_eq!(c.broker.queue_depth("/queue/pinned"), 0, "in flight to b, nothing went to c");
    a0.kill9();
    a1.wait_live();
    let (got_c, summary) = finish(on_c);
    assert!(got_c.is_empty(), "c got {got_c:?} that b had consumed already: {summary}");
    a1.wait_for("b confirmed every message to a1", |s| link_of(s, "to-b")["forwardedOut"] == N);
    assert_eq!(b.broker.queue_depth("/queue/pinned"), 0, "b stored each message once");
    assert_eq!(link_of(&a1.status().unwrap_or_default(), "to-c")["forwardedOut"], 0);
    a1.wait_for("nothing left on a1", |s| s["queues"].as_array().is_some_and(|q| q.iter().all(|q| q["depth"] == 0 && q["inFlight"] == 0)));
}

#[test]
fn given_the_remote_failing_to_store_a_forward_should_keep_it_for_that_group_and_not_refuse_it() {
    // A remote whose write fails cannot tell whether a backup holds the record, so it does
    // not refuse the forward: it closes the link and the source sends it again, to it only,
    // even while another group (c) wants the queue.
    const N: usize = 10;
    let (ca, cb, cc) = (reserve_port(), reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), ""), ("to-c", tcp(cc), "")]));
    let b = Node::start("b", cb, "debug:\n  faultInjection: true\n");
    let c = Node::start("c", cc, "");
    linked(&a, "to-b");
    linked(&a, "to-c");
    let on_b = consumer(&b.url(), "/queue/retried", N, "30s");
    remote_wants(&a, "to-b", "/queue/retried");
    b.broker.set_faults(&FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_all_syncs: true, ..DiskFault::default() }) });
    send(&a.url(), "/queue/retried", N);
    let on_c = consumer(&c.url(), "/queue/retried", N, "8s");
    remote_wants(&a, "to-c", "/queue/retried");
    eventually("b closed the link over the failed write", LINK_TIMEOUT, || b.broker.log_text().contains("could not store a forward"));
    std::thread::sleep(Duration::from_secs(3));
    b.broker.clear_faults();
    let (got_b, summary) = finish(on_b);
    // Each once and in order: what b stored behind the forward it failed to store stays
    // unpublished until that one comes again and is stored.
    assert_eq!(got_b, (0..N as u64).collect::<Vec<u64>>(), "{summary}");
    let (got_c, summary) = finish(on_c);
    assert!(got_c.is_empty(), "c got {got_c:?}: {summary}");
    eventually("a settled everything", LINK_TIMEOUT, || a.broker.queue_depth("/queue/retried") == 0);
}

#[test]
fn given_the_remote_failing_one_write_among_forwards_in_flight_should_deliver_them_there_in_order() {
    // Nemesis finding 6: the forwards behind one whose write failed were stored in later
    // fsyncs and published at once; the failed one, sent again on the next link, came after
    // them. They now wait unpublished until it is stored.
    const N: usize = 40;
    let (ca, cb) = (reserve_port(), reserve_port());
    let a = Node::start("a", ca, &connectors(&[("to-b", tcp(cb), "")]));
    let b = Node::start("b", cb, "debug:\n  faultInjection: true\n");
    linked(&a, "to-b");
    let on_b = consumer(&b.url(), "/queue/ordered", N, "30s");
    remote_wants(&a, "to-b", "/queue/ordered");
    // Slow fsyncs spread the forwards in flight over several; the first of them fails.
    let slow = Some(duomq_broker::config::HumanDuration(Duration::from_millis(100)));
    b.broker.set_faults(&FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_next_syncs: 1, sync_delay: slow, ..DiskFault::default() }) });
    send(&a.url(), "/queue/ordered", N);
    eventually("b closed the link over the failed write", LINK_TIMEOUT, || b.broker.log_text().contains("could not store a forward"));
    let (got_b, summary) = finish(on_b);
    assert_eq!(got_b, (0..N as u64).collect::<Vec<u64>>(), "{summary}");
    eventually("a settled everything", LINK_TIMEOUT, || a.broker.queue_depth("/queue/ordered") == 0);
}
