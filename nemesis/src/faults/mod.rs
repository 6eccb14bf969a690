//! The nemesis: every few seconds it asks the [`plan::Planner`] for a fault, applies it to
//! a group that is healthy and has no fault yet, and heals it after its hold (or at once
//! when the run's fault phase ends). Applying and healing go through the cluster's
//! process controls and are recorded in the history; the choices are the planner's.

pub mod plan;

use crate::cluster::status::View;
use crate::cluster::{Cluster, ClusterError, Member};
use crate::history::{Event, FaultPhase, FaultRecord, Recorder};
use duomq_broker::admin::api::{DiskFault, FaultRules, FrameAction, FrameRule};
use duomq_broker::cluster::Purpose;
use duomq_broker::config::HumanDuration;
use parking_lot::Mutex;
use plan::{FaultKind, Planned, Planner};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often to look again when no group may take a fault.
const WAIT_FOR_ELIGIBLE: Duration = Duration::from_millis(250);

/// A fault in force.
#[derive(Debug, Clone)]
struct Active {
    id: u64,
    kind: FaultKind,
    /// The groups it involves (two for a cut between groups).
    groups: Vec<usize>,
    /// The member it was applied to.
    member: String,
}

/// Applies and heals faults; clones share the set of active ones.
#[derive(Clone)]
pub struct Nemesis {
    cluster: Arc<Cluster>,
    view: View,
    recorder: Recorder,
    /// Faults in force, by id; a group is in at most one.
    active: Arc<Mutex<BTreeMap<u64, Active>>>,
    next_id: Arc<AtomicU64>,
    /// Faults in force at once, at most.
    concurrency: usize,
}

impl Nemesis {
    pub fn new(cluster: Arc<Cluster>, view: View, recorder: Recorder, concurrency: usize) -> Nemesis {
        Nemesis { cluster, view, recorder, active: Arc::default(), next_id: Arc::new(AtomicU64::new(1)), concurrency: concurrency.max(1) }
    }

    /// Descriptions of the faults in force, for progress lines.
    pub fn describe_active(&self) -> Vec<String> {
        self.active.lock().values().map(|a| format!("{} {}", a.kind.name(), a.member)).collect()
    }

    /// Applies faults until `end`, then heals every one still in force and returns.
    pub async fn run(self, mut planner: Planner, end: CancellationToken) {
        let mut heals = JoinSet::new();
        'faults: while !end.is_cancelled() {
            tokio::select! {
                _ = end.cancelled() => break,
                _ = tokio::time::sleep(planner.gap()) => {}
            }
            let planned = loop {
                if let Some(p) = planner.next(&self.eligible()) {
                    break p;
                }
                tokio::select! {
                    _ = end.cancelled() => break 'faults,
                    _ = tokio::time::sleep(WAIT_FOR_ELIGIBLE) => {}
                }
            };
            if let Some(active) = self.apply(planned).await {
                let (nemesis, end, hold) = (self.clone(), end.clone(), planned.hold);
                heals.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(hold) => {}
                        _ = end.cancelled() => {}
                    }
                    nemesis.heal(active).await;
                });
            }
            while heals.try_join_next().is_some() {}
        }
        while heals.join_next().await.is_some() {}
    }

    /// Groups that may take a fault now: none in force there, room for one more, and the
    /// group healthy (a live and a synced backup).
    fn eligible(&self) -> Vec<usize> {
        let active = self.active.lock();
        if active.len() >= self.concurrency {
            return Vec::new();
        }
        (0..self.cluster.layout.groups.len())
            .filter(|g| !active.values().any(|a| a.groups.contains(g)))
            .filter(|g| self.view.healthy(&self.cluster.group(*g).map(Member::name).collect::<Vec<_>>()))
            .collect()
    }

    async fn apply(&self, planned: Planned) -> Option<Active> {
        let names: Vec<&str> = self.cluster.group(planned.group).map(Member::name).collect();
        let live = self.view.live_of(&names)?;
        let target = if planned.on_live { live } else { names.iter().copied().find(|n| *n != live)? };
        let backup = names.iter().copied().find(|n| *n != target)?;
        let member = self.cluster.member(target)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let groups = std::iter::once(planned.group).chain(planned.peer_group).collect();
        let active = Active { id, kind: planned.kind, groups, member: target.to_string() };
        self.active.lock().insert(id, active.clone());
        let role = if planned.on_live { "live" } else { "backup" };
        let mut detail = format!("{role}, healed after {:.1}s", planned.hold.as_secs_f64());
        let result = match planned.kind {
            FaultKind::Kill => member.kill(&self.recorder).await,
            FaultKind::Stop => member.stop(&self.recorder).await,
            FaultKind::Restart => member.terminate(&self.recorder).await,
            kind => {
                let peers: Vec<String> = planned.peer_group.map_or(Vec::new(), |g| self.cluster.group(g).map(|m| m.name().to_string()).collect());
                if !peers.is_empty() {
                    detail = format!("{detail}; cut from {}", peers.join(", "));
                }
                if kind == FaultKind::SlowFsync {
                    detail = format!("{detail}; each fdatasync {} ms slower", planned.sync_delay.as_millis());
                }
                member.set_faults(&rules(kind, backup, &peers, planned.sync_delay)).await
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(fault = planned.kind.name(), member = target, id, "{detail}");
                self.record(&active, FaultPhase::Applied, detail);
                Some(active)
            }
            Err(e) => {
                self.record(&active, FaultPhase::Failed, format!("failed to apply: {}", duomq_broker::report::error_chain(&e)));
                self.active.lock().remove(&id);
                None
            }
        }
    }

    async fn heal(&self, active: Active) {
        let result: Result<(), ClusterError> = match self.cluster.member(&active.member) {
            None => Ok(()),
            Some(member) => match active.kind {
                FaultKind::Kill | FaultKind::Restart => member.start(&self.cluster.logs, &self.recorder).await.map(drop),
                FaultKind::Stop => member.cont(&self.recorder).await,
                _ => member.clear_faults().await,
            },
        };
        match result {
            Ok(()) => self.record(&active, FaultPhase::Healed, String::new()),
            Err(e) => self.record(&active, FaultPhase::Failed, format!("failed to heal: {}", duomq_broker::report::error_chain(&e))),
        }
        tracing::info!(fault = active.kind.name(), member = active.member, id = active.id, "healed");
        self.active.lock().remove(&active.id);
    }

    fn record(&self, active: &Active, phase: FaultPhase, detail: String) {
        self.recorder.record(Event::Fault(FaultRecord {
            t: self.recorder.now(),
            id: active.id,
            fault: active.kind.name().to_string(),
            phase,
            target: active.member.clone(),
            detail,
        }));
    }
}

