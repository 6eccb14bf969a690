//! The Lease rules as pure functions: may this member take the group's Lease, is the
//! Lease it renews still its own, and how long a claim it has seen stands. No clock
//! reads and no I/O: callers pass what they observed, and the executor in `super` acts.
//!
//! Expiry is judged like client-go's leader election: not by comparing this machine's
//! clock with the holder's `renewTime`, but by how long *this member* has seen the same
//! version of the Lease. Clocks of different machines never meet.

use super::super::epoch::Epoch;
use std::time::Duration;

/// What the rules need from the group's Lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseState {
    /// `spec.holderIdentity`; `None` when empty (released, or never held).
    pub holder: Option<String>,
    /// `duomq.io/epoch`: the group's epoch, raised on every change of holder.
    pub epoch: Epoch,
    /// `duomq.io/in-sync`: the backups the last holder had in sync.
    pub in_sync: Vec<String>,
    /// `duomq.io/handover-to`: the member the last holder handed the Lease to.
    pub handover_to: Option<String>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `spec.leaseDurationSeconds`: the claim the holder made.
    pub claim: Option<Duration>,
    /// `metadata.resourceVersion`: changes with every write, renewals included.
    pub version: String,
}

impl LeaseState {
    /// Never held by anyone: the Lease of a group that has not started yet.
    pub fn brand_new(&self) -> bool {
        self.holder.is_none() && self.transitions == 0 && self.epoch == Epoch(0)
    }
}

/// Who asks to take the Lease, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant<'a> {
    pub node: &'a str,
    /// The epoch this member has on disk.
    pub local_epoch: Epoch,
    /// Asking at start as the preferred live (`hold_as_live`), not as a backup that lost
    /// its live: only such a member may start a brand-new group.
    pub at_start: bool,
    /// This member knows its journal is complete: it was in sync with the live it lost,
    /// or it was live itself, and has not reset its journal since.
    pub complete_copy: bool,
}

/// The answer to "may I take the Lease?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take it, writing `epoch` (one above anything this member or the Lease knew).
    Take { epoch: Epoch, why: String },
    /// The Lease names this member, but this process did not take it: the live it was
    /// died (kill -9, a crash). Release it for the in-sync backups, which hold everything
    /// that was acknowledged, and start as a backup: that is a failover, not a silent
    /// restart in place.
    Yield { reason: String },
    Denied { reason: String },
}

/// The longer of the holder's written claim and this member's own `duration`: a member
/// never waits less than either side expects.
pub fn claim_length(lease: &LeaseState, duration: Duration) -> Duration {
    lease.claim.map_or(duration, |c| c.max(duration))
}

