//! What a side of a bridge asks the other for, and which messages may cross: pure
//! functions over demand entries and message paths, no I/O and no engine state.
//!
//! A demand entry's `path` names the groups it came through, the group with the
//! consumers first; a message's path names the groups that forwarded it, in order. Both
//! stop at `networkTTL` bridges and never return to a group already on their path, so
//! meshes and rings do not loop (ActiveMQ's networkTTL and brokerPath).

use crate::cluster::frame::DemandEntry;
use crate::config::DestinationFilter;
use std::collections::BTreeMap;

/// The message header that carries a forwarded message's path (`g0,g1`), stored with it.
pub const PATH_HEADER: &str = "duomq-network-path";

/// The groups a stored message's path header names.
pub fn message_path(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .find(|(k, _)| k == PATH_HEADER)
        .map(|(_, v)| v.split(',').filter(|g| !g.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether a message that has `path` may cross from `own` to `peer` on a link with
/// `ttl`: it has crossed fewer than `ttl` bridges and has never been in `peer`.
pub fn may_forward(path: &[String], own: &str, peer: &str, ttl: u8) -> bool {
    path.len() < usize::from(ttl) && path.iter().all(|g| g != peer) && own != peer
}

/// A link's destination filters: `excluded` never cross; `included` cross without demand.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub excluded: Vec<DestinationFilter>,
    pub included: Vec<DestinationFilter>,
}

impl Filters {
    pub fn allows(&self, destination: &str) -> bool {
        !self.excluded.iter().any(|f| f.matches(destination))
    }

    pub fn statically_included(&self, destination: &str) -> bool {
        self.allows(destination) && self.included.iter().any(|f| f.matches(destination))
    }
}

/// Another link's view, for relaying its demand: its peer group and what that peer wants.
pub struct OtherLink<'a> {
    pub peer: &'a str,
    pub demand: &'a [DemandEntry],
}

/// What to advertise to `peer` over a link with `ttl`: our own consumers (`local`:
/// destination and consumer count), and demand other links brought us that may travel one
/// more bridge. One entry per destination, sorted: our own first, else the shortest path.
pub fn advertise(
    own: &str,
    peer: &str,
    ttl: u8,
    local: &[(String, u32)],
    others: &[OtherLink<'_>],
    filters: &Filters,
) -> Vec<DemandEntry> {
    let mut out: BTreeMap<&str, DemandEntry> = BTreeMap::new();
    for (destination, consumers) in local {
        if *consumers > 0 && filters.allows(destination) {
            out.insert(destination, DemandEntry { destination: destination.clone(), consumers: *consumers, path: vec![own.to_string()] });
        }
    }
    for other in others.iter().filter(|o| o.peer != peer) {
        for entry in other.demand {
            let relayable = entry.path.len() < usize::from(ttl)
                && !entry.path.iter().any(|g| g == own || g == peer)
                && filters.allows(&entry.destination);
            if !relayable {
                continue;
            }
            let shorter = out.get(entry.destination.as_str()).is_none_or(|e| e.path.len() > entry.path.len() + 1);
            if shorter {
                let mut path = entry.path.clone();
                path.push(own.to_string());
                out.insert(&entry.destination, DemandEntry { destination: entry.destination.clone(), consumers: entry.consumers, path });
            }
        }
    }
    out.into_values().collect()
}

/// The destinations a forwarder should consume for `peer`: what the peer asks for (unless
/// excluded, or its own demand coming back round), plus statically included ones among
/// `existing` local destinations.
pub fn wanted(own: &str, remote: &[DemandEntry], existing: &[String], filters: &Filters) -> Vec<String> {
    let mut out: Vec<String> = remote
        .iter()
        .filter(|e| !e.path.iter().any(|g| g == own) && filters.allows(&e.destination))
        .map(|e| e.destination.clone())
        .chain(existing.iter().filter(|d| filters.statically_included(d)).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn entry(destination: &str, path: &[&str]) -> DemandEntry {
        DemandEntry { destination: destination.into(), consumers: 1, path: path.iter().map(|s| s.to_string()).collect() }
    }

    fn filters(excluded: &[&str], included: &[&str]) -> Filters {
        Filters {
            excluded: excluded.iter().map(|p| DestinationFilter::parse(p).unwrap()).collect(),
            included: included.iter().map(|p| DestinationFilter::parse(p).unwrap()).collect(),
        }
    }

    #[rstest]
    #[case(&[], "b", 1, true)]
    #[case(&["a"], "b", 1, false)]
    #[case(&["a"], "c", 2, true)]
    #[case(&["c", "a"], "c", 3, false)]
    #[case(&[], "a", 1, false)]
    fn given_a_path_should_forward_within_ttl_and_never_back(#[case] path: &[&str], #[case] peer: &str, #[case] ttl: u8, #[case] expected: bool) {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        assert_eq!(may_forward(&path, "a", peer, ttl), expected);
    }

    #[test]
    fn given_ring_with_ttl_one_should_advertise_only_own_consumers() {
        // a - b - c - a: b advertises to a what c wants only with ttl 2.
        let from_c = [entry("/queue/q", &["c"])];
        let others = [OtherLink { peer: "c", demand: &from_c }];
        assert!(advertise("b", "a", 1, &[], &others, &Filters::default()).is_empty());
        let relayed = advertise("b", "a", 2, &[], &others, &Filters::default());
        assert_eq!(relayed, vec![entry("/queue/q", &["c", "b"])]);
    }

    #[test]
    fn given_demand_from_the_peer_itself_should_not_send_it_back() {
        let from_a = [entry("/queue/q", &["a"])];
        let others = [OtherLink { peer: "a", demand: &from_a }];
        assert!(advertise("b", "a", 3, &[], &others, &Filters::default()).is_empty());
        let through_c = [entry("/queue/q", &["a", "c"])];
        let others = [OtherLink { peer: "c", demand: &through_c }];
        assert!(advertise("b", "a", 3, &[], &others, &Filters::default()).is_empty());
    }

    #[test]
    fn given_local_and_relayed_demand_should_keep_local_and_drop_excluded() {
        let from_c = [entry("/queue/q", &["c"]), entry("/queue/audit.x", &["c"])];
        let others = [OtherLink { peer: "c", demand: &from_c }];
        let local = [("/queue/q".to_string(), 2), ("/queue/idle".to_string(), 0)];
        let got = advertise("b", "a", 2, &local, &others, &filters(&["/queue/audit.>"], &[]));
        assert_eq!(got, vec![DemandEntry { destination: "/queue/q".into(), consumers: 2, path: vec!["b".into()] }]);
    }

    #[test]
    fn given_remote_demand_and_static_includes_should_want_both_but_not_excluded_or_own() {
        let remote = [entry("/queue/a", &["b"]), entry("/queue/mine", &["a", "b"]), entry("/queue/secret", &["b"])];
        let existing = ["/queue/s.1".to_string(), "/queue/t".to_string()];
        let got = wanted("a", &remote, &existing, &filters(&["/queue/secret"], &["/queue/s.>"]));
        assert_eq!(got, vec!["/queue/a".to_string(), "/queue/s.1".to_string()]);
    }

    #[test]
    fn given_path_header_should_read_groups() {
        let headers = vec![("x".to_string(), "1".to_string()), (PATH_HEADER.to_string(), "g0,g1".to_string())];
        assert_eq!(message_path(&headers), vec!["g0".to_string(), "g1".to_string()]);
        assert!(message_path(&[]).is_empty());
    }
}
