//! What the journal offers replication: the durable end position (a watch that the
//! writer advances after every group commit), holds that keep segments a backup still
//! needs from being reclaimed, and the gate that keeps append waiters from completing
//! until every synced backup has the batch (synchronous replication). The gate also
//! tells each backup's sender when the writer cut back a batch backups may have copied
//! before its fdatasync failed, and counts none of that backup's acks until the backup
//! has cut its copy too. No network here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::JournalError;

/// A place in the journal: segment sequence and byte offset, plus how many records the
/// journal holds up to there, counted from the oldest segment at open (for lag reporting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalPosition {
    pub segment: u64,
    pub offset: u64,
    pub records: u64,
}

impl JournalPosition {
    pub fn at(&self) -> (u64, u64) {
        (self.segment, self.offset)
    }
}

/// Identifies a backup in the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplicaId(u64);

type Waiters = Vec<oneshot::Sender<Result<(), JournalError>>>;

/// One backup as the gate sees it.
#[derive(Default)]
struct Replica {
    /// What it has acknowledged; `None` until it is in sync (a backup still copying must
    /// not hold the live up).
    acked: Option<(u64, u64)>,
    /// Where the writer cut the journal back since the sender last looked (the lowest
    /// such place): the backup may hold bytes beyond it that the live no longer has.
    cut: Option<(u64, u64)>,
    /// Cuts the sender passed on that the backup has not confirmed yet.
    unconfirmed_cuts: u32,
}

#[derive(Default)]
struct GateState {
    next_id: u64,
    replicas: BTreeMap<ReplicaId, Replica>,
    /// Batches written locally, waiting for the synced backups.
    waiting: VecDeque<((u64, u64), Waiters)>,
    /// Set once the live may confirm nothing more (it lost its claim, or it is stopping):
    /// every waiter held or handed in from then on fails.
    fenced: bool,
    /// The end of the last batch whose waiters were completed: durable locally and held
    /// by every synced backup (what a receipt waits for). Reading back paged messages
    /// goes no further (see [`ReplicationGate::confirmed`]).
    confirmed: (u64, u64),
}

/// Holds append completions back until every synced backup has acknowledged them.
#[derive(Default)]
pub struct ReplicationGate {
    state: Mutex<GateState>,
    /// With `false` (async replication) nothing is ever held.
    pub(super) synchronous: std::sync::atomic::AtomicBool,
}

impl ReplicationGate {
    pub fn new(synchronous: bool) -> ReplicationGate {
        ReplicationGate { state: Mutex::new(GateState::default()), synchronous: synchronous.into() }
    }

    /// The journal held records up to `end` when it opened: those count as confirmed (no
    /// backup of this term was asked for them).
    pub(super) fn opened_at(&self, end: (u64, u64)) {
        let mut st = self.state.lock();
        st.confirmed = st.confirmed.max(end);
    }

    /// Where confirmed records end: every batch up to here completed its waiters (durable
    /// locally and, with synchronous replication, held by every synced backup). A record
    /// past it may still be lost in a failover, so nothing past it may be delivered from
    /// the journal alone.
    pub fn confirmed(&self) -> (u64, u64) {
        self.state.lock().confirmed
    }

    pub fn set_synchronous(&self, synchronous: bool) {
        self.synchronous.store(synchronous, std::sync::atomic::Ordering::Relaxed);
    }

    /// A backup connected (not in sync yet).
    pub fn register(&self) -> ReplicaId {
        let mut st = self.state.lock();
        st.next_id += 1;
        let id = ReplicaId(st.next_id);
        st.replicas.insert(id, Replica::default());
        id
    }

    /// A backup acknowledged everything up to `at`; `synced` once it has caught up. Returns
    /// false, counting nothing, while a cut is pending for it: the ack may describe bytes
    /// the live has since cut off.
    pub fn acked(&self, id: ReplicaId, at: JournalPosition, synced: bool) -> bool {
        let mut st = self.state.lock();
        let Some(replica) = st.replicas.get_mut(&id) else { return false };
        if replica.cut.is_some() || replica.unconfirmed_cuts > 0 {
            return false;
        }
        if synced {
            replica.acked = Some(replica.acked.map_or(at.at(), |prev| prev.max(at.at())));
        }
        Self::release(&mut st);
        true
    }

    /// The writer cut the journal back to `at` after its bytes beyond may have been
    /// copied: no backup counts as having anything beyond it until it has cut too.
    pub(super) fn cut(&self, at: (u64, u64)) {
        let mut st = self.state.lock();
        for replica in st.replicas.values_mut() {
            replica.cut = Some(replica.cut.map_or(at, |prev| prev.min(at)));
            replica.acked = replica.acked.map(|acked| acked.min(at));
        }
    }