/// May `me` take the Lease, given what it read (`None`: the Lease does not exist) and how
/// long it has seen that same version unchanged?
pub fn may_take(lease: Option<&LeaseState>, me: &Claimant<'_>, unchanged_for: Duration, duration: Duration) -> Verdict {
    let denied = |reason: String| Verdict::Denied { reason };
    let Some(lease) = lease else {
        // A new member starts a new group; a member with history only on a complete copy.
        return if me.at_start && (me.local_epoch == Epoch(0) || me.complete_copy) {
            Verdict::Take { epoch: Epoch(me.local_epoch.0 + 1), why: "created the group's Lease".into() }
        } else {
            denied("the group's Lease does not exist; the operator or the starting primary creates it".into())
        };
    };
    let epoch = Epoch(lease.epoch.max(me.local_epoch).0 + 1);
    if lease.holder.as_deref() == Some(me.node) {
        // Nobody took it since this member held it, so its own journal is the group's
        // latest, unless this is a fresh data directory under an old name.
        if me.local_epoch == Epoch(0) && lease.epoch > Epoch(0) {
            return denied(format!(
                "the Lease names {} as holder at epoch {}, but this member has no epoch on disk (a new data directory)",
                me.node, lease.epoch
            ));
        }
        if me.at_start && lease.in_sync.iter().any(|n| n != me.node) {
            return Verdict::Yield {
                reason: format!(
                    "the Lease still names {} from before this process started; yielding to the in-sync backups ({})",
                    me.node,
                    lease.in_sync.join(",")
                ),
            };
        }
        return Verdict::Take { epoch, why: "this member still held the Lease".into() };
    }
    if lease.brand_new() {
        return if me.at_start {
            Verdict::Take { epoch, why: "a new group: nobody held the Lease yet".into() }
        } else {
            denied("a new group: its preferred primary starts it".into())
        };
    }
    let handed_over_to = lease.holder.is_none().then_some(lease.handover_to.as_deref()).flatten();
    if let Some(to) = handed_over_to.filter(|to| *to != me.node) {
        // Another in-sync member must not win the race for it; if the target never comes,
        // the hand-over lapses like an unrenewed claim.
        let claim = claim_length(lease, duration);
        if unchanged_for < claim {
            return denied(format!("the Lease was handed over to {to}; it is {to}'s until the hand-over lapses after {claim:?}"));
        }
    }
    if !me.complete_copy {
        return denied("this member does not have a complete copy of the live's journal".into());
    }
    let last = lease.holder.as_deref().unwrap_or("the last holder");
    if !lease.in_sync.iter().any(|n| n == me.node) {
        return denied(format!(
            "{} is not in the in-sync list of {last} ({})",
            me.node,
            if lease.in_sync.is_empty() { "empty".to_string() } else { lease.in_sync.join(",") }
        ));
    }
    let Some(holder) = &lease.holder else {
        if handed_over_to == Some(me.node) {
            // The live already told this member its next epoch (one above its own); no live
            // ever wrote that one to the Lease, so it is new for the group.
            let epoch = Epoch((lease.epoch.0 + 1).max(me.local_epoch.0));
            return Verdict::Take { epoch, why: "the live handed the Lease over to this member".into() };
        }
        return Verdict::Take { epoch, why: "the Lease was released and this member is in sync".into() };
    };
    let claim = claim_length(lease, duration);
    if unchanged_for >= claim {
        Verdict::Take { epoch, why: format!("{holder} has not renewed the Lease for {unchanged_for:?} (claim {claim:?})") }
    } else {
        // No countdown in the reason: a backup logs each new reason once.
        denied(format!("{holder} holds the Lease; it has not been seen unrenewed for its claim of {claim:?}"))
    }
}

/// Is the Lease still this live's (`Ok`), or why not? A live that finds it gone fences
/// itself at once: someone else may be live already.
pub fn still_ours(lease: Option<&LeaseState>, me: &str, epoch: Epoch) -> Result<(), String> {
    let Some(lease) = lease else {
        return Err("the group's Lease was deleted".into());
    };
    match &lease.holder {
        Some(h) if h == me && lease.epoch == epoch => Ok(()),
        Some(h) if h == me => Err(format!("the Lease's epoch changed from {epoch} to {}", lease.epoch)),
        Some(h) => Err(format!("{h} holds the Lease now (epoch {})", lease.epoch)),
        None => Err("the Lease was released by someone else".into()),
    }
}

/// How long a member has seen one version of the Lease: it restarts whenever the
/// version changes.
#[derive(Debug, Clone)]
pub struct Observed<T> {
    seen: Option<(String, T)>,
}

impl<T> Default for Observed<T> {
    fn default() -> Observed<T> {
        Observed { seen: None }
    }
}

impl<T: Copy + std::ops::Sub<Output = Duration>> Observed<T> {
    /// Notes that `version` was read at `now`; returns how long it has been unchanged.
    pub fn note(&mut self, version: &str, now: T) -> Duration {
        match &self.seen {
            Some((v, since)) if v == version => now - *since,
            _ => {
                self.seen = Some((version.to_string(), now));
                Duration::ZERO
            }
        }
    }

    /// Forgets what was seen (the Lease is gone).
    pub fn forget(&mut self) {
        self.seen = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const D: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, epoch: u64, in_sync: &[&str], transitions: i32) -> LeaseState {
        LeaseState {
            holder: holder.map(str::to_string),
            epoch: Epoch(epoch),
            in_sync: in_sync.iter().map(|s| s.to_string()).collect(),
            handover_to: None,
            transitions,
            claim: Some(D),
            version: "7".into(),
        }
    }

