//! Fault injection for tests, after tikv's transport filters: rules that drop, delay,
//! duplicate or reorder cluster frames, cut this member off from a peer (a partition), and
//! fail or slow the journal's fdatasyncs. Partitions, message loss between live and backup,
//! across bridges and to the grouping handler thereby become deterministic tests that need
//! no root and no network namespace.
//!
//! A [`Faults`] handle is one broker's registry of rules ([`rules`] holds their JSON). Every
//! cluster connection gets a [`Tap`] on it after its handshake (see `cluster::transport`),
//! which `cluster::ClusterConn` consults as frames go out and come in; the journal's writer
//! and a backup's mirror ask [`Faults::fsync`] after each fdatasync. A unit test builds a
//! handle with [`Faults::new`] and sets rules on it directly; a broker process has one only
//! when started with `debug.faultInjection: true` (or `--fault-injection`), set through the
//! admin API's `/debug/faults`. Without it the handle is [`Faults::off`]: no connection
//! gets a tap and the fsync check is one branch.
//!
//! With a handle but no rule set, the cost per frame is one atomic load (the `armed` flag):
//! no lock is taken on the hot path then. The registry decides nothing about the broker; it
//! only says what to do to a frame or an fdatasync.

pub mod rules;
mod tap;

pub use rules::{
    Direction, DiskFault, DiskFaultStatus, FaultRules, FaultRulesError, FaultsStatus, FrameAction, FrameRule, FrameRuleStatus,
};
pub use tap::Tap;

