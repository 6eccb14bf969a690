//! The LOCAL grouping handler: the cluster's bindings of message groups to groups,
//! decided first come first served, each a journal record of this broker's group (so
//! they replicate and survive a failover), reaped when unused for `grouping.groupTimeout`.

use super::BINDINGS;
use crate::cluster::{ClientPeer, ClusterConn, ClusterFrame};
use crate::config::GroupingConfig;
use crate::engine::Broker;
use crate::journal::MessageId;
use crate::metrics::GroupingMetrics;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use crate::tls::Stream;
use crate::network::link::Wire;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Record header names of a binding.
const QUEUE: &str = "queue";
const GROUP: &str = "group";
const OWNER: &str = "owner";

struct Binding {
    owner: Arc<str>,
    record: MessageId,
    last_used: Instant,
    /// `None` until the record is durable, then whether it was written.
    ready: watch::Receiver<Option<bool>>,
}

type Bindings = HashMap<Arc<str>, HashMap<Arc<str>, Binding>>;

pub struct LocalHandler {
    broker: Arc<Broker>,
    max_groups: usize,
    metrics: GroupingMetrics,
    /// Bindings by queue, then group.
    state: Mutex<Bindings>,
}

impl LocalHandler {
    /// Rebuilds the bindings from the journal's records and starts the reaper.
    pub fn start(broker: Arc<Broker>, config: &GroupingConfig, metrics: GroupingMetrics, stop: CancellationToken) -> Arc<LocalHandler> {
        let (state, stale) = recover(&broker);
        broker.forget_records(&stale);
        let handler = Arc::new(LocalHandler { broker, max_groups: config.max_groups, metrics, state: Mutex::new(state) });
        let count = handler.count();
        handler.metrics.bindings.set(i64::try_from(count).unwrap_or(i64::MAX));
        if count > 0 {
            tracing::info!(bindings = count, "grouping handler recovered its bindings");
        }
        let group_timeout = config.group_timeout.get();
        if !group_timeout.is_zero() {
            let (h, period) = (Arc::clone(&handler), config.reaper_period.get());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => h.reap(group_timeout),
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        handler
    }

    fn count(&self) -> usize {
        self.state.lock().values().map(HashMap::len).sum()
    }

    /// The owner of a binding that is durable, marking it used.
    pub fn known(&self, queue: &str, group: &str) -> Option<Arc<str>> {
        let mut st = self.state.lock();
        let b = st.get_mut(queue)?.get_mut(group)?;
        if *b.ready.borrow() != Some(true) {
            return None;
        }
        b.last_used = Instant::now();
        Some(Arc::clone(&b.owner))
    }

    /// The owner of `group` of `queue`: the binding made before, or `proposal`, bound now
    /// (answered once its record is durable). An error says why no binding could be had.
    pub async fn decide(self: &Arc<Self>, queue: &str, group: &str, proposal: &str) -> Result<Arc<str>, String> {
        self.metrics.proposals.inc();
        let (owner, mut ready) = {
            let mut st = self.state.lock();
            let bindings = st.entry(Arc::from(queue)).or_default();
            match bindings.get_mut(group) {
                Some(b) => {
                    b.last_used = Instant::now();
                    (Arc::clone(&b.owner), b.ready.clone())
                }
                None => {
                    if bindings.len() >= self.max_groups {
                        return Err(format!(
                            "it holds grouping.maxGroups ({}) bindings for {queue}; retry once unused ones are reaped (grouping.groupTimeout) or raise the limit",
                            self.max_groups
                        ));
                    }
                    let owner: Arc<str> = Arc::from(proposal);
                    let headers = vec![(QUEUE.into(), queue.into()), (GROUP.into(), group.into()), (OWNER.into(), proposal.into())];
                    let (record, write) = self.broker.journal_record(BINDINGS, headers);
                    let (tx, rx) = watch::channel(None);
                    bindings.insert(Arc::from(group), Binding { owner: Arc::clone(&owner), record, last_used: Instant::now(), ready: rx.clone() });
                    self.metrics.bindings.inc();
                    tracing::debug!(%queue, %group, owner = %owner, "group bound");
                    let (handler, queue, group) = (Arc::downgrade(self), queue.to_string(), group.to_string());
                    tokio::spawn(async move {
                        let written = write.await;
                        if let Err(e) = &written {
                            tracing::warn!(%queue, %group, error = %crate::report::error_chain(e), "failed to journal a group binding");
                            if let Some(h) = handler.upgrade() {
                                h.forget_failed(&queue, &group, record);
                            }
                        }
                        let _ = tx.send(Some(written.is_ok()));
                    });
                    (owner, rx)
                }
            }
        };
        match ready.wait_for(Option::is_some).await.map(|v| *v) {
            Ok(Some(true)) => Ok(owner),
            _ => Err("it failed to journal the binding".to_string()),
        }
    }

    /// Forgets a binding whose record could not be written (unless it was replaced).
    fn forget_failed(&self, queue: &str, group: &str, record: MessageId) {
        let mut st = self.state.lock();
        if let Some(bindings) = st.get_mut(queue) {
            if bindings.get(group).is_some_and(|b| b.record == record) {
                bindings.remove(group);
                self.metrics.bindings.dec();
            }
        }
    }

    /// Marks bindings a remote handler used.
    pub fn touch(&self, used: &[(String, String)]) {
        let mut st = self.state.lock();
        let now = Instant::now();
        for (queue, group) in used {
            if let Some(b) = st.get_mut(queue.as_str()).and_then(|q| q.get_mut(group.as_str())) {
                b.last_used = now;
            }
        }
    }

    /// Removes bindings unused for `timeout`.
    fn reap(&self, timeout: Duration) {
        let mut gone = Vec::new();
        {
            let mut st = self.state.lock();
            for bindings in st.values_mut() {
                bindings.retain(|_, b| {
                    let stale = *b.ready.borrow() == Some(true) && b.last_used.elapsed() > timeout;
                    if stale {
                        gone.push(b.record);
                    }
                    !stale
                });
            }
            st.retain(|_, b| !b.is_empty());
        }
        if !gone.is_empty() {
            self.broker.forget_records(&gone);
            self.metrics.reaped.inc_by(gone.len() as u64);
            self.metrics.bindings.dec_by(i64::try_from(gone.len()).unwrap_or(i64::MAX));
            tracing::info!(reaped = gone.len(), ?timeout, "reaped unused group bindings (grouping.groupTimeout)");
        }
    }

    /// Answers one remote handler until its connection ends.
    pub async fn serve(self: &Arc<Self>, conn: ClusterConn<Stream>, peer: ClientPeer, identity: &crate::network::Identity) {
        tracing::info!(remote = %peer.node_id, group = %peer.group, "remote grouping handler connected");
        let mut wire = Wire::start(conn);
        let mut deciding = FuturesUnordered::new();
        let mut check = tokio::time::interval(identity.check_period);
        let silence = identity.connection_ttl;
        let ended = loop {
            tokio::select! {
                frame = wire.inbound.recv() => match frame {
                    None => break "connection closed".to_string(),
                    Some(Err(e)) => break e,
                    Some(Ok(ClusterFrame::GroupPropose { id, queue, group, owner })) => {
                        deciding.push(async move { (id, self.decide(&queue, &group, &owner).await) });
                    }
                    Some(Ok(ClusterFrame::GroupTouch { bindings })) => self.touch(&bindings),
                    Some(Ok(ClusterFrame::Goodbye { reason })) => break format!("the remote closed the link: {reason}"),
                    Some(Ok(other)) => break format!("unexpected {} frame from a remote grouping handler", other.name()),
                },
                Some((id, decided)) = deciding.next(), if !deciding.is_empty() => {
                    let frame = match decided {
                        Ok(owner) => ClusterFrame::GroupDecision { id, owner: owner.to_string(), error: String::new() },
                        Err(error) => ClusterFrame::GroupDecision { id, owner: String::new(), error },
                    };
                    let _ = wire.out.send(frame);
                }
                _ = check.tick() => {
                    if wire.heard.lock().elapsed() > silence {
                        break format!("no word from the remote for {silence:?}");
                    }
                }
            }
        };
        wire.close().await;
        tracing::info!(remote = %peer.node_id, group = %peer.group, reason = %ended, "remote grouping handler disconnected");
    }
}

/// The bindings the journal holds; where one (queue, group) has several records (a reaped
/// binding whose removal a crash lost), the newest wins and the others are returned to
/// be removed.
fn recover(broker: &Broker) -> (Bindings, Vec<MessageId>) {
    let mut state: Bindings = HashMap::new();
    let mut stale = Vec::new();
    let (_, ready) = watch::channel(Some(true));
    for record in broker.take_own_records(BINDINGS) {
        let get = |name: &str| record.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let (Some(queue), Some(group), Some(owner)) = (get(QUEUE), get(GROUP), get(OWNER)) else {
            tracing::warn!(id = record.id.0, "ignoring a group binding record without queue, group and owner");
            stale.push(record.id);
            continue;
        };
        let bindings = state.entry(Arc::from(queue)).or_default();
        let binding = Binding { owner: Arc::from(owner), record: record.id, last_used: Instant::now(), ready: ready.clone() };
        match bindings.get(group) {
            Some(b) if b.record > record.id => stale.push(record.id),
            Some(b) => {
                stale.push(b.record);
                bindings.insert(Arc::from(group), binding);
            }
            None => {
                bindings.insert(Arc::from(group), binding);
            }
        }
    }
    (state, stale)
}
