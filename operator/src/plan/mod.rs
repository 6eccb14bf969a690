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

use std::collections::{BTreeMap, BTreeSet};

use duomq_broker::admin::api::{DrainState, DrainStatus, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{ArbiterSpec, BrokerGroupStatus, FailoverReason, HaMode, PendingSwitchover};
use crate::status::reason::{Problem, Reason, Transition};
use crate::status::{
    lives_of, pending_switchover, preferred_live, role_of as role, Observation, PodObservation,
};
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

/// Empty the holder of `group`'s Lease: `holder` is known dead (fast failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRelease {
    pub group: String,
    pub holder: String,
}

/// Fence (or unfence) a member through its admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceStep {
    pub group: String,
    pub pod: String,
    pub fenced: bool,
    /// A shared-store live: it cannot hand over first, so it is fenced as if it crashed
    /// and its slave takes the store.
    pub force: bool,
}

/// Ask a removed group's live to move its messages to the `targets` groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainStep {
    pub group: String,
    pub live: String,
    pub targets: Vec<String>,
}

/// Delete an object this BrokerGroup owns: one the spec no longer renders, or the
/// StatefulSet of a group that is drained. (A StatefulSet recreated around grown claims is
/// deleted by its [`Resize`], with Orphan propagation.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub kind: String,
    pub name: String,
}

/// Grow the journal claims of `group` to `size`, then recreate its StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resize {
    pub group: String,
    pub claims: Vec<String>,
    pub size: String,
}

/// Every action of one reconcile, decided from the validated spec, the observation and the
/// previous status. `crate::controller` carries it out in this order: lease releases,
/// removals, resizes, pod deletions, switchovers, fences, drains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub lease_releases: Vec<LeaseRelease>,
    pub removals: Vec<Removal>,
    pub resizes: Vec<Resize>,
    /// At most one: a group never has two members down at once.
    pub deletions: Vec<PodDeletion>,
    pub switchovers: Vec<SwitchoverStep>,
    pub fences: Vec<FenceStep>,
    pub drains: Vec<DrainStep>,
    /// Annotation entries (by group) that are done: their pod is live.
    pub done: Vec<String>,
    /// Annotation entries left as they are, by group.
    pub requests_left: BTreeMap<String, String>,
    /// For the Degraded condition.
    pub problems: Vec<Problem>,
    /// What the rolling upgrade is doing or waiting for, for the Progressing condition.
    pub upgrade: Option<String>,
}

/// What carrying out a [`Plan`] did: the status is computed from it and the observation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Leases released, by group, with the holder that was dead.
    pub released: BTreeMap<String, String>,
    /// Switchovers the live agreed to, by group.
    pub switchovers: BTreeMap<String, PendingSwitchover>,
    /// Drain progress as the draining lives answered, by group.
    pub drains: BTreeMap<String, DrainStatus>,
    /// Members fenced (true) or unfenced (false) as they answered.
    pub fences: BTreeMap<String, bool>,
    /// Steps that failed, for the Degraded condition.
    pub problems: Vec<Problem>,
    /// What was done, for Events.
    pub transitions: Vec<Transition>,
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
    // None or split brain: nobody to ask.
    match lives_of(g, seen).as_slice() {
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

/// What the plan reads besides the validated spec and the observation.
pub struct PlanInputs<'a> {
    /// The `duomq.io/switchover` annotation's text.
    pub annotation: Option<&'a str>,
    /// The status as last written.
    pub previous: &'a BrokerGroupStatus,
    /// (kind, name) of every object rendered for the current spec.
    pub rendered: &'a BTreeSet<(String, String)>,
    pub now: &'a Time,
}

