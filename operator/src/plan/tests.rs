use super::*;
use crate::status::tests::validated;
use crate::status::PodObservation;
use duomq_broker::admin::api::SyncState;
use rstest::rstest;

/// The plan with nothing rendered or owned (no removals), at a fixed time.
fn plan(
    v: &ValidatedBrokerGroup,
    seen: &Observation,
    annotation: Option<&str>,
    previous: &BrokerGroupStatus,
) -> Plan {
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
    super::plan(
        v,
        seen,
        &PlanInputs {
            annotation,
            previous,
            rendered: &BTreeSet::new(),
            now: &now,
        },
    )
}

fn pair() -> ValidatedBrokerGroup {
    validated("{groups: 1, backupsPerGroup: 1, ha: {allowFailback: true}}")
}

/// A running member in `role` (`synced` backups only when asked), created from `revision`.
fn member(role: Role, synced: bool, revision: &str) -> PodObservation {
    let sync = (role == Role::Backup).then_some(if synced {
        SyncState::Synced
    } else {
        SyncState::Syncing
    });
    PodObservation {
        ip: Some("10.0.0.1".into()),
        revision: Some(revision.into()),
        ..crate::status::tests::pod(crate::status::tests::broker(role, 1, sync), None)
    }
}

fn seen(members: &[(&str, PodObservation)], update: &str) -> Observation {
    Observation {
        pods: members
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect(),
        update_revisions: [("pair-g0".to_string(), update.to_string())].into(),
        ..Observation::default()
    }
}

fn step(from: &str, to: &str, reason: FailoverReason) -> SwitchoverStep {
    SwitchoverStep {
        group: "pair-g0".into(),
        from: from.into(),
        to: to.into(),
        reason,
    }
}

#[rstest]
#[case::one("pair-g0=pair-g0-1", Ok(vec![("pair-g0", "pair-g0-1")]))]
#[case::two(" a=a-1 , b=b-0,", Ok(vec![("a", "a-1"), ("b", "b-0")]))]
#[case::no_pod("pair-g0=", Err("\"pair-g0=\" is not <group>=<pod>"))]
#[case::no_equals("pair-g0-1", Err("not <group>=<pod>"))]
fn given_annotation_text_should_parse_group_pod_entries(
    #[case] text: &str,
    #[case] expected: Result<Vec<(&str, &str)>, &str>,
) {
    match (parse_requests(text), expected) {
        (Ok(got), Ok(want)) => {
            let want: BTreeMap<String, String> = want
                .into_iter()
                .map(|(g, p)| (g.into(), p.into()))
                .collect();
            assert_eq!(got, want);
            assert_eq!(
                parse_requests(&format_requests(&got).unwrap_or_default()),
                Ok(got),
                "round trip"
            );
        }
        (Err(e), Err(part)) => assert!(e.contains(part), "{e}"),
        (got, want) => panic!("expected {want:?}, got {got:?}"),
    }
}

#[test]
fn given_a_switchover_annotation_should_ask_the_live_and_clear_it_once_the_target_is_live() {
    let v = pair();
    let before = seen(
        &[
            ("pair-g0-0", member(Role::Live, false, "r1")),
            ("pair-g0-1", member(Role::Backup, true, "r1")),
        ],
        "r1",
    );
    let p = plan(
        &v,
        &before,
        Some("pair-g0=pair-g0-1"),
        &BrokerGroupStatus::default(),
    );
    assert_eq!(
        p.switchovers,
        vec![step("pair-g0-0", "pair-g0-1", FailoverReason::Switchover)]
    );
    assert!(
        p.done.is_empty() && p.problems.is_empty() && p.deletions.is_empty(),
        "{p:?}"
    );

    let after = seen(
        &[
            ("pair-g0-0", member(Role::Backup, true, "r1")),
            ("pair-g0-1", member(Role::Live, false, "r1")),
        ],
        "r1",
    );
    let p = plan(
        &v,
        &after,
        Some("pair-g0=pair-g0-1"),
        &BrokerGroupStatus::default(),
    );
    assert_eq!(p.done, vec!["pair-g0".to_string()]);
    assert_eq!(
        format_requests(&p.requests_left),
        None,
        "nothing left: the annotation goes"
    );
    // A request holds failback back: the preferred member is a synced backup now.
    assert!(p.switchovers.is_empty(), "{p:?}");
}

