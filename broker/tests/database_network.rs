//! Networks of brokers built from shared-database groups: each group's live listens on the
//! cluster port for the other groups' bridges (its backup does not, so a `masterslave:`
//! list moves past it), and a bridge follows the remote group's failover to its new live.

mod common;

use common::cluster::Member;
use common::postgres::Postgres;
use common::cli;
use std::time::Duration;

fn extra(member: &Member, password: &str, connector: Option<String>) -> String {
    let mut yaml = format!("ha:\n  cluster:\n    listen: {}\n    password: {password}\n", member.cluster_addr());
    if let Some(uri) = connector {
        yaml.push_str(&format!("network:\n  connectors:\n    - name: to-g2\n      uri: {uri}\n"));
    }
    yaml
}

#[test]
fn given_two_shared_database_groups_when_the_remote_live_dies_should_bridge_to_its_new_live() {
    let root = tempfile::Builder::new().prefix("duomq-dbnet-").tempdir().unwrap();
    let pg = Postgres::start("network");
    let password = "net-secret";
    let mut a1 = Member::new(root.path(), "g1-a");
    let mut a2 = Member::new(root.path(), "g2-a");
    let mut b2 = Member::new(root.path(), "g2-b");
    let to_g2 = format!("masterslave:(tcp://{},tcp://{})", a2.cluster_addr(), b2.cluster_addr());
    a2.start_shared_database(&pg.url(), &[b2.peer()], "primary", "g2", &extra(&a2, password, None));
    a2.wait_live();
    b2.start_shared_database(&pg.url(), &[a2.peer()], "backup", "g2", &extra(&b2, password, None));
    b2.wait_for("g2's backup", |s| s["role"] == "backup");
    a1.start_shared_database(&pg.url(), &[], "primary", "g1", &extra(&a1, password, Some(to_g2)));
    a1.wait_live();

    // A consumer on g2 makes demand; a producer on g1 is bridged to it.
    let g2 = format!("failover:(stomp://{},stomp://{})?maxReconnectDelay=200ms", a2.stomp_addr(), b2.stomp_addr());
    let consumer = cli(&["receive", "--url", &g2, "--destination", "/queue/bridged", "--count", "200", "--timeout", "60s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    a1.wait_for("a linked bridge to g2", |s| {
        s["network"]["connectors"][0]["links"].as_array().is_some_and(|l| l.iter().any(|l| l["state"] == "linked"))
    });
    let send = |count: &str| {
        let out = cli(&["send", "--url", &format!("stomp://{}", a1.stomp_addr()), "--destination", "/queue/bridged", "--count", count, "--persistent", "--receipts"])
            .output()
            .expect("send");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    send("100");
    a1.wait_for("100 messages forwarded to g2", |s| s["network"]["connectors"][0]["links"][0]["forwardedOut"].as_u64() >= Some(100));

    // g2's live dies: its backup takes the database lease, and g1's bridge moves to it.
    a2.kill9();
    b2.wait_live();
    a1.wait_for("the bridge linked to g2's new live", |s| {
        s["network"]["connectors"][0]["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["state"] == "linked" && l["linkedTo"].as_str().is_some_and(|m| m.ends_with(&format!(":{}", b2.cluster)))))
    });
    send("100");
    let out = common::output_within(consumer, Duration::from_secs(90)).expect("consumer finished");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the consumer did not get all 200 messages across the failover: {report}");
    let summary = report.lines().rev().find(|l| l.starts_with("received ") && l.contains("duplicates")).unwrap_or_default().to_string();
    println!("consumer: {summary}");
    // `--count` counts duplicates too (deliveries in flight when g2's live died come again
    // from its backup): the rest are still to come, bridged to a new consumer.
    let duplicates: u64 = summary.split(" redelivered, ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    if duplicates > 0 {
        let rest = duplicates.to_string();
        let out = cli(&["receive", "--url", &g2, "--destination", "/queue/bridged", "--count", &rest, "--timeout", "30s"]).output().expect("receive the rest");
        assert!(out.status.success(), "the last {rest} messages did not come: {}", String::from_utf8_lossy(&out.stderr));
    }
}
