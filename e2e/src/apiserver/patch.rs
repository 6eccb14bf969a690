//! PATCH bodies: JSON merge patch, JSON patch (RFC 6902) and strategic merge patch (merge
//! patch whose lists of containers, ports, env, volumes, conditions … merge by their key, with
//! the `$patch`, `$setElementOrder`, `$deleteFromPrimitiveList` and `$retainKeys` directives
//! kubectl produces), and the list semantics shared with server-side apply.
//!
//! It must not touch the store or metadata rules: it turns (object, patch) into an object.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// The patch types a PATCH request can name in its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(content_type: &str) -> ApiResult<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// How a list field merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced whole.
    Atomic,
    /// Scalars, merged as a set (finalizers).
    Set,
    /// Objects merged by these key fields.
    Map(Vec<String>),
}

/// Where list semantics come from: the well-known fields of built-in types, or a CRD schema
/// (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ListCtx<'a> {
    Builtin,
    Schema(Option<&'a Value>),
}

impl<'a> ListCtx<'a> {
    /// The context of `field` inside the current object.
    pub(crate) fn field(self, field: &str) -> Self {
        match self {
            ListCtx::Builtin => ListCtx::Builtin,
            ListCtx::Schema(node) => ListCtx::Schema(node.and_then(|n| {
                n.get("properties")
                    .and_then(|p| p.get(field))
                    .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
            })),
        }
    }

    /// The context of the elements of the current list.
    pub(crate) fn items(self) -> Self {
        match self {
            ListCtx::Builtin => ListCtx::Builtin,
            ListCtx::Schema(node) => ListCtx::Schema(node.and_then(|n| n.get("items"))),
        }
    }

    /// The merge semantics of the list `field` (self is already the field's context).
    pub(crate) fn list_type(self, field: &str, elements: &[Value]) -> ListType {
        match self {
            ListCtx::Builtin => builtin_list_type(field, elements),
            ListCtx::Schema(node) => {
                let Some(node) = node else {
                    return ListType::Atomic;
                };
                match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("set") => ListType::Set,
                    Some("map") => ListType::Map(
                        node.get("x-kubernetes-list-map-keys")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|k| k.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    _ => ListType::Atomic,
                }
            }
        }
    }
}

/// The patch merge keys of built-in types Kubernetes' strategic merge and apply use.
fn builtin_list_type(field: &str, elements: &[Value]) -> ListType {
    let key = |k: &str| ListType::Map(vec![k.to_string()]);
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => key("name"),
        "volumeMounts" => key("mountPath"),
        "volumeDevices" => key("devicePath"),
        "conditions" => key("type"),
        "ownerReferences" => key("uid"),
        "hostAliases" => key("ip"),
        "topologySpreadConstraints" => key("topologyKey"),
        "ports" => {
            if elements.iter().any(|e| e.get("containerPort").is_some()) {
                key("containerPort")
            } else {
                key("port")
            }
        }
        "finalizers" => ListType::Set,
        _ => ListType::Atomic,
    }
}

/// Whether two list elements have the same values for `keys`.
pub(crate) fn same_key(a: &Value, b: &Value, keys: &[String]) -> bool {
    !keys.is_empty() && keys.iter().all(|k| a.get(k) == b.get(k))
}

/// Applies a merge, JSON or strategic merge patch to `doc`.
pub(crate) fn apply(
    doc: &mut Value,
    patch_type: PatchType,
    body: &[u8],
    ctx: ListCtx,
) -> ApiResult<()> {
    match patch_type {
        PatchType::Merge => {
            let patch: Value = parse_json(body)?;
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(doc, &patch).map_err(|e| {
                let mut err = ApiError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ));
                err.code = http::StatusCode::UNPROCESSABLE_ENTITY;
                err.reason = "Invalid";
                err
            })
        }
        PatchType::Strategic => {
            let patch: Value = parse_json(body)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            if strategic_merge(doc, &patch, ctx) == Outcome::Delete {
                *doc = Value::Object(Map::new());
            }
            Ok(())
        }
        PatchType::Apply => Err(ApiError::internal("apply patches are handled by apply.rs")),
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Keep,
    Delete,
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