#[rstest]
#[case::not_a_member(
    "pair-g0=pair-g1-0",
    "pair-g1-0 is not a member of pair-g0 (pair-g0-0, pair-g0-1)"
)]
#[case::not_a_group("pair-g7=pair-g7-0", "pair-g7 is not a group of pair")]
#[case::garbled("pair-g0", "not <group>=<pod>")]
fn given_a_bad_switchover_annotation_should_report_it_and_switch_nothing(
    #[case] text: &str,
    #[case] message: &str,
) {
    let before = seen(
        &[
            ("pair-g0-0", member(Role::Live, false, "r1")),
            ("pair-g0-1", member(Role::Backup, true, "r1")),
        ],
        "r1",
    );
    let p = plan(&pair(), &before, Some(text), &BrokerGroupStatus::default());
    assert!(p.switchovers.is_empty(), "{p:?}");
    assert!(
        p.problems
            .iter()
            .any(|p| p.reason == Reason::SwitchoverFailed && p.message.contains(message)),
        "{:?}",
        p.problems
    );
}

#[test]
fn given_allow_failback_when_the_preferred_member_is_a_synced_backup_should_switch_back_to_it_only_then(
) {
    let v = pair();
    let syncing = seen(
        &[
            ("pair-g0-0", member(Role::Backup, false, "r1")),
            ("pair-g0-1", member(Role::Live, false, "r1")),
        ],
        "r1",
    );
    assert!(
        plan(&v, &syncing, None, &BrokerGroupStatus::default())
            .switchovers
            .is_empty(),
        "not before it is in sync"
    );
    let synced = seen(
        &[
            ("pair-g0-0", member(Role::Backup, true, "r1")),
            ("pair-g0-1", member(Role::Live, false, "r1")),
        ],
        "r1",
    );
    assert_eq!(
        plan(&v, &synced, None, &BrokerGroupStatus::default()).switchovers,
        vec![step("pair-g0-1", "pair-g0-0", FailoverReason::Failback)]
    );
    let without = validated("{groups: 1, backupsPerGroup: 1, ha: {allowFailback: false}}");
    assert!(
        plan(&without, &synced, None, &BrokerGroupStatus::default())
            .switchovers
            .is_empty(),
        "only with allowFailback"
    );
    let quorum =
        validated("{groups: 3, backupsPerGroup: 1, ha: {allowFailback: true, arbiter: quorum}}");
    assert!(
        plan(&quorum, &synced, None, &BrokerGroupStatus::default())
            .switchovers
            .is_empty(),
        "under quorum the brokers fail back themselves"
    );
}

/// The plan for `pair` (no annotation, no history) with these two members.
fn pair_plan(pod0: PodObservation, pod1: PodObservation, update: &str) -> Plan {
    let s = seen(&[("pair-g0-0", pod0), ("pair-g0-1", pod1)], update);
    plan(&pair(), &s, None, &BrokerGroupStatus::default())
}

fn deleted(p: &Plan) -> Vec<&str> {
    p.deletions.iter().map(|d| d.pod.as_str()).collect()
}

/// The rolling upgrade of a pair, one observation after another: the backup first, then a
/// switchover to it, then the former live; never two members down; failback only at the end.
#[test]
fn given_a_new_revision_should_update_the_backup_then_switch_over_then_update_the_former_live() {
    let (live0, backup1) = ("pair-g0-0", "pair-g0-1");
    // 1. both on r1: delete the backup.
    let p = pair_plan(
        member(Role::Live, false, "r1"),
        member(Role::Backup, true, "r1"),
        "r2",
    );
    assert_eq!(deleted(&p), [backup1]);
    assert!(p.switchovers.is_empty());
    let upgrade = p.upgrade.unwrap_or_default();
    assert!(upgrade.contains("updating pair-g0-1 to r2"), "{upgrade}");
    // 2. the backup is back at r2 but still syncing: wait, delete nothing.
    let p = pair_plan(
        member(Role::Live, false, "r1"),
        member(Role::Backup, false, "r2"),
        "r2",
    );
    assert!(p.deletions.is_empty() && p.switchovers.is_empty(), "{p:?}");
    let upgrade = p.upgrade.unwrap_or_default();
    assert!(upgrade.contains("waiting for pair-g0-1"), "{upgrade}");
    // 3. in sync: hand the live role to it.
    let p = pair_plan(
        member(Role::Live, false, "r1"),
        member(Role::Backup, true, "r2"),
        "r2",
    );
    assert_eq!(
        p.switchovers,
        vec![step(live0, backup1, FailoverReason::RollingUpgrade)]
    );
    assert!(p.deletions.is_empty());
    // 4. the former live is a synced backup at r1: delete it (no failback while outdated).
    let p = pair_plan(
        member(Role::Backup, true, "r1"),
        member(Role::Live, false, "r2"),
        "r2",
    );
    assert_eq!(deleted(&p), [live0]);
    assert!(p.switchovers.is_empty(), "{p:?}");
    // 5. all at r2 and in sync: done; allowFailback hands the role back.
    let p = pair_plan(
        member(Role::Backup, true, "r2"),
        member(Role::Live, false, "r2"),
        "r2",
    );
    assert_eq!((p.upgrade.as_deref(), deleted(&p).len()), (None, 0));
    assert_eq!(
        p.switchovers,
        vec![step(backup1, live0, FailoverReason::Failback)]
    );
}