/// The fault rules of a fault that goes through `/debug/faults`, for the member it hits:
/// `backup` is the other member of its group, `peers` the members of the other group of a
/// cut between groups.
pub fn rules(kind: FaultKind, backup: &str, peers: &[String], sync_delay: Duration) -> FaultRules {
    let partition = |peer: Option<&str>, channel: Option<Purpose>| FrameRule {
        peer: peer.map(str::to_string),
        channel,
        ..FrameRule::new(FrameAction::Partition)
    };
    match kind {
        FaultKind::PartitionBackup => FaultRules { frames: vec![partition(Some(backup), None)], disk: None },
        // Voters check the live with probes: cut from those, it is gone to them.
        FaultKind::PartitionArbiter => FaultRules { frames: vec![partition(Some(backup), None), partition(None, Some(Purpose::Probe))], disk: None },
        FaultKind::PartitionBridge => {
            FaultRules { frames: peers.iter().map(|p| partition(Some(p), Some(Purpose::Bridge))).collect(), disk: None }
        }
        FaultKind::SlowFsync => {
            FaultRules { frames: Vec::new(), disk: Some(DiskFault { sync_delay: Some(HumanDuration(sync_delay)), ..DiskFault::default() }) }
        }
        FaultKind::DiskFull => FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_all_syncs: true, ..DiskFault::default() }) },
        FaultKind::Kill | FaultKind::Stop | FaultKind::Restart => FaultRules::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_each_injected_fault_should_make_rules_the_broker_takes() {
        let peers = ["g2-a".to_string(), "g2-b".to_string()];
        for kind in FaultKind::ALL.into_iter().filter(|k| k.needs_injection()) {
            let rules = rules(kind, "g1-b", &peers, Duration::from_millis(50));
            rules.validate().unwrap_or_else(|e| panic!("{kind}: {e}"));
            let json = serde_json::to_string(&rules).expect("JSON");
            assert_eq!(serde_json::from_str::<FaultRules>(&json).expect("back"), rules);
        }
        let bridge = rules(FaultKind::PartitionBridge, "g1-b", &peers, Duration::ZERO);
        assert_eq!(bridge.frames.iter().map(|f| f.peer.as_deref()).collect::<Vec<_>>(), [Some("g2-a"), Some("g2-b")]);
        assert!(bridge.frames.iter().all(|f| f.channel == Some(Purpose::Bridge)));
        let cut = rules(FaultKind::PartitionBackup, "g1-b", &peers, Duration::ZERO);
        assert_eq!(cut.frames[0].peer.as_deref(), Some("g1-b"));
        assert_eq!(rules(FaultKind::DiskFull, "x", &[], Duration::ZERO).disk.map(|d| d.fail_all_syncs), Some(true));
    }
}
