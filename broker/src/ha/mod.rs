//! Live/backup groups: roles, the group's epoch, arbiters, and the loops a live and a
//! backup run. With replication (HornetQ/Artemis style) a live streams its journal to its
//! backups over the cluster port; a backup mirrors it, and activates only when its
//! arbiter allows. With a shared store (`shared_store`) the journal lock decides.
//!
//! With the `kubernetes` arbiter the live may lose its claim while it runs; it is then
//! *fenced*: it stops serving clients, confirms no more writes, and rejoins as a backup.
//!
//! The node loop reads top to bottom: decide the starting role, then alternate between
//! backing up and being live until shutdown. STOMP and cluster listeners are bound once
//! and served by whichever role the member holds.

pub mod arbiter;
pub mod backup;
pub mod epoch;
pub mod fence;
pub mod gate;
pub mod lease;
pub mod probe;
pub mod replica;
pub mod responder;
pub mod shared_store;
pub mod switchover;
pub mod terms;

use crate::admin::api::{BackupStatus, ClusterRefusal, HaStatus, Role, SyncState, SyncStatus};
use crate::cluster::{ClusterFrame, HandshakeConfig, Purpose, TransportError, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::tls::{Stream, TlsContext};
use crate::config::{ArbiterKind, BrokerConfig, HaConfig, HaPolicy, PreferredRole};
use crate::faults::Faults;
use crate::journal::{Journal, JournalError};
use crate::metrics::{ClusterMetrics, ClusterRefusedLabels};
use gate::{Admission, LogThrottle, PendingGate};
use arbiter::{Arbiter, ArbiterError, FileLockArbiter, QuorumArbiter, Vote};
use epoch::{Epoch, EpochError, EpochStore};
use lease::{KubernetesArbiter, LeaseMetrics, LeaseSettings};
use parking_lot::{Mutex, RwLock};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest cluster frame: a journal chunk plus headroom.
pub const MAX_CLUSTER_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum HaError {
    #[error("failed to read the cluster password")]
    Password(#[source] crate::config::ConfigError),
    #[error("failed to use the epoch file")]
    Epoch(#[from] EpochError),
    #[error("failed to mirror the live's journal")]
    Mirror(#[source] JournalError),
    #[error("journal failure during replication")]
    Journal(#[source] JournalError),
    #[error("cluster connection failed")]
    Cluster(#[source] crate::cluster::ClusterConnError),
    #[error("arbiter failed")]
    Arbiter(#[from] ArbiterError),
    #[error("failed to write the live-holder file {path}")]
    WriteLiveFile { path: PathBuf, source: std::io::Error },
    #[error("failed to find the group's Lease")]
    LeaseTarget(#[source] crate::config::ConfigError),
    #[error("failed to update the in-sync marker {path}")]
    SyncedMarker { path: PathBuf, source: std::io::Error },
    #[error("failed to use the voter's term book")]
    Terms(#[from] terms::TermsError),
}

/// What every part of the HA machinery shares.
pub struct HaContext {
    pub config: HaConfig,
    pub node_id: String,
    pub group: String,
    password: Vec<u8>,
    epoch: Mutex<Epoch>,
    epoch_store: EpochStore,
    pub arbiter: Arc<dyn Arbiter>,
    /// The certificates for the cluster port and every connection to another member.
    pub tls: Arc<TlsContext>,
    /// The fault rules every cluster connection and the mirror's fdatasyncs pass
    /// (`debug.faultInjection`; off otherwise).
    pub faults: Faults,
    /// The last refusal met dialling each member (TLS, credentials), logged at warn when it
    /// changes; forgotten once the member lets a connection through.
    dial_refusals: Mutex<std::collections::HashMap<String, String>>,
    pub journal_dir: PathBuf,
    /// What `/status` shows under `ha`.
    pub status: Arc<RwLock<Option<HaStatus>>>,
    /// The STOMP address of the live, named in a backup's ERROR to clients.
    pub live_stomp: Arc<RwLock<Option<String>>>,
    /// The AMQP address of the live (its `ha.members` entry's `amqp`), where a backup
    /// redirects AMQP clients. Set wherever `live_stomp` is, from the same live.
    pub live_amqp: Arc<RwLock<Option<String>>>,
    /// The role `/status` and `/readyz` report.
    pub role: Arc<RwLock<Role>>,
    /// The live this member follows or is.
    live_node: RwLock<Option<String>>,
    backups: Mutex<Vec<BackupStatus>>,
    /// This process handed the live role over on purpose (a switchover): as a preferred
    /// primary it does not ask for failback until it restarts.
    handed_over: std::sync::atomic::AtomicBool,
    /// With `storage.store: database`: what `/status` shows under `ha.database`.
    pub database: RwLock<Option<crate::admin::api::DatabaseStatus>>,
    /// As a voter (quorum arbiter): the newest term known of each group it votes for.
    terms: terms::TermBook,
    /// One vote at a time: a vote's check of the term book and its record are one step.
    voting: tokio::sync::Mutex<()>,
    /// The last version of this live's term notices (see [`terms`]).
    term_version: std::sync::atomic::AtomicU64,
}

/// One stretch of being live; replicas use it to ask the live to step down for failback,
/// the admin endpoint for a switchover.
#[derive(Default)]
pub struct LiveTerm {
    /// Cancelled by a replica that wants the role back, or by a switchover request.
    pub step_down: CancellationToken,
    /// Cancelled by the node once client traffic has stopped.
    pub clients_stopped: CancellationToken,
    /// Cancelled by the replica once the backup was told to take over.
    pub handed_over: CancellationToken,
    /// Cancelled by the node when the live lost its claim: replicas let their backups go
    /// to find the next live.
    pub fenced: CancellationToken,
    /// The backup this term hands the live role to, once chosen (by a failback request or a
    /// switchover): at most one per term, so two backups are never told to take over.
    handover_to: Mutex<Option<String>>,
    /// The epoch the new live was told to take.
    pub handover_epoch: std::sync::atomic::AtomicU64,
}

impl LiveTerm {
    /// Chooses `node` as the one backup to hand over to; `false` if another was chosen.
    pub fn claim_handover(&self, node: &str) -> bool {
        let mut chosen = self.handover_to.lock();
        match chosen.as_deref() {
            Some(n) => n == node,
            None => {
                *chosen = Some(node.to_string());
                true
            }
        }
    }

    pub fn handover_target(&self) -> Option<String> {
        self.handover_to.lock().clone()
    }
}

impl HaContext {
    /// Loads the epoch and builds the arbiter (for `kubernetes`, the API client from
    /// `KUBECONFIG` or the pod's service account; nothing is requested yet).
    pub async fn new(
        config: &BrokerConfig,
        node_id: String,
        status: Arc<RwLock<Option<HaStatus>>>,
        role: Arc<RwLock<Role>>,
        lease_metrics: LeaseMetrics,
        tls: Arc<TlsContext>,
        faults: Faults,
    ) -> Result<Arc<HaContext>, HaError> {
        let ha = config.ha.clone();
        let password = ha.load_password().map_err(HaError::Password)?.into_bytes();
        let epoch_store = EpochStore::new(&config.storage.data_dir);
        let epoch = epoch_store.load()?;
        // A grant keeps other candidates out while its candidate gathers votes and has its
        // first notice recorded: a vote timeout each.
        let terms = terms::TermBook::load(&config.storage.data_dir.join("ha"), &node_id, ha.arbiter.vote_timeout.get() * 2)?;
        let kubernetes = if ha.arbiter.kind == ArbiterKind::Kubernetes {
            let target =
                ha.lease_target(|key| std::env::var(key).ok(), |path| std::fs::read_to_string(path)).map_err(HaError::LeaseTarget)?;
            let client =
                lease::client(&ha.arbiter.lease).await.map_err(|e| ArbiterError::Client { reason: lease::api_error(&e) })?;
            tracing::info!(lease = %target.name, namespace = %target.namespace, "arbiter: the group's Kubernetes Lease");
            Some((client, LeaseSettings::new(target, &ha.arbiter.lease)))
        } else {
            None
        };
        let ctx = Arc::new_cyclic(|weak: &std::sync::Weak<HaContext>| {
            let arbiter: Arc<dyn Arbiter> = match kubernetes {
                Some((client, settings)) => {
                    let weak = weak.clone();
                    let in_sync = Arc::new(move || weak.upgrade().map(|ctx| ctx.synced_backups()).unwrap_or_default());
                    Arc::new(KubernetesArbiter::new(client, settings, node_id.clone(), in_sync, lease_metrics))
                }
                None if ha.arbiter.kind == ArbiterKind::FileLock => {
                    Arc::new(FileLockArbiter::new(ha.arbiter.lock_file.as_deref().unwrap_or(std::path::Path::new("live.lock"))))
                }
                None => {
                    let (ask_ctx, reach_ctx, alone_ctx) = (weak.clone(), weak.clone(), weak.clone());
                    Arc::new(QuorumArbiter::new(
                        ha.arbiter.voters.clone(),
                        ha.arbiter.vote_timeout.get(),
                        Arc::new(move |addr, request| {
                            let weak = ask_ctx.clone();
                            Box::pin(async move {
                                let ctx = weak.upgrade().ok_or_else(|| "stopping".to_string())?;
                                ask_vote(&ctx, &addr, request).await
                            })
                        }),
                        Arc::new(move |addr, begin| {
                            let weak = reach_ctx.clone();
                            Box::pin(async move {
                                let ctx = weak.upgrade().ok_or_else(|| "stopping".to_string())?;
                                tell_term(&ctx, &addr, begin).await
                            })
                        }),
                        Arc::new(move || {
                            alone_ctx.upgrade().is_some_and(|ctx| *ctx.role.read() == Role::Live && ctx.synced_backups().is_empty())
                        }),
                        ha.arbiter.retry_interval.get(),
                    ))
                }
            };
            HaContext {
                group: ha.group_name.clone(),
                config: ha,
                node_id,
                password,
                epoch: Mutex::new(epoch),
                epoch_store,
                arbiter,
                tls,
                faults,
                dial_refusals: Mutex::new(std::collections::HashMap::new()),
                journal_dir: config.storage.data_dir.join("journal"),
                status,
                live_stomp: Arc::new(RwLock::new(None)),
                live_amqp: Arc::new(RwLock::new(None)),
                role,
                live_node: RwLock::new(None),
                backups: Mutex::new(Vec::new()),
                handed_over: std::sync::atomic::AtomicBool::new(false),
                database: RwLock::new(None),
                terms,
                voting: tokio::sync::Mutex::new(()),
                term_version: std::sync::atomic::AtomicU64::new(0),
            }
        });
        Ok(ctx)
    }

    pub fn epoch(&self) -> Epoch {
        *self.epoch.lock()
    }

    /// Persists a newer epoch (never goes back).
    pub fn store_epoch(&self, epoch: Epoch) -> Result<(), HaError> {
        let mut current = self.epoch.lock();
        if epoch > *current {
            self.epoch_store.store(epoch)?;
            *current = epoch;
            drop(current);
            self.publish(None);
        }
        Ok(())
    }

    /// Takes a newer epoch another member stored in a shared data directory (shared store),
    /// without writing it back.
    pub fn reload_epoch(&self) -> Result<(), HaError> {
        let stored = self.epoch_store.load()?;
        let mut current = self.epoch.lock();
        if stored > *current {
            *current = stored;
            drop(current);
            self.publish(None);
        }
        Ok(())
    }

    /// Shows `live` (node id) as this backup's live, and names `stomp` to clients.
    pub fn show_live(&self, live: Option<&str>, stomp: Option<String>) {
        let changed = self.live_node.read().as_deref() != live;
        *self.live_stomp.write() = stomp;
        *self.live_amqp.write() = live.and_then(|node| self.config.members.iter().find(|m| m.name == node)).and_then(member_amqp);
        if changed {
            *self.live_node.write() = live.map(str::to_string);
            self.publish(None);
        }
    }

    /// Shows the shared database's state under `ha.database` (`storage.store: database`).
    pub fn set_database_status(&self, status: crate::admin::api::DatabaseStatus) {
        if self.database.read().as_ref() == Some(&status) {
            return;
        }
        *self.database.write() = Some(status);
        self.publish(None);
    }

    /// After handing the live role to `node`: clients that still reach this member are
    /// told that `node` is live (until it is followed, which says the same).
    pub fn handed_over_to(&self, node: &str) {
        self.handed_over.store(true, std::sync::atomic::Ordering::SeqCst);
        let stomp = self.config.members.iter().find(|m| m.name == node).map(|m| m.stomp.clone());
        self.show_live(Some(node), stomp);
    }

    /// Whether this process handed the live role over (see [`HaContext::handed_over_to`]).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `dataDir/ha`: the epoch, the last live and (shared store) the live-holder file.
    pub fn ha_dir(&self) -> PathBuf {
        self.journal_dir.with_file_name("ha")
    }

    pub fn handshake(&self, purpose: Purpose) -> HandshakeConfig {
        HandshakeConfig {
            node_id: self.node_id.clone(),
            group: self.group.clone(),
            user: self.config.cluster.user.clone(),
            password: self.password.clone(),
            epoch: self.epoch().0,
            purpose,
            max_frame: MAX_CLUSTER_FRAME,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            faults: self.faults.clone(),
        }
    }

    /// Opens a cluster connection to another member (`addr` is `host:port`), over TLS when
    /// the cluster port is on TLS. A refusal (TLS, credentials) is logged at warn when it
    /// differs from the last one, so a probe every check period does not repeat it.
    pub async fn open(
        &self,
        addr: &str,
        purpose: Purpose,
        connect_timeout: Duration,
    ) -> Result<(crate::cluster::ClusterConn<Stream>, crate::cluster::ServerPeer), TransportError> {
        let (host, port) = crate::cluster::transport::split_addr(addr).ok_or_else(|| TransportError::Address { addr: addr.to_string() })?;
        match crate::cluster::transport::open(host, port, &self.tls, &self.handshake(purpose), connect_timeout).await {
            Ok(x) => {
                let was_refused = self.dial_refusals.lock().remove(addr).is_some();
                if was_refused {
                    self.publish(None);
                }
                Ok(x)
            }
            Err(e) => {
                let refused = e.is_tls() || e.handshake().is_some_and(|h| h.kind() == "authentication" || h.kind() == "mismatch");
                if refused {
                    let described = e.describe();
                    let changed = {
                        let mut last = self.dial_refusals.lock();
                        let changed = last.get(addr) != Some(&described);
                        if changed {
                            tracing::warn!(member = %addr, error = %described, "cluster connection to a member refused");
                            last.insert(addr.to_string(), described);
                        }
                        changed
                    };
                    if changed {
                        self.publish(None);
                    }
                }
                Err(e)
            }
        }
    }

    fn publish(&self, sync: Option<SyncStatus>) {
        let role = *self.role.read();
        let backups = self.backups.lock().clone();
        let previous_sync = self.status.read().as_ref().and_then(|s| s.sync.clone());
        let sync = if role == Role::Backup { sync.or(previous_sync) } else { None };
        *self.status.write() = Some(HaStatus {
            group: self.group.clone(),
            epoch: self.epoch().0,
            live: self.live_node.read().clone(),
            sync,
            // Shared-store writes land on the shared volume: a live there is never alone.
            alone: role == Role::Live
                && self.config.policy == HaPolicy::Replication
                && !backups.iter().any(|b| b.state == SyncState::Synced),
            backups: if role == Role::Live { backups } else { Vec::new() },
            database: self.database.read().clone(),
            refused_by: {
                let mut refused: Vec<ClusterRefusal> = self
                    .dial_refusals
                    .lock()
                    .iter()
                    .map(|(member, reason)| ClusterRefusal { member: member.clone(), reason: reason.clone() })
                    .collect();
                refused.sort_by(|a, b| a.member.cmp(&b.member));
                refused
            },
        });
    }

    pub fn set_backup_status(&self, live: Option<&str>, state: SyncState, lag_bytes: u64, lag_records: u64) {
        if let Some(l) = live {
            *self.live_node.write() = Some(l.to_string());
        }
        self.publish(Some(SyncStatus { state, lag_bytes, lag_records }));
    }

    /// Records a backup's progress; `/status` is rebuilt only when something changed
    /// (this runs once per replicated batch).
    pub fn update_backup(&self, status: BackupStatus) {
        let mut backups = self.backups.lock();
        let became_synced = status.state == SyncState::Synced;
        let changed_state = match backups.iter_mut().find(|b| b.node == status.node) {
            Some(b) if *b == status => return,
            Some(b) => {
                let changed = b.state != status.state;
                *b = status;
                changed
            }
            None => {
                backups.push(status);
                true
            }
        };
        drop(backups);
        if changed_state {
            self.log_alone();
            if became_synced {
                self.arbiter.in_sync_grew();
            }
        }
        self.publish(None);
    }

    /// The node ids of the backups in sync with this live, sorted.
    pub fn synced_backups(&self) -> Vec<String> {
        let mut nodes: Vec<String> =
            self.backups.lock().iter().filter(|b| b.state == SyncState::Synced).map(|b| b.node.clone()).collect();
        nodes.sort();
        nodes
    }

    pub fn remove_backup(&self, node: &str) {
        self.backups.lock().retain(|b| b.node != node);
        self.log_alone();
        self.publish(None);
    }

    fn log_alone(&self) {
        if *self.role.read() == Role::Live && !self.backups.lock().iter().any(|b| b.state == SyncState::Synced) {
            tracing::warn!(group = %self.group, "no backup in sync: the live carries on alone, writes are not replicated");
        }
    }

    fn become_role(&self, role: Role) {
        *self.role.write() = role;
        if role == Role::Live {
            *self.live_node.write() = Some(self.node_id.clone());
            self.backups.lock().clear();
        }
        self.publish(None);
    }
}

/// Asks one voter whether the live is gone.
async fn ask_vote(ctx: &HaContext, addr: &str, request: arbiter::ActivationRequest) -> Result<Vote, String> {
    let (mut conn, _) = ctx.open(addr, Purpose::Vote, ctx.config.connection_ttl.get()).await.map_err(|e| e.describe())?;
    conn.send(&ClusterFrame::VoteRequest {
        group: request.group,
        live_node: request.live_node,
        live_addr: request.live_addr,
        epoch: request.epoch,
    })
    .await
    .map_err(|e| crate::report::error_chain(&e))?;
    match conn.recv().await {
        Ok(Some(ClusterFrame::VoteReply { granted, reason, .. })) => Ok(Vote { granted, reason }),
        Ok(Some(other)) => Err(format!("unexpected {} instead of a vote", other.name())),
        Ok(None) => Err("voter closed the connection".into()),
        Err(e) => Err(crate::report::error_chain(&e)),
    }
}

/// The live journal, when this member is live, for replication requests.
pub type LiveSlot = Arc<RwLock<Option<(Journal, Arc<LiveTerm>)>>>;

/// Serves the cluster port for the life of the process: probes, votes, and (when live)
/// replication to backups and inbound network bridges. Connections in their handshake pass the [`gate`]
/// (`ha.cluster.maxPendingConnections`). Refusals are counted in metrics and logged at most
/// once a second per kind (with how many since), so a flood is not a flood of log lines.
pub async fn serve_cluster(
    ctx: Arc<HaContext>,
    listener: TcpListener,
    live: LiveSlot,
    network: crate::network::NetworkSlot,
    metrics: ClusterMetrics,
    stop: CancellationToken,
) {
    let gate = PendingGate::new(ctx.config.cluster.max_pending_connections, metrics.pending.clone());
    let logs = Arc::new(RefusalLogs::default());
    loop {
        let Some(admitted) = admit_next(&listener, &gate, &metrics, &logs, &stop).await else {
            return;
        };
        let (ctx, live, stop, metrics) = (Arc::clone(&ctx), Arc::clone(&live), stop.clone(), metrics.clone());
        let (network, logs) = (Arc::clone(&network), Arc::clone(&logs));
        tokio::spawn(async move {
            let role = match *ctx.role.read() {
                Role::Live => "live",
                Role::Backup => "backup",
                Role::Fenced => "fenced",
                _ => "starting",
            };
            let config = ctx.handshake(Purpose::Probe);
            let Some((mut conn, peer)) = admitted.handshake(&config, role, &ctx.tls, &metrics, &logs).await else {
                return;
            };
            match peer.purpose {
                Purpose::Probe => {}
                Purpose::Bridge | Purpose::Grouping => {
                    let net = network.read().clone();
                    match net {
                        Some(net) if *ctx.role.read() == Role::Live => net.serve_peer(conn, peer).await,
                        _ => {
                            let live = ctx.live_stomp.read().clone();
                            let reason = responder::not_live_message(&ctx.group, live.map(|a| format!("stomp://{a}")).as_deref());
                            let _ = conn.send(&ClusterFrame::Goodbye { reason }).await;
                        }
                    }
                }
                Purpose::Vote => match conn.recv().await {
                    Ok(Some(ClusterFrame::VoteRequest { group, live_node, live_addr, epoch })) => {
                        let reply = decide_vote(&ctx, &peer.node_id, &group, &live_node, &live_addr, epoch).await;
                        tracing::info!(voter_for = %peer.node_id, %group, %live_node, granted = matches!(reply, ClusterFrame::VoteReply { granted: true, .. }), "voted");
                        let _ = conn.send(&reply).await;
                    }
                    Ok(Some(ClusterFrame::TermNotice { group, epoch, version, holders })) => {
                        let reply = record_term(&ctx, &peer.node_id, &group, terms::TermRecord { epoch, version, holders });
                        let _ = conn.send(&reply).await;
                    }
                    _ => {}
                },
                Purpose::Replicate => {
                    let slot = live.read().clone();
                    let Some((journal, term)) = slot else {
                        let _ = conn.send(&ClusterFrame::Goodbye { reason: "not live".into() }).await;
                        return;
                    };
                    if peer.epoch > ctx.epoch().0 {
                        // A backup that knows a newer epoch: this live is stale and must go.
                        tracing::error!(backup = %peer.node_id, their_epoch = peer.epoch, our_epoch = ctx.epoch().0, "a member knows a newer epoch: stepping down");
                        term.step_down.cancel();
                        return;
                    }
                    tracing::info!(backup = %peer.node_id, "backup connected");
                    match replica::serve(&ctx, &term, &journal, &mut conn, &peer, &stop).await {
                        Ok(end) => tracing::info!(backup = %peer.node_id, ?end, "replication to backup ended"),
                        Err(e) => tracing::warn!(backup = %peer.node_id, error = %crate::report::error_chain(&e), "replication to backup failed"),
                    }
                }
            }
        });
    }
}

/// A cluster port's refusal logs, each written at most once a second (with how many since).
#[derive(Default)]
pub struct RefusalLogs {
    /// Turned away or displaced for `ha.cluster.maxPendingConnections`.
    limit: parking_lot::Mutex<LogThrottle>,
    /// Handshakes that failed.
    failed: parking_lot::Mutex<LogThrottle>,
}

/// A connection that got a place at the gate, not yet authenticated.
pub struct Admitted {
    stream: TcpStream,
    peer_addr: std::net::SocketAddr,
    place: gate::PendingPlace,
    limit: usize,
}

impl Admitted {
    /// Runs the server side of the handshake while the connection holds its place. A
    /// handshake that fails, or is displaced by a newcomer, is counted and logged; `None`.
    /// TLS comes first when the cluster port is on TLS, within the same place and timeout.
    pub async fn handshake(
        self,
        config: &HandshakeConfig,
        role: &str,
        tls: &TlsContext,
        metrics: &ClusterMetrics,
        logs: &RefusalLogs,
    ) -> Option<(crate::cluster::ClusterConn<Stream>, crate::cluster::ClientPeer)> {
        let Admitted { stream, peer_addr, place, limit } = self;
        let handshake = tokio::select! {
            result = crate::cluster::transport::accept(stream, tls, config, role) => Some(result),
            _ = place.displaced().cancelled() => None,
        };
        drop(place);
        match handshake {
            Some(Ok(x)) => Some(x),
            None => {
                metrics.refused.get_or_create(&ClusterRefusedLabels { reason: "pending_limit" }).inc();
                let allowed = logs.limit.lock().allow();
                if let Some(closed) = allowed {
                    tracing::warn!(
                        peer = %peer_addr,
                        limit,
                        closed,
                        "closed a cluster connection stalled in its handshake to make room: ha.cluster.maxPendingConnections were in their handshake"
                    );
                }
                None
            }
            Some(Err(e)) => {
                metrics.refused.get_or_create(&ClusterRefusedLabels { reason: e.kind() }).inc();
                let allowed = logs.failed.lock().allow();
                if let Some(refused) = allowed {
                    tracing::warn!(peer = %peer_addr, error = %e.describe(), refused, "refused a cluster connection");
                }
                None
            }
        }
    }
}

/// Accepts the next cluster connection that gets a place at `gate`. One that does not is
/// counted, logged at most once a second, told the port is busy and closed. `None` once
/// `stop` is cancelled. Shared by a member's cluster port and a standalone broker's.
pub async fn admit_next(
    listener: &TcpListener,
    gate: &PendingGate,
    metrics: &ClusterMetrics,
    logs: &RefusalLogs,
    stop: &CancellationToken,
) -> Option<Admitted> {
    loop {
        let (stream, peer_addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return None,
        };
        match gate.admit(std::time::Instant::now()) {
            Admission::Admitted(place) | Admission::Displaced(place) => {
                let _ = stream.set_nodelay(true);
                return Some(Admitted { stream, peer_addr, place, limit: gate.limit() });
            }
            Admission::Refused => {
                metrics.refused.get_or_create(&ClusterRefusedLabels { reason: "pending_limit" }).inc();
                let allowed = logs.limit.lock().allow();
                if let Some(refused) = allowed {
                    tracing::warn!(
                        peer = %peer_addr,
                        limit = gate.limit(),
                        refused,
                        "turned cluster connections away: ha.cluster.maxPendingConnections connections are in their handshake, none for a second yet"
                    );
                }
                refuse_busy(&stream, gate.limit());
            }
        }
    }
}

/// Best effort, without waiting: a `Refused` frame saying the port is busy (see
/// [`crate::cluster::handshake::BUSY_REFUSAL`]), then the socket closes when the caller drops it.
fn refuse_busy(stream: &TcpStream, limit: usize) {
    if let Some(bytes) = crate::cluster::refusal_bytes(&crate::cluster::busy_reason(limit)) {
        let _ = stream.try_write(&bytes);
    }
}

/// Tells the voter at `addr` who holds this live's writes now (see [`terms`]), or, with
/// `begin`, that this member starts that epoch alone (the first notice of a term it won).
async fn tell_term(ctx: &HaContext, addr: &str, begin: Option<u64>) -> Result<(), String> {
    let version = {
        let now = terms::now_ms();
        let previous = ctx.term_version.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        if previous >= now {
            ctx.term_version.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
        } else {
            now
        }
    };
    let mut holders = vec![ctx.node_id.clone()];
    if begin.is_none() {
        holders.extend(ctx.synced_backups());
    }
    let epoch = begin.unwrap_or(ctx.epoch().0);
    let notice = ClusterFrame::TermNotice { group: ctx.group.clone(), epoch, version, holders };
    let (mut conn, _) = ctx.open(addr, Purpose::Vote, ctx.config.connection_ttl.get()).await.map_err(|e| e.describe())?;
    conn.send(&notice).await.map_err(|e| crate::report::error_chain(&e))?;
    match conn.recv().await {
        Ok(Some(ClusterFrame::VoteReply { granted: true, .. })) => Ok(()),
        Ok(Some(ClusterFrame::VoteReply { reason, .. })) => Err(reason),
        Ok(Some(other)) => Err(format!("unexpected {} instead of a reply", other.name())),
        Ok(None) => Err("voter closed the connection (a voter too old to keep terms?)".into()),
        Err(e) => Err(crate::report::error_chain(&e)),
    }
}

/// A voter records a live's term notice; a notice older than what it knows is refused.
fn record_term(ctx: &HaContext, live: &str, group: &str, record: terms::TermRecord) -> ClusterFrame {
    let (epoch, holders) = (record.epoch, record.holders.join(","));
    match ctx.terms.notice(group, live, record, terms::now_ms()) {
        Ok(Ok(())) => {
            tracing::debug!(%live, %group, epoch, %holders, "recorded a live's term");
            ClusterFrame::VoteReply { granted: true, live_seen: true, reason: "recorded".into() }
        }
        Ok(Err(reason)) => {
            tracing::warn!(%live, %group, epoch, %reason, "refused a stale live's term notice");
            ClusterFrame::VoteReply { granted: false, live_seen: true, reason }
        }
        Err(e) => ClusterFrame::VoteReply { granted: false, live_seen: false, reason: crate::report::error_chain(&e) },
    }
}

async fn decide_vote(ctx: &HaContext, candidate: &str, group: &str, live_node: &str, live_addr: &str, epoch: u64) -> ClusterFrame {
    if group == ctx.group && ctx.live_node.read().as_deref() == Some(ctx.node_id.as_str()) && *ctx.role.read() == Role::Live {
        return ClusterFrame::VoteReply { granted: false, live_seen: true, reason: format!("{} is the live of {group}", ctx.node_id) };
    }
    // The book's check and the record of a grant are one step: two candidates asking at
    // once never both pass.
    let _one_vote = ctx.voting.lock().await;
    if let Some(reason) = ctx.terms.refuses(group, candidate, epoch, terms::now_ms()) {
        return ClusterFrame::VoteReply { granted: false, live_seen: false, reason };
    }
    let reply = probe_live(ctx, live_node, live_addr, epoch).await;
    if let ClusterFrame::VoteReply { granted: true, .. } = reply {
        // Checked again with the grant, in one step: a live's notice may have come in
        // while the live was probed.
        match ctx.terms.grant(group, candidate, epoch, terms::now_ms()) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return ClusterFrame::VoteReply { granted: false, live_seen: false, reason },
            Err(e) => return ClusterFrame::VoteReply { granted: false, live_seen: false, reason: crate::report::error_chain(&e) },
        }
    }
    reply
}

/// Whether the live a candidate lost still answers this voter: then no vote.
async fn probe_live(ctx: &HaContext, live_node: &str, live_addr: &str, epoch: u64) -> ClusterFrame {
    if live_addr.is_empty() {
        return ClusterFrame::VoteReply { granted: true, live_seen: false, reason: "no live named".into() };
    }
    match probe::probe(ctx, live_addr).await {
        Ok(peer) if peer.role == "live" && peer.epoch >= epoch => ClusterFrame::VoteReply {
            granted: false,
            live_seen: true,
            reason: format!("live {live_node} answers me (epoch {})", peer.epoch),
        },
        // Not live (yet), but it took a newer epoch than the candidate's: a hand-over (a
        // failback, a switchover) to it is under way, and the candidate is the old live.
        Ok(peer) if peer.epoch > epoch => ClusterFrame::VoteReply {
            granted: false,
            live_seen: true,
            reason: format!("{} answers as {} with a newer epoch {} than the candidate's {epoch}", peer.node_id, peer.role, peer.epoch),
        },
        Ok(peer) => ClusterFrame::VoteReply {
            granted: true,
            live_seen: false,
            reason: format!("{} answers as {} epoch {}", peer.node_id, peer.role, peer.epoch),
        },
        // It answered, so it is up: its cluster port is only full of handshakes (perhaps a
        // stranger's), which is no reason for a second live.
        Err(e) if e.busy => ClusterFrame::VoteReply {
            granted: false,
            live_seen: true,
            reason: format!("live {live_node} answers me, busy: {e}"),
        },
        Err(e) => ClusterFrame::VoteReply { granted: true, live_seen: false, reason: format!("live {live_node} unreachable: {e}") },
    }
}

/// The role to start in: backup of a live that answers; otherwise live if this member is
/// the preferred primary or was the last live; otherwise a backup waiting for a live.
pub async fn starting_role(ctx: &HaContext) -> StartAs {
    // Give members a few check periods to answer before deciding nobody is live.
    for _ in 0..3 {
        if let Some((member, epoch)) = probe::find_live(ctx).await {
            return StartAs::Backup { reason: format!("{} is live (epoch {epoch})", member.name), fenced: false };
        }
        tokio::time::sleep(ctx.config.check_period.get()).await;
    }
    let last_live = ctx.epoch_store_last_live();
    if ctx.config.role != PreferredRole::Primary && last_live.as_deref() != Some(ctx.node_id.as_str()) {
        return StartAs::Backup { reason: "no live answers; waiting for one".into(), fenced: false };
    }
    // Starting live without a live to follow: the arbiter says whether this journal may be
    // the group's (a quorum's voters know whether another member holds newer writes).
    let epoch = ctx.epoch().0;
    let request = arbiter::ActivationRequest {
        group: ctx.group.clone(),
        live_node: last_live.clone().unwrap_or_default(),
        live_addr: String::new(),
        epoch,
        complete_copy: epoch == 0 || ctx.marked_synced(),
    };
    match ctx.arbiter.may_start_live(&request).await {
        Ok(arbiter::Decision::Granted { reason, epoch }) => {
            if let Some(epoch) = epoch {
                if let Err(e) = ctx.store_epoch(epoch) {
                    return StartAs::Backup { reason: format!("no live answers, but {}", crate::report::error_chain(&e)), fenced: false };
                }
            }
            StartAs::Live { reason: format!("no live answers; {reason}"), took_over: false }
        }
        Ok(arbiter::Decision::Denied { reason }) => {
            tracing::warn!(arbiter = ctx.arbiter.name(), %reason, "no live answers, but this member may not start live: waiting as a backup");
            StartAs::Backup { reason: format!("no live answers; the arbiter says no: {reason}"), fenced: false }
        }
        Err(e) => StartAs::Backup { reason: format!("no live answers; the arbiter failed: {}", crate::report::error_chain(&e)), fenced: false },
    }
}

#[derive(Debug)]
pub enum StartAs {
    /// `took_over`: activated from backup, so recovered messages may have been delivered.
    Live { reason: String, took_over: bool },
    /// `fenced`: a live that lost its claim; it reports `fenced` until it follows a live.
    Backup { reason: String, fenced: bool },
}

impl HaContext {
    fn last_live_path(&self) -> PathBuf {
        self.ha_dir().join("last-live")
    }

    fn epoch_store_last_live(&self) -> Option<String> {
        std::fs::read_to_string(self.last_live_path()).ok().map(|s| s.trim().to_string())
    }

    /// `dataDir/ha/synced-with`: present while this member's journal is complete: a copy
    /// of the live it names, written once in sync, or its own while it is or was live;
    /// removed before a resync touches the journal.
    fn synced_marker_path(&self) -> PathBuf {
        self.ha_dir().join("synced-with")
    }

    /// Records durably that the journal is a complete copy of `live`'s (its own when live),
    /// so a restarted member may still take over (if its arbiter lists it in sync).
    pub fn mark_synced(&self, live: &str) -> Result<(), HaError> {
        let path = self.synced_marker_path();
        epoch::write_durably(&path, format!("{live}\n").as_bytes()).map_err(|source| HaError::SyncedMarker { path, source })
    }

    /// Forgets the marker, durably, before the journal stops being a complete copy.
    pub fn unmark_synced(&self) -> Result<(), HaError> {
        let path = self.synced_marker_path();
        let err = |source| HaError::SyncedMarker { path: path.clone(), source };
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(self.ha_dir()).and_then(|d| d.sync_all()).map_err(err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    pub fn marked_synced(&self) -> bool {
        self.synced_marker_path().exists()
    }

    /// Records that this member is live (with its epoch already stored) and tells `/status`.
    pub fn activated(&self) -> Result<(), HaError> {
        // A live's journal is the group's: complete until it follows another live.
        self.mark_synced(&self.node_id)?;
        let path = self.last_live_path();
        let err = |source| HaError::Epoch(EpochError::Write { path: path.clone(), source });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(&path, format!("{}\n", self.node_id)).map_err(err)?;
        self.become_role(Role::Live);
        // Voters that keep the group's terms learn who holds its writes from now on.
        self.arbiter.in_sync_grew();
        Ok(())
    }

    /// A live handing its role over: clients have stopped; it reports `stopping` until it
    /// follows the new live, so two members never report live at once.
    pub fn stepping_down(&self) {
        self.become_role(Role::Stopping);
    }

    pub fn became_backup(&self) {
        self.become_role(Role::Backup);
    }

    /// A live that lost its claim: it serves nobody and waits for a live to follow.
    pub fn became_fenced(&self) {
        // No longer live, and who is comes from the Lease or the next probe.
        *self.live_node.write() = None;
        self.become_role(Role::Fenced);
    }

    /// A backup reached a live: a fenced member is an ordinary backup from here on.
    pub fn following_live(&self) {
        let fenced = *self.role.read() == Role::Fenced;
        if fenced {
            self.become_role(Role::Backup);
        }
    }
}

/// Where AMQP clients reach `member` while it is live (its `amqp` entry), if it says.
pub fn member_amqp(member: &crate::config::Member) -> Option<String> {
    Some(member.amqp.trim()).filter(|a| !a.is_empty()).map(str::to_string)
}
