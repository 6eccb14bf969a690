//! The admin HTTP endpoint: health, readiness, status JSON and Prometheus metrics, all
//! read-only views; and three signed writes, `POST /ha/switchover`, `/ha/fence` and
//! `/ha/drain`, which it checks and passes to the HA machinery (`ha::switchover`,
//! `ha::fence`) or the live's drain (`network::drain`) without deciding anything itself.
//! [`messages`] adds the queue views and the message operations (browse, purge, delete,
//! move), passed to `engine::manage` likewise.
//!
//! With `tls.admin.enabled` it speaks TLS only ([`listener`]). `/status` (and `/metrics`
//! with `admin.openMetrics: false`) need credentials whenever the broker has any
//! ([`access`]); the writes need the cluster password's signature. [`client`] is the one
//! client of it in this workspace (the CLIs, the bench, the tests).
//!
//! Readiness is decided by [`readiness`], a pure function of what the node loops publish,
//! so the probe itself never touches the disk (a hung shared volume must not hang it).

pub mod access;
pub mod api;
pub mod auth;
pub mod client;
pub mod listener;
mod messages;

use crate::config::HaPolicy;
use crate::engine::queue::{QueueKind, QueueSnapshot};
use crate::engine::Broker;
use crate::ha::switchover::Switchover;
use crate::metrics::{AdminRefusedLabels, AdminRequestLabels, Metrics, SwitchoverLabels};
use api::{AdminError, BrokerStatus, DestinationKind, DrainRequest, DurableSubscriptionStatus, FenceReply, FenceRequest, HaStatus, QueueStatus, Role, SwitchoverRequest, SyncState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoint reads. The broker is absent while the journal recovers.
#[derive(Clone)]
pub struct AdminState {
    pub broker: Arc<RwLock<Option<Arc<Broker>>>>,
    pub role: Arc<RwLock<Role>>,
    pub metrics: Arc<Metrics>,
    pub node_id: Arc<RwLock<String>>,
    /// Replication state, kept current by the `ha` module; `None` when standalone.
    pub ha: Arc<RwLock<Option<api::HaStatus>>>,
    /// Which kind of group this member belongs to (`ha.policy`).
    pub policy: HaPolicy,
    /// On a shared-store backup: what its last try of the journal lock found.
    pub shared_store: Arc<RwLock<StoreCheck>>,
    /// Set once a replicated member's HA machinery runs; `None` otherwise.
    pub switchover: Arc<RwLock<Option<Arc<Switchover>>>>,
    /// The network bridges of the live term now running.
    pub network: crate::network::NetworkSlot,
    /// The broker's config: the cluster password that signs admin writes is read from it
    /// at each request, so a rotated Secret counts at once.
    pub config: Arc<crate::config::BrokerConfig>,
    /// Fenced by an admin request; the node loops obey it.
    pub fence: Arc<crate::ha::fence::AdminFence>,
    /// The certificates (`tls.admin.enabled`: the admin listener speaks TLS).
    pub tls: Arc<crate::tls::TlsContext>,
    /// Users and their passwords, for HTTP Basic on `/status`.
    pub users: Arc<Vec<crate::config::User>>,
    /// The fault rules `/debug/faults` sets (off unless `debug.faultInjection`).
    pub faults: crate::faults::Faults,
}

/// What a shared-store backup learned about the shared data directory when it last
/// tried to take the journal lock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreCheck {
    #[default]
    NotTried,
    /// The directory answers and the lock is held by the live: this member can take over.
    Reachable,
    /// The directory or its lock file could not be used.
    Unreachable { reason: String },
}

