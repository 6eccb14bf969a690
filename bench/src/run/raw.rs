//! A minimal STOMP subscriber connection, for what `duomq_broker::client` cannot do yet:
//! SUBSCRIBE with extra headers (RabbitMQ's `x-queue-type`, `durable`, `auto-delete`,
//! `prefetch-count`). It speaks only what a consumer needs (CONNECT, SUBSCRIBE, ACK,
//! DISCONNECT), without heart-beats, on the first member of the URL, over TLS when that
//! member is `stomp+ssl://` (with the client options' CA file, client certificate and
//! server name, as the duomq client uses them). Its one advantage is batching: the ACKs
//! for everything one socket read brought are written together.

use super::consumer::Recorder;
use anyhow::{bail, Context};
use bytes::BytesMut;
use duomq_broker::client::{AckMode, BrokerUrl, ClientOptions, StompUrl};
use duomq_broker::config::TlsVersion;
use duomq_broker::stomp::{Command, Frame, Inbound, Limits, StompCodec, Version};
use duomq_broker::tls::{client_config, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The id of the one subscription on the connection.
const SUBSCRIPTION_ID: &str = "bench-0";
const SUBSCRIBE_RECEIPT: &str = "bench-subscribe";
/// Free buffer space each socket read gets at least.
const READ_CHUNK: usize = 64 * 1024;

/// A connected (and, after [`RawSubscriber::subscribe`], subscribed) consumer.
pub struct RawSubscriber {
    stream: Stream,
    codec: StompCodec,
    inbound: BytesMut,
    outbound: BytesMut,
    version: Version,
    server: Option<String>,
    options: ClientOptions,
    /// Messages that arrived before the SUBSCRIBE receipt.
    early: Vec<Frame>,
}

impl RawSubscriber {
    /// Opens TCP (and TLS, for `stomp+ssl://`) to the URL's first member and exchanges
    /// CONNECT/CONNECTED.
    pub async fn connect(url: &str, options: &ClientOptions) -> anyhow::Result<RawSubscriber> {
        let parsed: BrokerUrl = url.parse()?;
        let member = parsed.members().first().context("the broker URL names no broker")?;
        let address = member.address();
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(address.as_str()))
            .await
            .with_context(|| format!("timed out connecting to {address}"))?
            .with_context(|| format!("failed to connect to {address}"))?;
        // ACKs are small; they must not wait for Nagle.
        stream.set_nodelay(true).context("failed to set TCP_NODELAY")?;
        let stream = secure(stream, member, options).await?;
        let mut raw = RawSubscriber {
            stream,
            codec: StompCodec::new(Limits::default()),
            inbound: BytesMut::with_capacity(READ_CHUNK),
            outbound: BytesMut::with_capacity(16 * 1024),
            version: Version::V1_2,
            server: None,
            options: options.clone(),
            early: Vec::new(),
        };
        let mut connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2,1.1")
            .header("host", options.host.as_deref().unwrap_or(member.host.as_str()))
            .header("heart-beat", "0,0");
        if let Some(login) = options.login.as_ref().or(member.login.as_ref()) {
            connect = connect.header("login", login.as_str());
        }
        if let Some(passcode) = options.passcode.as_ref().or(member.passcode.as_ref()) {
            connect = connect.header("passcode", passcode.as_str());
        }
        raw.write_frame(&connect).await?;
        let reply = tokio::time::timeout(options.connect_timeout, raw.read_frame())
            .await
            .with_context(|| format!("timed out waiting for CONNECTED from {address}"))??;
        match reply.command {
            Command::Connected => {}
            Command::Error => bail!("broker refused the connection: {}", error_text(&reply)),
            other => bail!("expected CONNECTED from the broker, got {other}"),
        }
        raw.version = reply.get("version").and_then(Version::parse).unwrap_or(Version::V1_0);
        raw.codec.set_version(raw.version);
        raw.server = reply.get("server").map(str::to_string);
        Ok(raw)
    }

    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// Subscribes with `extra` headers and waits for the broker's RECEIPT. The prefetch
    /// goes out as `activemq.prefetchSize` and `prefetch-count` unless `extra` sets them.
    pub async fn subscribe(
        &mut self,
        destination: &str,
        ack: AckMode,
        prefetch: u32,
        extra: &[(String, String)],
    ) -> anyhow::Result<()> {
        let frame = subscribe_frame(destination, ack, prefetch, extra);
        self.write_frame(&frame).await?;
        let limit = self.options.receipt_timeout;
        let wait = async {
            loop {
                let frame = self.read_frame().await?;
                match frame.command {
                    Command::Receipt if frame.get("receipt-id") == Some(SUBSCRIBE_RECEIPT) => return Ok(()),
                    Command::Message => self.early.push(frame),
                    Command::Error => bail!("broker refused the subscription: {}", error_text(&frame)),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .with_context(|| format!("timed out waiting for the RECEIPT of SUBSCRIBE ({limit:?})"))?
    }

    /// Consumes until `stop`: books every delivery and writes the ACKs each read needs.
    /// With `expect` (a header and the value this consumer's selector selects), every
    /// message with another value is booked as a selector mismatch.
    pub async fn consume(
        mut self,
        ack: AckMode,
        expect: Option<(&str, &str)>,
        recorder: &mut Recorder,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        for frame in std::mem::take(&mut self.early) {
            book(recorder, &frame, expect);
            self.queue_ack(ack, &frame, true);
        }
        let result = self.consume_loop(ack, expect, recorder, stop).await;
        // Best effort: unacknowledged messages go back to the queue either way.
        self.outbound.clear();
        self.codec.encode(&Frame::new(Command::Disconnect), &mut self.outbound);
        if self.stream.write_all(&self.outbound).await.is_ok() {
            let _ = self.stream.flush().await;
        }
        result
    }

    async fn consume_loop(
        &mut self,
        ack: AckMode,
        expect: Option<(&str, &str)>,
        recorder: &mut Recorder,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let mut last: Option<Frame> = None;
            while let Some(inbound) = self.codec.decode(&mut self.inbound).context("failed to decode a frame")? {
                let Inbound::Frame(frame) = inbound else { continue };
                match frame.command {
                    Command::Message => {
                        book(recorder, &frame, expect);
                        self.queue_ack(ack, &frame, false);
                        last = Some(frame);
                    }
                    Command::Error => bail!("broker reported an error: {}", error_text(&frame)),
                    _ => {}
                }
            }
            // `client` acks are cumulative: one for the newest message of this read.
            if let (AckMode::Client, Some(frame)) = (ack, &last) {
                self.queue_ack(ack, frame, true);
            }
            if !self.outbound.is_empty() {
                self.stream.write_all(&self.outbound).await.context("failed to send ACKs")?;
                // TLS holds what the socket did not take until flushed.
                self.stream.flush().await.context("failed to send ACKs")?;
                self.outbound.clear();
            }
            // Room for a large read; otherwise a nearly full buffer reads a few bytes at a time.
            self.inbound.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                read = self.stream.read_buf(&mut self.inbound) => {
                    if read.context("failed to read from the broker")? == 0 {
                        bail!("the broker closed the connection");
                    }
                }
            }
        }
    }

    /// Appends the ACK `frame` needs under `ack` mode; `flush_cumulative` says whether a
    /// `client`-mode ACK is due now.
    fn queue_ack(&mut self, ack: AckMode, frame: &Frame, flush_cumulative: bool) {
        let due = match ack {
            AckMode::Auto => false,
            AckMode::ClientIndividual => true,
            AckMode::Client => flush_cumulative,
        };
        if !due {
            return;
        }
        let message_id = frame.get("message-id").unwrap_or_default();
        match self.version {
            Version::V1_2 => {
                let id = frame.get("ack").unwrap_or(message_id);
                self.codec.encode_parts(Command::Ack, [("id", id)].into_iter(), b"", &mut self.outbound);
            }
            Version::V1_1 => {
                let subscription = frame.get("subscription").unwrap_or(SUBSCRIPTION_ID);
                let headers = [("message-id", message_id), ("subscription", subscription)];
                self.codec.encode_parts(Command::Ack, headers.into_iter(), b"", &mut self.outbound);
            }
            Version::V1_0 => {
                self.codec.encode_parts(
                    Command::Ack,
                    [("message-id", message_id)].into_iter(),
                    b"",
                    &mut self.outbound,
                );
            }
        }
    }

    async fn write_frame(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.outbound.clear();
        self.codec.encode(frame, &mut self.outbound);
        self.stream.write_all(&self.outbound).await.with_context(|| format!("failed to send {}", frame.command))?;
        self.stream.flush().await.with_context(|| format!("failed to send {}", frame.command))?;
        self.outbound.clear();
        Ok(())
    }

    async fn read_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            while let Some(inbound) = self.codec.decode(&mut self.inbound).context("failed to decode a frame")? {
                if let Inbound::Frame(frame) = inbound {
                    return Ok(frame);
                }
            }
            self.inbound.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.inbound).await.context("failed to read from the broker")? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
}

