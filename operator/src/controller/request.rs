//! What people ask of the operator through the BrokerGroup's annotations, written the one
//! way `duomq-operator switchover` and the kubectl plugin both use.

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use thiserror::Error;

use crate::api::BrokerGroup;
use crate::names::SWITCHOVER_ANNOTATION;

#[derive(Debug, Error)]
pub enum RequestError {
    #[error("cannot switch over BrokerGroup {brokergroup}: {reason}")]
    Refused { brokergroup: String, reason: String },
    #[error("failed to annotate BrokerGroup {brokergroup}")]
    Annotate {
        brokergroup: String,
        #[source]
        source: kube::Error,
    },
}

/// Asks for a switchover of `group` to `to` with the `duomq.io/switchover` annotation: the
/// request is checked against the BrokerGroup's groups and merged with the entries for
/// other groups. Returns the annotation's new text.
pub async fn request_switchover(
    api: &Api<BrokerGroup>,
    bg: &BrokerGroup,
    group: &str,
    to: &str,
) -> Result<String, RequestError> {
    let name = bg.name_any();
    let namespace = bg.namespace().unwrap_or_default();
    let brokergroup = format!("{namespace}/{name}");
    let groups = crate::validate::group_models(&name, &namespace, &bg.spec);
    let current = bg
        .annotations()
        .get(SWITCHOVER_ANNOTATION)
        .map(String::as_str);
    let text = crate::plan::with_request(&groups, current, group, to).map_err(|reason| {
        RequestError::Refused {
            brokergroup: brokergroup.clone(),
            reason,
        }
    })?;
    let patch = serde_json::json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: text}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| RequestError::Annotate {
            brokergroup,
            source,
        })?;
    Ok(text)
}
