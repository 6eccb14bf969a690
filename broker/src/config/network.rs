//! The `network` and `grouping` sections of `broker.yaml`: store-and-forward bridges to
//! other groups (ActiveMQ networks of brokers) and the clustered message-grouping handler
//! (Artemis LOCAL/REMOTE). Types and checks only.
//!
//! Neither is active in the broker yet: both are accepted and validated so the operator
//! can render complete host-pair layouts today, and the broker says at start that they do
//! nothing (see [`BrokerConfig::inactive_features`](super::BrokerConfig::inactive_features)).

use super::connector_uri::{ConnectorUri, UriKind};
use super::{invalid, ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Bridges from this broker to other groups.
    pub connectors: Vec<NetworkConnector>,
}

/// One store-and-forward bridge to another group (ActiveMQ's `networkConnector`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConnector {
    /// Unique among this broker's connectors; names the bridge in logs and metrics.
    pub name: String,
    /// `masterslave:(tcp://a:61616,tcp://b:61616)` for the members of one group,
    /// `static:(tcp://...,...)` for independent brokers, or one `tcp://host:port`.
    pub uri: String,
    /// Also carry messages back from the remote side over the same bridge.
    #[serde(default)]
    pub duplex: bool,
}

impl NetworkConnector {
    /// The parsed `uri`.
    pub fn parsed_uri(&self) -> Result<ConnectorUri, super::connector_uri::UriError> {
        self.uri.parse()
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
    /// How long a decision may take before the message is refused.
    pub timeout: HumanDuration,
}

impl Default for GroupingConfig {
    fn default() -> GroupingConfig {
        GroupingConfig { handler: GroupingHandler::None, address: None, timeout: HumanDuration::secs(5) }
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
            if let Err(e) = c.parsed_uri() {
                return invalid(format!("connector {i} ({:?}): uri {:?}: {e}", c.name, c.uri));
            }
        }
        Ok(())
    }
}

impl GroupingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.get().is_zero() {
            return invalid("grouping.timeout", "must be longer than 0s");
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
        NetworkConnector { name: name.into(), uri: uri.into(), duplex: false }
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

    #[test]
    fn given_zero_timeout_should_name_field() {
        let grouping = GroupingConfig { timeout: HumanDuration::secs(0), ..GroupingConfig::default() };
        assert!(grouping.validate().unwrap_err().to_string().contains("grouping.timeout"));
    }
}
