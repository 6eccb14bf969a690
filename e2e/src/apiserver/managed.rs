//! Field ownership in `metadata.managedFields`, as Kubernetes' field manager keeps it: every
//! write is attributed to a manager (the `fieldManager` parameter, else the client's
//! user-agent name) with operation Update or Apply. An Update takes ownership of the fields
//! whose value it changed; an Apply owns exactly the fields it applied, and changing the
//! value of a field another manager owns is a conflict (409) unless `force` is given, in
//! which case the other manager loses it. Removed fields leave every manager.
//!
//! It must not merge objects: [`super::apply`] does; this module only keeps the ledger.

use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::fieldsets::{self, Scope};
use super::meta;
use super::patch::ListCtx;

/// Who writes, and through which part of the object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub scope: Scope,
}

impl Writer<'_> {
    fn subresource(&self) -> Option<&'static str> {
        (self.scope == Scope::StatusOnly).then_some("status")
    }

    fn owns(&self, entry: &Value, operation: &str) -> bool {
        entry["manager"].as_str() == Some(self.manager)
            && entry["operation"].as_str() == Some(operation)
            && entry.get("subresource").and_then(Value::as_str) == self.subresource()
    }

    fn entry(&self, operation: &str, fields: Value) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": operation,
            "apiVersion": self.api_version,
            "time": meta::now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        });
        if let Some(sub) = self.subresource() {
            entry["subresource"] = json!(sub);
        }
        entry
    }
}

pub(crate) fn entries_of(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, entries: Vec<Value>) {
    let m = meta::metadata_mut(obj);
    if entries.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Other managers lose `taken`; entries left owning nothing go.
fn take_from_others(
    entries: Vec<Value>,
    taken: &Value,
    is_mine: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    entries
        .into_iter()
        .filter_map(|mut e| {
            if is_mine(&e) || fieldsets::is_empty(taken) {
                return Some(e);
            }
            let rest = fieldsets::subtract(&e["fieldsV1"], taken);
            if fieldsets::is_empty(&rest) {
                return None;
            }
            e["fieldsV1"] = rest;
            Some(e)
        })
        .collect()
}

/// Records an Update (create, PUT or a non-apply patch) that turned `old` into `new`. As in
/// Kubernetes, managedFields the request itself sets are the starting point (`[{}]` clears
/// them); otherwise the stored ones are.
pub(crate) fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer, ctx: ListCtx) {
    let entries = if new.pointer("/metadata/managedFields").is_some() {
        entries_of(new)
            .into_iter()
            .filter(|e| e.get("manager").is_some())
            .collect()
    } else {
        old.map(entries_of).unwrap_or_default()
    };
    let changed = fieldsets::scoped(fieldsets::changed_object(old, new, ctx), writer.scope);
    let removed = match old {
        Some(o) => fieldsets::subtract(
            &fieldsets::of_object(o, ctx),
            &fieldsets::of_object(new, ctx),
        ),
        None => json!({}),
    };
    if fieldsets::is_empty(&changed) && fieldsets::is_empty(&removed) {
        store_entries(new, entries);
        return;
    }
    let taken = fieldsets::union(&changed, &removed);
    let mut entries = take_from_others(entries, &taken, |e| writer.owns(e, "Update"));
    let previous = entries.iter().position(|e| writer.owns(e, "Update"));
    let owned = previous
        .map(|i| entries[i]["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    let mine = fieldsets::subtract(&fieldsets::union(&owned, &changed), &removed);
    if let Some(i) = previous {
        entries.remove(i);
    }
    if !fieldsets::is_empty(&mine) {
        entries.push(writer.entry("Update", mine));
    }
    store_entries(new, entries);
}

/// Records an Apply of `applied_set` that turned `live` into `result`. Fields whose value the
/// apply changes and another manager owns are conflicts, an error unless `force`.
pub(crate) fn record_apply(
    live: Option<&Value>,
    result: &mut Value,
    applied_set: &Value,
    writer: &Writer,
    force: bool,
    ctx: ListCtx,
) -> ApiResult<()> {
    let entries = live.map(entries_of).unwrap_or_default();
    let changed = fieldsets::intersect(&fieldsets::changed_object(live, result, ctx), applied_set);
    let same_part =
        |e: &Value| e.get("subresource").and_then(Value::as_str) == writer.subresource();
    let conflicts: Vec<(String, String, String)> = entries
        .iter()
        .filter(|e| !writer.owns(e, "Apply") && same_part(e))
        .flat_map(|e| {
            let manager = e["manager"].as_str().unwrap_or_default().to_string();
            let api_version = e["apiVersion"].as_str().unwrap_or_default().to_string();
            fieldsets::paths(&fieldsets::intersect(&e["fieldsV1"], &changed))
                .into_iter()
                .map(move |p| (manager.clone(), api_version.clone(), p))
        })
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    let mut entries = take_from_others(entries, &changed, |e| writer.owns(e, "Apply"));
    let previous = entries.iter().position(|e| writer.owns(e, "Apply"));
    let unchanged = previous.is_some_and(|i| entries[i]["fieldsV1"] == *applied_set);
    if !unchanged {
        if let Some(i) = previous {
            entries.remove(i);
        }
        entries.push(writer.entry("Apply", applied_set.clone()));
    }
    store_entries(result, entries);
    Ok(())
}

/// Kubernetes' apply conflict: 409 with one cause per field.
fn conflict_error(conflicts: &[(String, String, String)]) -> ApiError {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: {p}"))
        .collect();
    let count = conflicts.len();
    let noun = if count == 1 { "conflict" } else { "conflicts" };
    let message = if count == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {count} {noun}: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, v, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"), "field": p}))
        .collect();
    let mut err = ApiError::conflict_status(message);
    err.details = Some(json!({"causes": causes}));
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            scope: Scope::Whole,
        }
    }

    #[test]
    fn given_update_of_a_field_another_manager_applied_when_recorded_should_take_its_ownership() {
        let mut live = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let applied_set = json!({"f:data": {"f:a": {}, "f:b": {}}});
        record_apply(
            None,
            &mut live,
            &applied_set,
            &writer("applier"),
            false,
            ListCtx::Builtin,
        )
        .unwrap();
        let old = live.clone();
        let mut new = old.clone();
        new["data"]["a"] = json!("changed");
        record_update(Some(&old), &mut new, &writer("editor"), ListCtx::Builtin);
        let entries = entries_of(&new);
        assert_eq!(entries[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(entries[1]["manager"], "editor");
        assert_eq!(entries[1]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
    }

    #[test]
    fn given_field_owned_by_another_manager_when_applied_with_another_value_should_conflict_unless_forced(
    ) {
        let old = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let mut created = old.clone();
        record_update(
            None,
            &mut created,
            &writer("kubectl-create"),
            ListCtx::Builtin,
        );
        let mut result = created.clone();
        result["data"]["a"] = json!("2");
        let set = json!({"f:data": {"f:a": {}}});
        let err = record_apply(
            Some(&created),
            &mut result.clone(),
            &set,
            &writer("kubectl"),
            false,
            ListCtx::Builtin,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.a"
        );
        record_apply(
            Some(&created),
            &mut result,
            &set,
            &writer("kubectl"),
            true,
            ListCtx::Builtin,
        )
        .unwrap();
        let entries = entries_of(&result);
        let managers: Vec<&str> = entries
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(
            managers,
            vec!["kubectl"],
            "forcing takes the only field the creator owned"
        );
    }
}
