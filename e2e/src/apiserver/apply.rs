//! Server-side apply: merges an applied configuration into the live object and records the
//! applier's fields in `metadata.managedFields` (FieldsV1, operation Apply), so a later apply
//! that omits a field it applied before removes that field — unless another applier owns it.
//!
//! Simplifications, on purpose: apply never reports field conflicts (as if `force` were always
//! given), and only Apply operations are tracked; writes by PUT or other patches own nothing.
//! It must not touch the store: it turns (live, applied) into the object to write.

use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::meta;
use super::patch::{same_key, ListCtx, ListType};

/// Which part of the object an apply may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole object.
    Whole,
    /// The main resource of a resource with a status subresource: everything but status.
    NoStatus,
    /// The status subresource.
    StatusOnly,
}

/// Parses an apply body, YAML or JSON.
pub(crate) fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// The object after `manager` applied `applied` onto `live` (None: the object is new).
pub(crate) fn merge_applied(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    scope: Scope,
    ctx: ListCtx,
) -> Value {
    let applied = strip_nulls(applied);
    let new_set = scoped(field_set_of_object(&applied, ctx), scope);
    let subresource = (scope == Scope::StatusOnly).then_some("status");
    let (mut result, mut managed) = match live {
        Some(l) => (l.clone(), managed_fields(l)),
        None => (json!({}), Vec::new()),
    };
    let is_mine = |e: &Value| {
        e["manager"].as_str() == Some(manager)
            && e["operation"].as_str() == Some("Apply")
            && e.get("subresource").and_then(Value::as_str) == subresource
    };
    let previous = managed.iter().find(|e| is_mine(e)).map(|e| e["fieldsV1"].clone());
    if let Some(prev) = &previous {
        let mut removed = subtract(prev, &new_set);
        for other in managed.iter().filter(|e| !is_mine(e) && e["operation"] == "Apply") {
            removed = subtract(&removed, &other["fieldsV1"]);
        }
        remove_fields(&mut result, &removed, ctx);
    }
    merge_into(&mut result, &applied, ctx);
    if previous.as_ref() != Some(&new_set) {
        managed.retain(|e| !is_mine(e));
        let mut entry = json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": applied["apiVersion"],
            "time": meta::now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": new_set,
        });
        if let Some(sub) = subresource {
            entry["subresource"] = json!(sub);
        }
        managed.push(entry);
    }
    meta::metadata_mut(&mut result).insert("managedFields".into(), Value::Array(managed));
    result
}

fn managed_fields(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Drops nulls: in an applied configuration they mean "not specified".
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Metadata fields the server owns; appliers never own them.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn field_set_of_object(obj: &Value, ctx: ListCtx) -> Value {
    let mut set = Map::new();
    let Some(map) = obj.as_object() else {
        return Value::Object(set);
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let mut m = value.clone();
                if let Some(mm) = m.as_object_mut() {
                    mm.retain(|k, _| !SYSTEM_METADATA.contains(&k.as_str()));
                }
                let child = field_set(&m, "metadata", ListCtx::Builtin);
                if child.as_object().is_some_and(|c| !c.is_empty()) {
                    set.insert("f:metadata".into(), child);
                }
            }
            _ => {
                set.insert(format!("f:{key}"), field_set(value, key, ctx.field(key)));
            }
        }
    }
    Value::Object(set)
}

fn scoped(set: Value, scope: Scope) -> Value {
    let Value::Object(mut map) = set else {
        return set;
    };
    match scope {
        Scope::Whole => {}
        Scope::NoStatus => {
            map.remove("f:status");
        }
        Scope::StatusOnly => map.retain(|k, _| k == "f:status"),
    }
    Value::Object(map)
}

/// The FieldsV1 set of a value: `f:` fields, `k:` keyed list elements, `v:` set members.
fn field_set(value: &Value, field: &str, ctx: ListCtx) -> Value {
    match value {
        Value::Object(map) => {
            let mut set = Map::new();
            for (k, v) in map {
                set.insert(format!("f:{k}"), field_set(v, k, ctx.field(k)));
            }
            Value::Object(set)
        }
        Value::Array(items) => match ctx.list_type(field, items) {
            ListType::Atomic => json!({}),
            ListType::Set => Value::Object(
                items
                    .iter()
                    .map(|i| (format!("v:{i}"), json!({})))
                    .collect(),
            ),
            ListType::Map(keys) => {
                let mut set = Map::new();
                for item in items {
                    let key: Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                        .collect();
                    let mut child = match field_set(item, "", ctx.items()) {
                        Value::Object(m) => m,
                        _ => Map::new(),
                    };
                    child.insert(".".into(), json!({}));
                    set.insert(format!("k:{}", Value::Object(key)), Value::Object(child));
                }
                Value::Object(set)
            }
        },
        _ => json!({}),
    }
}

