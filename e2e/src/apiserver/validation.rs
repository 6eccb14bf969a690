//! Validation of built-in types where Kubernetes rejects what a renderer or controller
//! could get wrong: label keys and values, pod specs (also inside templates: containers,
//! names, images, ports, volumes and mounts), workload selectors that must match their
//! template, Service ports, and the fields Kubernetes forbids to change (StatefulSet spec
//! outside replicas/template/updateStrategy/…, Deployment selectors, pod specs, Service
//! cluster IPs, immutable ConfigMaps and Secrets, PVC specs).
//!
//! It is a subset of Kubernetes' validation, with its messages; it must not change the
//! object. One relaxation: a pod's `spec.nodeName` may be set once by an update, so a
//! scheduler may patch it instead of POSTing a Binding.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::error::Cause;
use super::registry::ResourceInfo;

const LABEL_VALUE: &str = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const NAME_PART: &str = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const DNS_SUBDOMAIN: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS_LABEL: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?";

fn matches(pattern: &'static str, cell: &'static OnceLock<Option<Regex>>, text: &str) -> bool {
    cell.get_or_init(|| Regex::new(&format!("^{pattern}$")).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(text))
}

fn label_value_ok(v: &str) -> bool {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    v.len() <= 63 && matches(LABEL_VALUE, &RE, v)
}

fn label_key_ok(k: &str) -> bool {
    static NAME: OnceLock<Option<Regex>> = OnceLock::new();
    static PREFIX: OnceLock<Option<Regex>> = OnceLock::new();
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty() && name.len() <= 63 && matches(NAME_PART, &NAME, name);
    name_ok && prefix.is_none_or(|p| p.len() <= 253 && matches(DNS_SUBDOMAIN, &PREFIX, p))
}

fn dns_label_ok(name: &str) -> bool {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    name.len() <= 63 && matches(DNS_LABEL, &RE, name)
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

fn forbidden(field: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {detail}"),
        field: field.to_string(),
    }
}

fn duplicate(field: &str, value: &str) -> Cause {
    Cause {
        reason: "FieldValueDuplicate",
        message: format!("Duplicate value: {}", quoted(value)),
        field: field.to_string(),
    }
}

fn not_found(field: &str, value: &str) -> Cause {
    Cause {
        reason: "FieldValueNotFound",
        message: format!("Not found: {}", quoted(value)),
        field: field.to_string(),
    }
}

/// The causes that make the metadata of any object, custom resources included, invalid.
pub(crate) fn validate_metadata(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    labels(
        obj.pointer("/metadata/labels"),
        "metadata.labels",
        &mut causes,
    );
    causes
}

