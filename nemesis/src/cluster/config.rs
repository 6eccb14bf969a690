//! The cluster's shape and each member's `broker.yaml`, built from the broker's own config
//! types (so this file and the broker cannot disagree on a field): N live/backup groups on
//! loopback, every group bridged to every other one (`masterslave:` URIs), the LOCAL
//! grouping handler in `g0` and REMOTE handlers in the others. Pure: ports are chosen by
//! the caller, nothing is written here.

use duomq_broker::config::{
    AddressSettingsEntry, ArbiterKind, BrokerConfig, ByteSize, GroupingConfig, GroupingHandler, HaPolicy, HumanDuration, Member,
    NetworkConnector, PreferredRole,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The queues the run's clients use; the dead-letter limit is lifted on them so a message
/// redelivered through many failovers is never moved out of the consumers' reach.
pub const QUEUE_PATTERN: &str = "/queue/nemesis.>";

/// Who decides that a backup may take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arbiter {
    /// A lock file per group that the live holds (the README's choice for members sharing
    /// one machine); the kernel drops it when the live dies.
    FileLock,
    /// A majority of the other groups' members must confirm the live is gone.
    Quorum,
}

impl Arbiter {
    pub fn name(self) -> &'static str {
        match self {
            Arbiter::FileLock => "fileLock",
            Arbiter::Quorum => "quorum",
        }
    }
}

/// One member's name and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLayout {
    /// `g1-a` (the primary) or `g1-b`.
    pub name: String,
    pub group: String,
    pub primary: bool,
    pub stomp: u16,
    pub admin: u16,
    pub cluster: u16,
    /// Its directory: config, data, lock file.
    pub dir: PathBuf,
}

impl MemberLayout {
    pub fn stomp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.stomp)
    }

    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin)
    }

    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster)
    }
}

/// Every member, by group.
#[derive(Debug, Clone)]
pub struct Layout {
    pub groups: Vec<[MemberLayout; 2]>,
    pub arbiter: Arbiter,
    /// The cluster password's file, shared by every member.
    pub password_file: PathBuf,
    /// Lock files (`fileLock`) live here, one per group.
    pub root: PathBuf,
    /// Members serve `/debug/faults` (`debug.faultInjection`): the run cuts links and
    /// fails or slows fdatasyncs through it.
    pub fault_injection: bool,
}

impl Layout {
    /// `groups` groups under `root`, with ports from `ports` (three per member), without
    /// fault injection.
    pub fn new(root: &Path, groups: usize, arbiter: Arbiter, mut ports: impl FnMut() -> u16) -> Layout {
        let groups = (0..groups)
            .map(|g| {
                let member = |suffix: &str, primary: bool, ports: &mut dyn FnMut() -> u16| {
                    let name = format!("g{g}-{suffix}");
                    MemberLayout {
                        dir: root.join("members").join(&name),
                        name,
                        group: format!("g{g}"),
                        primary,
                        stomp: ports(),
                        admin: ports(),
                        cluster: ports(),
                    }
                };
                [member("a", true, &mut ports), member("b", false, &mut ports)]
            })
            .collect();
        Layout { groups, arbiter, password_file: root.join("cluster-password"), root: root.to_path_buf(), fault_injection: false }
    }

    pub fn members(&self) -> impl Iterator<Item = &MemberLayout> {
        self.groups.iter().flatten()
    }

    /// A group's cluster ports as bridges and remote grouping handlers name them.
    pub fn masterslave(&self, group: usize) -> String {
        let [a, b] = &self.groups[group];
        format!("masterslave:(tcp://{},tcp://{})", a.cluster_addr(), b.cluster_addr())
    }

    /// A group's STOMP ports as its clients' failover URL; reconnects are quick and never
    /// give up (a group may be down for a while).
    pub fn failover_url(&self, group: usize) -> String {
        let [a, b] = &self.groups[group];
        format!(
            "failover:(stomp://{},stomp://{})?randomize=false&initialReconnectDelay=10ms&maxReconnectDelay=500ms&maxReconnectAttempts=-1",
            a.stomp_addr(),
            b.stomp_addr()
        )
    }

