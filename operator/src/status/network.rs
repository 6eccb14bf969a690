//! The network part of the status: per group how many of its live's connectors are linked,
//! which have not linked for a minute or more, the `NetworkLinked` condition and the events
//! when a connector stops or starts linking. Pure: it reads the lives' `/status` as the
//! controller observed them and never asks a broker itself.

use duomq_broker::admin::api::{BrokerStatus, LinkState, LinkStatus};

/// How long a connector may stay unlinked (connecting or refused) before the BrokerGroup
/// says so: long enough for a remote failover or a rolling upgrade of the remote group.
pub const UNLINKED_AFTER_SECONDS: u64 = 60;

/// The `NetworkLinked` condition's reasons.
pub mod reason {
    /// Every connector of every group is linked.
    pub const ALL_CONNECTORS_LINKED: &str = "AllConnectorsLinked";
    /// Some connectors are not linked yet, none for a minute or more (a link reconnecting
    /// after a remote failover, a group without a live).
    pub const CONNECTORS_LINKING: &str = "ConnectorsLinking";
    /// No group has a connector (a single group with no `networkConnectors`).
    pub const NO_CONNECTORS: &str = "NoConnectors";
    /// A connector has not linked for a minute or more; also the Warning event's reason.
    pub const CONNECTOR_UNLINKED: &str = "ConnectorUnlinked";
    /// The Normal event when such a connector links again.
    pub const CONNECTOR_LINKED: &str = "ConnectorLinked";
}

/// A connector of a group's live that has not been linked for [`UNLINKED_AFTER_SECONDS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlinked {
    pub connector: String,
    /// The state of its longest-unlinked link.
    pub state: LinkState,
    pub seconds: u64,
    pub last_error: Option<String>,
}

/// One group's connectors as its live reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupNetwork {
    /// Connectors the group's config has.
    pub connectors: usize,
    /// Of those, the ones whose every link is up.
    pub linked: usize,
    /// Of those, the ones unlinked for a minute or more, in config order.
    pub unlinked: Vec<Unlinked>,
    /// Connectors that linked since the previous look, having been unlinked before.
    pub relinked: Vec<String>,
}

fn state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Connecting => "connecting",
        LinkState::Linked => "linked",
        LinkState::Refused => "refused",
    }
}

impl Unlinked {
    /// `connector pair-g1 refused: wrong password`, for condition messages (no seconds, so the
    /// message does not change on every look).
    fn describe(&self) -> String {
        let mut text = format!("connector {} {}", self.connector, state_name(self.state));
        if let Some(error) = &self.last_error {
            text.push_str(": ");
            text.push_str(error);
        }
        text
    }
}

/// The group's network from its live's `/status` (`None` when the group has no live or it
/// did not answer: nothing is linked then and nothing is judged). `expected` are the
/// connector names of the group's config; `before` the names listed unlinked last time.
pub fn group_network(
    expected: &[String],
    live: Option<&BrokerStatus>,
    before: &[String],
) -> GroupNetwork {
    let mut out = GroupNetwork {
        connectors: expected.len(),
        ..GroupNetwork::default()
    };
    let Some(network) = live.and_then(|b| b.network.as_ref()) else {
        return out;
    };
    for name in expected {
        let Some(connector) = network.connectors.iter().find(|c| &c.name == name) else {
            continue;
        };
        if connector.linked() {
            out.linked += 1;
            if before.contains(name) {
                out.relinked.push(name.clone());
            }
            continue;
        }
        let worst: Option<&LinkStatus> = connector
            .links
            .iter()
            .filter(|l| l.state != LinkState::Linked)
            .max_by_key(|l| l.state_seconds);
        if let Some(link) = worst.filter(|l| l.state_seconds >= UNLINKED_AFTER_SECONDS) {
            out.unlinked.push(Unlinked {
                connector: name.clone(),
                state: link.state,
                seconds: link.state_seconds,
                last_error: link.last_error.clone(),
            });
        }
    }
    out
}

/// A connector newly unlinked for a minute, for its Warning event.
pub fn unlinked_note(group: &str, u: &Unlinked) -> String {
    let mut note = format!(
        "group {group}: connector {} has not linked for {}s ({}",
        u.connector,
        u.seconds,
        state_name(u.state)
    );
    if let Some(error) = &u.last_error {
        note.push_str(": ");
        note.push_str(error);
    }
    note.push(')');
    note
}

