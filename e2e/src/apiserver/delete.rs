//! DELETE and deletecollection: preconditions, graceful deletion of scheduled pods (the
//! kubelet deletes again with grace 0 once its containers stopped), finalizers and
//! `deletionTimestamp`, propagation policies (Background, Foreground via the
//! `foregroundDeletion` finalizer, Orphan), and namespaces and CRDs that empty themselves
//! before they go.
//!
//! It must not collect dependents itself: removing an object marks the store for the garbage
//! collector ([`super::gc`]), which runs at the end of the same write.

use std::sync::Arc;

use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::meta;
use super::registry::ResourceInfo;
use super::store::State;
use super::write;

/// How dependents of a deleted owner are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The DeleteOptions of a request (body and query merged).
#[derive(Debug, Clone)]
pub(crate) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl Default for DeleteOptions {
    fn default() -> Self {
        Self {
            grace_period: None,
            propagation: Propagation::Background,
            precondition_uid: None,
            precondition_rv: None,
            dry_run: false,
        }
    }
}

impl DeleteOptions {
    /// Reads a DeleteOptions body (may be empty) over query defaults.
    pub(crate) fn merge_body(mut self, body: &[u8]) -> ApiResult<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(self);
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("failed to decode DeleteOptions: {e}")))?;
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            self.grace_period = Some(g);
        }
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            self.propagation = parse_propagation(p)?;
        }
        if let Some(orphan) = v.get("orphanDependents").and_then(Value::as_bool) {
            self.propagation = if orphan {
                Propagation::Orphan
            } else {
                Propagation::Background
            };
        }
        if let Some(uid) = v.pointer("/preconditions/uid").and_then(Value::as_str) {
            self.precondition_uid = Some(uid.to_string());
        }
        if let Some(rv) = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            self.precondition_rv = Some(rv.to_string());
        }
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty())
        {
            self.dry_run = true;
        }
        Ok(self)
    }
}

pub(crate) fn parse_propagation(p: &str) -> ApiResult<Propagation> {
    match p {
        "Background" => Ok(Propagation::Background),
        "Foreground" => Ok(Propagation::Foreground),
        "Orphan" => Ok(Propagation::Orphan),
        other => Err(ApiError::bad_request(format!(
            "propagationPolicy must be one of Background, Foreground or Orphan, got {other:?}"
        ))),
    }
}

/// What a DELETE did.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// Gone; the last state of the object.
    Removed(Arc<Value>),
    /// Still there, deleting (grace period or finalizers).
    Pending(Arc<Value>),
}

/// Namespaces Kubernetes refuses to delete.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

const FOREGROUND: &str = "foregroundDeletion";
const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Deletes one object.
pub(crate) fn delete(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: &str,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Deleted> {
    let old = state
        .get(&resource.storage, namespace, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    if resource.is("", "namespaces") && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    if let Some(uid) = &opts.precondition_uid {
        if uid != meta::uid(&old) {
            return Err(ApiError::precondition(
                resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::uid(&old)
                ),
            ));
        }
    }
    if let Some(rv) = &opts.precondition_rv {
        if Some(rv.as_str()) != meta::resource_version(&old) {
            return Err(ApiError::precondition(resource, name, &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta::resource_version(&old).unwrap_or_default()
            )));
        }
    }
    let mut obj = (*old).clone();
    let grace = grace_period(resource, &obj, opts);
    if opts.propagation == Propagation::Orphan && !opts.dry_run {
        orphan_dependents(state, meta::uid(&obj));
    }
    if opts.propagation == Propagation::Foreground && has_dependents(state, meta::uid(&obj)) {
        add_finalizer(&mut obj, FOREGROUND);
    }
    if resource.is("apiextensions.k8s.io", "customresourcedefinitions") {
        add_finalizer(&mut obj, CRD_CLEANUP);
    }
    if resource.is("", "namespaces") {
        obj["status"]["phase"] = json!("Terminating");
    }
    let already = meta::is_deleting(&obj);
    let m = meta::metadata_mut(&mut obj);
    let current_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
    if !already || current_grace.is_some_and(|c| grace < c) {
        m.insert("deletionTimestamp".into(), json!(meta::now_plus(grace)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
    if opts.dry_run {
        return Ok(Deleted::Pending(Arc::new(obj)));
    }
    if write::may_remove(&obj) {
        let last = write::remove(state, resource, namespace, name).unwrap_or(old);
        tracing::debug!(resource = %resource.plural, namespace, name, "deleted");
        return Ok(Deleted::Removed(last));
    }
    let stored = write::store_update(state, resource, &old, obj);
    if state.get(&resource.storage, namespace, name).is_none() {
        return Ok(Deleted::Removed(stored));
    }
    tracing::debug!(resource = %resource.plural, namespace, name, grace, "deletion pending");
    Ok(Deleted::Pending(stored))
}

/// Seconds of grace: only scheduled, unfinished pods get any (the body's
/// `gracePeriodSeconds`, else the pod's `terminationGracePeriodSeconds`, else 30).
fn grace_period(resource: &ResourceInfo, obj: &Value, opts: &DeleteOptions) -> i64 {
    if !resource.is("", "pods") {
        return 0;
    }
    let scheduled = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        obj.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !scheduled || finished {
        return 0;
    }
    opts.grace_period
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let mut finalizers = meta::finalizers(obj);
    if !finalizers.iter().any(|f| f == finalizer) {
        finalizers.push(finalizer.to_string());
        meta::set_finalizers(obj, &finalizers);
    }
}

/// Objects with an owner reference to `uid`.
pub(crate) fn dependents_of(state: &State, uid: &str) -> Vec<Arc<Value>> {
    state
        .all_objects()
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            meta::owner_references(o)
                .iter()
                .any(|r| r["uid"].as_str() == Some(uid))
        })
        .collect()
}

fn has_dependents(state: &State, uid: &str) -> bool {
    !dependents_of(state, uid).is_empty()
}

/// Orphan propagation: dependents lose their owner reference to `uid`.
fn orphan_dependents(state: &mut State, uid: &str) {
    for (key, dep) in state.all_objects() {
        let refs = meta::owner_references(&dep);
        if !refs.iter().any(|r| r["uid"].as_str() == Some(uid)) {
            continue;
        }
        let kept: Vec<Value> = refs
            .into_iter()
            .filter(|r| r["uid"].as_str() != Some(uid))
            .cloned()
            .collect();
        let mut updated = (*dep).clone();
        let m = meta::metadata_mut(&mut updated);
        if kept.is_empty() {
            m.remove("ownerReferences");
        } else {
            m.insert("ownerReferences".into(), Value::Array(kept));
        }
        if let Some(resource) = state.registry.by_storage(&key) {
            write::store_update(state, &resource, &dep, updated);
        }
    }
}

/// Removes a finalizer the server itself manages (foreground, CRD cleanup, a namespace's
/// `kubernetes`), which removes the object when nothing else holds it.
pub(crate) fn release(
    state: &mut State,
    resource: &ResourceInfo,
    obj: &Arc<Value>,
    finalizer: &str,
) {
    let mut updated = (**obj).clone();
    let kept: Vec<String> = meta::finalizers(obj)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    meta::set_finalizers(&mut updated, &kept);
    if let Some(spec_finalizers) = updated
        .pointer_mut("/spec/finalizers")
        .and_then(Value::as_array_mut)
    {
        spec_finalizers.retain(|f| f.as_str() != Some(finalizer));
    }
    write::store_update(state, resource, obj, updated);
}
