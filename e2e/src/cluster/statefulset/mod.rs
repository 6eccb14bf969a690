//! The StatefulSet controller: on every change of a StatefulSet, its pods or claims, plans
//! (`plan`, pure) and carries the actions out, then writes the status. Pods are created
//! with the StatefulSet as controller; claims are created before their pod and kept; pods
//! a former StatefulSet of the same name left behind (orphan deletion) are adopted.

pub mod plan;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api;
use super::error_chain;
use super::pods::controller_ref;
use super::watch::{next_round, Informer};
use plan::{plan_statefulset, StsAction};

/// Reconciles every StatefulSet until `cancel`.
pub async fn run(
    client: Client,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    claims: Informer<PersistentVolumeClaim>,
    cancel: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    sets.notify_on(wake.clone());
    pods.notify_on(wake.clone());
    claims.notify_on(wake.clone());
    sets.ready().await;
    pods.ready().await;
    claims.ready().await;
    loop {
        for set in sets.state() {
            if set.metadata.deletion_timestamp.is_none() {
                reconcile(&client, &set, &pods, &claims).await;
            }
        }
        if !next_round(&wake, &cancel).await {
            return;
        }
    }
}

async fn reconcile(
    client: &Client,
    set: &StatefulSet,
    pods: &Informer<Pod>,
    claims: &Informer<PersistentVolumeClaim>,
) {
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let in_namespace = |ns: Option<String>| ns.as_deref() == Some(namespace.as_str());
    let pods: Vec<Pod> = pods
        .state()
        .iter()
        .filter(|p| in_namespace(p.namespace()))
        .map(|p| (**p).clone())
        .collect();
    let claims: Vec<PersistentVolumeClaim> = claims
        .state()
        .iter()
        .filter(|c| in_namespace(c.namespace()))
        .map(|c| (**c).clone())
        .collect();
    let plan = plan_statefulset(set, &pods, &claims);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    for action in &plan.actions {
        let result = match action {
            StsAction::CreateClaim(claim) => api::create(&claim_api, claim).await.map(|created| {
                if created {
                    info!(statefulset = %name, claim = %claim.name_any(), "created claim");
                }
            }),
            StsAction::CreatePod(pod) => api::create(&pod_api, pod).await.map(|created| {
                if created {
                    info!(statefulset = %name, pod = %pod.name_any(), "created pod");
                }
            }),
            StsAction::AdoptPod { name: pod, uid } => {
                // Kubernetes' adoption recheck: the informer may still hold a StatefulSet
                // that was just deleted (with Orphan, its pods are the orphans in view);
                // adopting them for it would leave them with a dangling owner, which the
                // garbage collector then deletes. Adopt only for the StatefulSet the API
                // server has now, by uid, and not while it is being deleted.
                let set_api: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
                match set_api.get_opt(&name).await {
                    Ok(Some(fresh))
                        if fresh.uid() == set.uid() && fresh.metadata.deletion_timestamp.is_none() =>
                    {
                        info!(statefulset = %name, %pod, "adopting orphaned pod");
                        api::adopt(&pod_api, pod, uid, &controller_ref(set)).await
                    }
                    Ok(_) => return,
                    Err(e) => Err(e),
                }
            }
            StsAction::DeletePod {
                name: pod,
                uid,
                why,
            } => {
                info!(statefulset = %name, %pod, reason = ?why, "deleting pod");
                api::delete(&pod_api, pod, uid).await
            }
        };
        if let Err(error) = result {
            warn!(statefulset = %name, %namespace, error = %error_chain(&error), ?action, "failed to reconcile statefulset");
            return;
        }
    }
    if set.status.as_ref() != Some(&plan.status) {
        let set_api: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
        if let Err(error) = api::patch_status(&set_api, &name, &plan.status).await {
            warn!(statefulset = %name, %namespace, error = %error_chain(&error), "failed to write statefulset status");
        }
    }
}
