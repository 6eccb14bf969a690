//! Quorum under a real network partition: three pairs vote for each other; one backup is
//! put in a network namespace of its own (a veth pair this test creates), then cut off
//! from everything. It must not activate. A backup whose live really dies must.
//! Needs root for `ip netns` (CI runs as root).

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::eventually;
use std::process::Command;

/// A network namespace joined to the host by a veth pair, removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Netns {
    /// Addresses are this test's own, inside the namespace and veth pair it creates.
    fn create(host_ip: &str, ns_ip: &str) -> Netns {
        let tag = std::process::id() % 100_000;
        let name = format!("duomq-q{tag}");
        let (host_if, ns_if) = (format!("dqh{tag}"), format!("dqn{tag}"));
        ip(&["netns", "add", &name]);
        let ns = Netns { name: name.clone(), host_if: host_if.clone() };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn given_three_pairs_when_a_backup_is_cut_off_should_not_activate_while_one_whose_live_died_does() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test creates a network namespace and needs root (CI runs as root)");
    let (host_ip, ns_ip) = ("10.213.7.1", "10.213.7.2");
    let netns = Netns::create(host_ip, ns_ip);
    let root = tempfile::Builder::new().prefix("duomq-quorum-").tempdir().unwrap();
    std::fs::write(root.path().join("password"), "a-long-random-cluster-password\n").unwrap();
    let mut members: Vec<Member> = Vec::new();
    for g in 1..=3 {
        for side in ["a", "b"] {
            let mut m = Member::new(root.path(), &format!("g{g}-{side}"));
            m.ip = host_ip.to_string();
            if g == 1 && side == "b" {
                m.ip = ns_ip.to_string();
                m.netns = Some(netns.name.clone());
            }
            members.push(m);
        }
    }
    let addrs: Vec<String> = members.iter().map(|m| m.cluster_addr()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        let group = i / 2;
        let voters: String = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| j / 2 != group)
            .map(|(_, a)| format!("      - {a}\n"))
            .collect();
        m.arbiter = format!("  arbiter:\n    kind: quorum\n    voteTimeout: 1s\n    retryInterval: 300ms\n    voters:\n{voters}");
    }
    // Lives first, then backups.
    for order in [0usize, 1] {
        for g in 0..3 {
            let (i, j) = (g * 2 + order, g * 2 + 1 - order);
            let peer = members[j].peer();
            let role = if order == 0 { "primary" } else { "backup" };
            members[i].start(&[peer], role, "", root.path(), &format!("g{}", g + 1), "password");
            if order == 0 {
                members[i].wait_live();
            } else {
                members[i].wait_synced_backup();
            }
        }
    }

    netns.cut();
    // The isolated backup loses its live and asks for votes it cannot get.
    eventually("the isolated backup asking for votes", ROLE_TIMEOUT, || members[1].log().matches("not activating").count() >= 3);
    assert!(!members[1].log().contains("becomes live"), "an isolated backup activated:\n{}", members[1].log());
    members[0].wait_for("live, and alone", |s| s["role"] == "live" && s["ha"]["alone"] == true);

    // g2's live really dies: its backup gets a majority and activates.
    members[2].kill9();
    members[3].wait_live();
    assert!(members[3].log().contains("voters confirm the live is gone"));
    assert!(!members[1].log().contains("becomes live"), "the isolated backup must still be passive");
}