/// Ready (`Ok`) or why not, in one line. A live is ready; so is a backup that could take
/// over at once (a replica in sync, or a shared-store slave that reaches the store), so
/// that StatefulSet rolling updates, which wait for Ready pods, move past healthy backups.
pub fn readiness(role: Role, policy: HaPolicy, ha: Option<&HaStatus>, store: &StoreCheck, admin_fenced: bool) -> Result<(), String> {
    if admin_fenced {
        return Err("fenced by an admin request: not serving, not replicating, never taking the live role until unfenced".to_string());
    }
    match (role, policy) {
        (Role::Live, _) => Ok(()),
        (Role::Backup, HaPolicy::Replication) => match ha.and_then(|h| h.sync.as_ref()) {
            Some(sync) if sync.state == SyncState::Synced => Ok(()),
            Some(sync) => Err(format!("backup not in sync with its live: {:?}, {} bytes behind", sync.state, sync.lag_bytes)),
            None => Err("backup has not reached its live yet".to_string()),
        },
        (Role::Backup, HaPolicy::SharedStore) => match store {
            StoreCheck::Reachable => Ok(()),
            StoreCheck::NotTried => Err("shared-store backup has not tried the journal lock yet".to_string()),
            StoreCheck::Unreachable { reason } => Err(format!("shared-store backup cannot reach the shared store: {reason}")),
        },
        (Role::Fenced, _) => Err("fenced: this live lost its claim (the group's Lease or database lease); rejoining as a backup".to_string()),
        (role, _) => Err(format!("{role:?}")),
    }
}

/// Serves the admin API on `listener` until `shutdown`: TLS only with `tls.admin.enabled`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) -> std::io::Result<()> {
    let tls = state.tls.config().admin.enabled;
    if access::has_credentials(&state.config, &state.users) {
        tracing::info!(
            tls,
            open_metrics = state.config.admin.open_metrics,
            "admin API: {} credentials (HTTP Basic of a user with a role in auth.adminRoles, or a request signed with the cluster password); /healthz and /readyz are open",
            if state.config.admin.open_metrics { "/status needs" } else { "/status and /metrics need" }
        );
    } else {
        tracing::warn!(
            tls,
            "admin API open: no cluster password and no users are configured, so /status and /metrics answer anyone (fine for a broker on loopback; set ha.cluster.passwordFile or auth.users otherwise)"
        );
    }
    let app = Router::new()
        .route(api::HEALTHZ, get(|| async { "ok\n" }))
        .route(api::READYZ, get(readyz))
        .route(api::STATUS, get(status))
        .route(api::METRICS, get(metrics))
        .route(api::SWITCHOVER, post(switchover))
        .route(api::FENCE, post(fence))
        .route(api::DRAIN, post(drain))
        .route(api::DEBUG_FAULTS, get(faults_view).put(faults_set).delete(faults_clear))
        .merge(messages::routes())
        .with_state(state.clone());
    let listener = listener::AdminListener::new(listener, Arc::clone(&state.tls));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Checks the credentials of a read of a closed view; the refusal is counted and answered.
fn closed_view(s: &AdminState, path: &'static str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    closed_request(s, "GET", path, b"", headers)
}