    /// The lowest place the journal was cut back to since the last call, for the sender
    /// to pass on; from then on the backup's acks count again only after
    /// [`ReplicationGate::cut_confirmed`].
    pub fn take_cut(&self, id: ReplicaId) -> Option<(u64, u64)> {
        let mut st = self.state.lock();
        let replica = st.replicas.get_mut(&id)?;
        let cut = replica.cut.take()?;
        replica.unconfirmed_cuts += 1;
        Some(cut)
    }

    /// The backup confirmed a cut passed on with [`ReplicationGate::take_cut`].
    pub fn cut_confirmed(&self, id: ReplicaId) {
        if let Some(replica) = self.state.lock().replicas.get_mut(&id) {
            replica.unconfirmed_cuts = replica.unconfirmed_cuts.saturating_sub(1);
        }
    }

    /// A backup left: the live carries on without it.
    pub fn remove(&self, id: ReplicaId) {
        let mut st = self.state.lock();
        st.replicas.remove(&id);
        Self::release(&mut st);
    }

    /// Confirms nothing more: fails every held waiter and every later one. For a live that
    /// lost its claim (a backup may take over without what is held) or is stopping.
    pub fn fence(&self) {
        let mut st = self.state.lock();
        st.fenced = true;
        Self::release(&mut st);
    }

    /// Whether this backup is in sync (its acks hold waiters back).
    /// Whether any backup is connected (syncing or synced).
    pub(super) fn has_replicas(&self) -> bool {
        !self.state.lock().replicas.is_empty()
    }

    pub fn is_synced(&self, id: ReplicaId) -> bool {
        self.state.lock().replicas.get(&id).is_some_and(|r| r.acked.is_some())
    }

    /// Backups in sync right now.
    pub fn synced(&self) -> usize {
        self.state.lock().replicas.values().filter(|r| r.acked.is_some()).count()
    }

    /// The writer's hand-off after a batch is durable locally: completes the waiters now
    /// if no synced backup must confirm them, else holds them.
    pub(super) fn complete_or_hold(&self, end: JournalPosition, waiters: Waiters) {
        let mut st = self.state.lock();
        let hold = self.synchronous.load(std::sync::atomic::Ordering::Relaxed)
            && st.replicas.values().any(|r| r.acked.is_some());
        if !hold && st.waiting.is_empty() && !st.fenced {
            st.confirmed = st.confirmed.max(end.at());
            drop(st);
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            return;
        }
        st.waiting.push_back((end.at(), waiters));
        Self::release(&mut st);
    }

    fn release(st: &mut GateState) {
        if st.fenced {
            for (_, waiters) in st.waiting.drain(..) {
                for w in waiters {
                    let _ = w.send(Err(JournalError::Fenced));
                }
            }
            return;
        }
        let floor = st.replicas.values().filter_map(|r| r.acked).min();
        while let Some((end, _)) = st.waiting.front() {
            let done = match floor {
                None => true,
                Some(f) => *end <= f,
            };
            if !done {
                break;
            }
            if let Some((end, waiters)) = st.waiting.pop_front() {
                st.confirmed = st.confirmed.max(end);
                for w in waiters {
                    let _ = w.send(Ok(()));
                }
            }
        }
    }
}

/// What the writer shares with replication.
pub(super) struct Shared {
    pub(super) gate: ReplicationGate,
    pub(super) holds: Arc<Holds>,
    pub(super) position: tokio::sync::watch::Sender<JournalPosition>,
    /// Written (in the page cache) but maybe not yet synced: replication reads up to here,
    /// so a backup receives a batch while the live's own fdatasync is still running.
    pub(super) written: tokio::sync::watch::Sender<JournalPosition>,
    /// The number of the first record of every segment on disk (see [`JournalPosition`]).
    pub(super) first_records: Mutex<BTreeMap<u64, u64>>,
}

