//! Create, update (PUT) and patch, with the metadata rules every resource shares: names and
//! `generateName`, uid, creationTimestamp, `generation` (1 at create, bumped when anything
//! outside metadata and status changes), optimistic concurrency on `resourceVersion`, the
//! status subresource split, attribution of each write in managedFields, no-op writes that
//! change nothing (no new resourceVersion), and removal of a deleting object once its last
//! finalizer is gone.
//!
//! It must not answer HTTP: handlers call it under the store lock and shape the response.

use std::sync::Arc;

use http::StatusCode;
use rand::Rng;
use serde_json::{json, Value};

use super::admission;
use super::apply;
use super::crd_validation::FieldValidation;
use super::error::{ApiError, ApiResult, Cause};
use super::fieldsets::Scope;
use super::managed::{self, Writer};
use super::meta;
use super::patch::{self, ListCtx, PatchType};
use super::registry::{ResourceInfo, StorageKey};
use super::store::State;

/// Query options of a write.
#[derive(Debug, Clone)]
pub(crate) struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// The `fieldManager` parameter, required for apply.
    pub field_manager: Option<String>,
    /// Who the write is attributed to: `fieldManager`, else the client's user-agent name.
    pub manager: String,
    /// The `force` parameter of apply.
    pub force: bool,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// The outcome of a write: the stored object, the HTTP code and warnings.
#[derive(Debug)]
pub(crate) struct Written {
    pub object: Arc<Value>,
    pub code: StatusCode,
    pub warnings: Vec<String>,
}

fn namespaces_key() -> StorageKey {
    StorageKey {
        group: String::new(),
        plural: "namespaces".into(),
    }
}

/// The namespace a request names must exist and not be terminating for new content.
fn check_namespace(state: &State, resource: &ResourceInfo, ns: &str, name: &str) -> ApiResult<()> {
    match state.get(&namespaces_key(), "", ns) {
        None => Err(ApiError::not_found_in("", "namespaces", ns)),
        Some(n) if meta::is_deleting(&n) => Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            resource.plural
        ))),
        Some(_) => Ok(()),
    }
}

/// A sent object must be an object whose type meta, when present, names the resource.
fn check_sent(resource: &ResourceInfo, sent: &Value) -> ApiResult<()> {
    if !sent.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    check_type_meta(resource, sent)
}

/// Checks `apiVersion` and `kind` of a sent object against the resource, when present.
fn check_type_meta(resource: &ResourceInfo, sent: &Value) -> ApiResult<()> {
    if let Some(kind) = sent
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
    {
        if kind != resource.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                resource.kind
            )));
        }
    }
    if let Some(av) = sent
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        if av != resource.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                resource.api_version()
            )));
        }
    }
    Ok(())
}

/// Checks the namespace a sent object names against the request's, and sets it.
fn place(resource: &ResourceInfo, obj: &mut Value, namespace: Option<&str>) -> ApiResult<()> {
    let meta_map = meta::metadata_mut(obj);
    if resource.namespaced {
        let ns = namespace.unwrap_or_default();
        let sent = meta_map
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !sent.is_empty() && sent != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_map.insert("namespace".into(), json!(ns));
    } else {
        meta_map.remove("namespace");
    }
    Ok(())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The list semantics of a resource's objects.
fn list_ctx(resource: &ResourceInfo) -> ListCtx<'_> {
    match &resource.custom {
        Some(c) => ListCtx::Schema(c.schema.as_ref()),
        None => ListCtx::Builtin,
    }
}

/// The part of an object a write through `part` may own.
fn scope(resource: &ResourceInfo, part: Part) -> Scope {
    match (part, resource.subresources.status) {
        (Part::Status, _) => Scope::StatusOnly,
        (Part::Main, true) => Scope::NoStatus,
        (Part::Main, false) => Scope::Whole,
    }
}

/// Creates an object (POST).
pub(crate) fn create(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    sent: Value,
    opts: &WriteOptions,
) -> ApiResult<Written> {
    create_attributed(state, resource, namespace, sent, opts, true)
}

