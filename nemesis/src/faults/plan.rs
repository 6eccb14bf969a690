//! Which fault comes next, where, and for how long: drawn from one seeded generator, so a
//! seed replays the same sequence of choices (when the same groups are healthy at each
//! step; timing on a busy machine can differ). Pure: no clock, no cluster.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// The kinds of fault a run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum FaultKind {
    /// `kill -9` of a member (the live two times in three), started again later.
    Kill,
    /// SIGSTOP of a live, past its clients' heart-beats and the backup's connection TTL,
    /// then SIGCONT.
    Stop,
    /// SIGTERM of a member (a clean shutdown; the live half the time), started again later.
    Restart,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Stop, FaultKind::Restart];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Restart => "restart",
        }
    }

    /// How long the fault lasts before it is healed: shortest and longest.
    fn hold(self) -> (Duration, Duration) {
        let s = Duration::from_secs_f64;
        match self {
            FaultKind::Kill => (s(0.5), s(8.0)),
            FaultKind::Stop => (s(2.0), s(12.0)),
            FaultKind::Restart => (s(0.5), s(5.0)),
        }
    }

    /// How likely it hits the group's live rather than its backup.
    fn live_share(self) -> f64 {
        match self {
            FaultKind::Kill => 2.0 / 3.0,
            FaultKind::Stop => 1.0,
            FaultKind::Restart => 0.5,
        }
    }
}

/// A fault chosen: what, on which group, on its live or its backup, for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    pub kind: FaultKind,
    pub group: usize,
    pub on_live: bool,
    pub hold: Duration,
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

    /// The next fault, on one of the `eligible` groups; `None` when there is none.
    pub fn next(&mut self, eligible: &[usize]) -> Option<Planned> {
        if eligible.is_empty() || self.kinds.is_empty() {
            return None;
        }
        let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
        let group = eligible[self.rng.gen_range(0..eligible.len())];
        let on_live = self.rng.gen_bool(kind.live_share());
        let hold = self.between(kind.hold());
        Some(Planned { kind, group, on_live, hold })
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
        for _ in 0..300 {
            let f = p.next(&[1, 2]).expect("a fault");
            assert!(f.group == 1 || f.group == 2);
            let (low, high) = f.kind.hold();
            assert!(f.hold >= low && f.hold <= high, "{f:?}");
            if f.kind == FaultKind::Stop {
                assert!(f.on_live);
            }
            kinds.insert(f.kind);
            let gap = p.gap();
            assert!(gap >= Duration::from_secs(1) && gap <= Duration::from_secs(5));
        }
        assert_eq!(kinds.len(), 3, "every kind comes up");
        assert_eq!(p.next(&[]), None);
    }
}
