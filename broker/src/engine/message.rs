//! Messages as the engine holds them, and what the engine hands to a connection's writer.

use crate::journal::MessageId;
use bytes::Bytes;
use std::sync::Arc;

/// A message accepted by the broker. Shared (`Arc`) between every queue that holds it,
/// so a topic fan-out copies no body.
#[derive(Debug)]
pub struct Message {
    pub id: MessageId,
    pub destination: Arc<str>,
    /// Headers the producer set, minus the protocol ones (receipt, transaction, content-length).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The producer asked for `persistent:true`.
    pub persistent: bool,
    /// The message group it belongs to (`JMSXGroupID`), if any: a queue hands every
    /// message of a group to one consumer, in order.
    pub group: Option<MessageGroup>,
    /// Priority, expiry and scheduled time, read from the headers once.
    pub properties: Properties,
}

/// The STOMP header of a message's priority, 0 (lowest) to 9; 4 when absent (JMS).
pub const PRIORITY_HEADER: &str = "priority";
/// The STOMP header of when a message expires: milliseconds since the epoch, 0 never.
pub const EXPIRES_HEADER: &str = "expires";
/// When a scheduled message may be delivered, milliseconds since the epoch (Artemis').
pub const SCHEDULED_TIME_HEADER: &str = "AMQ_SCHEDULED_TIME";
/// A delay in milliseconds before a message may be delivered (ActiveMQ's); the broker
/// stores it as [`SCHEDULED_TIME_HEADER`] when it accepts the message, so the delay runs
/// from the send, not from a restart.
pub const SCHEDULED_DELAY_HEADER: &str = "AMQ_SCHEDULED_DELAY";

/// What the engine reads from a message's headers once, at accept and at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Properties {
    /// 0 (lowest) to 9; a queue serves higher first.
    pub priority: u8,
    /// Milliseconds since the epoch after which it is not delivered.
    pub expires: Option<u64>,
    /// Milliseconds since the epoch before which it is not delivered.
    pub deliver_at: Option<u64>,
}

impl Default for Properties {
    fn default() -> Properties {
        Properties { priority: DEFAULT_PRIORITY, expires: None, deliver_at: None }
    }
}

/// JMS' default priority.
pub const DEFAULT_PRIORITY: u8 = 4;

impl Properties {
    /// From `priority` (clamped to 0–9; unparsable: 4), `expires` (0 or unparsable: never)
    /// and `AMQ_SCHEDULED_TIME`; the first of each header counts (STOMP 1.2).
    pub fn from_headers(headers: &[(String, String)]) -> Properties {
        let first = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let millis = |name: &str| first(name).and_then(|v| v.parse::<u64>().ok()).filter(|&t| t > 0);
        Properties {
            priority: first(PRIORITY_HEADER)
                .and_then(|v| v.parse::<i64>().ok())
                .map_or(DEFAULT_PRIORITY, |p| p.clamp(0, 9) as u8),
            expires: millis(EXPIRES_HEADER),
            deliver_at: millis(SCHEDULED_TIME_HEADER),
        }
    }

    /// Whether the message has expired at `now` (milliseconds since the epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

/// Milliseconds since the epoch, as `expires` and `AMQ_SCHEDULED_TIME` count.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Message {
    /// What this message counts against memory limits.
    pub fn footprint(&self) -> usize {
        footprint(&self.headers, self.body.len())
    }
}

/// What a message with `headers` and a body of `body_len` bytes counts against memory
/// limits (also of one stored in the journal only).
pub fn footprint(headers: &[(String, String)], body_len: usize) -> usize {
    body_len + headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>() + 96
}

/// The header naming a message's group (ActiveMQ's and Artemis's).
pub const GROUP_ID_HEADER: &str = "JMSXGroupID";
/// The header numbering a message in its group; `-1` closes the group.
pub const GROUP_SEQ_HEADER: &str = "JMSXGroupSeq";
/// The number of this delivery of a message from its queue, 1 on the first (JMS').
pub const DELIVERY_COUNT_HEADER: &str = "JMSXDeliveryCount";
/// Set to `true` on the first message a consumer gets of a group it newly owns.
pub const GROUP_FIRST_HEADER: &str = "JMSXGroupFirstForConsumer";

/// A message's group, as its headers name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageGroup {
    pub id: Arc<str>,
    /// `JMSXGroupSeq: -1`: once this message is delivered the group's binding is dropped,
    /// so the next message with this id binds afresh.
    pub close: bool,
    /// Which consumers may own the group on this broker, as stored.
    pub owner: GroupOwner,
    /// The owner decided after the message was stored [`GroupOwner::Undecided`]; see
    /// [`MessageGroup::owner`].
    pub decided: std::sync::OnceLock<GroupOwner>,
}

/// Where a group's messages may go, as the cluster-wide grouping handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOwner {
    /// Any consumer: local ones or network bridges.
    Any,
    /// Local consumers only, never a network bridge (even when no local consumer is left).
    Here,
    /// Network bridges only; their filter decides which one leads to the named group.
    Elsewhere(Arc<str>),
    /// Nobody yet: the grouping handler is to decide once a consumer exists somewhere (it
    /// was stored while none did).
    Undecided,
}