use crate::cluster::{ClusterFrame, Purpose};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The label of `duomq_fault_injections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// `drop`, `delay`, `duplicate`, `reorder`, `partition` (frames dropped and connections
    /// refused), `fsync_fail` or `fsync_delay`.
    pub action: &'static str,
}

/// What injected faults did, by action. Clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct FaultMetrics {
    pub injected: Family<FaultLabels, Counter>,
}

impl FaultMetrics {
    pub fn register(registry: &mut MetricsRegistry) -> FaultMetrics {
        let m = FaultMetrics::default();
        registry.register(
            "duomq_fault_injections",
            "Cluster frames and journal fdatasyncs acted on by injected faults (debug.faultInjection, tests only), by action",
            m.injected.clone(),
        );
        m
    }

    fn count(&self, action: &'static str) {
        self.injected.get_or_create(&FaultLabels { action }).inc();
    }
}

/// One broker's fault rules; clones share them. [`Faults::off`] (the default) holds none
/// and can never be given any.
#[derive(Clone, Default)]
pub struct Faults {
    registry: Option<Arc<Registry>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.registry {
            None => f.write_str("Faults(off)"),
            Some(r) => write!(f, "Faults(armed: {})", r.armed.load(Ordering::Relaxed)),
        }
    }
}

struct Registry {
    /// Set while any rule is in force: the one thing the hot path reads.
    armed: AtomicBool,
    /// Raised by every change of the rules, so a frame held for a rule that is gone is let go.
    generation: AtomicU64,
    frames: parking_lot::RwLock<Vec<ActiveRule>>,
    disk: parking_lot::Mutex<Option<DiskState>>,
    metrics: FaultMetrics,
}

struct ActiveRule {
    rule: FrameRule,
    acted: AtomicU64,
}

struct DiskState {
    rule: DiskFault,
    failed: u64,
    delayed: u64,
}

/// The other end of a connection, as rules name it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerKey {
    /// Its node id, once the handshake said it.
    pub node: String,
    /// The `host:port` this member dialled, on the dialling side.
    pub addr: Option<String>,
}

impl PeerKey {
    fn matches(&self, peer: &str) -> bool {
        self.node == peer || self.addr.as_deref() == Some(peer)
    }
}

/// Which rule acted: its place in the rules of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleRef {
    generation: u64,
    index: usize,
}

/// What a rule does to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Drop,
    Delay(Duration),
    Duplicate,
    Reorder,
}

impl Faults {
    /// No fault injection: no connection gets a tap, no rule can be set.
    pub fn off() -> Faults {
        Faults::default()
    }

    /// A registry with no rule yet, counting what its rules do in `metrics`.
    pub fn new(metrics: FaultMetrics) -> Faults {
        Faults {
            registry: Some(Arc::new(Registry {
                armed: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                frames: parking_lot::RwLock::new(Vec::new()),
                disk: parking_lot::Mutex::new(None),
                metrics,
            })),
        }
    }

    /// Whether rules can be set (fault injection is on).
    pub fn is_on(&self) -> bool {
        self.registry.is_some()
    }

    /// Replaces every rule in force with `rules`, after checking them; counts start at 0.
    pub fn set(&self, rules: FaultRules) -> Result<(), FaultsError> {
        let registry = self.registry.as_ref().ok_or(FaultsError::Off)?;
        rules.validate().map_err(FaultsError::Invalid)?;
        let armed = !rules.frames.is_empty() || rules.disk.is_some();
        let mut frames = registry.frames.write();
        *frames = rules.frames.into_iter().map(|rule| ActiveRule { rule, acted: AtomicU64::new(0) }).collect();
        registry.generation.fetch_add(1, Ordering::SeqCst);
        drop(frames);
        *registry.disk.lock() = rules.disk.map(|rule| DiskState { rule, failed: 0, delayed: 0 });
        registry.armed.store(armed, Ordering::SeqCst);
        Ok(())
    }

    /// Removes every rule.
    pub fn clear(&self) -> Result<(), FaultsError> {
        self.set(FaultRules::default())
    }

    /// The rules in force and what they did.
    pub fn status(&self) -> FaultsStatus {
        let Some(registry) = &self.registry else { return FaultsStatus::default() };
        let frames = registry
            .frames
            .read()
            .iter()
            .map(|r| FrameRuleStatus { rule: r.rule.clone(), acted: r.acted.load(Ordering::SeqCst) })
            .collect();
        let disk = registry.disk.lock().as_ref().map(|d| DiskFaultStatus { rule: d.rule.clone(), failed: d.failed, delayed: d.delayed });
        FaultsStatus { frames, disk }
    }

    /// The tap for a connection with `peer_node` (dialled at `peer_addr`, on the dialling
    /// side) for `channel`; `None` when fault injection is off.
    pub fn tap(&self, peer_node: &str, peer_addr: Option<&str>, channel: Purpose) -> Option<Tap> {
        let registry = Arc::clone(self.registry.as_ref()?);
        Some(Tap::new(registry, PeerKey { node: peer_node.to_string(), addr: peer_addr.map(str::to_string) }, channel))
    }

    /// Whether a partition rule cuts this member off from `peer` (a node id, or the address
    /// it is dialled at) for `channel`: the connection must not open. Counted when it does.
    pub fn cuts(&self, peer: &str, channel: Purpose) -> bool {
        let Some(registry) = self.armed() else { return false };
        let key = PeerKey { node: peer.to_string(), addr: Some(peer.to_string()) };
        let frames = registry.frames.read();
        let cut = frames.iter().find(|r| r.rule.action == FrameAction::Partition && r.applies(&key, channel));
        match cut {
            Some(rule) => {
                rule.acted.fetch_add(1, Ordering::SeqCst);
                registry.metrics.count(FrameAction::Partition.as_str());
                true
            }
            None => false,
        }
    }

    /// Called after every fdatasync of the journal (and of a backup's mirror): waits out the
    /// disk rule's delay, then fails when the rule says so, as the disk would.
    pub fn fsync(&self) -> std::io::Result<()> {
        let Some(registry) = self.armed() else { return Ok(()) };
        let (delay, fail) = {
            let mut disk = registry.disk.lock();
            let Some(state) = disk.as_mut() else { return Ok(()) };
            let delay = state.rule.sync_delay.map(|d| d.get()).filter(|d| !d.is_zero());
            let fail = state.rule.fail_all_syncs || state.failed < state.rule.fail_next_syncs;
            state.delayed += u64::from(delay.is_some());
            state.failed += u64::from(fail);
            (delay, fail)
        };
        if let Some(delay) = delay {
            registry.metrics.count("fsync_delay");
            std::thread::sleep(delay);
        }
        if fail {
            registry.metrics.count("fsync_fail");
            return Err(std::io::Error::other("injected fdatasync failure (debug.faultInjection)"));
        }
        Ok(())
    }

    /// The registry, when rules are in force.
    fn armed(&self) -> Option<&Registry> {
        self.registry.as_deref().filter(|r| r.armed.load(Ordering::Relaxed))
    }
}

impl Registry {
    fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// What the first rule matching `frame` going `direction` does to it, and which rule
    /// that is, counting the act; `None` lets it pass.
    fn verdict(&self, direction: Direction, peer: &PeerKey, channel: Purpose, frame: &ClusterFrame) -> Option<(Verdict, RuleRef)> {
        let frames = self.frames.read();
        let generation = self.generation.load(Ordering::SeqCst);
        for (index, active) in frames.iter().enumerate() {
            let rule = &active.rule;
            if !active.matches(direction, peer, channel, frame) {
                continue;
            }
            // A rule with a count acts on that many frames; past it, it matches nothing.
            let took = active.acted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |acted| match rule.count {
                Some(count) if acted >= count => None,
                _ => Some(acted + 1),
            });
            if took.is_err() {
                continue;
            }
            self.metrics.count(rule.action.as_str());
            let verdict = match rule.action {
                FrameAction::Drop | FrameAction::Partition => Verdict::Drop,
                FrameAction::Delay => Verdict::Delay(rule.delay.map_or(Duration::ZERO, |d| d.get())),
                FrameAction::Duplicate => Verdict::Duplicate,
                FrameAction::Reorder => Verdict::Reorder,
            };
            return Some((verdict, RuleRef { generation, index }));
        }
        None
    }

    /// Whether `frame` lets go a frame that `rule` holds back: the next one the rule matches
    /// (its count aside), or any frame once the rules have changed.
    fn releases(&self, rule: RuleRef, direction: Direction, peer: &PeerKey, channel: Purpose, frame: &ClusterFrame) -> bool {
        let frames = self.frames.read();
        if self.generation.load(Ordering::SeqCst) != rule.generation {
            return true;
        }
        frames.get(rule.index).is_none_or(|active| active.matches(direction, peer, channel, frame))
    }
}

impl ActiveRule {
    /// Whether every criterion of the rule holds for `frame` (its count aside).
    fn matches(&self, direction: Direction, peer: &PeerKey, channel: Purpose, frame: &ClusterFrame) -> bool {
        let rule = &self.rule;
        self.applies(peer, channel)
            && rule.direction.is_none_or(|d| d == direction)
            && (rule.frames.is_empty() || rule.frames.iter().any(|f| f == frame.name()))
    }

    /// Whether the rule's peer and channel fit the connection.
    fn applies(&self, peer: &PeerKey, channel: Purpose) -> bool {
        self.rule.peer.as_deref().is_none_or(|p| peer.matches(p)) && self.rule.channel.is_none_or(|c| c == channel)
    }
}

/// Why rules were not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultsError {
    #[error("fault injection is off: start the broker with debug.faultInjection: true (or --fault-injection) to set faults; it is for tests only")]
    Off,
    #[error("invalid fault rules")]
    Invalid(#[source] FaultRulesError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append() -> ClusterFrame {
        ClusterFrame::Append { seq: 1, offset: 0, records: 1, data: bytes::Bytes::from_static(b"x") }
    }

    fn peer(node: &str) -> PeerKey {
        PeerKey { node: node.into(), addr: Some("127.0.0.1:61616".into()) }
    }

    fn verdict_of(registry: &Registry, direction: Direction, peer: &PeerKey, channel: Purpose, frame: &ClusterFrame) -> Option<Verdict> {
        registry.verdict(direction, peer, channel, frame).map(|(verdict, _)| verdict)
    }

    fn faults(rules: Vec<FrameRule>) -> (Faults, FaultMetrics) {
        let metrics = FaultMetrics::default();
        let faults = Faults::new(metrics.clone());
        faults.set(FaultRules { frames: rules, disk: None }).expect("valid rules");
        (faults, metrics)
    }

    #[test]
    fn given_no_rules_should_be_disarmed_and_let_every_frame_pass() {
        let faults = Faults::new(FaultMetrics::default());
        let registry = faults.registry.as_deref().expect("on");
        assert!(!registry.armed());
        assert_eq!(verdict_of(registry, Direction::Out, &peer("b"), Purpose::Replicate, &append()), None);
        assert!(!faults.cuts("b", Purpose::Replicate));
        assert!(faults.fsync().is_ok());
    }

    #[test]
    fn given_fault_injection_off_should_refuse_rules_and_give_no_tap() {
        let off = Faults::off();
        assert_eq!(off.set(FaultRules::default()), Err(FaultsError::Off));
        assert!(off.tap("b", None, Purpose::Replicate).is_none());
        assert!(!off.cuts("b", Purpose::Replicate));
    }

    #[test]
    fn given_a_rule_with_criteria_should_act_only_on_frames_that_meet_them_all() {
        let rule = FrameRule {
            peer: Some("node-b".into()),
            direction: Some(Direction::Out),
            channel: Some(Purpose::Replicate),
            frames: vec!["append".into()],
            ..FrameRule::new(FrameAction::Drop)
        };
        let (faults, metrics) = faults(vec![rule]);
        let registry = faults.registry.as_deref().expect("on");
        let verdict = |dir, node: &str, channel, frame: &ClusterFrame| verdict_of(registry, dir, &peer(node), channel, frame);
        assert_eq!(verdict(Direction::Out, "node-b", Purpose::Replicate, &append()), Some(Verdict::Drop));
        assert_eq!(verdict(Direction::In, "node-b", Purpose::Replicate, &append()), None, "direction");
        assert_eq!(verdict(Direction::Out, "node-c", Purpose::Replicate, &append()), None, "peer");
        assert_eq!(verdict(Direction::Out, "node-b", Purpose::Bridge, &append()), None, "channel");
        assert_eq!(verdict(Direction::Out, "node-b", Purpose::Replicate, &ClusterFrame::Ping { at: 1 }), None, "frame kind");
        // The dialled address names the peer as well as its node id.
        let by_addr = verdict_of(registry, Direction::Out, &PeerKey { node: "x".into(), addr: Some("node-b".into()) }, Purpose::Replicate, &append());
        assert_eq!(by_addr, Some(Verdict::Drop));
        assert_eq!(faults.status().frames[0].acted, 2);
        assert_eq!(metrics.injected.get_or_create(&FaultLabels { action: "drop" }).get(), 2);
    }

    #[test]
    fn given_a_count_should_act_that_many_times_then_let_the_next_rule_match() {
        let (faults, _) = faults(vec![
            FrameRule { count: Some(2), ..FrameRule::new(FrameAction::Duplicate) },
            FrameRule { delay: Some(crate::config::HumanDuration::millis(5)), ..FrameRule::new(FrameAction::Delay) },
        ]);
        let registry = faults.registry.as_deref().expect("on");
        let verdicts: Vec<_> = (0..3).map(|_| verdict_of(registry, Direction::In, &peer("b"), Purpose::Bridge, &append())).collect();
        assert_eq!(verdicts, vec![Some(Verdict::Duplicate), Some(Verdict::Duplicate), Some(Verdict::Delay(Duration::from_millis(5)))]);
        let acted: Vec<u64> = faults.status().frames.iter().map(|r| r.acted).collect();
        assert_eq!(acted, vec![2, 1]);
    }

    #[test]
    fn given_a_partition_should_cut_connections_and_drop_frames_both_ways_for_its_peer_only() {
        let (faults, metrics) = faults(vec![FrameRule { peer: Some("node-b".into()), ..FrameRule::new(FrameAction::Partition) }]);
        assert!(faults.cuts("node-b", Purpose::Vote));
        assert!(!faults.cuts("node-c", Purpose::Vote));
        let registry = faults.registry.as_deref().expect("on");
        for direction in [Direction::In, Direction::Out] {
            assert_eq!(verdict_of(registry, direction, &peer("node-b"), Purpose::Probe, &append()), Some(Verdict::Drop));
        }
        assert_eq!(metrics.injected.get_or_create(&FaultLabels { action: "partition" }).get(), 3);
        faults.clear().expect("clear");
        assert!(!faults.cuts("node-b", Purpose::Vote), "healed");
        assert_eq!(faults.status(), FaultsStatus::default());
    }

    #[test]
    fn given_a_partition_without_a_peer_should_cut_this_member_off_from_every_peer() {
        let (faults, _) = faults(vec![FrameRule { channel: Some(Purpose::Vote), ..FrameRule::new(FrameAction::Partition) }]);
        assert!(faults.cuts("node-b", Purpose::Vote) && faults.cuts("10.0.0.1:61616", Purpose::Vote));
        assert!(!faults.cuts("node-b", Purpose::Replicate), "other channels pass");
    }

    #[test]
    fn given_a_disk_rule_should_fail_the_next_syncs_then_let_them_through() {
        let metrics = FaultMetrics::default();
        let faults = Faults::new(metrics.clone());
        faults.set(FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_next_syncs: 2, ..DiskFault::default() }) }).expect("set");
        let results: Vec<bool> = (0..3).map(|_| faults.fsync().is_ok()).collect();
        assert_eq!(results, vec![false, false, true]);
        assert_eq!(faults.status().disk.map(|d| (d.failed, d.delayed)), Some((2, 0)));
        assert_eq!(metrics.injected.get_or_create(&FaultLabels { action: "fsync_fail" }).get(), 2);
    }

    #[test]
    fn given_a_sync_delay_should_make_every_sync_that_much_slower() {
        let faults = Faults::new(FaultMetrics::default());
        let delay = DiskFault { sync_delay: Some(crate::config::HumanDuration::millis(30)), ..DiskFault::default() };
        faults.set(FaultRules { frames: Vec::new(), disk: Some(delay) }).expect("set");
        let started = std::time::Instant::now();
        assert!(faults.fsync().is_ok());
        assert!(started.elapsed() >= Duration::from_millis(30), "{:?}", started.elapsed());
        assert_eq!(faults.status().disk.map(|d| d.delayed), Some(1));
    }

    #[test]
    fn given_invalid_rules_should_keep_the_rules_in_force() {
        let (faults, _) = faults(vec![FrameRule::new(FrameAction::Drop)]);
        let invalid = FaultRules { frames: vec![FrameRule::new(FrameAction::Delay)], disk: None };
        assert!(matches!(faults.set(invalid), Err(FaultsError::Invalid(FaultRulesError::DelayWithout { index: 0 }))));
        assert_eq!(faults.status().frames.len(), 1);
    }
}
