//! Arbiters: who decides that a backup may activate. A backup that lost its live asks its
//! arbiter; only a `Granted` answer lets it become live. Three kinds: a quorum of the
//! cluster's other servers, a file lock the live holds for as long as it lives, and a
//! Kubernetes Lease (`super::lease`). The arbiters decide and hold claims; they start and
//! stop nothing: a live learns that its claim is gone from [`Arbiter::lost`].

use super::epoch::Epoch;
use crate::config::LeaseTarget;
use futures::future::BoxFuture;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArbiterError {
    #[error("failed to open lock file {path}")]
    OpenLock { path: PathBuf, source: std::io::Error },
    #[error("failed to lock {path}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("failed to claim the live role: {reason}")]
    Refused { reason: String },
    // kube-rs messages embed their cause, so these carry its one-line text, not a source.
    #[error("failed to create the Kubernetes client (KUBECONFIG, else the pod's service account): {reason}")]
    Client { reason: String },
    #[error("failed to read Lease {}/{}: {reason}", target.namespace, target.name)]
    ReadLease { target: LeaseTarget, reason: String },
    #[error("failed to write Lease {}/{}: {reason}", target.namespace, target.name)]
    WriteLease { target: LeaseTarget, reason: String },
    #[error("failed to understand Lease {}/{}: {reason}", target.namespace, target.name)]
    BadLease { target: LeaseTarget, reason: String },
}

/// The answer to "may I activate?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Activate; `epoch` is the one the arbiter recorded for this activation, if it keeps
    /// the group's epoch itself.
    Granted { reason: String, epoch: Option<Epoch> },
    Denied { reason: String },
}

/// What a backup tells its arbiter when it asks.
#[derive(Debug, Clone)]
pub struct ActivationRequest {
    pub group: String,
    pub live_node: String,
    /// The live's cluster address, so voters can check it themselves.
    pub live_addr: String,
    pub epoch: u64,
    /// The backup was in sync with that live when it lost it, so its journal is complete.
    pub complete_copy: bool,
}

/// A voter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub granted: bool,
    pub reason: String,
}

/// Asks one voter (by cluster address) for its vote; the cluster module supplies it.
pub type AskVoter = Arc<dyn Fn(String, ActivationRequest) -> BoxFuture<'static, Result<Vote, String>> + Send + Sync>;

