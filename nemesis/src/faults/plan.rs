//! Which fault comes next, where, and for how long: drawn from one seeded generator, so a
//! seed replays the same sequence of choices (when the same groups are healthy at each
//! step; timing on a busy machine can differ). Pure: no clock, no cluster.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// The kinds of fault a run applies. The process faults need nothing of the members; the
/// others go through the members' fault injection (`/debug/faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum FaultKind {
    /// `kill -9` of a member (the live two times in three), started again later.
    Kill,
    /// SIGSTOP of a live, past its clients' heart-beats and the backup's connection TTL,
    /// then SIGCONT.
    Stop,
    /// SIGTERM of a member (a clean shutdown; the live half the time), started again later.
    Restart,
    /// The live cut off from its backup (nothing crosses either way); clients still reach
    /// the live.
    PartitionBackup,
    /// The live cut off from its backup and from the voters' probes (quorum arbiter only):
    /// the voters find it gone while its clients still reach it.
    PartitionArbiter,
    /// The bridges between two groups cut (their lives refuse each other's members on the
    /// bridge channel), for less than the 60 s after which pinned forwards are released.
    PartitionBridge,
    /// Every journal fdatasync of a member (the live three times in four) 20-200 ms slower.
    SlowFsync,
    /// Every journal fdatasync of a member fails, as on a full disk (the live three times in
    /// four): sends get an ERROR, a backup resyncs.
    DiskFull,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Restart,
        FaultKind::PartitionBackup,
        FaultKind::PartitionArbiter,
        FaultKind::PartitionBridge,
        FaultKind::SlowFsync,
        FaultKind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Restart => "restart",
            FaultKind::PartitionBackup => "partition-backup",
            FaultKind::PartitionArbiter => "partition-arbiter",
            FaultKind::PartitionBridge => "partition-bridge",
            FaultKind::SlowFsync => "slow-fsync",
            FaultKind::DiskFull => "disk-full",
        }
    }

    /// Whether it needs the members' fault injection.
    pub fn needs_injection(self) -> bool {
        !matches!(self, FaultKind::Kill | FaultKind::Stop | FaultKind::Restart)
    }

    /// How long the fault lasts before it is healed: shortest and longest.
    fn hold(self) -> (Duration, Duration) {
        let s = Duration::from_secs_f64;
        match self {
            FaultKind::Kill => (s(0.5), s(8.0)),
            FaultKind::Stop => (s(2.0), s(12.0)),
            FaultKind::Restart => (s(0.5), s(5.0)),
            FaultKind::PartitionBackup | FaultKind::PartitionArbiter => (s(3.0), s(15.0)),
            FaultKind::PartitionBridge => (s(3.0), s(20.0)),
            FaultKind::SlowFsync => (s(5.0), s(20.0)),
            FaultKind::DiskFull => (s(1.0), s(6.0)),
        }
    }

    /// How likely it hits the group's live rather than its backup.
    fn live_share(self) -> f64 {
        match self {
            FaultKind::Kill => 2.0 / 3.0,
            FaultKind::Restart => 0.5,
            FaultKind::SlowFsync | FaultKind::DiskFull => 0.75,
            FaultKind::Stop | FaultKind::PartitionBackup | FaultKind::PartitionArbiter | FaultKind::PartitionBridge => 1.0,
        }
    }

    /// Groups it involves: two for a cut between groups, one otherwise.
    fn groups(self) -> usize {
        if self == FaultKind::PartitionBridge {
            2
        } else {
            1
        }
    }
}

/// A fault chosen: what, on which group (and the other group of a bridge cut), on its live
/// or its backup, for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    pub kind: FaultKind,
    pub group: usize,
    pub peer_group: Option<usize>,
    pub on_live: bool,
    pub hold: Duration,
    /// How much slower each fdatasync is (`slow-fsync`).
    pub sync_delay: Duration,
}

/// The seeded source of every choice.
pub struct Planner {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    /// Between one fault's start and the next: shortest and longest.
    gap: (Duration, Duration),
}

impl Planner {
    pub fn new(seed: u64, kinds: &[FaultKind], gap: (Duration, Duration)) -> Planner {
        let mut kinds = kinds.to_vec();
        kinds.sort();
        kinds.dedup();
        Planner { rng: StdRng::seed_from_u64(seed), kinds, gap }
    }

    /// How long to wait before the next fault.
    pub fn gap(&mut self) -> Duration {
        self.between(self.gap)
    }

    fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        if high <= low {
            return low;
        }
        Duration::from_secs_f64(self.rng.gen_range(low.as_secs_f64()..high.as_secs_f64()))
    }

    /// The next fault, on the `eligible` groups; `None` when no kind fits them.
    pub fn next(&mut self, eligible: &[usize]) -> Option<Planned> {
        let fitting: Vec<FaultKind> = self.kinds.iter().copied().filter(|k| k.groups() <= eligible.len()).collect();
        if fitting.is_empty() {
            return None;
        }
        let kind = fitting[self.rng.gen_range(0..fitting.len())];
        let mut groups = eligible.to_vec();
        let group = groups.swap_remove(self.rng.gen_range(0..groups.len()));
        let peer_group = (kind.groups() == 2).then(|| groups[self.rng.gen_range(0..groups.len())]);
        let on_live = self.rng.gen_bool(kind.live_share());
        let hold = self.between(kind.hold());
        let sync_delay = self.between((Duration::from_millis(20), Duration::from_millis(200)));
        Some(Planned { kind, group, peer_group, on_live, hold, sync_delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(seed: u64) -> Planner {
        Planner::new(seed, &FaultKind::ALL, (Duration::from_secs(1), Duration::from_secs(5)))
    }

    #[test]
    fn given_one_seed_should_replay_the_same_choices_and_another_seed_others() {
        let draw = |seed| {
            let mut p = planner(seed);
            (0..20).map(|_| (p.gap(), p.next(&[0, 1, 2]))).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn given_eligible_groups_should_only_pick_among_them_and_within_each_kinds_bounds() {
        let mut p = planner(1);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let f = p.next(&[1, 2]).expect("a fault");
            assert!(f.group == 1 || f.group == 2);
            let (low, high) = f.kind.hold();
            assert!(f.hold >= low && f.hold <= high, "{f:?}");
            if matches!(f.kind, FaultKind::Stop | FaultKind::PartitionBackup | FaultKind::PartitionBridge) {
                assert!(f.on_live);
            }
            match f.kind {
                FaultKind::PartitionBridge => assert_eq!(f.peer_group, Some(3 - f.group), "the other eligible group"),
                _ => assert_eq!(f.peer_group, None),
            }
            kinds.insert(f.kind);
            let gap = p.gap();
            assert!(gap >= Duration::from_secs(1) && gap <= Duration::from_secs(5));
        }
        assert_eq!(kinds.len(), FaultKind::ALL.len(), "every kind comes up");
        assert_eq!(p.next(&[]), None);
    }

    #[test]
    fn given_one_eligible_group_should_never_plan_a_cut_between_two() {
        let mut p = Planner::new(3, &[FaultKind::PartitionBridge, FaultKind::Kill], (Duration::ZERO, Duration::ZERO));
        for _ in 0..100 {
            assert_eq!(p.next(&[0]).expect("a kill fits").kind, FaultKind::Kill);
        }
        assert_eq!(Planner::new(3, &[FaultKind::PartitionBridge], (Duration::ZERO, Duration::ZERO)).next(&[2]), None);
    }
}
