//! What the StatefulSet controller should do next, decided from the StatefulSet, its pods
//! and the namespace's claims: pure, so every rule (ordering, scale-down, partitioned
//! rolling updates, OnDelete) is pinned by unit tests. The executor in `mod.rs` only carries
//! the actions out.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::cluster::names;
use crate::cluster::pods::{
    controller_ref, is_controlled_by, is_running_and_ready, is_terminal, is_terminating,
    template_hash,
};
use crate::cluster::selector::label_selector_matches;

/// One step towards the StatefulSet's spec.
#[derive(Debug, Clone, PartialEq)]
pub enum StsAction {
    /// Create a claim from a volumeClaimTemplate (always before its pod).
    CreateClaim(Box<PersistentVolumeClaim>),
    CreatePod(Box<Pod>),
    /// Adopt an orphan (this uid only): a pod of this set's name and selector that no
    /// controller owns, e.g. left running when a former StatefulSet of the same name was
    /// deleted with `propagationPolicy: Orphan`. It gets this set as its controller.
    AdoptPod {
        name: String,
        uid: String,
    },
    /// Delete a pod (this uid only): scale-down, a failed pod to recreate, or a rolling
    /// update.
    DeletePod {
        name: String,
        uid: String,
        why: DeleteReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    ScaleDown,
    Failed,
    Update,
}

/// The actions to take now, and the status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct StsPlan {
    pub actions: Vec<StsAction>,
    pub status: StatefulSetStatus,
}

/// The revision name of the StatefulSet's current template: `{name}-{hash}`.
pub fn update_revision(sts: &StatefulSet) -> String {
    let template = sts.spec.clone().unwrap_or_default().template;
    format!("{}-{}", sts.name_any(), template_hash(&template))
}

/// Plans the next steps for `sts`, given the pods and claims of its namespace.
///
/// OrderedReady creates ordinals in order, each only once the previous one is Running and
/// Ready, and scales down from the highest ordinal, one at a time, only while all others
/// are healthy; Parallel does both at once. A RollingUpdate replaces pods at ordinals
/// `>= partition` whose revision is not the update revision, highest first, one at a time,
/// each only once all higher ordinals are updated, Running and Ready. OnDelete replaces
/// nothing: a pod deleted by someone comes back at the update revision. Failed pods are
/// deleted to be recreated.
///
/// Pods recreated below the partition also get the update revision: this controller keeps
/// only the current template, not ControllerRevisions of older ones.
///
/// Orphans are adopted first, as Kubernetes' controller-ref manager does: a pod named
/// `{set}-{ordinal}` that matches the selector, is not being deleted and has no controller
/// becomes this set's, and is planned as one of its pods from then on (a pod of the same
/// template keeps running: its revision label is the update revision).
pub fn plan_statefulset(
    sts: &StatefulSet,
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
) -> StsPlan {
    let spec = sts.spec.clone().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.uid().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let update_rev = update_revision(sts);
    let current_rev = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .unwrap_or_else(|| update_rev.clone());
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);

    let orphans: Vec<&Pod> = pods.iter().filter(|p| is_orphan_of(sts, p)).collect();
    let owned: BTreeMap<i32, &Pod> = pods
        .iter()
        .filter(|p| is_controlled_by(p, &uid))
        .chain(orphans.iter().copied())
        .filter_map(|p| Some((ordinal_of(&name, &p.name_any())?, p)))
        .collect();
    let claim_names: Vec<String> = claims.iter().map(|c| c.name_any()).collect();

    let mut actions: Vec<StsAction> = orphans
        .iter()
        .map(|p| StsAction::AdoptPod {
            name: p.name_any(),
            uid: p.uid().unwrap_or_default(),
        })
        .collect();
    let adopting = actions.len();
    let mut blocked = false;
    for ordinal in 0..replicas {
        match owned.get(&ordinal) {
            None => {
                for claim in build_claims(sts, ordinal) {
                    if !claim_names.contains(&claim.name_any()) {
                        actions.push(StsAction::CreateClaim(Box::new(claim)));
                    }
                }
                actions.push(StsAction::CreatePod(Box::new(build_pod(
                    sts,
                    ordinal,
                    &update_rev,
                ))));
                blocked = true;
            }
            Some(pod) if is_terminating(pod) => blocked = true,
            Some(pod) if is_terminal(pod) => {
                actions.push(StsAction::DeletePod {
                    name: pod.name_any(),
                    uid: pod.uid().unwrap_or_default(),
                    why: DeleteReason::Failed,
                });
                blocked = true;
            }
            Some(pod) if !is_running_and_ready(pod) => blocked = true,
            Some(_) => {}
        }
        if blocked && !parallel {
            break;
        }
    }

    let condemned: Vec<&Pod> = owned.range(replicas..).rev().map(|(_, p)| *p).collect();
    if parallel {
        for pod in condemned.iter().filter(|p| !is_terminating(p)) {
            actions.push(StsAction::DeletePod {
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
                why: DeleteReason::ScaleDown,
            });
        }
    } else if !blocked {
        if let Some(highest) = condemned.first() {
            // Waits for the previous one to be gone, and for every other pod to be healthy.
            let others_healthy = condemned[1..]
                .iter()
                .all(|p| is_running_and_ready(p) && !is_terminating(p));
            if !is_terminating(highest) && others_healthy {
                actions.push(StsAction::DeletePod {
                    name: highest.name_any(),
                    uid: highest.uid().unwrap_or_default(),
                    why: DeleteReason::ScaleDown,
                });
            }
            blocked = true;
        }
    }

    if !on_delete && !blocked && actions.len() == adopting {
        for ordinal in (partition..replicas).rev() {
            let Some(pod) = owned.get(&ordinal) else {
                break;
            };
            if revision_of(pod) != Some(update_rev.as_str()) {
                if !is_terminating(pod) {
                    actions.push(StsAction::DeletePod {
                        name: pod.name_any(),
                        uid: pod.uid().unwrap_or_default(),
                        why: DeleteReason::Update,
                    });
                }
                break;
            }
            if !is_running_and_ready(pod) {
                break;
            }
        }
    }

    StsPlan {
        actions,
        status: compute_status(sts, &owned, &current_rev, &update_rev, on_delete),
    }
}

