//! Role changes the operator drives, decided from one observation: switchovers asked for
//! with the `duomq.io/switchover` annotation, failback to the preferred live, and the
//! order of a rolling upgrade (CloudNativePG's: backups first, then a switchover to an
//! updated backup, then the former live). Pure: the controller carries the plan out.
//!
//! Failback under the `kubernetes` arbiter is the operator's, not the brokers': the
//! operator renders `allowFailback: false` into their config and switches over to the
//! preferred live itself. Only it knows that a rolling upgrade is moving the live role on
//! purpose (a broker asking for failback would take the role back onto a member about to
//! be restarted), and it waits until the preferred member is running and in sync.

use std::collections::BTreeMap;

use duomq_broker::admin::api::Role;

use crate::api::{ArbiterSpec, BrokerGroupStatus, FailoverReason, HaMode};
use crate::status::{preferred_live, role_of as role, Observation, PodObservation};
use crate::validate::{GroupModel, ValidatedBrokerGroup};

/// Ask `from`, the live of `group`, to hand its role to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverStep {
    pub group: String,
    pub from: String,
    pub to: String,
    pub reason: FailoverReason,
}

/// Delete `pod` so its StatefulSet recreates it from the update revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDeletion {
    pub group: String,
    pub pod: String,
    pub revision: String,
    pub update_revision: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub switchovers: Vec<SwitchoverStep>,
    /// At most one: a group never has two members down at once.
    pub deletions: Vec<PodDeletion>,
    /// Annotation entries (by group) that are done: their pod is live.
    pub done: Vec<String>,
    /// Annotation entries left as they are, by group.
    pub requests_left: BTreeMap<String, String>,
    /// (reason, message) for the Degraded condition.
    pub problems: Vec<(String, String)>,
    /// What the rolling upgrade is doing or waiting for, for the Progressing condition.
    pub upgrade: Option<String>,
}

/// Parses the annotation: `<group>=<pod>` entries separated by commas.
pub fn parse_requests(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut requests = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((group, pod)) if !group.trim().is_empty() && !pod.trim().is_empty() => {
                requests.insert(group.trim().to_string(), pod.trim().to_string());
            }
            _ => return Err(format!("{entry:?} is not <group>=<pod>")),
        }
    }
    Ok(requests)
}