#[test]
fn given_a_member_down_should_never_take_a_second_one_down() {
    let mut dead = member(Role::Backup, true, "r2");
    dead.running = false;
    dead.broker = Err("not running".into());
    // The updated backup is down: the outdated live stays.
    let p = pair_plan(member(Role::Live, false, "r1"), dead.clone(), "r2");
    assert!(p.deletions.is_empty() && p.switchovers.is_empty(), "{p:?}");
    // An outdated backup that is down already is replaced (it takes nothing more down)...
    let mut dead_old = dead;
    dead_old.revision = Some("r1".into());
    let p = pair_plan(member(Role::Live, false, "r1"), dead_old.clone(), "r2");
    assert_eq!(deleted(&p), ["pair-g0-1"]);
    // ...but not while it is still terminating.
    dead_old.terminating = true;
    let p = pair_plan(member(Role::Live, false, "r1"), dead_old, "r2");
    assert!(p.deletions.is_empty(), "{p:?}");
}

#[test]
fn given_two_groups_to_upgrade_should_update_one_group_at_a_time() {
    let v = validated("{groups: 2, backupsPerGroup: 1}");
    let mut s = seen(
        &[
            ("pair-g0-0", member(Role::Live, false, "a1")),
            ("pair-g0-1", member(Role::Backup, false, "a2")),
            ("pair-g1-0", member(Role::Live, false, "b1")),
            ("pair-g1-1", member(Role::Backup, true, "b1")),
        ],
        "a2",
    );
    s.update_revisions.insert("pair-g1".into(), "b2".into());
    // group 0 waits for its backup to sync; group 1 must not start meanwhile
    let p = plan(&v, &s, None, &BrokerGroupStatus::default());
    assert!(p.deletions.is_empty() && p.switchovers.is_empty(), "{p:?}");
    s.pods
        .insert("pair-g0-1".into(), member(Role::Backup, true, "a2"));
    s.pods
        .insert("pair-g0-0".into(), member(Role::Backup, true, "a2"));
    s.pods
        .insert("pair-g0-1".into(), member(Role::Live, false, "a2"));
    let p = plan(&v, &s, None, &BrokerGroupStatus::default());
    assert_eq!(
        p.deletions
            .iter()
            .map(|d| d.pod.as_str())
            .collect::<Vec<_>>(),
        ["pair-g1-1"],
        "group 0 done: group 1's backup next"
    );
}

#[test]
fn given_a_cli_request_should_add_it_to_the_annotation_or_name_the_valid_choices() {
    let v = validated("{groups: 2, backupsPerGroup: 1}");
    assert_eq!(
        with_request(&v.groups, None, "pair-g1", "pair-g1-1"),
        Ok("pair-g1=pair-g1-1".to_string())
    );
    assert_eq!(
        with_request(
            &v.groups,
            Some("pair-g0=pair-g0-1,pair-g1=pair-g1-0"),
            "pair-g1",
            "pair-g1-1"
        ),
        Ok("pair-g0=pair-g0-1,pair-g1=pair-g1-1".to_string())
    );
    let e = with_request(&v.groups, None, "pair-g2", "pair-g2-0").unwrap_err();
    assert!(e.contains("groups: pair-g0, pair-g1"), "{e}");
    let e = with_request(&v.groups, None, "pair-g0", "pair-g1-0").unwrap_err();
    assert!(e.contains("members: pair-g0-0, pair-g0-1"), "{e}");
}

