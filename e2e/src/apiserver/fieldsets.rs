//! FieldsV1 sets, the shape of `metadata.managedFields[].fieldsV1`: `f:` fields, `k:` keyed
//! list elements (with `.` for the element itself) and `v:` set members. Computing the set of
//! an object or of what changed between two versions, set algebra, and removing a set's
//! fields from an object.
//!
//! It must not decide ownership: [`super::managed`] does, with these sets.

use serde_json::{json, Map, Value};

use super::patch::{same_key, ListCtx, ListType};

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole object.
    Whole,
    /// The main resource of a resource with a status subresource: everything but status.
    NoStatus,
    /// The status subresource.
    StatusOnly,
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

/// The set of every field of an object that a writer can own.
pub(crate) fn of_object(obj: &Value, ctx: ListCtx) -> Value {
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

/// The part of a set a write in `scope` may own.
pub(crate) fn scoped(set: Value, scope: Scope) -> Value {
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
pub(crate) fn subtract(a: &Value, b: &Value) -> Value {
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

/// The entries of either set.
pub(crate) fn union(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    for (key, b_child) in b.as_object().into_iter().flatten() {
        let merged = match out.get(key) {
            Some(a_child) => union(a_child, b_child),
            None => b_child.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

/// The leaf entries both sets have.
pub(crate) fn intersect(a: &Value, b: &Value) -> Value {
    let mut out = Map::new();
    for (key, a_child) in a.as_object().into_iter().flatten() {
        let Some(b_child) = b.get(key) else {
            continue;
        };
        let (a_leaf, b_leaf) = (is_empty(a_child), is_empty(b_child));
        let common = match (a_leaf, b_leaf) {
            (true, true) => Some(json!({})),
            (true, false) => Some(b_child.clone()),
            (false, true) => Some(a_child.clone()),
            (false, false) => Some(intersect(a_child, b_child)).filter(|c| !is_empty(c)),
        };
        if let Some(c) = common {
            out.insert(key.clone(), c);
        }
    }
    Value::Object(out)
}

pub(crate) fn is_empty(set: &Value) -> bool {
    set.as_object().is_none_or(Map::is_empty)
}

/// The fields of `new` whose value differs from `old` (all of `new` when there is no
/// `old`), down to the leaves.
pub(crate) fn changed_object(old: Option<&Value>, new: &Value, ctx: ListCtx) -> Value {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
            if let Some(m) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                m.retain(|k, _| !SYSTEM_METADATA.contains(&k.as_str()));
            }
            if map.get("metadata").is_some_and(empty_object) {
                map.remove("metadata");
            }
        }
        v
    };
    let new = strip(new);
    let old = old.map(strip);
    changed(old.as_ref(), &new, "", ctx).unwrap_or_else(|| json!({}))
}

fn empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty)
}

fn changed(old: Option<&Value>, new: &Value, field: &str, ctx: ListCtx) -> Option<Value> {
    if old == Some(new) {
        return None;
    }
    match (old, new) {
        (Some(Value::Object(o)), Value::Object(n)) => {
            let mut set = Map::new();
            for (k, nv) in n {
                let child_ctx = if field.is_empty() && k == "metadata" {
                    ListCtx::Builtin
                } else {
                    ctx.field(k)
                };
                if let Some(c) = changed(o.get(k), nv, k, child_ctx) {
                    set.insert(format!("f:{k}"), c);
                }
            }
            (!set.is_empty()).then_some(Value::Object(set))
        }
        (Some(Value::Array(o)), Value::Array(n)) => match ctx.list_type(field, n) {
            ListType::Map(keys) => {
                let mut set = Map::new();
                for item in n {
                    let existing = o.iter().find(|e| same_key(e, item, &keys));
                    let entry = match existing {
                        Some(e) => changed(Some(e), item, "", ctx.items()),
                        None => {
                            let mut whole = field_set(item, "", ctx.items());
                            whole["."] = json!({});
                            Some(whole)
                        }
                    };
                    if let Some(entry) = entry {
                        set.insert(format!("k:{}", key_of(item, &keys)), entry);
                    }
                }
                (!set.is_empty()).then_some(Value::Object(set))
            }
            ListType::Set => {
                let set: Map<String, Value> = n
                    .iter()
                    .filter(|i| !o.contains(i))
                    .map(|i| (format!("v:{i}"), json!({})))
                    .collect();
                (!set.is_empty()).then_some(Value::Object(set))
            }
            ListType::Atomic => Some(json!({})),
        },
        (_, value) => Some(field_set(value, field, ctx)),
    }
}

fn key_of(item: &Value, keys: &[String]) -> Value {
    Value::Object(
        keys.iter()
            .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
            .collect(),
    )
}

/// The leaf paths of a set, as Kubernetes prints them in conflicts (`.data.key`,
/// `.spec.containers[name="app"].image`).
pub(crate) fn paths(set: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if !is_empty(set) {
        collect_paths(set, String::new(), &mut out);
    }
    out
}

fn collect_paths(set: &Value, prefix: String, out: &mut Vec<String>) {
    let Some(map) = set.as_object().filter(|m| !m.is_empty()) else {
        out.push(prefix);
        return;
    };
    for (key, child) in map {
        let path = if let Some(f) = key.strip_prefix("f:") {
            format!("{prefix}.{f}")
        } else if let Some(k) = key.strip_prefix("k:") {
            let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .unwrap_or_default()
                .iter()
                .map(|(name, v)| format!("{name}={v}"))
                .collect();
            format!("{prefix}[{}]", fields.join(","))
        } else if let Some(v) = key.strip_prefix("v:") {
            format!("{prefix}[{v}]")
        } else {
            continue;
        };
        collect_paths(child, path, out);
    }
}
/// Removes the fields of `set` from `obj`, and containers left empty by that.
pub(crate) fn remove_fields(obj: &mut Value, set: &Value, ctx: ListCtx) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_two_versions_when_diffed_should_name_only_changed_leaves() {
        let old = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "1", "same": "s"}});
        let new = json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "data": {"k": "1", "same": "s", "new": "n"}});
        let set = changed_object(Some(&old), &new, ListCtx::Builtin);
        assert_eq!(
            set,
            json!({"f:metadata": {"f:labels": {"f:x": {}}}, "f:data": {"f:new": {}}})
        );
        assert_eq!(paths(&set), vec![".data.new", ".metadata.labels.x"]);
    }

    #[test]
    fn given_sets_when_combined_should_follow_set_algebra() {
        let a = json!({"f:data": {"f:a": {}, "f:b": {}}});
        let b = json!({"f:data": {"f:b": {}, "f:c": {}}});
        assert_eq!(
            union(&a, &b),
            json!({"f:data": {"f:a": {}, "f:b": {}, "f:c": {}}})
        );
        assert_eq!(intersect(&a, &b), json!({"f:data": {"f:b": {}}}));
        assert_eq!(subtract(&a, &b), json!({"f:data": {"f:a": {}}}));
    }
}
