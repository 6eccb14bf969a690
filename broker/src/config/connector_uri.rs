//! Connector URIs as ActiveMQ writes them: `masterslave:(tcp://a:61616,tcp://b:61616)`,
//! `static:(tcp://a:61616,...)` or a single `tcp://host:port`. Parsing only, no I/O and
//! no name resolution: a host is checked for shape, never looked up, because at start the
//! peers named here may not exist yet (Kubernetes creates pods in any order).

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Why a connector URI was refused. The messages say what was expected, so a config
/// error names both the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    #[error("empty; expected masterslave:(tcp://host:port,...), static:(...) or tcp://host:port")]
    Empty,
    #[error("unknown scheme {found:?}; expected masterslave:(...), static:(...) or tcp://host:port")]
    UnknownScheme { found: String },
    #[error("{kind}: needs a parenthesised list, like {kind}:(tcp://a:61616,tcp://b:61616)")]
    MissingList { kind: &'static str },
    #[error("text {rest:?} after the closing parenthesis; options are not supported")]
    TrailingText { rest: String },
    #[error("no address in the list")]
    EmptyList,
    #[error("address {index} ({address:?}): {problem}")]
    Address { index: usize, address: String, problem: AddressProblem },
    #[error("{address} listed twice")]
    Duplicate { address: TcpAddress },
}

/// What is wrong with one `tcp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressProblem {
    #[error("must start with tcp://")]
    Scheme,
    #[error("needs a port, as in tcp://host:61616")]
    MissingPort,
    #[error("port must be a number from 1 to 65535")]
    Port,
    #[error("needs a host name or IP address")]
    MissingHost,
    #[error("host {0:?} is not a valid host name or IP address")]
    Host(String),
    #[error("has a path or options after the port; only tcp://host:port is supported")]
    Suffix,
}

/// How the broker uses the listed addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriKind {
    /// One group's members; whichever is live answers (ActiveMQ's failover to a
    /// master/slave pair, never two at once).
    MasterSlave,
    /// Independent brokers, each bridged to.
    Static,
    /// One `tcp://host:port` without a list.
    Single,
}

impl UriKind {
    fn prefix(self) -> &'static str {
        match self {
            UriKind::MasterSlave => "masterslave",
            UriKind::Static => "static",
            UriKind::Single => "tcp",
        }
    }
}

/// A host (name, IPv4 or bracketed IPv6 without the brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for TcpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp://{}:{}", self.host, self.port)
        }
    }
}

/// A parsed connector URI: its kind and at least one address, none twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorUri {
    pub kind: UriKind,
    pub addresses: Vec<TcpAddress>,
}

impl fmt::Display for ConnectorUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = self.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        match self.kind {
            UriKind::Single => f.write_str(&list),
            kind => write!(f, "{}:({list})", kind.prefix()),
        }
    }
}

impl FromStr for ConnectorUri {
    type Err = UriError;

    fn from_str(text: &str) -> Result<ConnectorUri, UriError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UriError::Empty);
        }
        let (kind, list) = if let Some(rest) = text.strip_prefix("masterslave:") {
            (UriKind::MasterSlave, parenthesised(UriKind::MasterSlave, rest)?)
        } else if let Some(rest) = text.strip_prefix("static:") {
            (UriKind::Static, parenthesised(UriKind::Static, rest)?)
        } else if text.starts_with("tcp://") {
            (UriKind::Single, text)
        } else {
            let found = text.split_once(':').map_or(text, |(scheme, _)| scheme);
            return Err(UriError::UnknownScheme { found: found.to_string() });
        };
        let mut addresses: Vec<TcpAddress> = Vec::new();
        for (index, item) in list.split(',').map(str::trim).enumerate() {
            if item.is_empty() && list.trim().is_empty() {
                return Err(UriError::EmptyList);
            }
            let address = parse_address(item)
                .map_err(|problem| UriError::Address { index, address: item.to_string(), problem })?;
            if addresses.contains(&address) {
                return Err(UriError::Duplicate { address });
            }
            addresses.push(address);
        }
        Ok(ConnectorUri { kind, addresses })
    }
}

/// The inside of `(...)`, refusing text after the closing parenthesis.
fn parenthesised(kind: UriKind, rest: &str) -> Result<&str, UriError> {
    let inner = rest.strip_prefix('(').ok_or(UriError::MissingList { kind: kind.prefix() })?;
    let (list, after) = inner.rsplit_once(')').ok_or(UriError::MissingList { kind: kind.prefix() })?;
    if !after.is_empty() {
        return Err(UriError::TrailingText { rest: after.to_string() });
    }
    Ok(list)
}

