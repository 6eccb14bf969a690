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
}

impl Message {
    /// What this message counts against memory limits.
    pub fn footprint(&self) -> usize {
        self.body.len()
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>()
            + 96
    }
}

/// A message's place in one queue.
#[derive(Debug, Clone)]
pub struct Entry {
    pub message: Arc<Message>,
    /// Stored in the journal for this queue, so acknowledging it must be journaled too.
    pub journaled: bool,
    pub redelivered: bool,
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
