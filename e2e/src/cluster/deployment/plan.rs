//! What the Deployment controller should do next, decided from the Deployment and its pods:
//! pure. There are no ReplicaSets; pods carry `pod-template-hash` and are named as a
//! ReplicaSet's would be (`{deployment}-{hash}-{5 chars}`), and the rollout arithmetic
//! (maxSurge, maxUnavailable, Recreate) is the ReplicaSet-based one.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::cluster::names;
use crate::cluster::pods::{
    controller_ref, is_controlled_by, is_ready, is_terminal, is_terminating, template_hash,
};

#[derive(Debug, Clone, PartialEq)]
pub enum DeployAction {
    CreatePod(Box<Pod>),
    DeletePod { name: String, uid: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeployPlan {
    pub actions: Vec<DeployAction>,
    pub status: DeploymentStatus,
}

/// Plans the next steps for `dep` given the pods of its namespace. `now` stamps condition
/// changes; `new_suffix` names new pods (random in the executor, fixed in tests).
pub fn plan_deployment(
    dep: &Deployment,
    pods: &[Pod],
    now: &Time,
    new_suffix: &mut dyn FnMut() -> String,
) -> DeployPlan {
    let spec = dep.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let hash = template_hash(&spec.template);
    let uid = dep.uid().unwrap_or_default();
    let owned: Vec<&Pod> = pods.iter().filter(|p| is_controlled_by(p, &uid)).collect();
    let mut actions = Vec::new();
    let delete = |p: &Pod| DeployAction::DeletePod {
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
    };

    for pod in owned
        .iter()
        .filter(|p| is_terminal(p) && !is_terminating(p))
    {
        actions.push(delete(pod));
    }
    let active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| !is_terminating(p) && !is_terminal(p))
        .collect();
    let (new, old): (Vec<&Pod>, Vec<&Pod>) = active
        .iter()
        .partition(|p| hash_of(p) == Some(hash.as_str()));
    let (max_surge, max_unavailable) = rollout_limits(dep, replicas);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");

    let mut create = 0;
    if recreate {
        if !old.is_empty() {
            actions.extend(old.iter().map(|p| delete(p)));
        } else if !owned
            .iter()
            .any(|p| is_terminating(p) && hash_of(p) != Some(&hash))
        {
            create = replicas - new.len() as i32;
        }
    } else if old.is_empty() {
        create = replicas - new.len() as i32;
    } else {
        let total = active.len() as i32;
        create = (replicas + max_surge - total).min(replicas - new.len() as i32);
        let min_available = replicas - max_unavailable;
        let new_unavailable = new.iter().filter(|p| !is_ready(p)).count() as i32;
        let available = active.iter().filter(|p| is_ready(p)).count() as i32;
        let mut unhealthy_budget = (total - min_available - new_unavailable).max(0);
        for pod in old.iter().filter(|p| !is_ready(p)) {
            if unhealthy_budget == 0 {
                break;
            }
            actions.push(delete(pod));
            unhealthy_budget -= 1;
        }
        let healthy_budget = (available - min_available).max(0) as usize;
        actions.extend(
            old.iter()
                .filter(|p| is_ready(p))
                .take(healthy_budget)
                .map(|p| delete(p)),
        );
    }
    if create < 0 {
        // Too many pods of the current template: remove the unready, then the newest.
        let mut extra: Vec<&&Pod> = new.iter().collect();
        extra.sort_by_key(|p| {
            (
                is_ready(p),
                std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
            )
        });
        actions.extend(extra.iter().take((-create) as usize).map(|p| delete(p)));
    }
    for _ in 0..create.max(0) {
        actions.push(DeployAction::CreatePod(Box::new(build_pod(
            dep,
            &hash,
            &new_suffix(),
        ))));
    }

    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let status = DeploymentStatus {
        observed_generation: dep.metadata.generation,
        replicas: Some(active.len() as i32),
        updated_replicas: Some(new.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        unavailable_replicas: Some((replicas - ready).max(0)),
        terminating_replicas: None,
        collision_count: None,
        conditions: Some(conditions(
            dep,
            &hash,
            ready >= replicas - max_unavailable,
            old.is_empty() && new.len() as i32 == replicas && ready >= replicas,
            now,
        )),
    };
    DeployPlan { actions, status }
}

/// maxSurge and maxUnavailable resolved against `replicas` (25 % each by default; surge
/// rounds up, unavailable down; never both zero).
fn rollout_limits(dep: &Deployment, replicas: i32) -> (i32, i32) {
    let rolling = dep
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let quarter = IntOrString::String("25%".into());
    let surge = resolve(
        rolling.max_surge.as_ref().unwrap_or(&quarter),
        replicas,
        true,
    );
    let unavailable = resolve(
        rolling.max_unavailable.as_ref().unwrap_or(&quarter),
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn resolve(value: &IntOrString, replicas: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = percent * i64::from(replicas);
            let whole = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            whole as i32
        }
    }
}

fn conditions(
    dep: &Deployment,
    hash: &str,
    available: bool,
    complete: bool,
    now: &Time,
) -> Vec<DeploymentCondition> {
    let rs_name = format!("{}-{hash}", dep.name_any());
    let previous = dep
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let make = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let before = previous.iter().find(|c| c.type_ == type_);
        let same_status = before.is_some_and(|c| c.status == status);
        let same_all = same_status
            && before.is_some_and(|c| {
                c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message.as_str())
            });
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: if same_status {
                before.and_then(|c| c.last_transition_time.clone())
            } else {
                Some(now.clone())
            },
            last_update_time: if same_all {
                before.and_then(|c| c.last_update_time.clone())
            } else {
                Some(now.clone())
            },
        }
    };
    vec![
        if available {
            make(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            make(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        if complete {
            make(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else {
            make(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        },
    ]
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::LABEL_POD_TEMPLATE_HASH))
        .map(String::as_str)
}

/// A pod of the current template: `{deployment}-{hash}-{suffix}`, labelled with the hash.
pub fn build_pod(dep: &Deployment, hash: &str, suffix: &str) -> Pod {
    let template = dep.spec.clone().unwrap_or_default().template;
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(names::LABEL_POD_TEMPLATE_HASH.into(), hash.into());
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}-{suffix}", dep.name_any())),
            namespace: dep.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller_ref(dep)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::template;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use rstest::rstest;
    use std::collections::BTreeMap;

    fn dep(replicas: i32, image: &str, strategy: &str, surge: i32, unavailable: i32) -> Deployment {
        let labels = BTreeMap::from([("app".to_string(), "op".to_string())]);
        Deployment {
            metadata: ObjectMeta {
                name: Some("op".into()),
                namespace: Some("ns".into()),
                uid: Some("dep-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some(strategy.into()),
                    rolling_update: (strategy == "RollingUpdate").then_some(
                        RollingUpdateDeployment {
                            max_surge: Some(IntOrString::Int(surge)),
                            max_unavailable: Some(IntOrString::Int(unavailable)),
                        },
                    ),
                }),
                template: template(&[("app", "op")], image),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(d: &Deployment, image: &str, n: usize, ready: bool) -> Pod {
        let mut templated = d.clone();
        templated
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some(image.into());
        let hash = template_hash(&templated.spec.as_ref().unwrap().template);
        let mut p = build_pod(d, &hash, &format!("{image}-{n}"));
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn summary(plan: &DeployPlan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                DeployAction::CreatePod(_) => "create".to_string(),
                DeployAction::DeletePod { name, .. } => {
                    format!("delete:{}", name.rsplit('-').nth(1).unwrap_or_default())
                }
            })
            .collect()
    }

    const NEW: &str = "new";
    const OLD: &str = "old";

    #[rstest]
    #[case::scale_up_from_nothing(dep(2, NEW, "RollingUpdate", 1, 0), vec![], vec!["create", "create"])]
    #[case::steady(dep(2, NEW, "RollingUpdate", 1, 0), vec![(NEW, true), (NEW, true)], vec![])]
    #[case::surge_first(dep(2, NEW, "RollingUpdate", 1, 0), vec![(OLD, true), (OLD, true)], vec!["create"])]
    #[case::wait_for_surged_pod(dep(2, NEW, "RollingUpdate", 1, 0), vec![(OLD, true), (OLD, true), (NEW, false)], vec![])]
    #[case::delete_old_once_new_ready(dep(2, NEW, "RollingUpdate", 1, 0), vec![(OLD, true), (OLD, true), (NEW, true)], vec!["delete:old"])]
    #[case::max_unavailable_deletes_first(dep(2, NEW, "RollingUpdate", 0, 1), vec![(OLD, true), (OLD, true)], vec!["delete:old"])]
    #[case::unready_old_cleaned_up(dep(2, NEW, "RollingUpdate", 1, 0), vec![(OLD, true), (OLD, false), (NEW, true)], vec!["delete:old"])]
    #[case::unready_new_blocks_cleanup(dep(1, NEW, "RollingUpdate", 1, 0), vec![(OLD, false), (NEW, false)], vec![])]
    #[case::recreate_deletes_old_first(dep(2, NEW, "Recreate", 0, 0), vec![(OLD, true), (OLD, true)], vec!["delete:old", "delete:old"])]
    #[case::recreate_then_creates(dep(2, NEW, "Recreate", 0, 0), vec![], vec!["create", "create"])]
    #[case::scale_down_unready_first(dep(1, NEW, "RollingUpdate", 1, 0), vec![(NEW, true), (NEW, false)], vec!["delete:new"])]
    fn given_deployment_and_pods_when_planning_should_roll_as_kubernetes(
        #[case] d: Deployment,
        #[case] existing: Vec<(&str, bool)>,
        #[case] expected: Vec<&str>,
    ) {
        let existing: Vec<Pod> = existing
            .into_iter()
            .enumerate()
            .map(|(n, (image, ready))| pod(&d, image, n, ready))
            .collect();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let plan = plan_deployment(&d, &existing, &now, &mut || "xxxxx".into());
        assert_eq!(summary(&plan), expected);
    }

    #[test]
    fn given_rolled_out_deployment_when_planning_should_be_available_and_complete() {
        let d = dep(2, NEW, "RollingUpdate", 1, 0);
        let existing = vec![pod(&d, NEW, 0, true), pod(&d, NEW, 1, true)];
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let status = plan_deployment(&d, &existing, &now, &mut || "xxxxx".into()).status;
        assert_eq!(
            (
                status.observed_generation,
                status.replicas,
                status.updated_replicas,
                status.available_replicas
            ),
            (Some(2), Some(2), Some(2), Some(2))
        );
        let conditions = status.conditions.unwrap();
        let find = |t: &str| conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(find("Available").status, "True");
        assert_eq!(
            find("Progressing").reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
    }

    #[test]
    fn given_new_pod_when_building_should_be_named_like_a_replicaset_pod() {
        let d = dep(1, NEW, "RollingUpdate", 1, 0);
        let p = build_pod(&d, "5d8c9f", "abcde");
        assert_eq!(p.name_any(), "op-5d8c9f-abcde");
        assert_eq!(
            p.labels()
                .get(names::LABEL_POD_TEMPLATE_HASH)
                .map(String::as_str),
            Some("5d8c9f")
        );
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "Deployment");
    }

    #[rstest]
    #[case(IntOrString::String("25%".into()), 3, true, 1)]
    #[case(IntOrString::String("25%".into()), 3, false, 0)]
    #[case(IntOrString::String("50%".into()), 4, false, 2)]
    #[case(IntOrString::Int(2), 10, false, 2)]
    fn given_intorstring_when_resolving_should_round_like_kubernetes(
        #[case] value: IntOrString,
        #[case] replicas: i32,
        #[case] round_up: bool,
        #[case] expected: i32,
    ) {
        assert_eq!(resolve(&value, replicas, round_up), expected);
    }
}
