//! Custom resources against their CRD's `openAPIV3Schema`, in the API server's order:
//! prune unknown fields (an error under `fieldValidation=Strict`, a warning under Warn),
//! drop nulls of non-nullable fields, apply `default`s, validate the structural schema
//! (types, enums, bounds, patterns, required, list sizes and map-list keys), then evaluate
//! the `x-kubernetes-validations` CEL rules with kube's validator (transition rules see the
//! old object). Errors come back as Kubernetes field causes for a 422 Invalid.
//!
//! Validation ratchets like Kubernetes 1.30+: an error on a value an update left unchanged is
//! not reported. It must not write anything: it changes only the object it is handed.

use std::collections::HashMap;

use parking_lot::Mutex;
use regex::Regex;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult, Cause};
use super::registry::ResourceInfo;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub(crate) fn parse(value: Option<&str>) -> ApiResult<Self> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {other:?}"
            ))),
        }
    }
}

/// Prunes, defaults and validates `obj`, a custom resource of `resource`. Returns warnings
/// (unknown fields under Warn).
pub(crate) fn admit(
    resource: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    validation: FieldValidation,
) -> ApiResult<Vec<String>> {
    let Some(schema) = resource.custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return Ok(Vec::new());
    };
    let mut unknown = Vec::new();
    prune(obj, schema, "", true, &mut unknown);
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match validation {
            FieldValidation::Strict => {
                return Err(ApiError::bad_request(format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                    listed.join(", "),
                    kind = resource.kind,
                    version = resource.version,
                )));
            }
            FieldValidation::Warn => warnings = listed,
            FieldValidation::Ignore => {}
        }
    }
    default(obj, schema);
    let mut causes = Vec::new();
    let mut blocking = false;
    validate(obj, schema, "", true, &mut causes, &mut blocking);
    if !blocking {
        cel_rules(schema, obj, old, &mut causes);
    }
    if let Some(old) = old {
        causes.retain(|c| changed_at(obj, old, &c.field));
    }
    if causes.is_empty() {
        Ok(warnings)
    } else {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(ApiError::invalid(resource, name, causes))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Removes fields the schema does not declare (recording them) and nulls of non-nullable
/// fields.
fn prune(value: &mut Value, schema: &Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let embedded = schema
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                == Some(true);
            let describes_fields = props.is_some() || additional.is_some();
            let is_object = schema.get("type").and_then(Value::as_str) == Some("object");
            if !describes_fields && (preserves_unknown(schema) || !is_object) {
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let kept_meta = (root || embedded)
                    && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                if kept_meta {
                    continue;
                }
                let child_schema = props
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(cs) => {
                        let is_null = map.get(&key).is_some_and(Value::is_null);
                        if is_null && !nullable(cs) {
                            map.remove(&key);
                        } else if let Some(child) = map.get_mut(&key) {
                            prune(child, cs, &join(path, &key), false, unknown);
                        }
                    }
                    None => {
                        let allowed = additional.and_then(Value::as_bool) == Some(true)
                            || preserves_unknown(schema);
                        if !allowed {
                            map.remove(&key);
                            unknown.push(join(path, &key));
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, items_schema, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Structural defaulting as Kubernetes does it: missing (or non-nullable null) properties
/// get their default, then every property, defaulted ones included, is defaulted inside.
fn default(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, prop) in props {
                    let Some(d) = prop.get("default") else {
                        continue;
                    };
                    let missing = map.get(key).is_none_or(|v| v.is_null() && !nullable(prop));
                    if missing {
                        map.insert(key.clone(), d.clone());
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map.iter_mut() {
                if let Some(prop) = props.and_then(|p| p.get(key)).or(additional) {
                    default(child, prop);
                }
            }
        }
        Value::Array(items) => {
            if let Some(items_schema) = schema.get("items") {
                items.iter_mut().for_each(|i| default(i, items_schema));
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Kubernetes prints it in `Invalid value: …`.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

fn compiled_pattern(pattern: &str) -> Option<Regex> {
    static CACHE: Mutex<Option<HashMap<String, Option<Regex>>>> = Mutex::new(None);
    let mut cache = CACHE.lock();
    cache
        .get_or_insert_with(HashMap::new)
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).ok())
        .clone()
}

/// The structural schema checks; `blocking` is set for type and enum errors, which make
/// Kubernetes skip the CEL rules.
fn validate(
    value: &Value,
    schema: &Value,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
    blocking: &mut bool,
) {
    if value.is_null() {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(value.is_string() || type_matches("integer", value)) {
            *blocking = true;
            causes.push(Cause::invalid(
                path,
                &shown(value),
                &format!(
                    "{path} in body must be of type integer,string: \"{}\"",
                    type_name(value)
                ),
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(expected, value) {
            *blocking = true;
            causes.push(Cause::invalid(
                path,
                &format!("\"{}\"", type_name(value)),
                &format!(
                    "{path} in body must be of type {expected}: \"{}\"",
                    type_name(value)
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            *blocking = true;
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {}: supported values: {}",
                    value,
                    list.join(", ")
                ),
                field: path.to_string(),
            });
        }
    }
    match value {
        Value::String(s) => validate_string(s, value, schema, path, causes),
        Value::Number(n) => {
            validate_number(n.as_f64().unwrap_or_default(), value, schema, path, causes)
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    causes.push(Cause {
                        reason: "FieldValueTooMany",
                        message: format!(
                            "Too many: {}: must have at most {max} items",
                            items.len()
                        ),
                        field: path.to_string(),
                    });
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    causes.push(Cause::invalid(
                        path,
                        &items.len().to_string(),
                        &format!("{path} in body should have at least {min} items"),
                    ));
                }
            }
            check_list_keys(items, schema, path, causes);
            if let Some(items_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(
                        item,
                        items_schema,
                        &format!("{path}[{i}]"),
                        false,
                        causes,
                        blocking,
                    );
                }
            }
        }
        Value::Object(map) => validate_object(map, schema, path, root, causes, blocking),
        _ => {}
    }
}

fn validate_string(s: &str, value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if s.chars().count() as u64 > max {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than {max} bytes"),
                field: path.to_string(),
            });
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if (s.chars().count() as u64) < min {
            causes.push(Cause::invalid(
                path,
                &shown(value),
                &format!("{path} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        if compiled_pattern(pattern).is_some_and(|re| !re.is_match(s)) {
            causes.push(Cause::invalid(
                path,
                &shown(value),
                &format!("{path} in body should match '{pattern}'"),
            ));
        }
    }
}

fn validate_number(n: f64, value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let exclusive = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
    let fmt = |f: f64| {
        if f.fract() == 0.0 {
            format!("{}", f as i64)
        } else {
            f.to_string()
        }
    };
    if let Some(min) = bound("minimum") {
        let (bad, word) = if exclusive("exclusiveMinimum") {
            (n <= min, "greater than")
        } else {
            (n < min, "greater than or equal to")
        };
        if bad {
            causes.push(Cause::invalid(
                path,
                &shown(value),
                &format!("{path} in body should be {word} {}", fmt(min)),
            ));
        }
    }
    if let Some(max) = bound("maximum") {
        let (bad, word) = if exclusive("exclusiveMaximum") {
            (n >= max, "less than")
        } else {
            (n > max, "less than or equal to")
        };
        if bad {
            causes.push(Cause::invalid(
                path,
                &shown(value),
                &format!("{path} in body should be {word} {}", fmt(max)),
            ));
        }
    }
}

fn validate_object(
    map: &Map<String, Value>,
    schema: &Value,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
    blocking: &mut bool,
) {
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(key) = required.as_str() {
            if map.get(key).is_none_or(Value::is_null) {
                causes.push(Cause::required(&join(path, key), ""));
            }
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(cs) = props.and_then(|p| p.get(key)).or(additional) {
            validate(child, cs, &join(path, key), false, causes, blocking);
        }
    }
}

/// `x-kubernetes-list-type: map|set` lists must not repeat a key.
fn check_list_keys(items: &[Value], schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let key_of = |item: &Value| -> Value {
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => Value::Object(
                schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str())
                    .filter_map(|k| item.get(k).map(|v| (k.to_string(), v.clone())))
                    .collect(),
            ),
            Some("set") => item.clone(),
            _ => Value::Null,
        }
    };
    let mut seen: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = key_of(item);
        if key.is_null() {
            return;
        }
        if seen.contains(&key) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {key}"),
                field: format!("{path}[{i}]"),
            });
        }
        seen.push(key);
    }
}

/// The schema node at a field path such as `spec.hostPairs[0].nodes`.
fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for segment in path_segments(path) {
        node = match segment {
            Segment::Field(f) => node
                .get("properties")
                .and_then(|p| p.get(f))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?,
            Segment::Index(_) => node.get("items")?,
        };
    }
    Some(node)
}