/// Creates an object; `attribute` records the creator as an Update manager (an apply that
/// creates has recorded itself already).
fn create_attributed(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    sent: Value,
    opts: &WriteOptions,
    attribute: bool,
) -> ApiResult<Written> {
    check_sent(resource, &sent)?;
    let mut obj = resource.to_storage(sent);
    place(resource, &mut obj, namespace)?;
    let mut name = meta::name(&obj).to_string();
    if name.is_empty() {
        let generate = meta::meta_str(&obj, "generateName")
            .unwrap_or_default()
            .to_string();
        if generate.is_empty() {
            return Err(ApiError::invalid(
                resource,
                "",
                vec![Cause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        let ns = meta::namespace(&obj).to_string();
        name = loop {
            let candidate = format!("{generate}{}", random_suffix());
            if state.get(&resource.storage, &ns, &candidate).is_none() {
                break candidate;
            }
        };
        meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
    }
    if resource.namespaced {
        check_namespace(state, resource, meta::namespace(&obj), &name)?;
    }
    if state
        .get(&resource.storage, meta::namespace(&obj), &name)
        .is_some()
    {
        return Err(ApiError::already_exists(resource, &name));
    }
    let m = meta::metadata_mut(&mut obj);
    for system in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        m.remove(system);
    }
    m.insert("uid".into(), json!(meta::new_uid()));
    m.insert("creationTimestamp".into(), json!(meta::now()));
    m.insert("generation".into(), json!(1));
    let warnings = admission::admit_create(state, resource, &mut obj, opts.validation)?;
    if attribute {
        let api_version = resource.api_version();
        let writer = Writer {
            manager: &opts.manager,
            api_version: &api_version,
            scope: scope(resource, Part::Main),
        };
        managed::record_update(None, &mut obj, &writer, list_ctx(resource));
    }
    let object = if opts.dry_run {
        Arc::new(obj)
    } else {
        let stored = state.put(&resource.storage, obj);
        after_put(state, resource, &stored);
        stored
    };
    Ok(Written {
        object,
        code: StatusCode::CREATED,
        warnings,
    })
}

/// Replaces an object or its status (PUT).
pub(crate) fn update(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    part: Part,
    sent: Value,
    opts: &WriteOptions,
) -> ApiResult<Written> {
    check_sent(resource, &sent)?;
    let ns = namespace.unwrap_or_default();
    let old = state
        .get(&resource.storage, ns, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let sent_name = meta::name(&sent);
    if !sent_name.is_empty() && sent_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({sent_name}) does not match the name on the URL ({name})"
        )));
    }
    if resource.custom.is_some() && meta::resource_version(&sent).is_none() {
        return Err(ApiError::invalid(
            resource,
            name,
            vec![Cause::invalid(
                "metadata.resourceVersion",
                "0x0",
                "must be specified for an update",
            )],
        ));
    }
    let mut obj = resource.to_storage(sent);
    place(resource, &mut obj, namespace)?;
    meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
    commit_update(state, resource, &old, obj, part, opts, true)
}

/// Patches an object or its status (PATCH); server-side apply creates a missing object.
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    part: Part,
    patch_type: PatchType,
    body: &[u8],
    opts: &WriteOptions,
) -> ApiResult<Written> {
    let ns = namespace.unwrap_or_default();
    let ctx = list_ctx(resource);
    let old = state.get(&resource.storage, ns, name);
    if patch_type == PatchType::Apply {
        return apply_patch(state, resource, namespace, name, part, old, body, ctx, opts);
    }
    let old = old.ok_or_else(|| ApiError::not_found(resource, name))?;
    if patch_type == PatchType::Strategic && resource.custom.is_some() {
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json (strategic merge patch is not supported for custom resources)",
        ));
    }
    let mut doc = resource.present(&old);
    patch::apply(&mut doc, patch_type, body, ctx)?;
    check_type_meta(resource, &doc)?;
    let mut obj = resource.to_storage(doc);
    place(resource, &mut obj, namespace)?;
    if meta::name(&obj) != name {
        return Err(ApiError::bad_request(
            "the patch must not change metadata.name",
        ));
    }
    commit_update(state, resource, &old, obj, part, opts, true)
}

