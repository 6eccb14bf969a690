//! The garbage collector, run at the end of every write that removed an object or marked
//! one deleting: dependents whose owners are all gone (or deleting in the foreground) are
//! deleted with background propagation; foreground owners whose dependents are gone lose
//! their `foregroundDeletion` finalizer; terminating namespaces delete their contents and go
//! once empty; deleted CRDs delete their custom resources and go once none is left.
//!
//! Kubernetes collects asynchronously; here it happens within the same write, which keeps
//! the order of events Kubernetes would produce (owner first, then dependents) and makes
//! tests deterministic. It must not be called outside a store write.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::delete::{self, DeleteOptions};
use super::meta;
use super::registry::StorageKey;
use super::store::State;

/// Bound on collection rounds per write; each round settles one level of ownership.
const MAX_ROUNDS: usize = 64;

/// Collects until nothing is left to do.
pub(crate) fn collect(state: &mut State) {
    for _ in 0..MAX_ROUNDS {
        if !state.take_gc_pending() {
            return;
        }
        round(state);
    }
    tracing::warn!("garbage collection did not settle within {MAX_ROUNDS} rounds");
}

/// Owner state by uid: whether it is deleting in the foreground.
fn owners(objects: &[(StorageKey, Arc<Value>)]) -> HashMap<String, bool> {
    objects
        .iter()
        .map(|(_, o)| {
            let foreground = meta::is_deleting(o)
                && meta::finalizers(o)
                    .iter()
                    .any(|f| f == "foregroundDeletion");
            (meta::uid(o).to_string(), foreground)
        })
        .collect()
}

fn round(state: &mut State) {
    let objects = state.all_objects();
    let owners = owners(&objects);
    for (key, obj) in &objects {
        let refs = meta::owner_references(obj);
        if refs.is_empty() || meta::is_deleting(obj) {
            continue;
        }
        let orphaned = refs.iter().all(|r| {
            r["uid"]
                .as_str()
                .is_none_or(|uid| owners.get(uid).is_none_or(|foreground| *foreground))
        });
        if orphaned {
            delete_quietly(state, key, obj, "owner gone");
        }
    }
    for (key, obj) in &objects {
        if !meta::is_deleting(obj) {
            continue;
        }
        let finalizers = meta::finalizers(obj);
        if finalizers.iter().any(|f| f == "foregroundDeletion")
            && delete::dependents_of(state, meta::uid(obj)).is_empty()
        {
            release(state, key, obj, "foregroundDeletion");
        }
        match (key.group.as_str(), key.plural.as_str()) {
            ("", "namespaces") => finish_namespace(state, key, obj),
            ("apiextensions.k8s.io", "customresourcedefinitions") => finish_crd(state, key, obj),
            _ => {}
        }
    }
}

fn release(state: &mut State, key: &StorageKey, obj: &Arc<Value>, finalizer: &str) {
    let Some(current) = state.get(key, meta::namespace(obj), meta::name(obj)) else {
        return;
    };
    if let Some(resource) = state.registry.by_storage(key) {
        delete::release(state, &resource, &current, finalizer);
    }
}

fn delete_quietly(state: &mut State, key: &StorageKey, obj: &Value, why: &str) {
    let Some(resource) = state.registry.by_storage(key) else {
        return;
    };
    let (ns, name) = (meta::namespace(obj), meta::name(obj));
    match delete::delete(state, &resource, ns, name, &DeleteOptions::default()) {
        Ok(_) => {
            tracing::debug!(resource = %resource.plural, namespace = ns, name, why, "garbage collected")
        }
        Err(error) => {
            tracing::debug!(resource = %resource.plural, namespace = ns, name, message = %error.message, "garbage collection skipped")
        }
    }
}

fn finish_namespace(state: &mut State, key: &StorageKey, ns_obj: &Arc<Value>) {
    let ns = meta::name(ns_obj);
    let contents: Vec<(StorageKey, Arc<Value>)> = state
        .all_objects()
        .into_iter()
        .filter(|(_, o)| meta::namespace(o) == ns)
        .collect();
    for (k, o) in &contents {
        if !meta::is_deleting(o) {
            delete_quietly(state, k, o, "namespace terminating");
        }
    }
    let empty = state
        .all_objects()
        .iter()
        .all(|(_, o)| meta::namespace(o) != ns);
    if empty {
        release(state, key, ns_obj, "kubernetes");
    }
}

fn finish_crd(state: &mut State, key: &StorageKey, crd: &Arc<Value>) {
    let name = meta::name(crd);
    let Some(served) = state
        .registry
        .all()
        .find(|r| r.custom.as_ref().is_some_and(|c| c.crd_name == name))
        .map(|r| r.storage.clone())
    else {
        release(
            state,
            key,
            crd,
            "customresourcecleanup.apiextensions.k8s.io",
        );
        return;
    };
    for o in state.list(&served, None) {
        if !meta::is_deleting(&o) {
            delete_quietly(state, &served, &o, "custom resource definition deleted");
        }
    }
    if state.list(&served, None).is_empty() {
        release(
            state,
            key,
            crd,
            "customresourcecleanup.apiextensions.k8s.io",
        );
    }
}
