//! The few API calls the controllers make, with the outcomes that are not errors for a
//! level-triggered controller (creating what exists, deleting what is gone) folded in.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

/// Creates `obj`; one that already exists (409, a watch lagging behind) is fine.
pub async fn create<K>(api: &Api<K>, obj: &K) -> Result<bool, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `name` gracefully, only while it is the object with `uid` (a successor of the
/// same name is left alone); one already gone or replaced is fine.
pub async fn delete<K>(api: &Api<K>, name: &str, uid: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `owner` the controller of the object `name` with `uid`: how a controller adopts
/// an orphan. The same strategic merge patch Kubernetes' controller-ref manager sends (the
/// owner reference merged by uid into those the object has, and its uid, which the API
/// server takes as a precondition). One gone or replaced meanwhile is left alone.
pub async fn adopt<K>(
    api: &Api<K>,
    name: &str,
    uid: &str,
    owner: &OwnerReference,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let patch = json!({"metadata": {"ownerReferences": [owner], "uid": uid}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `status` through the status subresource as a JSON merge patch.
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    S: Serialize,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .map(drop)
}