#[test]
fn given_a_live_chosen_by_a_switchover_should_not_fail_back_from_it() {
    let synced = seen(
        &[
            ("pair-g0-0", member(Role::Backup, true, "r1")),
            ("pair-g0-1", member(Role::Live, false, "r1")),
        ],
        "r1",
    );
    let chosen: BrokerGroupStatus = serde_json::from_value(serde_json::json!({"groups": [{
        "name": "pair-g0", "live": "pair-g0-1", "preferredLive": "pair-g0-0",
        "lastFailover": {"time": "2026-01-01T00:00:00Z", "from": "pair-g0-0", "to": "pair-g0-1", "reason": "Switchover"},
    }]}))
    .unwrap();
    assert!(plan(&pair(), &synced, None, &chosen).switchovers.is_empty());
    let mut lost = chosen.clone();
    lost.groups[0].last_failover.as_mut().unwrap().reason = FailoverReason::LiveLost;
    assert_eq!(
        plan(&pair(), &synced, None, &lost).switchovers.len(),
        1,
        "after a failover it fails back"
    );
}

/// A live and its synced backup, both at revision r1.
fn settled_pair() -> Observation {
    seen(
        &[
            ("pair-g0-0", member(Role::Live, false, "r1")),
            ("pair-g0-1", member(Role::Backup, true, "r1")),
        ],
        "r1",
    )
}

#[test]
fn given_a_pending_switchover_when_no_member_is_live_for_a_moment_should_wait_silently() {
    let mut between = settled_pair();
    between.pods.get_mut("pair-g0-0").unwrap().broker =
        crate::status::tests::broker(Role::Backup, 1, Some(SyncState::Connecting));
    let previous: BrokerGroupStatus = serde_json::from_value(serde_json::json!({
        "groups": [{"name": "pair-g0", "preferredLive": "pair-g0-0",
                    "switchover": {"to": "pair-g0-1", "reason": "Switchover", "time": "1970-01-01T00:16:30Z"}}],
    }))
    .unwrap();
    let p = plan(&pair(), &between, Some("pair-g0=pair-g0-1"), &previous);
    assert!(p.problems.is_empty() && p.switchovers.is_empty(), "{p:?}");
    // with nothing pending, a request with no live to ask is a problem
    let p = plan(&pair(), &between, Some("pair-g0=pair-g0-1"), &BrokerGroupStatus::default());
    assert!(
        p.problems
            .iter()
            .any(|p| p.reason == Reason::SwitchoverFailed && p.message.contains("no live")),
        "{p:?}"
    );
}

