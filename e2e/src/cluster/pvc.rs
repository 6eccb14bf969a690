//! The volume binder, reduced to what the local cluster needs: every claim is Bound at
//! once to a host directory (the kubelet creates it under the state dir), with the
//! requested capacity. No PersistentVolume objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimStatus};
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api;
use super::error_chain;
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

/// Binds every unbound claim, until `cancel`.
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
            if bound || claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let namespace = claim.namespace().unwrap_or_default();
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
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