/// Decides activations.
pub trait Arbiter: Send + Sync {
    /// May this backup activate now?
    fn may_activate<'a>(&'a self, request: &'a ActivationRequest) -> BoxFuture<'a, Result<Decision, ArbiterError>>;
    /// Called before this member becomes live, with the epoch it has on disk and whether its
    /// journal is known to be complete (it was live, or an in-sync backup, since it last
    /// reset it): takes or keeps whatever claim the arbiter needs held, or refuses. `Some`
    /// is the epoch the arbiter recorded for this term, which the member must persist.
    fn hold_as_live(&self, _local_epoch: Epoch, _complete_copy: bool) -> BoxFuture<'_, Result<Option<Epoch>, ArbiterError>> {
        Box::pin(async { Ok(None) })
    }
    /// Called when this member stops being live (a hand-over, a shutdown): give up the
    /// claim so a backup can take it at once. Does nothing when no claim is held.
    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Called by a live handing its role to `to` (a switchover or failback) once `to` has
    /// every record: give the claim up for that member alone, where the arbiter can say so
    /// (the others then wait for `to`, or for the hand-over to lapse). Like [`release`]
    /// otherwise.
    ///
    /// [`release`]: Arbiter::release
    fn hand_over<'a>(&'a self, _to: &'a str) -> BoxFuture<'a, ()> {
        self.release()
    }
    /// Resolves, with the reason, once the live's claim is lost: the live must fence
    /// itself (stop serving) at once. Never resolves for arbiters whose claim cannot be
    /// lost while the process lives.
    fn lost(&self) -> BoxFuture<'static, String> {
        Box::pin(futures::future::pending())
    }
    /// A backup left the live's in-sync set: resolves `Ok` once everyone who may take over
    /// knows it, so the live may confirm writes without that backup; `Err` when the claim
    /// is gone first (the live then confirms nothing more).
    fn in_sync_changed(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// A backup joined the live's in-sync set (or this member just became live): arbiters
    /// that keep the set themselves learn it, best effort, so that backup may take over.
    fn in_sync_grew(&self) {}
    /// Before a member starts live without having followed a live that it lost (at start,
    /// when no live answers): whether it may. Arbiters that hold a claim decide in
    /// [`Arbiter::hold_as_live`] and allow it here; `Granted` with an epoch is the one the
    /// member must take.
    fn may_start_live<'a>(&'a self, _request: &'a ActivationRequest) -> BoxFuture<'a, Result<Decision, ArbiterError>> {
        Box::pin(async { Ok(Decision::Granted { reason: "no live answers".into(), epoch: None }) })
    }
    /// How often a backup following a live should call [`Arbiter::observe`]; `None` for
    /// arbiters with nothing to watch.
    fn observe_every(&self) -> Option<Duration> {
        None
    }
    /// Called periodically by a backup while it follows a live, so the arbiter sees the
    /// live's claim being renewed and can later judge its expiry from the last renewal it
    /// saw rather than from the moment the live was lost.
    fn observe(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// The arbiter itself knows which members hold the live's data (a Lease's in-sync
    /// list), so a backup asks it whenever no live answers, even one that never followed
    /// a live in this process.
    fn knows_sync(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str;
}

/// HornetQ/Artemis quorum: activate only when more than half of the cluster's servers
/// (the voters plus the lost live, which cannot say yes) confirm the live is gone.
///
/// The live side of the same rule (Artemis' vote on replication failure): a live left
/// without a synced backup confirms writes alone only while it reaches enough voters that
/// a backup could not win a vote against it (a backup needs more than half of voters + 1,
/// and a voter that the live reaches sees it and says no). It checks when its last synced
/// backup leaves and again every `recheck_every` while it stays alone; a live cut off from
/// too many voters gives its claim up ([`Arbiter::lost`]): it fences itself and rejoins as
/// a backup, so a backup that wins a vote is never a second live.
///
/// Voters also keep a book of each group's newest term ([`super::terms`]): the live tells
/// them who holds its writes whenever that changes, and they refuse a vote to any other
/// member, so a member with an older journal (a restarted primary, a backup that fell out
/// of sync) never wins one. A vote is a tentative grant: a candidate that wins enough of
/// them must have its first notice of the new epoch recorded by as many voters before it
/// activates, and grants it never used lapse after two vote timeouts, so two candidates
/// that split the voters do not leave the group without a live. A member starting live
/// without a live to follow asks for a vote too ([`Arbiter::may_start_live`]); only on a
/// cluster's first start (epoch 0), when no voter says no, does it start without a majority.
pub struct QuorumArbiter {
    inner: Arc<QuorumInner>,
}

struct QuorumInner {
    voters: Vec<String>,
    timeout: Duration,
    ask: AskVoter,
    reach: ReachVoter,
    alone: Arc<dyn Fn() -> bool + Send + Sync>,
    recheck_every: Duration,
    /// `Some(reason)` once the live term's claim is lost; reset when a term starts.
    lost: tokio::sync::watch::Sender<Option<String>>,
    /// A recheck loop runs (one per live term at most).
    watching: std::sync::atomic::AtomicBool,
}

/// Tells one voter (by cluster address) the live's term as it is now (its epoch and the
/// members holding every confirmed write, see [`super::terms`]), or with `Some(epoch)` that
/// this member begins that epoch alone: `Ok` once the voter recorded it, `Err` when it is
/// unreachable or refuses (it knows a newer term, or granted its vote to another member).
pub type ReachVoter = Arc<dyn Fn(String, Option<u64>) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// More than half of `voters + 1` servers (the lost live counts, voting no).
pub fn quorum_reached(granted: usize, voters: usize) -> bool {
    2 * granted > voters + 1
}

/// Whether a live reaching `reached` of `voters` leaves too few for a backup's quorum.
pub fn live_keeps_quorum(reached: usize, voters: usize) -> bool {
    !quorum_reached(voters.saturating_sub(reached), voters)
}

impl QuorumArbiter {
    /// `alone` says whether the live has no synced backup now; `recheck_every` is how
    /// often an alone live checks it still reaches enough voters.
    pub fn new(
        voters: Vec<String>,
        timeout: Duration,
        ask: AskVoter,
        reach: ReachVoter,
        alone: Arc<dyn Fn() -> bool + Send + Sync>,
        recheck_every: Duration,
    ) -> QuorumArbiter {
        let (lost, _) = tokio::sync::watch::channel(None);
        QuorumArbiter {
            inner: Arc::new(QuorumInner {
                voters,
                timeout,
                ask,
                reach,
                alone,
                recheck_every,
                lost,
                watching: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl QuorumInner {
    /// Tells every voter the term (`begin`: see [`ReachVoter`]); how many recorded it, and
    /// notes on the others.
    async fn tell_voters(&self, begin: Option<u64>) -> (usize, Vec<String>) {
        let probes = self.voters.iter().map(|addr| {
            let reach = Arc::clone(&self.reach);
            let addr = addr.clone();
            async move { (addr.clone(), tokio::time::timeout(self.timeout, reach(addr, begin)).await) }
        });
        let mut reached = 0;
        let mut notes = Vec::new();
        for (addr, answer) in futures::future::join_all(probes).await {
            match answer {
                Ok(Ok(())) => reached += 1,
                Ok(Err(e)) => notes.push(format!("{addr} did not record it ({e})")),
                Err(_) => notes.push(format!("{addr} did not answer in {:?}", self.timeout)),
            }
        }
        (reached, notes)
    }

    /// `Err` with the reason when the live no longer reaches enough voters.
    async fn live_check(&self) -> Result<(), String> {
        let (reached, notes) = self.tell_voters(None).await;
        let total = self.voters.len();
        if live_keeps_quorum(reached, total) {
            Ok(())
        } else {
            Err(format!(
                "only {reached} of {total} voters recorded who holds this live's writes: a backup could win a vote, so this live stops: {}",
                notes.join("; ")
            ))
        }
    }

    fn give_up(&self, reason: &str) {
        self.lost.send_replace(Some(reason.to_string()));
    }

    /// Checks again every `recheck_every` while the live stays alone and its claim holds.
    async fn watch_alone(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.recheck_every).await;
            if self.lost.borrow().is_some() || !(self.alone)() {
                break;
            }
            if let Err(reason) = self.live_check().await {
                if (self.alone)() {
                    self.give_up(&reason);
                    break;
                }
            }
        }
        self.watching.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl QuorumInner {
    /// Asks every voter; (granted, said no, notes on the others).
    async fn collect_votes(&self, request: &ActivationRequest) -> (usize, usize, Vec<String>) {
        let asks = self.voters.iter().map(|addr| {
            let ask = Arc::clone(&self.ask);
            let (addr, request) = (addr.clone(), request.clone());
            async move {
                let vote = tokio::time::timeout(self.timeout, ask(addr.clone(), request)).await;
                (addr, vote)
            }
        });
        let (mut granted, mut refused) = (0, 0);
        let mut notes = Vec::new();
        for (addr, vote) in futures::future::join_all(asks).await {
            match vote {
                Ok(Ok(v)) if v.granted => granted += 1,
                Ok(Ok(v)) => {
                    refused += 1;
                    notes.push(format!("{addr} said no ({})", v.reason));
                }
                Ok(Err(e)) => notes.push(format!("{addr} unreachable ({e})")),
                Err(_) => notes.push(format!("{addr} did not answer in {:?}", self.timeout)),
            }
        }
        (granted, refused, notes)
    }

    /// After winning a vote: the candidate's first notice of `epoch` must be recorded by as
    /// many voters as a vote needs before it activates. A voter records it only while it
    /// holds the candidate's grant (or the candidate holds the term it knows), so a grant
    /// that lapsed and let the old live go on alone cannot make a second live.
    async fn begin_term(&self, epoch: u64, votes: &str) -> Decision {
        let (recorded, notes) = self.tell_voters(Some(epoch)).await;
        let total = self.voters.len();
        if quorum_reached(recorded, total) {
            Decision::Granted { reason: format!("{votes}; {recorded} recorded epoch {epoch}"), epoch: Some(Epoch(epoch)) }
        } else {
            Decision::Denied {
                reason: format!(
                    "{votes}, but only {recorded} of {total} recorded epoch {epoch}; need more than half of {}: {}",
                    total + 1,
                    notes.join("; ")
                ),
            }
        }
    }

    /// After a lost vote that still won some grants: another candidate likely holds the
    /// others. Each waits a random while, up to a grant's lifetime (two vote timeouts), so
    /// that when the grants lapse one of them asks first everywhere.
    async fn split_pause(&self, granted: usize) {
        if granted > 0 {
            let pause = self.timeout.mul_f64(2.0 * rand::random::<f64>());
            tracing::debug!(?pause, granted, "vote lost with some grants won: pausing before asking again");
            tokio::time::sleep(pause).await;
        }
    }

    /// Tells the voters the live's term again, best effort (a backup joined, a term began),
    /// retrying those that did not record it a few times, a `recheck_every` apart: a backup
    /// can take over only once enough voters know it holds the live's writes.
    fn announce(self: &Arc<Self>) {
        let inner = Arc::clone(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut pending = inner.voters.clone();
                for _ in 0..10 {
                    let notices = pending.iter().map(|addr| {
                        let reach = Arc::clone(&inner.reach);
                        let addr = addr.clone();
                        let timeout = inner.timeout;
                        async move { (addr.clone(), matches!(tokio::time::timeout(timeout, reach(addr, None)).await, Ok(Ok(())))) }
                    });
                    pending = futures::future::join_all(notices).await.into_iter().filter(|(_, recorded)| !recorded).map(|(addr, _)| addr).collect();
                    if pending.is_empty() || inner.lost.borrow().is_some() {
                        return;
                    }
                    tokio::time::sleep(inner.recheck_every).await;
                }
                tracing::debug!(voters = %pending.join(", "), "these voters did not record the live's term");
            });
        }
    }
}

impl Arbiter for QuorumArbiter {
    fn may_activate<'a>(&'a self, request: &'a ActivationRequest) -> BoxFuture<'a, Result<Decision, ArbiterError>> {
        let inner = &self.inner;
        Box::pin(async move {
            if !request.complete_copy {
                return Ok(Decision::Denied { reason: "this member's journal is not a complete copy of the live's".into() });
            }
            let (granted, _, notes) = inner.collect_votes(request).await;
            let total = inner.voters.len();
            let summary = format!("{granted} of {total} voters confirm the live is gone");
            Ok(if quorum_reached(granted, total) {
                inner.begin_term(request.epoch + 1, &summary).await
            } else {
                inner.split_pause(granted).await;
                Decision::Denied { reason: format!("{summary}; need more than half of {}: {}", total + 1, notes.join("; ")) }
            })
        })
    }

    fn may_start_live<'a>(&'a self, request: &'a ActivationRequest) -> BoxFuture<'a, Result<Decision, ArbiterError>> {
        let inner = &self.inner;
        Box::pin(async move {
            let (granted, refused, notes) = inner.collect_votes(request).await;
            let total = inner.voters.len();
            let summary = format!("{granted} of {total} voters allow it");
            let won = quorum_reached(granted, total);
            let first_start = request.epoch == 0 && refused == 0;
            if !won && !first_start {
                inner.split_pause(granted).await;
            }
            Ok(if won {
                inner.begin_term(request.epoch + 1, &summary).await
            } else if first_start {
                // A cluster's first start: no voter knows of any term of this group.
                Decision::Granted { reason: format!("{summary}, none knows of an earlier term (first start)"), epoch: None }
            } else {
                Decision::Denied { reason: format!("{summary}; need more than half of {}: {}", total + 1, notes.join("; ")) }
            })
        })
    }

    fn in_sync_grew(&self) {
        // A live that starts alone needs no recheck: the voters that recorded its first
        // notice (or, on a first start, nobody) hold its term, so no other member can win a vote.
        self.inner.announce();
    }

    fn knows_sync(&self) -> bool {
        true
    }

    fn hold_as_live(&self, _local_epoch: Epoch, _complete_copy: bool) -> BoxFuture<'_, Result<Option<Epoch>, ArbiterError>> {
        // A new term starts with its claim.
        self.inner.lost.send_replace(None);
        Box::pin(async { Ok(None) })
    }

    fn lost(&self) -> BoxFuture<'static, String> {
        let mut lost = self.inner.lost.subscribe();
        Box::pin(async move {
            loop {
                if let Some(reason) = lost.borrow_and_update().clone() {
                    return reason;
                }
                if lost.changed().await.is_err() {
                    return futures::future::pending().await;
                }
            }
        })
    }

    fn in_sync_changed(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let inner = &self.inner;
            // The voters must know the backup left before the live confirms without it,
            // alone or not: they would let it win a vote with its older journal otherwise.
            match inner.live_check().await {
                Ok(()) if !(inner.alone)() => Ok(()),
                Ok(()) => {
                    if !inner.watching.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        tokio::spawn(Arc::clone(inner).watch_alone());
                    }
                    Ok(())
                }
                Err(reason) => {
                    inner.give_up(&reason);
                    Err(reason)
                }
            }
        })
    }

    fn name(&self) -> &'static str {
        "quorum"
    }
}

