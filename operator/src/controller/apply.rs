//! The controller's writes and the reads that feed validation: dereferencing a BrokerGroup's
//! Secrets and connector targets, server-side applying what was rendered, deleting what a
//! spec change made obsolete.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Client, Resource, ResourceExt};
use rand::distributions::{Alphanumeric, DistString};
use serde::de::DeserializeOwned;
use tracing::info;

use super::{secret_text, Error};
use crate::api::{BrokerGroup, BrokerGroupStatus};
use crate::names;
use crate::render::Rendered;
use crate::validate::{
    cluster_secret_name, database_secret_names, ConnectorSecret, Dependencies, ValidatedBrokerGroup,
};

/// Dependencies plus problems worth reporting that do not stop rendering.
pub struct Dereferenced {
    pub dependencies: Dependencies,
    pub problems: Vec<(String, String)>,
}

async fn get_opt<K>(api: &Api<K>, name: &str, step: &str) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(Error::kube(format!("{step} {name}")))
}

pub async fn fetch_dependencies(
    client: &Client,
    namespace: &str,
    bg: &BrokerGroup,
) -> Result<Dereferenced, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut problems = Vec::new();
    let secret_name = cluster_secret_name(&bg.name_any(), &bg.spec);
    let cluster_secret = get_opt(&secrets, &secret_name, "read cluster credentials Secret")
        .await?
        .map(|s| secret_text(&s));
    if cluster_secret.is_none() && bg.spec.ha.cluster_credentials_secret.is_some() {
        problems.push((
            "CredentialsSecretMissing".into(),
            format!("cluster credentials Secret {secret_name} does not exist: create it with keys user and password"),
        ));
    }
    if let Some(users) = &bg.spec.users_secret {
        if get_opt(&secrets, users, "read users Secret")
            .await?
            .is_none()
        {
            problems.push((
                "UsersSecretMissing".into(),
                format!("users Secret {users} does not exist: create it with key users"),
            ));
        }
    }
    let groups: Api<BrokerGroup> = Api::namespaced(client.clone(), namespace);
    let mut connector_targets = std::collections::BTreeMap::new();
    let mut connector_secrets = std::collections::BTreeMap::new();
    // Each Secret read once; this BrokerGroup's own was read above.
    let mut looked_up = BTreeSet::from([secret_name.clone()]);
    if let Some(own) = &cluster_secret {
        connector_secrets.insert(secret_name.clone(), connector_secret(own));
    }
    for c in &bg.spec.network_connectors {
        // The Secret holding the remote's cluster password: a connected BrokerGroup's
        // cluster Secret, or the connector's passwordSecret.
        let secret = match (&c.broker_group, &c.password_secret) {
            (Some(target), _) => {
                match get_opt(&groups, target, "read network connector target BrokerGroup").await? {
                    Some(other) => {
                        let secret = cluster_secret_name(target, &other.spec);
                        connector_targets.insert(target.clone(), other.spec);
                        Some(secret)
                    }
                    None => None,
                }
            }
            (None, Some(password)) => Some(password.name.clone()),
            (None, None) => None,
        };
        let Some(secret) = secret else { continue };
        if !looked_up.insert(secret.clone()) {
            continue;
        }
        if let Some(found) =
            get_opt(&secrets, &secret, "read network connector password Secret").await?
        {
            connector_secrets.insert(secret, connector_secret(&secret_text(&found)));
        }
    }
    // sharedDatabase: which keys the database's Secrets have (never their values).
    let mut database_secrets = std::collections::BTreeMap::new();
    for name in database_secret_names(&bg.spec) {
        if let Some(found) = get_opt(&secrets, &name, "read database Secret").await? {
            let keys = found
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(found.string_data.iter().flat_map(|d| d.keys()))
                .cloned()
                .collect();
            database_secrets.insert(name, keys);
        }
    }
    Ok(Dereferenced {
        dependencies: Dependencies {
            cluster_secret,
            // Only used when the Secret does not exist yet.
            new_password: Alphanumeric.sample_string(&mut rand::thread_rng(), 32),
            connector_targets,
            connector_secrets: Some(connector_secrets),
            database_secrets: Some(database_secrets),
        },
        problems,
    })
}

/// What validation may know of a connector's password Secret: its keys and user.
fn connector_secret(data: &std::collections::BTreeMap<String, String>) -> ConnectorSecret {
    ConnectorSecret {
        user: data.get(names::CLUSTER_USER_KEY).cloned(),
        keys: data.keys().cloned().collect(),
    }
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
            .map_err(Error::kube(format!(
                "apply {} {}",
                object.kind, object.name
            )))?;
    }
    Ok(())
}

/// Deletes objects this BrokerGroup owns that the current spec no longer renders (a group
/// removed, a generated Secret replaced by a named one). Only objects carrying this
/// BrokerGroup's owner reference are considered: a StatefulSet's data volumes are not owned
/// and survive.
pub async fn delete_orphans(
    client: &Client,
    namespace: &str,
    v: &ValidatedBrokerGroup,
    rendered: &Rendered,
) -> Result<(), Error> {
    let Some(uid) = &v.uid else { return Ok(()) };
    let keep: BTreeSet<(String, String)> = rendered
        .objects()
        .into_iter()
        .map(|o| (o.kind.to_string(), o.name))
        .collect();
    let selector = ListParams::default().labels(&format!("{}={}", names::LABEL_INSTANCE, v.name));
    for resource in [
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<Lease>(&()),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let list = api
            .list_metadata(&selector)
            .await
            .map_err(Error::kube(format!("list {}", resource.plural)))?;
        for object in list.items {
            let name = object.name_any();
            let owned = object
                .owner_references()
                .iter()
                .any(|o| &o.uid == uid && o.controller == Some(true));
            if owned && !keep.contains(&(resource.kind.clone(), name.clone())) {
                info!(kind = %resource.kind, name = %name, "deleting object the spec no longer renders");
                api.delete(&name, &DeleteParams::background())
                    .await
                    .map_err(Error::kube(format!("delete {} {name}", resource.kind)))?;
            }
        }
    }
    Ok(())
}

/// The BrokerGroup's status as last written, read from the API server rather than the
/// watch cache; `None` once the BrokerGroup is gone.
pub async fn fresh_status(
    client: &Client,
    namespace: &str,
    bg: &BrokerGroup,
) -> Result<Option<BrokerGroupStatus>, Error> {
    let api: Api<BrokerGroup> = Api::namespaced(client.clone(), namespace);
    let fresh = get_opt(&api, &bg.name_any(), "read status of BrokerGroup").await?;
    Ok(fresh.map(|fresh| fresh.status.unwrap_or_default()))
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
    let Some(mut current) = get_opt(&api, lease, "read Lease").await? else {
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
    match api
        .replace(lease, &kube::api::PostParams::default(), &current)
        .await
    {
        Ok(_) => {
            info!(lease, holder, "released the Lease of a dead live");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::Kube {
            step: format!("release Lease {lease}"),
            source,
        }),
    }
}
