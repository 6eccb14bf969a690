//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`) and field
//! selectors (`metadata.name`, `metadata.namespace`, and the per-resource fields Kubernetes
//! supports, such as `spec.nodeName` for pods and `involvedObject.*` for events).
//!
//! It must not read the store: selectors are parsed once per request and matched against
//! objects handed in.

use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::meta;
use super::registry::ResourceInfo;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> ApiResult<Self> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: found '{part}', expected a label selector requirement"
                ))
            })?);
        }
        Ok(Self { requirements })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| {
            let value = get(&r.key);
            match &r.op {
                Op::Eq(v) => value == Some(v.as_str()),
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::NotIn(vs) => value.is_none_or(|x| vs.iter().all(|v| v != x)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
                Op::Gt(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Op::Lt(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// Splits on commas outside parentheses: `a in (x,y),b` → [`a in (x,y)`, `b`].
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn parse_requirement(part: &str) -> Option<Requirement> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| Requirement {
            key: key.to_string(),
            op: Op::NotExists,
        });
    }
    for (word, notin) in [(" notin ", true), (" in ", false)] {
        if let Some(i) = part.find(word) {
            let key = part[..i].trim();
            let set = parse_set(&part[i + word.len()..])?;
            if !valid_key(key) {
                return None;
            }
            let op = if notin { Op::NotIn(set) } else { Op::In(set) };
            return Some(Requirement {
                key: key.to_string(),
                op,
            });
        }
    }
    for (token, make) in [
        ("!=", Op::NotEq as fn(String) -> Op),
        ("==", Op::Eq),
        ("=", Op::Eq),
    ] {
        if let Some((key, value)) = part.split_once(token) {
            let key = key.trim();
            return valid_key(key).then(|| Requirement {
                key: key.to_string(),
                op: make(value.trim().to_string()),
            });
        }
    }
    for (token, gt) in [(">", true), ("<", false)] {
        if let Some((key, value)) = part.split_once(token) {
            let n: i64 = value.trim().parse().ok()?;
            let key = key.trim();
            return valid_key(key).then(|| Requirement {
                key: key.to_string(),
                op: if gt { Op::Gt(n) } else { Op::Lt(n) },
            });
        }
    }
    valid_key(part).then(|| Requirement {
        key: part.to_string(),
        op: Op::Exists,
    })
}

/// A parsed field selector: `field=value` and `field!=value` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses `text`, rejecting fields the resource does not support like Kubernetes does.
    pub(crate) fn parse(text: &str, resource: &ResourceInfo) -> ApiResult<Self> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_field(resource, field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self { terms })
    }

    /// Matches a stored object (events are matched in their core v1 form).
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = field_value(obj, field);
            (actual == *value) == *equal
        })
    }

    /// Adds `metadata.name=<name>`, for watches of one object.
    pub(crate) fn with_name(mut self, name: &str) -> Self {
        self.terms
            .push(("metadata.name".into(), true, name.to_string()));
        self
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn supported_field(resource: &ResourceInfo, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match (resource.storage.group.as_str(), resource.plural.as_str()) {
        ("", "pods") => POD_FIELDS.contains(&field),
        ("", "events") => {
            EVENT_FIELDS.contains(&field)
                || field
                    .strip_prefix("regarding.")
                    .is_some_and(|f| EVENT_FIELDS.contains(&format!("involvedObject.{f}").as_str()))
                || matches!(field, "reportingController")
        }
        ("", "secrets") => field == "type",
        ("", "nodes") => field == "spec.unschedulable",
        ("", "namespaces") => field == "status.phase",
        ("apps", "replicasets") => field == "status.replicas",
        _ => false,
    }
}

/// The string Kubernetes compares a field selector with (empty when absent).
fn field_value(obj: &Value, field: &str) -> String {
    let field = match field {
        "source" => "source.component".to_string(),
        "reportingController" => "reportingComponent".to_string(),
        f => match f.strip_prefix("regarding.") {
            Some(rest) => format!("involvedObject.{rest}"),
            None => f.to_string(),
        },
    };
    let mut cur = obj;
    for seg in field.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    #[test]
    fn given_set_based_selector_when_matched_should_follow_kubernetes_semantics() {
        let s = LabelSelector::parse("app in (a, b),tier notin (db),!legacy,env").unwrap();
        assert!(s.matches(&obj(json!({"app": "a", "env": "x"}))));
        assert!(!s.matches(&obj(json!({"app": "c", "env": "x"}))));
        assert!(!s.matches(&obj(json!({"app": "a", "env": "x", "tier": "db"}))));
        assert!(!s.matches(&obj(json!({"app": "a", "env": "x", "legacy": "1"}))));
        assert!(!s.matches(&obj(json!({"app": "a"}))));
    }

    #[test]
    fn given_equality_selector_when_matched_should_treat_missing_label_as_not_equal() {
        let s = LabelSelector::parse("a=1,b!=2,c==3").unwrap();
        assert!(s.matches(&obj(json!({"a": "1", "c": "3"}))));
        assert!(!s.matches(&obj(json!({"a": "1", "b": "2", "c": "3"}))));
    }

    #[test]
    fn given_garbage_when_parsing_label_selector_should_fail() {
        assert!(LabelSelector::parse("a in b").is_err());
    }
}
