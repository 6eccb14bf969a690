//! The `kubernetes` arbiter: one `coordination.k8s.io/v1` Lease per group, as
//! CloudNativePG gates its primary. Whoever holds the Lease is live. A member takes it
//! only with a conditional write (the `resourceVersion` it read; a conflict means another
//! member won), only when the rules in [`decide`] allow, and the live renews it every
//! `renewInterval`, publishing the backups it has in sync. A live that cannot renew for
//! `renewDeadline`, or finds someone else holding the Lease, reports the claim lost and
//! the runtime fences it; a backup takes over no sooner than `duration` after it last saw
//! the Lease change, so the old live has stopped serving by then.
//!
//! This module only talks to the Kubernetes API; it decides with [`decide`], builds
//! objects with [`object`], and starts or stops no part of the broker.

pub mod decide;
pub mod object;

pub use object::{EPOCH_ANNOTATION, HANDOVER_ANNOTATION, IN_SYNC_ANNOTATION};

use super::arbiter::{ActivationRequest, Arbiter, ArbiterError, Decision};
use super::epoch::Epoch;
use crate::config::{LeaseConfig, LeaseTarget};
use decide::{Claimant, Observed, Verdict};
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The API client: `KUBECONFIG`, else the pod's service account, with every request
/// bounded by `renewDeadline` (a hung API server must not hold a backup's loop up).
pub async fn client(config: &LeaseConfig) -> Result<kube::Client, kube::Error> {
    let mut kube_config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    let bound = Some(config.renew_deadline.get());
    kube_config.connect_timeout = bound;
    kube_config.read_timeout = bound;
    kube_config.write_timeout = bound;
    kube::Client::try_from(kube_config)
}

/// The node ids of the backups this live has in sync right now.
pub type InSync = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Where the Lease is and the timings of a claim.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub target: LeaseTarget,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub renew_interval: Duration,
}

impl LeaseSettings {
    pub fn new(target: LeaseTarget, config: &LeaseConfig) -> LeaseSettings {
        LeaseSettings {
            target,
            duration: config.duration.get(),
            renew_deadline: config.renew_deadline.get(),
            renew_interval: config.renew_interval.get(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// `ok`, `conflict` (someone else wrote the Lease meanwhile), `error` (the API failed
    /// or timed out) or `lost` (the Lease is no longer this member's).
    pub result: &'static str,
}

/// The arbiter's Prometheus metrics.
#[derive(Clone, Default)]
pub struct LeaseMetrics {
    renewals: Family<RenewalLabels, Counter>,
}

impl LeaseMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> LeaseMetrics {
        let m = LeaseMetrics::default();
        registry.register("duomq_ha_lease_renewals", "Renewals of the group's Lease by this live, by result", m.renewals.clone());
        m
    }

    fn renewal(&self, result: &'static str) {
        self.renewals.get_or_create(&RenewalLabels { result }).inc();
    }
}

/// This member's claim on the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    None,
    Held { epoch: Epoch },
    Lost { reason: String },
}

/// Why one renewal failed.
enum RenewFailure {
    /// The Lease is no longer ours: fence now.
    Lost(String),
    /// Someone wrote the Lease between our read and our write (the operator's labels,
    /// say): read again next time.
    Conflict,
    Api(String),
}

/// The `kubernetes` arbiter. Cheap to share: the renewal task holds the same inner state.
pub struct KubernetesArbiter {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<Lease>,
    settings: LeaseSettings,
    node: String,
    in_sync: InSync,
    metrics: LeaseMetrics,
    observed: Mutex<Observed<Instant>>,
    claim: watch::Sender<Claim>,
    renewer: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// Requests for an immediate renewal that publishes a smaller in-sync list, and the
    /// last request a successful renewal covered.
    publish_requested: AtomicU64,
    publish_wake: Notify,
    published: watch::Sender<u64>,
}

impl KubernetesArbiter {
    pub fn new(client: kube::Client, settings: LeaseSettings, node: String, in_sync: InSync, metrics: LeaseMetrics) -> KubernetesArbiter {
        let api = Api::namespaced(client, &settings.target.namespace);
        KubernetesArbiter {
            inner: Arc::new(Inner {
                api,
                settings,
                node,
                in_sync,
                metrics,
                observed: Mutex::new(Observed::default()),
                claim: watch::Sender::new(Claim::None),
                renewer: Mutex::new(None),
                publish_requested: AtomicU64::new(0),
                publish_wake: Notify::new(),
                published: watch::Sender::new(0),
            }),
        }
    }

