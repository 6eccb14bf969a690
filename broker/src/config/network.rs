//! The `network` and `grouping` sections of `broker.yaml`: store-and-forward bridges to
//! other groups (ActiveMQ networks of brokers) and the clustered message-grouping handler
//! (Artemis LOCAL/REMOTE). Types and checks only; the bridges run in `crate::network`,
//! the grouping handler in `crate::grouping`.

use super::connector_uri::{ConnectorUri, UriKind};
use super::{invalid, ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Bridges from this broker to other groups.
    pub connectors: Vec<NetworkConnector>,
}

/// Longest `networkTTL`: more hops than any sane mesh needs.
pub const MAX_NETWORK_TTL: u8 = 16;
/// Most destination filters per list.
pub const MAX_FILTERS: usize = 64;

/// One store-and-forward bridge to another group (ActiveMQ's `networkConnector`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConnector {
    /// Unique among this broker's connectors; names the bridge in logs and metrics.
    pub name: String,
    /// `masterslave:(tcp://a:61616,tcp://b:61616)` for the members of one group (cluster
    /// ports), `static:(tcp://...,...)` for independent brokers, or one `tcp://host:port`.
    pub uri: String,
    /// Also carry messages back from the remote side over the same link.
    #[serde(default)]
    pub duplex: bool,
    /// How many bridges a message or a consumer's demand may cross (ActiveMQ's networkTTL).
    #[serde(default = "default_ttl", rename = "networkTTL")]
    pub network_ttl: u8,
    /// Forward only what a remote consumer asks for: no statically included destinations.
    #[serde(default)]
    pub dynamic_only: bool,
    /// Remote consumers rank below local ones: a queue's messages cross the bridge only
    /// when local consumers are busy or absent.
    #[serde(default = "yes")]
    pub decrease_network_consumer_priority: bool,
    /// One subscription per topic per link, however many subscribers the remote has.
    #[serde(default = "yes")]
    pub conduit_subscriptions: bool,
    /// Never forwarded: `/queue/NAME` or `/topic/NAME` patterns, `*` one dot-separated
    /// word, `>` the rest (`/queue/audit.>`).
    #[serde(default)]
    pub excluded_destinations: Vec<String>,
    /// Forwarded even with no remote consumer (same pattern syntax).
    #[serde(default)]
    pub statically_included_destinations: Vec<String>,
    /// Messages in flight on this bridge before the remote confirms them.
    #[serde(default = "default_prefetch")]
    pub prefetch_size: usize,
    /// A queue's message with no local consumer left may cross to a group that wants it
    /// even back where it came from or past networkTTL, so a consumer that moved to
    /// another group (a client Service, a failover) still gets it (ActiveMQ's
    /// replayWhenNoConsumers, on by default here).
    #[serde(default = "yes")]
    pub replay_when_no_consumers: bool,
    /// The remote group's cluster password, when it is not this broker's own (a bridge
    /// to another BrokerGroup); prefer `passwordFile`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

fn default_ttl() -> u8 {
    1
}
fn yes() -> bool {
    true
}
fn default_prefetch() -> usize {
    1000
}