/// Strips `$`-directives from a value a patch inserts whole.
fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| directive(i).is_none())
                .map(without_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn strategic_merge(doc: &mut Value, patch: &Value, ctx: ListCtx) -> Outcome {
    let Some(pmap) = patch.as_object() else {
        *doc = patch.clone();
        return Outcome::Keep;
    };
    match directive(patch) {
        Some("replace") => {
            *doc = without_directives(patch);
            return Outcome::Keep;
        }
        Some("delete") => return Outcome::Delete,
        _ => {}
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in pmap {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((
                field.to_string(),
                value.as_array().cloned().unwrap_or_default(),
            ));
            continue;
        }
        let Some(map) = doc.as_object_mut() else {
            return Outcome::Keep;
        };
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = map.get_mut(field) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let field_ctx = ctx.field(key);
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(_) => {
                let child = map.entry(key.clone()).or_insert(Value::Null);
                if strategic_merge(child, value, field_ctx) == Outcome::Delete {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let live = map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(live, key, items, field_ctx);
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
    if let Some(retain) = pmap.get("$retainKeys").and_then(Value::as_array) {
        if let Some(map) = doc.as_object_mut() {
            map.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
        }
    }
    for (field, order) in orders {
        reorder(doc, &field, &order, ctx.field(&field));
    }
    Outcome::Keep
}

fn merge_list(live: &mut Value, field: &str, patch_items: &[Value], ctx: ListCtx) {
    if patch_items.iter().any(|i| directive(i) == Some("replace")) {
        *live = without_directives(&Value::Array(patch_items.to_vec()));
        return;
    }
    let live_items: Vec<Value> = live.as_array().cloned().unwrap_or_default();
    let mut sample = live_items.clone();
    sample.extend(patch_items.iter().cloned());
    match ctx.list_type(field, &sample) {
        ListType::Atomic => *live = without_directives(&Value::Array(patch_items.to_vec())),
        ListType::Set => {
            let mut merged = live_items;
            for item in patch_items {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            *live = Value::Array(merged);
        }
        ListType::Map(keys) => {
            let mut merged = live_items;
            for item in patch_items {
                let pos = merged.iter().position(|m| same_key(m, item, &keys));
                match (pos, directive(item)) {
                    (Some(i), Some("delete")) => {
                        merged.remove(i);
                    }
                    (None, Some("delete")) => {}
                    (Some(i), _) => {
                        if strategic_merge(&mut merged[i], item, ctx.items()) == Outcome::Delete {
                            merged.remove(i);
                        }
                    }
                    (None, _) => merged.push(without_directives(item)),
                }
            }
            *live = Value::Array(merged);
        }
    }
}

/// Orders a merged list as `$setElementOrder` says; elements it does not name keep their
/// relative order after the named ones.
fn reorder(doc: &mut Value, field: &str, order: &[Value], ctx: ListCtx) {
    let Some(Value::Array(items)) = doc.get_mut(field) else {
        return;
    };
    let keys = match ctx.list_type(field, items) {
        ListType::Map(keys) => keys,
        _ => {
            let mut sorted: Vec<Value> = order
                .iter()
                .filter(|o| items.contains(o))
                .cloned()
                .collect();
            sorted.extend(items.iter().filter(|i| !order.contains(i)).cloned());
            *items = sorted;
            return;
        }
    };
    let mut named = Vec::new();
    let mut rest = Vec::new();
    for item in items.drain(..) {
        if order.iter().any(|o| same_key(o, &item, &keys)) {
            named.push(item);
        } else {
            rest.push(item);
        }
    }
    named.sort_by_key(|i| order.iter().position(|o| same_key(o, i, &keys)));
    named.extend(rest);
    *items = named;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value) -> Value {
        let mut doc = doc;
        apply(
            &mut doc,
            PatchType::Strategic,
            patch.to_string().as_bytes(),
            ListCtx::Builtin,
        )
        .unwrap();
        doc
    }

    #[test]
    fn given_containers_when_strategic_patched_should_merge_by_name() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        let out = smp(
            doc,
            json!({"spec": {"containers": [
            {"name": "a", "env": [{"name": "Y", "value": "2"}]}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "a:1");
        assert_eq!(
            out["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
    }

    #[test]
    fn given_delete_directive_when_strategic_patched_should_remove_element() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let out = smp(
            doc,
            json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}],
            "containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn given_plain_list_when_strategic_patched_should_replace_it() {
        let doc = json!({"spec": {"args": ["a", "b"]}, "metadata": {"finalizers": ["x"]}});
        let out = smp(
            doc,
            json!({"spec": {"args": ["c"]}, "metadata": {"finalizers": ["y"]}}),
        );
        assert_eq!(out["spec"]["args"], json!(["c"]));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
    }
}
