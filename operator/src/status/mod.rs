//! Status computation: from the facts the operator observed (pods, each broker's `/status`,
//! Leases), what the plan decided and what carrying it out did, and the previous status, to
//! the BrokerGroup's new status, the role label each pod should carry, and the transitions
//! worth an Event. Pure: observation and action happen in the controller.
//!
//! Per group (`group_status`): who is live, its backups, failovers and switchovers counted
//! apart, a drain, fenced members; then the conditions over all groups (`conditions`).

pub mod database;
pub mod grouping;
pub mod network;
pub mod reason;

use std::collections::BTreeMap;

use duomq_broker::admin::api::{BrokerStatus, DrainState, Role, SyncState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    condition, BrokerGroupStatus, FailoverReason, FailoverRecord, GroupDrain, GroupStatus,
    MemberStatus, PendingSwitchover, TlsStatus,
};
use crate::names;
use crate::plan::{Outcome, Plan};
use crate::render::group_connectors;
use crate::validate::{GroupModel, ValidatedBrokerGroup};
use reason::{Problem, Reason, Transition};

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
    /// The pod's IP, where its admin endpoint answers.
    pub ip: Option<String>,
    /// The StatefulSet revision the pod was created from (`controller-revision-hash`).
    pub revision: Option<String>,
    /// The scheduler's message while the pod cannot be placed (`PodScheduled` False with
    /// reason `Unschedulable`).
    pub unschedulable: Option<String>,
    /// The pod was made with `spec.tls` (its template carries the certificate checksum):
    /// its admin API speaks HTTPS. A pod from before TLS was turned on speaks HTTP until
    /// the rolling upgrade replaces it.
    pub tls: bool,
}

/// A group's arbiter Lease as the operator saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseObservation {
    /// The member holding it (the live, or a dead live whose claim has not expired).
    pub holder: Option<String>,
    /// The member whose claim the operator released last (fast failover), if any.
    pub released_holder: Option<String>,
}

/// An object carrying this BrokerGroup's controller owner reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedObject {
    /// Kind, as `crate::controller` lists them (StatefulSet, Service, ...).
    pub kind: String,
    pub name: String,
}

/// The facts of one reconcile: what exists and what each broker says. Nothing decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub pods: BTreeMap<String, PodObservation>,
    /// Arbiter Leases by group name (replication with the kubernetes arbiter).
    pub leases: BTreeMap<String, LeaseObservation>,
    /// Workloads still rolling out (StatefulSets whose pods are not all current and ready).
    pub rolling_out: Vec<String>,
    /// Each group's StatefulSet `updateRevision`, once its controller has seen the current
    /// spec: pods of another revision are to be updated.
    pub update_revisions: BTreeMap<String, String>,
    /// Objects this BrokerGroup owns, by kind and name.
    pub owned: Vec<OwnedObject>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    pub status: BrokerGroupStatus,
    /// Pods whose `duomq.io/role` label must change, with the new value.
    pub role_labels: BTreeMap<String, String>,
    pub transitions: Vec<Transition>,
}

/// The role a running pod's broker reports; `None` for a pod that is not running, is
/// going away, or did not answer.
pub(crate) fn role_of(p: &PodObservation) -> Option<Role> {
    if !p.running || p.terminating {
        return None;
    }
    p.broker.as_ref().ok().map(|b| b.role)
}

/// The broker's `/status` of a pod that runs and answered.
fn broker_of(p: &PodObservation) -> Option<&BrokerStatus> {
    p.broker.as_ref().ok().filter(|_| p.running && !p.terminating)
}

fn member_state(p: Option<&PodObservation>) -> String {
    match p {
        None => "missing".into(),
        Some(p) if p.terminating => "terminating".into(),
        Some(p) if p.unschedulable.is_some() => "unschedulable".into(),
        Some(p) if !p.running => "pending".into(),
        Some(p) => match &p.broker {
            Err(_) => "unreachable".into(),
            Ok(b) => match b.role {
                Role::Starting => "starting".into(),
                Role::Live => "live".into(),
                Role::Backup => "backup".into(),
                Role::Stopping => "stopping".into(),
                Role::Fenced => "fenced".into(),
            },
        },
    }
}

/// Builds the conditions list, keeping a condition's transition time when its status did
/// not change.
struct Conditions<'a> {
    out: Vec<Condition>,
    previous: &'a [Condition],
    now: &'a Time,
    generation: Option<i64>,
}

impl Conditions<'_> {
    fn set(&mut self, kind: &str, on: bool, reason: &str, message: String) {
        let status = if on { "True" } else { "False" };
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now.clone());
        self.out.push(Condition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: self.generation,
        });
    }
}

/// The preferred live of a group: the first member, or in a host-pair layout the one
/// scheduled on the group's primary node.
pub fn preferred_live(g: &GroupModel, seen: &Observation) -> String {
    g.primary_node
        .as_ref()
        .and_then(|node| {
            g.members
                .iter()
                .find(|m| seen.pods.get(&m.pod).and_then(|p| p.node.as_ref()) == Some(node))
        })
        .map(|m| m.pod.clone())
        .unwrap_or_else(|| g.preferred_live.clone())
}

/// The members of `g` reporting live, in member order (two or more: split brain).
pub(crate) fn lives_of<'a>(g: &'a GroupModel, seen: &Observation) -> Vec<&'a str> {
    g.members
        .iter()
        .filter(|m| seen.pods.get(&m.pod).and_then(role_of) == Some(Role::Live))
        .map(|m| m.pod.as_str())
        .collect()
}

/// The name of the group that holds the LOCAL grouping handler, with `spec.grouping`.
fn local_grouping_group(v: &ValidatedBrokerGroup) -> Option<&str> {
    let index = usize::try_from(v.spec.grouping.as_ref()?.local_group).ok()?;
    v.groups.get(index).map(|g| g.name.as_str())
}

/// How long a switchover the live agreed to may take to show before the operator stops
/// waiting for it (the group then fails over as after a crash).
pub const SWITCHOVER_PENDING_FOR: i64 = 120;

/// A group's switchover under way: `agreed` in this reconcile, or recorded in the previous
/// status and not yet stale.
pub fn pending_switchover(
    agreed: Option<&PendingSwitchover>,
    before: Option<&GroupStatus>,
    now: &Time,
) -> Option<PendingSwitchover> {
    agreed
        .or_else(|| before.and_then(|b| b.switchover.as_ref()))
        .filter(|p| now.0.as_second() - p.time.0.as_second() <= SWITCHOVER_PENDING_FOR)
        .cloned()
}

/// A planned hand-over (counted as a switchover) rather than a failover.
fn planned(reason: FailoverReason) -> bool {
    !matches!(
        reason,
        FailoverReason::LiveLost | FailoverReason::OperatorFailover
    )
}

/// One group's part of the status, and what the rest of the computation needs of it.
struct GroupComputed<'a> {
    status: GroupStatus,
    live_status: Option<&'a BrokerStatus>,
    last_live: Option<String>,
    net: network::GroupNetwork,
    unreplicated: bool,
    problems: Vec<Problem>,
}

/// Everything the status is computed from.
pub struct Facts<'a> {
    pub seen: &'a Observation,
    pub plan: &'a Plan,
    pub outcome: &'a Outcome,
}