/// The `NetworkLinked` condition from every group's network: (status, reason, message).
pub fn condition(groups: &[(String, GroupNetwork)]) -> (bool, &'static str, String) {
    let total: usize = groups.iter().map(|(_, n)| n.connectors).sum();
    let linked: usize = groups.iter().map(|(_, n)| n.linked).sum();
    let unlinked: Vec<String> = groups
        .iter()
        .flat_map(|(group, n)| {
            n.unlinked
                .iter()
                .map(move |u| format!("group {group}: {}", u.describe()))
        })
        .collect();
    if total == 0 {
        (
            true,
            reason::NO_CONNECTORS,
            "no group has a network connector".into(),
        )
    } else if linked == total {
        (
            true,
            reason::ALL_CONNECTORS_LINKED,
            format!("every connector is linked ({linked}/{total})"),
        )
    } else if unlinked.is_empty() {
        (
            true,
            reason::CONNECTORS_LINKING,
            format!("{linked}/{total} connectors linked; none has been unlinked for {UNLINKED_AFTER_SECONDS}s or more"),
        )
    } else {
        (
            false,
            reason::CONNECTOR_UNLINKED,
            format!(
                "not linked for {UNLINKED_AFTER_SECONDS}s or more: {}",
                unlinked.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duomq_broker::admin::api::{ConnectorStatus, NetworkStatus, Role};
    use rstest::rstest;

    fn link(state: LinkState, seconds: u64, error: Option<&str>) -> LinkStatus {
        LinkStatus {
            target: "masterslave:(tcp://b-0:61616,tcp://b-1:61616)".into(),
            state,
            state_seconds: seconds,
            linked_to: None,
            remote_node: None,
            remote_group: None,
            last_error: error.map(String::from),
            remote_demand: Vec::new(),
            remote_demand_count: 0,
            local_demand_count: 0,
            forwarded_out: 0,
            forwarded_in: 0,
        }
    }

    fn live(connectors: Vec<(&str, Vec<LinkStatus>)>) -> BrokerStatus {
        BrokerStatus {
            network: Some(NetworkStatus {
                connectors: connectors
                    .into_iter()
                    .map(|(name, links)| ConnectorStatus {
                        name: name.into(),
                        uri: String::new(),
                        duplex: false,
                        links,
                    })
                    .collect(),
                inbound: Vec::new(),
            }),
            ..BrokerStatus::bare("a-0", Role::Live)
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[rstest]
    // linked, connecting briefly, refused for long, missing from the report
    #[case(vec![("g1", vec![link(LinkState::Linked, 5, None)])], 1, vec![])]
    #[case(vec![("g1", vec![link(LinkState::Connecting, 59, Some("connection refused"))])], 0, vec![])]
    #[case(vec![("g1", vec![link(LinkState::Connecting, 60, Some("connection refused"))])], 0, vec!["g1"])]
    #[case(vec![("g1", vec![link(LinkState::Refused, 600, Some("wrong password"))])], 0, vec!["g1"])]
    // static:(…) with one link down: not linked, judged by the down link
    #[case(vec![("g1", vec![link(LinkState::Linked, 900, None), link(LinkState::Connecting, 61, None)])], 0, vec!["g1"])]
    // a connector with no link yet is not linked, but not judged either
    #[case(vec![("g1", vec![])], 0, vec![])]
    #[case(vec![], 0, vec![])]
    // a connector the config no longer has does not count
    #[case(vec![("g1", vec![link(LinkState::Linked, 5, None)]), ("old", vec![link(LinkState::Refused, 900, None)])], 1, vec![])]
    fn given_a_lives_links_should_count_linked_and_name_those_down_for_a_minute(
        #[case] connectors: Vec<(&str, Vec<LinkStatus>)>,
        #[case] linked: usize,
        #[case] unlinked: Vec<&str>,
    ) {
        let n = group_network(&names(&["g1"]), Some(&live(connectors)), &[]);
        assert_eq!(n.connectors, 1);
        assert_eq!(n.linked, linked);
        let got: Vec<&str> = n.unlinked.iter().map(|u| u.connector.as_str()).collect();
        assert_eq!(got, unlinked);
    }

    #[test]
    fn given_no_live_should_count_nothing_linked_and_judge_nothing() {
        let n = group_network(&names(&["g1", "g2"]), None, &names(&["g1"]));
        assert_eq!((n.connectors, n.linked), (2, 0));
        assert!(n.unlinked.is_empty() && n.relinked.is_empty());
    }

    #[test]
    fn given_a_connector_unlinked_before_when_linked_now_should_report_it_relinked() {
        let status = live(vec![
            ("g1", vec![link(LinkState::Linked, 3, None)]),
            ("g2", vec![link(LinkState::Linked, 3, None)]),
        ]);
        let n = group_network(&names(&["g1", "g2"]), Some(&status), &names(&["g2"]));
        assert_eq!(n.relinked, names(&["g2"]));
    }

    #[rstest]
    #[case(vec![], true, reason::NO_CONNECTORS)]
    #[case(vec![("a-g0", 1, 1, false)], true, reason::ALL_CONNECTORS_LINKED)]
    #[case(vec![("a-g0", 1, 0, false)], true, reason::CONNECTORS_LINKING)]
    #[case(vec![("a-g0", 1, 1, false), ("a-g1", 1, 0, true)], false, reason::CONNECTOR_UNLINKED)]
    fn given_groups_networks_should_set_network_linked(
        #[case] groups: Vec<(&str, usize, usize, bool)>,
        #[case] on: bool,
        #[case] expected: &str,
    ) {
        let groups: Vec<(String, GroupNetwork)> = groups
            .into_iter()
            .map(|(name, connectors, linked, down)| {
                let unlinked = if down {
                    vec![Unlinked {
                        connector: "to-billing-billing-g0".into(),
                        state: LinkState::Refused,
                        seconds: 75,
                        last_error: Some("wrong password".into()),
                    }]
                } else {
                    Vec::new()
                };
                (
                    name.to_string(),
                    GroupNetwork {
                        connectors,
                        linked,
                        unlinked,
                        relinked: Vec::new(),
                    },
                )
            })
            .collect();
        let (status, reason, message) = condition(&groups);
        assert_eq!((status, reason), (on, expected), "{message}");
        if !on {
            assert!(
                message.contains(
                    "group a-g1: connector to-billing-billing-g0 refused: wrong password"
                ),
                "names group, connector and error: {message}"
            );
        }
    }

    #[test]
    fn given_an_unlinked_connector_should_write_a_note_with_group_connector_seconds_and_error() {
        let u = Unlinked {
            connector: "a-g1".into(),
            state: LinkState::Connecting,
            seconds: 64,
            last_error: Some("connection refused".into()),
        };
        assert_eq!(
            unlinked_note("a-g0", &u),
            "group a-g0: connector a-g1 has not linked for 64s (connecting: connection refused)"
        );
    }
}
