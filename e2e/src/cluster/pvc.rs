//! The volume binder, reduced to what the local cluster needs: every claim is Bound at
//! once to a host directory (the kubelet creates it under the state dir), with the
//! requested capacity. No PersistentVolume objects. And the resizer: a bound claim that asks
//! for more than its capacity (the API server lets it grow only when its StorageClass
//! allows expansion) gets the new capacity, as an online expansion ends; a host
//! directory has no size to grow.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api;
use super::error_chain;
use super::quantity;
use super::watch::{next_round, Informer};

/// The status of a bound claim: phase Bound, its access modes, capacity = request.
pub fn bound_status(claim: &PersistentVolumeClaim) -> PersistentVolumeClaimStatus {
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned());
    PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        access_modes: spec.access_modes,
        capacity: storage.map(|q| BTreeMap::from([("storage".to_string(), q)])),
        ..PersistentVolumeClaimStatus::default()
    }
}

/// The status of a bound claim once its expansion is done: capacity = request, when the
/// request is larger than the capacity; `None` when there is nothing to expand.
pub fn expanded_status(claim: &PersistentVolumeClaim) -> Option<PersistentVolumeClaimStatus> {
    let status = claim.status.as_ref()?;
    if status.phase.as_deref() != Some("Bound") {
        return None;
    }
    let request = claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?;
    let capacity = status.capacity.as_ref().and_then(|c| c.get("storage"));
    let bytes = |q: &Quantity| quantity::parse(&q.0);
    let grows = match capacity {
        None => true,
        Some(c) => bytes(request).zip(bytes(c)).is_some_and(|(r, c)| r > c),
    };
    grows.then(|| PersistentVolumeClaimStatus {
        capacity: Some(BTreeMap::from([("storage".to_string(), request.clone())])),
        ..status.clone()
    })
}

/// Binds every unbound claim and expands every bound claim that asks for more, until
/// `cancel`.
pub async fn run(
    client: Client,
    claims: Informer<PersistentVolumeClaim>,
    cancel: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    claims.notify_on(wake.clone());
    claims.ready().await;
    loop {
        for claim in claims.state() {
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let namespace = claim.namespace().unwrap_or_default();
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
            if bound {
                if let Some(status) = expanded_status(&claim) {
                    match api::patch_status(&api, &claim.name_any(), &status).await {
                        Ok(()) => info!(claim = %claim.name_any(), %namespace, "expanded claim"),
                        Err(error) => {
                            warn!(claim = %claim.name_any(), %namespace, error = %error_chain(&error), "failed to expand claim")
                        }
                    }
                }
                continue;
            }
            match api::patch_status(&api, &claim.name_any(), &bound_status(&claim)).await {
                Ok(()) => info!(claim = %claim.name_any(), %namespace, "bound claim"),
                Err(error) => {
                    warn!(claim = %claim.name_any(), %namespace, error = %error_chain(&error), "failed to bind claim")
                }
            }
        }
        if !next_round(&wake, &cancel).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
    use k8s_openapi::api::core::v1::VolumeResourceRequirements;

    fn claim(request: &str, phase: Option<&str>, capacity: Option<&str>) -> PersistentVolumeClaim {
        let storage = |q: &str| BTreeMap::from([("storage".to_string(), Quantity(q.into()))]);
        PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: Some(storage(request)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: phase.map(String::from),
                capacity: capacity.map(storage),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn given_bound_claim_asking_for_more_when_resizing_should_report_the_new_capacity() {
        let status = expanded_status(&claim("2Gi", Some("Bound"), Some("1Gi"))).unwrap();
        assert_eq!(status.capacity.unwrap()["storage"], Quantity("2Gi".into()));
        assert_eq!(status.phase.as_deref(), Some("Bound"));
    }

    #[test]
    fn given_claim_at_its_capacity_or_unbound_when_resizing_should_do_nothing() {
        // 1024Mi is 1Gi: nothing to grow.
        assert_eq!(
            expanded_status(&claim("1024Mi", Some("Bound"), Some("1Gi"))),
            None
        );
        // Asking for less than the capacity (a failed expansion undone) shrinks nothing.
        assert_eq!(
            expanded_status(&claim("1Gi", Some("Bound"), Some("2Gi"))),
            None
        );
        assert_eq!(expanded_status(&claim("2Gi", Some("Pending"), None)), None);
    }

    #[test]
    fn given_new_claim_when_bound_should_have_the_requested_capacity() {
        let status = bound_status(&claim("1Gi", None, None));
        assert_eq!(status.capacity.unwrap()["storage"], Quantity("1Gi".into()));
    }
}