#[allow(clippy::too_many_arguments)]
fn apply_patch(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    part: Part,
    old: Option<Arc<Value>>,
    body: &[u8],
    ctx: ListCtx,
    opts: &WriteOptions,
) -> ApiResult<Written> {
    let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            resource,
            name,
            vec![Cause::required(
                "fieldManager",
                "is required for apply patch",
            )],
        ));
    };
    let applied = apply::parse_body(body)?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "an applied configuration must be an object",
        ));
    }
    for field in ["apiVersion", "kind"] {
        if applied
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "{field} must be set in an applied configuration"
            )));
        }
    }
    check_type_meta(resource, &applied)?;
    let mut applied = applied;
    let applied_name = meta::name(&applied).to_string();
    if applied_name.is_empty() {
        meta::metadata_mut(&mut applied).insert("name".into(), json!(name));
    } else if applied_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({applied_name}) does not match the name on the URL ({name})"
        )));
    }
    let api_version = resource.api_version();
    let writer = Writer {
        manager: &manager,
        api_version: &api_version,
        scope: scope(resource, part),
    };
    let applied = resource.to_storage(applied);
    match old {
        None if part == Part::Status => Err(ApiError::not_found(resource, name)),
        None => {
            let obj = apply::merge_applied(None, &applied, &writer, opts.force, ctx)?;
            create_attributed(
                state,
                resource,
                namespace,
                resource.present(&obj),
                opts,
                false,
            )
        }
        Some(old) => {
            let mut obj = apply::merge_applied(Some(&old), &applied, &writer, opts.force, ctx)?;
            place(resource, &mut obj, namespace)?;
            commit_update(state, resource, &old, obj, part, opts, false)
        }
    }
}

/// The shared tail of PUT and PATCH: concurrency check, status split, system metadata,
/// admission, generation, field ownership (`attribute`: as an Update; an apply recorded
/// itself), and the write itself (or nothing, when nothing changed).
fn commit_update(
    state: &mut State,
    resource: &ResourceInfo,
    old: &Arc<Value>,
    sent: Value,
    part: Part,
    opts: &WriteOptions,
    attribute: bool,
) -> ApiResult<Written> {
    let name = meta::name(old).to_string();
    if let Some(rv) = meta::resource_version(&sent) {
        if Some(rv) != meta::resource_version(old) {
            return Err(ApiError::conflict(resource, &name));
        }
    }
    // A uid sent is a precondition, as Kubernetes' registry store takes it (an adoption
    // patch carries the uid of the orphan it means).
    let sent_uid = meta::uid(&sent);
    if !sent_uid.is_empty() && sent_uid != meta::uid(old) {
        return Err(ApiError::precondition(
            resource,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {sent_uid}, UID in object meta: {}",
                meta::uid(old)
            ),
        ));
    }
    let mut obj = match part {
        Part::Main => {
            let mut obj = sent;
            if resource.subresources.status {
                copy_field(old, &mut obj, "status");
            }
            obj
        }
        Part::Status => {
            let mut obj = (**old).clone();
            copy_field(&sent, &mut obj, "status");
            if let Some(mf) = sent.pointer("/metadata/managedFields") {
                meta::metadata_mut(&mut obj).insert("managedFields".into(), mf.clone());
            }
            obj
        }
    };
    keep_system_metadata(old, &mut obj);
    if meta::is_deleting(old) {
        let before = meta::finalizers(old);
        if meta::finalizers(&obj).iter().any(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                resource,
                &name,
                vec![Cause {
                    reason: "FieldValueForbidden",
                    message:
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    field: "metadata.finalizers".into(),
                }],
            ));
        }
    }
    let warnings = admission::admit_update(state, resource, &mut obj, old, opts.validation)?;
    let generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let bumped = if meta::spec_part(&obj) != meta::spec_part(old) {
        generation + 1
    } else {
        generation
    };
    meta::metadata_mut(&mut obj).insert("generation".into(), json!(bumped));
    if attribute {
        let api_version = resource.api_version();
        let writer = Writer {
            manager: &opts.manager,
            api_version: &api_version,
            scope: scope(resource, part),
        };
        managed::record_update(Some(old), &mut obj, &writer, list_ctx(resource));
    }
    if opts.dry_run {
        return Ok(Written {
            object: Arc::new(obj),
            code: StatusCode::OK,
            warnings,
        });
    }
    let object = store_update(state, resource, old, obj);
    Ok(Written {
        object,
        code: StatusCode::OK,
        warnings,
    })
}

