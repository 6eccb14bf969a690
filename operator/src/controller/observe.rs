//! Observation: the facts after applying. What this BrokerGroup owns, its pods and what each
//! broker says about itself, its Leases, and which StatefulSets are still rolling out. Reads
//! only; nothing decided.

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::{Client, ResourceExt};

use super::apply::owned_kinds;
use super::brokers::Access;
use super::{BrokerStatusSource, Error};
use crate::names;
use crate::status::{LeaseObservation, Observation, OwnedObject, PodObservation};
use crate::validate::ValidatedBrokerGroup;

fn broker_running(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.name == names::BROKER_CONTAINER && c.state.as_ref().is_some_and(|st| st.running.is_some())
                })
            })
}

/// The scheduler's message while a pod cannot be placed.
fn unschedulable(pod: &Pod) -> Option<String> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (condition.reason.as_deref() == Some("Unschedulable")).then(|| {
        condition
            .message
            .clone()
            .unwrap_or_else(|| "Unschedulable".into())
    })
}

pub async fn observe(
    client: &Client,
    brokers: &dyn BrokerStatusSource,
    access: &Access,
    namespace: &str,
    v: &ValidatedBrokerGroup,
    statefulsets: &[StatefulSet],
) -> Result<Observation, Error> {
    let selector = ListParams::default().labels(&format!("{}={}", names::LABEL_INSTANCE, v.name));

    // What this BrokerGroup owns: only objects carrying its controller owner reference (a
    // previous BrokerGroup of the same name owned others, not ours to touch).
    let mut owned = Vec::new();
    if let Some(uid) = &v.uid {
        for resource in owned_kinds() {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            let list = api
                .list_metadata(&selector)
                .await
                .map_err(Error::observe(format!("list {}", resource.plural)))?;
            owned.extend(
                list.items
                    .into_iter()
                    .filter(|o| {
                        o.owner_references()
                            .iter()
                            .any(|r| &r.uid == uid && r.controller == Some(true))
                    })
                    .map(|o| OwnedObject {
                        kind: resource.kind.clone(),
                        name: o.name_any(),
                    }),
            );
        }
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&selector)
        .await
        .map_err(Error::observe("list broker pods"))?;
    let fetches = pods.items.iter().map(|pod| async move {
        let running = broker_running(pod);
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let group = pod.labels().get(names::LABEL_GROUP).cloned().unwrap_or_default();
        let tls = pod.annotations().contains_key(names::TLS_CHECKSUM_ANNOTATION);
        let broker = match (running, &ip) {
            (true, Some(ip)) => {
                let at = access.endpoint(&group, &pod.name_any(), ip, tls);
                brokers.status(&at).await
            }
            (true, None) => Err("no pod IP yet".to_string()),
            (false, _) => Err("broker container not running".to_string()),
        };
        (
            pod.name_any(),
            PodObservation {
                running,
                terminating: pod.metadata.deletion_timestamp.is_some(),
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                role_label: pod.labels().get(names::LABEL_ROLE).cloned(),
                broker,
                ip,
                revision: pod.labels().get(names::REVISION_LABEL).cloned(),
                unschedulable: unschedulable(pod),
                tls,
            },
        )
    });
    let observed = join_all(fetches).await.into_iter().collect();

    // Rolled out once every pod runs the update revision. Not currentRevision: under the
    // OnDelete strategy (the operator's, it deletes the pods itself) Kubernetes never
    // moves currentRevision on, so the group would read as rolling out forever after.
    let rolling_out = statefulsets
        .iter()
        .filter(|s| {
            let want = s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1);
            let st = s.status.clone().unwrap_or_default();
            st.observed_generation < s.metadata.generation || st.updated_replicas.unwrap_or(0) < want
        })
        .map(|s| s.name_any())
        .collect();
    // Only once the StatefulSet controller has seen the current spec: before that its
    // updateRevision is the previous one.
    let update_revisions = statefulsets
        .iter()
        .filter_map(|s| {
            let st = s.status.as_ref()?;
            let current =
                st.observed_generation.is_some() && st.observed_generation >= s.metadata.generation;
            current
                .then(|| st.update_revision.clone())
                .flatten()
                .map(|r| (s.name_any(), r))
        })
        .collect();

    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let leases = leases
        .list(&selector)
        .await
        .map_err(Error::observe("list Leases"))?
        .items
        .into_iter()
        .map(|l| {
            let seen = LeaseObservation {
                holder: l
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .filter(|h| !h.is_empty()),
                released_holder: l
                    .annotations()
                    .get(names::RELEASED_HOLDER_ANNOTATION)
                    .cloned(),
            };
            (l.name_any(), seen)
        })
        .collect();

    Ok(Observation {
        pods: observed,
        leases,
        rolling_out,
        update_revisions,
        owned,
    })
}
