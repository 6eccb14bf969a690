//! Label and node selector matching, with Kubernetes' semantics (an empty label selector
//! matches everything, an empty node selector term matches nothing). Pure functions shared
//! by the scheduler, the workload controllers and the service proxies; no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Labels of an object, empty when it has none.
pub type Labels = BTreeMap<String, String>;

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions, ANDed).
pub fn label_selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|req| label_requirement_matches(req, labels))
}

fn label_requirement_matches(req: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Whether every `key: value` of a plain map selector (a Service's `spec.selector`, a pod's
/// `nodeSelector`) is among `labels`.
pub fn map_selector_matches(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `node` satisfies one term of a required node affinity (its matchExpressions on
/// labels and matchFields on `metadata.name`, ANDed). A term with neither matches nothing.
pub fn node_selector_term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let fields_map = BTreeMap::from([("metadata.name".to_string(), name)]);
    expressions
        .iter()
        .all(|req| node_requirement_matches(req, &labels))
        && fields
            .iter()
            .all(|req| node_requirement_matches(req, &fields_map))
}

fn node_requirement_matches(req: &NodeSelectorRequirement, labels: &Labels) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    let as_int = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| as_int(v)),
                values.first().and_then(|v| as_int(v)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use rstest::rstest;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[rstest]
    #[case::empty_selector_matches_all(LabelSelector::default(), true)]
    #[case::match_labels(LabelSelector { match_labels: Some(labels(&[("app", "web")])), ..Default::default() }, true)]
    #[case::match_labels_miss(LabelSelector { match_labels: Some(labels(&[("app", "db")])), ..Default::default() }, false)]
    #[case::in_op(LabelSelector { match_expressions: Some(vec![expr("tier", "In", &["a", "b"])]), ..Default::default() }, true)]
    #[case::not_in_op(LabelSelector { match_expressions: Some(vec![expr("tier", "NotIn", &["b"])]), ..Default::default() }, false)]
    #[case::not_in_absent_key(LabelSelector { match_expressions: Some(vec![expr("zone", "NotIn", &["x"])]), ..Default::default() }, true)]
    #[case::exists(LabelSelector { match_expressions: Some(vec![expr("app", "Exists", &[])]), ..Default::default() }, true)]
    #[case::does_not_exist(LabelSelector { match_expressions: Some(vec![expr("app", "DoesNotExist", &[])]), ..Default::default() }, false)]
    fn given_pod_labels_when_matching_selector_should_follow_kubernetes(
        #[case] selector: LabelSelector,
        #[case] expected: bool,
    ) {
        let pod = labels(&[("app", "web"), ("tier", "b")]);
        assert_eq!(label_selector_matches(&selector, &pod), expected);
    }

    fn node(name: &str, pairs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(pairs)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn nreq(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[rstest]
    #[case::empty_term_matches_nothing(NodeSelectorTerm::default(), false)]
    #[case::hostname_in(NodeSelectorTerm { match_expressions: Some(vec![nreq("kubernetes.io/hostname", "In", &["node-a", "node-b"])]), ..Default::default() }, true)]
    #[case::hostname_not_in(NodeSelectorTerm { match_expressions: Some(vec![nreq("kubernetes.io/hostname", "NotIn", &["node-a"])]), ..Default::default() }, false)]
    #[case::field_name(NodeSelectorTerm { match_fields: Some(vec![nreq("metadata.name", "In", &["node-a"])]), ..Default::default() }, true)]
    #[case::field_name_miss(NodeSelectorTerm { match_fields: Some(vec![nreq("metadata.name", "In", &["node-c"])]), ..Default::default() }, false)]
    #[case::gt(NodeSelectorTerm { match_expressions: Some(vec![nreq("cores", "Gt", &["3"])]), ..Default::default() }, true)]
    #[case::lt(NodeSelectorTerm { match_expressions: Some(vec![nreq("cores", "Lt", &["3"])]), ..Default::default() }, false)]
    fn given_node_when_matching_term_should_follow_kubernetes(
        #[case] term: NodeSelectorTerm,
        #[case] expected: bool,
    ) {
        let n = node(
            "node-a",
            &[("kubernetes.io/hostname", "node-a"), ("cores", "4")],
        );
        assert_eq!(node_selector_term_matches(&term, &n), expected);
    }
}