/// Writes requests back in the annotation's format; `None` when none are left.
pub fn format_requests(requests: &BTreeMap<String, String>) -> Option<String> {
    (!requests.is_empty()).then(|| {
        requests
            .iter()
            .map(|(g, p)| format!("{g}={p}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The annotation's new text with a switchover of `group` to `pod` added (replacing any
/// earlier request for that group), after checking both against the BrokerGroup's groups.
pub fn with_request(
    groups: &[GroupModel],
    current: Option<&str>,
    group: &str,
    pod: &str,
) -> Result<String, String> {
    let g = groups.iter().find(|g| g.name == group).ok_or_else(|| {
        format!(
            "{group} is not a group of this BrokerGroup (groups: {})",
            groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if !g.members.iter().any(|m| m.pod == pod) {
        let members: Vec<&str> = g.members.iter().map(|m| m.pod.as_str()).collect();
        return Err(format!(
            "{pod} is not a member of {group} (members: {})",
            members.join(", ")
        ));
    }
    // A garbled annotation is replaced rather than kept.
    let mut requests = current
        .and_then(|text| parse_requests(text).ok())
        .unwrap_or_default();
    requests.insert(group.to_string(), pod.to_string());
    Ok(format_requests(&requests).unwrap_or_default())
}

/// Running and doing its job: the live, or a backup that could take over at once.
fn in_service(p: Option<&PodObservation>, shared_store: bool) -> bool {
    let Some(p) = p else { return false };
    match role(p) {
        Some(Role::Live) => true,
        Some(Role::Backup) => {
            (shared_store && crate::status::database::reaches_database(p))
                || p.broker
                    .as_ref()
                    .ok()
                    .and_then(|b| b.ha.as_ref())
                    .and_then(|h| h.sync.as_ref())
                    .is_some_and(|s| s.state == duomq_broker::admin::api::SyncState::Synced)
        }
        _ => false,
    }
}

fn live_of(g: &GroupModel, seen: &Observation) -> Option<String> {
    let lives: Vec<&str> = g
        .members
        .iter()
        .filter(|m| seen.pods.get(&m.pod).and_then(role) == Some(Role::Live))
        .map(|m| m.pod.as_str())
        .collect();
    // None or split brain: nobody to ask.
    match lives.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// What a rolling upgrade does next in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpgradeStep {
    /// Every member runs the update revision (or it is not known yet).
    Done,
    Wait(String),
    Delete(PodDeletion),
    SwitchoverTo(String),
}

fn upgrade_step(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    seen: &Observation,
    live: Option<&str>,
) -> UpgradeStep {
    let Some(update) = seen.update_revisions.get(&g.name) else {
        return UpgradeStep::Done;
    };
    let revision = |pod: &str| seen.pods.get(pod).and_then(|p| p.revision.clone());
    let outdated: Vec<&str> = g
        .members
        .iter()
        .map(|m| m.pod.as_str())
        .filter(|pod| revision(pod).is_some_and(|r| &r != update))
        .collect();
    if outdated.is_empty() {
        return UpgradeStep::Done;
    }
    let shared_store = v.is_shared_store();
    let down: Vec<&str> = g
        .members
        .iter()
        .map(|m| m.pod.as_str())
        .filter(|pod| !in_service(seen.pods.get(*pod), shared_store))
        .collect();
    let delete = |pod: &str| {
        UpgradeStep::Delete(PodDeletion {
            group: g.name.clone(),
            pod: pod.to_string(),
            revision: revision(pod).unwrap_or_default(),
            update_revision: update.clone(),
        })
    };
    match down.as_slice() {
        [] => {}
        // Already out of service and still on the old revision: replacing it takes nothing
        // more down (unless it is still going away).
        [one] if outdated.contains(one) && Some(*one) != live => {
            return match seen.pods.get(*one) {
                Some(p) if !p.terminating => delete(one),
                _ => UpgradeStep::Wait(format!("waiting for {one} to come back")),
            };
        }
        [one] => return UpgradeStep::Wait(format!("waiting for {one} to be back and in sync")),
        many => {
            return UpgradeStep::Wait(format!(
                "{} are not in service; never two members of a group down",
                many.join(", ")
            ))
        }
    }
    // Backups first, in ordinal order.
    if let Some(backup) = outdated.iter().find(|pod| Some(**pod) != live) {
        return delete(backup);
    }
    let Some(live) = live else {
        return UpgradeStep::Wait("waiting for a live".into());
    };
    if shared_store {
        // The slave takes the store's lock when the live stops: nothing to hand over.
        return delete(live);
    }
    // Only the live is left: hand its role to an updated backup, the preferred one if it
    // is updated.
    let preferred = preferred_live(g, seen);
    let updated: Vec<&str> = g
        .members
        .iter()
        .map(|m| m.pod.as_str())
        .filter(|pod| *pod != live)
        .collect();
    let target = updated
        .iter()
        .find(|pod| **pod == preferred)
        .or(updated.first());
    match target {
        Some(to) => UpgradeStep::SwitchoverTo(to.to_string()),
        None => delete(live),
    }
}

/// The plan for `v` given what was observed, the annotation's text and the previous status.
pub fn plan(
    v: &ValidatedBrokerGroup,
    seen: &Observation,
    annotation: Option<&str>,
    previous: &BrokerGroupStatus,
) -> Plan {
    let mut plan = Plan::default();
    let requests = match annotation.map(parse_requests).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(why) => {
            plan.problems.push((
                "SwitchoverFailed".into(),
                format!("annotation {}: {why}", crate::names::SWITCHOVER_ANNOTATION),
            ));
            BTreeMap::new()
        }
    };
    plan.requests_left = requests.clone();
    for group in requests
        .keys()
        .filter(|g| !v.groups.iter().any(|m| &m.name == *g))
    {
        plan.problems.push((
            "SwitchoverFailed".into(),
            format!("switchover: {group} is not a group of {}", v.name),
        ));
    }
    let mut upgrading = false;
    for g in &v.groups {
        let live = live_of(g, seen);
        // A group that is not settled enough to upgrade waits, and so do the groups after it.
        let step = if upgrading {
            UpgradeStep::Done
        } else {
            upgrade_step(v, g, seen, live.as_deref())
        };
        if step != UpgradeStep::Done {
            upgrading = true;
        }
        if let Some(to) = requests.get(&g.name) {
            if !g.members.iter().any(|m| &m.pod == to) {
                let members: Vec<&str> = g.members.iter().map(|m| m.pod.as_str()).collect();
                plan.problems.push((
                    "SwitchoverFailed".into(),
                    format!(
                        "switchover: {to} is not a member of {} ({})",
                        g.name,
                        members.join(", ")
                    ),
                ));
            } else if live.as_deref() == Some(to.as_str()) {
                plan.done.push(g.name.clone());
                plan.requests_left.remove(&g.name);
            } else if v.spec.ha.mode == HaMode::SharedStore {
                plan.problems.push((
                    "SwitchoverFailed".into(),
                    format!("switchover: {} is a shared-store group; its live keeps the store's lock until it stops", g.name),
                ));
            } else if v.spec.ha.mode == HaMode::SharedDatabase {
                plan.problems.push((
                    "SwitchoverFailed".into(),
                    format!("switchover: {} is a shared-database group; its live keeps the database lease until it stops", g.name),
                ));
            } else if let Some(from) = &live {
                plan.switchovers.push(SwitchoverStep {
                    group: g.name.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    reason: FailoverReason::Switchover,
                });
            } else {
                plan.problems.push((
                    "SwitchoverFailed".into(),
                    format!("switchover: {} has no live to hand over", g.name),
                ));
            }
            // An explicit request goes first; the upgrade and failback wait for it.
            continue;
        }
        match step {
            UpgradeStep::Delete(d) => {
                plan.upgrade = Some(format!(
                    "rolling upgrade of {}: updating {} to {}",
                    g.name, d.pod, d.update_revision
                ));
                plan.deletions.push(d);
                continue;
            }
            UpgradeStep::SwitchoverTo(to) => {
                plan.upgrade = Some(format!(
                    "rolling upgrade of {}: moving the live role to {to} before updating the live",
                    g.name
                ));
                if let Some(from) = &live {
                    plan.switchovers.push(SwitchoverStep {
                        group: g.name.clone(),
                        from: from.clone(),
                        to,
                        reason: FailoverReason::RollingUpgrade,
                    });
                }
                continue;
            }
            UpgradeStep::Wait(why) => {
                plan.upgrade = Some(format!("rolling upgrade of {}: {why}", g.name));
                continue;
            }
            UpgradeStep::Done => {}
        }
        // A live someone chose with a switchover stays: failback undoes failovers only.
        let chosen = previous
            .groups
            .iter()
            .find(|p| p.name == g.name)
            .and_then(|p| p.last_failover.as_ref())
            .is_some_and(|f| {
                f.reason == FailoverReason::Switchover && Some(&f.to) == live.as_ref()
            });
        if let Some(step) = failback(v, g, seen, live.as_deref()).filter(|_| !chosen) {
            plan.switchovers.push(step);
        }
    }
    plan
}

/// With `allowFailback` under the `kubernetes` arbiter: hand the role back to the preferred
/// live once it runs as a synced backup (the caller skips a live chosen by a switchover).
fn failback(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    seen: &Observation,
    live: Option<&str>,
) -> Option<SwitchoverStep> {
    let spec = &v.spec.ha;
    if !spec.allow_failback
        || spec.mode != HaMode::Replication
        || spec.arbiter != ArbiterSpec::Kubernetes
    {
        return None;
    }
    let live = live?;
    let preferred = preferred_live(g, seen);
    let back = live != preferred
        && role(seen.pods.get(&preferred)?) == Some(Role::Backup)
        && in_service(seen.pods.get(&preferred), false);
    back.then(|| SwitchoverStep {
        group: g.name.clone(),
        from: live.to_string(),
        to: preferred,
        reason: FailoverReason::Failback,
    })
}

#[cfg(test)]
mod tests;
