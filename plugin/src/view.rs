//! What `kubectl duomq status` shows: a [`StatusView`] built from a BrokerGroup and its
//! pods (pure), printed as a tree ([`render_tree`]) or as JSON/YAML. The same view feeds
//! both, so the tree never says something the JSON does not.

use std::collections::BTreeMap;

use anstyle::{AnsiColor, Style};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::Serialize;

use duomq_operator::api::{
    condition, BrokerGroup, FailoverRecord, GroupDrain, GroupStatus, GroupingHandlerStatus,
    PendingSwitchover,
};
use duomq_operator::names::{self, LABEL_GROUP};

/// A BrokerGroup as the status command shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub name: String,
    pub namespace: String,
    /// Groups with a live broker, of all groups (e.g. `2/2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// Unplanned changes of live, all groups.
    pub failovers: i64,
    /// Planned hand-overs, all groups.
    pub switchovers: i64,
    /// Connectors linked of all (e.g. `4/4`), when any group has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked: Option<String>,
    /// `on`, `resuming` or `off`, from the Hibernated condition.
    pub hibernation: String,
    pub conditions: Vec<ConditionView>,
    pub groups: Vec<GroupView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grouping: Option<GroupingHandlerStatus>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    pub preferred_live: String,
    pub epoch: i64,
    pub failovers: i64,
    pub switchovers: i64,
    /// Every member: the spec's, and any other the status or the pods name.
    pub members: Vec<MemberView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<GroupDrain>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switchover: Option<PendingSwitchover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    pub connectors: i64,
    pub connectors_linked: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unlinked_connectors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub database_unreachable: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub pod: String,
    /// `live`, or what a backup reports (backup, starting, unreachable, pending, stopping);
    /// `unknown` when the status does not name the member.
    pub role: String,
    /// Holds everything the live has (always true for the live itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// Bytes of journal behind the live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    pub fenced: bool,
    /// The Pod's phase; absent when there is no Pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The Pod's Ready condition.
    pub ready: bool,
}