/// The causes that make `obj` (an update of `old`, when given) invalid.
pub(crate) fn validate(resource: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = validate_metadata(obj);
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "pods") => {
            pod_spec(&obj["spec"], "spec", &[], &mut causes);
            if let Some(old) = old {
                pod_update(&obj["spec"], &old["spec"], &mut causes);
            }
        }
        ("apps", "statefulsets") => {
            let claims: Vec<&str> = obj
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
                .collect();
            workload(obj, &claims, &mut causes);
            if let Some(old) = old {
                statefulset_update(obj, old, &mut causes);
            }
        }
        ("apps", "deployments") | ("apps", "replicasets") => {
            workload(obj, &[], &mut causes);
            if let Some(old) = old {
                if obj.pointer("/spec/selector") != old.pointer("/spec/selector") {
                    causes.push(Cause::invalid(
                        "spec.selector",
                        &shown(obj.pointer("/spec/selector")),
                        "field is immutable",
                    ));
                }
            }
        }
        ("", "services") => {
            service(&obj["spec"], &mut causes);
            if let Some(old) = old {
                let (new_ip, old_ip) = (
                    obj.pointer("/spec/clusterIP"),
                    old.pointer("/spec/clusterIP"),
                );
                if old_ip
                    .and_then(Value::as_str)
                    .is_some_and(|ip| !ip.is_empty())
                    && new_ip != old_ip
                {
                    causes.push(Cause::invalid(
                        "spec.clusterIP",
                        &shown(new_ip),
                        "field is immutable",
                    ));
                }
            }
        }
        ("", "configmaps") | ("", "secrets") => {
            if let Some(old) = old.filter(|o| o["immutable"].as_bool() == Some(true)) {
                for field in ["data", "binaryData", "stringData"] {
                    if obj.get(field) != old.get(field) {
                        causes.push(forbidden(
                            field,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if obj.get("immutable") != old.get("immutable") {
                    causes.push(forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        ("", "persistentvolumeclaims") => {
            if let Some(old) = old {
                claim_update(&obj["spec"], &old["spec"], &mut causes);
                claim_shrink(obj, old, &mut causes);
            }
        }
        _ => {}
    }
    causes
}

fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "null".to_string(), Value::to_string)
}

fn labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (key, value) in map {
        if !label_key_ok(key) {
            causes.push(Cause::invalid(field, &quoted(key), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'), with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
        }
        let text = value.as_str().unwrap_or_default();
        if !value.is_string() || !label_value_ok(text) {
            causes.push(Cause::invalid(field, &quoted(text), &format!(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '{LABEL_VALUE}')"
            )));
        }
    }
}

/// A pod spec; `extra_volumes` are names mounts may use besides `spec.volumes` (a
/// StatefulSet's volume claim templates).
fn pod_spec(spec: &Value, path: &str, extra_volumes: &[&str], causes: &mut Vec<Cause>) {
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (i, name) in volumes.iter().enumerate() {
        if volumes[..i].contains(name) {
            causes.push(duplicate(&format!("{path}.volumes[{i}].name"), name));
        }
    }
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required(&format!("{path}.containers"), ""));
    }
    let mut seen: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                causes.push(Cause::required(&format!("{at}.name"), ""));
            } else if !dns_label_ok(name) {
                causes.push(Cause::invalid(&format!("{at}.name"), &quoted(name), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
            } else if seen.iter().any(|s| s == name) {
                causes.push(duplicate(&format!("{at}.name"), name));
            }
            seen.push(name.to_string());
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                causes.push(Cause::required(&format!("{at}.image"), ""));
            }
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let port = p["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        &format!("{at}.ports[{j}].containerPort"),
                        &port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let vname = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(&vname) && !extra_volumes.contains(&vname) {
                    causes.push(not_found(&format!("{at}.volumeMounts[{j}].name"), vname));
                }
            }
        }
    }
}

fn workload(obj: &Value, extra_volumes: &[&str], causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        causes.push(Cause::invalid(
            "spec.replicas",
            &spec["replicas"].to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec["selector"]["matchLabels"].as_object();
    let has_expressions = spec["selector"]["matchExpressions"]
        .as_array()
        .is_some_and(|e| !e.is_empty());
    if selector.is_none_or(Map::is_empty) && !has_expressions {
        causes.push(Cause::required("spec.selector", ""));
    }
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    labels(
        spec.pointer("/template/metadata/labels"),
        "spec.template.metadata.labels",
        causes,
    );
    if let Some(selector) = selector {
        let matched = selector
            .iter()
            .all(|(k, v)| template_labels.and_then(|l| l.get(k)) == Some(v));
        if !matched {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                &shown(spec.pointer("/template/metadata/labels")),
                "`selector` does not match template `labels`",
            ));
        }
    }
    pod_spec(
        &spec["template"]["spec"],
        "spec.template.spec",
        extra_volumes,
        causes,
    );
}

const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

fn without(spec: &Value, fields: &[&str]) -> Value {
    let mut v = spec.clone();
    if let Some(map) = v.as_object_mut() {
        map.retain(|k, _| !fields.contains(&k.as_str()));
    }
    v
}