    /// Takes the Lease if the rules allow; `Granted` carries the epoch written.
    async fn acquire(&self, local_epoch: Epoch, at_start: bool, complete_copy: bool) -> Result<Decision, ArbiterError> {
        let inner = &self.inner;
        if let Claim::Held { epoch } = *inner.claim.borrow() {
            return Ok(Decision::Granted { reason: format!("this member holds the Lease (epoch {epoch})"), epoch: None });
        }
        let target = &inner.settings.target;
        let current = inner.api.get_opt(&target.name).await.map_err(|e| ArbiterError::ReadLease { target: target.clone(), reason: api_error(&e) })?;
        let state = current
            .as_ref()
            .map(object::read)
            .transpose()
            .map_err(|reason| ArbiterError::BadLease { target: target.clone(), reason })?;
        let unchanged_for = {
            let mut observed = inner.observed.lock();
            match &state {
                Some(s) => observed.note(&s.version, Instant::now()),
                None => {
                    observed.forget();
                    Duration::ZERO
                }
            }
        };
        let claimant = Claimant { node: &inner.node, local_epoch, at_start, complete_copy };
        let (epoch, why) = match decide::may_take(state.as_ref(), &claimant, unchanged_for, inner.settings.duration) {
            Verdict::Denied { reason } => return Ok(Decision::Denied { reason }),
            Verdict::Yield { reason } => {
                if let (Some(current), Some(state)) = (current.as_ref(), state.as_ref()) {
                    // The backups listed stay listed; this member is not (its copy may lack
                    // what its previous process acknowledged last). A conflict means the
                    // Lease moved on anyway.
                    let yielded = object::released(current, &state.in_sync, None);
                    match inner.api.replace(&target.name, &PostParams::default(), &yielded).await {
                        Ok(_) => tracing::info!(lease = %target.name, %reason, "released the Lease a previous process held"),
                        Err(e) if is_conflict(&e) => {}
                        Err(e) => return Err(ArbiterError::WriteLease { target: target.clone(), reason: api_error(&e) }),
                    }
                }
                return Ok(Decision::Denied { reason });
            }
            Verdict::Take { epoch, why } => (epoch, why),
        };
        let lease = object::taken(current.as_ref(), target, &inner.node, epoch, inner.settings.duration, Timestamp::now());
        let sent = Instant::now();
        let written = match current {
            None => inner.api.create(&PostParams::default(), &lease).await,
            Some(_) => inner.api.replace(&target.name, &PostParams::default(), &lease).await,
        };
        match written {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {
                tracing::info!(lease = %target.name, "another member wrote the Lease first: not taking it");
                return Ok(Decision::Denied { reason: "another member wrote the Lease between our read and our write".into() });
            }
            Err(e) => return Err(ArbiterError::WriteLease { target: target.clone(), reason: api_error(&e) }),
        }
        tracing::info!(lease = %target.name, namespace = %target.namespace, epoch = epoch.0, reason = %why, "took the group's Lease");
        inner.claim.send_replace(Claim::Held { epoch });
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(Arc::clone(inner), epoch, sent, stop.clone()));
        if let Some((old, _)) = inner.renewer.lock().replace((stop, task)) {
            old.cancel();
        }
        Ok(Decision::Granted { reason: why, epoch: Some(epoch) })
    }
}

