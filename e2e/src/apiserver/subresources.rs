//! The `scale` subresource of StatefulSets, Deployments and ReplicaSets (`kubectl scale`)
//! and the `binding` subresource of pods (how a scheduler assigns a node).
//!
//! It must not bypass the write path: both end in [`super::write`], so concurrency checks,
//! generation bumps and watch events are the same as for any update.

use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::meta;
use super::patch::{self, ListCtx, PatchType};
use super::registry::ResourceInfo;
use super::store::State;
use super::write::{self, Part, WriteOptions, Written};

/// The autoscaling/v1 Scale of a scalable object.
pub(crate) fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let m = obj.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// Writes a Scale (PUT, or PATCH when `patch_body` is given) to its object.
pub(crate) fn write_scale(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: &str,
    name: &str,
    body: &[u8],
    patch_type: Option<PatchType>,
    opts: &WriteOptions,
) -> ApiResult<Written> {
    let old = state
        .get(&resource.storage, namespace, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let scale = match patch_type {
        Some(pt) => {
            let mut doc = scale_of(&old);
            patch::apply(&mut doc, pt, body, ListCtx::Builtin)?;
            doc
        }
        None => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("failed to decode Scale: {e}")))?,
    };
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("Scale spec.replicas is required"))?;
    let mut obj = resource.present(&old);
    obj["spec"]["replicas"] = json!(replicas);
    if let Some(rv) = meta::resource_version(&scale) {
        meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
    }
    let ns = (!namespace.is_empty()).then_some(namespace);
    write::update(state, resource, ns, name, Part::Main, obj, opts)
}

/// Binds a pod to a node: sets `spec.nodeName` and the PodScheduled condition.
pub(crate) fn bind(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<()> {
    let binding: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("failed to decode Binding: {e}")))?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Binding target.name is required"))?;
    let old = state
        .get(&resource.storage, namespace, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    if let Some(current) = old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(ApiError::precondition(
            resource,
            name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    let mut pod = (*old).clone();
    pod["spec"]["nodeName"] = json!(node);
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
    pod["status"]["conditions"] = Value::Array(conditions);
    write::store_update(state, resource, &old, pod);
    Ok(())
}