fn fenced(spec_annotations: &str) -> ValidatedBrokerGroup {
    let text = format!("apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: pair, annotations: {spec_annotations}}}\nspec: {{groups: 1, backupsPerGroup: 1}}\n");
    let bg: crate::api::BrokerGroup =
        crate::render::parse_documents(&text, "default").unwrap().remove(0);
    crate::validate::validate(
        &bg,
        &crate::validate::Dependencies {
            new_password: "p".into(),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn given_a_fenced_backup_should_fence_it_and_a_fenced_live_should_hand_over_first() {
    let v = fenced(r#"{duomq.io/fenced-members: '["pair-g0-1"]'}"#);
    let p = plan(&v, &settled_pair(), None, &BrokerGroupStatus::default());
    assert_eq!(
        p.fences,
        vec![FenceStep {
            group: "pair-g0".into(),
            pod: "pair-g0-1".into(),
            fenced: true,
            force: false
        }]
    );

    let v = fenced(r#"{duomq.io/fenced-members: '["pair-g0-0"]'}"#);
    let p = plan(&v, &settled_pair(), None, &BrokerGroupStatus::default());
    assert_eq!(
        p.switchovers,
        vec![step("pair-g0-0", "pair-g0-1", FailoverReason::Fence)]
    );
    assert!(p.fences.is_empty(), "fenced once it is a backup: {p:?}");

    // no backup in sync: the live keeps serving and the problem says why
    let mut lonely = settled_pair();
    lonely.pods.get_mut("pair-g0-1").unwrap().broker =
        crate::status::tests::broker(Role::Backup, 1, Some(SyncState::Syncing));
    let p = plan(&v, &lonely, None, &BrokerGroupStatus::default());
    assert!(p.switchovers.is_empty() && p.fences.is_empty(), "{p:?}");
    assert_eq!(p.problems[0].reason, Reason::FenceFailed);

    // listed no more: unfenced
    let mut was = settled_pair();
    if let Ok(b) = &mut was.pods.get_mut("pair-g0-1").unwrap().broker {
        b.admin_fenced = true;
    }
    let p = plan(&pair(), &was, None, &BrokerGroupStatus::default());
    assert_eq!(p.fences.len(), 1);
    assert!(!p.fences[0].fenced);
}

#[test]
fn given_a_garbled_fenced_members_annotation_should_fence_nothing_and_say_why() {
    let v = fenced(r#"{duomq.io/fenced-members: 'pair-g0-1'}"#);
    assert!(v.fenced.is_empty());
    assert_eq!(v.problems[0].reason, Reason::InvalidAnnotation);
    // a name of no member (a group scaled away) fences nothing and blocks nothing
    let v = fenced(r#"{duomq.io/fenced-members: '["gone-g0-1", "pair-g0-1"]'}"#);
    assert_eq!(v.fenced.iter().collect::<Vec<_>>(), vec!["pair-g0-1"]);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}

/// `pair` with one group in the spec while `existing` groups have StatefulSets (name, claim size).
fn with_existing(spec: &str, existing: &[(&str, &str)]) -> ValidatedBrokerGroup {
    let text = format!("apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {{name: pair}}\nspec: {spec}\n");
    let bg: crate::api::BrokerGroup =
        crate::render::parse_documents(&text, "default").unwrap().remove(0);
    crate::validate::validate(
        &bg,
        &crate::validate::Dependencies {
            new_password: "p".into(),
            existing_groups: existing
                .iter()
                .map(|(g, size)| (g.to_string(), Some(size.to_string())))
                .collect(),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn given_a_removed_group_should_drain_it_into_the_others_and_delete_it_only_once_drained() {
    use duomq_broker::admin::api::{DrainState, DrainStatus};
    let v = with_existing(
        "{groups: 1, backupsPerGroup: 1}",
        &[("pair-g0", "10Gi"), ("pair-g1", "10Gi")],
    );
    assert_eq!(
        v.groups.iter().map(|g| (g.name.as_str(), g.draining)).collect::<Vec<_>>(),
        vec![("pair-g0", false), ("pair-g1", true)]
    );
    let mut s = settled_pair();
    s.pods.insert("pair-g1-0".into(), member(Role::Live, false, "r1"));
    s.pods.insert("pair-g1-1".into(), member(Role::Backup, true, "r1"));
    let p = plan(&v, &s, None, &BrokerGroupStatus::default());
    assert_eq!(
        p.drains,
        vec![DrainStep {
            group: "pair-g1".into(),
            live: "pair-g1-0".into(),
            targets: vec!["pair-g0".into()],
        }]
    );
    assert!(p.removals.is_empty(), "not before it is drained: {p:?}");

    let progress = |state, left| DrainStatus {
        state,
        messages_left: left,
        forwarded: 10,
        targets: vec!["pair-g0".into()],
        reason: None,
    };
    let set = |s: &mut Observation, d: DrainStatus| {
        if let Ok(b) = &mut s.pods.get_mut("pair-g1-0").unwrap().broker {
            b.drain = Some(d);
        }
    };
    set(&mut s, progress(DrainState::Draining, 5));
    let p = plan(&v, &s, None, &BrokerGroupStatus::default());
    assert!(p.drains.is_empty() && p.removals.is_empty(), "asked already: {p:?}");

    set(&mut s, progress(DrainState::Drained, 0));
    let p = plan(&v, &s, None, &BrokerGroupStatus::default());
    assert_eq!(
        p.removals,
        vec![Removal {
            kind: "StatefulSet".into(),
            name: "pair-g1".into(),
        }]
    );
}

#[test]
fn given_a_larger_storage_size_should_grow_the_claims_and_render_the_existing_template_size() {
    let v = with_existing(
        "{groups: 1, backupsPerGroup: 1, storage: {size: 20Gi}}",
        &[("pair-g0", "10Gi")],
    );
    assert_eq!(v.groups[0].journal_size, "10Gi", "the template cannot change in place");
    let mut s = settled_pair();
    s.owned.push(crate::status::OwnedObject {
        kind: "StatefulSet".into(),
        name: "pair-g0".into(),
    });
    let p = plan(&v, &s, None, &BrokerGroupStatus::default());
    assert_eq!(
        p.resizes,
        vec![Resize {
            group: "pair-g0".into(),
            claims: vec!["data-pair-g0-0".into(), "data-pair-g0-1".into()],
            size: "20Gi".into(),
        }]
    );
    let same = with_existing("{groups: 1, backupsPerGroup: 1, storage: {size: 20Gi}}", &[("pair-g0", "20Gi")]);
    assert!(plan(&same, &s, None, &BrokerGroupStatus::default()).resizes.is_empty());
}
