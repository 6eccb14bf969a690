//! The broker process's life: admin endpoint first (so /healthz answers during
//! recovery), then journal recovery, then the STOMP listener; on shutdown the reverse,
//! with the journal flushed last. With `ha.policy: replication` the member alternates
//! between backup and live (see `ha`), on listeners bound once. With `sharedStore` it
//! waits as a backup until it can open the shared journal, then is live until shutdown.

use crate::admin::api::Role;
use crate::admin::{self, AdminState, StoreCheck};
use crate::config::{BrokerConfig, HaPolicy, ReplicationMode, StoreKind, User};
use crate::engine::{Broker, EngineError};
use crate::faults::Faults;
use crate::db::Database;
use crate::ha::shared_store::{self, Decision, LiveHolder, SharedStoreMember};
use crate::ha::{self, backup::BackupOutcome, HaContext, HaError, LiveTerm, StartAs};
use crate::journal::JournalMetrics;
use crate::metrics::Metrics;
use crate::server::{self, connection::ConnectionContext};
use crate::tls::TlsContext;
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("failed to listen for {what} on {addr}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("failed to load users")]
    Users(#[source] crate::config::ConfigError),
    #[error("failed to start the broker")]
    Engine(#[source] EngineError),
    #[error("failed to flush the journal at shutdown")]
    Close(#[source] crate::journal::JournalError),
    #[error("the live/backup group failed")]
    Ha(#[source] HaError),
    #[error("failed to start the network bridges")]
    Network(#[source] crate::network::NetworkError),
    #[error("failed to start the grouping handler")]
    Grouping(#[source] crate::grouping::GroupingError),
    #[error("failed to read the cluster password")]
    Password(#[source] crate::config::ConfigError),
    #[error("replication streams the file journal: it needs storage.store: file")]
    NotFileStore,
    #[error("failed to use the shared database")]
    Database(#[source] crate::db::DbError),
    #[error("failed to load the TLS certificates (tls:)")]
    Tls(#[source] crate::tls::TlsError),
}

/// How long shutdown waits for connections to finish their in-flight work.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a live that agreed to fail back waits for its backup to take over.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(30);

struct Shared {
    config: Arc<BrokerConfig>,
    /// The certificates in use for every listener and outgoing cluster connection.
    tls: Arc<TlsContext>,
    users: Vec<User>,
    metrics: Arc<Metrics>,
    journal_metrics: JournalMetrics,
    state: AdminState,
    /// The AMQP listener (`amqp.enabled`), bound once like STOMP's; served while live.
    amqp: Option<Arc<TcpListener>>,
    /// The fault rules (`debug.faultInjection`; off otherwise), shared by the cluster
    /// connections, the journal and the admin endpoint that sets them.
    faults: Faults,
}

/// Runs the broker until `shutdown` is cancelled.
pub async fn run(mut config: BrokerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    if config.ha.policy != HaPolicy::None {
        let choice = config.ha.effective_role(|key| std::env::var(key).ok());
        tracing::info!(role = ?choice.role, reason = %choice.reason, group = %config.ha.group_name, "preferred role chosen");
        config.ha.role = choice.role;
    }
    let config = Arc::new(config);
    let users = config.load_users().map_err(RunError::Users)?;
    if users.is_empty() {
        tracing::warn!("no users configured: accepting anonymous clients (set auth.users or auth.usersFile)");
    } else if config.auth.allow_anonymous {
        tracing::info!(users = users.len(), "authentication on; anonymous clients allowed too");
    } else {
        tracing::info!(users = users.len(), "authentication on");
    }
    let (metrics, journal_metrics) = Metrics::new(&config.metrics);
    let metrics = Arc::new(metrics);
    let tls = TlsContext::new(&config.tls, metrics.tls.clone()).map_err(RunError::Tls)?;
    if config.tls.any_enabled() {
        tracing::info!(
            stomp = config.tls.stomp.enabled,
            amqp = config.tls.amqp.enabled,
            cluster = config.tls.cluster.enabled,
            admin = config.tls.admin.enabled,
            client_auth = ?config.tls.stomp.client_auth,
            "TLS on; certificate files checked for changes every {}", config.tls.reload_interval
        );
    }
    let tls_watch = CancellationToken::new();
    tokio::spawn(Arc::clone(&tls).watch(tls_watch.clone()));
    let faults = if config.debug.fault_injection {
        tracing::warn!(
            path = admin::api::DEBUG_FAULTS,
            "FAULT INJECTION IS ON (debug.faultInjection): anyone holding the cluster password can make this broker drop, delay, duplicate or reorder cluster frames, cut it off from its peers and fail its journal fdatasyncs through the admin API; a testing feature, never for production"
        );
        Faults::new(metrics.faults.clone())
    } else {
        Faults::off()
    };

    let admin_listener = bind("admin HTTP", config.admin.listen).await?;
    let state = AdminState {
        broker: Arc::new(RwLock::new(None)),
        role: Arc::new(RwLock::new(Role::Starting)),
        metrics: Arc::clone(&metrics),
        node_id: Arc::new(RwLock::new(String::new())),
        ha: Arc::new(RwLock::new(None)),
        policy: config.ha.policy,
        shared_store: Arc::new(RwLock::new(admin::StoreCheck::default())),
        switchover: Arc::new(RwLock::new(None)),
        network: Arc::new(RwLock::new(None)),
        config: Arc::clone(&config),
        fence: Arc::new(ha::fence::AdminFence::default()),
        tls: Arc::clone(&tls),
        users: Arc::new(users.clone()),
        faults: faults.clone(),
    };
    let admin_stop = CancellationToken::new();
    tracing::info!(addr = %admin_listener.local_addr().unwrap_or(config.admin.listen), "admin endpoint listening");
    let admin_task = tokio::spawn(admin::serve(admin_listener, state.clone(), admin_stop.clone()));
    let stomp_listener = bind("STOMP", config.stomp.listen).await?;
    let amqp = match config.amqp.enabled {
        true => Some(Arc::new(bind("AMQP", config.amqp.listen).await?)),
        false => None,
    };
    let shared = Shared { config: Arc::clone(&config), tls, users, metrics, journal_metrics, state: state.clone(), amqp, faults };

    let result = match config.ha.policy {
        HaPolicy::Replication => run_replicated(&shared, &stomp_listener, &shutdown).await,
        HaPolicy::SharedStore if config.storage.store == StoreKind::Database => {
            run_shared_database(&shared, &stomp_listener, &shutdown).await
        }
        HaPolicy::SharedStore => run_shared_store(&shared, &stomp_listener, &shutdown).await,
        HaPolicy::None => run_standalone(&shared, &stomp_listener, &shutdown).await,
    };
    *state.role.write() = Role::Stopping;
    tls_watch.cancel();
    admin_stop.cancel();
    let _ = admin_task.await;
    if result.is_ok() {
        tracing::info!("broker stopped");
    }
    result
}

/// Opens the data directory and recovers the journal (`took_over`: after a failover,
/// recovered messages count as possibly delivered).
async fn open(shared: &Shared, took_over: bool) -> Result<Arc<Broker>, RunError> {
    let started = std::time::Instant::now();
    let (config, users, metrics) = (Arc::clone(&shared.config), shared.users.clone(), shared.journal_metrics.clone());
    let (engine_metrics, faults) = (shared.metrics.engine.clone(), shared.faults.clone());
    let opened = tokio::task::spawn_blocking(move || Broker::open(config, users, metrics, engine_metrics, faults, took_over)).await;
    let (broker, report) = match opened {
        Ok(r) => r.map_err(RunError::Engine)?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    tracing::info!(
        node = %broker.node_id,
        messages = report.messages,
        queues = report.queues,
        segments = report.segments,
        records = report.records,
        took_ms = started.elapsed().as_millis() as u64,
        data_dir = %shared.config.storage.data_dir.display(),
        "journal recovered"
    );
    *shared.state.node_id.write() = broker.node_id.clone();
    *shared.state.broker.write() = Some(Arc::clone(&broker));
    Ok(broker)
}

/// A standalone broker: live from start to shutdown. It listens on the cluster port for
/// inbound network bridges when it has a cluster password.
async fn run_standalone(shared: &Shared, stomp: &TcpListener, shutdown: &CancellationToken) -> Result<(), RunError> {
    let broker = open(shared, false).await?;
    let identity = identity(shared, &broker)?;
    let cluster_task = inbound_bridges(shared, &identity, shutdown).await?;
    let result = serve_live(shared, stomp, &broker, identity, shutdown.clone()).await;
    if let Some(task) = cluster_task {
        task.abort();
    }
    result.and(close(&broker).await)
}

/// A live that is not replicated (standalone, shared store) listens on the cluster port
/// for other groups' network bridges and grouping links while it is live, when it has a
/// cluster password; a backup does not listen, so a `masterslave:` list moves past it.
async fn inbound_bridges(
    shared: &Shared,
    identity: &crate::network::Identity,
    stop: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, RunError> {
    if identity.password.is_empty() {
        return Ok(None);
    }
    let listener = bind("cluster", shared.config.ha.cluster.listen).await?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(shared.config.ha.cluster.listen), "cluster port listening (network bridges)");
    Ok(Some(tokio::spawn(crate::network::listener::serve(
        listener,
        identity.clone(),
        Arc::clone(&shared.state.network),
        shared.metrics.cluster.clone(),
        shared.config.ha.cluster.max_pending_connections,
        stop.clone(),
    ))))
}

/// Who this broker is on the network of brokers. The cluster password is read each time
/// (once per live term), so a rotated Secret counts from the next term.
fn identity(shared: &Shared, broker: &Broker) -> Result<crate::network::Identity, RunError> {
    let ha = &shared.config.ha;
    let password = ha.load_password().map_err(RunError::Password)?.into_bytes();
    Ok(crate::network::Identity {
        node_id: broker.node_id.clone(),
        group: broker.group_name().to_string(),
        user: ha.cluster.user.clone(),
        password,
        tls: Arc::clone(&shared.tls),
        check_period: ha.check_period.get().max(Duration::from_millis(200)),
        // A bridge's loop may wait on a full destination; it is not the live's heartbeat.
        connection_ttl: (ha.connection_ttl.get() * 3).max(Duration::from_secs(3)),
        faults: shared.faults.clone(),
    })
}

/// Serves clients until `stop` is cancelled, then lets connections drain. The network
/// bridges run for as long.
async fn serve_live(
    shared: &Shared,
    listener: &TcpListener,
    broker: &Arc<Broker>,
    identity: crate::network::Identity,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let bridges = stop.child_token();
    let network = crate::network::Network::start(
        Arc::clone(broker),
        identity.clone(),
        &shared.config.network,
        shared.metrics.network.clone(),
        bridges.clone(),
    )
    .map_err(RunError::Network)?;
    let grouping = crate::grouping::Grouping::start(
        broker,
        &identity,
        &shared.config.grouping,
        Arc::downgrade(&network),
        shared.metrics.grouping.clone(),
        bridges.clone(),
    )
    .map_err(RunError::Grouping)?;
    network.set_grouping(grouping.clone());
    tokio::spawn(crate::engine::paging::run(Arc::clone(broker), bridges.clone()));
    broker.set_group_router(grouping.map(|g| g as Arc<dyn crate::engine::accept::GroupRouter>));
    *shared.state.network.write() = Some(network);
    tracing::info!(addr = %listener.local_addr().unwrap_or(shared.config.stomp.listen), "STOMP listening");
    *shared.state.role.write() = Role::Live;
    let ctx = ConnectionContext::new(Arc::clone(broker), Arc::clone(&shared.metrics), Arc::clone(&shared.tls), stop);
    let amqp = shared.amqp.as_ref().map(|amqp| {
        let (amqp, ctx) = (Arc::clone(amqp), ctx.clone());
        tracing::info!(
            addr = %amqp.local_addr().unwrap_or(shared.config.amqp.listen),
            not_supported_yet = crate::amqp::NOT_SUPPORTED_YET,
            "AMQP 1.0 listening"
        );
        tokio::spawn(async move { crate::amqp::run(&amqp, ctx, DRAIN_TIMEOUT).await })
    });
    server::run(listener, ctx, DRAIN_TIMEOUT).await;
    if let Some(amqp) = amqp {
        let _ = amqp.await;
    }
    bridges.cancel();
    broker.set_group_router(None);
    if let Some(network) = shared.state.network.write().take() {
        network.set_grouping(None);
    }
    // A drain belongs to the term that was asked: the next live is asked again.
    shared.metrics.network.draining.set(0);
    Ok(())
}

/// What a member that is not live answers clients until `stop`: STOMP's "not live" ERROR
/// and, with `amqp.enabled`, AMQP's `amqp:connection:redirect` to the live.
async fn respond_not_live(shared: &Shared, ctx: &HaContext, stomp: &TcpListener, stop: CancellationToken) {
    let stomp = ha::responder::serve(stomp, ctx.group.clone(), Arc::clone(&ctx.live_stomp), Arc::clone(&shared.tls), stop.clone());
    match &shared.amqp {
        Some(amqp) => {
            let redirect = crate::amqp::redirect::Redirect {
                group: ctx.group.clone(),
                node: ctx.node_id.clone(),
                live: Arc::clone(&ctx.live_amqp),
                metrics: shared.metrics.amqp.clone(),
                tls: Arc::clone(&shared.tls),
            };
            tokio::join!(stomp, redirect.serve(amqp, stop));
        }
        None => stomp.await,
    }
}

async fn close(broker: &Arc<Broker>) -> Result<(), RunError> {
    tracing::info!("connections closed; flushing the journal");
    let closing = Arc::clone(broker);
    match tokio::task::spawn_blocking(move || closing.close()).await {
        Ok(r) => r.map_err(RunError::Close),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The node id (`node.id`, else the one kept in `storage.dataDir`), shown on `/status`.
fn resolve_node_id(shared: &Shared) -> Result<String, RunError> {
    let config = &shared.config;
    std::fs::create_dir_all(&config.storage.data_dir)
        .map_err(|source| RunError::Engine(EngineError::CreateDataDir { path: config.storage.data_dir.clone(), source }))?;
    let node_id = crate::engine::resolve_node_id(&config.node.id, &config.storage.data_dir).map_err(RunError::Engine)?;
    *shared.state.node_id.write() = node_id.clone();
    Ok(node_id)
}

/// What a member of a live/backup group shares with its HA machinery (`/status` `ha`).
async fn ha_context(shared: &Shared, node_id: String) -> Result<Arc<HaContext>, RunError> {
    let (status, role, lease) = (Arc::clone(&shared.state.ha), Arc::clone(&shared.state.role), shared.metrics.lease.clone());
    HaContext::new(&shared.config, node_id, status, role, lease, Arc::clone(&shared.tls), shared.faults.clone())
        .await
        .map_err(RunError::Ha)
}

/// While an admin request keeps this member fenced: it reports `fenced`, answers clients
/// "not live", and neither replicates nor tries for the live role. Returns whether it was
/// fenced at all, or `None` at shutdown.
async fn hold_fenced(shared: &Shared, ctx: &HaContext, stomp: &TcpListener, shutdown: &CancellationToken) -> Option<bool> {
    let fence = &shared.state.fence;
    if !fence.is_fenced() {
        return Some(false);
    }
    ctx.became_fenced();
    *shared.state.broker.write() = None;
    // A claim taken just as the fence came (a backup granted activation) is given up, so
    // another member can take over; nothing is released when none is held.
    ctx.arbiter.release().await;
    tracing::warn!(group = %ctx.group, "fenced by an admin request: not replicating and never live until unfenced; the data directory is kept");
    let stop_responder = CancellationToken::new();
    let responder = respond_not_live(shared, ctx, stomp, stop_responder.clone());
    let held = tokio::select! {
        _ = fence.unfenced() => Some(true),
        _ = shutdown.cancelled() => None,
        _ = responder => None,
    };
    stop_responder.cancel();
    if held.is_some() {
        tracing::warn!(group = %ctx.group, "unfenced: rejoining the group as a backup");
        ctx.became_backup();
    }
    held
}

/// The replicated member: backup and live in turn, until shutdown.
async fn run_replicated(shared: &Shared, stomp: &TcpListener, shutdown: &CancellationToken) -> Result<(), RunError> {
    let config = &shared.config;
    let node_id = resolve_node_id(shared)?;
    let ctx = ha_context(shared, node_id).await?;
    let cluster = bind("cluster", config.ha.cluster.listen).await?;
    tracing::info!(addr = %cluster.local_addr().unwrap_or(config.ha.cluster.listen), group = %ctx.group, epoch = ctx.epoch().0, "cluster port listening");
    let live_slot: ha::LiveSlot = Arc::new(RwLock::new(None));
    *shared.state.switchover.write() = Some(Arc::new(ha::switchover::Switchover::new(Arc::clone(&ctx), Arc::clone(&live_slot))));
    let cluster_task = tokio::spawn(ha::serve_cluster(
        Arc::clone(&ctx),
        cluster,
        Arc::clone(&live_slot),
        Arc::clone(&shared.state.network),
        shared.metrics.cluster.clone(),
        shutdown.clone(),
    ));
    let mut start = ha::starting_role(&ctx).await;
    let result = loop {
        match hold_fenced(shared, &ctx, stomp, shutdown).await {
            None => break Ok(()),
            Some(true) => start = StartAs::Backup { reason: "unfenced by an admin request".into(), fenced: false },
            Some(false) => {}
        }
        tracing::info!(?start, "taking a role");
        match start {
            StartAs::Backup { fenced, .. } => {
                if fenced {
                    ctx.became_fenced();
                } else {
                    ctx.became_backup();
                }
                *shared.state.broker.write() = None;
                let stop_responder = CancellationToken::new();
                let responder = respond_not_live(shared, &ctx, stomp, stop_responder.clone());
                let outcome = tokio::select! {
                    // Polled first: what was won (a claim, the lock, the lease) is then given up as it
                    // should be, by a live term that obeys the fence at once or by the fenced hold.
                    biased;
                    o = ha::backup::run(&ctx, shutdown) => o,
                    _ = responder => continue,
                    // Stops following the live (the connection drops) and asks no arbiter.
                    _ = shared.state.fence.fenced() => {
                        stop_responder.cancel();
                        continue;
                    }
                };
                stop_responder.cancel();
                match outcome {
                    Ok(BackupOutcome::Activate { epoch, reason }) => {
                        if let Err(e) = ctx.store_epoch(epoch) {
                            break Err(RunError::Ha(e));
                        }
                        tracing::warn!(epoch = epoch.0, %reason, "activating: this backup becomes live");
                        start = StartAs::Live { reason, took_over: true };
                    }
                    Ok(BackupOutcome::Shutdown) => break Ok(()),
                    Err(e) => break Err(RunError::Ha(e)),
                }
            }
            StartAs::Live { took_over, .. } => match live_term(shared, &ctx, stomp, &live_slot, shutdown, took_over).await {
                Ok(TermEnd::Shutdown) => break Ok(()),
                Ok(TermEnd::Refused) => start = StartAs::Backup { reason: "arbiter refused".into(), fenced: false },
                Ok(TermEnd::HandedOver) => start = StartAs::Backup { reason: "handed over".into(), fenced: false },
                Ok(TermEnd::Fenced { reason }) => start = StartAs::Backup { reason: format!("fenced: {reason}"), fenced: true },
                Ok(TermEnd::AdminFenced) => start = StartAs::Backup { reason: "fenced by an admin request".into(), fenced: true },
                Err(e) => break Err(e),
            },
        }
    };
    cluster_task.abort();
    result
}

/// How a stretch of being live ended.
enum TermEnd {
    Shutdown,
    /// The arbiter would not let this member be live.
    Refused,
    /// A failback or switchover: the chosen backup took over (or the hand-over timed out).
    HandedOver,
    /// The arbiter's claim was lost: this member stopped serving and confirmed nothing more.
    Fenced { reason: String },
    /// Fenced by an admin request (with force): it stopped serving and confirmed nothing
    /// more, as when the claim is lost, and gave the claim up for a backup to take.
    AdminFenced,
}

/// One term as live: claim the role, recover the journal, serve clients until shutdown,
/// a failback hand-over or the loss of the claim, then close the journal and give the
/// claim up.
async fn live_term(
    shared: &Shared,
    ctx: &Arc<HaContext>,
    stomp: &TcpListener,
    live_slot: &ha::LiveSlot,
    shutdown: &CancellationToken,
    took_over: bool,
) -> Result<TermEnd, RunError> {
    let epoch = match ctx.arbiter.hold_as_live(ctx.epoch(), ctx.marked_synced()).await {
        Ok(epoch) => epoch,
        Err(e) => {
            tracing::warn!(error = %crate::report::error_chain(&e), "cannot claim the live role; starting as backup");
            return Ok(TermEnd::Refused);
        }
    };
    match epoch {
        Some(epoch) => ctx.store_epoch(epoch).map_err(RunError::Ha)?,
        None if ctx.epoch().0 == 0 => ctx.store_epoch(ha::epoch::Epoch(1)).map_err(RunError::Ha)?,
        None => {}
    }
    let broker = open(shared, took_over).await?;
    let journal = broker.journal().cloned().ok_or(RunError::NotFileStore)?;
    journal.replication_gate().set_synchronous(shared.config.ha.replication == ReplicationMode::Sync);
    ctx.activated().map_err(RunError::Ha)?;
    tracing::info!(epoch = ctx.epoch().0, group = %ctx.group, "live");
    let term = Arc::new(LiveTerm::default());
    *live_slot.write() = Some((journal.clone(), Arc::clone(&term)));
    let stop = CancellationToken::new();
    let lost = Arc::new(parking_lot::Mutex::new(None::<String>));
    let admin_fenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, term, shutdown, lost, ctx, journal) =
            (stop.clone(), Arc::clone(&term), shutdown.clone(), Arc::clone(&lost), Arc::clone(ctx), journal.clone());
        let (fence, admin_fenced) = (Arc::clone(&shared.state.fence), Arc::clone(&admin_fenced));
        let claim_lost = ctx.arbiter.lost();
        tokio::spawn(async move {
            let fence_live = |reason: &str| {
                // Fence before anything else: no receipt may leave after this.
                journal.replication_gate().fence();
                ctx.became_fenced();
                term.fenced.cancel();
                tracing::warn!(%reason, "fenced: stopped serving clients and confirming writes");
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = term.step_down.cancelled() => {}
                reason = claim_lost => {
                    fence_live(&reason);
                    *lost.lock() = Some(reason);
                }
                _ = fence.fenced() => {
                    fence_live("fenced by an admin request (force)");
                    admin_fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            stop.cancel();
        })
    };
    serve_live(shared, stomp, &broker, identity(shared, &broker)?, stop.clone()).await?;
    if term.step_down.is_cancelled() && !shutdown.is_cancelled() {
        ctx.stepping_down();
    }
    term.clients_stopped.cancel();
    stop.cancel();
    let _ = watcher.await;
    let fenced = lost.lock().take();
    let end = if let Some(reason) = fenced {
        // serve_live reported `live` on its way in; the member is fenced.
        ctx.became_fenced();
        TermEnd::Fenced { reason }
    } else if admin_fenced.load(std::sync::atomic::Ordering::SeqCst) {
        ctx.became_fenced();
        TermEnd::AdminFenced
    } else if shutdown.is_cancelled() {
        TermEnd::Shutdown
    } else {
        tracing::warn!(to = term.handover_target().as_deref().unwrap_or("unknown"), "stepping down: waiting for the chosen backup to take over");
        let handed = tokio::time::timeout(HAND_OVER_TIMEOUT, term.handed_over.cancelled()).await;
        if let (Ok(()), Some(to)) = (handed, term.handover_target()) {
            ctx.handed_over_to(&to);
        }
        TermEnd::HandedOver
    };
    *live_slot.write() = None;
    close(&broker).await?;
    if !matches!(end, TermEnd::Fenced { .. }) {
        // After the journal is closed: the next live must find everything on its backups.
        // A live fenced by an admin still holds its claim: it gives it up for a backup.
        ctx.arbiter.release().await;
    }
    if !matches!(end, TermEnd::Shutdown) {
        *shared.state.broker.write() = None;
    }
    Ok(end)
}

/// The shared-store member: a backup until it takes the journal lock, then live until
/// shutdown (the lock is never handed back; a restarted former live waits as a backup).
/// Only an admin fence (with force, on the live) ends a live term early: the journal is
/// closed, which releases the lock for a backup, and the member waits fenced, then as a
/// backup again.
async fn run_shared_store(shared: &Shared, stomp: &TcpListener, shutdown: &CancellationToken) -> Result<(), RunError> {
    let config = &shared.config;
    let node_id = config.node.id.clone();
    *shared.state.node_id.write() = node_id.clone();
    let ctx = ha_context(shared, node_id.clone()).await?;
    let mut member = SharedStoreMember::new(node_id.clone(), config.ha.role, config.ha.arbiter.retry_interval.get());
    loop {
        if hold_fenced(shared, &ctx, stomp, shutdown).await.is_none() {
            return Ok(());
        }
        let stop_responder = CancellationToken::new();
        let responder = respond_not_live(shared, &ctx, stomp, stop_responder.clone());
        let broker = tokio::select! {
            // Polled first: what was won (a claim, the lock, the lease) is then given up as it
            // should be, by a live term that obeys the fence at once or by the fenced hold.
            biased;
            r = wait_for_lock(shared, &ctx, &mut member, shutdown) => r?,
            _ = responder => return Ok(()),
            // Stops trying the lock.
            _ = shared.state.fence.fenced() => {
                stop_responder.cancel();
                continue;
            }
        };
        stop_responder.cancel();
        let Some(broker) = broker else { return Ok(()) };
        ctx.reload_epoch().map_err(RunError::Ha)?;
        ctx.store_epoch(ha::epoch::Epoch(ctx.epoch().0 + 1)).map_err(RunError::Ha)?;
        // Written before clients are served, so a member that takes over later knows that
        // this one may have delivered what it recovers.
        let holder = LiveHolder { node: node_id.clone(), stomp: stomp.local_addr().unwrap_or(config.stomp.listen).to_string() };
        holder
            .write(&ctx.ha_dir())
            .map_err(|source| RunError::Ha(HaError::WriteLiveFile { path: LiveHolder::path(&ctx.ha_dir()), source }))?;
        ctx.activated().map_err(RunError::Ha)?;
        tracing::info!(epoch = ctx.epoch().0, group = %ctx.group, "live: holding the shared journal lock");
        let stop = fenced_or_shutdown(shared, &ctx, shutdown);
        let identity = identity(shared, &broker)?;
        let cluster_task = inbound_bridges(shared, &identity, &stop).await?;
        let result = serve_live(shared, stomp, &broker, identity, stop.clone()).await;
        if let Some(task) = cluster_task {
            task.abort();
        }
        stop.cancel();
        result.and(close(&broker).await)?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::warn!(group = %ctx.group, "closed the shared journal for the fence: its lock is free for a backup");
        *shared.state.broker.write() = None;
    }
}

/// A live term's stop: cancelled at shutdown, or when an admin request fences this live
/// (then the member reports `fenced` at once).
fn fenced_or_shutdown(shared: &Shared, ctx: &Arc<HaContext>, shutdown: &CancellationToken) -> CancellationToken {
    let stop = shutdown.child_token();
    let (fence, ctx, stop_on_fence) = (Arc::clone(&shared.state.fence), Arc::clone(ctx), stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = fence.fenced() => {
                ctx.became_fenced();
                tracing::warn!("fenced by an admin request (force): stopped serving clients");
                stop_on_fence.cancel();
            }
            _ = stop_on_fence.cancelled() => {}
        }
    });
    stop
}

/// Tries to open the shared journal until it works (`Some`) or shutdown (`None`),
/// reporting this member as a backup meanwhile.
async fn wait_for_lock(
    shared: &Shared,
    ctx: &HaContext,
    member: &mut SharedStoreMember,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Broker>>, RunError> {
    let mut wait = member.first_try_in();
    let mut last_store = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        if let Err(e) = ctx.reload_epoch() {
            tracing::warn!(error = %crate::report::error_chain(&e), "failed to read the group's epoch from the shared store");
        }
        let holder = LiveHolder::read(&ctx.ha_dir()).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "failed to read the live-holder file");
            None
        });
        let possibly_delivered = member.possibly_delivered(holder.as_ref());
        let error = match open(shared, possibly_delivered).await {
            Ok(broker) => {
                tracing::info!(possibly_delivered, previous_live = ?holder.map(|h| h.node), "took the shared journal lock");
                return Ok(Some(broker));
            }
            Err(RunError::Engine(e)) => e,
            Err(other) => return Err(other),
        };
        let failure = shared_store::classify(&error);
        let Decision::Backup { store, retry_in } = member.not_opened(&failure) else {
            return Err(RunError::Engine(error));
        };
        let live = member.shown_live(holder.as_ref());
        ctx.show_live(live.map(|h| h.node.as_str()), live.and_then(|h| h.client_address(&ctx.config.members)));
        if last_store.as_ref() != Some(&store) {
            match &store {
                StoreCheck::Reachable => tracing::info!(
                    live = live.map_or("unknown", |h| h.node.as_str()),
                    retry = ?retry_in,
                    "the shared journal is locked by the live: waiting as backup"
                ),
                StoreCheck::Unreachable { reason } => {
                    tracing::warn!(%reason, retry = ?retry_in, "cannot reach the shared data directory: waiting as backup")
                }
                StoreCheck::NotTried => {}
            }
            ctx.became_backup();
            *shared.state.shared_store.write() = store.clone();
            last_store = Some(store);
        } else {
            tracing::debug!(retry = ?retry_in, "the shared journal is still locked");
        }
        wait = retry_in;
    }
}

/// The shared-database member: a backup until it takes the database lease, then live until
/// shutdown or until it loses the lease (fenced), after which it waits as a backup again.
async fn run_shared_database(shared: &Shared, stomp: &TcpListener, shutdown: &CancellationToken) -> Result<(), RunError> {
    let config = &shared.config;
    let node_id = resolve_node_id(shared)?;
    let ctx = ha_context(shared, node_id.clone()).await?;
    let db = Database::new(&config.storage, &ctx.group, &node_id, shared.metrics.database.clone());
    let advertised = stomp.local_addr().unwrap_or(config.stomp.listen).to_string();
    let mut seen_other_live = false;
    let mut fenced = false;
    loop {
        match hold_fenced(shared, &ctx, stomp, shutdown).await {
            None => return Ok(()),
            Some(true) => fenced = false,
            Some(false) => {}
        }
        if fenced {
            ctx.became_fenced();
        } else {
            ctx.became_backup();
        }
        *shared.state.broker.write() = None;
        let stop_responder = CancellationToken::new();
        let responder = respond_not_live(shared, &ctx, stomp, stop_responder.clone());
        let taken = tokio::select! {
            // Polled first: what was won (a claim, the lock, the lease) is then given up as it
            // should be, by a live term that obeys the fence at once or by the fenced hold.
            biased;
            r = wait_for_lease(shared, &ctx, &db, &advertised, shutdown, &mut seen_other_live, fenced) => r?,
            _ = responder => return Ok(()),
            // Stops polling the lease.
            _ = shared.state.fence.fenced() => {
                stop_responder.cancel();
                continue;
            }
        };
        stop_responder.cancel();
        let Some((client, acquired)) = taken else { return Ok(()) };
        match database_term(shared, &ctx, &db, stomp, shutdown, client, acquired, seen_other_live).await? {
            DatabaseTermEnd::Shutdown => return Ok(()),
            DatabaseTermEnd::Fenced => {
                fenced = true;
                seen_other_live = true;
            }
            DatabaseTermEnd::AdminFenced => seen_other_live = true,
        }
    }
}

enum DatabaseTermEnd {
    Shutdown,
    Fenced,
    /// Fenced by an admin request (force): the lease was released after the last write.
    AdminFenced,
}

/// Polls the lease until this member takes it (`Some`) or shutdown (`None`), reporting
/// itself as a backup meanwhile; connects (with backoff) and creates the schema first.
async fn wait_for_lease(
    shared: &Shared,
    ctx: &HaContext,
    db: &Database,
    advertised: &str,
    shutdown: &CancellationToken,
    seen_other_live: &mut bool,
    fenced: bool,
) -> Result<Option<(tokio_postgres::Client, crate::db::Acquired)>, RunError> {
    let poll = db.config.lease.poll_interval.get();
    let mut wait = match (ctx.config.role, fenced) {
        // A preferred backup lets a primary that starts at the same time go first.
        (crate::config::PreferredRole::Backup, _) | (_, true) => poll,
        (crate::config::PreferredRole::Primary, false) => Duration::ZERO,
    };
    let mut backoff = Duration::from_millis(100);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last_problem: Option<String> = None;
    let mut last_holder: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        let attempt = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                let mut fresh = db.connect().await?;
                crate::db::migrate(&mut fresh, &db.tables).await?;
                client = Some(fresh);
            }
            match client.as_mut() {
                Some(c) => db.try_acquire(c, advertised).await,
                None => Err(crate::db::DbError::NotConnected),
            }
        };
        // A database that accepts connections but never answers (frozen) counts as away.
        let answer = db.config.connect_timeout.get() * 2;
        let attempt = async { tokio::time::timeout(answer, attempt).await.unwrap_or(Err(crate::db::DbError::NoAnswer { after: answer })) };
        match attempt.await {
            Ok(crate::db::Attempt::Taken(acquired)) => {
                let Some(client) = client.take() else { continue };
                tracing::info!(epoch = acquired.epoch, previous = ?acquired.previous_holder, "took the database lease");
                return Ok(Some((client, acquired)));
            }
            Ok(crate::db::Attempt::Held(view)) => {
                backoff = Duration::from_millis(100);
                if view.holder != ctx.node_id {
                    *seen_other_live = true;
                }
                let _ = ctx.store_epoch(ha::epoch::Epoch(view.epoch.max(0) as u64));
                let holder = LiveHolder { node: view.holder.clone(), stomp: view.stomp.clone() };
                ctx.show_live(Some(&view.holder), holder.client_address(&ctx.config.members));
                ctx.set_database_status(admin::api::DatabaseStatus {
                    reachable: true,
                    last_error: None,
                    lease_holder: Some(view.holder.clone()),
                    lease_remaining_ms: Some(view.remaining.as_millis() as u64),
                    commits: 0,
                });
                shared.metrics.database.reachable.set(1);
                *shared.state.shared_store.write() = StoreCheck::Reachable;
                if last_problem.take().is_some() || last_holder.as_deref() != Some(view.holder.as_str()) {
                    if *ctx.role.read() == admin::api::Role::Fenced {
                        ctx.became_backup();
                    }
                    tracing::info!(live = %view.holder, epoch = view.epoch, poll = ?poll, "the database lease is held by the live: waiting as backup");
                    last_holder = Some(view.holder.clone());
                }
                wait = poll;
            }
            Err(e) if e.is_fatal() => return Err(RunError::Database(e)),
            Err(e) => {
                client = None;
                let reason = crate::report::error_chain(&e);
                shared.metrics.database.reachable.set(0);
                ctx.set_database_status(admin::api::DatabaseStatus { reachable: false, last_error: Some(reason.clone()), ..Default::default() });
                *shared.state.shared_store.write() = StoreCheck::Unreachable { reason: reason.clone() };
                if last_problem.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(error = %reason, retry = ?backoff, "cannot use the shared database: waiting as backup");
                    last_problem = Some(reason);
                } else {
                    tracing::debug!(error = %reason, retry = ?backoff, "the shared database is still unreachable");
                }
                wait = backoff;
                backoff = (backoff * 2).min(db.config.max_reconnect_delay.get());
            }
        }
    }
}

/// One term as live on the database: recover the group's rows, serve clients while the
/// lease is renewed, and stop serving the moment it is lost.
#[allow(clippy::too_many_arguments)]
async fn database_term(
    shared: &Shared,
    ctx: &Arc<HaContext>,
    db: &Database,
    stomp: &TcpListener,
    shutdown: &CancellationToken,
    client: tokio_postgres::Client,
    acquired: crate::db::Acquired,
    seen_other_live: bool,
) -> Result<DatabaseTermEnd, RunError> {
    let started = std::time::Instant::now();
    let term = Arc::new(crate::db::Term::new(&acquired, db.config.lease.duration.get()));
    let client = Arc::new(client);
    let renewer = tokio::spawn(crate::db::keep_lease(db.clone(), Arc::clone(&client), Arc::clone(&term), {
        let ctx = Arc::clone(ctx);
        Arc::new(move |s| ctx.set_database_status(s))
    }));
    let possibly_delivered = seen_other_live || acquired.previous_holder.as_deref().is_some_and(|h| h != ctx.node_id);
    let status: Arc<dyn Fn(admin::api::DatabaseStatus) + Send + Sync> = {
        let ctx = Arc::clone(ctx);
        Arc::new(move |s| ctx.set_database_status(s))
    };
    let recovered = tokio::select! {
        r = crate::db::recover(db, &client, Arc::clone(&term), acquired.next_id, crate::engine::dedup::STORED_HEADER, status) => r,
        // The database stopped answering while this member read it: the lease ran out.
        reason = term.fenced() => Err(crate::db::DbError::Fenced { reason }),
    };
    let (store, recovered) = match recovered {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %crate::report::error_chain(&e), "failed to recover the database store: giving the lease up");
            term.fence(format!("recovery failed: {}", crate::report::error_chain(&e)));
            if let Ok(client) = renewer.await {
                let _ = db.release(&client, acquired.epoch).await;
            }
            if e.is_fatal() {
                return Err(RunError::Database(e));
            }
            return Ok(DatabaseTermEnd::Fenced);
        }
    };
    let users = shared.users.clone();
    let (broker, report) = crate::engine::Broker::with_store(
        Arc::clone(&shared.config),
        ctx.node_id.clone(),
        users,
        crate::engine::Store::Database(store),
        recovered,
        shared.metrics.engine.clone(),
        possibly_delivered,
    );
    tracing::info!(
        node = %broker.node_id,
        messages = report.messages,
        queues = report.queues,
        possibly_delivered,
        took_ms = started.elapsed().as_millis() as u64,
        "database store recovered"
    );
    *shared.state.broker.write() = Some(Arc::clone(&broker));
    ctx.store_epoch(ha::epoch::Epoch(acquired.epoch.max(0) as u64)).map_err(RunError::Ha)?;
    ctx.show_live(Some(&ctx.node_id), None);
    ctx.set_database_status(admin::api::DatabaseStatus {
        reachable: true,
        last_error: None,
        lease_holder: Some(ctx.node_id.clone()),
        lease_remaining_ms: Some(term.deadline().saturating_duration_since(std::time::Instant::now()).as_millis() as u64),
        commits: 0,
    });
    ctx.activated().map_err(RunError::Ha)?;
    shared.metrics.database.lease_held.set(1);
    tracing::info!(epoch = acquired.epoch, group = %ctx.group, "live: holding the database lease");
    let stop = CancellationToken::new();
    let watcher = {
        let (stop, term, shutdown, ctx, metrics) =
            (stop.clone(), Arc::clone(&term), shutdown.clone(), Arc::clone(ctx), shared.metrics.database.clone());
        let fence = Arc::clone(&shared.state.fence);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                reason = term.fenced() => {
                    ctx.became_fenced();
                    metrics.fenced.inc();
                    tracing::warn!(%reason, "fenced: stopped serving clients and writing to the database");
                }
                _ = fence.fenced() => {
                    ctx.became_fenced();
                    tracing::warn!("fenced by an admin request (force): stopped serving clients; the lease is released after the last write");
                }
            }
            stop.cancel();
        })
    };
    let identity = identity(shared, &broker)?;
    let cluster_task = inbound_bridges(shared, &identity, &stop).await?;
    let served = serve_live(shared, stomp, &broker, identity, stop.clone()).await;
    if let Some(task) = cluster_task {
        task.abort();
        let _ = task.await;
    }
    served?;
    stop.cancel();
    let _ = watcher.await;
    shared.metrics.database.lease_held.set(0);
    let fenced = term.is_fenced();
    if fenced {
        // serve_live reported `live` on its way in; the member is fenced.
        ctx.became_fenced();
    }
    close(&broker).await?;
    term.fence("the live term ended".into());
    let client = renewer.await.unwrap_or(client);
    if !fenced {
        // After the last write: the next live reads everything.
        if let Err(e) = db.release(&client, acquired.epoch).await {
            tracing::warn!(error = %crate::report::error_chain(&e), "failed to release the database lease; a backup takes it when it expires");
        }
        if !shutdown.is_cancelled() && shared.state.fence.is_fenced() {
            ctx.became_fenced();
            return Ok(DatabaseTermEnd::AdminFenced);
        }
        return Ok(DatabaseTermEnd::Shutdown);
    }
    Ok(DatabaseTermEnd::Fenced)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Listen { what, addr, source })
}
