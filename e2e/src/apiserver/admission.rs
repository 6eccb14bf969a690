//! Type-specific admission of a write, after the generic metadata rules: name formats,
//! the status a new object starts with, defaulting, cluster IPs for Services, the CRD
//! lifecycle (names accepted, established at once) and custom resource validation.
//!
//! It must not store anything: it shapes and checks the object a write is about to commit.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Value};

use super::crd_validation::{self, FieldValidation};
use super::defaults;
use super::error::{ApiError, ApiResult, Cause};
use super::meta;
use super::registry::ResourceInfo;
use super::store::State;
use super::validation;

const SUBDOMAIN: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const LABEL: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?";

fn anchored(pattern: &str, cell: &'static OnceLock<Option<Regex>>) -> Option<&'static Regex> {
    cell.get_or_init(|| Regex::new(&format!("^{pattern}$")).ok())
        .as_ref()
}

/// Kubernetes' name validation for the resource's kind.
fn validate_name(resource: &ResourceInfo, name: &str) -> Option<Cause> {
    static SUBDOMAIN_RE: OnceLock<Option<Regex>> = OnceLock::new();
    static LABEL_RE: OnceLock<Option<Regex>> = OnceLock::new();
    let shown = format!("\"{name}\"");
    if resource.group == "rbac.authorization.k8s.io" {
        let bad = name == "." || name == ".." || name.contains('/') || name.contains('%');
        return bad.then(|| Cause::invalid("metadata.name", &shown, "may not contain '/' or '%'"));
    }
    let label =
        resource.group.is_empty() && matches!(resource.plural.as_str(), "namespaces" | "services");
    if label {
        let ok = name.len() <= 63 && anchored(LABEL, &LABEL_RE).is_some_and(|re| re.is_match(name));
        return (!ok).then(|| Cause::invalid("metadata.name", &shown, &format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must \
             start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for \
             validation is '{LABEL}')"
        )));
    }
    let ok =
        name.len() <= 253 && anchored(SUBDOMAIN, &SUBDOMAIN_RE).is_some_and(|re| re.is_match(name));
    (!ok).then(|| Cause::invalid("metadata.name", &shown, &format!(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
         and must start and end with an alphanumeric character (e.g. 'example.com', regex used for \
         validation is '{SUBDOMAIN}')"
    )))
}

/// Admits a new object: checks its name, gives it its initial status, defaults and
/// validates it. Returns warnings for the response.
pub(crate) fn admit_create(
    state: &mut State,
    resource: &ResourceInfo,
    obj: &mut Value,
    validation: FieldValidation,
) -> ApiResult<Vec<String>> {
    let name = meta::name(obj).to_string();
    if let Some(cause) = validate_name(resource, &name) {
        return Err(ApiError::invalid(resource, &name, vec![cause]));
    }
    initial_status(resource, obj);
    admit(state, resource, obj, None, validation)
}

/// Admits an update of `old` to `obj`.
pub(crate) fn admit_update(
    state: &mut State,
    resource: &ResourceInfo,
    obj: &mut Value,
    old: &Value,
    validation: FieldValidation,
) -> ApiResult<Vec<String>> {
    admit(state, resource, obj, Some(old), validation)
}

fn admit(
    state: &mut State,
    resource: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    validation: FieldValidation,
) -> ApiResult<Vec<String>> {
    defaults::apply(resource, obj);
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "namespaces") => {
            // Only the namespace's own cleanup removes `kubernetes`; updates keep the list.
            obj["spec"]["finalizers"] = match old {
                None => json!(["kubernetes"]),
                Some(o) => o
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or_else(|| json!([])),
            };
            let name = meta::name(obj).to_string();
            let labels = meta::metadata_mut(obj)
                .entry("labels")
                .or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        ("", "services") => service_ip(state, obj, old),
        ("", "persistentvolumeclaims") => {
            if let Some(old) = old {
                claim_resize(state, obj, old)?;
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => crd(resource, obj)?,
        _ => {}
    }
    if resource.custom.is_some() {
        let causes = validation::validate_metadata(obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, meta::name(obj), causes));
        }
        return crd_validation::admit(resource, obj, old, validation);
    }
    let causes = validation::validate(resource, obj, old);
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, meta::name(obj), causes));
    }
    Ok(Vec::new())
}

/// The storage a claim asks for, in bytes.
pub(crate) fn claim_request(claim: &Value) -> Option<f64> {
    claim
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(crate::cluster::quantity::parse)
}