impl KubernetesArbiter {
    /// Stops renewing and writes the Lease with no holder, for anyone in sync or for
    /// `handover_to` alone. A failed write lets the claim expire instead.
    async fn give_up(&self, handover_to: Option<&str>) {
        let inner = &self.inner;
        let renewer = inner.renewer.lock().take();
        if let Some((stop, task)) = renewer {
            stop.cancel();
            let _ = task.await;
        }
        let Claim::Held { epoch } = inner.claim.send_replace(Claim::None) else { return };
        let lease = &inner.settings.target.name;
        match tokio::time::timeout(inner.settings.renew_deadline, inner.write_release(epoch, handover_to)).await {
            Ok(Ok(())) => match handover_to {
                Some(to) => tracing::info!(%lease, epoch = epoch.0, %to, "handed the group's Lease over"),
                None => tracing::info!(%lease, epoch = epoch.0, "released the group's Lease"),
            },
            Ok(Err(reason)) => tracing::warn!(%lease, %reason, "failed to release the group's Lease; it expires instead"),
            Err(_) => tracing::warn!(%lease, "releasing the group's Lease timed out; it expires instead"),
        }
    }
}

/// One line for a kube-rs failure. Its messages already embed their cause (so a source
/// chain would print it twice), and a `Status` is printed twice even on its own.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => other.to_string(),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Renews the claim until `stop`, or until it is lost: the Lease names someone else, or no
/// renewal got through for `renewDeadline` since the last one was sent.
async fn renew(inner: Arc<Inner>, epoch: Epoch, mut last_sent: Instant, stop: CancellationToken) {
    let LeaseSettings { renew_deadline, renew_interval, .. } = inner.settings;
    let mut last_error = String::from("none");
    loop {
        let fence_at = last_sent + renew_deadline;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until((Instant::now() + renew_interval).min(fence_at)) => {}
            _ = inner.publish_wake.notified() => {}
        }
        if Instant::now() >= fence_at {
            inner.lose(format!("no renewal of the Lease got through for {renew_deadline:?} (last error: {last_error})"));
            return;
        }
        let requested = inner.publish_requested.load(Ordering::SeqCst);
        let sent = Instant::now();
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout_at(fence_at, inner.renew_once(epoch)) => r,
        };
        match attempt {
            Ok(Ok(())) => {
                inner.metrics.renewal("ok");
                last_sent = sent;
                inner.published.send_modify(|p| *p = (*p).max(requested));
                tracing::debug!(lease = %inner.settings.target.name, "renewed the Lease");
            }
            Ok(Err(RenewFailure::Lost(reason))) => {
                inner.metrics.renewal("lost");
                inner.lose(reason);
                return;
            }
            Ok(Err(RenewFailure::Conflict)) => {
                inner.metrics.renewal("conflict");
                last_error = "conflict: the Lease was written by someone else meanwhile".into();
                tracing::info!(lease = %inner.settings.target.name, "renewal conflicted with another write; reading the Lease again");
            }
            Ok(Err(RenewFailure::Api(e))) => {
                inner.metrics.renewal("error");
                tracing::warn!(lease = %inner.settings.target.name, error = %e, left = ?fence_at.saturating_duration_since(Instant::now()), "failed to renew the Lease");
                last_error = e;
            }
            Err(_) => {
                inner.metrics.renewal("error");
                inner.lose(format!("no renewal of the Lease got through for {renew_deadline:?} (the last one timed out)"));
                return;
            }
        }
    }
}