fn group_status<'a>(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    facts: &Facts<'a>,
    before: Option<&GroupStatus>,
    now: &Time,
    transitions: &mut Vec<Transition>,
    role_labels: &mut BTreeMap<String, String>,
) -> GroupComputed<'a> {
    let (seen, outcome) = (facts.seen, facts.outcome);
    let lives = lives_of(g, seen);
    // Two members answering live would be split brain; report it rather than pick one.
    if lives.len() > 1 {
        transitions.push(Transition::new(
            Reason::SplitBrain,
            format!(
                "group {} has {} members reporting live: {}",
                g.name,
                lives.len(),
                lives.join(", ")
            ),
        ));
    }
    let live = lives.first().map(|s| s.to_string());
    let preferred_live = preferred_live(g, seen);
    let live_status = live
        .as_ref()
        .and_then(|l| seen.pods.get(l))
        .and_then(|p| p.broker.as_ref().ok());
    let epoch = live_status
        .and_then(|b| b.ha.as_ref().map(|h| h.epoch))
        .or_else(|| before.map(|b| b.epoch as u64))
        .unwrap_or(0);

    let mut backups = Vec::new();
    for m in g.members.iter().filter(|m| Some(&m.pod) != live.as_ref()) {
        let pod = seen.pods.get(&m.pod);
        let (synced, lag) = match pod.and_then(broker_of).and_then(|b| b.ha.as_ref()) {
            Some(ha) => match &ha.sync {
                Some(s) => (s.state == SyncState::Synced, s.lag_bytes),
                // A shared-store slave has nothing to copy: it stands by as long as it
                // reaches the shared store (for a database, as far as it says).
                None => (
                    v.is_shared_store()
                        && pod.and_then(role_of) == Some(Role::Backup)
                        && pod.is_some_and(database::reaches_database),
                    0,
                ),
            },
            None => (false, 0),
        };
        backups.push(MemberStatus {
            pod: m.pod.clone(),
            state: member_state(pod),
            synced,
            lag: lag as i64,
        });
    }

    let mut failovers = before.map_or(0, |b| b.failovers);
    let mut switchovers = before.map_or(0, |b| b.switchovers);
    let mut last_failover = before.and_then(|b| b.last_failover.clone());
    let last_live = before.and_then(|b| b.live.clone().or_else(|| b.last_live.clone()));
    let mut pending = pending_switchover(outcome.switchovers.get(&g.name), before, now);
    let epoch_moved = before.is_some_and(|b| b.epoch > 0 && epoch > b.epoch as u64);
    match (last_live.clone(), live.clone()) {
        (Some(from), Some(to)) if from != to => {
            let released = outcome.released.get(&g.name) == Some(&from)
                || seen
                    .leases
                    .get(&g.name)
                    .and_then(|l| l.released_holder.as_ref())
                    == Some(&from);
            let asked = pending.as_ref().filter(|p| p.to == to).map(|p| p.reason);
            let reason = if let Some(reason) = asked {
                reason
            } else if to == preferred_live && !v.is_shared_store() {
                FailoverReason::Failback
            } else if released {
                FailoverReason::OperatorFailover
            } else {
                FailoverReason::LiveLost
            };
            if planned(reason) {
                switchovers += 1;
            } else {
                failovers += 1;
            }
            transitions.push(Transition::new(
                match reason {
                    FailoverReason::Failback => Reason::FailedBack,
                    FailoverReason::LiveLost | FailoverReason::OperatorFailover => {
                        Reason::FailedOver
                    }
                    _ => Reason::SwitchedOver,
                },
                format!("group {}: live moved from {from} to {to} ({reason:?})", g.name),
            ));
            last_failover = Some(FailoverRecord {
                time: now.clone(),
                from,
                to,
                reason,
            });
        }
        (Some(_), Some(to)) if epoch_moved && v.is_shared_store() => {
            // A shared store's lock or lease gets a new epoch whenever it is taken, also by
            // the member that held it: a live restarted in place (its claim had not run out
            // or its slave was slower), or one that fenced itself and took it again. Nobody
            // else was live: no failover, no failback, but its clients were cut off.
            transitions.push(Transition::new(
                Reason::LeaseRetaken,
                format!(
                    "group {}: {to} took the shared store again at epoch {epoch} (it restarted, or fenced itself and resumed); no other member was live",
                    g.name
                ),
            ));
        }
        (Some(_), Some(to)) if epoch_moved => {
            // The same live as last time, but the epoch moved: the role went away and came
            // back between two looks (a failover, then a failback). Each change of live
            // raises the epoch by one: the first was unplanned, the rest hand-overs.
            let changes = epoch - before.map_or(0, |b| b.epoch as u64);
            failovers += 1;
            switchovers += changes.saturating_sub(1) as i64;
            let other = g
                .members
                .iter()
                .map(|m| m.pod.clone())
                .find(|p| *p != to)
                .unwrap_or_default();
            transitions.push(Transition::new(
                Reason::FailedOver,
                format!(
                    "group {}: the live role left {to} and came back ({changes} changes of live)",
                    g.name
                ),
            ));
            last_failover = Some(FailoverRecord {
                time: now.clone(),
                from: other,
                to,
                reason: FailoverReason::Failback,
            });
        }
        _ => {}
    }
    if pending.as_ref().is_some_and(|p| live.as_ref() == Some(&p.to)) {
        pending = None;
    }
    let hibernating = v.hibernate;
    if live.is_none()
        && before.and_then(|b| b.live.as_ref()).is_some()
        && pending.is_none()
        && !hibernating
    {
        // During a hand-over the old live has let go and the new one not yet taken over;
        // that is the switchover working, not a lost live.
        transitions.push(Transition::new(
            Reason::LiveLost,
            format!("group {} has no live broker", g.name),
        ));
    }

    let draining = g.draining;
    for m in &g.members {
        let Some(pod) = seen.pods.get(&m.pod) else {
            continue;
        };
        let want = if Some(&m.pod) != live.as_ref() {
            names::ROLE_BACKUP
        } else if draining {
            // Out of the client Service: a draining live takes no new clients.
            names::ROLE_DRAINING
        } else {
            names::ROLE_LIVE
        };
        if pod.running && !pod.terminating && pod.role_label.as_deref() != Some(want) {
            role_labels.insert(m.pod.clone(), want.to_string());
        }
    }

    let expected: Vec<String> = group_connectors(v, g).into_iter().map(|c| c.name).collect();
    let net = network::group_network(
        &expected,
        live_status,
        before.map_or(&[][..], |b| &b.unlinked_connectors),
    );
    for u in &net.unlinked {
        if !before.is_some_and(|b| b.unlinked_connectors.contains(&u.connector)) {
            transitions.push(Transition::new(
                Reason::ConnectorUnlinked,
                network::unlinked_note(&g.name, u),
            ));
        }
    }
    for name in &net.relinked {
        transitions.push(Transition::new(
            Reason::ConnectorLinked,
            format!("group {}: connector {name} is linked again", g.name),
        ));
    }

    let mut problems = Vec::new();
    let no_database = database::unreachable(g, |p| seen.pods.get(p));
    transitions.extend(database::transitions(
        &g.name,
        &no_database,
        before.map_or(&[][..], |b| &b.database_unreachable),
        |p| seen.pods.get(p),
    ));
    if !no_database.is_empty() {
        problems.push(Problem::new(
            Reason::DatabaseUnreachable,
            database::message(&g.name, &no_database),
        ));
    }

    let fenced: Vec<String> = g
        .members
        .iter()
        .filter(|m| {
            outcome.fences.get(&m.pod).copied().unwrap_or_else(|| {
                seen.pods
                    .get(&m.pod)
                    .and_then(broker_of)
                    .is_some_and(|b| b.admin_fenced)
            })
        })
        .map(|m| m.pod.clone())
        .collect();

    let drain = draining.then(|| {
        let report = outcome
            .drains
            .get(&g.name)
            .or_else(|| live_status.and_then(|b| b.drain.as_ref()));
        let stuck = match report {
            Some(d) if d.state == DrainState::Stuck => Some(
                d.reason
                    .clone()
                    .unwrap_or_else(|| "no bridge to a remaining group is linked".into()),
            ),
            None if live.is_none() => Some(if v.hibernate {
                "the BrokerGroup is hibernated: resume it so the group can drain".into()
            } else {
                "the group has no live broker to drain it".into()
            }),
            _ => None,
        };
        GroupDrain {
            since: before
                .and_then(|b| b.drain.as_ref())
                .map_or_else(|| now.clone(), |d| d.since.clone()),
            messages_left: report.map(|d| d.messages_left as i64),
            forwarded: report.map_or(0, |d| d.forwarded as i64),
            stuck,
        }
    });
    if let Some(stuck) = drain.as_ref().and_then(|d| d.stuck.as_ref()) {
        problems.push(Problem::new(
            Reason::DrainStuck,
            format!(
                "group {} is being removed but cannot drain: {stuck}; it is kept, with its messages, until it can",
                g.name
            ),
        ));
    }

    let unreplicated = !backups.iter().any(|b| b.synced);
    GroupComputed {
        status: GroupStatus {
            database_unreachable: no_database.into_iter().map(|u| u.pod).collect(),
            connectors: net.connectors as i64,
            connectors_linked: net.linked as i64,
            unlinked_connectors: net.unlinked.iter().map(|u| u.connector.clone()).collect(),
            name: g.name.clone(),
            last_live: live.clone().or(last_live.clone()),
            live,
            preferred_live,
            backups,
            epoch: epoch as i64,
            failovers,
            switchovers,
            fenced,
            drain,
            last_failover,
            switchover: pending,
        },
        live_status,
        last_live,
        net,
        unreplicated,
        problems,
    }
}