fn statefulset_update(obj: &Value, old: &Value, causes: &mut Vec<Cause>) {
    if without(&obj["spec"], STATEFULSET_MUTABLE) != without(&old["spec"], STATEFULSET_MUTABLE) {
        causes.push(forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

/// Pod spec fields an update may change, as Kubernetes allows.
fn pod_update(spec: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let normalise = |s: &Value, other: &Value| {
        let mut v = without(
            s,
            &[
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ],
        );
        for list in ["containers", "initContainers"] {
            if let Some(items) = v.get_mut(list).and_then(Value::as_array_mut) {
                items.iter_mut().for_each(|c| {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                });
            }
        }
        // The one relaxation: nodeName may be set once, as a Binding would.
        if other["nodeName"].as_str().is_none_or(str::is_empty) {
            if let Some(m) = v.as_object_mut() {
                m.remove("nodeName");
            }
        }
        v
    };
    if normalise(spec, old) != normalise(old, old) {
        causes.push(forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

fn service(spec: &Value, causes: &mut Vec<Cause>) {
    let headless = spec["clusterIP"].as_str() == Some("None");
    let external = spec["type"].as_str() == Some("ExternalName");
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && !headless && !external {
        causes.push(Cause::required("spec.ports", ""));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                &format!("spec.ports[{i}].port"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(&format!("spec.ports[{i}].name"), ""));
        } else if !name.is_empty() && names.contains(&name) {
            causes.push(duplicate(&format!("spec.ports[{i}].name"), name));
        }
        names.push(name);
    }
}

fn claim_update(spec: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let comparable = |s: &Value, binding_allowed: bool| {
        let mut v = without(s, &["volumeAttributesClassName"]);
        if let Some(m) = v.as_object_mut() {
            if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                r.remove("requests");
            }
            if binding_allowed {
                m.remove("volumeName");
            }
        }
        v
    };
    let binding_allowed = old["volumeName"].as_str().is_none_or(str::is_empty);
    if comparable(spec, binding_allowed) != comparable(old, binding_allowed) {
        causes.push(forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
}

/// A claim's request may shrink only while it stays above `status.capacity` (to recover
/// from an expansion that failed, Kubernetes' RecoverVolumeExpansionFailure): volumes never
/// shrink.
fn claim_shrink(obj: &Value, old: &Value, causes: &mut Vec<Cause>) {
    use super::admission::claim_request;
    let (Some(new), Some(before)) = (claim_request(obj), claim_request(old)) else {
        return;
    };
    let capacity = old
        .pointer("/status/capacity/storage")
        .and_then(Value::as_str)
        .and_then(crate::cluster::quantity::parse)
        .unwrap_or(0.0);
    if new < before && new <= capacity {
        causes.push(forbidden(
            "spec.resources.requests.storage",
            "field can not be less than status.capacity",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;
    use serde_json::json;

    fn sts(size: &str, labels: Value) -> Value {
        json!({"metadata": {"name": "b", "labels": {"app": "b"}}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "b"}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i",
                "volumeMounts": [{"name": "journal", "mountPath": "/j"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "journal"}, "spec": {"resources": {"requests": {"storage": size}}}}]}})
    }

    #[test]
    fn given_statefulset_when_claim_template_changes_should_be_forbidden() {
        let registry = Registry::new();
        let r = registry.lookup("apps", "v1", "statefulsets").unwrap();
        assert!(validate(&r, &sts("1Gi", json!({"app": "b"})), None).is_empty());
        let causes = validate(
            &r,
            &sts("2Gi", json!({"app": "b"})),
            Some(&sts("1Gi", json!({"app": "b"}))),
        );
        assert_eq!(causes.len(), 1);
        assert!(causes[0]
            .line()
            .starts_with("spec: Forbidden: updates to statefulset spec"));
    }

    #[test]
    fn given_selector_not_matching_template_when_validated_should_be_invalid() {
        let registry = Registry::new();
        let r = registry.lookup("apps", "v1", "statefulsets").unwrap();
        let causes = validate(&r, &sts("1Gi", json!({"app": "other"})), None);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn given_bad_label_value_when_validated_should_be_invalid() {
        let registry = Registry::new();
        let r = registry.lookup("", "v1", "configmaps").unwrap();
        assert_eq!(
            validate(
                &r,
                &json!({"metadata": {"labels": {"a": "no spaces"}}}),
                None
            )
            .len(),
            1
        );
        assert!(validate(
            &r,
            &json!({"metadata": {"labels": {"app.kubernetes.io/name": "duomq-broker"}}}),
            None
        )
        .is_empty());
    }
}
