//! The Deployment controller: on every change of a Deployment or its pods, plans (`plan`,
//! pure) and creates or deletes pods, then writes the status kubectl's `wait` and
//! `rollout status` read.

pub mod plan;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api;
use super::error_chain;
use super::pods::{is_terminating, random_suffix};
use super::watch::{next_round, Informer};
use plan::{plan_deployment, DeployAction};

/// How long the controller waits for the watch to show a pod it created or deleted before
/// it plans that Deployment again regardless.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Pods a Deployment's last actions created or deleted, not yet seen so in the watch; until
/// they are, planning again would count stale pods (pod names are random, so a second
/// create would not conflict). Kubernetes' ReplicaSet controller keeps the same record.
#[derive(Debug)]
struct Expectations {
    creates: BTreeSet<String>,
    deletes: BTreeSet<String>,
    since: Instant,
}

impl Expectations {
    /// Whether the watch caught up with the actions (or they are too old to wait for).
    fn met(&self, pods: &[Pod]) -> bool {
        let seen = |name: &String| pods.iter().find(|p| p.metadata.name.as_ref() == Some(name));
        self.since.elapsed() >= EXPECTATION_TIMEOUT
            || self.creates.iter().all(|n| seen(n).is_some())
                && self
                    .deletes
                    .iter()
                    .all(|n| seen(n).is_none_or(is_terminating))
    }
}

/// Reconciles every Deployment until `cancel`.
pub async fn run(
    client: Client,
    deployments: Informer<Deployment>,
    pods: Informer<Pod>,
    cancel: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    deployments.notify_on(wake.clone());
    pods.notify_on(wake.clone());
    deployments.ready().await;
    pods.ready().await;
    let mut expectations: HashMap<String, Expectations> = HashMap::new();
    loop {
        let all = deployments.state();
        expectations.retain(|uid, _| all.iter().any(|d| d.uid().as_deref() == Some(uid)));
        for dep in all {
            if dep.metadata.deletion_timestamp.is_none() {
                reconcile(&client, &dep, &pods, &mut expectations).await;
            }
        }
        if !next_round(&wake, &cancel).await {
            return;
        }
    }
}

async fn reconcile(
    client: &Client,
    dep: &Deployment,
    pods: &Informer<Pod>,
    expectations: &mut HashMap<String, Expectations>,
) {
    let namespace = dep.namespace().unwrap_or_default();
    let name = dep.name_any();
    let uid = dep.uid().unwrap_or_default();
    let pods: Vec<Pod> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| (**p).clone())
        .collect();
    if expectations.get(&uid).is_some_and(|e| !e.met(&pods)) {
        return;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut plan = plan_deployment(dep, &pods, &now, &mut || random_suffix(5));
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut expected = Expectations {
        creates: BTreeSet::new(),
        deletes: BTreeSet::new(),
        since: Instant::now(),
    };
    for action in &plan.actions {
        let result = match action {
            DeployAction::CreatePod(pod) => api::create(&pod_api, pod).await.map(|_| {
                info!(deployment = %name, pod = %pod.name_any(), "created pod");
                expected.creates.insert(pod.name_any());
            }),
            DeployAction::DeletePod { name: pod, uid } => {
                info!(deployment = %name, %pod, "deleting pod");
                api::delete(&pod_api, pod, uid).await.map(|()| {
                    expected.deletes.insert(pod.clone());
                })
            }
        };
        if let Err(error) = result {
            warn!(deployment = %name, %namespace, error = %error_chain(&error), "failed to reconcile deployment");
            break;
        }
    }
    if expected.creates.is_empty() && expected.deletes.is_empty() {
        expectations.remove(&uid);
    } else {
        expectations.insert(uid, expected);
    }
    // Condition times only move when something else in the status moved too.
    let previous = dep.status.clone().unwrap_or_default();
    let without_times = |s: &mut k8s_openapi::api::apps::v1::DeploymentStatus| {
        for c in s.conditions.iter_mut().flatten() {
            c.last_update_time = None;
            c.last_transition_time = None;
        }
    };
    let (mut a, mut b) = (previous.clone(), plan.status.clone());
    without_times(&mut a);
    without_times(&mut b);
    if a == b {
        return;
    }
    if plan.status.conditions.is_none() {
        plan.status.conditions = previous.conditions;
    }
    let dep_api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    if let Err(error) = api::patch_status(&dep_api, &name, &plan.status).await {
        warn!(deployment = %name, %namespace, error = %error_chain(&error), "failed to write deployment status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::web_pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn named(name: &str, terminating: bool) -> Pod {
        let mut p = web_pod();
        p.metadata.name = Some(name.into());
        if terminating {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        p
    }

    #[test]
    fn given_pending_actions_when_watch_lags_should_wait_until_seen() {
        let e = Expectations {
            creates: BTreeSet::from(["new".to_string()]),
            deletes: BTreeSet::from(["old".to_string()]),
            since: Instant::now(),
        };
        assert!(!e.met(&[named("old", false)]), "create not seen yet");
        assert!(
            !e.met(&[named("new", false), named("old", false)]),
            "delete not seen yet"
        );
        assert!(e.met(&[named("new", false), named("old", true)]));
        assert!(e.met(&[named("new", false)]));
    }
}
