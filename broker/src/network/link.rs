//! One connection of a bridge, from either end, until it breaks: it reads and writes
//! cluster frames, stores what the remote forwards (through the engine's one accept
//! call), forwards what the remote asks for, and keeps both sides' demand current.
//!
//! Reading and writing run as two small tasks, so a side busy writing still reads the
//! other's confirmations: every frame either side sends is bounded by a window (prefetch
//! for forwards, one confirmation per forward, one demand per change), so neither queue
//! between the tasks and this loop grows without bound.

use super::demand::PATH_HEADER;
use super::forwarder::Forwarder;
use super::{LinkShared, Network};
use crate::cluster::frame::{ClusterFrame, DemandEntry};
use crate::cluster::ClusterConn;
use crate::engine::accept::{AcceptError, Commit, Durable, Incoming};
use futures::stream::{FuturesOrdered, StreamExt};
use futures::future::BoxFuture;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use crate::tls::Stream;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

/// How often demand that changed is sent, at most.
const DEMAND_EVERY: Duration = Duration::from_millis(50);
/// How often static includes, rests and drains are looked at without a change.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What this end of the link does.
pub struct Roles<'a> {
    /// Forwards what the remote wants (the connector's side; the remote's too if duplex).
    pub forwarder: Option<&'a mut Forwarder>,
    /// Stores what the remote forwards and tells it what we want.
    pub receive: bool,
}

/// Runs the link over an authenticated connection until it breaks or `net` stops;
/// returns why it ended.
pub async fn run(net: &Arc<Network>, link: &Arc<LinkShared>, conn: ClusterConn<Stream>, roles: Roles<'_>) -> String {
    let mut wire = Wire::start(conn);
    let ended = session(net, link, &mut wire.inbound, &wire.out, &wire.heard, roles).await;
    wire.close().await;
    ended
}

/// An authenticated cluster connection as two tasks: frames read (pings answered) arrive
/// on `inbound`, frames for `out` are written. Bridges and the grouping link use it.
pub(crate) struct Wire {
    pub inbound: mpsc::UnboundedReceiver<Result<ClusterFrame, String>>,
    pub out: mpsc::UnboundedSender<ClusterFrame>,
    /// When the remote was last heard from (any frame).
    pub heard: Arc<parking_lot::Mutex<Instant>>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Wire {
    /// Takes over `conn` (with any bytes it received already, and its fault tap).
    pub(crate) fn start(conn: ClusterConn<Stream>) -> Wire {
        let (rd, wr) = conn.split();
        let (in_tx, inbound) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::unbounded_channel::<ClusterFrame>();
        let heard = Arc::new(parking_lot::Mutex::new(Instant::now()));
        let reader = tokio::spawn(read_loop(rd, in_tx, out.clone(), Arc::clone(&heard)));
        let writer = tokio::spawn(write_loop(wr, out_rx));
        Wire { inbound, out, heard, reader, writer }
    }

    /// Stops reading, lets the writer send what is queued (a Goodbye), then closes.
    pub(crate) async fn close(self) {
        self.reader.abort();
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer).await;
    }
}

/// A forward being stored: its seq on the link, its dedup id, the outcome.
type Storing = BoxFuture<'static, (u64, String, Result<Durable, AcceptError>)>;