/// The view of `bg` with its `pods` (those labelled with its instance).
pub fn build(bg: &BrokerGroup, pods: &[Pod]) -> StatusView {
    let name = bg.name_any();
    let namespace = bg.namespace().unwrap_or_default();
    let status = bg.status.clone().unwrap_or_default();
    let models = duomq_operator::validate::group_models(&name, &namespace, &bg.spec);
    let pods_by_name: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), p)).collect();
    let conditions: Vec<ConditionView> = status
        .conditions
        .iter()
        .map(|c| ConditionView {
            kind: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    let hibernation = match conditions.iter().find(|c| c.kind == condition::HIBERNATED) {
        Some(c) if c.status == "True" && c.reason == "Resuming" => "resuming",
        Some(c) if c.status == "True" => "on",
        _ => "off",
    };
    let groups = status
        .groups
        .iter()
        .map(|g| {
            let spec_members = models
                .iter()
                .find(|m| m.name == g.name)
                .map(|m| m.members.iter().map(|m| m.pod.clone()).collect())
                .unwrap_or_default();
            group_view(g, spec_members, pods, &pods_by_name)
        })
        .collect();
    StatusView {
        name,
        namespace,
        live: status.live.clone(),
        failovers: status.failovers,
        switchovers: status.switchovers,
        linked: status.linked.clone(),
        hibernation: hibernation.to_string(),
        conditions,
        groups,
        grouping: status.grouping.clone(),
    }
}

fn group_view(
    g: &GroupStatus,
    spec_members: Vec<String>,
    pods: &[Pod],
    pods_by_name: &BTreeMap<String, &Pod>,
) -> GroupView {
    // Members by ordinal: the spec's, the status's, and pods of the group (a group being
    // drained after spec.groups was lowered has no spec members any more).
    let mut all: BTreeMap<(usize, String), ()> = BTreeMap::new();
    let labelled = pods
        .iter()
        .filter(|p| p.labels().get(LABEL_GROUP) == Some(&g.name))
        .map(|p| p.name_any());
    let reported = g
        .live
        .iter()
        .cloned()
        .chain(g.backups.iter().map(|b| b.pod.clone()));
    for pod in spec_members.into_iter().chain(reported).chain(labelled) {
        all.insert((ordinal(&pod), pod), ());
    }
    let members = all
        .into_keys()
        .map(|(_, pod)| {
            let backup = g.backups.iter().find(|b| b.pod == pod);
            let is_live = g.live.as_deref() == Some(pod.as_str());
            let (role, synced, lag) = match (is_live, backup) {
                (true, _) => (names::ROLE_LIVE.to_string(), None, None),
                (false, Some(b)) => (b.state.clone(), Some(b.synced), Some(b.lag)),
                (false, None) => ("unknown".to_string(), None, None),
            };
            let p = pods_by_name.get(&pod);
            MemberView {
                fenced: g.fenced.contains(&pod),
                phase: p.and_then(|p| p.status.as_ref()?.phase.clone()),
                ready: p.is_some_and(|p| pod_ready(p)),
                pod,
                role,
                synced,
                lag,
            }
        })
        .collect();
    GroupView {
        name: g.name.clone(),
        live: g.live.clone(),
        preferred_live: g.preferred_live.clone(),
        epoch: g.epoch,
        failovers: g.failovers,
        switchovers: g.switchovers,
        members,
        fenced: g.fenced.clone(),
        drain: g.drain.clone(),
        switchover: g.switchover.clone(),
        last_failover: g.last_failover.clone(),
        connectors: g.connectors,
        connectors_linked: g.connectors_linked,
        unlinked_connectors: g.unlinked_connectors.clone(),
        database_unreachable: g.database_unreachable.clone(),
    }
}

/// A StatefulSet pod's ordinal (the number after the last `-`), for ordering members.
fn ordinal(pod: &str) -> usize {
    pod.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Colours of the tree; none off a terminal (and with NO_COLOR), so pipes get plain text.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    pub enabled: bool,
}

const GOOD: Style = AnsiColor::Green.on_default();
const BAD: Style = AnsiColor::Red.on_default().bold();
const NOTE: Style = AnsiColor::Yellow.on_default();
const NAME: Style = Style::new().bold();

impl Palette {
    fn paint(&self, style: Style, text: impl std::fmt::Display) -> String {
        if self.enabled {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }
}

/// Whether a condition's status is the healthy one, a warning or neither.
fn condition_style(c: &ConditionView) -> Option<Style> {
    let is_true = c.status == "True";
    match c.kind.as_str() {
        condition::DEGRADED => Some(if is_true { BAD } else { GOOD }),
        condition::PROGRESSING | condition::HIBERNATED => is_true.then_some(NOTE),
        _ if c.status == "Unknown" => Some(NOTE),
        _ => Some(if is_true { GOOD } else { BAD }),
    }
}

/// Whether a condition needs its reason and message shown under the summary.
fn needs_detail(c: &ConditionView) -> bool {
    let is_true = c.status == "True";
    match c.kind.as_str() {
        condition::DEGRADED | condition::PROGRESSING | condition::HIBERNATED => is_true,
        _ => !is_true,
    }
}

type Tree = termtree::Tree<String>;

/// The status tree, ending with a newline.
pub fn render_tree(v: &StatusView, palette: Palette) -> String {
    let mut head = format!(
        "BrokerGroup {}: {} live, failovers {}, switchovers {}",
        palette.paint(NAME, format!("{}/{}", v.namespace, v.name)),
        v.live.as_deref().unwrap_or("?"),
        v.failovers,
        v.switchovers
    );
    if let Some(linked) = &v.linked {
        head.push_str(&format!(", linked {linked}"));
    }
    match v.hibernation.as_str() {
        "on" => head.push_str(&format!(", {}", palette.paint(NOTE, "hibernated"))),
        "resuming" => head.push_str(&format!(", {}", palette.paint(NOTE, "resuming"))),
        _ => {}
    }
    let mut root = Tree::new(head);
    root.push(conditions_node(v, palette));
    for g in &v.groups {
        root.push(group_node(g, palette));
    }
    if let Some(h) = &v.grouping {
        let mut line = format!(
            "grouping handler: local group {} on {}, remotes connected {}, timeouts {}",
            h.local_group,
            h.live.as_deref().unwrap_or("(no live)"),
            h.remotes_connected,
            h.timeouts
        );
        if let Some(b) = h.bindings {
            line.push_str(&format!(", bindings {b}"));
        }
        root.push(Tree::new(line));
    }
    root.to_string()
}

fn conditions_node(v: &StatusView, palette: Palette) -> Tree {
    if v.conditions.is_empty() {
        return Tree::new("conditions: none yet (is the operator running?)".to_string());
    }
    let summary: Vec<String> = v
        .conditions
        .iter()
        .map(|c| {
            let text = format!("{}={}", c.kind, c.status);
            match condition_style(c) {
                Some(style) => palette.paint(style, text),
                None => text,
            }
        })
        .collect();
    let mut node = Tree::new(format!("conditions: {}", summary.join(" ")));
    for c in v.conditions.iter().filter(|c| needs_detail(c)) {
        node.push(Tree::new(format!("{} {}: {}", c.kind, c.reason, c.message)));
    }
    node
}

fn group_node(g: &GroupView, palette: Palette) -> Tree {
    let live = match &g.live {
        Some(live) => palette.paint(GOOD, live),
        None => palette.paint(BAD, "none"),
    };
    let preferred = match &g.live {
        Some(live) if *live == g.preferred_live => String::new(),
        _ => format!(" (preferred {})", g.preferred_live),
    };
    let mut node = Tree::new(format!(
        "group {}: live {live}{preferred}, epoch {}, failovers {}, switchovers {}",
        palette.paint(NAME, &g.name),
        g.epoch,
        g.failovers,
        g.switchovers
    ));
    for m in &g.members {
        node.push(Tree::new(member_line(m, palette)));
    }
    if let Some(s) = &g.switchover {
        node.push(Tree::new(palette.paint(
            NOTE,
            format!("hand-over to {} under way ({:?})", s.to, s.reason),
        )));
    }
    if let Some(f) = &g.last_failover {
        node.push(Tree::new(format!(
            "last change of live: {} -> {} ({:?}) at {}",
            f.from, f.to, f.reason, f.time.0
        )));
    }
    if !g.fenced.is_empty() {
        node.push(Tree::new(
            palette.paint(NOTE, format!("fenced: {}", g.fenced.join(", "))),
        ));
    }
    if let Some(d) = &g.drain {
        let left = d
            .messages_left
            .map_or("unknown".to_string(), |n| n.to_string());
        let mut line = format!(
            "draining since {}: {left} messages left, {} forwarded",
            d.since.0, d.forwarded
        );
        let style = match &d.stuck {
            Some(why) => {
                line.push_str(&format!(", stuck: {why}"));
                BAD
            }
            None => NOTE,
        };
        node.push(Tree::new(palette.paint(style, line)));
    }
    if g.connectors > 0 {
        let mut line = format!("connectors {}/{} linked", g.connectors_linked, g.connectors);
        if !g.unlinked_connectors.is_empty() {
            line.push_str(&format!(", unlinked: {}", g.unlinked_connectors.join(", ")));
        }
        let style = if g.unlinked_connectors.is_empty() {
            GOOD
        } else {
            BAD
        };
        node.push(Tree::new(palette.paint(style, line)));
    }
    if !g.database_unreachable.is_empty() {
        node.push(Tree::new(palette.paint(
            BAD,
            format!(
                "database unreachable from: {}",
                g.database_unreachable.join(", ")
            ),
        )));
    }
    node
}

fn member_line(m: &MemberView, palette: Palette) -> String {
    let role = match m.role.as_str() {
        names::ROLE_LIVE => palette.paint(GOOD, &m.role),
        names::ROLE_BACKUP => m.role.clone(),
        _ => palette.paint(NOTE, &m.role),
    };
    let mut parts = vec![m.pod.clone(), role];
    match m.synced {
        Some(true) => parts.push(palette.paint(GOOD, "synced")),
        Some(false) => parts.push(palette.paint(NOTE, "not synced")),
        None => {}
    }
    if let Some(lag) = m.lag {
        parts.push(format!("lag {lag} B"));
    }
    if m.fenced {
        parts.push(palette.paint(NOTE, "fenced"));
    }
    let pod = match (&m.phase, m.ready) {
        (Some(phase), true) => format!("pod {phase}, ready"),
        (Some(phase), false) => palette.paint(NOTE, format!("pod {phase}, not ready")),
        (None, _) => palette.paint(NOTE, "no pod"),
    };
    parts.push(pod);
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pair after a switchover to its backup, with a fenced third member, a drain, a
    /// connector down and a member away from the database: every branch of the tree.
    fn fixture() -> (BrokerGroup, Vec<Pod>) {
        let bg: BrokerGroup = serde_json::from_value(serde_json::json!({
            "apiVersion": "duomq.io/v1alpha1", "kind": "BrokerGroup",
            "metadata": {"name": "pair", "namespace": "prod"},
            "spec": {"groups": 1, "backupsPerGroup": 2},
            "status": {
                "live": "1/1", "failovers": 1, "switchovers": 2, "linked": "1/2",
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "AllGroupsLive", "message": "every group has a live", "lastTransitionTime": "2026-12-06T10:00:00Z"},
                    {"type": "Degraded", "status": "True", "reason": "ConnectorUnlinked", "message": "pair-g0: to-eu down", "lastTransitionTime": "2026-12-06T10:00:00Z"},
                    {"type": "Hibernated", "status": "False", "reason": "Running", "message": "", "lastTransitionTime": "2026-12-06T10:00:00Z"}
                ],
                "groups": [{
                    "name": "pair-g0", "live": "pair-g0-1", "preferredLive": "pair-g0-0",
                    "epoch": 4, "failovers": 1, "switchovers": 2,
                    "backups": [
                        {"pod": "pair-g0-0", "state": "backup", "synced": true, "lag": 0},
                        {"pod": "pair-g0-2", "state": "unreachable", "synced": false, "lag": 4096}
                    ],
                    "fenced": ["pair-g0-2"],
                    "drain": {"since": "2026-12-06T10:01:00Z", "messagesLeft": 12, "forwarded": 30, "stuck": "no bridge to a remaining group is linked"},
                    "lastFailover": {"time": "2026-12-06T10:02:00Z", "from": "pair-g0-0", "to": "pair-g0-1", "reason": "Switchover"},
                    "connectors": 2, "connectorsLinked": 1, "unlinkedConnectors": ["to-eu"],
                    "databaseUnreachable": ["pair-g0-2"]
                }],
                "grouping": {"localGroup": "pair-g0", "live": "pair-g0-1", "bindings": 3, "remotesConnected": "0/0", "timeouts": 0}
            }
        }))
        .expect("a BrokerGroup");
        let pod = |name: &str, phase: &str, ready: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "prod", "labels": {LABEL_GROUP: "pair-g0"}},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .expect("a Pod")
        };
        (
            bg,
            vec![
                pod("pair-g0-1", "Running", true),
                pod("pair-g0-0", "Running", true),
                pod("pair-g0-2", "Running", false),
            ],
        )
    }

    #[test]
    fn given_a_status_when_viewed_should_list_every_member_in_order_with_its_role_and_pod() {
        let (bg, pods) = fixture();
        let v = build(&bg, &pods);
        let g = &v.groups[0];
        let summary: Vec<_> = g
            .members
            .iter()
            .map(|m| (m.pod.as_str(), m.role.as_str(), m.synced, m.fenced, m.ready))
            .collect();
        assert_eq!(
            summary,
            [
                ("pair-g0-0", "backup", Some(true), false, true),
                ("pair-g0-1", "live", None, false, true),
                ("pair-g0-2", "unreachable", Some(false), true, false),
            ]
        );
        assert_eq!(v.hibernation, "off");
    }

    #[test]
    fn given_a_status_when_rendered_without_colour_should_draw_the_whole_tree() {
        let (bg, pods) = fixture();
        let tree = render_tree(&build(&bg, &pods), Palette { enabled: false });
        let expected = "\
BrokerGroup prod/pair: 1/1 live, failovers 1, switchovers 2, linked 1/2
├── conditions: Available=True Degraded=True Hibernated=False
│   └── Degraded ConnectorUnlinked: pair-g0: to-eu down
├── group pair-g0: live pair-g0-1 (preferred pair-g0-0), epoch 4, failovers 1, switchovers 2
│   ├── pair-g0-0  backup  synced  lag 0 B  pod Running, ready
│   ├── pair-g0-1  live  pod Running, ready
│   ├── pair-g0-2  unreachable  not synced  lag 4096 B  fenced  pod Running, not ready
│   ├── last change of live: pair-g0-0 -> pair-g0-1 (Switchover) at 2026-12-06T10:02:00Z
│   ├── fenced: pair-g0-2
│   ├── draining since 2026-12-06T10:01:00Z: 12 messages left, 30 forwarded, stuck: no bridge to a remaining group is linked
│   ├── connectors 1/2 linked, unlinked: to-eu
│   └── database unreachable from: pair-g0-2
└── grouping handler: local group pair-g0 on pair-g0-1, remotes connected 0/0, timeouts 0, bindings 3
";
        assert_eq!(tree, expected, "\n{tree}");
    }

    #[test]
    fn given_colour_when_rendered_should_mark_problems_and_without_should_have_no_escapes() {
        let (bg, pods) = fixture();
        let v = build(&bg, &pods);
        let coloured = render_tree(&v, Palette { enabled: true });
        let bad = BAD.render().to_string();
        assert!(
            coloured.contains(&format!("{bad}Degraded=True")),
            "{coloured:?}"
        );
        assert!(!render_tree(&v, Palette { enabled: false }).contains('\u{1b}'));
    }

    #[test]
    fn given_a_hibernated_group_without_live_when_rendered_should_say_so() {
        let (mut bg, _) = fixture();
        let status = bg.status.as_mut().expect("status");
        status.conditions[2].status = "True".into();
        status.conditions[2].reason = "Hibernated".into();
        status.groups[0].live = None;
        status.groups[0].backups.clear();
        let v = build(&bg, &[]);
        assert_eq!(v.hibernation, "on");
        let tree = render_tree(&v, Palette { enabled: false });
        assert!(
            tree.lines()
                .next()
                .is_some_and(|l| l.ends_with(", hibernated")),
            "{tree}"
        );
        assert!(
            tree.contains("group pair-g0: live none (preferred pair-g0-0)"),
            "{tree}"
        );
        assert!(tree.contains("pair-g0-0  unknown  no pod"), "{tree}");
    }

    #[test]
    fn given_a_view_when_serialized_should_use_the_status_field_names() {
        let (bg, pods) = fixture();
        let json = serde_json::to_value(build(&bg, &pods)).expect("serializable");
        assert_eq!(json["groups"][0]["preferredLive"], "pair-g0-0");
        assert_eq!(json["groups"][0]["drain"]["messagesLeft"], 12);
        assert_eq!(json["groups"][0]["members"][2]["fenced"], true);
        assert_eq!(json["conditions"][1]["type"], "Degraded");
    }
}
