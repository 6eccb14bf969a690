//! Rendering a YAML stream of BrokerGroups offline (`duomq-operator render`, snapshot
//! tests): BrokerGroups in one stream can be each other's network connector targets.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use super::render;
use crate::api::BrokerGroup;
use crate::validate::{validate, Dependencies, InvalidSpec};

#[derive(Debug, Error)]
pub enum DocumentsError {
    #[error("failed to parse document {index} as a BrokerGroup")]
    Parse {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("the input holds no BrokerGroup")]
    Empty,
    #[error("BrokerGroup {name} is invalid: {source}")]
    Invalid { name: String, source: InvalidSpec },
}

/// The BrokerGroups of a multi-document YAML text, in a namespace when they name none.
pub fn parse_documents(text: &str, namespace: &str) -> Result<Vec<BrokerGroup>, DocumentsError> {
    let mut groups = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|source| DocumentsError::Parse { index, source })?;
        if value.is_null() {
            continue;
        }
        let mut bg: BrokerGroup = serde_yaml::from_value(value)
            .map_err(|source| DocumentsError::Parse { index, source })?;
        if bg.metadata.namespace.is_none() {
            bg.metadata.namespace = Some(namespace.to_string());
        }
        groups.push(bg);
    }
    if groups.is_empty() {
        return Err(DocumentsError::Empty);
    }
    Ok(groups)
}

/// Every object of every BrokerGroup in `groups`, as multi-document YAML: the same on every
/// run and free of secrets, so it can go into Git. A cluster-credentials Secret the operator
/// would generate (with a random password) is left out: see [`generated_secrets`].
pub fn render_documents(groups: &[BrokerGroup]) -> Result<String, DocumentsError> {
    let targets: BTreeMap<String, _> = groups
        .iter()
        .map(|g| (g.metadata.name.clone().unwrap_or_default(), g.spec.clone()))
        .collect();
    let mut out = String::new();
    for bg in groups {
        let deps = Dependencies {
            cluster_secret: None,
            new_password: String::new(),
            connector_targets: targets.clone(),
            // Offline: the connectors' password Secrets are assumed to exist.
            connector_secrets: None,
            // Likewise the database's Secrets.
            database_secrets: None,
            // Offline: nothing exists yet.
            existing_groups: Default::default(),
            // Offline: no certificates are made (the pods mount the Secret by name) and
            // permissionsFrom is not read (only inline authorization renders).
            certificates: None,
            authorization_source: None,
        };
        let mut v = validate(bg, &deps).map_err(|source| DocumentsError::Invalid {
            name: bg.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        v.credentials.generated_password = None;
        out.push_str(&render(&v).to_yaml());
    }
    Ok(out)
}

/// The cluster-credentials Secrets that [`render_documents`] leaves out: those of
/// BrokerGroups that name none, which the operator generates (or the user creates).
pub fn generated_secrets(groups: &[BrokerGroup]) -> Vec<String> {
    groups
        .iter()
        .filter(|g| g.spec.ha.cluster_credentials_secret.is_none())
        .map(|g| crate::names::generated_cluster_secret(&g.metadata.name.clone().unwrap_or_default()))
        .collect()
}
