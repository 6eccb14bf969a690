//! AMQP addresses to the broker's destinations, the names STOMP uses: `queue://x` and
//! `topic://x` (Qpid JMS's prefixes), `/queue/x` and `/topic/x` as they are, and a bare
//! name by the terminus capabilities: `topic` or `multicast` make it a topic, anything
//! else (`queue`, `anycast`, none) a queue.

use super::AmqpError;
use fe2o3_amqp::types::primitives::{Array, Symbol};

/// Capabilities that make a bare address a topic.
const TOPIC_CAPABILITIES: [&str; 2] = ["topic", "multicast"];

/// The destination (`/queue/NAME` or `/topic/NAME`) an address names.
pub fn destination(address: Option<&str>, capabilities: Option<&Array<Symbol>>) -> Result<String, AmqpError> {
    let address = address.map(str::trim).filter(|a| !a.is_empty()).ok_or(AmqpError::NoAddress)?;
    if address.starts_with("/queue/") || address.starts_with("/topic/") {
        return Ok(address.to_string());
    }
    if let Some(name) = address.strip_prefix("queue://") {
        return named("/queue/", name, address);
    }
    if let Some(name) = address.strip_prefix("topic://") {
        return named("/topic/", name, address);
    }
    let topic = capabilities.is_some_and(|caps| caps.0.iter().any(|c| TOPIC_CAPABILITIES.contains(&c.as_str())));
    named(if topic { "/topic/" } else { "/queue/" }, address, address)
}

fn named(prefix: &str, name: &str, address: &str) -> Result<String, AmqpError> {
    if name.is_empty() {
        return Err(AmqpError::Address(address.to_string()));
    }
    Ok(format!("{prefix}{name}"))
}

/// A source capability asking for what is not supported yet: JMS 2 shared subscriptions
/// (`shared`), which would otherwise get a copy per consumer instead of sharing one.
pub fn unsupported_capability(capabilities: Option<&Array<Symbol>>) -> Option<&'static str> {
    let caps = capabilities?;
    caps.0.iter().any(|c| c.as_str() == "shared").then_some("a shared subscription (capability shared)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &[&str]) -> Array<Symbol> {
        Array::from(c.iter().map(|s| Symbol::from(*s)).collect::<Vec<_>>())
    }

    #[test]
    fn given_prefixed_or_stomp_addresses_should_map_as_written() {
        assert_eq!(destination(Some("queue://orders"), None).unwrap(), "/queue/orders");
        assert_eq!(destination(Some("topic://prices"), Some(&caps(&["queue"]))).unwrap(), "/topic/prices");
        assert_eq!(destination(Some("/topic/t"), None).unwrap(), "/topic/t");
        assert_eq!(destination(Some("/queue/q"), Some(&caps(&["topic"]))).unwrap(), "/queue/q");
    }

    #[test]
    fn given_bare_name_should_follow_capabilities() {
        assert_eq!(destination(Some("orders"), None).unwrap(), "/queue/orders");
        assert_eq!(destination(Some("orders"), Some(&caps(&["queue"]))).unwrap(), "/queue/orders");
        assert_eq!(destination(Some("orders"), Some(&caps(&["anycast"]))).unwrap(), "/queue/orders");
        assert_eq!(destination(Some("prices"), Some(&caps(&["topic"]))).unwrap(), "/topic/prices");
        assert_eq!(destination(Some("prices"), Some(&caps(&["shared", "multicast"]))).unwrap(), "/topic/prices");
    }

    #[test]
    fn given_shared_capability_should_be_unsupported() {
        assert!(unsupported_capability(Some(&caps(&["topic", "shared", "global"]))).is_some());
        assert!(unsupported_capability(Some(&caps(&["topic"]))).is_none());
        assert!(unsupported_capability(None).is_none());
    }

    #[test]
    fn given_no_or_empty_name_should_refuse() {
        assert!(matches!(destination(None, None), Err(AmqpError::NoAddress)));
        assert!(matches!(destination(Some(" "), None), Err(AmqpError::NoAddress)));
        assert!(matches!(destination(Some("queue://"), None), Err(AmqpError::Address(_))));
    }
}