impl std::fmt::Debug for NetworkConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkConnector")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("duplex", &self.duplex)
            .field("network_ttl", &self.network_ttl)
            .field("dynamic_only", &self.dynamic_only)
            .field("decrease_network_consumer_priority", &self.decrease_network_consumer_priority)
            .field("conduit_subscriptions", &self.conduit_subscriptions)
            .field("excluded_destinations", &self.excluded_destinations)
            .field("statically_included_destinations", &self.statically_included_destinations)
            .field("prefetch_size", &self.prefetch_size)
            .field("replay_when_no_consumers", &self.replay_when_no_consumers)
            .field("password", &if self.password.is_empty() { "" } else { "<redacted>" })
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl NetworkConnector {
    /// A connector with every option at its default.
    pub fn new(name: impl Into<String>, uri: impl Into<String>) -> NetworkConnector {
        NetworkConnector {
            name: name.into(),
            uri: uri.into(),
            duplex: false,
            network_ttl: default_ttl(),
            dynamic_only: false,
            decrease_network_consumer_priority: true,
            conduit_subscriptions: true,
            excluded_destinations: Vec::new(),
            statically_included_destinations: Vec::new(),
            prefetch_size: default_prefetch(),
            replay_when_no_consumers: true,
            password: String::new(),
            password_file: None,
        }
    }

    /// The parsed `uri`.
    pub fn parsed_uri(&self) -> Result<ConnectorUri, super::connector_uri::UriError> {
        self.uri.parse()
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let invalid = |message: String| invalid("network.connectors", format!("connector {i} ({:?}): {message}", self.name));
        if let Err(e) = self.parsed_uri() {
            return invalid(format!("uri {:?}: {e}", self.uri));
        }
        if self.network_ttl == 0 || self.network_ttl > MAX_NETWORK_TTL {
            return invalid(format!("networkTTL must be from 1 to {MAX_NETWORK_TTL}, not {}", self.network_ttl));
        }
        if !self.conduit_subscriptions {
            return invalid(
                "conduitSubscriptions: false is not supported yet: a topic crosses each bridge once and the remote side copies it to its subscribers; remove the field".into(),
            );
        }
        if self.dynamic_only && !self.statically_included_destinations.is_empty() {
            return invalid(
                "dynamicOnly forwards only what remote consumers ask for, so it cannot have staticallyIncludedDestinations: remove one of the two".into(),
            );
        }
        if self.prefetch_size == 0 || self.prefetch_size > 65_536 {
            return invalid(format!("prefetchSize must be from 1 to 65536, not {}", self.prefetch_size));
        }
        for (field, list) in [
            ("excludedDestinations", &self.excluded_destinations),
            ("staticallyIncludedDestinations", &self.statically_included_destinations),
        ] {
            if list.len() > MAX_FILTERS {
                return invalid(format!("{field} has {} patterns; at most {MAX_FILTERS}", list.len()));
            }
            for pattern in list {
                if let Err(e) = DestinationFilter::parse(pattern) {
                    return invalid(format!("{field}: {e}"));
                }
            }
        }
        if !self.password.is_empty() && self.password_file.is_some() {
            return invalid("set password or passwordFile, not both".into());
        }
        Ok(())
    }
}

/// A destination pattern as ActiveMQ writes them, on our names: `/queue/` or `/topic/`
/// then dot-separated words, `*` matching one word and a final `>` one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationFilter {
    queue: bool,
    words: Vec<String>,
}