/// Pods that cannot be scheduled, as one problem naming them and the scheduler's reason.
fn unschedulable(v: &ValidatedBrokerGroup, seen: &Observation) -> Option<Problem> {
    let stuck: Vec<String> = v
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .filter_map(|m| {
            let why = seen.pods.get(&m.pod)?.unschedulable.as_ref()?;
            Some(format!("{} ({why})", m.pod))
        })
        .collect();
    (!stuck.is_empty()).then(|| {
        Problem::new(
            Reason::PodsUnschedulable,
            format!(
                "member pods cannot be scheduled: {}; check the layout's nodes, resources and tolerations",
                stuck.join("; ")
            ),
        )
    })
}

/// Problems worth a Warning event the first time they show: those nothing else announces
/// (a lost live or a connector has its own transition), unless the previous Degraded
/// condition already said so.
fn problem_transitions(problems: &[Problem], previous: &[Condition]) -> Vec<Transition> {
    let said = |p: &Problem| {
        previous.iter().any(|c| {
            c.type_ == condition::DEGRADED
                && c.status == "True"
                && c.reason == p.reason.as_str()
                && c.message == p.message
        })
    };
    problems
        .iter()
        .filter(|p| {
            matches!(
                p.reason,
                Reason::DatabaseSecretMissing
                    | Reason::PodsUnschedulable
                    | Reason::DrainStuck
                    | Reason::InvalidAnnotation
                    | Reason::SwitchoverFailed
                    | Reason::FenceFailed
                    | Reason::VolumeExpansionRefused
                    | Reason::ConnectorTlsMismatch
            ) && !said(p)
        })
        .map(|p| Transition::new(p.reason, p.message.clone()))
        .collect()
}

/// The new status of `v` from `facts`, given the previous status and the time now.
pub fn compute(
    v: &ValidatedBrokerGroup,
    generation: Option<i64>,
    facts: &Facts<'_>,
    previous: &BrokerGroupStatus,
    now: &Time,
) -> Computed {
    let seen = facts.seen;
    let mut role_labels = BTreeMap::new();
    let mut transitions = facts.outcome.transitions.clone();
    transitions.extend(v.certificates.iter().filter_map(|c| c.issued.clone()));
    let computed: Vec<GroupComputed<'_>> = v
        .groups
        .iter()
        .map(|g| {
            let before = previous.groups.iter().find(|p| p.name == g.name);
            group_status(v, g, facts, before, now, &mut transitions, &mut role_labels)
        })
        .collect();

    let grouping = local_grouping_group(v).map(|local| {
        let lives: Vec<grouping::GroupLive<'_>> = computed
            .iter()
            .map(|c| grouping::GroupLive {
                name: &c.status.name,
                live: c.status.live.as_deref(),
                status: c.live_status,
                last_live: c.last_live.as_deref(),
            })
            .collect();
        let (status, moved) = grouping::handler_status(local, &lives);
        transitions.extend(moved);
        status
    });

    // Every problem, most fundamental first: the spec's, the plan's, acting's, the groups'.
    let mut problems: Vec<Problem> = v.problems.clone();
    problems.extend(facts.plan.problems.iter().cloned());
    problems.extend(facts.outcome.problems.iter().cloned());
    problems.extend(unschedulable(v, seen));
    problems.extend(computed.iter().flat_map(|c| c.problems.iter().cloned()));
    transitions.extend(problem_transitions(&problems, &previous.conditions));

    let conditions = conditions(v, generation, facts, &computed, &problems, previous, now);
    transitions.extend(hibernation_transition(v, &conditions, previous));
    let networks: Vec<(String, network::GroupNetwork)> = computed
        .iter()
        .map(|c| (c.status.name.clone(), c.net.clone()))
        .collect();
    let connectors: usize = networks.iter().map(|(_, n)| n.connectors).sum();
    let connectors_linked: usize = networks.iter().map(|(_, n)| n.linked).sum();
    let groups: Vec<GroupStatus> = computed.into_iter().map(|c| c.status).collect();
    let live_count = groups.iter().filter(|g| g.live.is_some()).count();
    Computed {
        status: BrokerGroupStatus {
            observed_generation: generation,
            conditions,
            live: Some(format!("{live_count}/{}", groups.len())),
            failovers: groups.iter().map(|g| g.failovers).sum(),
            switchovers: groups.iter().map(|g| g.switchovers).sum(),
            linked: (connectors > 0).then(|| format!("{connectors_linked}/{connectors}")),
            groups,
            grouping,
            tls: tls_status(v, previous, now),
        },
        role_labels,
        transitions,
    }
}

/// `status.tls` from the certificates in use; `renewedAt` moves when this reconcile issued
/// a certificate.
fn tls_status(v: &ValidatedBrokerGroup, previous: &BrokerGroupStatus, now: &Time) -> Option<TlsStatus> {
    let c = v.certificates.as_ref()?;
    let time = |unix: i64| {
        k8s_openapi::jiff::Timestamp::from_second(unix).ok().map(Time)
    };
    let renewed_at = if c.issued.is_some() {
        Some(now.clone())
    } else {
        previous.tls.as_ref().and_then(|t| t.renewed_at.clone())
    };
    Some(TlsStatus {
        secret_name: c.secret_name.clone(),
        not_after: c.not_after().and_then(time),
        ca_not_after: c.ca_not_after().and_then(time),
        renewed_at,
    })
}

/// The Hibernated event once every pod is gone, the Resumed event once every group has a
/// live again after a hibernation.
fn hibernation_transition(
    v: &ValidatedBrokerGroup,
    now: &[Condition],
    previous: &BrokerGroupStatus,
) -> Option<Transition> {
    let reason_of = |list: &[Condition]| {
        list.iter()
            .find(|c| c.type_ == condition::HIBERNATED)
            .map(|c| c.reason.clone())
    };
    let (before, after) = (reason_of(&previous.conditions), reason_of(now));
    match (before.as_deref(), after.as_deref()) {
        (Some(b), Some("Hibernated")) if b != "Hibernated" => Some(Transition::new(
            Reason::Hibernated,
            format!("{}: every broker pod stopped; claims and Secrets are kept", v.name),
        )),
        (Some("Hibernated" | "Hibernating" | "Resuming"), Some("Running")) => Some(Transition::new(
            Reason::Resumed,
            format!("{}: every group has a live broker again", v.name),
        )),
        _ => None,
    }
}

