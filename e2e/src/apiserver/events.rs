//! Events are stored once, in core v1 form, and served through both `v1` and
//! `events.k8s.io/v1` like Kubernetes does: an event a kube-rs `Recorder` writes through
//! events.k8s.io shows in `kubectl describe`, which lists core events.
//!
//! It must not do anything but rename fields between the two shapes.

use serde_json::{Map, Value};

/// events.k8s.io/v1 field ↔ core v1 field.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, to_core: bool, api_version: &str) -> Value {
    let Some(map) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMES.iter().find_map(|(v1, core)| {
            let (from, to) = if to_core { (v1, core) } else { (core, v1) };
            (key == from).then_some(*to)
        });
        out.insert(renamed.unwrap_or(key).to_string(), value.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event in its stored (core v1) form.
pub(crate) fn to_core(v1: &Value) -> Value {
    rename(v1, true, "v1")
}

/// A stored core v1 Event as events.k8s.io/v1 shows it.
pub(crate) fn to_events_v1(core: &Value) -> Value {
    rename(core, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_events_v1_event_when_stored_and_read_back_should_round_trip() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"},
            "note": "hello", "reason": "Started", "reportingController": "x",
        });
        let core = to_core(&v1);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(to_events_v1(&core), v1);
    }
}
