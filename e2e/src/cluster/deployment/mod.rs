//! The Deployment controller: on every change of a Deployment or its pods, plans (`plan`,
//! pure) and creates or deletes pods, then writes the status kubectl's `wait` and
//! `rollout status` read.

pub mod plan;

use super::error_chain;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api;
use super::pods::random_suffix;
use super::watch::Informer;
use super::RESYNC_PERIOD;
use plan::{plan_deployment, DeployAction};

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
    loop {
        for dep in deployments.state() {
            if dep.metadata.deletion_timestamp.is_none() {
                reconcile(&client, &dep, &pods).await;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC_PERIOD) => {}
        }
    }
}

async fn reconcile(client: &Client, dep: &Deployment, pods: &Informer<Pod>) {
    let namespace = dep.namespace().unwrap_or_default();
    let name = dep.name_any();
    let pods: Vec<Pod> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| (**p).clone())
        .collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut plan = plan_deployment(dep, &pods, &now, &mut || random_suffix(5));
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for action in &plan.actions {
        let result = match action {
            DeployAction::CreatePod(pod) => api::create(&pod_api, pod).await.map(|_| {
                info!(deployment = %name, pod = %pod.name_any(), "created pod");
            }),
            DeployAction::DeletePod { name: pod } => {
                info!(deployment = %name, %pod, "deleting pod");
                api::delete(&pod_api, pod).await
            }
        };
        if let Err(error) = result {
            warn!(deployment = %name, %namespace, error = %error_chain(&error), "failed to reconcile deployment");
            return;
        }
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
