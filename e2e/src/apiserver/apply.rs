//! Server-side apply: merges an applied configuration into the live object — maps
//! recursively, keyed lists by their keys, sets as sets, everything else replaced — and
//! removes the fields the applier applied before but omits now, unless another manager owns
//! them. Ownership itself is kept by [`super::managed`].
//!
//! It must not touch the store: it turns (live, applied) into the object to write.

use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::fieldsets::{self, Scope};
use super::managed::{self, Writer};
use super::patch::{same_key, ListCtx, ListType};

/// Parses an apply body, YAML or JSON.
pub(crate) fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// The object after `writer` applied `applied` onto `live` (None: the object is new), with
/// its managedFields; a conflict with another manager fails unless `force`.
pub(crate) fn merge_applied(
    live: Option<&Value>,
    applied: &Value,
    writer: &Writer,
    force: bool,
    ctx: ListCtx,
) -> ApiResult<Value> {
    let applied = strip_nulls(applied);
    let applied_set = fieldsets::scoped(fieldsets::of_object(&applied, ctx), writer.scope);
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let entries = live.map(managed::entries_of).unwrap_or_default();
    let is_mine = |e: &Value| {
        e["manager"].as_str() == Some(writer.manager)
            && e["operation"].as_str() == Some("Apply")
            && e.get("subresource").and_then(Value::as_str)
                == (writer.scope == Scope::StatusOnly).then_some("status")
    };
    if let Some(previous) = entries.iter().find(|e| is_mine(e)) {
        let mut removed = fieldsets::subtract(&previous["fieldsV1"], &applied_set);
        for other in entries.iter().filter(|e| !is_mine(e)) {
            removed = fieldsets::subtract(&removed, &other["fieldsV1"]);
        }
        fieldsets::remove_fields(&mut result, &removed, ctx);
    }
    merge_into(&mut result, &applied, ctx);
    managed::record_apply(live, &mut result, &applied_set, writer, force, ctx)?;
    Ok(result)
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

    const M: Writer<'static> = Writer {
        manager: "m",
        api_version: "v1",
        scope: Scope::Whole,
    };

    fn apply(live: Option<&Value>, applied: &Value) -> Value {
        merge_applied(live, applied, &M, false, ListCtx::Builtin).unwrap()
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": data})
    }

    #[test]
    fn given_same_configuration_when_applied_twice_should_not_change_the_object() {
        let applied = cm(json!({"x": "1"}));
        let first = apply(None, &applied);
        let second = apply(Some(&first), &applied);
        assert_eq!(first, second);
    }

    #[test]
    fn given_field_dropped_from_configuration_when_reapplied_should_remove_it() {
        let first = apply(None, &cm(json!({"x": "1", "y": "2"})));
        let mut live = first.clone();
        live["data"]["z"] = json!("set by someone else");
        let second = apply(Some(&live), &cm(json!({"x": "1"})));
        assert_eq!(
            second["data"],
            json!({"x": "1", "z": "set by someone else"})
        );
    }

    #[test]
    fn given_container_dropped_when_reapplied_should_remove_only_that_container() {
        let pod = |containers: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}});
        let first = apply(
            None,
            &pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}])),
        );
        let second = apply(Some(&first), &pod(json!([{"name": "b", "image": "b2"}])));
        assert_eq!(
            second["spec"]["containers"],
            json!([{"name": "b", "image": "b2"}])
        );
    }
}
