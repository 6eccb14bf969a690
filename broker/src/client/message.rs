//! A delivered message as the client hands it to the user: the MESSAGE frame's headers
//! picked apart, nothing more. It carries what an ACK or NACK needs, but sends nothing.

use crate::stomp::Frame;
use bytes::Bytes;

/// One message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it was sent (`/queue/...` or `/topic/...`).
    pub destination: String,
    /// The broker's id for the message.
    pub message_id: String,
    /// The id of the subscription it was delivered on.
    pub subscription: String,
    /// The `ack` header: the token an ACK/NACK names in STOMP 1.2. Absent on deliveries of
    /// `auto` subscriptions, which need no acknowledgement.
    pub ack: Option<String>,
    /// The broker delivered it before without an acknowledgement (`redelivered:true`).
    pub redelivered: bool,
    /// Every header of the MESSAGE frame, in order, the ones above included.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Message {
    pub(super) fn from_frame(frame: Frame) -> Message {
        let get = |name: &str| frame.get(name).unwrap_or_default().to_string();
        Message {
            destination: get("destination"),
            message_id: get("message-id"),
            subscription: get("subscription"),
            ack: frame.get("ack").map(str::to_string),
            redelivered: frame.get("redelivered") == Some("true"),
            headers: frame.headers,
            body: frame.body,
        }
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}