async fn session(
    net: &Arc<Network>,
    link: &Arc<LinkShared>,
    inbound: &mut mpsc::UnboundedReceiver<Result<ClusterFrame, String>>,
    out: &mpsc::UnboundedSender<ClusterFrame>,
    heard: &parking_lot::Mutex<Instant>,
    roles: Roles<'_>,
) -> String {
    let Roles { mut forwarder, receive } = roles;
    let broker = Arc::clone(&net.broker);
    let mut deliveries = forwarder.as_mut().and_then(|f| f.take_deliveries());
    let mut pinning = forwarder.as_mut().map(|f| f.take_pinning()).unwrap_or_default();
    if let Some(f) = forwarder.as_mut() {
        f.link_up(&link.peer_group, out);
        if pinning.is_empty() {
            f.flush_pins(&mut pinning);
        }
    }
    let mut storing: FuturesOrdered<Storing> = FuturesOrdered::new();
    let mut consumers = broker.consumer_changes();
    let mut relayed = net.relay.subscribe();
    let mut advertised: Option<Vec<DemandEntry>> = None;
    let mut demand_dirty = receive;
    let mut drain_seen = false;
    let mut demand_tick = tokio::time::interval(DEMAND_EVERY);
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    let mut ping = tokio::time::interval(net.identity.check_period);
    let silence = net.identity.connection_ttl;
    let ended = loop {
        tokio::select! {
            frame = inbound.recv() => {
                let frame = match frame {
                    None => break "connection closed".to_string(),
                    Some(Err(e)) => break e,
                    Some(Ok(frame)) => frame,
                };
                match frame {
                    ClusterFrame::Demand { entries } => {
                        *link.remote_demand.lock() = entries;
                        net.relay.send_modify(|v| *v += 1);
                        if let Some(f) = forwarder.as_mut() {
                            f.apply_demand(&link.remote_demand.lock());
                        }
                    }
                    ClusterFrame::Forward { seq, .. } if receive && broker.drain.is_draining() => {
                        let reason = format!("group {} is draining and being removed: it takes no messages", net.identity.group);
                        let _ = out.send(ClusterFrame::ForwardRefused { seq, reason });
                    }
                    ClusterFrame::Forward { seq, persistent, destination, dedup_id, path, mut headers, body } if receive => {
                        headers.push((PATH_HEADER.to_string(), path.join(",")));
                        let incoming = Incoming { destination, headers, body, persistent, dedup_id: Some(dedup_id.clone()) };
                        // Accepted one at a time and in order, so they become durable in the
                        // order they were forwarded; the fsyncs overlap.
                        match broker.accept(incoming, Commit::Grouped).await {
                            Ok(acceptance) => storing.push_back(Box::pin(async move { (seq, dedup_id, acceptance.await) })),
                            Err(e) => storing.push_back(Box::pin(async move { (seq, dedup_id, Err(e)) })),
                        }
                    }
                    ClusterFrame::Forward { .. } => break "the remote forwarded over a link that is not duplex".to_string(),
                    ClusterFrame::Forwarded { seq } => {
                        if let Some(f) = forwarder.as_mut() {
                            if f.confirm(seq) {
                                link.forwarded_out.fetch_add(1, Ordering::Relaxed);
                                net.metrics_forwarded(link, "out");
                                if broker.drain.is_target(&link.peer_group) {
                                    broker.drain.count_forwarded();
                                    net.metrics.drained.inc();
                                }
                            }
                        }
                    }
                    ClusterFrame::ForwardRefused { seq, reason } => {
                        if let Some(f) = forwarder.as_mut() {
                            f.refused(seq, &reason);
                            net.metrics.refused.get_or_create(&link.labels()).inc();
                        }
                    }
                    ClusterFrame::Goodbye { reason } => break format!("the remote closed the link: {reason}"),
                    other => break format!("unexpected {} frame on a bridge", other.name()),
                }
            }
            Some((seq, dedup_id, result)) = storing.next(), if !storing.is_empty() => match result {
                Ok(durable) => {
                    durable.publish();
                    // Forwards held behind this one when its first write failed follow it.
                    net.held.stored(&dedup_id);
                    link.forwarded_in.fetch_add(1, Ordering::Relaxed);
                    net.metrics_forwarded(link, "in");
                    let _ = out.send(ClusterFrame::Forwarded { seq });
                }
                // The write failed, but the record may be on a backup that takes over (a
                // live fenced mid-write): a refusal would let the sender hand the message
                // to another group. The link closes instead; the sender sends it again on
                // the next one, to whichever member is live then, and duplicate detection
                // stores it once.
                Err(e @ (AcceptError::Persist(_) | AcceptError::Resolved)) => {
                    // The writes under way settle first (a failed one forgets its id), so
                    // that the resends meet duplicate detection as the journal has it. Those
                    // that became durable are held unpublished until every failed one
                    // before them is stored again: published now, they would reach
                    // consumers before it.
                    settle_behind(net, &link.name, std::mem::take(&mut storing), Some(dedup_id)).await;
                    let reason = format!("could not store a forward ({}); it is to be sent again", crate::report::error_chain(&e));
                    let _ = out.send(ClusterFrame::Goodbye { reason: reason.clone() });
                    break reason;
                }
                Err(e) => {
                    let reason = crate::report::error_chain(&e);
                    tracing::info!(link = %link.name, %reason, "refused a forwarded message");
                    let _ = out.send(ClusterFrame::ForwardRefused { seq, reason });
                }
            },
            Some(delivery) = next_delivery(&mut deliveries) => {
                if let Some(f) = forwarder.as_mut() {
                    f.on_delivery(delivery, out);
                    while let Some(delivery) = deliveries.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        f.on_delivery(delivery, out);
                    }
                    // One pin record at a time: what comes meanwhile shares the next one.
                    if pinning.is_empty() {
                        f.flush_pins(&mut pinning);
                    }
                }
            }
            Some((batch, result)) = pinning.next(), if !pinning.is_empty() => {
                if let Some(f) = forwarder.as_mut() {
                    f.pinned(batch, result, out);
                    f.flush_pins(&mut pinning);
                }
            }
            // A drain began: the forwarder takes up every queue now, not at the next refresh.
            _ = broker.drain.started(), if !drain_seen => {
                drain_seen = true;
                if let Some(f) = forwarder.as_mut() {
                    f.apply_demand(&link.remote_demand.lock());
                }
            }
            _ = consumers.changed(), if receive => demand_dirty = true,
            _ = relayed.changed() => demand_dirty = receive,
            _ = demand_tick.tick(), if demand_dirty => {
                demand_dirty = false;
                let entries = net.advertisement(link);
                if advertised.as_ref() != Some(&entries) {
                    link.local_demand_count.store(entries.len() as u64, Ordering::Relaxed);
                    let _ = out.send(ClusterFrame::Demand { entries: entries.clone() });
                    advertised = Some(entries);
                }
            }
            _ = refresh.tick() => {
                demand_dirty = receive;
                if let Some(f) = forwarder.as_mut() {
                    f.apply_demand(&link.remote_demand.lock());
                }
            }
            _ = ping.tick() => {
                let quiet = heard.lock().elapsed();
                if quiet > silence {
                    break format!("no word from the remote for {silence:?}");
                }
                let at = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
                let _ = out.send(ClusterFrame::Ping { at });
            }
            _ = net.stop.cancelled() => {
                let _ = out.send(ClusterFrame::Goodbye { reason: "the broker stops being live".into() });
                break "stopping".to_string();
            }
        }
    };
    if let Some(f) = forwarder.as_mut() {
        if let Some(rx) = deliveries.take() {
            f.return_deliveries(rx);
        }
        f.return_pinning(pinning);
        f.link_down();
    }
    if !storing.is_empty() {
        // Forwards already handed to the journal are stored whatever became of the link:
        // publish them in the order they came, as they become durable. The remote resends
        // them (it saw no confirmation) and finds them stored.
        let (net, name) = (Arc::clone(net), link.name.clone());
        tokio::spawn(async move { settle_behind(&net, &name, storing, None).await });
    }
    ended
}

