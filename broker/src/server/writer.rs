//! A connection's writer task: encodes frames and deliveries in the negotiated STOMP
//! version, batches whatever is queued into one socket write, sends heart-beats when the
//! line is idle, and settles auto-ack deliveries once they are written.

use crate::engine::message::{ack_token, Delivery};
use crate::engine::queue::Outbound;
use crate::engine::Broker;
use crate::journal::Op;
use crate::metrics::Metrics;
use crate::stomp::{Command, StompCodec};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes gathered before one write.
const BATCH_BYTES: usize = 256 * 1024;

pub struct Writer {
    pub socket: OwnedWriteHalf,
    pub outbox: mpsc::UnboundedReceiver<Outbound>,
    pub codec: StompCodec,
    pub heartbeat: Option<Duration>,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the writer stops, so the reader stops too.
    pub done: CancellationToken,
}

impl Writer {
    pub async fn run(mut self) {
        if let Err(e) = self.pump().await {
            tracing::debug!(error = %e, "connection write failed");
        }
        let _ = self.socket.shutdown().await;
        self.done.cancel();
    }

    async fn pump(&mut self) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut settle: Vec<Delivery> = Vec::new();
        loop {
            let first = match self.heartbeat {
                Some(every) => match tokio::time::timeout(every, self.outbox.recv()).await {
                    Ok(item) => item,
                    Err(_) => {
                        self.socket.write_all(b"\n").await?;
                        continue;
                    }
                },
                None => self.outbox.recv().await,
            };
            let Some(mut item) = first else { return Ok(()) };
            let mut close = false;
            loop {
                match item {
                    Outbound::Deliver(d) => {
                        self.encode_delivery(&d, &mut buf);
                        if d.auto_ack {
                            settle.push(d);
                        }
                    }
                    Outbound::Frame(f) => self.codec.encode(&f, &mut buf),
                    Outbound::Close => {
                        close = true;
                        break;
                    }
                }
                if buf.len() >= BATCH_BYTES {
                    break;
                }
                match self.outbox.try_recv() {
                    Ok(next) => item = next,
                    Err(_) => break,
                }
            }
            self.socket.write_all(&buf).await?;
            buf.clear();
            self.settle_auto(&mut settle);
            if close {
                self.socket.flush().await?;
                return Ok(());
            }
        }
    }

    fn encode_delivery(&self, d: &Delivery, buf: &mut BytesMut) {
        let m = &d.entry.message;
        let message_id = m.id.0.to_string();
        let ack = ack_token(d.consumer, d.tag);
        let mut proto: [(&str, &str); 5] = [("", ""); 5];
        let mut n = 0;
        for pair in [
            ("destination", &*m.destination),
            ("message-id", message_id.as_str()),
            ("subscription", &*d.subscription_id),
        ] {
            proto[n] = pair;
            n += 1;
        }
        if !d.auto_ack {
            proto[n] = ("ack", ack.as_str());
            n += 1;
        }
        if d.entry.redelivered {
            proto[n] = ("redelivered", "true");
            n += 1;
        }
        let user = m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        self.codec.encode_parts(Command::Message, proto[..n].iter().copied().chain(user), &m.body, buf);
        self.metrics.messages_out.inc();
        self.metrics.bytes_out.inc_by(m.body.len() as u64);
    }

    /// Auto-ack deliveries count as acknowledged once written; journaled ones get a lazy
    /// ack record (not awaited: at worst a crash redelivers them).
    fn settle_auto(&self, settle: &mut Vec<Delivery>) {
        let mut acks = Vec::new();
        for d in settle.drain(..) {
            if let Ok(entries) = d.queue.ack(d.consumer, d.tag, false) {
                acks.extend(entries.iter().filter(|e| e.journaled).map(|e| Op::Ack(e.message.id)));
            }
        }
        if !acks.is_empty() {
            drop(self.broker.journal().append_lazy(acks));
        }
    }
}