/// TLS over `tcp` for a `stomp+ssl://` member, checked against the options' CA file and
/// server name (the member's host when none); plaintext otherwise.
async fn secure(tcp: TcpStream, member: &StompUrl, options: &ClientOptions) -> anyhow::Result<Stream> {
    if !member.tls {
        return Ok(Stream::Plain(tcp));
    }
    let tls = &options.tls;
    let ca = tls.ca_file.as_deref().with_context(|| format!("{member} is TLS: set --ca-file to the CA that signed its certificate"))?;
    let identity = tls.cert_file.as_deref().zip(tls.key_file.as_deref());
    let config = client_config(ca, identity, TlsVersion::V1_2)?;
    let name = tls.server_name.as_deref().unwrap_or(&member.host);
    duomq_broker::tls::connect(tcp, name, Some(config.into()), options.connect_timeout)
        .await
        .with_context(|| format!("TLS to {member} failed (its certificate checked against {} as {name:?})", ca.display()))
}

/// The SUBSCRIBE frame: the caller's headers first, then the prefetch headers they did
/// not set (a header's first occurrence is the one that counts).
pub fn subscribe_frame(destination: &str, ack: AckMode, prefetch: u32, extra: &[(String, String)]) -> Frame {
    let mut frame = Frame::new(Command::Subscribe)
        .header("id", SUBSCRIPTION_ID)
        .header("destination", destination)
        .header("ack", ack.as_str())
        .header("receipt", SUBSCRIBE_RECEIPT);
    frame.headers.extend(extra.iter().cloned());
    for name in ["activemq.prefetchSize", "prefetch-count"] {
        if frame.get(name).is_none() {
            frame = frame.header(name, prefetch.to_string());
        }
    }
    frame
}

/// Books one MESSAGE, and a selector mismatch when it lacks the expected header value.
fn book(recorder: &mut Recorder, frame: &Frame, expect: Option<(&str, &str)>) {
    recorder.record(&frame.body, frame.get("redelivered") == Some("true"));
    if let Some((name, value)) = expect {
        if frame.get(name) != Some(value) {
            recorder.selector_mismatch();
        }
    }
}

fn error_text(frame: &Frame) -> String {
    match frame.get("message") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => String::from_utf8_lossy(&frame.body).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_extra_headers_when_subscribing_should_send_them_and_fill_in_prefetch() {
        let extra =
            vec![("x-queue-type".to_string(), "quorum".to_string()), ("prefetch-count".to_string(), "5".to_string())];
        let frame = subscribe_frame("/queue/bench", AckMode::ClientIndividual, 100, &extra);
        assert_eq!(frame.get("x-queue-type"), Some("quorum"));
        assert_eq!(frame.get("prefetch-count"), Some("5"));
        assert_eq!(frame.get("activemq.prefetchSize"), Some("100"));
        assert_eq!(frame.get("ack"), Some("client-individual"));
        assert_eq!(frame.headers.iter().filter(|(k, _)| k == "prefetch-count").count(), 1);
    }
}
