//! The grouping part of the status: which group holds the LOCAL grouping handler, the pod
//! running it, its bindings, how many REMOTE handlers are linked to it, and the event when
//! the handler moves to another member (its group failed over, its bindings with it). Pure:
//! it reads the lives' `/status` as the controller observed them and never asks a broker.

use duomq_broker::admin::api::{BrokerStatus, GroupingHandlerKind};

use crate::api::GroupingHandlerStatus;
use crate::status::reason::{Reason, Transition};

/// One group of the BrokerGroup as the grouping status needs it.
#[derive(Debug, Clone, Copy)]
pub struct GroupLive<'a> {
    pub name: &'a str,
    /// The group's live pod, if any.
    pub live: Option<&'a str>,
    /// That live's `/status`, if it answered.
    pub status: Option<&'a BrokerStatus>,
    /// The live the previous status named, or the last one seen while the group had none.
    pub last_live: Option<&'a str>,
}

/// The grouping status of a BrokerGroup whose `local` group holds the LOCAL handler (the
/// other groups' lives are REMOTE), and the event when the handler's group has a new live.
pub fn handler_status(
    local: &str,
    groups: &[GroupLive<'_>],
) -> (GroupingHandlerStatus, Option<Transition>) {
    let handler = groups.iter().find(|g| g.name == local);
    let live = handler.and_then(|g| g.live).map(String::from);
    let bindings = handler
        .and_then(|g| g.status)
        .and_then(|s| s.grouping.as_ref())
        .filter(|g| g.handler == GroupingHandlerKind::Local)
        .map(|g| i64::try_from(g.bindings).unwrap_or(i64::MAX));
    let remotes: Vec<_> = groups
        .iter()
        .filter(|g| g.name != local)
        .map(|g| {
            g.status
                .and_then(|s| s.grouping.as_ref())
                .filter(|r| r.handler == GroupingHandlerKind::Remote)
        })
        .collect();
    let connected = remotes
        .iter()
        .filter(|r| r.is_some_and(|r| r.connected))
        .count();
    let timeouts: u64 = remotes.iter().flatten().map(|r| r.timeouts_total).sum();
    let status = GroupingHandlerStatus {
        local_group: local.to_string(),
        live: live.clone(),
        bindings,
        remotes_connected: format!("{connected}/{}", remotes.len()),
        timeouts: i64::try_from(timeouts).unwrap_or(i64::MAX),
    };
    let moved = match (handler.and_then(|g| g.last_live), live.as_deref()) {
        (Some(from), Some(to)) if from != to => Some(Transition {
            reason: Reason::GroupingHandlerMoved,
            note: format!(
                "the LOCAL grouping handler of group {local} moved from {from} to {to}{}",
                bindings.map_or_else(String::new, |n| format!(" with {n} bindings"))
            ),
        }),
        _ => None,
    };
    (status, moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duomq_broker::admin::api::{GroupingStatus, Role};
    use rstest::rstest;

    fn live(
        kind: GroupingHandlerKind,
        bindings: u64,
        connected: bool,
        timeouts: u64,
    ) -> BrokerStatus {
        BrokerStatus {
            grouping: Some(GroupingStatus {
                handler: kind,
                group: "x".into(),
                bindings,
                proposals_total: 0,
                timeouts_total: timeouts,
                reaped_total: 0,
                connected,
                linked_to: None,
                last_error: None,
            }),
            ..BrokerStatus::bare("x", Role::Live)
        }
    }

    fn group<'a>(
        name: &'a str,
        pod: Option<&'a str>,
        status: Option<&'a BrokerStatus>,
    ) -> GroupLive<'a> {
        GroupLive {
            name,
            live: pod,
            status,
            last_live: pod,
        }
    }

    #[rstest]
    // both remotes linked
    #[case(true, true, "2/2")]
    // one remote's link to the handler is down
    #[case(true, false, "1/2")]
    #[case(false, false, "0/2")]
    fn given_the_lives_statuses_should_name_the_handler_its_bindings_and_linked_remotes(
        #[case] first: bool,
        #[case] second: bool,
        #[case] expected: &str,
    ) {
        let handler = live(GroupingHandlerKind::Local, 30, true, 0);
        let (r1, r2) = (
            live(GroupingHandlerKind::Remote, 12, first, 1),
            live(GroupingHandlerKind::Remote, 9, second, 2),
        );
        let groups = [
            group("o-g0", Some("o-g0-0"), Some(&handler)),
            group("o-g1", Some("o-g1-0"), Some(&r1)),
            group("o-g2", Some("o-g2-1"), Some(&r2)),
        ];
        let (status, moved) = handler_status("o-g0", &groups);
        assert_eq!(
            status,
            GroupingHandlerStatus {
                local_group: "o-g0".into(),
                live: Some("o-g0-0".into()),
                bindings: Some(30),
                remotes_connected: expected.into(),
                timeouts: 3,
            }
        );
        assert_eq!(moved, None, "the same live as before: no event");
    }

    #[test]
    fn given_the_handlers_group_without_a_live_should_name_no_pod_and_count_no_bindings() {
        let remote = live(GroupingHandlerKind::Remote, 4, false, 0);
        let groups = [
            group("o-g0", None, None),
            group("o-g1", Some("o-g1-0"), Some(&remote)),
            group("o-g2", None, None),
        ];
        let (status, _) = handler_status("o-g0", &groups);
        assert_eq!((status.live, status.bindings), (None, None));
        assert_eq!(
            status.remotes_connected, "0/2",
            "a group without a live is not linked"
        );
    }

    #[test]
    fn given_a_broker_without_a_grouping_section_should_count_no_bindings() {
        let mut plain = live(GroupingHandlerKind::Local, 0, true, 0);
        plain.grouping = None;
        let groups = [group("o-g0", Some("o-g0-0"), Some(&plain))];
        let (status, _) = handler_status("o-g0", &groups);
        assert_eq!(status.bindings, None);
        assert_eq!(status.remotes_connected, "0/0");
    }

    #[test]
    fn given_the_handlers_group_failed_over_should_name_the_new_live_and_emit_one_event() {
        let handler = live(GroupingHandlerKind::Local, 200, true, 0);
        // the group without a live for a moment: no event yet, and no pod named
        let gap = [GroupLive {
            name: "o-g0",
            live: None,
            status: None,
            last_live: Some("o-g0-0"),
        }];
        let (during, none) = handler_status("o-g0", &gap);
        assert_eq!((during.live, none), (None, None));

        let moved = [GroupLive {
            name: "o-g0",
            live: Some("o-g0-1"),
            status: Some(&handler),
            last_live: Some("o-g0-0"),
        }];
        let (after, event) = handler_status("o-g0", &moved);
        assert_eq!(after.live.as_deref(), Some("o-g0-1"));
        let event = event.expect("an event");
        assert_eq!(
            (event.reason, event.warning()),
            (Reason::GroupingHandlerMoved, false)
        );
        assert_eq!(
            event.note,
            "the LOCAL grouping handler of group o-g0 moved from o-g0-0 to o-g0-1 with 200 bindings"
        );
        let (_, again) = handler_status("o-g0", &[group("o-g0", Some("o-g0-1"), Some(&handler))]);
        assert_eq!(again, None, "one event per move");
    }
}
