//! The scheduler: binds each pod without `spec.nodeName` to a node. `choose_node` decides
//! (pure: node filters as the default scheduler's plugins, then spreading); `run` watches
//! pods and nodes and binds through the API (binding subresource, or a patch of
//! `spec.nodeName` on servers without it). It never touches Docker.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error_chain;
use super::names;
use super::selector::{
    label_selector_matches, map_selector_matches, node_selector_term_matches, Labels,
};
use super::watch::{next_round, Informer};

/// Why no node fits a pod, worded as the real scheduler's `PodScheduled` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    pub message: String,
}

/// The filter a node failed first; the texts are the default scheduler's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum NodeMisfit {
    Unschedulable,
    UntoleratedTaint(String),
    NodeAffinity,
    PodAntiAffinity,
    ExistingPodsAntiAffinity,
}

impl NodeMisfit {
    fn text(&self) -> String {
        match self {
            Self::Unschedulable => "node(s) were unschedulable".into(),
            Self::UntoleratedTaint(t) => format!("node(s) had untolerated taint {{{t}}}"),
            Self::NodeAffinity => "node(s) didn't match Pod's node affinity/selector".into(),
            Self::PodAntiAffinity => "node(s) didn't match pod anti-affinity rules".into(),
            Self::ExistingPodsAntiAffinity => {
                "node(s) didn't satisfy existing pods anti-affinity rules".into()
            }
        }
    }
}

/// Picks the node for `pod` among `nodes`, given every pod in the cluster (`pods`, bound or
/// not; the pod itself is ignored). Filters in the default scheduler's order (node
/// unschedulable, taints, readiness, node selector and required node affinity, required pod
/// anti-affinity both ways), then prefers the node with the fewest pods, then by name.
pub fn choose_node(pod: &Pod, nodes: &[Node], pods: &[Pod]) -> Result<String, Unschedulable> {
    if nodes.is_empty() {
        return Err(Unschedulable {
            message: "no nodes available to schedule pods".into(),
        });
    }
    let node_labels: BTreeMap<&str, Labels> = nodes
        .iter()
        .map(|n| {
            (
                n.metadata.name.as_deref().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    let placed: Vec<(&Pod, &str)> = pods
        .iter()
        .filter(|p| !same_pod(p, pod))
        .filter(|p| !is_terminal(p))
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.as_deref()?;
            Some((p, node))
        })
        .collect();

    let mut misfits: BTreeMap<NodeMisfit, usize> = BTreeMap::new();
    let mut feasible: Vec<(usize, &str)> = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        match filter_node(pod, node, &placed, &node_labels) {
            Some(misfit) => *misfits.entry(misfit).or_default() += 1,
            None => {
                let load = placed.iter().filter(|(_, n)| *n == name).count();
                feasible.push((load, name));
            }
        }
    }
    if let Some((_, name)) = feasible.into_iter().min() {
        return Ok(name.to_string());
    }
    let mut reasons: Vec<String> = misfits
        .iter()
        .map(|(m, count)| format!("{count} {}", m.text()))
        .collect();
    reasons.sort();
    let total = nodes.len();
    Err(Unschedulable {
        message: format!(
            "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
            reasons.join(", ")
        ),
    })
}