/// Kubernetes' `PersistentVolumeClaimResize` admission: a claim may only grow when it is
/// bound and its StorageClass (the beta annotation, else `spec.storageClassName`) exists
/// and has `allowVolumeExpansion: true`. Shrinking is left to validation.
fn claim_resize(state: &State, claim: &Value, old: &Value) -> ApiResult<()> {
    let (Some(new_size), Some(old_size)) = (claim_request(claim), claim_request(old)) else {
        return Ok(());
    };
    if new_size <= old_size {
        return Ok(());
    }
    let forbidden = |why: &str| {
        ApiError::forbidden(format!(
            "persistentvolumeclaims \"{}\" is forbidden: {why}",
            meta::name(claim)
        ))
    };
    if old.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
        return Err(forbidden(
            "Only bound persistent volume claims can be expanded",
        ));
    }
    let class = claim
        .pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
        .or_else(|| claim.pointer("/spec/storageClassName"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let allowed = !class.is_empty()
        && state
            .registry
            .lookup("storage.k8s.io", "v1", "storageclasses")
            .and_then(|r| state.get(&r.storage, "", class))
            .is_some_and(|sc| sc["allowVolumeExpansion"].as_bool() == Some(true));
    if !allowed {
        return Err(forbidden(
            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
        ));
    }
    Ok(())
}

/// The status a new object starts with: none for resources with a status subresource
/// (Kubernetes drops what the client sent), or the phase Kubernetes sets.
fn initial_status(resource: &ResourceInfo, obj: &mut Value) {
    let keep = resource.is("", "nodes") || !resource.subresources.status;
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if !keep {
        map.remove("status");
    }
    let status = match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "namespaces") => json!({"phase": "Active"}),
        ("", "pods") => json!({"phase": "Pending", "qosClass": qos_class(map.get("spec"))}),
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") => json!({"phase": "Pending"}),
        _ => return,
    };
    map.insert("status".into(), status);
}

/// BestEffort without any requests or limits, Guaranteed when every container's requests
/// equal its limits for cpu and memory, Burstable otherwise.
fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| spec.and_then(|s| s.get(*l)).and_then(Value::as_array))
        .flatten()
        .collect();
    let resources = |c: &Value, kind: &str| {
        c.pointer(&format!("/resources/{kind}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let none = containers
        .iter()
        .all(|c| resources(c, "requests").is_empty() && resources(c, "limits").is_empty());
    if none {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let limits = resources(c, "limits");
        let requests = resources(c, "requests");
        ["cpu", "memory"].iter().all(|r| {
            limits.get(*r).is_some() && requests.get(*r).is_none_or(|q| Some(q) == limits.get(*r))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn service_ip(state: &mut State, obj: &mut Value, old: Option<&Value>) {
    let spec = &mut obj["spec"];
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return;
    }
    let given = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ip = given
        .or_else(|| {
            old.and_then(|o| o.pointer("/spec/clusterIP"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| state.allocate_service_ip());
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
}

/// A CRD is accepted and established at once; its name must be `<plural>.<group>`.
fn crd(resource: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    let name = meta::name(obj).to_string();
    let group = obj
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let plural = obj
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = obj
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut causes = Vec::new();
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &format!("\"{name}\""),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    let versions = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, &name, causes));
    }
    let names = &mut obj["spec"]["names"];
    if names.get("singular").is_none() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    let accepted = obj["spec"]["names"].clone();
    if obj.pointer("/spec/conversion").is_none() {
        obj["spec"]["conversion"] = json!({"strategy": "None"});
    }
    let stored: Vec<Value> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let since = obj
        .pointer("/status/conditions/0/lastTransitionTime")
        .cloned()
        .unwrap_or_else(|| json!(meta::now()));
    obj["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": since},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": since},
        ],
        "storedVersions": stored,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    #[test]
    fn given_bad_names_when_validated_should_reject_like_kubernetes() {
        let registry = Registry::new();
        let cm = registry.lookup("", "v1", "configmaps").unwrap();
        let ns = registry.lookup("", "v1", "namespaces").unwrap();
        let role = registry
            .lookup("rbac.authorization.k8s.io", "v1", "clusterroles")
            .unwrap();
        assert!(validate_name(&cm, "a.b-c").is_none());
        assert!(validate_name(&cm, "Bad_Name").is_some());
        assert!(validate_name(&ns, "a.b").is_some());
        assert!(validate_name(&role, "system:controller:x").is_none());
    }

    #[test]
    fn given_containers_with_equal_requests_and_limits_when_classified_should_be_guaranteed() {
        let spec =
            json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(Some(&spec)), "Guaranteed");
        assert_eq!(qos_class(Some(&json!({"containers": [{}]}))), "BestEffort");
    }
}
