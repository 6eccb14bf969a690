//! The JSONPath subset CRD printer columns use: `.a.b`, `.a[0]`, `.a[*].b`, `['a.b']`,
//! and filters `[?(@.type=="Ready")]` (with `==`, `!=`, or a bare `@.field` for existence),
//! optionally wrapped in `{…}`.
//!
//! It must not fail loudly: a path it cannot parse selects nothing, as a missing field would.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter {
        path: Vec<Step>,
        op: Option<(bool, Value)>,
    },
}

/// Every value `path` selects in `root`, in document order.
pub(crate) fn select<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let trimmed = path.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(trimmed);
    match parse(inner) {
        Some(steps) => eval(vec![root], &steps),
        None => Vec::new(),
    }
}

/// The first value `path` selects.
pub(crate) fn first<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    select(root, path).into_iter().next()
}

fn eval<'a>(mut current: Vec<&'a Value>, steps: &[Step]) -> Vec<&'a Value> {
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter { path, op } => {
                    let candidates: Vec<&Value> = match v {
                        Value::Array(items) => items.iter().collect(),
                        other => vec![other],
                    };
                    for c in candidates {
                        let found = eval(vec![c], path);
                        let keep = match op {
                            None => !found.is_empty(),
                            Some((equal, literal)) => {
                                let matches =
                                    found.first().is_some_and(|f| loosely_equal(f, literal));
                                matches == *equal
                            }
                        };
                        if keep {
                            next.push(c);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn parse(text: &str) -> Option<Vec<Step>> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut steps = Vec::new();
    if chars.first() == Some(&'$') {
        i += 1;
    }
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name == "*" {
                    steps.push(Step::All);
                } else if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                let close = matching_bracket(&chars, i)?;
                let body: String = chars[i + 1..close].iter().collect();
                steps.push(bracket(body.trim())?);
                i = close + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

fn matching_bracket(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
}

fn bracket(body: &str) -> Option<Step> {
    if body == "*" {
        return Some(Step::All);
    }
    if let Ok(i) = body.parse::<usize>() {
        return Some(Step::Index(i));
    }
    if let Some(name) = unquote(body) {
        return Some(Step::Field(name.to_string()));
    }
    let filter = body.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, op) = if let Some((l, r)) = filter.split_once("==") {
        (l, Some((true, literal(r)?)))
    } else if let Some((l, r)) = filter.split_once("!=") {
        (l, Some((false, literal(r)?)))
    } else {
        (filter, None)
    };
    let path = parse(lhs.trim().strip_prefix('@')?)?;
    Some(Step::Filter { path, op })
}

fn literal(text: &str) -> Option<Value> {
    match unquote(text) {
        Some(s) => Some(Value::String(s.to_string())),
        None => serde_json::from_str(text.trim()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_condition_filter_when_selected_should_return_matching_status() {
        let obj = json!({"status": {"conditions": [
            {"type": "Available", "status": "True"}, {"type": "Replicated", "status": "False"}]}});
        assert_eq!(
            first(
                &obj,
                r#".status.conditions[?(@.type=="Replicated")].status"#
            ),
            Some(&json!("False"))
        );
        assert_eq!(
            first(&obj, ".status.conditions[0].type"),
            Some(&json!("Available"))
        );
        assert_eq!(select(&obj, "{.status.conditions[*].type}").len(), 2);
        assert_eq!(first(&obj, ".spec.missing"), None);
    }
}