/// Settles the forwards still being stored on a link that ends, in order: each published as
/// it becomes durable, until one fails (or from the start, with `failed`, the dedup id of
/// one that failed before them); those durable after that are held unpublished until every
/// failed one is stored again (see [`super::held`]).
async fn settle_behind(net: &Network, link: &str, mut storing: FuturesOrdered<Storing>, failed: Option<String>) {
    let mut failed: std::collections::HashSet<String> = failed.into_iter().collect();
    let mut behind = Vec::new();
    while let Some((_, dedup_id, result)) = storing.next().await {
        match result {
            Ok(durable) if failed.is_empty() => {
                durable.publish();
                net.held.stored(&dedup_id);
            }
            Ok(durable) => behind.push(durable),
            Err(_) => {
                failed.insert(dedup_id);
            }
        }
    }
    net.held.hold(link, failed, behind, super::forwarder::RELEASE_AFTER);
}

async fn next_delivery(rx: &mut Option<mpsc::UnboundedReceiver<crate::engine::queue::Outbound>>) -> Option<crate::engine::queue::Outbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads frames for the session, and answers pings itself: a session waiting for room on
/// a full destination still shows the remote it is alive.
async fn read_loop(
    mut conn: ClusterConn<ReadHalf<Stream>>,
    tx: mpsc::UnboundedSender<Result<ClusterFrame, String>>,
    out: mpsc::UnboundedSender<ClusterFrame>,
    heard: Arc<parking_lot::Mutex<Instant>>,
) {
    loop {
        match conn.recv().await {
            Ok(Some(frame)) => {
                *heard.lock() = Instant::now();
                match frame {
                    ClusterFrame::Ping { at } => {
                        let _ = out.send(ClusterFrame::Pong { at });
                    }
                    ClusterFrame::Pong { .. } => {}
                    frame => {
                        if tx.send(Ok(frame)).is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(None) => {
                let _ = tx.send(Err("the remote closed the connection".into()));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(crate::report::error_chain(&e)));
                return;
            }
        }
    }
}

/// Bytes of frames queued before they are written in one go.
const WRITE_BATCH: usize = 1024 * 1024;

async fn write_loop(mut conn: ClusterConn<WriteHalf<Stream>>, mut rx: mpsc::UnboundedReceiver<ClusterFrame>) {
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        // Everything queued goes out in one write.
        while let Some(frame) = next {
            if let Err(e) = conn.queue(&frame) {
                tracing::warn!(frame = frame.name(), error = %crate::report::error_chain(&e), "failed to encode a cluster frame; closing the link");
                return;
            }
            next = if conn.queued() < WRITE_BATCH { rx.try_recv().ok() } else { None };
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
    let _ = conn.shutdown().await;
}
