//! The controller's writes: server-side applying what was rendered (the apply step), and the
//! writes that carry out a plan (the act step): releasing a dead live's Lease, deleting an
//! object, growing a claim.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Client, ResourceExt};
use tracing::info;

use super::Error;
use crate::names;
use crate::render::Rendered;

/// The kinds a BrokerGroup owns and the controller may delete, in the order they are listed.
pub fn owned_kinds() -> [ApiResource; 6] {
    [
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<Lease>(&()),
    ]
}

/// Server-side applies every rendered object, in order, with the one field manager. An
/// unchanged object is a no-op for the API server (its generation does not move).
pub async fn apply_all(client: &Client, namespace: &str, rendered: &Rendered) -> Result<(), Error> {
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    for object in rendered.objects() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &object.resource);
        api.patch(&object.name, &params, &Patch::Apply(&object.value))
            .await
            .map_err(Error::apply(format!("apply {} {}", object.kind, object.name)))?;
    }
    Ok(())
}

/// Deletes an owned object of `kind`; `orphan` leaves its dependents (a StatefulSet's pods)
/// in place. Already gone is fine.
pub async fn delete_object(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    orphan: bool,
) -> Result<(), Error> {
    let Some(resource) = owned_kinds().into_iter().find(|r| r.kind == kind) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let params = if orphan {
        DeleteParams::orphan()
    } else {
        DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            info!(kind, name, orphan, "deleted");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Act {
            what: format!("delete {kind} {name}"),
            source,
        }),
    }
}

/// Asks for `claim` to be `size`. `Ok(false)` when it does not exist (its pod was never
/// created: the recreated StatefulSet makes it at the new size); the API server's refusal
/// (a storage class without `allowVolumeExpansion`, a smaller size) is the error's message.
pub async fn resize_claim(
    client: &Client,
    namespace: &str,
    claim: &str,
    size: &str,
) -> Result<bool, String> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
    match api
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(kube::Error::Api(e)) => Err(e.message),
        Err(e) => Err(e.to_string()),
    }
}

/// Fast failover: empties the holder of `group`'s Lease if `holder` still holds it, so an
/// in-sync backup takes over at once. A concurrent change (409) means someone else acted
/// first: nothing to do. Returns whether it released.
pub async fn release_lease(
    client: &Client,
    namespace: &str,
    lease: &str,
    holder: &str,
) -> Result<bool, Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Some(mut current) = api
        .get_opt(lease)
        .await
        .map_err(Error::act(format!("read Lease {lease}")))?
    else {
        return Ok(false);
    };
    let spec = current.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        return Ok(false);
    }
    spec.holder_identity = None;
    current
        .annotations_mut()
        .insert(names::RELEASED_HOLDER_ANNOTATION.into(), holder.into());
    match api.replace(lease, &PostParams::default(), &current).await {
        Ok(_) => {
            info!(lease, holder, "released the Lease of a dead live");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::Act {
            what: format!("release Lease {lease}"),
            source,
        }),
    }
}