/// The plan for `v` given what was observed and `inputs`.
pub fn plan(v: &ValidatedBrokerGroup, seen: &Observation, inputs: &PlanInputs<'_>) -> Plan {
    let mut plan = Plan::default();
    let previous = inputs.previous;
    let requests = match inputs.annotation.map(parse_requests).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(why) => {
            plan.problems.push(Problem::new(
                Reason::SwitchoverFailed,
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
        plan.problems.push(Problem::new(
            Reason::SwitchoverFailed,
            format!("switchover: {group} is not a group of {}", v.name),
        ));
    }
    plan.lease_releases = lease_releases(v, seen);
    plan.removals = removals(v, seen, inputs.rendered);
    plan.resizes = resizes(v, seen, &mut plan.problems);
    let mut upgrading = false;
    for g in &v.groups {
        let live = live_of(g, seen);
        let before = previous.groups.iter().find(|p| p.name == g.name);
        // A hand-over that already shows (its target is live) is done, whatever the
        // previous status still says.
        let pending = pending_switchover(None, before, inputs.now)
            .filter(|p| live.as_deref() != Some(p.to.as_str()));
        fences(v, g, seen, live.as_deref(), &mut plan);
        if g.draining {
            drain(v, g, seen, live.as_deref(), &mut plan);
            // A group being removed is neither upgraded nor switched over: it only drains.
            continue;
        }
        let still_draining = live
            .as_ref()
            .and_then(|l| seen.pods.get(l))
            .and_then(|p| p.broker.as_ref().ok())
            .is_some_and(|b| b.drain.is_some());
        if let (true, Some(live)) = (still_draining, &live) {
            // Scaled back up during a drain: a broker does not undo a drain.
            plan.problems.push(Problem::new(
                Reason::DrainStuck,
                format!("group {} is in the spec again but its live {live} still drains from the earlier scale-down and refuses clients: delete pod {live}; an in-sync backup takes over and serves", g.name),
            ));
        }
        // A group that is not settled enough to upgrade waits, and so do the groups after it.
        let step = if upgrading || v.hibernate {
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
                plan.problems.push(Problem::new(
                    Reason::SwitchoverFailed,
                    format!(
                        "switchover: {to} is not a member of {} ({})",
                        g.name,
                        members.join(", ")
                    ),
                ));
            } else if live.as_deref() == Some(to.as_str()) {
                plan.done.push(g.name.clone());
                plan.requests_left.remove(&g.name);
            } else if pending.as_ref().is_some_and(|p| &p.to == to) {
                // The live agreed and is handing over: between its letting go and the
                // target taking over there is no live for a moment. Wait for it to show.
            } else if v.spec.ha.mode == HaMode::SharedStore {
                plan.problems.push(Problem::new(
                    Reason::SwitchoverFailed,
                    format!("switchover: {} is a shared-store group; its live keeps the store's lock until it stops", g.name),
                ));
            } else if v.spec.ha.mode == HaMode::SharedDatabase {
                plan.problems.push(Problem::new(
                    Reason::SwitchoverFailed,
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
                plan.problems.push(Problem::new(
                    Reason::SwitchoverFailed,
                    format!("switchover: {} has no live to hand over", g.name),
                ));
            }
            // An explicit request goes first; the upgrade and failback wait for it.
            continue;
        }
        if pending.is_some() {
            // A hand-over under way: nothing else moves the role until it shows.
            continue;
        }
        if plan.switchovers.iter().any(|s| s.group == g.name) {
            // Fencing the live hands its role over first.
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
        let chosen = before
            .and_then(|p| p.last_failover.as_ref())
            .is_some_and(|f| {
                f.reason == FailoverReason::Switchover && Some(&f.to) == live.as_ref()
            });
        if let Some(step) = failback(v, g, seen, live.as_deref())
            .filter(|s| !chosen && !v.fenced.contains(&s.to))
        {
            plan.switchovers.push(step);
        }
    }
    plan
}

/// Fast failover: the Leases whose holder the operator knows is dead (its pod is gone, or
/// its broker container is not running), so their claim can be released for an in-sync
/// backup at once instead of waiting for it to expire. A holder whose container runs is
/// never released: it might still be serving. Not while hibernating: every live stops on
/// purpose and releases its own claim.
pub(crate) fn lease_releases(v: &ValidatedBrokerGroup, seen: &Observation) -> Vec<LeaseRelease> {
    if v.hibernate {
        return Vec::new();
    }
    v.groups
        .iter()
        .filter_map(|g| {
            let holder = seen.leases.get(&g.name)?.holder.clone()?;
            let dead = match seen.pods.get(&holder) {
                None => true,
                Some(p) => !p.running,
            };
            dead.then(|| LeaseRelease {
                group: g.name.clone(),
                holder,
            })
        })
        .collect()
}

/// Owned objects the spec no longer renders, and the StatefulSet of each drained group.
/// Claims are never deleted: a removed group's journal volumes are kept (delete them by
/// hand once sure), and a group is only removed once its live reports it drained.
fn removals(
    v: &ValidatedBrokerGroup,
    seen: &Observation,
    rendered: &BTreeSet<(String, String)>,
) -> Vec<Removal> {
    let mut out: Vec<Removal> = seen
        .owned
        .iter()
        .filter(|o| o.kind != "PersistentVolumeClaim")
        .filter(|o| !rendered.contains(&(o.kind.clone(), o.name.clone())))
        .map(|o| Removal {
            kind: o.kind.clone(),
            name: o.name.clone(),
        })
        .collect();
    for g in v.groups.iter().filter(|g| g.draining) {
        let drained = live_of(g, seen)
            .and_then(|live| seen.pods.get(&live))
            .and_then(|p| p.broker.as_ref().ok())
            .and_then(|b| b.drain.as_ref())
            .is_some_and(|d| d.state == DrainState::Drained && d.messages_left == 0);
        if drained {
            out.push(Removal {
                kind: "StatefulSet".into(),
                name: g.name.clone(),
                });
        }
    }
    out
}

/// Groups whose StatefulSet asks for a smaller journal claim than `storage.size`: grow
/// their members' claims (the storage class must allow expansion), then recreate the
/// StatefulSet around the running pods with the new size. Sizes compare as quantities
/// (`2048Mi` is `2Gi`); a smaller `storage.size` is a problem, since claims never shrink.
fn resizes(v: &ValidatedBrokerGroup, seen: &Observation, problems: &mut Vec<Problem>) -> Vec<Resize> {
    if v.is_shared_store() {
        return Vec::new();
    }
    let wanted = crate::quantity::bytes(&v.spec.storage.size);
    v.groups
        .iter()
        .filter(|g| match (crate::quantity::bytes(&g.journal_size), wanted) {
            (Some(has), Some(want)) if want < has => {
                problems.push(Problem::new(
                    Reason::VolumeExpansionRefused,
                    format!("group {}: storage.size {} is smaller than its journal claims ({}); claims never shrink: set storage.size back to {} or more", g.name, v.spec.storage.size, g.journal_size, g.journal_size),
                ));
                false
            }
            (Some(has), Some(want)) => want > has,
            _ => g.journal_size != v.spec.storage.size,
        })
        .filter(|g| seen.owned.iter().any(|o| o.kind == "StatefulSet" && o.name == g.name))
        .map(|g| Resize {
            group: g.name.clone(),
            claims: g
                .members
                .iter()
                .map(|m| crate::names::journal_claim(&m.pod))
                .collect(),
            size: v.spec.storage.size.clone(),
        })
        .collect()
}

/// Fence the members listed in the annotation (a live first hands its role to an
/// in-sync backup), unfence those no longer listed.
fn fences(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    seen: &Observation,
    live: Option<&str>,
    plan: &mut Plan,
) {
    for m in &g.members {
        let Some(pod) = seen.pods.get(&m.pod).filter(|p| p.running && !p.terminating) else {
            continue;
        };
        let Ok(broker) = &pod.broker else { continue };
        let wanted = v.fenced.contains(&m.pod);
        if wanted == broker.admin_fenced {
            continue;
        }
        if !wanted {
            plan.fences.push(FenceStep {
                group: g.name.clone(),
                pod: m.pod.clone(),
                fenced: false,
                force: false,
            });
            continue;
        }
        if live != Some(m.pod.as_str()) {
            plan.fences.push(FenceStep {
                group: g.name.clone(),
                pod: m.pod.clone(),
                fenced: true,
                force: false,
            });
            continue;
        }
        if v.is_shared_store() {
            // Nothing to hand over: the slave takes the store once the live lets go.
            plan.fences.push(FenceStep {
                group: g.name.clone(),
                pod: m.pod.clone(),
                fenced: true,
                force: true,
            });
            continue;
        }
        let target = g
            .members
            .iter()
            .map(|o| o.pod.as_str())
            .find(|o| {
                *o != m.pod
                    && !v.fenced.contains(*o)
                    && role(seen.pods.get(*o).unwrap_or(pod)) == Some(Role::Backup)
                    && in_service(seen.pods.get(*o), false)
            });
        match target {
            Some(to) => plan.switchovers.push(SwitchoverStep {
                group: g.name.clone(),
                from: m.pod.clone(),
                to: to.to_string(),
                reason: FailoverReason::Fence,
            }),
            None => plan.problems.push(Problem::new(
                Reason::FenceFailed,
                format!(
                    "cannot fence {}: it is the live of {} and no unfenced backup is in sync to take its role; it keeps serving",
                    m.pod, g.name
                ),
            )),
        }
    }
}

/// Ask a removed group's live to drain, unless it already drains into the right groups.
fn drain(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    seen: &Observation,
    live: Option<&str>,
    plan: &mut Plan,
) {
    let Some(live) = live else { return };
    let targets: Vec<String> = v
        .groups
        .iter()
        .filter(|o| !o.draining)
        .map(|o| o.name.clone())
        .collect();
    let asked = seen
        .pods
        .get(live)
        .and_then(|p| p.broker.as_ref().ok())
        .and_then(|b| b.drain.as_ref())
        .is_some_and(|d| d.targets == targets);
    if !asked {
        plan.drains.push(DrainStep {
            group: g.name.clone(),
            live: live.to_string(),
            targets,
        });
    }
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
