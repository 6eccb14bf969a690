//! Bookkeeping that decides which segments can be deleted.
//!
//! A segment may go once it holds no live adds AND every older segment its acks refer to
//! is already gone; deleting it earlier would let recovery resurrect a message whose ack
//! lived only here. Pure state: it never touches files (the housekeeper deletes what it
//! names, in the order named, each deletion durable before the next starts).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::segment::SegmentSeq;
use super::{MessageId, Op};

/// What an op means to the bookkeeping: only ids matter, not message contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Add(MessageId),
    Ack(MessageId),
}

impl Effect {
    pub(super) fn of(op: &Op) -> Effect {
        match op {
            Op::Add(message) => Effect::Add(message.id),
            Op::Ack(id) => Effect::Ack(*id),
        }
    }

    pub(super) fn id(self) -> MessageId {
        match self {
            Effect::Add(id) | Effect::Ack(id) => id,
        }
    }
}

#[derive(Debug, Default)]
struct SegmentEntry {
    live_adds: u64,
    /// Older segments whose adds were acked by records in this one.
    acked_in: BTreeSet<SegmentSeq>,
    /// Handed over for deletion and not yet reported gone. Such a segment still exists,
    /// but counts as gone for the segments that depend on it: they are deleted after it,
    /// by the same thread, only once its deletion is durable.
    deleting: bool,
}

/// Which segments exist, what is live in each, and which depend on which.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    segments: BTreeMap<SegmentSeq, SegmentEntry>,
    live: HashMap<MessageId, SegmentSeq>,
}

impl Ledger {
    /// Starts tracking a segment file.
    pub(super) fn add_segment(&mut self, seq: SegmentSeq) {
        self.segments.entry(seq).or_default();
    }

    /// Applies the effects of one durable record in segment `seq`.
    pub(super) fn apply(&mut self, seq: SegmentSeq, effects: &[Effect]) {
        for effect in effects {
            match *effect {
                Effect::Add(id) => {
                    // A repeated add replaces the earlier one, as recovery's map does.
                    if let Some(previous) = self.live.insert(id, seq) {
                        self.release(previous);
                    }
                    self.segments.entry(seq).or_default().live_adds += 1;
                }
                Effect::Ack(id) => {
                    // An unknown id (reclaimed, or never persistent) changes nothing.
                    let Some(added_in) = self.live.remove(&id) else {
                        continue;
                    };
                    self.release(added_in);
                    if added_in != seq {
                        self.segments
                            .entry(seq)
                            .or_default()
                            .acked_in
                            .insert(added_in);
                    }
                }
            }
        }
    }

    fn release(&mut self, seq: SegmentSeq) {
        if let Some(entry) = self.segments.get_mut(&seq) {
            entry.live_adds = entry.live_adds.saturating_sub(1);
        }
    }

    /// Segments that may be deleted now and are not being deleted yet, oldest first, never
    /// `current`. Each assumes the ones being deleted and the ones before it in the list
    /// go first, so delete in order, each deletion durable before the next, and stop at the
    /// first failure.
    pub(super) fn reclaimable(&self, current: SegmentSeq) -> Vec<SegmentSeq> {
        let mut gone: BTreeSet<SegmentSeq> = BTreeSet::new();
        let mut found = Vec::new();
        for (&seq, entry) in &self.segments {
            if entry.deleting {
                gone.insert(seq);
                continue;
            }
            let independent = entry
                .acked_in
                .iter()
                .all(|older| gone.contains(older) || !self.segments.contains_key(older));
            if seq != current && entry.live_adds == 0 && independent {
                gone.insert(seq);
                found.push(seq);
            }
        }
        found
    }

    /// Notes that `seq` was handed over for deletion; it stays tracked until [`forget`].
    ///
    /// [`forget`]: Ledger::forget
    pub(super) fn mark_deleting(&mut self, seq: SegmentSeq) {
        if let Some(entry) = self.segments.get_mut(&seq) {
            entry.deleting = true;
        }
    }

    /// Stops tracking a segment whose deletion is durable.
    pub(super) fn forget(&mut self, seq: SegmentSeq) {
        self.segments.remove(&seq);
    }

    pub(super) fn live_messages(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> SegmentSeq {
        SegmentSeq(n)
    }

    fn add(id: u64) -> Effect {
        Effect::Add(MessageId(id))
    }

    fn ack(id: u64) -> Effect {
        Effect::Ack(MessageId(id))
    }

    fn ledger_with(segments: &[(u64, &[Effect])]) -> Ledger {
        let mut ledger = Ledger::default();
        for (n, effects) in segments {
            ledger.add_segment(seq(*n));
            ledger.apply(seq(*n), effects);
        }
        ledger
    }

    #[test]
    fn given_fully_acked_segment_when_checked_should_be_reclaimable() {
        let ledger = ledger_with(&[(1, &[add(1), add(2)]), (2, &[ack(1), ack(2)])]);
        assert_eq!(ledger.reclaimable(seq(2)), vec![seq(1)]);
    }

    #[test]
    fn given_segment_acking_into_live_older_segment_when_checked_should_be_kept() {
        let ledger = ledger_with(&[(1, &[add(1), add(2)]), (2, &[ack(1)]), (3, &[add(3)])]);
        assert!(ledger.reclaimable(seq(3)).is_empty());
    }

    #[test]
    fn given_chain_of_dependencies_when_older_frees_up_should_reclaim_in_order() {
        let ledger = ledger_with(&[
            (1, &[add(1), add(2)]),
            (2, &[ack(1)]),
            (3, &[add(3)]),
            (4, &[ack(2)]),
        ]);
        assert_eq!(ledger.reclaimable(seq(4)), vec![seq(1), seq(2)]);
    }

    #[test]
    fn given_current_segment_without_live_adds_when_checked_should_never_be_reclaimable() {
        let ledger = ledger_with(&[(1, &[add(1), ack(1)])]);
        assert!(ledger.reclaimable(seq(1)).is_empty());
        assert_eq!(ledger.reclaimable(seq(2)), vec![seq(1)]);
    }

    #[test]
    fn given_ack_for_unknown_id_when_applied_should_change_nothing() {
        let mut ledger = ledger_with(&[(1, &[add(1)])]);
        ledger.apply(seq(1), &[ack(99)]);
        assert_eq!(ledger.live_messages(), 1);
        assert!(ledger.reclaimable(seq(2)).is_empty());
    }

    #[test]
    fn given_segment_being_deleted_when_checked_should_not_be_named_again_but_free_dependants() {
        let mut ledger = ledger_with(&[(1, &[add(1)]), (2, &[ack(1)]), (3, &[add(3)])]);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(1), seq(2)]);
        ledger.mark_deleting(seq(1));
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(2)]);
        ledger.mark_deleting(seq(2));
        assert!(ledger.reclaimable(seq(3)).is_empty());
        ledger.forget(seq(1));
        ledger.forget(seq(2));
        assert!(ledger.reclaimable(seq(3)).is_empty());
    }

    #[test]
    fn given_forgotten_older_segment_when_checked_should_free_its_dependants() {
        let mut ledger = ledger_with(&[(1, &[add(1)]), (2, &[ack(1), add(2)]), (3, &[])]);
        ledger.forget(seq(1));
        ledger.apply(seq(3), &[ack(2)]);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(2)]);
    }
}