impl MessageGroup {
    /// The group named by `JMSXGroupID` (the first such header; an empty id is no group),
    /// closed by `JMSXGroupSeq: -1`, owned by any consumer.
    pub fn from_headers(headers: &[(String, String)]) -> Option<MessageGroup> {
        let id = headers.iter().find(|(k, _)| k == GROUP_ID_HEADER).map(|(_, v)| v.as_str())?;
        if id.is_empty() {
            return None;
        }
        let close = headers
            .iter()
            .find(|(k, _)| k == GROUP_SEQ_HEADER)
            .is_some_and(|(_, v)| v.trim().parse::<i64>() == Ok(-1));
        Some(MessageGroup::new(Arc::from(id), close, GroupOwner::Any))
    }

    pub fn new(id: Arc<str>, close: bool, owner: GroupOwner) -> MessageGroup {
        MessageGroup { id, close, owner, decided: std::sync::OnceLock::new() }
    }

    /// Who may take the group's message now: as stored, or as decided later.
    pub fn owner(&self) -> &GroupOwner {
        self.decided.get().unwrap_or(&self.owner)
    }
}

/// A message's place in one queue.
#[derive(Debug, Clone)]
pub struct Entry {
    pub message: Arc<Message>,
    /// Stored in the journal for this queue, so acknowledging it must be journaled too.
    pub journaled: bool,
    pub redelivered: bool,
    /// Deliveries of it so far from this queue (`JMSXDeliveryCount` of the next is one
    /// more); in memory only, so a recovered message starts again at 0.
    pub deliveries: u32,
}

#[cfg(test)]
impl Entry {
    /// Journaled message `id` of `/queue/q` with `headers` (its group and properties read
    /// from them) and a one-byte body, never delivered: what engine unit tests queue.
    pub(crate) fn for_test(id: u64, headers: Vec<(String, String)>) -> Entry {
        Entry {
            message: Arc::new(Message {
                id: MessageId(id),
                destination: Arc::from("/queue/q"),
                group: MessageGroup::from_headers(&headers),
                properties: Properties::from_headers(&headers),
                headers,
                body: Bytes::from_static(b"x"),
                persistent: true,
            }),
            journaled: true,
            redelivered: false,
            deliveries: 0,
        }
    }
}

/// One delivery handed to a connection's writer: the writer encodes it in the
/// connection's negotiated STOMP version.
#[derive(Debug)]
pub struct Delivery {
    pub queue: Arc<super::queue::Queue>,
    pub consumer: ConsumerKey,
    pub subscription_id: Arc<str>,
    /// Per-consumer delivery sequence; with the consumer key it forms the `ack` header.
    pub tag: u64,
    pub entry: Entry,
    /// Auto-ack deliveries are settled by the writer once written to the socket.
    pub auto_ack: bool,
    /// The first message this consumer gets of a group it newly owns: the MESSAGE frame
    /// carries `JMSXGroupFirstForConsumer: true`.
    pub group_first: bool,
}

/// Identifies a consumer broker-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerKey(pub u64);

/// The ack token in MESSAGE frames: `<consumer>-<tag>`.
pub fn ack_token(consumer: ConsumerKey, tag: u64) -> String {
    format!("{}-{}", consumer.0, tag)
}

pub fn parse_ack_token(s: &str) -> Option<(ConsumerKey, u64)> {
    let (c, t) = s.split_once('-')?;
    Some((ConsumerKey(c.parse().ok()?), t.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn given_timing_headers_should_read_priority_expiry_and_schedule() {
        let p = Properties::from_headers(&headers(&[("priority", "7"), ("expires", "1700000000000"), ("AMQ_SCHEDULED_TIME", "42")]));
        assert_eq!(p, Properties { priority: 7, expires: Some(1_700_000_000_000), deliver_at: Some(42) });
        let odd = Properties::from_headers(&headers(&[("priority", "12"), ("expires", "0"), ("AMQ_SCHEDULED_TIME", "soon")]));
        assert_eq!(odd, Properties { priority: 9, expires: None, deliver_at: None });
        assert_eq!(Properties::from_headers(&headers(&[("priority", "x")])).priority, DEFAULT_PRIORITY);
        assert!(p.expired(1_700_000_000_000) && !p.expired(1_699_999_999_999));
    }

    #[test]
    fn given_group_headers_should_name_group_and_close() {
        let open = MessageGroup::from_headers(&headers(&[("JMSXGroupID", "g1"), ("JMSXGroupSeq", "3")]));
        assert_eq!(open, Some(MessageGroup::new(Arc::from("g1"), false, GroupOwner::Any)));
        let closing = MessageGroup::from_headers(&headers(&[("JMSXGroupSeq", "-1"), ("JMSXGroupID", "g1")]));
        assert!(closing.is_some_and(|g| g.close));
    }

    #[test]
    fn given_no_or_empty_group_id_should_have_no_group() {
        assert_eq!(MessageGroup::from_headers(&headers(&[("JMSXGroupSeq", "-1")])), None);
        assert_eq!(MessageGroup::from_headers(&headers(&[("JMSXGroupID", "")])), None);
    }
}