fn same_pod(a: &Pod, b: &Pod) -> bool {
    a.metadata.name == b.metadata.name && a.metadata.namespace == b.metadata.namespace
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The first filter `node` fails for `pod`, or None when it fits.
fn filter_node(
    pod: &Pod,
    node: &Node,
    placed: &[(&Pod, &str)],
    node_labels: &BTreeMap<&str, Labels>,
) -> Option<NodeMisfit> {
    let spec = pod.spec.clone().unwrap_or_default();
    let node_spec = node.spec.clone().unwrap_or_default();
    if node_spec.unschedulable == Some(true) {
        return Some(NodeMisfit::Unschedulable);
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    for taint in node_spec.taints.iter().flatten() {
        let blocking = matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute");
        if blocking && !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Some(NodeMisfit::UntoleratedTaint(taint_text(taint)));
        }
    }
    if !node_is_ready(node) {
        // A real cluster taints such a node; without the taint, say what it would.
        return Some(NodeMisfit::UntoleratedTaint(format!(
            "{}: ",
            names::TAINT_NOT_READY
        )));
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = &spec.node_selector {
        if !map_selector_matches(selector, &labels) {
            return Some(NodeMisfit::NodeAffinity);
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        if !required
            .node_selector_terms
            .iter()
            .any(|term| node_selector_term_matches(term, node))
        {
            return Some(NodeMisfit::NodeAffinity);
        }
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    let anti_terms = anti_affinity_terms(pod);
    for term in anti_terms {
        if placed.iter().any(|(other, other_node)| {
            shares_topology(&term.topology_key, &labels, node_labels.get(other_node))
                && term_selects(term, namespace, other)
        }) {
            return Some(NodeMisfit::PodAntiAffinity);
        }
    }
    for (other, other_node) in placed {
        let other_ns = other.metadata.namespace.as_deref().unwrap_or("default");
        for term in anti_affinity_terms(other) {
            let selects_me = term_namespaces(term, other_ns).contains(&namespace)
                && term
                    .label_selector
                    .as_ref()
                    .is_some_and(|s| label_selector_matches(s, &pod_labels));
            if selects_me
                && shares_topology(&term.topology_key, &labels, node_labels.get(other_node))
            {
                return Some(NodeMisfit::ExistingPodsAntiAffinity);
            }
        }
    }
    None
}

fn anti_affinity_terms(pod: &Pod) -> &[PodAffinityTerm] {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|aa| {
            aa.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn term_namespaces<'a>(term: &'a PodAffinityTerm, own: &'a str) -> Vec<&'a str> {
    match term.namespaces.as_deref() {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => vec![own],
    }
}

/// Whether `term` of a pod in `namespace` selects `other` (a term without a selector
/// selects nothing).
fn term_selects(term: &PodAffinityTerm, namespace: &str, other: &Pod) -> bool {
    let other_ns = other.metadata.namespace.as_deref().unwrap_or("default");
    let other_labels = other.metadata.labels.clone().unwrap_or_default();
    term_namespaces(term, namespace).contains(&other_ns)
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| label_selector_matches(s, &other_labels))
}

/// Whether the candidate node and the node of an existing pod are in the same topology
/// domain; a node without the key is in none.
fn shares_topology(key: &str, candidate: &Labels, other: Option<&Labels>) -> bool {
    match (candidate.get(key), other.and_then(|l| l.get(key))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => effect_ok && (key.is_empty() || key == taint.key),
        _ => {
            effect_ok
                && key == taint.key
                && toleration.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

fn taint_text(taint: &Taint) -> String {
    format!(
        "{}: {}",
        taint.key,
        taint.value.as_deref().unwrap_or_default()
    )
}

/// Whether the node's Ready condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn needs_scheduling(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && spec.is_some_and(|s| s.node_name.as_deref().unwrap_or_default().is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n == names::MANAGER_SCHEDULER)
        && !is_terminal(pod)
}

/// The scheduler's loop: on every pod or node change (and every resync period), tries to
/// place each unscheduled pod. Binds one pod at a time so each decision sees the previous.
pub async fn run(
    client: Client,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    cancel: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    pods.notify_on(wake.clone());
    nodes.notify_on(wake.clone());
    pods.ready().await;
    nodes.ready().await;
    // Pods bound here but not yet seen bound in the watch: counted for spreading.
    let mut pending_binds: BTreeMap<String, (String, Pod)> = BTreeMap::new();
    loop {
        let mut all_pods: Vec<Pod> = pods.state().iter().map(|p| (**p).clone()).collect();
        pending_binds.retain(|uid, _| {
            all_pods
                .iter()
                .any(|p| p.metadata.uid.as_deref() == Some(uid) && needs_scheduling(p))
        });
        for (node, pod) in pending_binds.values() {
            if let Some(p) = all_pods
                .iter_mut()
                .find(|p| p.metadata.uid == pod.metadata.uid)
            {
                p.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
            }
        }
        let all_nodes: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
        let mut waiting: Vec<Pod> = all_pods
            .iter()
            .filter(|p| needs_scheduling(p))
            .cloned()
            .collect();
        waiting.sort_by_key(|p| p.metadata.creation_timestamp.clone());
        for pod in waiting {
            let key = pod_key(&pod);
            match choose_node(&pod, &all_nodes, &all_pods) {
                Ok(node) => match bind(&client, &pod, &node).await {
                    Ok(()) => {
                        info!(pod = %key, node = %node, "scheduled pod");
                        if let Some(uid) = pod.metadata.uid.clone() {
                            pending_binds.insert(uid, (node.clone(), pod.clone()));
                        }
                        if let Some(p) = all_pods
                            .iter_mut()
                            .find(|p| p.metadata.uid == pod.metadata.uid)
                        {
                            p.spec.get_or_insert_with(Default::default).node_name = Some(node);
                        }
                    }
                    Err(error) => {
                        warn!(pod = %key, node = %node, error = %error_chain(&error), "failed to bind pod")
                    }
                },
                Err(unschedulable) => {
                    if let Err(error) = mark_unschedulable(&client, &pod, &unschedulable).await {
                        debug!(pod = %key, error = %error_chain(&error), "failed to record that the pod is unschedulable");
                    }
                }
            }
        }
        if !next_round(&wake, &cancel).await {
            return;
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Binds through the binding subresource; a server without it (404/405) gets a patch of
/// `spec.nodeName` instead. Then records PodScheduled=True.
async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "namespace": namespace },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    let posted: Result<serde_json::Value, kube::Error> = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await;
    match posted {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 405 => {
            let patch = json!({ "spec": { "nodeName": node } });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Err(e) => return Err(e),
    }
    let conditions = with_scheduled_condition(pod, "True", None, None);
    super::api::patch_status(&api, name, &json!({ "conditions": conditions })).await?;
    Ok(())
}

async fn mark_unschedulable(
    client: &Client,
    pod: &Pod,
    why: &Unschedulable,
) -> Result<(), kube::Error> {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| c.message.as_deref() == Some(why.message.as_str())) {
        return Ok(());
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    info!(pod = %pod_key(pod), reason = %why.message, "pod is unschedulable");
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut status = json!({
        "conditions": with_scheduled_condition(pod, "False", Some("Unschedulable"), Some(&why.message)),
    });
    if pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none()
    {
        status["phase"] = json!("Pending");
    }
    super::api::patch_status(&api, name, &status).await?;
    Ok(())
}

/// The pod's conditions with PodScheduled set (a JSON merge patch replaces the whole list,
/// so the others are carried over), keeping its transition time when its status did not
/// change.
fn with_scheduled_condition(
    pod: &Pod,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> Vec<PodCondition> {
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let previous = conditions.iter().find(|c| c.type_ == "PodScheduled");
    let transition = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => None,
    }
    .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    conditions.retain(|c| c.type_ != "PodScheduled");
    conditions.insert(
        0,
        PodCondition {
            type_: "PodScheduled".into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: message.map(Into::into),
            last_transition_time: Some(transition),
            ..PodCondition::default()
        },
    );
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeCondition, NodeSelector, NodeSelectorRequirement,
        NodeSelectorTerm, NodeSpec, NodeStatus, PodAntiAffinity, PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use rstest::rstest;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    (names::LABEL_HOSTNAME.to_string(), name.to_string()),
                    (
                        "zone".to_string(),
                        if name == "node-c" { "z2" } else { "z1" }.to_string(),
                    ),
                ])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn not_ready(mut n: Node) -> Node {
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    fn tainted(mut n: Node, key: &str, effect: &str) -> Node {
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: key.into(),
                value: Some("yes".into()),
                effect: effect.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    fn pod(name: &str, app: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        }
    }

    fn on(mut p: Pod, node: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    fn anti(mut p: Pod, app: &str, key: &str) -> Pod {
        let spec = p.spec.get_or_insert_with(Default::default);
        spec.affinity
            .get_or_insert_with(Affinity::default)
            .pod_anti_affinity = Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                    ..Default::default()
                }),
                topology_key: key.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn node_in(mut p: Pod, op: &str, values: &[&str]) -> Pod {
        let spec = p.spec.get_or_insert_with(Default::default);
        spec.affinity
            .get_or_insert_with(Default::default)
            .node_affinity = Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: names::LABEL_HOSTNAME.into(),
                        operator: op.into(),
                        values: Some(values.iter().map(|v| v.to_string()).collect()),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        });
        p
    }

    fn selector(mut p: Pod, key: &str, value: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_selector =
            Some(BTreeMap::from([(key.to_string(), value.to_string())]));
        p
    }

    fn tolerate(mut p: Pod, key: &str, op: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).tolerations = Some(vec![Toleration {
            key: Some(key.into()),
            operator: Some(op.into()),
            value: (op == "Equal").then(|| "yes".into()),
            ..Default::default()
        }]);
        p
    }

    fn three() -> Vec<Node> {
        vec![node("node-a"), node("node-b"), node("node-c")]
    }

    #[rstest]
    #[case::empty_cluster_spreads_by_name(pod("p", "web"), three(), vec![], "node-a")]
    #[case::fewest_pods_first(pod("p", "web"), three(), vec![on(pod("x", "db"), "node-a"), on(pod("y", "db"), "node-b")], "node-c")]
    #[case::node_selector(selector(pod("p", "web"), "zone", "z2"), three(), vec![], "node-c")]
    #[case::affinity_in(node_in(pod("p", "web"), "In", &["node-b", "node-c"]), three(), vec![], "node-b")]
    #[case::affinity_not_in(node_in(pod("p", "web"), "NotIn", &["node-a"]), three(), vec![], "node-b")]
    #[case::anti_affinity_skips_peer_node(anti(pod("p", "web"), "web", names::LABEL_HOSTNAME), three(), vec![on(pod("w0", "web"), "node-a")], "node-b")]
    #[case::anti_affinity_by_zone(anti(pod("p", "web"), "web", "zone"), three(), vec![on(pod("w0", "web"), "node-a")], "node-c")]
    #[case::anti_affinity_ignores_other_apps(anti(pod("p", "web"), "web", names::LABEL_HOSTNAME), three(), vec![on(pod("d0", "db"), "node-a"), on(pod("d1", "db"), "node-b")], "node-c")]
    #[case::existing_pods_anti_affinity(pod("p", "web"), three(), vec![on(anti(pod("g", "guard"), "web", names::LABEL_HOSTNAME), "node-a")], "node-b")]
    #[case::not_ready_excluded(pod("p", "web"), vec![not_ready(node("node-a")), node("node-b")], vec![], "node-b")]
    #[case::taint_excludes(pod("p", "web"), vec![tainted(node("node-a"), "dedicated", "NoSchedule"), node("node-b")], vec![], "node-b")]
    #[case::prefer_no_schedule_is_not_a_filter(pod("p", "web"), vec![tainted(node("node-a"), "dedicated", "PreferNoSchedule"), node("node-b")], vec![], "node-a")]
    #[case::toleration_equal(tolerate(pod("p", "web"), "dedicated", "Equal"), vec![tainted(node("node-a"), "dedicated", "NoSchedule")], vec![], "node-a")]
    #[case::toleration_exists(tolerate(pod("p", "web"), "dedicated", "Exists"), vec![tainted(node("node-a"), "dedicated", "NoExecute")], vec![], "node-a")]
    fn given_cluster_when_choosing_node_should_pick_expected(
        #[case] candidate: Pod,
        #[case] nodes: Vec<Node>,
        #[case] existing: Vec<Pod>,
        #[case] expected: &str,
    ) {
        assert_eq!(
            choose_node(&candidate, &nodes, &existing),
            Ok(expected.to_string())
        );
    }

    #[rstest]
    #[case::no_nodes(pod("p", "web"), vec![], vec![], "no nodes available to schedule pods")]
    #[case::anti_affinity_everywhere(
        anti(pod("p", "web"), "web", names::LABEL_HOSTNAME),
        vec![node("node-a"), node("node-b")],
        vec![on(pod("w0", "web"), "node-a"), on(pod("w1", "web"), "node-b")],
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )]
    #[case::mixed_reasons_sorted(
        anti(node_in(pod("p", "web"), "In", &["node-a", "node-b"]), "web", names::LABEL_HOSTNAME),
        vec![node("node-a"), not_ready(node("node-b")), node("node-c")],
        vec![on(pod("w0", "web"), "node-a")],
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) didn't match pod anti-affinity rules, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    )]
    #[case::taint(
        pod("p", "web"),
        vec![tainted(node("node-a"), "dedicated", "NoSchedule")],
        vec![],
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: yes}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    )]
    fn given_no_fitting_node_when_choosing_should_explain_like_kube_scheduler(
        #[case] candidate: Pod,
        #[case] nodes: Vec<Node>,
        #[case] existing: Vec<Pod>,
        #[case] message: &str,
    ) {
        assert_eq!(
            choose_node(&candidate, &nodes, &existing),
            Err(Unschedulable {
                message: message.into()
            })
        );
    }

    #[test]
    fn given_terminal_pods_when_choosing_should_not_count_them() {
        let mut done = on(pod("w0", "web"), "node-a");
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        let p = anti(pod("p", "web"), "web", names::LABEL_HOSTNAME);
        assert_eq!(choose_node(&p, &three(), &[done]), Ok("node-a".into()));
    }
}