impl DestinationFilter {
    pub fn parse(pattern: &str) -> Result<DestinationFilter, String> {
        let (queue, rest) = match (pattern.strip_prefix("/queue/"), pattern.strip_prefix("/topic/")) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => return Err(format!("pattern {pattern:?} must start with /queue/ or /topic/")),
        };
        if rest.is_empty() {
            return Err(format!("pattern {pattern:?} needs a name after the prefix (use > for all)"));
        }
        let words: Vec<String> = rest.split('.').map(str::to_string).collect();
        if let Some(at) = words.iter().position(|w| w == ">") {
            if at != words.len() - 1 {
                return Err(format!("pattern {pattern:?}: > may only be the last word"));
            }
        }
        if words.iter().any(String::is_empty) {
            return Err(format!("pattern {pattern:?} has an empty word (two dots in a row, or a dot at an end)"));
        }
        Ok(DestinationFilter { queue, words })
    }

    /// Whether `destination` (`/queue/NAME` or `/topic/NAME`) matches.
    pub fn matches(&self, destination: &str) -> bool {
        let name = match (self.queue, destination.strip_prefix("/queue/"), destination.strip_prefix("/topic/")) {
            (true, Some(name), _) | (false, _, Some(name)) => name,
            _ => return false,
        };
        let mut parts = name.split('.');
        for word in &self.words {
            if word == ">" {
                // One or more words, as ActiveMQ's `>`.
                return parts.next().is_some();
            }
            match parts.next() {
                Some(part) if word == "*" || word == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GroupingConfig {
    /// `none`: message groups are pinned per broker only. `local`: this broker decides
    /// group-to-consumer bindings for the whole cluster. `remote`: this broker asks the
    /// local handler at `address`.
    pub handler: GroupingHandler,
    /// With `remote`: the group of the local handler, `masterslave:(tcp://...,...)`.
    pub address: Option<String>,
    /// How long a decision may take (a remote handler asking, the local handler making its
    /// binding durable) before the message is refused. With a handler only, as are
    /// `groupTimeout` and `reaperPeriod`.
    pub timeout: HumanDuration,
    /// A cluster binding unused this long is removed by the local handler's reaper (and
    /// forgotten by the remote handlers' caches); `0s` keeps bindings forever.
    pub group_timeout: HumanDuration,
    /// How often the reaper looks for unused bindings.
    pub reaper_period: HumanDuration,
    /// Group bindings a queue keeps, on every broker: past it, the least recently used
    /// idle binding is dropped (its group binds afresh); the local handler refuses a new
    /// group for a queue that holds this many cluster bindings.
    pub max_groups: usize,
}

/// Default for `grouping.maxGroups`.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;

impl Default for GroupingConfig {
    fn default() -> GroupingConfig {
        GroupingConfig {
            handler: GroupingHandler::None,
            address: None,
            timeout: HumanDuration::secs(5),
            group_timeout: HumanDuration::secs(3600),
            reaper_period: HumanDuration::secs(30),
            max_groups: DEFAULT_MAX_GROUPS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupingHandler {
    None,
    Local,
    Remote,
}

impl NetworkConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| invalid("network.connectors", message);
        for (i, c) in self.connectors.iter().enumerate() {
            if c.name.trim().is_empty() {
                return invalid(format!("connector {i} needs a name"));
            }
            if self.connectors[..i].iter().any(|other| other.name == c.name) {
                return invalid(format!("connector {i}: name {:?} is used twice", c.name));
            }
            c.validate(i)?;
        }
        Ok(())
    }
}

impl GroupingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.get().is_zero() {
            return invalid("grouping.timeout", "must be longer than 0s");
        }
        if self.reaper_period.get().is_zero() {
            return invalid("grouping.reaperPeriod", "must be longer than 0s");
        }
        if self.max_groups == 0 {
            return invalid("grouping.maxGroups", "must be at least 1");
        }
        if self.handler == GroupingHandler::None {
            let defaults = GroupingConfig::default();
            for (field, set) in [
                ("grouping.timeout", self.timeout != defaults.timeout),
                ("grouping.groupTimeout", self.group_timeout != defaults.group_timeout),
                ("grouping.reaperPeriod", self.reaper_period != defaults.reaper_period),
            ] {
                if set {
                    return invalid(field, "applies to a grouping handler only: set grouping.handler to local or remote, or leave it out");
                }
            }
        }
        match (self.handler, &self.address) {
            (GroupingHandler::Remote, None) => {
                invalid("grouping.address", "is required with handler remote: masterslave:(tcp://...) of the local handler's group")
            }
            (GroupingHandler::Remote, Some(address)) => match address.parse::<ConnectorUri>() {
                Ok(uri) if uri.kind == UriKind::MasterSlave => Ok(()),
                Ok(_) => invalid("grouping.address", format!("{address:?} must be a masterslave:(...) list of the local handler's group")),
                Err(e) => invalid("grouping.address", format!("{address:?}: {e}")),
            },
            (handler, Some(_)) => invalid(
                "grouping.address",
                format!("must not be set with handler {}: only a remote handler names the local one", handler.name()),
            ),
            (_, None) => Ok(()),
        }
    }
}

impl GroupingHandler {
    pub fn name(self) -> &'static str {
        match self {
            GroupingHandler::None => "none",
            GroupingHandler::Local => "local",
            GroupingHandler::Remote => "remote",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn connector(name: &str, uri: &str) -> NetworkConnector {
        NetworkConnector::new(name, uri)
    }

    fn network_error(connectors: Vec<NetworkConnector>) -> String {
        NetworkConfig { connectors }.validate().unwrap_err().to_string()
    }

    #[test]
    fn given_valid_connectors_should_accept_them() {
        let net = NetworkConfig {
            connectors: vec![connector("to-g2", "masterslave:(tcp://g2-0:61616,tcp://g2-1:61616)"), connector("edge", "tcp://edge:61616")],
        };
        assert!(net.validate().is_ok());
    }

    #[test]
    fn given_bad_uri_should_name_field_connector_and_problem() {
        let err = network_error(vec![connector("to-g2", "masterslave:(tcp://g2-0)")]);
        assert!(err.contains("network.connectors") && err.contains("to-g2") && err.contains("needs a port"), "{err}");
    }

    #[rstest]
    #[case(vec![connector("", "tcp://a:1")], "needs a name")]
    #[case(vec![connector("x", "tcp://a:1"), connector("x", "tcp://b:1")], "used twice")]
    fn given_bad_names_should_be_refused(#[case] connectors: Vec<NetworkConnector>, #[case] expected: &str) {
        let err = network_error(connectors);
        assert!(err.contains(expected), "{err}");
    }

    #[rstest]
    #[case(GroupingHandler::None, None, true)]
    #[case(GroupingHandler::Local, None, true)]
    #[case(GroupingHandler::Remote, Some("masterslave:(tcp://g1-0:61616,tcp://g1-1:61616)"), true)]
    #[case(GroupingHandler::Remote, None, false)]
    #[case(GroupingHandler::Remote, Some("tcp://g1-0:61616"), false)]
    #[case(GroupingHandler::Remote, Some("masterslave:(g1-0)"), false)]
    #[case(GroupingHandler::Local, Some("masterslave:(tcp://g1-0:61616)"), false)]
    fn given_handler_and_address_should_require_address_exactly_for_remote(
        #[case] handler: GroupingHandler,
        #[case] address: Option<&str>,
        #[case] valid: bool,
    ) {
        let grouping = GroupingConfig { handler, address: address.map(str::to_string), ..GroupingConfig::default() };
        let result = grouping.validate();
        assert_eq!(result.is_ok(), valid, "{result:?}");
        if let Err(e) = result {
            assert!(e.to_string().contains("grouping.address"), "{e}");
        }
    }

    #[rstest]
    #[case("/queue/orders", "/queue/orders", true)]
    #[case("/queue/orders", "/topic/orders", false)]
    #[case("/queue/orders.>", "/queue/orders.eu.new", true)]
    #[case("/queue/orders.>", "/queue/orders", false)]
    #[case("/queue/>", "/queue/anything.at.all", true)]
    #[case("/topic/*.prices", "/topic/eu.prices", true)]
    #[case("/topic/*.prices", "/topic/eu.x.prices", false)]
    #[case("/topic/*.prices", "/topic/prices", false)]
    fn given_pattern_should_match_as_activemq_wildcards(#[case] pattern: &str, #[case] destination: &str, #[case] expected: bool) {
        assert_eq!(DestinationFilter::parse(pattern).unwrap().matches(destination), expected);
    }

    #[rstest]
    #[case(NetworkConnector { network_ttl: 0, ..connector("a", "tcp://a:1") }, "networkTTL")]
    #[case(NetworkConnector { conduit_subscriptions: false, ..connector("a", "tcp://a:1") }, "conduitSubscriptions")]
    #[case(NetworkConnector { dynamic_only: true, statically_included_destinations: vec!["/queue/x".into()], ..connector("a", "tcp://a:1") }, "dynamicOnly")]
    #[case(NetworkConnector { excluded_destinations: vec!["orders".into()], ..connector("a", "tcp://a:1") }, "excludedDestinations")]
    #[case(NetworkConnector { statically_included_destinations: vec!["/queue/>.x".into()], ..connector("a", "tcp://a:1") }, "> may only be the last")]
    fn given_bad_connector_options_should_name_them(#[case] c: NetworkConnector, #[case] expected: &str) {
        let err = network_error(vec![c]);
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn given_zero_timeout_should_name_field() {
        let grouping = GroupingConfig { timeout: HumanDuration::secs(0), ..GroupingConfig::default() };
        assert!(grouping.validate().unwrap_err().to_string().contains("grouping.timeout"));
    }

    #[test]
    fn given_handler_settings_without_a_handler_should_refuse_them_and_take_them_with_one() {
        let none = GroupingConfig { group_timeout: HumanDuration::secs(60), ..GroupingConfig::default() };
        let err = none.validate().unwrap_err().to_string();
        assert!(err.contains("grouping.groupTimeout") && err.contains("handler"), "{err}");
        let local = GroupingConfig { handler: GroupingHandler::Local, ..none };
        assert!(local.validate().is_ok());
    }
}