    fn backup(local: u64) -> Claimant<'static> {
        Claimant { node: "b", local_epoch: Epoch(local), at_start: false, complete_copy: true }
    }

    #[rstest]
    #[case::released_in_sync(Some(lease(None, 3, &["b"], 3)), backup(3), 0, Some(4))]
    #[case::expired_in_sync(Some(lease(Some("a"), 3, &["b"], 3)), backup(3), 15, Some(4))]
    #[case::claim_stands(Some(lease(Some("a"), 3, &["b"], 3)), backup(3), 14, None)]
    #[case::expired_not_in_sync(Some(lease(Some("a"), 3, &["c"], 3)), backup(3), 60, None)]
    #[case::released_not_in_sync(Some(lease(None, 3, &[], 3)), backup(3), 0, None)]
    #[case::incomplete_copy(Some(lease(None, 3, &["b"], 3)), Claimant { complete_copy: false, ..backup(3) }, 0, None)]
    #[case::local_epoch_higher(Some(lease(None, 3, &["b"], 3)), backup(9), 0, Some(10))]
    #[case::still_holder(Some(lease(Some("b"), 5, &[], 5)), Claimant { complete_copy: false, ..backup(5) }, 0, Some(6))]
    #[case::holder_with_new_disk(Some(lease(Some("b"), 5, &[], 5)), backup(0), 99, None)]
    #[case::brand_new_at_start(Some(lease(None, 0, &[], 0)), Claimant { at_start: true, ..backup(0) }, 0, Some(1))]
    #[case::brand_new_as_backup(Some(lease(None, 0, &[], 0)), backup(0), 99, None)]
    #[case::missing_at_start(None, Claimant { at_start: true, ..backup(2) }, 0, Some(3))]
    #[case::missing_at_start_new_member(None, Claimant { at_start: true, complete_copy: false, ..backup(0) }, 0, Some(1))]
    #[case::missing_at_start_stale_copy(None, Claimant { at_start: true, complete_copy: false, ..backup(2) }, 0, None)]
    #[case::released_by_self_at_start(Some(lease(None, 4, &["b"], 4)), Claimant { at_start: true, ..backup(4) }, 0, Some(5))]
    #[case::released_at_start_stale_copy(Some(lease(None, 4, &["b"], 4)), Claimant { at_start: true, complete_copy: false, ..backup(4) }, 0, None)]
    #[case::missing_as_backup(None, backup(2), 99, None)]
    #[case::start_needs_expiry_too(Some(lease(Some("a"), 3, &["b"], 3)), Claimant { at_start: true, ..backup(3) }, 0, None)]
    fn given_lease_and_claimant_should_take_or_deny(
        #[case] lease: Option<LeaseState>,
        #[case] me: Claimant<'static>,
        #[case] unchanged_secs: u64,
        #[case] take_with_epoch: Option<u64>,
    ) {
        let verdict = may_take(lease.as_ref(), &me, Duration::from_secs(unchanged_secs), D);
        match (take_with_epoch, &verdict) {
            (Some(e), Verdict::Take { epoch, .. }) => assert_eq!(*epoch, Epoch(e)),
            (None, Verdict::Denied { reason }) => assert!(!reason.is_empty()),
            _ => panic!("expected {take_with_epoch:?}, got {verdict:?}"),
        }
    }

    #[test]
    fn given_a_restarted_live_still_named_holder_should_yield_to_an_in_sync_backup_or_take_it_alone() {
        let restarted = Claimant { node: "a", local_epoch: Epoch(3), at_start: true, complete_copy: true };
        let with_backup = lease(Some("a"), 3, &["b"], 3);
        assert!(matches!(may_take(Some(&with_backup), &restarted, Duration::ZERO, D), Verdict::Yield { .. }));
        // no backup was in sync: its own journal is the only complete copy
        let alone = lease(Some("a"), 3, &[], 3);
        assert!(matches!(may_take(Some(&alone), &restarted, Duration::ZERO, D), Verdict::Take { .. }));
        // the same process asking again as a backup keeps the old rule
        let asking = Claimant { at_start: false, ..restarted };
        assert!(matches!(may_take(Some(&with_backup), &asking, Duration::ZERO, D), Verdict::Take { .. }));
    }

    #[test]
    fn given_a_lease_handed_over_should_be_taken_by_its_target_alone_until_the_hand_over_lapses() {
        let mut handed = lease(None, 3, &["a", "b", "c"], 3);
        handed.handover_to = Some("c".into());
        let other = backup(3);
        let Verdict::Denied { reason } = may_take(Some(&handed), &other, Duration::from_secs(14), D) else { panic!() };
        assert!(reason.contains("handed over to c"), "{reason}");
        assert!(matches!(may_take(Some(&handed), &other, D, D), Verdict::Take { .. }), "lapsed after the claim");
        // the target was told its epoch (4) by the live: it takes exactly that one
        let target = Claimant { node: "c", local_epoch: Epoch(4), at_start: true, complete_copy: true };
        assert!(matches!(may_take(Some(&handed), &target, Duration::ZERO, D), Verdict::Take { epoch: Epoch(4), .. }));
        let not_told = Claimant { local_epoch: Epoch(3), ..target.clone() };
        assert!(matches!(may_take(Some(&handed), &not_told, Duration::ZERO, D), Verdict::Take { epoch: Epoch(4), .. }));
        // the target too needs a complete copy
        let incomplete = Claimant { complete_copy: false, ..target };
        assert!(matches!(may_take(Some(&handed), &incomplete, Duration::ZERO, D), Verdict::Denied { .. }));
    }

    #[test]
    fn given_denial_should_say_who_and_why() {
        let l = lease(Some("a"), 3, &["c", "d"], 3);
        let Verdict::Denied { reason } = may_take(Some(&l), &backup(3), Duration::from_secs(60), D) else { panic!() };
        assert!(reason.contains("b is not in the in-sync list of a (c,d)"), "{reason}");
        let l = lease(Some("a"), 3, &["b"], 3);
        let Verdict::Denied { reason } = may_take(Some(&l), &backup(3), Duration::from_secs(5), D) else { panic!() };
        assert!(reason.contains("a holds the Lease") && reason.contains("15s"), "{reason}");
    }

    #[test]
    fn given_longer_written_claim_should_wait_for_it() {
        let mut l = lease(Some("a"), 3, &["b"], 3);
        l.claim = Some(Duration::from_secs(30));
        assert!(matches!(may_take(Some(&l), &backup(3), Duration::from_secs(20), D), Verdict::Denied { .. }));
        assert!(matches!(may_take(Some(&l), &backup(3), Duration::from_secs(30), D), Verdict::Take { .. }));
    }

    #[rstest]
    #[case(Some(lease(Some("a"), 4, &[], 4)), Ok(()))]
    #[case(Some(lease(Some("b"), 5, &[], 5)), Err("b holds the Lease now"))]
    #[case(Some(lease(Some("a"), 5, &[], 5)), Err("epoch changed"))]
    #[case(Some(lease(None, 4, &["b"], 4)), Err("released"))]
    #[case(None, Err("deleted"))]
    fn given_lease_when_renewing_should_say_whether_it_is_still_ours(
        #[case] lease: Option<LeaseState>,
        #[case] expected: Result<(), &str>,
    ) {
        match (still_ours(lease.as_ref(), "a", Epoch(4)), expected) {
            (Ok(()), Ok(())) => {}
            (Err(reason), Err(part)) => assert!(reason.contains(part), "{reason}"),
            (got, want) => panic!("expected {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn given_same_version_should_count_from_first_sight_and_restart_on_change() {
        let mut seen = Observed::<Instant>::default();
        let t0 = Instant(100);
        assert_eq!(seen.note("1", t0), Duration::ZERO);
        assert_eq!(seen.note("1", Instant(103)), Duration::from_secs(3));
        assert_eq!(seen.note("2", Instant(104)), Duration::ZERO);
        assert_eq!(seen.note("2", Instant(110)), Duration::from_secs(6));
        seen.forget();
        assert_eq!(seen.note("2", Instant(111)), Duration::ZERO);
    }

    /// Seconds on a test clock.
    #[derive(Debug, Clone, Copy)]
    struct Instant(u64);

    impl std::ops::Sub for Instant {
        type Output = Duration;
        fn sub(self, earlier: Instant) -> Duration {
            Duration::from_secs(self.0 - earlier.0)
        }
    }
}