impl Shared {
    pub(super) fn new(start: JournalPosition) -> Shared {
        Shared {
            gate: ReplicationGate::new(true),
            holds: Arc::new(Holds::default()),
            position: tokio::sync::watch::Sender::new(start),
            written: tokio::sync::watch::Sender::new(start),
            first_records: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Segments a backup still needs; the writer reclaims none at or after the lowest hold.
#[derive(Default)]
pub struct Holds {
    next: Mutex<(u64, BTreeMap<u64, u64>)>,
}

impl Holds {
    /// The lowest held segment, if any hold exists.
    pub fn floor(&self) -> Option<u64> {
        self.next.lock().1.values().min().copied()
    }
}

/// Keeps segments from `seq` on; moves forward with [`SegmentHold::advance`]; released on drop.
pub struct SegmentHold {
    holds: Arc<Holds>,
    id: u64,
}

impl SegmentHold {
    pub(super) fn new(holds: &Arc<Holds>, seq: u64) -> SegmentHold {
        let mut g = holds.next.lock();
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, seq);
        SegmentHold { holds: Arc::clone(holds), id }
    }

    pub fn advance(&self, seq: u64) {
        if let Some(s) = self.holds.next.lock().1.get_mut(&self.id) {
            *s = (*s).max(seq);
        }
    }
}

impl Drop for SegmentHold {
    fn drop(&mut self) {
        self.holds.next.lock().1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u64, offset: u64) -> JournalPosition {
        JournalPosition { segment, offset, records: 0 }
    }

    fn waiter() -> (Waiters, oneshot::Receiver<Result<(), JournalError>>) {
        let (tx, rx) = oneshot::channel();
        (vec![tx], rx)
    }

    #[test]
    fn given_no_synced_backup_should_complete_at_once() {
        let gate = ReplicationGate::new(true);
        let _syncing = gate.register();
        let (w, mut rx) = waiter();
        gate.complete_or_hold(pos(1, 100), w);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn given_synced_backup_should_hold_until_acked_and_release_when_it_leaves() {
        let gate = ReplicationGate::new(true);
        let b = gate.register();
        gate.acked(b, pos(1, 50), true);
        let (w1, mut rx1) = waiter();
        let (w2, mut rx2) = waiter();
        gate.complete_or_hold(pos(1, 100), w1);
        gate.complete_or_hold(pos(1, 200), w2);
        assert!(rx1.try_recv().is_err());
        gate.acked(b, pos(1, 100), true);
        assert!(rx1.try_recv().is_ok());
        assert!(rx2.try_recv().is_err());
        gate.remove(b);
        assert!(rx2.try_recv().is_ok(), "a live whose backup left carries on alone");
    }

    #[test]
    fn given_fenced_gate_should_fail_held_and_later_waiters() {
        let gate = ReplicationGate::new(true);
        let b = gate.register();
        gate.acked(b, pos(1, 50), true);
        let (w1, mut rx1) = waiter();
        gate.complete_or_hold(pos(1, 100), w1);
        assert!(gate.is_synced(b));
        gate.fence();
        assert!(matches!(rx1.try_recv(), Ok(Err(JournalError::Fenced))));
        gate.remove(b);
        let (w2, mut rx2) = waiter();
        gate.complete_or_hold(pos(1, 200), w2);
        assert!(matches!(rx2.try_recv(), Ok(Err(JournalError::Fenced))), "nothing is confirmed after the fence");
    }

    #[test]
    fn given_a_cut_should_count_no_ack_until_the_backup_confirmed_it() {
        let gate = ReplicationGate::new(true);
        let b = gate.register();
        assert!(gate.acked(b, pos(1, 300), true), "a stale ack beyond the cut, counted before it");
        gate.cut((1, 100));
        gate.cut((1, 150));
        // The batch written after the cut ends below what the backup acked before it.
        let (w, mut rx) = waiter();
        gate.complete_or_hold(pos(1, 120), w);
        assert!(rx.try_recv().is_err(), "an ack of cut-off bytes confirms nothing");
        assert!(!gate.acked(b, pos(1, 300), true), "acks in flight before the cut are ignored");
        assert_eq!(gate.take_cut(b), Some((1, 100)), "the lowest cut");
        assert_eq!(gate.take_cut(b), None);
        assert!(!gate.acked(b, pos(1, 300), true), "nor until the backup confirmed");
        gate.cut_confirmed(b);
        assert!(rx.try_recv().is_err());
        assert!(gate.acked(b, pos(1, 120), true));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn given_held_batches_should_confirm_only_what_completed() {
        let gate = ReplicationGate::new(true);
        gate.opened_at((1, 40));
        assert_eq!(gate.confirmed(), (1, 40), "what the journal held when it opened");
        let b = gate.register();
        gate.acked(b, pos(1, 50), true);
        let (w1, _rx1) = waiter();
        let (w2, _rx2) = waiter();
        gate.complete_or_hold(pos(1, 100), w1);
        gate.complete_or_hold(pos(2, 30), w2);
        assert_eq!(gate.confirmed(), (1, 40), "durable locally, not yet at the backup");
        gate.acked(b, pos(1, 100), true);
        assert_eq!(gate.confirmed(), (1, 100));
        gate.fence();
        assert_eq!(gate.confirmed(), (1, 100), "a fenced live confirms nothing more");
    }

    #[test]
    fn given_async_replication_should_never_hold() {
        let gate = ReplicationGate::new(false);
        let b = gate.register();
        gate.acked(b, pos(1, 0), true);
        let (w, mut rx) = waiter();
        gate.complete_or_hold(pos(2, 10), w);
        assert!(rx.try_recv().is_ok());
        assert_eq!(gate.confirmed(), (2, 10));
    }

    #[test]
    fn given_holds_should_report_lowest_until_dropped() {
        let holds = Arc::new(Holds::default());
        let a = SegmentHold::new(&holds, 3);
        let b = SegmentHold::new(&holds, 5);
        assert_eq!(holds.floor(), Some(3));
        a.advance(7);
        assert_eq!(holds.floor(), Some(5));
        drop(b);
        assert_eq!(holds.floor(), Some(7));
        drop(a);
        assert_eq!(holds.floor(), None);
    }
}