    /// The `broker.yaml` of member `index` (0: the primary) of group `group`.
    pub fn broker_config(&self, group: usize, index: usize) -> BrokerConfig {
        let me = &self.groups[group][index];
        let peer = &self.groups[group][1 - index];
        let mut c = BrokerConfig::default();
        c.node.id = me.name.clone();
        c.stomp.listen = loopback(me.stomp);
        // Clients notice a frozen member within a few seconds.
        c.stomp.heartbeat_send = HumanDuration::secs(1);
        c.stomp.heartbeat_receive = HumanDuration::secs(1);
        c.stomp.max_body_bytes = ByteSize::kib(64);
        c.admin.listen = loopback(me.admin);
        c.storage.data_dir = me.dir.join("data");
        // Small segments: reclaiming and rolling segments happen often under faults too.
        c.storage.segment_size = ByteSize::mib(4);
        c.debug.fault_injection = self.fault_injection;
        c.address_settings = vec![AddressSettingsEntry {
            pattern: QUEUE_PATTERN.to_string(),
            max_delivery_attempts: Some(0),
            ..AddressSettingsEntry::default()
        }];

        let ha = &mut c.ha;
        ha.policy = HaPolicy::Replication;
        ha.role = if me.primary { PreferredRole::Primary } else { PreferredRole::Backup };
        ha.group_name = me.group.clone();
        ha.allow_failback = me.primary;
        ha.check_period = HumanDuration::millis(100);
        ha.connection_ttl = HumanDuration::secs(1);
        ha.cluster.listen = loopback(me.cluster);
        ha.cluster.password_file = Some(self.password_file.clone());
        ha.members = vec![Member { name: peer.name.clone(), cluster: peer.cluster_addr(), stomp: peer.stomp_addr(), amqp: String::new() }];
        ha.arbiter.retry_interval = HumanDuration::millis(100);
        match self.arbiter {
            Arbiter::FileLock => {
                ha.arbiter.kind = ArbiterKind::FileLock;
                ha.arbiter.lock_file = Some(self.root.join(format!("{}.lock", me.group)));
            }
            Arbiter::Quorum => {
                ha.arbiter.kind = ArbiterKind::Quorum;
                ha.arbiter.vote_timeout = HumanDuration::secs(1);
                ha.arbiter.voters =
                    self.groups.iter().enumerate().filter(|(g, _)| *g != group).flat_map(|(_, pair)| pair.iter()).map(MemberLayout::cluster_addr).collect();
            }
        }

        c.network.connectors =
            (0..self.groups.len()).filter(|g| *g != group).map(|g| connector(&format!("to-g{g}"), &self.masterslave(g))).collect();
        c.grouping = GroupingConfig {
            handler: if group == 0 { GroupingHandler::Local } else { GroupingHandler::Remote },
            address: (group != 0).then(|| self.masterslave(0)),
            ..GroupingConfig::default()
        };
        c
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A connector with every option at the broker's default.
fn connector(name: &str, uri: &str) -> NetworkConnector {
    let fields = serde_yaml::Mapping::from_iter([("name".into(), name.into()), ("uri".into(), uri.into())]);
    // Two strings always make a connector: every other field has a default.
    serde_yaml::from_value(serde_yaml::Value::Mapping(fields)).unwrap_or_else(|e| unreachable!("a connector from a name and a URI: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(arbiter: Arbiter) -> Layout {
        let mut next = 20_000;
        Layout::new(Path::new("run"), 3, arbiter, || {
            next += 1;
            next
        })
    }

    #[test]
    fn given_three_groups_should_render_configs_the_broker_accepts() {
        for arbiter in [Arbiter::FileLock, Arbiter::Quorum] {
            let layout = layout(arbiter);
            for g in 0..3 {
                for i in 0..2 {
                    let config = layout.broker_config(g, i);
                    let text = serde_yaml::to_string(&config).expect("to YAML");
                    let back: BrokerConfig = serde_yaml::from_str(&text).expect("from YAML");
                    back.validate().unwrap_or_else(|e| panic!("g{g} member {i} ({arbiter:?}): {e}\n{text}"));
                    assert_eq!(back, config);
                }
            }
        }
    }

    #[test]
    fn given_a_group_should_bridge_to_every_other_group_and_ask_g0_for_grouping_decisions() {
        let layout = layout(Arbiter::FileLock);
        let g1b = layout.broker_config(1, 1);
        assert_eq!(g1b.node.id, "g1-b");
        assert_eq!(g1b.ha.role, PreferredRole::Backup);
        assert!(!g1b.ha.allow_failback);
        assert_eq!(g1b.ha.members[0].name, "g1-a");
        let targets: Vec<&str> = g1b.network.connectors.iter().map(|c| c.uri.as_str()).collect();
        assert_eq!(targets, [layout.masterslave(0), layout.masterslave(2)]);
        assert_eq!(g1b.grouping.handler, GroupingHandler::Remote);
        assert_eq!(g1b.grouping.address, Some(layout.masterslave(0)));
        assert_eq!(g1b.ha.arbiter.lock_file, Some(PathBuf::from("run/g1.lock")));
        let g0a = layout.broker_config(0, 0);
        assert_eq!(g0a.grouping.handler, GroupingHandler::Local);
        assert!(g0a.ha.allow_failback);
    }

    #[test]
    fn given_fault_injection_should_turn_it_on_in_every_member_and_leave_it_off_otherwise() {
        let mut layout = layout(Arbiter::FileLock);
        assert!(!layout.broker_config(0, 0).debug.fault_injection);
        layout.fault_injection = true;
        assert!((0..3).all(|g| (0..2).all(|i| layout.broker_config(g, i).debug.fault_injection)));
    }

    #[test]
    fn given_the_quorum_arbiter_should_name_the_other_groups_members_as_voters() {
        let layout = layout(Arbiter::Quorum);
        let voters = layout.broker_config(2, 0).ha.arbiter.voters;
        let expected: Vec<String> = layout.groups[..2].iter().flatten().map(MemberLayout::cluster_addr).collect();
        assert_eq!(voters, expected);
    }
}