/// The entries of `a` that `b` does not have.
fn subtract(a: &Value, b: &Value) -> Value {
    let mut out = Map::new();
    for (key, a_child) in a.as_object().into_iter().flatten() {
        match b.get(key) {
            None => {
                out.insert(key.clone(), a_child.clone());
            }
            Some(b_child) => {
                if a_child.as_object().is_some_and(|m| !m.is_empty()) {
                    let rest = subtract(a_child, b_child);
                    if rest.as_object().is_some_and(|m| !m.is_empty()) {
                        out.insert(key.clone(), rest);
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// Removes the fields of `set` from `obj`, and containers left empty by that.
fn remove_fields(obj: &mut Value, set: &Value, ctx: ListCtx) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    for (key, child) in set.as_object().into_iter().flatten() {
        let Some(field) = key.strip_prefix("f:") else {
            continue;
        };
        let leaf = child.as_object().is_none_or(Map::is_empty);
        if leaf {
            map.remove(field);
            continue;
        }
        let field_ctx = ctx.field(field);
        let emptied = match map.get_mut(field) {
            Some(v @ Value::Object(_)) => {
                remove_fields(v, child, field_ctx);
                v.as_object().is_some_and(Map::is_empty)
            }
            Some(Value::Array(items)) => {
                remove_list_entries(items, child, field_ctx);
                items.is_empty()
            }
            Some(_) => true,
            None => false,
        };
        if emptied {
            map.remove(field);
        }
    }
}

fn remove_list_entries(items: &mut Vec<Value>, set: &Value, ctx: ListCtx) {
    for (key, child) in set.as_object().into_iter().flatten() {
        if let Some(member) = key.strip_prefix("v:") {
            if let Ok(value) = serde_json::from_str::<Value>(member) {
                items.retain(|i| *i != value);
            }
        } else if let Some(key_json) = key.strip_prefix("k:") {
            let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(key_json) else {
                continue;
            };
            let keys: Vec<String> = fields.keys().cloned().collect();
            let key_value = Value::Object(fields);
            let Some(pos) = items.iter().position(|i| same_key(i, &key_value, &keys)) else {
                continue;
            };
            if child.get(".").is_some() {
                items.remove(pos);
            } else {
                remove_fields(&mut items[pos], child, ctx.items());
            }
        }
    }
}

/// Merges `applied` into `live`: maps recursively, keyed lists by key, sets as sets, other
/// lists and scalars replaced.
fn merge_into(live: &mut Value, applied: &Value, ctx: ListCtx) {
    let (Some(lmap), Some(amap)) = (live.as_object_mut(), applied.as_object()) else {
        *live = applied.clone();
        return;
    };
    for (key, value) in amap {
        let field_ctx = ctx.field(key);
        match (lmap.get_mut(key), value) {
            (Some(l @ Value::Object(_)), Value::Object(_)) => merge_into(l, value, field_ctx),
            (Some(Value::Array(litems)), Value::Array(aitems)) => {
                let mut sample = litems.clone();
                sample.extend(aitems.iter().cloned());
                match field_ctx.list_type(key, &sample) {
                    ListType::Atomic => *litems = aitems.clone(),
                    ListType::Set => {
                        for item in aitems {
                            if !litems.contains(item) {
                                litems.push(item.clone());
                            }
                        }
                    }
                    ListType::Map(keys) => {
                        for item in aitems {
                            match litems.iter_mut().find(|l| same_key(l, item, &keys)) {
                                Some(existing) => merge_into(existing, item, field_ctx.items()),
                                None => litems.push(item.clone()),
                            }
                        }
                    }
                }
            }
            _ => {
                lmap.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": data})
    }

    #[test]
    fn given_same_configuration_when_applied_twice_should_not_change_the_object() {
        let applied = cm(json!({"x": "1"}));
        let first = merge_applied(None, &applied, "m", Scope::Whole, ListCtx::Builtin);
        let second = merge_applied(Some(&first), &applied, "m", Scope::Whole, ListCtx::Builtin);
        assert_eq!(first, second);
    }

    #[test]
    fn given_field_dropped_from_configuration_when_reapplied_should_remove_it() {
        let first = merge_applied(None, &cm(json!({"x": "1", "y": "2"})), "m", Scope::Whole, ListCtx::Builtin);
        let mut live = first.clone();
        live["data"]["z"] = json!("set by someone else");
        let second = merge_applied(Some(&live), &cm(json!({"x": "1"})), "m", Scope::Whole, ListCtx::Builtin);
        assert_eq!(second["data"], json!({"x": "1", "z": "set by someone else"}));
    }

    #[test]
    fn given_container_dropped_when_reapplied_should_remove_only_that_container() {
        let pod = |containers: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}});
        let first = merge_applied(None, &pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}])), "m", Scope::Whole, ListCtx::Builtin);
        let second = merge_applied(Some(&first), &pod(json!([{"name": "b", "image": "b2"}])), "m", Scope::Whole, ListCtx::Builtin);
        assert_eq!(second["spec"]["containers"], json!([{"name": "b", "image": "b2"}]));
    }
}