enum Segment<'a> {
    Field(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (field, rest) = part.split_once('[').map_or((part, ""), |(f, r)| (f, r));
        if !field.is_empty() {
            out.push(Segment::Field(field));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = value;
    for segment in path_segments(path) {
        cur = match segment {
            Segment::Field(f) => cur.get(f)?,
            Segment::Index(i) => cur.get(i)?,
        };
    }
    Some(cur)
}

/// Whether an update changed the value at `field` (ratcheting: unchanged values keep
/// whatever errors they had).
fn changed_at(new: &Value, old: &Value, field: &str) -> bool {
    if field.is_empty() || field == "<nil>" {
        return true;
    }
    value_at(new, field) != value_at(old, field)
}

fn cel_rules(schema: &Value, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let Err(errors) = kube::core::cel::Validator::new().validate(schema, obj, old) else {
        return;
    };
    for error in errors.into_vec() {
        use kube::core::cel::ErrorKind;
        match error.kind {
            ErrorKind::ValidationFailure
            | ErrorKind::InvalidResult
            | ErrorKind::EvaluationError => {}
            _ => {
                tracing::warn!(rule = %error.rule, message = %error.message, "cel rule not evaluated, object accepted");
                continue;
            }
        }
        // A rule's fieldPath is written `.spec.x`; the API server names the field `spec.x`.
        let path = error.field_path.trim_start_matches('.');
        let field = if path.is_empty() {
            "<nil>".to_string()
        } else {
            path.to_string()
        };
        let type_shown = schema_at(schema, path)
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("object");
        let reason = match error.reason.as_deref() {
            Some("FieldValueForbidden") => "FieldValueForbidden",
            Some("FieldValueRequired") => "FieldValueRequired",
            Some("FieldValueDuplicate") => "FieldValueDuplicate",
            _ => "FieldValueInvalid",
        };
        let message = match reason {
            "FieldValueForbidden" => format!("Forbidden: {}", error.message),
            "FieldValueRequired" => format!("Required value: {}", error.message),
            "FieldValueDuplicate" => {
                format!("Duplicate value: \"{type_shown}\": {}", error.message)
            }
            _ => format!("Invalid value: \"{type_shown}\": {}", error.message),
        };
        causes.push(Cause {
            reason,
            message,
            field,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_nested_defaults_when_defaulting_should_default_inside_inserted_defaults() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ports": {"type": "object", "default": {}, "properties": {"stomp": {"type": "integer", "default": 61613}}}}}}});
        let mut obj = json!({"spec": {}});
        default(&mut obj, &schema);
        assert_eq!(obj, json!({"spec": {"ports": {"stomp": 61613}}}));
    }

    #[test]
    fn given_unknown_and_null_fields_when_pruned_should_record_unknown_and_drop_nulls() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string", "nullable": true}}}}});
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {}, "spec": {"a": null, "b": null, "c": 1}});
        let mut unknown = Vec::new();
        prune(&mut obj, &schema, "", true, &mut unknown);
        assert_eq!(unknown, vec!["spec.c"]);
        assert_eq!(obj["spec"], json!({"b": null}));
    }

    #[test]
    fn given_out_of_range_value_when_validated_should_report_kubernetes_message() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "groups": {"type": "integer", "minimum": 1.0}}}}});
        let mut causes = Vec::new();
        let mut blocking = false;
        validate(
            &json!({"spec": {"groups": 0}}),
            &schema,
            "",
            true,
            &mut causes,
            &mut blocking,
        );
        assert_eq!(causes[0].line(), "spec.groups: Invalid value: 0: spec.groups in body should be greater than or equal to 1");
    }
}
