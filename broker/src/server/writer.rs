//! A connection's writer task: encodes frames and deliveries in the negotiated STOMP
//! version, batches whatever is queued into one socket write, sends heart-beats when the
//! line is idle, and settles auto-ack deliveries once they are written.
//!
//! It never waits forever: a write that does not complete within `stomp.writeTimeout`
//! (the client stopped reading) ends the connection, and so does the connection's kill
//! token (a slow topic subscriber cut off by the engine), even mid-write.

use crate::engine::message::{ack_token, Delivery, DELIVERY_COUNT_HEADER, GROUP_FIRST_HEADER};
use crate::engine::metrics::Limit;
use crate::engine::queue::Outbound;
use crate::engine::accept::Settled;
use crate::engine::Broker;
use crate::metrics::Metrics;
use crate::stomp::{Command, Frame, StompCodec};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// What a connection has queued for its writer and when the writer last wrote: the reader
/// stops reading while too much is queued (a client that does not read its receipts), and
/// counts writes as activity for the idle timeout.
#[derive(Debug)]
pub struct Outgoing {
    bytes: AtomicUsize,
    drained: Notify,
    born: Instant,
    last_write_ms: AtomicU64,
}

impl Outgoing {
    pub fn new() -> Outgoing {
        Outgoing { bytes: AtomicUsize::new(0), drained: Notify::new(), born: Instant::now(), last_write_ms: AtomicU64::new(0) }
    }

    /// Bytes of frames queued and not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn queued(&self, frame: &Frame) {
        self.bytes.fetch_add(frame_cost(frame), Ordering::Relaxed);
    }

    /// Counts a RECEIPT the connection owes from the moment its frame is read, while the
    /// frame still waits for its fsync: receipts of a client that pipelines into a slow
    /// disk are held back by `stomp.maxOutgoingBytes` too.
    pub fn owed_receipt(&self, receipt_id: &str) {
        self.bytes.fetch_add(receipt_cost(receipt_id), Ordering::Relaxed);
    }

    fn written(&self, bytes: usize) {
        self.last_write_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        if bytes > 0 {
            // Frames the engine queued itself (a slow subscriber's ERROR) were never counted.
            let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(bytes)));
            self.drained.notify_one();
        }
    }

    /// Resolves once the writer has written queued frames since the last call.
    pub async fn drained(&self) {
        self.drained.notified().await;
    }

    /// Time since the writer last completed a write (or since the connection began).
    pub fn since_last_write(&self) -> Duration {
        let last = Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

/// What a queued frame counts against `stomp.maxOutgoingBytes`: about its encoded size.
pub fn frame_cost(frame: &Frame) -> usize {
    32 + frame.body.len() + frame.headers.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()
}

/// [`frame_cost`] of `RECEIPT` with `receipt-id:<id>`, without building it.
fn receipt_cost(receipt_id: &str) -> usize {
    32 + "receipt-id".len() + receipt_id.len() + 2
}

/// Bytes gathered before one write.
const BATCH_BYTES: usize = 256 * 1024;

pub struct Writer {
    pub socket: super::connection::WriteHalf,
    pub outbox: mpsc::UnboundedReceiver<Outbound>,
    pub codec: StompCodec,
    pub heartbeat: Option<Duration>,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the writer stops, so the reader stops too.
    pub done: CancellationToken,
    /// Cancelled to end the connection at once, even while a write is stuck.
    pub kill: CancellationToken,
    pub outgoing: Arc<Outgoing>,
    pub write_timeout: Duration,
}

impl Writer {
    pub async fn run(mut self) {
        if let Err(e) = self.pump().await {
            if e.kind() == std::io::ErrorKind::TimedOut {
                self.broker.metrics.limit_hit(Limit::WriteTimeout);
                tracing::info!(timeout = ?self.write_timeout, "closing connection: the client stopped reading (stomp.writeTimeout)");
            } else {
                tracing::debug!(error = %e, "connection write failed");
            }
        }
        let _ = self.socket.shutdown().await;
        self.done.cancel();
    }

    async fn pump(&mut self) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut settle: Vec<Delivery> = Vec::new();
        loop {
            let (outbox, kill, heartbeat) = (&mut self.outbox, &self.kill, self.heartbeat);
            // `None`: the line was idle for a heart-beat interval.
            let next = async move {
                match heartbeat {
                    Some(every) => tokio::time::timeout(every, outbox.recv()).await.ok(),
                    None => Some(outbox.recv().await),
                }
            };
            let first = tokio::select! {
                r = next => match r {
                    Some(item) => item,
                    None => {
                        self.write(b"\n").await?;
                        self.outgoing.written(0);
                        continue;
                    }
                },
                _ = kill.cancelled() => return Ok(()),
            };
            let Some(mut item) = first else { return Ok(()) };
            let mut close = false;
            let mut frames = 0;
            loop {
                match item {
                    Outbound::Deliver(d) => {
                        self.encode_delivery(&d, &mut buf);
                        if d.auto_ack {
                            settle.push(d);
                        }
                    }
                    Outbound::Frame(f) => {
                        frames += frame_cost(&f);
                        self.codec.encode(&f, &mut buf);
                    }
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
            self.write(&buf).await?;
            self.outgoing.written(frames);
            buf.clear();
            self.settle_auto(&mut settle);
            if close {
                self.socket.flush().await?;
                return Ok(());
            }
        }
    }

    /// Writes all of `bytes` within `stomp.writeTimeout`, unless the connection is killed.
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::select! {
            // Flushed too: TLS may hold encrypted records back when the socket was full,
            // and they must not wait for the next batch (or forever without heart-beats).
            r = tokio::time::timeout(self.write_timeout, async {
                self.socket.write_all(bytes).await?;
                self.socket.flush().await
            }) => match r {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write did not complete in time")),
            },
            _ = self.kill.cancelled() => Err(std::io::Error::other("connection cut off by the broker")),
        }
    }

    fn encode_delivery(&self, d: &Delivery, buf: &mut BytesMut) {
        let m = &d.entry.message;
        let message_id = m.id.0.to_string();
        let ack = ack_token(d.consumer, d.tag);
        let deliveries = d.entry.deliveries.max(1).to_string();
        let mut proto: [(&str, &str); 7] = [("", ""); 7];
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
        if d.group_first {
            proto[n] = (GROUP_FIRST_HEADER, "true");
            n += 1;
        }
        proto[n] = (DELIVERY_COUNT_HEADER, deliveries.as_str());
        n += 1;
        let user = m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        self.codec.encode_parts(Command::Message, proto[..n].iter().copied().chain(user), &m.body, buf);
        self.metrics.messages_out.inc();
        self.metrics.bytes_out.inc_by(m.body.len() as u64);
    }

    /// Auto-ack deliveries count as acknowledged once written; journaled ones get a lazy
    /// ack record (not awaited: at worst a crash redelivers them).
    fn settle_auto(&self, settle: &mut Vec<Delivery>) {
        let mut acks = Settled::default();
        for d in settle.drain(..) {
            if let Ok(settled) = self.broker.settle(&d.queue, d.consumer, d.tag, false, false) {
                acks.extend(settled);
            }
        }
        self.broker.acknowledge_lazy(acks);
    }
}
