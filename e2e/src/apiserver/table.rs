//! `meta.k8s.io/v1` Tables, what `kubectl get` asks for: printer columns of CRDs (evaluated
//! with [`super::jsonpath`]), the familiar columns of common built-ins (pods: NAME READY
//! STATUS RESTARTS AGE, …), NAME and AGE for the rest; rows carry the object as
//! `includeObject` asks (None, Metadata, Object).
//!
//! It must not filter or order: it renders the objects it is handed.

use serde_json::{json, Value};

use super::jsonpath;
use super::meta;
use super::registry::ResourceInfo;

/// What each row's `object` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

type Cell = fn(&Value) -> Value;

struct Column {
    name: String,
    type_: String,
    format: String,
    description: String,
    priority: i64,
    cell: Cell,
    json_path: Option<String>,
}

fn col(name: &str, type_: &str, priority: i64, cell: Cell) -> Column {
    Column {
        name: name.to_string(),
        type_: type_.to_string(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: String::new(),
        priority,
        cell,
        json_path: None,
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// A table of `objects` (as stored) with the resource's columns.
pub(crate) fn table(
    resource: &ResourceInfo,
    objects: &[std::sync::Arc<Value>],
    include: IncludeObject,
    resource_version: u64,
) -> Value {
    let columns = columns(resource);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            let description = if c.name == "Name" && c.description.is_empty() { NAME_DESCRIPTION } else { &c.description };
            json!({"name": c.name, "type": c.type_, "format": c.format, "description": description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(resource, &columns, o, include))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// The `PartialObjectMetadata` of an object.
pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn row(resource: &ResourceInfo, columns: &[Column], obj: &Value, include: IncludeObject) -> Value {
    let cells: Vec<Value> = columns
        .iter()
        .map(|c| match &c.json_path {
            Some(path) => custom_cell(obj, path, &c.type_),
            None => (c.cell)(obj),
        })
        .collect();
    let mut row = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => row["object"] = partial_metadata(obj),
        IncludeObject::Object => row["object"] = resource.present(obj),
    }
    row
}

/// A CRD printer column cell as the apiextensions server renders it.
fn custom_cell(obj: &Value, path: &str, type_: &str) -> Value {
    let Some(value) = jsonpath::first(obj, path) else {
        return Value::Null;
    };
    match (type_, value) {
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .unwrap_or_else(|| json!(n.as_f64().unwrap_or_default() as i64)),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => value.clone(),
        ("date", Value::String(s)) => json!(meta::age(Some(s))),
        ("string", Value::String(_)) => value.clone(),
        ("string", Value::Null) => Value::Null,
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

fn columns(resource: &ResourceInfo) -> Vec<Column> {
    if let Some(custom) = &resource.custom {
        let mut cols = vec![col("Name", "string", 0, name)];
        if custom.printer_columns.is_empty() {
            cols.push(col("Age", "date", 0, age));
        }
        for pc in &custom.printer_columns {
            cols.push(Column {
                name: pc.name.clone(),
                type_: pc.type_.clone(),
                format: pc.format.clone(),
                description: pc.description.clone(),
                priority: pc.priority,
                cell: name,
                json_path: Some(pc.json_path.clone()),
            });
        }
        return cols;
    }
    let mut cols = vec![col("Name", "string", 0, name)];
    let extra: Vec<Column> = match (resource.storage.group.as_str(), resource.plural.as_str()) {
        ("", "pods") => vec![
            col("Ready", "string", 0, pod_ready),
            col("Status", "string", 0, pod_status),
            col("Restarts", "string", 0, pod_restarts),
            col("Age", "string", 0, age),
            col("IP", "string", 1, |o| str_at(o, "/status/podIP")),
            col("Node", "string", 1, |o| str_at(o, "/spec/nodeName")),
            col("Nominated Node", "string", 1, |o| {
                str_at(o, "/status/nominatedNodeName")
            }),
            col("Readiness Gates", "string", 1, |_| json!("<none>")),
        ],
        ("", "events") => {
            return vec![
                col("Last Seen", "string", 0, event_last_seen),
                col("Type", "string", 0, |o| str_at(o, "/type")),
                col("Reason", "string", 0, |o| str_at(o, "/reason")),
                col("Object", "string", 0, event_object),
                col("Message", "string", 0, |o| str_at(o, "/message")),
                col("Name", "string", 1, name),
            ]
        }
        ("", "namespaces") => vec![
            col("Status", "string", 0, |o| str_at(o, "/status/phase")),
            col("Age", "string", 0, age),
        ],
        ("", "nodes") => vec![
            col("Status", "string", 0, node_status),
            col("Roles", "string", 0, node_roles),
            col("Age", "string", 0, age),
            col("Version", "string", 0, |o| {
                str_at(o, "/status/nodeInfo/kubeletVersion")
            }),
        ],
        ("", "services") => vec![
            col("Type", "string", 0, |o| str_at(o, "/spec/type")),
            col("Cluster-IP", "string", 0, |o| str_at(o, "/spec/clusterIP")),
            col("External-IP", "string", 0, |_| json!("<none>")),
            col("Port(s)", "string", 0, service_ports),
            col("Age", "string", 0, age),
        ],
        ("", "configmaps") => vec![
            col("Data", "integer", 0, data_count),
            col("Age", "string", 0, age),
        ],
        ("", "secrets") => vec![
            col("Type", "string", 0, |o| str_at(o, "/type")),
            col("Data", "integer", 0, data_count),
            col("Age", "string", 0, age),
        ],
        ("", "persistentvolumeclaims") => vec![
            col("Status", "string", 0, |o| str_at(o, "/status/phase")),
            col("Volume", "string", 0, |o| str_at(o, "/spec/volumeName")),
            col("Capacity", "string", 0, |o| {
                str_at(o, "/status/capacity/storage")
            }),
            col("Storageclass", "string", 0, |o| {
                str_at(o, "/spec/storageClassName")
            }),
            col("Age", "string", 0, age),
        ],
        ("apps", "statefulsets") => vec![
            col("Ready", "string", 0, sts_ready),
            col("Age", "string", 0, age),
        ],
        ("apps", "deployments") => vec![
            col("Ready", "string", 0, sts_ready),
            col("Up-to-date", "integer", 0, |o| {
                int_at(o, "/status/updatedReplicas")
            }),
            col("Available", "integer", 0, |o| {
                int_at(o, "/status/availableReplicas")
            }),
            col("Age", "string", 0, age),
        ],
        ("apps", "replicasets") => vec![
            col("Desired", "integer", 0, |o| int_at(o, "/spec/replicas")),
            col("Current", "integer", 0, |o| int_at(o, "/status/replicas")),
            col("Ready", "integer", 0, |o| {
                int_at(o, "/status/readyReplicas")
            }),
            col("Age", "string", 0, age),
        ],
        ("coordination.k8s.io", "leases") => vec![
            col("Holder", "string", 0, |o| str_at(o, "/spec/holderIdentity")),
            col("Age", "string", 0, age),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![col("Created At", "date", 0, |o| {
                str_at(o, "/metadata/creationTimestamp")
            })]
        }
        _ => vec![col("Age", "string", 0, age)],
    };
    cols.extend(extra);
    cols
}

fn name(o: &Value) -> Value {
    json!(meta::name(o))
}

fn age(o: &Value) -> Value {
    json!(meta::age(meta::meta_str(o, "creationTimestamp")))
}

fn str_at(o: &Value, pointer: &str) -> Value {
    match o.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => json!(s),
        _ => json!("<none>"),
    }
}

fn int_at(o: &Value, pointer: &str) -> Value {
    json!(o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0))
}

fn data_count(o: &Value) -> Value {
    let count = |f: &str| o.get(f).and_then(Value::as_object).map_or(0, |m| m.len());
    json!(count("data") + count("binaryData") + count("stringData"))
}

fn sts_ready(o: &Value) -> Value {
    let ready = o
        .pointer("/status/readyReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let want = o
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    json!(format!("{ready}/{want}"))
}

fn container_statuses(o: &Value) -> Vec<&Value> {
    o.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn pod_ready(o: &Value) -> Value {
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = container_statuses(o)
        .iter()
        .filter(|c| c["ready"].as_bool() == Some(true))
        .count();
    json!(format!("{ready}/{total}"))
}

fn pod_restarts(o: &Value) -> Value {
    let restarts: i64 = container_statuses(o)
        .iter()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    json!(restarts.to_string())
}

/// The STATUS column of `kubectl get pods`, simplified from kubectl's printPod.
fn pod_status(o: &Value) -> Value {
    let mut reason = o
        .pointer("/status/reason")
        .or_else(|| o.pointer("/status/phase"))
        .and_then(Value::as_str)
        .unwrap_or("Unknown")
        .to_string();
    let mut running = false;
    for c in container_statuses(o).iter().rev() {
        if let Some(r) = c
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        } else if let Some(t) = c.pointer("/state/terminated") {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => r.to_string(),
                _ => format!(
                    "ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                ),
            };
        } else if c.pointer("/state/running").is_some() && c["ready"].as_bool() == Some(true) {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".into();
    }
    if meta::is_deleting(o) {
        reason = "Terminating".into();
    }
    json!(reason)
}

fn node_status(o: &Value) -> Value {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True");
    let mut status = match ready {
        Some(true) => "Ready".to_string(),
        Some(false) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value) -> Value {
    let roles: Vec<&str> = meta::labels(o)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    json!(if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    })
}

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
        .collect();
    json!(if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    })
}

fn event_last_seen(o: &Value) -> Value {
    let ts = [
        "/lastTimestamp",
        "/series/lastObservedTime",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| o.pointer(p).and_then(Value::as_str));
    json!(meta::age(ts))
}

fn event_object(o: &Value) -> Value {
    let kind = o
        .pointer("/involvedObject/kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
    let name = o
        .pointer("/involvedObject/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    json!(format!("{kind}/{name}"))
}
