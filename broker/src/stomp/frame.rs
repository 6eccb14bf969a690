//! STOMP frames as values: commands, headers and bodies, with no parsing and no I/O.

use bytes::Bytes;
use std::fmt;

/// A STOMP protocol version, as negotiated by `accept-version` on CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }

    /// Picks the highest version both sides speak from an `accept-version` header;
    /// a missing header means the client speaks 1.0 only.
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        match accept_version {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every command of STOMP 1.2, client and server frames alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    pub fn parse(s: &[u8]) -> Option<Command> {
        Some(match s {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (STOMP 1.2, "Value Encoding").
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame. Headers keep their order and repeats; the first occurrence of a
/// name is the one that counts, as the spec requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame { command, headers: Vec::new(), body: Bytes::new() }
    }

    /// An ERROR frame as the broker sends them: the reason in the `message` header and, as
    /// plain text, in the body.
    pub fn error(message: impl Into<String>) -> Frame {
        let message = message.into();
        let body = format!("{message}\n");
        Frame::new(Command::Error).header("message", message).header("content-type", "text/plain").with_body(body)
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.headers.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.headers.push((name.to_string(), value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| k != name);
    }
}

/// What the decoder yields: a frame, or a heart-beat (a bare end-of-line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Frame(Frame),
    Heartbeat,
}

/// The two intervals of a `heart-beat` header, `"cx,cy"` in milliseconds: how often the
/// sender can send, and how often it wants to receive. Missing or malformed means `0,0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    pub can_send: std::time::Duration,
    pub wants: std::time::Duration,
}

impl HeartBeat {
    pub fn parse(header: Option<&str>) -> HeartBeat {
        let ms = |s: &str| std::time::Duration::from_millis(s.trim().parse().unwrap_or(0));
        match header.and_then(|h| h.split_once(',')) {
            Some((a, b)) => HeartBeat { can_send: ms(a), wants: ms(b) },
            None => HeartBeat::default(),
        }
    }

    pub fn header_value(&self) -> String {
        format!("{},{}", self.can_send.as_millis(), self.wants.as_millis())
    }

    /// Negotiates one direction as the spec says: no beats if either side says 0,
    /// otherwise the larger of what one side can send and the other wants.
    /// `ours` is this side's offer, `theirs` the peer's; returns (send every, expect every).
    pub fn negotiate(ours: HeartBeat, theirs: HeartBeat) -> (Option<std::time::Duration>, Option<std::time::Duration>) {
        let both = |a: std::time::Duration, b: std::time::Duration| (!a.is_zero() && !b.is_zero()).then(|| a.max(b));
        (both(ours.can_send, theirs.wants), both(ours.wants, theirs.can_send))
    }
}