fn parse_address(item: &str) -> Result<TcpAddress, AddressProblem> {
    let rest = item.strip_prefix("tcp://").ok_or(AddressProblem::Scheme)?;
    if rest.contains(['/', '?', '#']) {
        return Err(AddressProblem::Suffix);
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| AddressProblem::Host(rest.to_string()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(AddressProblem::Host(host.to_string()));
        }
        (host, after.strip_prefix(':').ok_or(AddressProblem::MissingPort)?)
    } else {
        let (host, port) = rest.rsplit_once(':').ok_or(AddressProblem::MissingPort)?;
        if host.is_empty() {
            return Err(AddressProblem::MissingHost);
        }
        if !valid_host_name(host) {
            return Err(AddressProblem::Host(host.to_string()));
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) if port.is_empty() => Err(AddressProblem::MissingPort),
        Ok(0) | Err(_) => Err(AddressProblem::Port),
        Ok(port) => Ok(TcpAddress { host: host.to_string(), port }),
    }
}

/// A DNS name (RFC 1123 labels) or a dotted IPv4 address, which has the same shape.
fn valid_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn addr(host: &str, port: u16) -> TcpAddress {
        TcpAddress { host: host.to_string(), port }
    }

    #[test]
    fn given_masterslave_list_should_parse_every_address_in_order() {
        let uri: ConnectorUri = "masterslave:(tcp://g2-0.g2.ns.svc:61616, tcp://g2-1.g2.ns.svc:61616)".parse().unwrap();
        assert_eq!(uri.kind, UriKind::MasterSlave);
        assert_eq!(uri.addresses, vec![addr("g2-0.g2.ns.svc", 61616), addr("g2-1.g2.ns.svc", 61616)]);
    }

    #[rstest]
    #[case("static:(tcp://10.0.0.1:61616)", UriKind::Static, addr("10.0.0.1", 61616))]
    #[case("tcp://broker:61617", UriKind::Single, addr("broker", 61617))]
    #[case("tcp://[::1]:61616", UriKind::Single, addr("::1", 61616))]
    fn given_other_forms_should_parse(#[case] text: &str, #[case] kind: UriKind, #[case] first: TcpAddress) {
        let uri: ConnectorUri = text.parse().unwrap();
        assert_eq!((uri.kind, uri.addresses), (kind, vec![first]));
    }

    #[rstest]
    #[case("masterslave:(tcp://a:1,tcp://b:2)")]
    #[case("static:(tcp://a:1)")]
    #[case("tcp://[::1]:61616")]
    fn given_parsed_uri_when_printed_should_read_back_the_same(#[case] text: &str) {
        let uri: ConnectorUri = text.parse().unwrap();
        assert_eq!(uri.to_string(), text);
    }

    #[rstest]
    #[case("", UriError::Empty)]
    #[case("failover:(tcp://a:1)", UriError::UnknownScheme { found: "failover".into() })]
    #[case("masterslave:tcp://a:1", UriError::MissingList { kind: "masterslave" })]
    #[case("static:(tcp://a:1", UriError::MissingList { kind: "static" })]
    #[case("masterslave:(tcp://a:1)?x=1", UriError::TrailingText { rest: "?x=1".into() })]
    #[case("masterslave:()", UriError::EmptyList)]
    #[case("static:(tcp://a:1,tcp://a:1)", UriError::Duplicate { address: addr("a", 1) })]
    fn given_malformed_uri_should_say_what_is_wrong(#[case] text: &str, #[case] expected: UriError) {
        assert_eq!(text.parse::<ConnectorUri>(), Err(expected));
    }

    #[rstest]
    #[case("ssl://a:1", AddressProblem::Scheme)]
    #[case("tcp://a", AddressProblem::MissingPort)]
    #[case("tcp://a:", AddressProblem::MissingPort)]
    #[case("tcp://a:0", AddressProblem::Port)]
    #[case("tcp://a:70000", AddressProblem::Port)]
    #[case("tcp://:61616", AddressProblem::MissingHost)]
    #[case("tcp://bad_host:1", AddressProblem::Host("bad_host".into()))]
    #[case("tcp://-a:1", AddressProblem::Host("-a".into()))]
    #[case("tcp://[nope]:1", AddressProblem::Host("nope".into()))]
    #[case("tcp://a:1?wireFormat=x", AddressProblem::Suffix)]
    fn given_bad_address_in_list_should_name_its_position_and_problem(#[case] item: &str, #[case] problem: AddressProblem) {
        let text = format!("masterslave:(tcp://ok:1,{item})");
        let expected = UriError::Address { index: 1, address: item.to_string(), problem };
        assert_eq!(text.parse::<ConnectorUri>(), Err(expected));
    }

    #[test]
    fn given_bad_address_should_read_as_one_sentence() {
        let err = "masterslave:(tcp://a:1,tcp://b)".parse::<ConnectorUri>().unwrap_err();
        assert_eq!(err.to_string(), "address 1 (\"tcp://b\"): needs a port, as in tcp://host:61616");
    }
}