fn compute_status(
    sts: &StatefulSet,
    owned: &BTreeMap<i32, &Pod>,
    current_rev: &str,
    update_rev: &str,
    on_delete: bool,
) -> StatefulSetStatus {
    let live = || owned.values().filter(|p| !is_terminating(p));
    let count_rev = |rev: &str| live().filter(|p| revision_of(p) == Some(rev)).count() as i32;
    let replicas = owned.len() as i32;
    let ready = owned.values().filter(|p| is_running_and_ready(p)).count() as i32;
    let updated = count_rev(update_rev);
    let desired = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let (current_revision, current_replicas) =
        if !on_delete && updated == replicas && ready == replicas && replicas == desired {
            (update_rev.to_string(), updated)
        } else {
            (current_rev.to_string(), count_rev(current_rev))
        };
    StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        current_replicas: Some(current_replicas),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_rev.to_string()),
        collision_count: Some(0),
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

/// Whether `pod` is an orphan `sts` adopts: named as one of its pods, matching its
/// selector, not being deleted, and without a controller.
fn is_orphan_of(sts: &StatefulSet, pod: &Pod) -> bool {
    let selector = sts.spec.as_ref().map(|s| &s.selector);
    let has_controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true));
    !has_controller
        && !is_terminating(pod)
        && ordinal_of(&sts.name_any(), &pod.name_any()).is_some()
        && selector.is_some_and(|s| label_selector_matches(s, pod.labels()))
}

/// The ordinal of `pod_name` if it is `{sts}-{n}`.
pub fn ordinal_of(sts: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(sts)?.strip_prefix('-')?;
    if rest.is_empty()
        || !rest.bytes().all(|b| b.is_ascii_digit())
        || rest.starts_with('0') && rest.len() > 1
    {
        return None;
    }
    rest.parse().ok()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::LABEL_CONTROLLER_REVISION_HASH))
        .map(String::as_str)
}

/// The claim of template `claim` for `ordinal`: `{claim}-{sts}-{ordinal}`.
pub fn claim_name(claim: &str, sts: &str, ordinal: i32) -> String {
    format!("{claim}-{sts}-{ordinal}")
}

/// The claims of `ordinal`, from the volumeClaimTemplates, labelled with the selector's
/// labels as Kubernetes does. Owned by the StatefulSet only when the retention policy
/// deletes them with it.
pub fn build_claims(sts: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = sts.spec.clone().unwrap_or_default();
    let name = sts.name_any();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|template| {
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&template.name_any(), &name, ordinal)),
                    namespace: sts.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: delete_with_set.then(|| vec![controller_ref(sts)]),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The pod of `ordinal` from the template: identity labels, hostname and subdomain, the