impl Inner {
    async fn renew_once(&self, epoch: Epoch) -> Result<(), RenewFailure> {
        let name = &self.settings.target.name;
        let current = self.api.get_opt(name).await.map_err(|e| RenewFailure::Api(api_error(&e)))?;
        let state = current.as_ref().map(object::read).transpose().map_err(RenewFailure::Lost)?;
        decide::still_ours(state.as_ref(), &self.node, epoch).map_err(RenewFailure::Lost)?;
        let Some(current) = current else { return Err(RenewFailure::Lost("the group's Lease was deleted".into())) };
        let lease = object::renewed(&current, self.settings.duration, &self.in_sync_now(), Timestamp::now());
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Err(RenewFailure::Conflict),
            Err(e) => Err(RenewFailure::Api(api_error(&e))),
        }
    }

    fn in_sync_now(&self) -> Vec<String> {
        let mut in_sync = (self.in_sync)();
        in_sync.sort();
        in_sync
    }

    fn lose(&self, reason: String) {
        tracing::warn!(lease = %self.settings.target.name, %reason, "lost the group's Lease: fencing");
        self.claim.send_replace(Claim::Lost { reason });
    }

    /// Writes the Lease with no holder (handed over to `handover_to`, if named), if it is
    /// still ours.
    async fn write_release(&self, epoch: Epoch, handover_to: Option<&str>) -> Result<(), String> {
        let name = &self.settings.target.name;
        for _ in 0..3 {
            let current = self.api.get_opt(name).await.map_err(|e| api_error(&e))?;
            let state = current.as_ref().map(object::read).transpose()?;
            if let Err(reason) = decide::still_ours(state.as_ref(), &self.node, epoch) {
                return Err(format!("nothing to release: {reason}"));
            }
            let Some(current) = current else { return Err("the group's Lease was deleted".into()) };
            // The releasing live lists itself too: its journal is complete, so it may take
            // the Lease back after a restart if no backup did.
            let mut in_sync = self.in_sync_now();
            in_sync.push(self.node.clone());
            in_sync.sort();
            match self.api.replace(name, &PostParams::default(), &object::released(&current, &in_sync, handover_to)).await {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_error(&e)),
            }
        }
        Err("the Lease kept changing under us".into())
    }
}

impl Arbiter for KubernetesArbiter {
    fn may_activate<'a>(&'a self, request: &'a ActivationRequest) -> BoxFuture<'a, Result<Decision, ArbiterError>> {
        Box::pin(self.acquire(Epoch(request.epoch), false, request.complete_copy))
    }

    fn hold_as_live(&self, local_epoch: Epoch, complete_copy: bool) -> BoxFuture<'_, Result<Option<Epoch>, ArbiterError>> {
        Box::pin(async move {
            match self.acquire(local_epoch, true, complete_copy).await? {
                Decision::Granted { epoch, .. } => Ok(epoch),
                Decision::Denied { reason } => Err(ArbiterError::Refused { reason }),
            }
        })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.give_up(None))
    }

    fn hand_over<'a>(&'a self, to: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.give_up(Some(to)))
    }

    fn lost(&self) -> BoxFuture<'static, String> {
        let mut claim = self.inner.claim.subscribe();
        Box::pin(async move {
            loop {
                if let Claim::Lost { reason } = &*claim.borrow_and_update() {
                    return reason.clone();
                }
                if claim.changed().await.is_err() {
                    return futures::future::pending().await;
                }
            }
        })
    }

    fn in_sync_changed(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut claim = inner.claim.subscribe();
            let mut published = inner.published.subscribe();
            let wanted = inner.publish_requested.fetch_add(1, Ordering::SeqCst) + 1;
            inner.publish_wake.notify_one();
            loop {
                if *published.borrow_and_update() >= wanted {
                    return Ok(());
                }
                match &*claim.borrow_and_update() {
                    Claim::Held { .. } => {}
                    Claim::Lost { reason } => return Err(reason.clone()),
                    Claim::None => return Err("this member does not hold the Lease".into()),
                }
                tokio::select! {
                    r = published.changed() => if r.is_err() { return Err("the arbiter stopped".into()) },
                    r = claim.changed() => if r.is_err() { return Err("the arbiter stopped".into()) },
                }
            }
        })
    }

    fn knows_sync(&self) -> bool {
        true
    }

    fn observe_every(&self) -> Option<Duration> {
        Some(self.inner.settings.renew_interval)
    }

    fn observe(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let target = &inner.settings.target;
            match inner.api.get_opt(&target.name).await {
                Ok(Some(lease)) => match object::read(&lease) {
                    Ok(state) => {
                        inner.observed.lock().note(&state.version, Instant::now());
                    }
                    Err(reason) => tracing::debug!(lease = %target.name, %reason, "cannot read the Lease"),
                },
                Ok(None) => inner.observed.lock().forget(),
                Err(e) => tracing::debug!(lease = %target.name, error = %api_error(&e), "cannot observe the Lease"),
            }
        })
    }

    fn name(&self) -> &'static str {
        "kubernetes"
    }
}

impl Drop for KubernetesArbiter {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.inner.renewer.lock().take() {
            stop.cancel();
        }
    }
}
