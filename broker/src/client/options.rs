//! Knobs of the client: how to connect, how to send, how to acknowledge. Plain values
//! with defaults; nothing here touches the network.

use crate::stomp::Version;
use std::path::PathBuf;
use std::time::Duration;

/// Heart-beat intervals offered on CONNECT; zero turns a direction off. What is used is
/// negotiated with the broker's CONNECTED (the larger of both sides' values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often the client can send a heart-beat when it has nothing else to send.
    pub send: Duration,
    /// How often the client wants to hear from the broker.
    pub receive: Duration,
}

impl Heartbeat {
    /// No heart-beats either way.
    pub const OFF: Heartbeat = Heartbeat { send: Duration::ZERO, receive: Duration::ZERO };
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat { send: Duration::from_secs(10), receive: Duration::from_secs(10) }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Login for CONNECT. When `None`, the URL's user part is used, if any.
    pub login: Option<String>,
    /// Passcode for CONNECT. When `None`, the URL's passcode is used, if any.
    pub passcode: Option<String>,
    /// The CONNECT `host` header (virtual host); `None` sends the URL's host name.
    pub host: Option<String>,
    pub heartbeat: Heartbeat,
    /// Versions offered in `accept-version`, most preferred first; the broker picks the
    /// highest it speaks. Default: 1.2, 1.1.
    pub versions: Vec<Version>,
    /// Limit on opening the TCP connection and on the CONNECT/CONNECTED exchange, each.
    pub connect_timeout: Duration,
    /// How long a request waits for its RECEIPT (sends, commits, disconnect). With a
    /// failover URL the wait spans reconnects: allow for the longest failover you expect.
    pub receipt_timeout: Duration,
    /// Give every SEND a `message-id` header `<client-run-id>-<seq>` (unless
    /// [`SendOptions::message_id`] or the headers set one), so a broker can store a
    /// resent message once. Always on for failover URLs; default off for `stomp://`.
    pub dedup_ids: bool,
    /// How to reach `stomp+ssl://` members; plaintext members ignore it.
    pub tls: TlsOptions,
}

/// TLS settings for `stomp+ssl://` (and `ssl://`) members. The files are read at each
/// connect and reconnect, so a rotated CA or client certificate is picked up by the next
/// connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) a broker's certificate must chain to. Required
    /// to connect to a TLS member: there is no fallback to the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (leaf first) presented when the broker asks; with
    /// `auth.certificateUsers` the broker maps its common name to a user.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`; both or neither.
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, instead of the URL's host (like
    /// `openssl s_client -servername`): dial an address (a port-forward, an IP) and still
    /// check the certificate by its DNS name. Also sent as SNI.
    pub server_name: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            login: None,
            passcode: None,
            host: None,
            heartbeat: Heartbeat::default(),
            versions: vec![Version::V1_2, Version::V1_1],
            connect_timeout: Duration::from_secs(10),
            receipt_timeout: Duration::from_secs(30),
            dedup_ids: false,
            tls: TlsOptions::default(),
        }
    }
}

/// How to send one message.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Sets `persistent:true`: the broker journals the message (and fsyncs it before the
    /// RECEIPT) so it survives a crash.
    pub persistent: bool,
    /// Extra headers, sent as given after the client's own.
    pub headers: Vec<(String, String)>,
    /// Ask for a RECEIPT and wait for it before `send` returns.
    pub receipt: bool,
    /// Send inside this transaction (begun with `Client::begin`).
    pub transaction: Option<String>,
    /// The `message-id` header, the key a broker de-duplicates resent messages by; keep
    /// it unique per message. `None` lets the client generate one when it numbers sends
    /// (failover URL or [`ClientOptions::dedup_ids`]) and sends none otherwise.
    pub message_id: Option<String>,
}

/// How to subscribe: ack mode, prefetch and any broker-specific SUBSCRIBE headers.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub ack: AckMode,
    /// Most unacknowledged messages in flight; `None` leaves it to the broker.
    pub prefetch: Option<u32>,
    /// Extra headers, sent as given after the client's own.
    pub headers: Vec<(String, String)>,
}

/// How the broker expects deliveries of a subscription to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// The broker considers a message consumed once it has written it.
    #[default]
    Auto,
    /// ACK is cumulative: it acknowledges the message and every earlier one of the
    /// subscription.
    Client,
    /// ACK and NACK settle exactly one message.
    ClientIndividual,
}

impl AckMode {
    /// The value of the SUBSCRIBE `ack` header.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

/// How to acknowledge one message.
#[derive(Debug, Clone, Default)]
pub struct AckOptions {
    /// Wait for the broker's RECEIPT (for a persistent message: until the ack is durable).
    pub receipt: bool,
    /// Acknowledge inside this transaction; it takes effect at commit.
    pub transaction: Option<String>,
}
