//! The group's Lease as Kubernetes stores it: reading [`LeaseState`] out of a
//! `coordination.k8s.io/v1` Lease, and building the Lease a member writes when it takes,
//! renews or releases it. Pure: the time is passed in and nothing is sent.

use super::decide::LeaseState;
use crate::config::LeaseTarget;
use crate::ha::epoch::Epoch;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// The group's epoch, raised by every member that takes the Lease.
pub const EPOCH_ANNOTATION: &str = "duomq.io/epoch";
/// The node ids of the backups the live has in sync, comma-separated, written by the
/// live at each renewal. Only these may take the Lease over.
pub const IN_SYNC_ANNOTATION: &str = "duomq.io/in-sync";
/// On a Lease with no holder: the member a live handed it to (a switchover or failback).
/// Only that member takes it, until the hand-over lapses like an unrenewed claim.
pub const HANDOVER_ANNOTATION: &str = "duomq.io/handover-to";

/// Reads the rules' view of a Lease; an epoch that is not a number is an error (a member
/// must never guess the group's epoch).
pub fn read(lease: &Lease) -> Result<LeaseState, String> {
    let annotations = lease.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
    let epoch = match annotation(EPOCH_ANNOTATION) {
        None | Some("") => Epoch(0),
        Some(text) => Epoch(text.parse().map_err(|_| format!("{EPOCH_ANNOTATION} is {text:?}, not a number"))?),
    };
    let spec = lease.spec.as_ref();
    Ok(LeaseState {
        holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
        epoch,
        in_sync: annotation(IN_SYNC_ANNOTATION)
            .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect())
            .unwrap_or_default(),
        handover_to: annotation(HANDOVER_ANNOTATION).filter(|n| !n.is_empty()).map(str::to_string),
        transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        claim: spec.and_then(|s| s.lease_duration_seconds).and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
    })
}

/// `leaseDurationSeconds` for a claim: whole seconds, rounded up, so the written claim is
/// never shorter than the one the holder keeps to.
fn whole_seconds(claim: Duration) -> i32 {
    let secs = claim.as_secs() + u64::from(claim.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The Lease `node` writes to take it: holder, acquire and renew time now, the new epoch,
/// one more transition, and an empty in-sync list (the new live has no backups yet). On
/// an existing Lease everything else is kept, `resourceVersion` included, so the write
/// fails with a conflict if anyone wrote it since it was read.
pub fn taken(current: Option<&Lease>, target: &LeaseTarget, node: &str, epoch: Epoch, claim: Duration, now: Timestamp) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta { name: Some(target.name.clone()), namespace: Some(target.namespace.clone()), ..ObjectMeta::default() },
        spec: None,
    });
    lease.metadata.annotations.get_or_insert_with(Default::default).insert(EPOCH_ANNOTATION.to_string(), epoch.0.to_string());
    set_in_sync(&mut lease, &[]);
    set_handover(&mut lease, None);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(node.to_string());
    spec.lease_duration_seconds = Some(whole_seconds(claim));
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    lease
}

/// The Lease the live writes to renew its claim and publish its in-sync backups.
pub fn renewed(current: &Lease, claim: Duration, in_sync: &[String], now: Timestamp) -> Lease {
    let mut lease = current.clone();
    set_in_sync(&mut lease, in_sync);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.lease_duration_seconds = Some(whole_seconds(claim));
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// The Lease a live writes when it hands over or stops: no holder, so a backup in
/// `in_sync` may take it at once (a failback's new live became synced moments ago), or
/// only `handover_to` when named; the epoch stays.
pub fn released(current: &Lease, in_sync: &[String], handover_to: Option<&str>) -> Lease {
    let mut lease = current.clone();
    set_in_sync(&mut lease, in_sync);
    set_handover(&mut lease, handover_to);
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
    }
    lease
}

fn set_in_sync(lease: &mut Lease, in_sync: &[String]) {
    lease.metadata.annotations.get_or_insert_with(Default::default).insert(IN_SYNC_ANNOTATION.to_string(), in_sync.join(","));
}

fn set_handover(lease: &mut Lease, to: Option<&str>) {
    let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
    match to {
        Some(to) => annotations.insert(HANDOVER_ANNOTATION.to_string(), to.to_string()),
        None => annotations.remove(HANDOVER_ANNOTATION),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> LeaseTarget {
        LeaseTarget { name: "g1".into(), namespace: "ns".into() }
    }

    const NOW: Timestamp = Timestamp::UNIX_EPOCH;

    #[test]
    fn given_no_lease_when_taken_should_create_it_held_at_the_new_epoch() {
        let lease = taken(None, &target(), "a", Epoch(1), Duration::from_millis(1500), NOW);
        assert_eq!(lease.metadata.name.as_deref(), Some("g1"));
        assert_eq!(lease.metadata.namespace.as_deref(), Some("ns"));
        let state = read(&lease).unwrap();
        assert_eq!(state.holder.as_deref(), Some("a"));
        assert_eq!(state.epoch, Epoch(1));
        assert_eq!(state.transitions, 1);
        assert!(state.in_sync.is_empty());
        assert_eq!(state.claim, Some(Duration::from_secs(2)), "rounded up, never shorter");
    }

    #[test]
    fn given_held_lease_when_renewed_released_and_taken_should_keep_what_others_wrote() {
        let mut first = taken(None, &target(), "a", Epoch(3), Duration::from_secs(15), NOW);
        first.metadata.resource_version = Some("41".into());
        first.metadata.labels = Some([("duomq.io/group".to_string(), "g1".to_string())].into());
        let renewed = renewed(&first, Duration::from_secs(15), &["b".into(), "c".into()], NOW);
        let state = read(&renewed).unwrap();
        assert_eq!((state.holder.as_deref(), state.in_sync.clone(), state.version.as_str()), (Some("a"), vec!["b".to_string(), "c".to_string()], "41"));
        let released = released(&renewed, &["c".into()], Some("c"));
        let state = read(&released).unwrap();
        assert_eq!((state.holder, state.in_sync, state.epoch), (None, vec!["c".to_string()], Epoch(3)));
        assert_eq!(state.handover_to.as_deref(), Some("c"));
        let retaken = taken(Some(&released), &target(), "c", Epoch(4), Duration::from_secs(15), NOW);
        let state = read(&retaken).unwrap();
        assert_eq!((state.holder.as_deref(), state.epoch, state.transitions, state.in_sync.len()), (Some("c"), Epoch(4), 2, 0));
        assert_eq!(state.handover_to, None, "taken: the hand-over is done");
        assert_eq!(retaken.metadata.resource_version.as_deref(), Some("41"), "the write is conditional on the version read");
        assert!(retaken.metadata.labels.is_some());
    }

    #[test]
    fn given_garbage_epoch_should_refuse_to_read() {
        let mut lease = taken(None, &target(), "a", Epoch(3), Duration::from_secs(15), NOW);
        lease.metadata.annotations.as_mut().unwrap().insert(EPOCH_ANNOTATION.into(), "three".into());
        assert!(read(&lease).unwrap_err().contains("three"));
    }

    #[test]
    fn given_operator_created_lease_should_read_as_brand_new() {
        let lease = Lease { metadata: ObjectMeta { name: Some("g1".into()), ..ObjectMeta::default() }, spec: Some(LeaseSpec::default()) };
        assert!(read(&lease).unwrap().brand_new());
    }
}
