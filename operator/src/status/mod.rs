//! Status computation: from what the operator observed (pods, each broker's `/status`, the
//! previous status) to the BrokerGroup's new status, the role label each pod should carry, and
//! the transitions worth an Event. Pure: observation happens in the controller.

use std::collections::BTreeMap;

use duomq_broker::admin::api::{BrokerStatus, Role, SyncState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{condition, BrokerGroupStatus, FailoverReason, FailoverRecord, GroupStatus, MemberStatus};
use crate::names;
use crate::validate::ValidatedBrokerGroup;

/// What the operator saw of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodObservation {
    /// The pod exists and its broker container runs.
    pub running: bool,
    /// The pod is being deleted.
    pub terminating: bool,
    /// The node it is scheduled on.
    pub node: Option<String>,
    /// Its current `duomq.io/role` label.
    pub role_label: Option<String>,
    /// The broker's `/status`, or why it could not be read.
    pub broker: Result<BrokerStatus, String>,
}

/// Everything observed in one reconcile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub pods: BTreeMap<String, PodObservation>,
    /// Workloads still rolling out (StatefulSets whose pods are not all current and ready).
    pub rolling_out: Vec<String>,
    /// Problems found before status (missing Secret, missing connector target), as
    /// (reason, message) for the Degraded condition.
    pub problems: Vec<(String, String)>,
}

/// A role change or problem worth a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Normal or Warning.
    pub warning: bool,
    /// PascalCase, e.g. `FailedOver`.
    pub reason: String,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    pub status: BrokerGroupStatus,
    /// Pods whose `duomq.io/role` label must change, with the new value.
    pub role_labels: BTreeMap<String, String>,
    pub transitions: Vec<Transition>,
}

fn role_of(p: &PodObservation) -> Option<Role> {
    if !p.running || p.terminating {
        return None;
    }
    p.broker.as_ref().ok().map(|b| b.role)
}

fn member_state(p: Option<&PodObservation>) -> String {
    match p {
        None => "missing".into(),
        Some(p) if p.terminating => "terminating".into(),
        Some(p) if !p.running => "pending".into(),
        Some(p) => match &p.broker {
            Err(_) => "unreachable".into(),
            Ok(b) => match b.role {
                Role::Starting => "starting".into(),
                Role::Live => "live".into(),
                Role::Backup => "backup".into(),
                Role::Stopping => "stopping".into(),
            },
        },
    }
}

/// Sets a condition, keeping its transition time when its status did not change.
fn set_condition(out: &mut Vec<Condition>, previous: &[Condition], now: &Time, generation: Option<i64>, kind: &str, ok: bool, reason: &str, message: String) {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    out.push(Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    });
}