/// `to[field] = from[field]`, or removed when `from` has none.
fn copy_field(from: &Value, to: &mut Value, field: &str) {
    let Some(map) = to.as_object_mut() else {
        return;
    };
    match from.get(field) {
        Some(v) => {
            map.insert(field.into(), v.clone());
        }
        None => {
            map.remove(field);
        }
    }
}

/// Metadata the server owns is carried over from the stored object whatever was sent.
fn keep_system_metadata(old: &Value, obj: &mut Value) {
    let old_meta = old.get("metadata").cloned().unwrap_or_default();
    let m = meta::metadata_mut(obj);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "resourceVersion",
    ] {
        match old_meta.get(field) {
            Some(v) => {
                m.insert(field.into(), v.clone());
            }
            None => {
                m.remove(field);
            }
        }
    }
    if !m.contains_key("managedFields") {
        if let Some(mf) = old_meta.get("managedFields") {
            m.insert("managedFields".into(), mf.clone());
        }
    }
    m.remove("selfLink");
}

/// Whether a deleting object may now go: no finalizers (a namespace's `spec.finalizers`
/// included) and no grace period left for a kubelet.
pub(crate) fn may_remove(obj: &Value) -> bool {
    let spec_finalizers = obj
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
        && obj["kind"] == "Namespace";
    meta::is_deleting(obj)
        && meta::finalizers(obj).is_empty()
        && !spec_finalizers
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

/// Stores `new` in place of `old`; nothing when they are equal (apart from the
/// resourceVersion); removes the object when it is deleting and nothing holds it any more.
pub(crate) fn store_update(
    state: &mut State,
    resource: &ResourceInfo,
    old: &Value,
    mut new: Value,
) -> Arc<Value> {
    if let Some(rv) = meta::resource_version(old) {
        meta::metadata_mut(&mut new).insert("resourceVersion".into(), json!(rv));
    }
    if new == *old {
        return Arc::new(new);
    }
    if may_remove(&new) {
        // Stored first so the DELETED event carries the final state, as Kubernetes does.
        state.put(&resource.storage, new.clone());
        return remove(state, resource, meta::namespace(&new), meta::name(&new))
            .unwrap_or_else(|| Arc::new(new));
    }
    let stored = state.put(&resource.storage, new);
    after_put(state, resource, &stored);
    stored
}

/// Removes an object from the store, with the side effects of its kind.
pub(crate) fn remove(
    state: &mut State,
    resource: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Option<Arc<Value>> {
    let removed = state.remove(&resource.storage, namespace, name)?;
    if resource.is("apiextensions.k8s.io", "customresourcedefinitions") {
        let served = state
            .registry
            .all()
            .find(|r| r.custom.as_ref().is_some_and(|c| c.crd_name == name))
            .map(|r| r.storage.clone());
        state.registry.unregister_crd(name);
        if let Some(key) = served {
            state.drop_bucket(&key);
        }
        tracing::info!(crd = name, "custom resource definition removed");
    }
    Some(removed)
}

fn after_put(state: &mut State, resource: &ResourceInfo, stored: &Value) {
    if resource.is("apiextensions.k8s.io", "customresourcedefinitions") {
        state.registry.register_crd(stored);
        tracing::info!(
            crd = meta::name(stored),
            "custom resource definition served"
        );
    }
}

/// The namespaces every cluster starts with.
pub(crate) fn bootstrap(state: &mut State) {
    let Some(namespaces) = state.registry.lookup("", "v1", "namespaces") else {
        return;
    };
    let opts = WriteOptions {
        dry_run: false,
        validation: FieldValidation::Strict,
        field_manager: None,
        manager: "kube-apiserver".into(),
        force: false,
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Err(error) = create(state, &namespaces, None, ns, &opts) {
            tracing::warn!(namespace = name, message = %error.message, "failed to create a namespace at start");
        }
    }
}