/// ActiveMQ-style exclusive lock: whoever holds the file lock is live. The kernel releases
/// it when the holder dies, so a backup that gets it knows the live is gone.
pub struct FileLockArbiter {
    path: PathBuf,
    held: parking_lot::Mutex<Option<File>>,
}

impl FileLockArbiter {
    pub fn new(path: &Path) -> FileLockArbiter {
        FileLockArbiter { path: path.to_path_buf(), held: parking_lot::Mutex::new(None) }
    }

    /// Tries to take the lock without waiting.
    fn try_take(&self) -> Result<bool, ArbiterError> {
        let mut held = self.held.lock();
        if held.is_some() {
            return Ok(true);
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(|source| ArbiterError::OpenLock { path: self.path.clone(), source })?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            *held = Some(file);
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(ArbiterError::Lock { path: self.path.clone(), source: err })
        }
    }
}

impl Arbiter for FileLockArbiter {
    fn may_activate<'a>(&'a self, _request: &'a ActivationRequest) -> BoxFuture<'a, Result<Decision, ArbiterError>> {
        Box::pin(async move {
            Ok(if self.try_take()? {
                Decision::Granted { reason: format!("took the lock {}", self.path.display()), epoch: None }
            } else {
                Decision::Denied { reason: format!("{} is still locked by the live", self.path.display()) }
            })
        })
    }