/// As [`closed_view`], for a read that carries its question in a body.
fn closed_request(s: &AdminState, method: &str, path: &'static str, body: &[u8], headers: &HeaderMap) -> Result<(), Box<Response>> {
    access::check_view(&s.config, &s.users, method, path, body, headers).map_err(|refused| {
        let result = match refused {
            access::Refused::Unauthenticated(_) => "unauthorized",
            access::Refused::Forbidden(_) => "forbidden",
        };
        tracing::info!(path, reason = ?refused, "refused an admin read");
        s.metrics.admin_refused.get_or_create(&AdminRefusedLabels { path, result }).inc();
        Box::new(refused.into_response(&s.config))
    })
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let role = *s.role.read();
    let verdict = readiness(role, s.policy, s.ha.read().as_ref(), &s.shared_store.read(), s.fence.is_fenced());
    match verdict {
        Ok(()) => (StatusCode::OK, format!("ready: {role:?}\n")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn status(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = closed_view(&s, api::STATUS, &headers) {
        return *refused;
    }
    let broker = s.broker.read().clone();
    let (queues, memory, uptime) = match &broker {
        Some(b) => (b.snapshot(), b.memory().used(), b.started.elapsed().as_secs()),
        None => (Vec::new(), 0, 0),
    };
    let durable_subscriptions = broker.as_ref().map(|b| b.durable_subscriptions()).unwrap_or_default();
    Json(BrokerStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: s.node_id.read().clone(),
        role: *s.role.read(),
        uptime_seconds: uptime,
        connections: s.metrics.connections.get().max(0) as u64,
        memory_bytes: memory as u64,
        disk: broker.as_ref().map(|b| b.disk_usage()).map(|(journal_bytes, max_disk_bytes)| api::DiskStatus { journal_bytes, max_disk_bytes }),
        queues: queues.into_iter().map(queue_status).collect(),
        durable_subscriptions: durable_subscriptions
            .into_iter()
            .map(|d| DurableSubscriptionStatus {
                client_id: d.client_id,
                name: d.name,
                topic: d.topic,
                selector: d.selector,
                depth: d.depth as u64,
                in_flight: d.in_flight as u64,
                bytes: d.bytes as u64,
                paged: d.paged,
                consumer_attached: d.consumer_attached,
            })
            .collect(),
        ha: s.ha.read().clone(),
        network: s.network.read().as_ref().filter(|n| !n.is_idle()).map(|n| n.status()),
        grouping: s.network.read().as_ref().and_then(|n| n.grouping()).map(|g| g.status()),
        admin_fenced: s.fence.is_fenced(),
        drain: s.network.read().as_ref().and_then(|n| n.drain_status(open_connections(&s))),
    })
    .into_response()
}

/// A queue (or a topic, summed over its subscribers) as `/status` and `/queues` show it.
fn queue_status(q: QueueSnapshot) -> QueueStatus {
    QueueStatus {
        name: q.name,
        kind: match q.kind {
            QueueKind::Anycast => DestinationKind::Queue,
            QueueKind::TopicSubscription => DestinationKind::Topic,
        },
        depth: q.depth as u64,
        in_flight: q.in_flight as u64,
        consumers: q.consumers as u64,
        bytes: q.bytes as u64,
        enqueued_total: q.enqueued_total,
        acked_total: q.acked_total,
        groups: q.groups as u64,
        paged: q.paged,
        paged_bytes: q.paged_bytes,
    }
}

fn open_connections(s: &AdminState) -> u64 {
    s.metrics.connections.get().max(0) as u64
}

/// `POST /ha/drain`: see [`api::DRAIN`]. Begins the drain on the live's bridges (or
/// changes its targets) and answers its progress at once; asking again answers it anew.
async fn drain(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let counter = &s.metrics.drain_requests;
    let refuse = |code: StatusCode, result: &'static str, error: String| refusal(counter, code, result, error);
    let request: DrainRequest = match signed_request(&s, api::DRAIN, &headers, &body, counter, r#"{"targets":["<group>"]}"#) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let own = s.config.ha.group_name.clone();
    if request.targets.is_empty() || request.targets.iter().any(|t| t.is_empty()) {
        return refuse(StatusCode::BAD_REQUEST, "refused", "targets must name at least one group (ha.groupName; a standalone broker's node id)".into());
    }
    let role = *s.role.read();
    let network = s.network.read().clone();
    let Some(network) = network.filter(|_| role == Role::Live && !s.fence.is_fenced()) else {
        let role = format!("{role:?}").to_lowercase();
        tracing::info!(%role, "drain refused: not live");
        return refuse(StatusCode::CONFLICT, "refused", format!("this member is {role}, not live: send the drain to the group's live"));
    };
    if let Some(me) = request.targets.iter().find(|t| **t == own || **t == *s.node_id.read()) {
        return refuse(StatusCode::BAD_REQUEST, "refused", format!("{me} is this group: a drain moves messages to other groups"));
    }
    if network.begin_drain(request.targets.clone()) {
        tracing::warn!(targets = ?request.targets, "draining: refusing clients, closing open connections and forwarding every queued message to the target groups");
        counter.get_or_create(&AdminRequestLabels { result: "started" }).inc();
    } else {
        counter.get_or_create(&AdminRequestLabels { result: "progress" }).inc();
    }
    match network.drain_status(open_connections(&s)) {
        Some(status) => Json(status).into_response(),
        None => refuse(StatusCode::INTERNAL_SERVER_ERROR, "failed", "the drain did not begin".into()),
    }
}

/// Checks a `POST` admin write's signature against the cluster password as configured now.
fn authorize(s: &AdminState, path: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    authorize_method(s, "POST", path, headers, body)
}

/// [`authorize`] for a write with another method (`PUT`, `DELETE`), which the signature covers.
fn authorize_method(s: &AdminState, method: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let password = s.config.ha.load_password().map_err(|e| crate::report::error_chain(&e))?;
    if password.is_empty() {
        return Err("no cluster password is configured (ha.cluster.password or passwordFile): admin writes cannot be signed".into());
    }
    let signature = headers.get(auth::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    auth::verify(password.as_bytes(), method, path, body, signature, auth::unix_now()).map_err(|e| e.to_string())
}

/// What `/debug/faults` answers when fault injection is off: 404, saying how to turn it on.
fn faults_off(s: &AdminState) -> Option<Response> {
    if s.faults.is_on() {
        return None;
    }
    let error = crate::faults::FaultsError::Off.to_string();
    Some((StatusCode::NOT_FOUND, Json(AdminError { error })).into_response())
}

/// `GET /debug/faults`: see [`api::DEBUG_FAULTS`].
async fn faults_view(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(off) = faults_off(&s) {
        return off;
    }
    if let Err(refused) = closed_view(&s, api::DEBUG_FAULTS, &headers) {
        return *refused;
    }
    Json(s.faults.status()).into_response()
}

/// `PUT /debug/faults`: see [`api::DEBUG_FAULTS`]. Replaces the rules in force.
async fn faults_set(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(off) = faults_off(&s) {
        return off;
    }
    if let Err(error) = authorize_method(&s, "PUT", api::DEBUG_FAULTS, &headers, &body) {
        tracing::warn!(%error, path = api::DEBUG_FAULTS, "refused an unauthenticated admin request");
        return (StatusCode::UNAUTHORIZED, Json(AdminError { error })).into_response();
    }
    let rules: api::FaultRules = match serde_json::from_slice(&body) {
        Ok(rules) => rules,
        Err(e) => {
            let error = format!("failed to read the fault rules: {e}; expected {{\"frames\":[{{\"action\":\"drop\",\"peer\":\"<node>\"}}],\"disk\":{{\"failNextSyncs\":1}}}}");
            return (StatusCode::BAD_REQUEST, Json(AdminError { error })).into_response();
        }
    };
    match s.faults.set(rules.clone()) {
        Ok(()) => {
            tracing::warn!(rules = %serde_json::to_string(&rules).unwrap_or_default(), "fault rules set (debug.faultInjection)");
            Json(s.faults.status()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(AdminError { error: crate::report::error_chain(&e) })).into_response(),
    }
}

/// `DELETE /debug/faults`: see [`api::DEBUG_FAULTS`]. Removes every rule.
async fn faults_clear(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(off) = faults_off(&s) {
        return off;
    }
    if let Err(error) = authorize_method(&s, "DELETE", api::DEBUG_FAULTS, &headers, b"") {
        tracing::warn!(%error, path = api::DEBUG_FAULTS, "refused an unauthenticated admin request");
        return (StatusCode::UNAUTHORIZED, Json(AdminError { error })).into_response();
    }
    match s.faults.clear() {
        Ok(()) => {
            tracing::warn!("fault rules cleared (debug.faultInjection)");
            Json(s.faults.status()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(AdminError { error: crate::report::error_chain(&e) })).into_response(),
    }
}

/// An admin write's refusal: counted by `result` and answered with `code` and the reason.
fn refusal(counter: &Family<AdminRequestLabels, Counter>, code: StatusCode, result: &'static str, error: String) -> Response {
    counter.get_or_create(&AdminRequestLabels { result }).inc();
    (code, Json(AdminError { error })).into_response()
}

/// What every signed admin write but the switchover does first: check the signature (401),
/// then read the JSON body (400, naming the `expected` shape).
fn signed_request<T: serde::de::DeserializeOwned>(
    s: &AdminState,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    counter: &Family<AdminRequestLabels, Counter>,
    expected: &str,
) -> Result<T, Box<Response>> {
    if let Err(e) = authorize(s, path, headers, body) {
        tracing::warn!(error = %e, path, "refused an unauthenticated admin request");
        return Err(Box::new(refusal(counter, StatusCode::UNAUTHORIZED, "unauthorized", e)));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(refusal(counter, StatusCode::BAD_REQUEST, "refused", format!("failed to read the request: {e}; expected {expected}")))
    })
}

/// `POST /ha/fence`: see [`api::FENCE`]. Flips the admin fence the node loops obey; the
/// answer comes at once (`/status` shows the member become `fenced`, or rejoin).
async fn fence(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let counter = &s.metrics.fence_requests;
    let request: FenceRequest = match signed_request(&s, api::FENCE, &headers, &body, counter, r#"{"fenced":true|false,"force":false}"#) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let role = *s.role.read();
    if let Err(e) = crate::ha::fence::check(s.policy, role, request.fenced, request.force) {
        tracing::info!(fenced = request.fenced, force = request.force, ?role, reason = %e, "fence request refused");
        return refusal(counter, StatusCode::CONFLICT, "refused", e.to_string());
    }
    let changed = s.fence.set(request.fenced);
    s.metrics.admin_fenced.set(i64::from(request.fenced));
    let result = if request.fenced { "fenced" } else { "unfenced" };
    counter.get_or_create(&AdminRequestLabels { result }).inc();
    match (changed, request.fenced) {
        (true, true) => tracing::warn!(?role, force = request.force, "fenced by an admin request: stops serving and replicating, never takes the live role, keeps its data"),
        (true, false) => tracing::warn!("unfenced by an admin request: rejoining the group as a backup"),
        (false, _) => tracing::info!(fenced = request.fenced, "fence request: nothing to change"),
    }
    Json(FenceReply { node: s.node_id.read().clone(), fenced: request.fenced }).into_response()
}

/// `POST /ha/switchover`: see [`api::SWITCHOVER`].
async fn switchover(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    let refuse = |code: StatusCode, result: &'static str, error: String| {
        s.metrics.switchovers.get_or_create(&SwitchoverLabels { result }).inc();
        (code, Json(AdminError { error })).into_response()
    };
    let handle = s.switchover.read().clone();
    let Some(handle) = handle else {
        return refuse(StatusCode::CONFLICT, "refused", "this broker is not a member of a replicated group: nothing to switch over".into());
    };
    let signature = headers.get(auth::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = handle.authorize("POST", api::SWITCHOVER, &body, signature) {
        tracing::warn!(error = %e, "refused an unauthenticated switchover request");
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
    }
    let request: SwitchoverRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "refused", format!("failed to read the request: {e}; expected {{\"to\":\"<member>\"}}")),
    };
    match handle.request(&request.to).await {
        Ok(reply) => {
            tracing::info!(to = %reply.to, epoch = reply.epoch, "switchover done: the live role was handed over");
            s.metrics.switchovers.get_or_create(&SwitchoverLabels { result: "done" }).inc();
            Json(reply).into_response()
        }
        Err(e) if e.refused() => {
            tracing::info!(to = %request.to, reason = %e, "switchover refused");
            refuse(StatusCode::CONFLICT, "refused", e.to_string())
        }
        Err(e) => {
            tracing::warn!(to = %request.to, reason = %e, "switchover failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string())
        }
    }
}

async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if !s.config.admin.open_metrics {
        if let Err(refused) = closed_view(&s, api::METRICS, &headers) {
            return *refused;
        }
    }
    let broker = s.broker.read().clone();
    let (queues, memory) = match &broker {
        Some(b) => (b.snapshot(), b.memory().used()),
        None => (Vec::new(), 0),
    };
    let ha = s.ha.read().clone();
    if let Some((used, quota)) = broker.as_ref().map(|b| b.disk_usage()) {
        s.metrics.journal_disk_bytes.set(used as i64);
        s.metrics.max_disk_bytes.set(quota as i64);
    }
    let body = s.metrics.render(&queues, memory, *s.role.read(), ha.as_ref());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::SyncStatus;
    use rstest::rstest;

    fn backup_status(state: SyncState) -> HaStatus {
        HaStatus {
            group: "g1".into(),
            epoch: 2,
            live: Some("a".into()),
            sync: Some(SyncStatus { state, lag_bytes: 10, lag_records: 0 }),
            backups: Vec::new(),
            alone: false,
            database: None,
            refused_by: Vec::new(),
        }
    }

    #[rstest]
    #[case(Role::Live, HaPolicy::None, None, StoreCheck::NotTried, true)]
    #[case(Role::Live, HaPolicy::SharedStore, None, StoreCheck::NotTried, true)]
    #[case(Role::Starting, HaPolicy::None, None, StoreCheck::NotTried, false)]
    #[case(Role::Stopping, HaPolicy::Replication, None, StoreCheck::NotTried, false)]
    #[case(Role::Backup, HaPolicy::Replication, Some(SyncState::Synced), StoreCheck::NotTried, true)]
    #[case(Role::Backup, HaPolicy::Replication, Some(SyncState::Syncing), StoreCheck::NotTried, false)]
    #[case(Role::Backup, HaPolicy::Replication, Some(SyncState::Connecting), StoreCheck::NotTried, false)]
    #[case(Role::Backup, HaPolicy::Replication, None, StoreCheck::NotTried, false)]
    #[case(Role::Backup, HaPolicy::SharedStore, None, StoreCheck::Reachable, true)]
    #[case(Role::Backup, HaPolicy::SharedStore, None, StoreCheck::NotTried, false)]
    #[case(Role::Backup, HaPolicy::SharedStore, None, StoreCheck::Unreachable { reason: "ESTALE".into() }, false)]
    fn given_role_and_group_state_should_be_ready_only_when_it_could_serve_or_take_over(
        #[case] role: Role,
        #[case] policy: HaPolicy,
        #[case] sync: Option<SyncState>,
        #[case] store: StoreCheck,
        #[case] ready: bool,
    ) {
        let ha = sync.map(backup_status);
        let verdict = readiness(role, policy, ha.as_ref(), &store, false);
        assert_eq!(verdict.is_ok(), ready, "{verdict:?}");
        if let Err(reason) = verdict {
            assert!(!reason.contains('\n'), "one line: {reason}");
        }
    }

    #[test]
    fn given_an_admin_fence_should_never_be_ready_whatever_the_role() {
        let synced = backup_status(SyncState::Synced);
        for role in [Role::Live, Role::Backup, Role::Fenced] {
            let verdict = readiness(role, HaPolicy::Replication, Some(&synced), &StoreCheck::Reachable, true);
            assert!(verdict.as_ref().is_err_and(|r| r.contains("fenced by an admin request")), "{role:?}: {verdict:?}");
        }
    }
}