/// The conditions: Available, Replicated, Progressing, Degraded, NetworkLinked, Hibernated.
fn conditions(
    v: &ValidatedBrokerGroup,
    generation: Option<i64>,
    facts: &Facts<'_>,
    groups: &[GroupComputed<'_>],
    problems: &[Problem],
    previous: &BrokerGroupStatus,
    now: &Time,
) -> Vec<Condition> {
    let seen = facts.seen;
    let mut conditions = Conditions {
        out: Vec::new(),
        previous: &previous.conditions,
        now,
        generation,
    };
    let total = groups.len();
    let without_live: Vec<&str> = groups
        .iter()
        .filter(|c| c.status.live.is_none())
        .map(|c| c.status.name.as_str())
        .collect();
    conditions.set(
        condition::AVAILABLE,
        without_live.is_empty(),
        if without_live.is_empty() {
            "AllGroupsLive"
        } else if v.hibernate {
            "Hibernated"
        } else {
            "GroupsWithoutLive"
        },
        if without_live.is_empty() {
            format!("every group ({total}) has a live broker serving clients")
        } else {
            format!("no live broker in: {}", without_live.join(", "))
        },
    );
    let unreplicated: Vec<&str> = groups
        .iter()
        .filter(|c| c.unreplicated)
        .map(|c| c.status.name.as_str())
        .collect();
    // With a shared store nothing is copied: what matters is a slave standing by that
    // reaches the store.
    let (ok_reason, ok_message, bad_reason, bad_message) = if v.is_shared_store() {
        (
            "AllGroupsStandingBy",
            "every group has a slave waiting on the shared store (nothing is copied: the members share it)",
            "NoSlaveStandingBy",
            "no slave waiting on the shared store in",
        )
    } else {
        (
            "AllGroupsReplicated",
            "every group has a backup in sync with its live",
            "BackupsNotInSync",
            "no backup in sync in",
        )
    };
    conditions.set(
        condition::REPLICATED,
        unreplicated.is_empty(),
        if unreplicated.is_empty() {
            ok_reason
        } else {
            bad_reason
        },
        if unreplicated.is_empty() {
            ok_message.into()
        } else {
            // Why a backup cannot follow, when a member's cluster port refused it (TLS:
            // another CA, an expired certificate; or the cluster credentials).
            let refusals: Vec<String> = v
                .groups
                .iter()
                .filter(|g| unreplicated.contains(&g.name.as_str()))
                .flat_map(|g| &g.members)
                .filter_map(|m| {
                    let broker = seen.pods.get(&m.pod)?.broker.as_ref().ok()?;
                    let refusal = broker.ha.as_ref()?.refused_by.first()?;
                    Some(format!("{} is refused by {}: {}", m.pod, refusal.member, refusal.reason))
                })
                .collect();
            let mut message = format!("{bad_message}: {}", unreplicated.join(", "));
            if !refusals.is_empty() {
                message.push_str(&format!("; {}", refusals.join("; ")));
            }
            message
        },
    );

    let starting: Vec<&str> = seen
        .pods
        .iter()
        .filter(|(_, p)| {
            !p.running
                || matches!(
                    p.broker.as_ref().map(|b| b.role),
                    Ok(Role::Starting) | Err(_)
                )
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let missing = if v.hibernate {
        0
    } else {
        v.groups
            .iter()
            .flat_map(|g| &g.members)
            .filter(|m| !seen.pods.contains_key(&m.pod))
            .count()
    };
    let switching: Vec<String> = groups
        .iter()
        .filter_map(|c| {
            let p = c.status.switchover.as_ref()?;
            Some(format!("{} to {}", c.status.name, p.to))
        })
        .collect();
    let draining: Vec<String> = groups
        .iter()
        .filter_map(|c| {
            let d = c.status.drain.as_ref()?;
            Some(match d.messages_left {
                Some(left) => format!("{} ({left} messages left)", c.status.name),
                None => c.status.name.clone(),
            })
        })
        .collect();
    let upgrade = facts.plan.upgrade.as_ref();
    let progressing = !seen.rolling_out.is_empty()
        || !starting.is_empty()
        || missing > 0
        || upgrade.is_some()
        || !switching.is_empty()
        || !draining.is_empty()
        || (v.hibernate && !seen.pods.is_empty());
    let mut parts = Vec::new();
    if !draining.is_empty() {
        parts.push(format!(
            "draining removed groups into the others: {}",
            draining.join(", ")
        ));
    }
    if let Some(upgrade) = upgrade {
        parts.push(upgrade.clone());
    }
    if !switching.is_empty() {
        parts.push(format!(
            "handing the live role over: {}",
            switching.join(", ")
        ));
    }
    if v.hibernate && !seen.pods.is_empty() {
        parts.push(format!("hibernating: {} pod(s) left", seen.pods.len()));
    }
    if !seen.rolling_out.is_empty() {
        parts.push(format!("rolling out: {}", seen.rolling_out.join(", ")));
    }
    if missing > 0 {
        parts.push(format!("{missing} member pod(s) not created yet"));
    }
    if !starting.is_empty() {
        parts.push(format!("starting: {}", starting.join(", ")));
    }
    conditions.set(
        condition::PROGRESSING,
        progressing,
        if !draining.is_empty() {
            "ScalingDown"
        } else if upgrade.is_some() {
            "RollingUpgrade"
        } else if !switching.is_empty() {
            "Switchover"
        } else if v.hibernate && progressing {
            "Hibernating"
        } else if progressing {
            "MembersStarting"
        } else {
            "Stable"
        },
        if progressing {
            parts.join("; ")
        } else {
            "every member runs the current spec".into()
        },
    );

    let database: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.reason == Reason::DatabaseUnreachable)
        .collect();
    let first = problems
        .iter()
        .find(|p| p.reason != Reason::DatabaseUnreachable);
    let (degraded, reason, message) = match first {
        Some(p) => (true, p.reason.as_str().to_string(), p.message.clone()),
        None if !database.is_empty() => (
            true,
            Reason::DatabaseUnreachable.as_str().to_string(),
            database
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None if !without_live.is_empty() && !progressing && !v.hibernate => (
            true,
            "GroupsWithoutLive".to_string(),
            format!("no live broker in: {}", without_live.join(", ")),
        ),
        None => (
            false,
            "AsExpected".to_string(),
            "nothing needs attention".to_string(),
        ),
    };
    conditions.set(condition::DEGRADED, degraded, &reason, message);
    let networks: Vec<(String, network::GroupNetwork)> = groups
        .iter()
        .map(|c| (c.status.name.clone(), c.net.clone()))
        .collect();
    let (linked, reason, message) = network::condition(&networks);
    conditions.set(condition::NETWORK_LINKED, linked, reason, message);

    let asleep = v.hibernate && seen.pods.is_empty();
    let waking = previous.conditions.iter().any(|c| {
        c.type_ == condition::HIBERNATED
            && matches!(c.reason.as_str(), "Hibernated" | "Hibernating" | "Resuming")
    }) && !without_live.is_empty();
    let (reason, message) = match (v.hibernate, asleep) {
        (true, true) => ("Hibernated", "no broker pod runs; claims, Secrets and the spec are kept; set duomq.io/hibernation: off to resume".to_string()),
        (true, false) => ("Hibernating", format!("stopping every broker pod: {} left", seen.pods.len())),
        (false, _) if waking => ("Resuming", "starting the broker pods again".to_string()),
        (false, _) => ("Running", "the brokers run (annotate duomq.io/hibernation: on to hibernate)".to_string()),
    };
    conditions.set(condition::HIBERNATED, asleep, reason, message);
    conditions.out
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::BrokerGroup;
    use crate::plan::{Outcome, Plan};
    use crate::render::parse_documents;
    use crate::validate::{validate, Dependencies};
    use duomq_broker::admin::api::{HaStatus, SyncStatus};
    use k8s_openapi::jiff::Timestamp;

    fn pair() -> ValidatedBrokerGroup {
        validated("{groups: 1, backupsPerGroup: 1}")
    }

    /// A BrokerGroup `pair` in namespace default with this spec (YAML flow style), validated.
    pub(crate) fn validated(spec: &str) -> ValidatedBrokerGroup {
        let text = format!("apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: pair}}\nspec: {spec}\n");
        let bg: BrokerGroup = parse_documents(&text, "default").unwrap().remove(0);
        validate(
            &bg,
            &Dependencies {
                new_password: "p".into(),
                ..Dependencies::default()
            },
        )
        .unwrap()
    }

    pub(crate) fn broker(
        role: Role,
        epoch: u64,
        sync: Option<SyncState>,
    ) -> Result<BrokerStatus, String> {
        Ok(BrokerStatus {
            ha: Some(HaStatus {
                group: "pair-g0".into(),
                epoch,
                live: None,
                sync: sync.map(|state| SyncStatus {
                    state,
                    lag_bytes: 0,
                    lag_records: 0,
                }),
                backups: Vec::new(),
                alone: false,
                database: None,
                refused_by: Vec::new(),
            }),
            ..BrokerStatus::bare("", role)
        })
    }

    pub(crate) fn pod(broker: Result<BrokerStatus, String>, label: Option<&str>) -> PodObservation {
        PodObservation {
            running: true,
            terminating: false,
            node: None,
            role_label: label.map(String::from),
            broker,
            ip: None,
            revision: None,
            unschedulable: None,
            tls: false,
        }
    }

    /// The status computed from `seen` alone (nothing planned or done).
    pub(crate) fn status_of(
        v: &ValidatedBrokerGroup,
        generation: Option<i64>,
        seen: &Observation,
        previous: &BrokerGroupStatus,
        now: &Time,
    ) -> Computed {
        status_after(v, generation, seen, &Outcome::default(), previous, now)
    }

    /// The status computed from `seen` and what acting did.
    pub(crate) fn status_after(
        v: &ValidatedBrokerGroup,
        generation: Option<i64>,
        seen: &Observation,
        outcome: &Outcome,
        previous: &BrokerGroupStatus,
        now: &Time,
    ) -> Computed {
        let facts = Facts {
            seen,
            plan: &Plan::default(),
            outcome,
        };
        compute(v, generation, &facts, previous, now)
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cond<'a>(s: &'a BrokerGroupStatus, kind: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    /// The status computed from `seen` with no previous status.
    fn first(seen: &Observation) -> Computed {
        status_of(
            &pair(),
            Some(1),
            seen,
            &BrokerGroupStatus::default(),
            &at(100),
        )
    }

    fn healthy() -> Observation {
        Observation {
            pods: BTreeMap::from([
                (
                    "pair-g0-0".to_string(),
                    pod(broker(Role::Live, 1, None), None),
                ),
                (
                    "pair-g0-1".to_string(),
                    pod(broker(Role::Backup, 1, Some(SyncState::Synced)), None),
                ),
            ]),
            ..Observation::default()
        }
    }

    #[test]
    fn given_a_backup_refused_by_its_live_replicated_should_say_who_refused_it_and_why() {
        let mut seen = healthy();
        let mut refused = broker(Role::Backup, 1, Some(SyncState::Connecting)).unwrap();
        if let Some(ha) = refused.ha.as_mut() {
            ha.refused_by.push(duomq_broker::admin::api::ClusterRefusal {
                member: "pair-g0-0.pair-g0-members.default.svc:61616".into(),
                reason: "the members' certificates are not from the same CA (tls.caFile)".into(),
            });
        }
        seen.pods.insert("pair-g0-1".into(), pod(Ok(refused), None));
        let c = first(&seen);
        let replicated = cond(&c.status, condition::REPLICATED);
        assert_eq!((replicated.status.as_str(), replicated.reason.as_str()), ("False", "BackupsNotInSync"));
        assert_eq!(
            replicated.message,
            "no backup in sync in: pair-g0; pair-g0-1 is refused by pair-g0-0.pair-g0-members.default.svc:61616: the members' certificates are not from the same CA (tls.caFile)"
        );
    }

    #[test]
    fn given_live_and_synced_backup_should_be_available_replicated_and_label_roles() {
        let c = first(&healthy());
        assert_eq!(c.status.live.as_deref(), Some("1/1"));
        assert_eq!(c.status.groups[0].live.as_deref(), Some("pair-g0-0"));
        assert_eq!(c.status.groups[0].epoch, 1);
        assert!(c.status.groups[0].backups[0].synced);
        assert_eq!(cond(&c.status, condition::AVAILABLE).status, "True");
        assert_eq!(cond(&c.status, condition::REPLICATED).status, "True");
        assert_eq!(cond(&c.status, condition::PROGRESSING).status, "False");
        assert_eq!(cond(&c.status, condition::DEGRADED).status, "False");
        assert_eq!(
            c.role_labels.get("pair-g0-0").map(String::as_str),
            Some("live")
        );
        assert_eq!(
            c.role_labels.get("pair-g0-1").map(String::as_str),
            Some("backup")
        );
        assert!(c.transitions.is_empty());
    }

    #[test]
    fn given_an_unchanged_observation_should_keep_status_and_transition_times() {
        let first = first(&healthy());
        let second = status_of(&pair(), Some(1), &healthy(), &first.status, &at(200));
        assert_eq!(first.status, second.status);
    }

    #[test]
    fn given_the_backup_became_live_should_count_a_failover_with_reason_live_lost() {
        let before = first(&healthy()).status;
        let mut seen = healthy();
        seen.pods.insert(
            "pair-g0-0".into(),
            PodObservation {
                running: false,
                broker: Err("not running".into()),
                ..pod(Err(String::new()), Some("live"))
            },
        );
        seen.pods.insert(
            "pair-g0-1".into(),
            pod(broker(Role::Live, 2, None), Some("backup")),
        );
        let c = status_of(&pair(), Some(1), &seen, &before, &at(200));
        let g = &c.status.groups[0];
        assert_eq!(g.live.as_deref(), Some("pair-g0-1"));
        assert_eq!(g.failovers, 1);
        assert_eq!(c.status.failovers, 1);
        let last = g.last_failover.as_ref().unwrap();
        assert_eq!(
            (last.from.as_str(), last.to.as_str(), last.reason),
            ("pair-g0-0", "pair-g0-1", FailoverReason::LiveLost)
        );
        assert_eq!(g.epoch, 2);
        assert_eq!(cond(&c.status, condition::REPLICATED).status, "False");
        assert_eq!(c.transitions[0].reason, Reason::FailedOver);
        assert!(c.transitions[0].warning());
        assert_eq!(
            c.role_labels.get("pair-g0-1").map(String::as_str),
            Some("live")
        );
        // a pod that is not running keeps its label: it is not selected while not ready anyway
        assert!(!c.role_labels.contains_key("pair-g0-0"));

        // the original member resyncs and takes the role back
        let mut back = healthy();
        back.pods.get_mut("pair-g0-0").unwrap().broker = broker(Role::Live, 3, None);
        let d = status_of(&pair(), Some(1), &back, &c.status, &at(300));
        let g = &d.status.groups[0];
        // counted apart: one failover, one failback (a planned hand-over)
        assert_eq!((g.failovers, g.switchovers), (1, 1));
        assert_eq!((d.status.failovers, d.status.switchovers), (1, 1));
        assert_eq!(
            g.last_failover.as_ref().unwrap().reason,
            FailoverReason::Failback
        );
        assert_eq!(d.transitions[0].reason, Reason::FailedBack);
    }

    #[test]
    fn given_a_switchover_the_live_agreed_to_should_be_pending_then_recorded_with_its_reason() {
        let before = first(&healthy()).status;
        let seen = healthy();
        let mut outcome = Outcome::default();
        outcome.switchovers.insert(
            "pair-g0".into(),
            PendingSwitchover {
                to: "pair-g0-1".into(),
                reason: FailoverReason::Switchover,
                time: at(150),
            },
        );
        let asked = status_after(&pair(), Some(1), &seen, &outcome, &before, &at(150));
        let pending = asked.status.groups[0].switchover.clone();
        assert_eq!(pending.as_ref().map(|p| p.to.as_str()), Some("pair-g0-1"));
        assert_eq!(
            cond(&asked.status, condition::PROGRESSING).reason,
            "Switchover"
        );

        // a look in between: the old live let go, the target has not taken over yet; that
        // is the hand-over working, not a lost live (no LiveLost warning, not Degraded)
        let mut between = healthy();
        between.pods.get_mut("pair-g0-0").unwrap().broker =
            broker(Role::Backup, 1, Some(SyncState::Connecting));
        between.pods.get_mut("pair-g0-1").unwrap().broker =
            broker(Role::Backup, 1, Some(SyncState::Synced));
        let gap = status_of(&pair(), Some(1), &between, &asked.status, &at(155));
        assert!(gap.transitions.is_empty(), "{:?}", gap.transitions);
        assert_eq!(cond(&gap.status, condition::DEGRADED).status, "False");
        assert_eq!(cond(&gap.status, condition::PROGRESSING).reason, "Switchover");

        // next look: the target is live; the old live follows it
        let mut after = healthy();
        after.pods.get_mut("pair-g0-0").unwrap().broker =
            broker(Role::Backup, 2, Some(SyncState::Synced));
        after.pods.get_mut("pair-g0-1").unwrap().broker = broker(Role::Live, 2, None);
        let done = status_of(&pair(), Some(1), &after, &gap.status, &at(160));
        let g = &done.status.groups[0];
        let last = g.last_failover.as_ref().unwrap();
        assert_eq!(
            (last.from.as_str(), last.to.as_str(), last.reason),
            ("pair-g0-0", "pair-g0-1", FailoverReason::Switchover)
        );
        assert_eq!(g.switchover, None, "done");
        assert_eq!(
            (
                done.transitions[0].reason,
                done.transitions[0].warning()
            ),
            (Reason::SwitchedOver, false)
        );
        assert_eq!(cond(&done.status, condition::PROGRESSING).reason, "Stable");

        // a pending switchover that never shows is dropped after a while
        let stale = status_of(
            &pair(),
            Some(1),
            &healthy(),
            &asked.status,
            &at(150 + SWITCHOVER_PENDING_FOR + 1),
        );
        assert_eq!(stale.status.groups[0].switchover, None);
    }

    #[test]
    fn given_no_live_should_be_unavailable_and_say_which_group() {
        let mut seen = healthy();
        seen.pods.get_mut("pair-g0-0").unwrap().broker = Err("connection refused".into());
        let c = first(&seen);
        let available = cond(&c.status, condition::AVAILABLE);
        assert_eq!(
            (available.status.as_str(), available.reason.as_str()),
            ("False", "GroupsWithoutLive")
        );
        assert!(available.message.contains("pair-g0"));
        assert_eq!(c.status.live.as_deref(), Some("0/1"));
        assert_eq!(c.status.groups[0].backups.len(), 2);
        assert_eq!(c.status.groups[0].backups[0].state, "unreachable");
    }

    #[test]
    fn given_two_members_reporting_live_should_warn_of_split_brain() {
        let mut seen = healthy();
        seen.pods.get_mut("pair-g0-1").unwrap().broker = broker(Role::Live, 1, None);
        let c = first(&seen);
        assert!(c
            .transitions
            .iter()
            .any(|t| t.reason == Reason::SplitBrain && t.warning()));
    }

    #[test]
    fn given_a_problem_should_be_degraded_with_its_reason() {
        let mut v = pair();
        v.problems.push(Problem::new(
            Reason::ConnectorTargetMissing,
            "billing does not exist",
        ));
        let c = status_of(&v, Some(1), &healthy(), &BrokerGroupStatus::default(), &at(100));
        let d = cond(&c.status, condition::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ConnectorTargetMissing")
        );
    }

    /// Two groups, each with a synced backup; `g0`'s live reports its connector to `pair-g1`
    /// in `state` for `seconds`.
    fn mesh(state: duomq_broker::admin::api::LinkState, seconds: u64) -> Observation {
        use duomq_broker::admin::api::{ConnectorStatus, LinkStatus, NetworkStatus};
        let mut seen = Observation::default();
        for g in ["pair-g0", "pair-g1"] {
            seen.pods
                .insert(format!("{g}-0"), pod(broker(Role::Live, 1, None), None));
            seen.pods.insert(
                format!("{g}-1"),
                pod(broker(Role::Backup, 1, Some(SyncState::Synced)), None),
            );
        }
        if let Ok(live) = &mut seen.pods.get_mut("pair-g0-0").unwrap().broker {
            live.network = Some(NetworkStatus {
                connectors: vec![ConnectorStatus {
                    name: "pair-g1".into(),
                    uri: String::new(),
                    duplex: false,
                    links: vec![LinkStatus {
                        target: String::new(),
                        state,
                        state_seconds: seconds,
                        linked_to: None,
                        remote_node: None,
                        remote_group: None,
                        last_error: Some("wrong password".into()),
                        remote_demand: Vec::new(),
                        remote_demand_count: 0,
                        local_demand_count: 0,
                        forwarded_out: 0,
                        forwarded_in: 0,
                    }],
                }],
                inbound: Vec::new(),
            });
        }
        seen
    }

    #[test]
    fn given_a_connector_refused_for_a_minute_should_count_it_unlinked_warn_once_and_clear_when_linked(
    ) {
        use duomq_broker::admin::api::LinkState;
        let v = validated("{groups: 2, backupsPerGroup: 1}");
        let brief = status_of(
            &v,
            Some(1),
            &mesh(LinkState::Refused, 30),
            &BrokerGroupStatus::default(),
            &at(100),
        );
        assert_eq!(
            cond(&brief.status, condition::NETWORK_LINKED).status,
            "True"
        );
        assert!(brief.transitions.is_empty(), "{:?}", brief.transitions);

        let long = status_of(
            &v,
            Some(1),
            &mesh(LinkState::Refused, 75),
            &brief.status,
            &at(145),
        );
        let g0 = &long.status.groups[0];
        assert_eq!((g0.connectors, g0.connectors_linked), (1, 0));
        assert_eq!(g0.unlinked_connectors, vec!["pair-g1".to_string()]);
        assert_eq!(
            long.status.linked.as_deref(),
            Some("0/2"),
            "g1's live reports no network"
        );
        let c = cond(&long.status, condition::NETWORK_LINKED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ConnectorUnlinked")
        );
        assert!(
            c.message
                .contains("group pair-g0: connector pair-g1 refused: wrong password"),
            "{}",
            c.message
        );
        assert_eq!(long.transitions.len(), 1);
        assert!(long.transitions[0].warning());
        assert_eq!(long.transitions[0].reason, Reason::ConnectorUnlinked);

        let still = status_of(
            &v,
            Some(1),
            &mesh(LinkState::Refused, 90),
            &long.status,
            &at(160),
        );
        assert!(still.transitions.is_empty(), "one event per outage");
        assert_eq!(
            still.status, long.status,
            "no status patch while it stays down"
        );

        let back = status_of(
            &v,
            Some(1),
            &mesh(LinkState::Linked, 2),
            &still.status,
            &at(175),
        );
        assert_eq!(back.status.groups[0].connectors_linked, 1);
        assert_eq!(cond(&back.status, condition::NETWORK_LINKED).status, "True");
        assert_eq!(
            (
                back.transitions[0].reason.as_str(),
                back.transitions[0].warning()
            ),
            ("ConnectorLinked", false)
        );
    }

    /// Three groups with grouping (the handler on group 1); every live reports its handler.
    fn grouped(handler_live: &str, bindings: u64) -> Observation {
        use duomq_broker::admin::api::{GroupingHandlerKind, GroupingStatus};
        let mut seen = Observation::default();
        for g in 0..3 {
            for m in 0..2 {
                let pod = format!("pair-g{g}-{m}");
                let live = if g == 1 { pod == handler_live } else { m == 0 };
                let mut status = if live {
                    broker(Role::Live, 1, None)
                } else {
                    broker(Role::Backup, 1, Some(SyncState::Synced))
                };
                if let (true, Ok(b)) = (live, &mut status) {
                    b.grouping = Some(GroupingStatus {
                        handler: if g == 1 {
                            GroupingHandlerKind::Local
                        } else {
                            GroupingHandlerKind::Remote
                        },
                        group: format!("pair-g{g}"),
                        bindings,
                        proposals_total: 0,
                        timeouts_total: 0,
                        reaped_total: 0,
                        connected: true,
                        linked_to: None,
                        last_error: None,
                    });
                }
                seen.pods.insert(pod, self::pod(status, None));
            }
        }
        seen
    }

    #[test]
    fn given_grouping_when_the_handlers_group_fails_over_should_name_the_new_live_and_record_the_move(
    ) {
        let v = validated("{groups: 3, backupsPerGroup: 1, grouping: {localGroup: 1}}");
        let before = status_of(
            &v,
            Some(1),
            &grouped("pair-g1-0", 20),
            &BrokerGroupStatus::default(),
            &at(100),
        );
        let g = before.status.grouping.clone().expect("status.grouping");
        assert_eq!(
            (g.local_group.as_str(), g.live.as_deref(), g.bindings),
            ("pair-g1", Some("pair-g1-0"), Some(20))
        );
        assert_eq!(g.remotes_connected, "2/2");
        assert_eq!(
            status_of(
                &pair(),
                Some(1),
                &healthy(),
                &BrokerGroupStatus::default(),
                &at(100)
            )
            .status
            .grouping,
            None,
            "no grouping section without spec.grouping"
        );

        // a look while the group has no live, then its backup is live with every binding
        let mut gap = grouped("pair-g1-0", 20);
        gap.pods.get_mut("pair-g1-0").unwrap().broker = Err("connection refused".into());
        let during = status_of(&v, Some(1), &gap, &before.status, &at(110));
        assert_eq!(during.status.grouping.as_ref().unwrap().live, None);
        assert!(!during
            .transitions
            .iter()
            .any(|t| t.reason == Reason::GroupingHandlerMoved));
        let after = status_of(
            &v,
            Some(1),
            &grouped("pair-g1-1", 20),
            &during.status,
            &at(120),
        );
        let g = after.status.grouping.as_ref().unwrap();
        assert_eq!(
            (g.live.as_deref(), g.bindings),
            (Some("pair-g1-1"), Some(20))
        );
        let moved: Vec<&Transition> = after
            .transitions
            .iter()
            .filter(|t| t.reason == Reason::GroupingHandlerMoved)
            .collect();
        assert_eq!(moved.len(), 1, "{:?}", after.transitions);
        assert!(
            moved[0]
                .note
                .contains("from pair-g1-0 to pair-g1-1 with 20 bindings"),
            "{}",
            moved[0].note
        );
    }

    #[test]
    fn given_the_lease_holder_is_not_running_should_release_it_and_call_the_failover_operator_driven(
    ) {
        let mut seen = healthy();
        seen.leases.insert(
            "pair-g0".into(),
            LeaseObservation {
                holder: Some("pair-g0-0".into()),
                released_holder: None,
            },
        );
        let releases = |seen: &Observation| -> Vec<(String, String)> {
            crate::plan::lease_releases(&pair(), seen)
                .into_iter()
                .map(|r| (r.group, r.holder))
                .collect()
        };
        assert!(
            releases(&seen).is_empty(),
            "a running holder is never released"
        );

        let before = first(&seen).status;
        seen.pods.get_mut("pair-g0-0").unwrap().running = false;
        assert_eq!(
            releases(&seen),
            vec![("pair-g0".to_string(), "pair-g0-0".to_string())]
        );
        seen.pods.remove("pair-g0-0");
        assert_eq!(
            releases(&seen).len(),
            1,
            "a deleted holder is released too"
        );

        // the backup took the released Lease
        seen.leases.insert(
            "pair-g0".into(),
            LeaseObservation {
                holder: Some("pair-g0-1".into()),
                released_holder: Some("pair-g0-0".into()),
            },
        );
        seen.pods.get_mut("pair-g0-1").unwrap().broker = broker(Role::Live, 2, None);
        let c = status_of(&pair(), Some(1), &seen, &before, &at(200));
        assert_eq!(
            c.status.groups[0].last_failover.as_ref().unwrap().reason,
            FailoverReason::OperatorFailover
        );
    }

    /// A shared-database member's `/status`: its role and what it says of the database.
    fn database_member(
        role: Role,
        epoch: u64,
        error: Option<&str>,
    ) -> Result<BrokerStatus, String> {
        let mut status = broker(role, epoch, None);
        if let Ok(b) = &mut status {
            if let Some(ha) = &mut b.ha {
                ha.database = Some(duomq_broker::admin::api::DatabaseStatus {
                    reachable: error.is_none(),
                    last_error: error.map(String::from),
                    lease_holder: Some("pair-g0-0".into()),
                    lease_remaining_ms: Some(8000),
                    commits: 12,
                });
            }
        }
        status
    }

    fn shared_database() -> ValidatedBrokerGroup {
        validated("{groups: 1, backupsPerGroup: 1, ha: {mode: sharedDatabase, database: {secretRef: {name: pg-app}}}}")
    }

    /// The status of the shared-database `pair` computed from `seen` with no previous status.
    fn database_first(seen: &Observation) -> Computed {
        status_of(
            &shared_database(),
            Some(1),
            seen,
            &BrokerGroupStatus::default(),
            &at(100),
        )
    }

    fn database_pair(backup_error: Option<&str>) -> Observation {
        Observation {
            pods: BTreeMap::from([
                (
                    "pair-g0-0".to_string(),
                    pod(database_member(Role::Live, 1, None), Some("live")),
                ),
                (
                    "pair-g0-1".to_string(),
                    pod(
                        database_member(Role::Backup, 1, backup_error),
                        Some("backup"),
                    ),
                ),
            ]),
            ..Observation::default()
        }
    }

    #[test]
    fn given_a_shared_database_group_when_the_live_is_lost_should_record_the_failover_to_the_backup(
    ) {
        let v = shared_database();
        let before = database_first(&database_pair(None));
        let g = &before.status.groups[0];
        assert_eq!(g.live.as_deref(), Some("pair-g0-0"));
        assert!(
            g.backups[0].synced,
            "a backup reaching the database can take over"
        );
        assert_eq!(cond(&before.status, condition::REPLICATED).status, "True");
        assert_eq!(cond(&before.status, condition::DEGRADED).status, "False");

        let mut seen = database_pair(None);
        seen.pods.insert(
            "pair-g0-0".into(),
            PodObservation {
                running: false,
                ..pod(Err("broker container not running".into()), Some("live"))
            },
        );
        seen.pods.get_mut("pair-g0-1").unwrap().broker = database_member(Role::Live, 2, None);
        let after = status_of(&v, Some(1), &seen, &before.status, &at(130));
        let g = &after.status.groups[0];
        let last = g.last_failover.as_ref().expect("the failover recorded");
        assert_eq!(
            (
                last.from.as_str(),
                last.to.as_str(),
                last.reason,
                g.failovers,
                g.epoch
            ),
            ("pair-g0-0", "pair-g0-1", FailoverReason::LiveLost, 1, 2)
        );
        assert_eq!(after.transitions[0].reason, Reason::FailedOver);
        assert_eq!(
            after.role_labels.get("pair-g0-1").map(String::as_str),
            Some("live")
        );
    }

    #[test]
    fn given_a_member_that_cannot_reach_the_database_should_be_degraded_warn_once_and_say_when_it_is_back(
    ) {
        let v = shared_database();
        let lost = database_first(&database_pair(Some("connection refused")));
        let g = &lost.status.groups[0];
        assert!(
            !g.backups[0].synced,
            "a backup without the database cannot take over"
        );
        assert_eq!(g.database_unreachable, vec!["pair-g0-1".to_string()]);
        assert_eq!(cond(&lost.status, condition::REPLICATED).status, "False");
        let d = cond(&lost.status, condition::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", Reason::DatabaseUnreachable.as_str())
        );
        assert_eq!(
            d.message,
            "group pair-g0: cannot reach the database: pair-g0-1 (connection refused)"
        );
        assert_eq!(lost.transitions.len(), 1, "{:?}", lost.transitions);
        assert!(lost.transitions[0].warning());
        assert_eq!(lost.transitions[0].reason, Reason::DatabaseUnreachable);

        let still = status_of(
            &v,
            Some(1),
            &database_pair(Some("connection refused")),
            &lost.status,
            &at(115),
        );
        assert!(still.transitions.is_empty(), "one event per outage");
        assert_eq!(
            still.status, lost.status,
            "no status patch while it stays down"
        );

        let back = status_of(&v, Some(1), &database_pair(None), &still.status, &at(130));
        assert!(back.status.groups[0].database_unreachable.is_empty());
        assert_eq!(cond(&back.status, condition::DEGRADED).status, "False");
        assert_eq!(
            (
                back.transitions[0].reason,
                back.transitions[0].warning()
            ),
            (Reason::DatabaseReachable, false)
        );
    }

    #[test]
    fn given_a_shared_database_live_that_took_its_lease_again_should_say_so_without_counting_a_failover(
    ) {
        let v = shared_database();
        let before = database_first(&database_pair(None));
        let mut seen = database_pair(None);
        seen.pods.get_mut("pair-g0-0").unwrap().broker = database_member(Role::Live, 2, None);
        let after = status_of(&v, Some(1), &seen, &before.status, &at(110));
        let g = &after.status.groups[0];
        assert_eq!(
            (
                g.live.as_deref(),
                g.epoch,
                g.failovers,
                g.last_failover.is_none()
            ),
            (Some("pair-g0-0"), 2, 0, true)
        );
        assert_eq!(after.transitions.len(), 1, "{:?}", after.transitions);
        assert_eq!(after.transitions[0].reason, Reason::LeaseRetaken);
        assert!(
            after.transitions[0]
                .note
                .contains("pair-g0-0 took the shared store again at epoch 2"),
            "{}",
            after.transitions[0].note
        );
    }

    #[test]
    fn given_a_shared_store_live_that_took_its_lock_back_should_not_record_a_failback_from_the_slave(
    ) {
        let v = validated("{groups: 1, backupsPerGroup: 1, ha: {mode: sharedStore}, storage: {storageClassName: nfs}}");
        let before = status_of(&v, Some(1), &healthy(), &BrokerGroupStatus::default(), &at(100));
        // the live was killed and restarted; it took the lock again before its slave did
        let mut seen = healthy();
        seen.pods.get_mut("pair-g0-0").unwrap().broker = broker(Role::Live, 2, None);
        let after = status_of(&v, Some(1), &seen, &before.status, &at(110));
        let g = &after.status.groups[0];
        assert_eq!((g.failovers, g.switchovers, g.last_failover.is_none()), (0, 0, true));
        assert_eq!(after.transitions.len(), 1, "{:?}", after.transitions);
        assert_eq!(after.transitions[0].reason, Reason::LeaseRetaken);
        let replicated = cond(&after.status, condition::REPLICATED);
        assert_eq!(replicated.reason, "AllGroupsStandingBy", "said of a shared store as it is");
    }

    #[test]
    fn given_unschedulable_member_pods_should_be_degraded_and_say_which_and_why() {
        let mut seen = healthy();
        let p = seen.pods.get_mut("pair-g0-1").unwrap();
        p.running = false;
        p.broker = Err("broker container not running".into());
        p.unschedulable = Some("0/4 nodes are available: 4 node(s) didn't match Pod's node affinity".into());
        let c = first(&seen);
        let d = cond(&c.status, condition::DEGRADED);
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "PodsUnschedulable"));
        assert!(d.message.contains("pair-g0-1 (0/4 nodes are available"), "{}", d.message);
        assert_eq!(c.status.groups[0].backups[0].state, "unschedulable");
        assert!(c.transitions.iter().any(|t| t.reason == Reason::PodsUnschedulable));
        // said once
        let again = status_of(&pair(), Some(1), &seen, &c.status, &at(200));
        assert!(!again.transitions.iter().any(|t| t.reason == Reason::PodsUnschedulable));
    }

    #[test]
    fn given_hibernation_should_stop_quietly_then_report_hibernated_and_resumed() {
        let running = first(&healthy()).status;
        let mut v = pair();
        v.hibernate = true;
        let stopping = status_of(&v, Some(1), &healthy(), &running, &at(110));
        assert_eq!(cond(&stopping.status, condition::HIBERNATED).reason, "Hibernating");
        let gone = Observation::default();
        let asleep = status_of(&v, Some(1), &gone, &stopping.status, &at(120));
        let h = cond(&asleep.status, condition::HIBERNATED);
        assert_eq!((h.status.as_str(), h.reason.as_str()), ("True", "Hibernated"));
        assert_eq!(cond(&asleep.status, condition::DEGRADED).status, "False");
        assert_eq!(cond(&asleep.status, condition::AVAILABLE).reason, "Hibernated");
        assert_eq!(
            asleep.transitions.iter().map(|t| t.reason).collect::<Vec<_>>(),
            vec![Reason::Hibernated],
            "no LiveLost while hibernating"
        );
        let waking = status_of(&pair(), Some(1), &gone, &asleep.status, &at(130));
        assert_eq!(cond(&waking.status, condition::HIBERNATED).reason, "Resuming");
        let back = status_of(&pair(), Some(1), &healthy(), &waking.status, &at(140));
        assert_eq!(cond(&back.status, condition::HIBERNATED).reason, "Running");
        assert!(back.transitions.iter().any(|t| t.reason == Reason::Resumed));
    }
}