/// claims as volumes, the StatefulSet as controller.
pub fn build_pod(sts: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let spec = sts.spec.clone().unwrap_or_default();
    let name = sts.name_any();
    let pod_name = format!("{name}-{ordinal}");
    let template = spec.template;
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(names::LABEL_STS_POD_NAME.into(), pod_name.clone());
    labels.insert(
        names::LABEL_CONTROLLER_REVISION_HASH.into(),
        revision.into(),
    );
    labels.insert(names::LABEL_POD_INDEX.into(), ordinal.to_string());
    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.hostname = Some(pod_name.clone());
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    let mut volumes = pod_spec.volumes.take().unwrap_or_default();
    for claim in spec.volume_claim_templates.iter().flatten() {
        let volume_name = claim.name_any();
        volumes.retain(|v| v.name != volume_name);
        volumes.push(Volume {
            name: volume_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&volume_name, &name, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    pod_spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: sts.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller_ref(sts)]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::template;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use rstest::rstest;

    fn sts(replicas: i32, policy: &str, image: &str) -> StatefulSet {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("sts-uid".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("web-hl".into()),
                pod_management_policy: Some(policy.into()),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                template: template(&[("app", "web")], image),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn partitioned(mut s: StatefulSet, partition: i32) -> StatefulSet {
        s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy {
                partition: Some(partition),
                ..Default::default()
            }),
        });
        s
    }

    fn on_delete(mut s: StatefulSet) -> StatefulSet {
        s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        s
    }

    #[derive(Clone, Copy)]
    enum State {
        Ready,
        Pending,
        Failed,
        Terminating,
    }

    /// A pod of `set` at `ordinal`, built from `revision_of` (another image means an old
    /// revision).
    fn pod(set: &StatefulSet, ordinal: i32, image: &str, state: State) -> Pod {
        let mut template_set = set.clone();
        template_set
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some(image.into());
        let mut p = build_pod(set, ordinal, &update_revision(&template_set));
        let (phase, ready) = match state {
            State::Ready | State::Terminating => ("Running", "True"),
            State::Pending => ("Pending", "False"),
            State::Failed => ("Failed", "False"),
        };
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        if matches!(state, State::Terminating) {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        p
    }

    fn claims_of(set: &StatefulSet, ordinals: &[i32]) -> Vec<PersistentVolumeClaim> {
        ordinals
            .iter()
            .flat_map(|o| build_claims(set, *o))
            .collect()
    }

    /// Actions as short strings: `claim:data-web-0`, `create:web-0`, `delete:web-2`.
    fn summary(plan: &StsPlan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                StsAction::CreateClaim(c) => format!("claim:{}", c.name_any()),
                StsAction::CreatePod(p) => format!("create:{}", p.name_any()),
                StsAction::DeletePod { name, .. } => format!("delete:{name}"),
                StsAction::AdoptPod { name, .. } => format!("adopt:{name}"),
            })
            .collect()
    }

    const NEW: &str = "img:2";
    const OLD: &str = "img:1";

    #[rstest]
    #[case::ordered_first_pod_with_claim(sts(3, "OrderedReady", NEW), vec![], vec![], vec!["claim:data-web-0", "create:web-0"])]
    #[case::ordered_waits_for_ready(sts(3, "OrderedReady", NEW), vec![(0, NEW, State::Pending)], vec![0], vec![])]
    #[case::ordered_next_after_ready(sts(3, "OrderedReady", NEW), vec![(0, NEW, State::Ready)], vec![0], vec!["claim:data-web-1", "create:web-1"])]
    #[case::claim_kept_pod_recreated(sts(2, "OrderedReady", NEW), vec![(0, NEW, State::Ready)], vec![0, 1], vec!["create:web-1"])]
    #[case::parallel_all_at_once(sts(3, "Parallel", NEW), vec![(1, NEW, State::Pending)], vec![1], vec!["claim:data-web-0", "create:web-0", "claim:data-web-2", "create:web-2"])]
    #[case::failed_pod_deleted(sts(2, "OrderedReady", NEW), vec![(0, NEW, State::Failed), (1, NEW, State::Ready)], vec![0, 1], vec!["delete:web-0"])]
    #[case::terminating_pod_waited_for(sts(2, "OrderedReady", NEW), vec![(0, NEW, State::Terminating), (1, NEW, State::Ready)], vec![0, 1], vec![])]
    #[case::scale_down_highest_first(sts(1, "OrderedReady", NEW), vec![(0, NEW, State::Ready), (1, NEW, State::Ready), (2, NEW, State::Ready)], vec![0, 1, 2], vec!["delete:web-2"])]
    #[case::scale_down_one_at_a_time(sts(1, "OrderedReady", NEW), vec![(0, NEW, State::Ready), (1, NEW, State::Ready), (2, NEW, State::Terminating)], vec![0, 1, 2], vec![])]
    #[case::scale_down_waits_for_health(sts(1, "OrderedReady", NEW), vec![(0, NEW, State::Pending), (1, NEW, State::Ready)], vec![0, 1], vec![])]
    #[case::parallel_scale_down_all(sts(1, "Parallel", NEW), vec![(0, NEW, State::Ready), (1, NEW, State::Ready), (2, NEW, State::Ready)], vec![0, 1, 2], vec!["delete:web-2", "delete:web-1"])]
    #[case::update_highest_first(sts(3, "OrderedReady", NEW), vec![(0, OLD, State::Ready), (1, OLD, State::Ready), (2, OLD, State::Ready)], vec![0, 1, 2], vec!["delete:web-2"])]
    #[case::update_next_after_ready(sts(3, "OrderedReady", NEW), vec![(0, OLD, State::Ready), (1, OLD, State::Ready), (2, NEW, State::Ready)], vec![0, 1, 2], vec!["delete:web-1"])]
    #[case::update_waits_for_updated_pod(sts(3, "Parallel", NEW), vec![(0, OLD, State::Ready), (1, OLD, State::Ready), (2, NEW, State::Pending)], vec![0, 1, 2], vec![])]
    #[case::update_respects_partition(partitioned(sts(3, "OrderedReady", NEW), 2), vec![(0, OLD, State::Ready), (1, OLD, State::Ready), (2, NEW, State::Ready)], vec![0, 1, 2], vec![])]
    #[case::update_above_partition(partitioned(sts(3, "OrderedReady", NEW), 1), vec![(0, OLD, State::Ready), (1, OLD, State::Ready), (2, NEW, State::Ready)], vec![0, 1, 2], vec!["delete:web-1"])]
    #[case::on_delete_never_deletes(on_delete(sts(2, "OrderedReady", NEW)), vec![(0, OLD, State::Ready), (1, OLD, State::Ready)], vec![0, 1], vec![])]
    #[case::on_delete_recreates_at_new_revision(on_delete(sts(2, "OrderedReady", NEW)), vec![(0, OLD, State::Ready)], vec![0, 1], vec!["create:web-1"])]
    fn given_statefulset_and_pods_when_planning_should_take_expected_steps(
        #[case] set: StatefulSet,
        #[case] existing: Vec<(i32, &str, State)>,
        #[case] claim_ordinals: Vec<i32>,
        #[case] expected: Vec<&str>,
    ) {
        let existing: Vec<Pod> = existing
            .into_iter()
            .map(|(o, image, state)| pod(&set, o, image, state))
            .collect();
        let plan = plan_statefulset(&set, &existing, &claims_of(&set, &claim_ordinals));
        assert_eq!(summary(&plan), expected);
    }

    /// `pod` without its owner: what a deletion with `propagationPolicy: Orphan` of its
    /// StatefulSet leaves.
    fn orphaned(mut p: Pod) -> Pod {
        p.metadata.owner_references = None;
        p
    }

    #[test]
    fn given_orphans_of_a_deleted_set_when_a_set_of_that_name_plans_should_adopt_them_and_keep_them_running(
    ) {
        let set = sts(2, "OrderedReady", NEW);
        let existing = vec![
            orphaned(pod(&set, 0, NEW, State::Ready)),
            orphaned(pod(&set, 1, NEW, State::Ready)),
        ];
        let plan = plan_statefulset(&set, &existing, &claims_of(&set, &[0, 1]));
        assert_eq!(summary(&plan), vec!["adopt:web-0", "adopt:web-1"]);
        assert_eq!(plan.status.replicas, 2);
        assert_eq!(plan.status.ready_replicas, Some(2));
    }

    #[test]
    fn given_orphan_of_an_older_template_when_adopted_should_be_updated_like_its_own_pods() {
        let set = sts(1, "OrderedReady", NEW);
        let existing = vec![orphaned(pod(&set, 0, OLD, State::Ready))];
        let plan = plan_statefulset(&set, &existing, &claims_of(&set, &[0]));
        assert_eq!(summary(&plan), vec!["adopt:web-0", "delete:web-0"]);
    }

    #[rstest]
    #[case::other_labels(&[("app", "other")], None)]
    #[case::another_controller(&[("app", "web")], Some("rs-uid"))]
    fn given_pod_the_set_may_not_claim_when_planning_should_not_adopt_it(
        #[case] labels: &[(&str, &str)],
        #[case] controller: Option<&str>,
    ) {
        let set = sts(1, "OrderedReady", NEW);
        let mut p = orphaned(pod(&set, 0, NEW, State::Ready));
        p.metadata.labels = Some(crate::cluster::fixtures::map(labels));
        if let Some(uid) = controller {
            let mut owner = controller_ref(&set);
            owner.uid = uid.into();
            p.metadata.owner_references = Some(vec![owner]);
        }
        let plan = plan_statefulset(&set, &[p], &claims_of(&set, &[0]));
        assert!(
            !summary(&plan).iter().any(|a| a.starts_with("adopt:")),
            "{:?}",
            summary(&plan)
        );
    }

    #[test]
    fn given_new_pod_when_building_should_carry_identity_and_claims() {
        let set = sts(2, "OrderedReady", NEW);
        let p = build_pod(&set, 1, "web-abc");
        let labels = p.labels();
        assert_eq!(
            labels.get(names::LABEL_STS_POD_NAME).map(String::as_str),
            Some("web-1")
        );
        assert_eq!(
            labels.get(names::LABEL_POD_INDEX).map(String::as_str),
            Some("1")
        );
        assert_eq!(
            labels
                .get(names::LABEL_CONTROLLER_REVISION_HASH)
                .map(String::as_str),
            Some("web-abc")
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("web-hl"));
        let claim = spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(claim.claim_name, "data-web-1");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("StatefulSet", "sts-uid", Some(true))
        );
    }

    #[test]
    fn given_rolled_out_set_when_planning_should_report_status() {
        let set = sts(2, "OrderedReady", NEW);
        let existing = vec![
            pod(&set, 0, NEW, State::Ready),
            pod(&set, 1, NEW, State::Pending),
        ];
        let status = plan_statefulset(&set, &existing, &claims_of(&set, &[0, 1])).status;
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.replicas, 2);
        assert_eq!(status.ready_replicas, Some(1));
        assert_eq!(status.available_replicas, Some(1));
        assert_eq!(status.updated_replicas, Some(2));
        assert_eq!(status.update_revision, Some(update_revision(&set)));
        assert_eq!(status.current_revision, Some(update_revision(&set)));
        assert_eq!(status.collision_count, Some(0));
    }

    #[test]
    fn given_update_in_progress_when_planning_should_keep_current_revision() {
        let mut set = sts(2, "OrderedReady", NEW);
        set.status = Some(StatefulSetStatus {
            current_revision: Some("web-old".into()),
            ..Default::default()
        });
        let mut old = pod(&set, 0, OLD, State::Ready);
        old.labels_mut().insert(
            names::LABEL_CONTROLLER_REVISION_HASH.into(),
            "web-old".into(),
        );
        let existing = vec![old, pod(&set, 1, NEW, State::Ready)];
        let status = plan_statefulset(&set, &existing, &claims_of(&set, &[0, 1])).status;
        assert_eq!(status.current_revision.as_deref(), Some("web-old"));
        assert_eq!(status.current_replicas, Some(1));
        assert_eq!(status.updated_replicas, Some(1));
    }

    #[rstest]
    #[case("web-0", Some(0))]
    #[case("web-12", Some(12))]
    #[case("web-01", None)]
    #[case("web-x", None)]
    #[case("webb-1", None)]
    #[case("web-", None)]
    fn given_pod_name_when_parsing_ordinal_should_accept_only_set_ordinals(
        #[case] pod_name: &str,
        #[case] expected: Option<i32>,
    ) {
        assert_eq!(ordinal_of("web", pod_name), expected);
    }
}
