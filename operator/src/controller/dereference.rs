//! Dereference, the reconcile's first step and its only reads before validation: the status
//! as last written, the Secrets and connector targets the spec names, and the group
//! StatefulSets that exist (a group beyond `spec.groups` still draining, the journal size a
//! StatefulSet's immutable claim template asks for). I/O only: nothing is decided here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use rand::distributions::{Alphanumeric, DistString};
use serde::de::DeserializeOwned;

use super::{secret_text, Error};
use crate::api::{BrokerGroup, BrokerGroupStatus, PermissionsFrom, TlsMode};
use crate::names;
use crate::status::reason::{Problem, Reason};
use crate::validate::{
    cluster_secret_name, database_secret_names, permissions_from_name, ConnectorSecret,
    Dependencies,
};

/// What a reconcile works from besides the BrokerGroup itself.
pub struct Inputs {
    pub dependencies: Dependencies,
    /// Named Secrets that do not exist: reported, and the pods wait for them.
    pub problems: Vec<Problem>,
    /// The status as last written, read from the API server rather than the watch cache: a
    /// reconcile that a pod event starts right after the previous one wrote a pending
    /// switchover must see it.
    pub previous: BrokerGroupStatus,
    /// The BrokerGroup's StatefulSets as they are (before this reconcile applies anything).
    pub statefulsets: Vec<StatefulSet>,
    /// `spec.tls`: the certificate Secrets as they are.
    pub certificates: crate::certificates::Found,
}

/// The text under `permissionsFrom`'s key, or a message saying what is missing.
async fn permissions_text(
    client: &Client,
    namespace: &str,
    from: &PermissionsFrom,
) -> Result<Result<String, String>, Error> {
    let what = permissions_from_name(from);
    let missing = |what: &str| {
        Err(format!("authorization.permissionsFrom: {what} does not exist; create it with the roles and permissions as YAML; nothing is applied until it exists"))
    };
    let data = match (&from.config_map_key_ref, &from.secret_key_ref) {
        (Some(r), _) => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            match get_opt(&api, &r.name, "authorization ConfigMap").await? {
                None => return Ok(missing(&format!("ConfigMap {}", r.name))),
                Some(cm) => cm.data.unwrap_or_default().get(&r.key).cloned(),
            }
        }
        (None, Some(r)) => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            match get_opt(&api, &r.name, "authorization Secret").await? {
                None => return Ok(missing(&format!("Secret {}", r.name))),
                Some(s) => secret_text(&s).get(&r.key).cloned(),
            }
        }
        (None, None) => None,
    };
    Ok(data.ok_or_else(|| {
        format!("authorization.permissionsFrom: {what} is missing: add the key with the roles and permissions as YAML; nothing is applied until it is there")
    }))
}

async fn get_opt<K>(api: &Api<K>, name: &str, what: &str) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(Error::dereference(format!("read {what} {name}")))
}

/// Everything `bg` points at; `None` once the BrokerGroup is gone.
pub async fn dereference(
    client: &Client,
    namespace: &str,
    bg: &BrokerGroup,
) -> Result<Option<Inputs>, Error> {
    let groups: Api<BrokerGroup> = Api::namespaced(client.clone(), namespace);
    let Some(fresh) = get_opt(&groups, &bg.name_any(), "BrokerGroup").await? else {
        return Ok(None);
    };
    let previous = fresh.status.unwrap_or_default();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut problems = Vec::new();
    let secret_name = cluster_secret_name(&bg.name_any(), &bg.spec);
    let cluster_secret = get_opt(&secrets, &secret_name, "cluster credentials Secret")
        .await?
        .map(|s| secret_text(&s));
    if cluster_secret.is_none() && bg.spec.ha.cluster_credentials_secret.is_some() {
        problems.push(Problem::new(
            Reason::CredentialsSecretMissing,
            format!("cluster credentials Secret {secret_name} does not exist: create it with keys user and password"),
        ));
    }
    if let Some(users) = &bg.spec.users_secret {
        if get_opt(&secrets, users, "users Secret").await?.is_none() {
            problems.push(Problem::new(
                Reason::UsersSecretMissing,
                format!("users Secret {users} does not exist: create it with key users"),
            ));
        }
    }
    let mut connector_targets = BTreeMap::new();
    let mut connector_secrets = BTreeMap::new();
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
                match get_opt(&groups, target, "network connector target BrokerGroup").await? {
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
            get_opt(&secrets, &secret, "network connector password Secret").await?
        {
            connector_secrets.insert(secret, connector_secret(&secret_text(&found)));
        }
    }
    // sharedDatabase: which keys the database's Secrets have (never their values).
    let mut database_secrets = BTreeMap::new();
    for name in database_secret_names(&bg.spec) {
        if let Some(found) = get_opt(&secrets, &name, "database Secret").await? {
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

    // spec.tls: the CA (OperatorManaged) and the certificate Secret.
    let mut certificates = crate::certificates::Found::default();
    if let Some(tls) = &bg.spec.tls {
        let tls_secret = match tls.mode {
            TlsMode::OperatorManaged => {
                let ca = names::ca_secret(&bg.name_any());
                certificates.ca_secret = get_opt(&secrets, &ca, "CA Secret")
                    .await?
                    .map(|s| secret_text(&s));
                names::tls_secret(&bg.name_any())
            }
            TlsMode::Secret => tls.secret_name.clone().unwrap_or_default(),
        };
        if !tls_secret.is_empty() {
            certificates.tls_secret = get_opt(&secrets, &tls_secret, "certificate Secret")
                .await?
                .map(|s| secret_text(&s));
        }
    }
    // authorization.permissionsFrom: the YAML under the key, or why there is none.
    let authorization_source = match bg
        .spec
        .authorization
        .as_ref()
        .and_then(|a| a.permissions_from.as_ref())
    {
        None => None,
        Some(from) => Some(permissions_text(client, namespace, from).await?),
    };

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("{}={}", names::LABEL_INSTANCE, bg.name_any()));
    let statefulsets = sets
        .list(&selector)
        .await
        .map_err(Error::dereference("list StatefulSets"))?
        .items;
    let existing_groups = statefulsets
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| (s.name_any(), journal_size(s)))
        .collect();

    Ok(Some(Inputs {
        dependencies: Dependencies {
            cluster_secret,
            // Only used when the Secret does not exist yet.
            new_password: Alphanumeric.sample_string(&mut rand::thread_rng(), 32),
            connector_targets,
            connector_secrets: Some(connector_secrets),
            database_secrets: Some(database_secrets),
            existing_groups,
            certificates: None,
            authorization_source,
        },
        certificates,
        problems,
        previous,
        statefulsets,
    }))
}

/// The size a StatefulSet's `data` claim template asks for.
fn journal_size(s: &StatefulSet) -> Option<String> {
    s.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("data"))?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// What validation may know of a connector's password Secret: its keys and user.
fn connector_secret(data: &BTreeMap<String, String>) -> ConnectorSecret {
    ConnectorSecret {
        user: data.get(names::CLUSTER_USER_KEY).cloned(),
        keys: data.keys().cloned().collect(),
    }
}