/// The new status of `v` from `seen`, given the previous status and the time now.
pub fn compute(v: &ValidatedBrokerGroup, generation: Option<i64>, seen: &Observation, previous: &BrokerGroupStatus, now: &Time) -> Computed {
    let mut groups = Vec::new();
    let mut role_labels = BTreeMap::new();
    let mut transitions = Vec::new();
    let mut without_live = Vec::new();
    let mut unreplicated = Vec::new();

    for g in &v.groups {
        let before = previous.groups.iter().find(|p| p.name == g.name);
        let lives: Vec<&str> = g
            .members
            .iter()
            .filter(|m| seen.pods.get(&m.pod).and_then(role_of) == Some(Role::Live))
            .map(|m| m.pod.as_str())
            .collect();
        // Two members answering live would be split brain; report it rather than pick one.
        if lives.len() > 1 {
            transitions.push(Transition {
                warning: true,
                reason: "SplitBrain".into(),
                note: format!("group {} has {} members reporting live: {}", g.name, lives.len(), lives.join(", ")),
            });
        }
        let live = lives.first().map(|s| s.to_string());

        // The preferred live: the first member, or in a host-pair layout the one scheduled on
        // the group's primary node.
        let preferred_live = g
            .primary_node
            .as_ref()
            .and_then(|node| g.members.iter().find(|m| seen.pods.get(&m.pod).and_then(|p| p.node.as_ref()) == Some(node)))
            .map(|m| m.pod.clone())
            .unwrap_or_else(|| g.preferred_live.clone());

        let live_status = live.as_ref().and_then(|l| seen.pods.get(l)).and_then(|p| p.broker.as_ref().ok());
        let epoch = live_status
            .and_then(|b| b.ha.as_ref().map(|h| h.epoch))
            .or_else(|| before.map(|b| b.epoch as u64))
            .unwrap_or(0);

        let mut backups = Vec::new();
        for m in &g.members {
            if Some(&m.pod) == live.as_ref() {
                continue;
            }
            let pod = seen.pods.get(&m.pod);
            let (synced, lag) = match pod.and_then(|p| p.broker.as_ref().ok()).and_then(|b| b.ha.as_ref()) {
                Some(ha) => match &ha.sync {
                    Some(s) => (s.state == SyncState::Synced, s.lag_bytes),
                    // A shared-store slave has nothing to copy: it is in sync by construction.
                    None => (v.is_shared_store() && pod.and_then(role_of) == Some(Role::Backup), 0),
                },
                None => (false, 0),
            };
            backups.push(MemberStatus { pod: m.pod.clone(), state: member_state(pod), synced, lag: lag as i64 });
        }

        let mut failovers = before.map(|b| b.failovers).unwrap_or(0);
        let mut last_failover = before.and_then(|b| b.last_failover.clone());
        if let (Some(from), Some(to)) = (before.and_then(|b| b.live.clone()), live.clone()) {
            if from != to {
                let reason = if to == preferred_live { FailoverReason::Failback } else { FailoverReason::LiveLost };
                failovers += 1;
                transitions.push(Transition {
                    warning: reason == FailoverReason::LiveLost,
                    reason: if reason == FailoverReason::Failback { "FailedBack".into() } else { "FailedOver".into() },
                    note: format!("group {}: live moved from {from} to {to} ({reason:?})", g.name),
                });
                last_failover = Some(FailoverRecord { time: now.clone(), from, to, reason });
            }
        }
        if live.is_none() {
            without_live.push(g.name.clone());
            if before.and_then(|b| b.live.as_ref()).is_some() {
                transitions.push(Transition {
                    warning: true,
                    reason: "LiveLost".into(),
                    note: format!("group {} has no live broker", g.name),
                });
            }
        }
        if !backups.iter().any(|b| b.synced) {
            unreplicated.push(g.name.clone());
        }

        for m in &g.members {
            let Some(pod) = seen.pods.get(&m.pod) else { continue };
            let want = if Some(&m.pod) == live.as_ref() { names::ROLE_LIVE } else { names::ROLE_BACKUP };
            if pod.running && !pod.terminating && pod.role_label.as_deref() != Some(want) {
                role_labels.insert(m.pod.clone(), want.to_string());
            }
        }

        groups.push(GroupStatus {
            name: g.name.clone(),
            live,
            preferred_live,
            backups,
            epoch: epoch as i64,
            failovers,
            last_failover,
        });
    }

    let total = v.groups.len();
    let live_count = total - without_live.len();
    let mut conditions = Vec::new();
    let prev = &previous.conditions;
    set_condition(
        &mut conditions,
        prev,
        now,
        generation,
        condition::AVAILABLE,
        without_live.is_empty(),
        if without_live.is_empty() { "AllGroupsLive" } else { "GroupsWithoutLive" },
        if without_live.is_empty() {
            format!("every group ({total}) has a live broker serving clients")
        } else {
            format!("no live broker in: {}", without_live.join(", "))
        },
    );
    set_condition(
        &mut conditions,
        prev,
        now,
        generation,
        condition::REPLICATED,
        unreplicated.is_empty(),
        if unreplicated.is_empty() { "AllGroupsReplicated" } else { "BackupsNotInSync" },
        if unreplicated.is_empty() {
            "every group has a backup in sync with its live".into()
        } else {
            format!("no backup in sync in: {}", unreplicated.join(", "))
        },
    );
    let starting: Vec<&String> = seen
        .pods
        .iter()
        .filter(|(_, p)| !p.running || matches!(p.broker.as_ref().map(|b| b.role), Ok(Role::Starting) | Err(_)))
        .map(|(name, _)| name)
        .collect();
    let missing = v.groups.iter().flat_map(|g| &g.members).filter(|m| !seen.pods.contains_key(&m.pod)).count();
    let progressing = !seen.rolling_out.is_empty() || !starting.is_empty() || missing > 0;
    set_condition(
        &mut conditions,
        prev,
        now,
        generation,
        condition::PROGRESSING,
        progressing,
        if progressing { "MembersStarting" } else { "Stable" },
        if progressing {
            let mut parts = Vec::new();
            if !seen.rolling_out.is_empty() {
                parts.push(format!("rolling out: {}", seen.rolling_out.join(", ")));
            }
            if missing > 0 {
                parts.push(format!("{missing} member pod(s) not created yet"));
            }
            if !starting.is_empty() {
                parts.push(format!("starting: {}", starting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
            }
            parts.join("; ")
        } else {
            "every member runs the current spec".into()
        },
    );
    let (degraded, reason, message) = match seen.problems.first() {
        Some((reason, message)) => (true, reason.clone(), message.clone()),
        None if !without_live.is_empty() && !progressing => {
            (true, "GroupsWithoutLive".to_string(), format!("no live broker in: {}", without_live.join(", ")))
        }
        None => (false, "AsExpected".to_string(), "nothing needs attention".to_string()),
    };
    set_condition(&mut conditions, prev, now, generation, condition::DEGRADED, degraded, &reason, message);

    let failovers = groups.iter().map(|g| g.failovers).sum();
    Computed {
        status: BrokerGroupStatus {
            observed_generation: generation,
            conditions,
            live: Some(format!("{live_count}/{total}")),
            failovers,
            groups,
        },
        role_labels,
        transitions,
    }
}