    fn hold_as_live(&self, _local_epoch: Epoch, _complete_copy: bool) -> BoxFuture<'_, Result<Option<Epoch>, ArbiterError>> {
        Box::pin(async move {
            if self.try_take()? {
                Ok(None)
            } else {
                Err(ArbiterError::Lock {
                    path: self.path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::WouldBlock, "held by another member"),
                })
            }
        })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        // Closing the descriptor drops the flock.
        self.held.lock().take();
        Box::pin(async {})
    }

    fn name(&self) -> &'static str {
        "fileLock"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0, 0, false)]
    #[case(1, 2, false)]
    #[case(2, 2, true)]
    #[case(2, 4, false)]
    #[case(3, 4, true)]
    #[case(1, 0, true)]
    fn given_votes_should_need_more_than_half_counting_the_lost_live(
        #[case] granted: usize,
        #[case] voters: usize,
        #[case] reached: bool,
    ) {
        assert_eq!(quorum_reached(granted, voters), reached);
    }

    fn request() -> ActivationRequest {
        ActivationRequest { group: "g".into(), live_node: "a".into(), live_addr: "x".into(), epoch: 1, complete_copy: true }
    }

    fn quorum(ask: AskVoter, reach: ReachVoter, alone: bool) -> QuorumArbiter {
        let voters = vec!["v1".into(), "v2".into()];
        QuorumArbiter::new(voters, Duration::from_millis(100), ask, reach, Arc::new(move || alone), Duration::from_millis(20))
    }

    fn reach_only(reachable: &'static [&'static str]) -> ReachVoter {
        Arc::new(move |addr, _| Box::pin(async move { if reachable.contains(&addr.as_str()) { Ok(()) } else { Err("connection refused".into()) } }))
    }

    #[tokio::test]
    async fn given_isolated_backup_should_be_denied_and_connected_one_granted() {
        let unreachable: AskVoter = Arc::new(|_, _| Box::pin(async { Err("connection refused".to_string()) }));
        let q = quorum(unreachable, reach_only(&[]), false);
        assert!(matches!(q.may_activate(&request()).await.unwrap(), Decision::Denied { .. }));
        let yes: AskVoter = Arc::new(|_, _| Box::pin(async { Ok(Vote { granted: true, reason: "live gone".into() }) }));
        let q = quorum(Arc::clone(&yes), reach_only(&["v1", "v2"]), false);
        assert_eq!(
            q.may_activate(&request()).await.unwrap(),
            Decision::Granted { reason: "2 of 2 voters confirm the live is gone; 2 recorded epoch 2".into(), epoch: Some(Epoch(2)) }
        );
        // The votes are won, but a voter did not record the first notice of the new term
        // (its grant lapsed and the old live went on, say): no activation.
        let q = quorum(yes, reach_only(&["v1"]), false);
        let Decision::Denied { reason } = q.may_activate(&request()).await.unwrap() else { panic!("activated without its term recorded") };
        assert!(reason.contains("only 1 of 2 recorded epoch 2"), "{reason}");
    }

    #[tokio::test]
    async fn given_won_votes_should_send_the_first_notice_of_the_next_epoch_alone() {
        let yes: AskVoter = Arc::new(|_, _| Box::pin(async { Ok(Vote { granted: true, reason: "live gone".into() }) }));
        let told = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let reach: ReachVoter = {
            let told = Arc::clone(&told);
            Arc::new(move |addr, begin| {
                told.lock().push((addr, begin));
                Box::pin(async { Ok(()) })
            })
        };
        let q = quorum(yes, reach, false);
        assert!(matches!(q.may_activate(&request()).await.unwrap(), Decision::Granted { .. }));
        let mut told = told.lock().clone();
        told.sort();
        assert_eq!(told, vec![("v1".to_string(), Some(2)), ("v2".to_string(), Some(2))]);
    }

    #[rstest]
    #[case(0, 0, true)]
    #[case(0, 1, true)]
    #[case(0, 2, false)]
    #[case(1, 2, true)]
    #[case(1, 3, true)]
    #[case(0, 3, false)]
    #[case(1, 4, false)]
    #[case(2, 4, true)]
    fn given_voters_the_live_reaches_should_keep_it_only_when_no_backup_quorum_is_left(
        #[case] reached: usize,
        #[case] voters: usize,
        #[case] keeps: bool,
    ) {
        assert_eq!(live_keeps_quorum(reached, voters), keeps);
        // Never both: a live that keeps going and a backup that wins with the rest.
        if keeps {
            assert!(!quorum_reached(voters - reached, voters));
        }
    }

    #[tokio::test]
    async fn given_a_live_left_alone_and_cut_off_from_the_voters_should_give_its_claim_up() {
        let no: AskVoter = Arc::new(|_, _| Box::pin(async { Ok(Vote { granted: false, reason: "live seen".into() }) }));
        // Reaching one of two voters leaves a backup one vote: not enough. It carries on.
        let q = quorum(Arc::clone(&no), reach_only(&["v1"]), true);
        q.hold_as_live(Epoch(1), true).await.unwrap();
        assert_eq!(q.in_sync_changed().await, Ok(()));
        // Reaching none: a backup could win, so the live gives up its claim.
        let q = quorum(Arc::clone(&no), reach_only(&[]), true);
        q.hold_as_live(Epoch(1), true).await.unwrap();
        let lost = q.lost();
        let err = q.in_sync_changed().await.unwrap_err();
        assert!(err.contains("only 0 of 2 voters recorded"), "{err}");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), lost).await.expect("lost resolves"), err);
        // A new term starts with its claim again.
        q.hold_as_live(Epoch(2), true).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), q.lost()).await.is_err());
        // With a synced backup left the voters must still learn that one left: a live that
        // cannot tell them gives up too (the backup that left could win a vote otherwise).
        let q = quorum(Arc::clone(&no), reach_only(&[]), false);
        q.hold_as_live(Epoch(1), true).await.unwrap();
        assert!(q.in_sync_changed().await.is_err());
        let q = quorum(no, reach_only(&["v1"]), false);
        assert_eq!(q.in_sync_changed().await, Ok(()));
    }

    #[tokio::test]
    async fn given_an_alone_live_that_later_loses_the_voters_should_give_its_claim_up_on_a_recheck() {
        let no: AskVoter = Arc::new(|_, _| Box::pin(async { Ok(Vote { granted: false, reason: "live seen".into() }) }));
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reach: ReachVoter = {
            let cut = Arc::clone(&cut);
            Arc::new(move |_, _| {
                let cut = cut.load(std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move { if cut { Err("partitioned".to_string()) } else { Ok(()) } })
            })
        };
        let q = quorum(no, reach, true);
        q.hold_as_live(Epoch(1), true).await.unwrap();
        assert_eq!(q.in_sync_changed().await, Ok(()));
        let lost = q.lost();
        cut.store(true, std::sync::atomic::Ordering::SeqCst);
        let reason = tokio::time::timeout(Duration::from_secs(5), lost).await.expect("the recheck gives the claim up");
        assert!(reason.contains("only 0 of 2 voters recorded"), "{reason}");
    }

    #[tokio::test]
    async fn given_a_member_starting_without_a_live_should_need_a_vote_unless_no_voter_knows_the_group() {
        let yes: AskVoter = Arc::new(|_, _| Box::pin(async { Ok(Vote { granted: true, reason: "nothing against it".into() }) }));
        let no: AskVoter = Arc::new(|_, _| Box::pin(async { Ok(Vote { granted: false, reason: "not a holder".into() }) }));
        let unreachable: AskVoter = Arc::new(|_, _| Box::pin(async { Err("connection refused".to_string()) }));
        let starting = |epoch| ActivationRequest { group: "g".into(), live_node: String::new(), live_addr: String::new(), epoch, complete_copy: true };
        let granted = quorum(yes, reach_only(&["v1", "v2"]), true).may_start_live(&starting(4)).await.unwrap();
        assert_eq!(
            granted,
            Decision::Granted { reason: "2 of 2 voters allow it; 2 recorded epoch 5".into(), epoch: Some(Epoch(5)) },
            "the next epoch"
        );
        let q = quorum(Arc::clone(&no), reach_only(&[]), true);
        assert!(matches!(q.may_start_live(&starting(4)).await.unwrap(), Decision::Denied { .. }), "a voter knows a newer term");
        assert!(matches!(q.may_start_live(&starting(0)).await.unwrap(), Decision::Denied { .. }), "even on what looks like a first start");
        let q = quorum(unreachable, reach_only(&[]), true);
        assert!(matches!(q.may_start_live(&starting(4)).await.unwrap(), Decision::Denied { .. }), "no majority: the journal may be old");
        assert!(
            matches!(q.may_start_live(&starting(0)).await.unwrap(), Decision::Granted { epoch: None, .. }),
            "a cluster's first start needs no majority"
        );
        let not_synced = ActivationRequest { complete_copy: false, ..request() };
        assert!(matches!(q.may_activate(&not_synced).await.unwrap(), Decision::Denied { .. }), "never without a complete copy");
    }

    #[tokio::test]
    async fn given_lock_held_by_live_should_deny_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.lock");
        let live = FileLockArbiter::new(&path);
        live.hold_as_live(Epoch(1), true).await.unwrap();
        let backup = FileLockArbiter::new(&path);
        assert!(matches!(backup.may_activate(&request()).await.unwrap(), Decision::Denied { .. }));
        drop(live);
        assert!(matches!(backup.may_activate(&request()).await.unwrap(), Decision::Granted { .. }));
    }
}
