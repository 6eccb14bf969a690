//! Defaulting of built-in types, the subset of Kubernetes' `SetDefaults_*` that controllers
//! and `kubectl get -o yaml` readers notice: pod specs (also inside templates), StatefulSets,
//! Deployments, ReplicaSets, Services, PVCs, PVs and Secrets (whose `stringData` is merged
//! into `data`, as Kubernetes stores it).
//!
//! Defaulting runs on every write, so re-applying an object that omits a defaulted field
//! leaves the stored object unchanged. It must not validate or allocate (cluster IPs are
//! allocated at admission).

use serde_json::{json, Map, Value};

use super::registry::ResourceInfo;

/// Fills the defaults of `resource`'s type into `obj`.
pub(crate) fn apply(resource: &ResourceInfo, obj: &mut Value) {
    if resource.custom.is_some() {
        return;
    }
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "pods") => pod_spec(field(obj, "spec")),
        ("apps", "statefulsets") => {
            let spec = field(obj, "spec");
            set(spec, "replicas", json!(1));
            set(spec, "podManagementPolicy", json!("OrderedReady"));
            set(spec, "revisionHistoryLimit", json!(10));
            set(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            if let Some(Value::Array(templates)) = spec.get_mut("volumeClaimTemplates") {
                for t in templates {
                    set(t, "apiVersion", json!("v1"));
                    set(t, "kind", json!("PersistentVolumeClaim"));
                    set(field(t, "spec"), "volumeMode", json!("Filesystem"));
                    set(t, "status", json!({"phase": "Pending"}));
                }
            }
            template(spec);
        }
        ("apps", "deployments") => {
            let spec = field(obj, "spec");
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            set(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            template(spec);
        }
        ("apps", "replicasets") => {
            let spec = field(obj, "spec");
            set(spec, "replicas", json!(1));
            template(spec);
        }
        ("", "services") => service(field(obj, "spec")),
        ("", "persistentvolumeclaims") => {
            set(field(obj, "spec"), "volumeMode", json!("Filesystem"))
        }
        ("", "persistentvolumes") => {
            let spec = field(obj, "spec");
            set(spec, "volumeMode", json!("Filesystem"));
            set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
        }
        ("", "secrets") => {
            set(obj, "type", json!("Opaque"));
            merge_string_data(obj);
        }
        _ => {}
    }
}

/// A Secret's `stringData` is write-only: Kubernetes merges it into `data` (base64,
/// overriding keys of the same name) and stores no `stringData`, so a later write of
/// `data` (a controller's apply) is not undone by it.
fn merge_string_data(obj: &mut Value) {
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let data = field(obj, "data");
    if let Value::Object(data) = data {
        for (key, value) in strings {
            if let Some(text) = value.as_str() {
                let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
                data.insert(key, Value::String(encoded));
            }
        }
    }
}

/// `obj[key]`, made an object when missing.
fn field<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("made an object above");
    let v = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v
}

/// Sets `obj[key]` when it is missing, null or an empty string (Go's zero value, which
/// Kubernetes' defaulting treats as unset).
fn set(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let entry = map.entry(key).or_insert(Value::Null);
        if entry.is_null() || entry.as_str() == Some("") {
            *entry = value;
        }
    }
}

fn template(spec: &mut Value) {
    let template = field(spec, "template");
    pod_spec(field(template, "spec"));
}

fn pod_spec(spec: &mut Value) {
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            containers.iter_mut().for_each(container);
        }
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        for v in volumes {
            for source in ["configMap", "secret"] {
                if let Some(s) = v.get_mut(source).filter(|s| s.is_object()) {
                    set(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

fn container(c: &mut Value) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let latest = !tag.contains(':') && !image.contains('@') || tag.ends_with(":latest");
    let policy = if latest { "Always" } else { "IfNotPresent" };
    set(c, "imagePullPolicy", json!(policy));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports {
            set(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                set(h, "scheme", json!("HTTP"));
                set(h, "path", json!("/"));
            }
        }
    }
}

fn service(spec: &mut Value) {
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    set(spec, "internalTrafficPolicy", json!("Cluster"));
    set(spec, "ipFamilies", json!(["IPv4"]));
    set(spec, "ipFamilyPolicy", json!("SingleStack"));
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports {
            set(p, "protocol", json!("TCP"));
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            set(p, "targetPort", port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    #[test]
    fn given_statefulset_when_defaulted_twice_should_be_stable() {
        let registry = Registry::new();
        let sts = registry.lookup("apps", "v1", "statefulsets").unwrap();
        let mut obj = json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "x:1"}]}}}});
        apply(&sts, &mut obj);
        let once = obj.clone();
        apply(&sts, &mut obj);
        assert_eq!(obj, once);
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(obj["spec"]["replicas"], 1);
    }

    #[test]
    fn given_a_secret_with_string_data_should_store_it_in_data_only() {
        let mut secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "two"}});
        merge_string_data(&mut secret);
        assert_eq!(secret["data"], json!({"a": "bmV3", "b": "dHdv", "keep": "eA=="}));
        assert!(secret.get("stringData").is_none(), "stringData is write-only");
    }
}
