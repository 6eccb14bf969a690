//! The REMOTE grouping handler: a link to the live of the local handler's group (tried in
//! the order of `grouping.address`, following its failover as a bridge does), proposals
//! over it, and a cache of the bindings learnt. Bindings used from the cache are reported
//! to the local handler so its reaper keeps them; a cached binding not confirmed over a
//! link for `grouping.groupTimeout` is forgotten, as the local handler may have reaped it.

use super::GroupingError;
use crate::cluster::{ClusterFrame, HandshakeConfig, Purpose, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::config::connector_uri::{ConnectorUri, TcpAddress};
use crate::config::GroupingConfig;
use crate::metrics::GroupingMetrics;
use crate::network::Identity;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use crate::tls::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum AskError {
    /// The local handler answered with no binding.
    Refused(String),
}

struct Cached {
    owner: Arc<str>,
    /// Used since the last touch was sent.
    used: bool,
    /// Learnt or last reported over a link.
    confirmed: Instant,
}

type Decision = Result<String, String>;

/// Cached bindings by queue, then group.
type Cache = HashMap<Arc<str>, HashMap<Arc<str>, Cached>>;

pub struct RemoteHandler {
    identity: Identity,
    addresses: Vec<TcpAddress>,
    address: String,
    max_groups: usize,
    group_timeout: Duration,
    metrics: GroupingMetrics,
    cache: Mutex<Cache>,
    /// The link's outbox while linked.
    link: watch::Sender<Option<mpsc::UnboundedSender<ClusterFrame>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Decision>>>,
    next_id: AtomicU64,
    /// Linked to (member address), and the last error.
    state: Mutex<(Option<String>, Option<String>)>,
}

impl RemoteHandler {
    pub fn start(identity: &Identity, config: &GroupingConfig, metrics: GroupingMetrics, stop: CancellationToken) -> Result<Arc<RemoteHandler>, GroupingError> {
        let address = config.address.clone().unwrap_or_default();
        let uri: ConnectorUri = address
            .parse()
            .map_err(|e: crate::config::connector_uri::UriError| GroupingError::Address { address: address.clone(), message: e.to_string() })?;
        if identity.password.is_empty() {
            return Err(GroupingError::NoPassword);
        }
        let handler = Arc::new(RemoteHandler {
            identity: identity.clone(),
            addresses: uri.addresses.clone(),
            address,
            max_groups: config.max_groups,
            group_timeout: config.group_timeout.get(),
            metrics,
            cache: Mutex::new(HashMap::new()),
            link: watch::channel(None).0,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            state: Mutex::new((None, Some("not linked yet".into()))),
        });
        tokio::spawn(Arc::clone(&handler).run(stop.clone()));
        let touch_every = if handler.group_timeout.is_zero() {
            config.reaper_period.get()
        } else {
            config.reaper_period.get().min(handler.group_timeout / 4).max(Duration::from_millis(100))
        };
        tokio::spawn(Arc::clone(&handler).housekeeping(touch_every, stop));
        Ok(handler)
    }

    /// The owner of a binding learnt before, marking it used.
    pub fn known(&self, queue: &str, group: &str) -> Option<Arc<str>> {
        let mut cache = self.cache.lock();
        let c = cache.get_mut(queue)?.get_mut(group)?;
        c.used = true;
        Some(Arc::clone(&c.owner))
    }

    /// Asks the local handler, over whichever link is up, until it answers; the caller
    /// bounds the wait (`grouping.timeout`).
    pub async fn ask(&self, queue: &str, group: &str, proposal: &str) -> Result<Arc<str>, AskError> {
        self.metrics.proposals.inc();
        let mut links = self.link.subscribe();
        loop {
            let Ok(out) = links.wait_for(Option::is_some).await.map(|l| l.clone()) else {
                return Err(AskError::Refused("the grouping handler stopped".into()));
            };
            let Some(out) = out else { continue };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.pending.lock().insert(id, tx);
            let _forget = Forget { pending: &self.pending, id };
            let frame = ClusterFrame::GroupPropose { id, queue: queue.into(), group: group.into(), owner: proposal.into() };
            if out.send(frame).is_err() {
                // The link just went: wait for the next one.
                links.mark_changed();
                tokio::time::sleep(FIRST_RETRY).await;
                continue;
            }
            match rx.await {
                Ok(Ok(owner)) => {
                    let owner: Arc<str> = Arc::from(owner);
                    self.learn(queue, group, &owner);
                    return Ok(owner);
                }
                Ok(Err(reason)) => return Err(AskError::Refused(reason)),
                // The link broke before the answer: ask the next live.
                Err(_) => continue,
            }
        }
    }

    fn learn(&self, queue: &str, group: &str, owner: &Arc<str>) {
        let mut cache = self.cache.lock();
        let entries = cache.entry(Arc::from(queue)).or_default();
        if entries.len() >= self.max_groups && !entries.contains_key(group) {
            return;
        }
        let fresh = entries
            .insert(Arc::from(group), Cached { owner: Arc::clone(owner), used: false, confirmed: Instant::now() })
            .is_none();
        if fresh {
            self.metrics.bindings.inc();
        }
    }

    /// Why no decision may come now, for the timeout ERROR.
    pub fn unreachable_reason(&self) -> String {
        let (linked, error) = self.link_state();
        match (linked, error) {
            (Some(member), _) => format!("the local handler at {member} did not answer"),
            (None, Some(e)) => format!("the local grouping handler ({}) is unreachable: {e}", self.address),
            (None, None) => format!("the local grouping handler ({}) is unreachable", self.address),
        }
    }

    pub fn link_state(&self) -> (Option<String>, Option<String>) {
        self.state.lock().clone()
    }

    /// Keeps a link to the local handler's live until `stop`.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut retry = FIRST_RETRY;
        let mut logged: Option<String> = None;
        while !stop.is_cancelled() {
            let mut failures = Vec::new();
            for address in &self.addresses {
                let attempt = tokio::select! {
                    a = self.attempt(address) => a,
                    _ = stop.cancelled() => return,
                };
                match attempt {
                    Ok((conn, peer_node)) => {
                        retry = FIRST_RETRY;
                        logged = None;
                        self.serve(conn, address, &peer_node, &stop).await;
                        failures.clear();
                        break;
                    }
                    Err(e) => failures.push(format!("{address}: {e}")),
                }
            }
            if failures.is_empty() {
                continue;
            }
            let message = failures.join("; ");
            self.state.lock().1 = Some(message.clone());
            if logged.as_deref() != Some(message.as_str()) {
                tracing::info!(address = %self.address, error = %message, "grouping handler: local handler not reachable yet; retrying");
                logged = Some(message);
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.cancelled() => return,
            }
            retry = (retry * 2).min(LAST_RETRY);
        }
    }

    async fn attempt(&self, address: &TcpAddress) -> Result<(crate::cluster::ClusterConn<Stream>, String), String> {
        let config = HandshakeConfig {
            node_id: self.identity.node_id.clone(),
            group: self.identity.group.clone(),
            user: self.identity.user.clone(),
            password: self.identity.password.clone(),
            epoch: 0,
            purpose: Purpose::Grouping,
            max_frame: crate::ha::MAX_CLUSTER_FRAME,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            faults: self.identity.faults.clone(),
        };
        let (mut conn, peer) = crate::cluster::transport::open(&address.host, address.port, &self.identity.tls, &config, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.describe())?;
        if peer.role != "live" {
            let said = match tokio::time::timeout(Duration::from_secs(1), conn.recv()).await {
                Ok(Ok(Some(ClusterFrame::Goodbye { reason }))) => reason,
                _ => format!("{} is {}", peer.node_id, peer.role),
            };
            return Err(said);
        }
        Ok((conn, peer.node_id))
    }

    async fn serve(&self, conn: crate::cluster::ClusterConn<Stream>, address: &TcpAddress, peer_node: &str, stop: &CancellationToken) {
        let mut wire = crate::network::link::Wire::start(conn);
        let out = wire.out.clone();
        *self.state.lock() = (Some(address.to_string()), None);
        self.metrics.connected.set(1);
        tracing::info!(local = %peer_node, %address, "grouping handler linked to the local handler");
        // Every cached binding is reported to the new live at once: it may be a backup
        // that just took over, whose reaper clocks started afresh.
        self.touch(&out, true);
        self.link.send_replace(Some(out.clone()));
        let mut ping = tokio::time::interval(self.identity.check_period);
        let silence = self.identity.connection_ttl;
        let ended = loop {
            tokio::select! {
                frame = wire.inbound.recv() => match frame {
                    None => break "connection closed".to_string(),
                    Some(Err(e)) => break e,
                    Some(Ok(ClusterFrame::GroupDecision { id, owner, error })) => {
                        if let Some(tx) = self.pending.lock().remove(&id) {
                            let _ = tx.send(if error.is_empty() { Ok(owner) } else { Err(error) });
                        }
                    }
                    Some(Ok(ClusterFrame::Goodbye { reason })) => break format!("the local handler closed the link: {reason}"),
                    Some(Ok(other)) => break format!("unexpected {} frame from the local grouping handler", other.name()),
                },
                _ = ping.tick() => {
                    let quiet = wire.heard.lock().elapsed();
                    if quiet > silence {
                        break format!("no word from the local handler for {silence:?}");
                    }
                    let _ = out.send(ClusterFrame::Ping { at: u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX) });
                }
                _ = stop.cancelled() => {
                    let _ = out.send(ClusterFrame::Goodbye { reason: "the broker stops being live".into() });
                    break "stopping".to_string();
                }
            }
        };
        self.link.send_replace(None);
        // Askers waiting on this link ask the next one.
        self.pending.lock().clear();
        self.metrics.connected.set(0);
        *self.state.lock() = (None, Some(ended.clone()));
        drop(out);
        wire.close().await;
        if !stop.is_cancelled() {
            tracing::warn!(local = %peer_node, %address, reason = %ended, "grouping handler lost the local handler; reconnecting");
        }
    }

    /// Reports used (or, with `all`, every) cached binding to the local handler.
    fn touch(&self, out: &mpsc::UnboundedSender<ClusterFrame>, all: bool) {
        let mut bindings = Vec::new();
        let now = Instant::now();
        {
            let mut cache = self.cache.lock();
            for (queue, entries) in cache.iter_mut() {
                for (group, c) in entries.iter_mut() {
                    if c.used || all {
                        bindings.push((queue.to_string(), group.to_string()));
                        c.used = false;
                        c.confirmed = now;
                    }
                }
            }
        }
        for chunk in bindings.chunks(1024) {
            let _ = out.send(ClusterFrame::GroupTouch { bindings: chunk.to_vec() });
        }
    }

    /// Reports used bindings while linked, and forgets cached ones unconfirmed for
    /// `grouping.groupTimeout`.
    async fn housekeeping(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let out = self.link.borrow().clone();
            if let Some(out) = out {
                self.touch(&out, false);
            }
            if self.group_timeout.is_zero() {
                continue;
            }
            let mut forgotten = 0;
            {
                let mut cache = self.cache.lock();
                for entries in cache.values_mut() {
                    entries.retain(|_, c| {
                        let keep = c.confirmed.elapsed() <= self.group_timeout;
                        forgotten += usize::from(!keep);
                        keep
                    });
                }
                cache.retain(|_, e| !e.is_empty());
            }
            if forgotten > 0 {
                self.metrics.bindings.dec_by(i64::try_from(forgotten).unwrap_or(i64::MAX));
                self.metrics.reaped.inc_by(forgotten as u64);
                tracing::info!(forgotten, "forgot cached group bindings not confirmed within grouping.groupTimeout");
            }
        }
    }
}

/// Removes a proposal's waiter however the ask ends (answered, timed out, link lost).
struct Forget<'a> {
    pending: &'a Mutex<HashMap<u64, oneshot::Sender<Decision>>>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}
