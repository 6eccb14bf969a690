//! Leader election among the operator's replicas, on one `coordination.k8s.io/v1` Lease
//! ([`crate::names::OPERATOR_LEASE`] in the operator's namespace), as client-go's leader
//! election does it: a replica takes the Lease with a conditional write (the
//! `resourceVersion` it read; a conflict means another replica won), the leader renews it
//! every `renew_interval`, and a standby takes it only once it has seen the same version of
//! the Lease for the Lease's whole duration, on its own monotonic clock (clocks of
//! different machines never meet).
//!
//! Safety: the leader runs its work (the controller) only while its claim stands. When no
//! renewal got through for `renew_deadline` since the last successful one was *sent*, or
//! the Lease names someone else, [`Elector::lead`] drops the work (no reconcile survives
//! it) and returns [`LeaderError::Lost`]; `renew_deadline` is shorter than the Lease's
//! duration, so this happens before any standby may take over. The same self-fencing the
//! brokers use for their group Leases (`duomq_broker::ha::lease`).
//!
//! Why not a crate: `kube-leader-election` 0.44 needs kube 4 (a second kube next to our
//! kube 5). `kube-lease-manager` 0.13 fits kube 5, but its leader never steps down while
//! renewals fail (its watch loop logs the error and keeps reporting `true`), it judges
//! expiry by comparing the standby's wall clock with the holder's `renewTime`, and it
//! renews with an unconditional patch; none of that meets "never two acting".
//!
//! This module talks to the Kubernetes API and runs the work it is given; it knows nothing
//! of BrokerGroups.

use std::future::Future;
use std::time::Duration;

use duomq_broker::ha::lease::api_error;
use duomq_broker::ha::lease::decide::Observed;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Defaults of the `run` flags: the Lease lasts 15 s, the leader renews every 5 s and
/// fences itself 10 s after the last renewal that got through was sent; a standby looks
/// every 2 s. As client-go's (kube-controller-manager's) defaults, with a shorter retry.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Where the Lease is, who this replica is, and the timings of a claim.
#[derive(Debug, Clone)]
pub struct ElectionSettings {
    pub namespace: String,
    pub lease: String,
    /// This replica's name in `spec.holderIdentity`: unique among the replicas.
    pub identity: String,
    /// How long a claim stands without a renewal (written to `spec.leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a renewal getting through.
    pub renew_deadline: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How often a standby looks at the Lease, and the leader retries a failed renewal.
    pub retry_interval: Duration,
}

impl ElectionSettings {
    /// Settings with the default timings.
    pub fn new(
        namespace: impl Into<String>,
        lease: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        ElectionSettings {
            namespace: namespace.into(),
            lease: lease.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// The timings must nest: a renewal is tried before the deadline, and the leader stops
    /// before a standby may take over (the Lease holds whole seconds).
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |reason: String| Err(LeaderError::Settings { reason });
        if self.identity.is_empty() {
            return bad("the identity is empty".into());
        }
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration < Duration::from_secs(1) {
            return bad(format!(
                "the lease duration ({:?}) must be a whole number of seconds, at least 1s",
                self.lease_duration
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return bad(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}): the leader stops before a standby may take over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.renew_deadline {
            return bad(format!(
                "the renew interval ({:?}) must be longer than 0 and shorter than the renew deadline ({:?})",
                self.renew_interval, self.renew_deadline
            ));
        }
        if self.retry_interval.is_zero() || self.retry_interval >= self.lease_duration {
            return bad(format!(
                "the retry interval ({:?}) must be longer than 0 and shorter than the lease duration ({:?})",
                self.retry_interval, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// What this replica is doing, for `/readyz` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading; `leader` is the Lease's holder, if any.
    Standby { leader: Option<String> },
    /// Holds the Lease and runs the work.
    Leader,
}

#[derive(Debug, Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {reason}")]
    Settings { reason: String },
    /// The work was stopped: the claim on the Lease no longer stands.
    #[error("lost the leadership ({reason}): stopped acting")]
    Lost { reason: String },
}

/// The leader gauge (1/0) and the count of times this replica became the leader.
#[derive(Clone, Default)]
pub struct LeaderMetrics {
    pub leader: Gauge,
    pub transitions: Counter,
}

/// One replica's part in the election. See the module documentation.
pub struct Elector {
    api: Api<Lease>,
    settings: ElectionSettings,
    role: watch::Sender<Role>,
    metrics: LeaderMetrics,
    observed: Mutex<Observed<Instant>>,
}

/// What a standby's look at the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Take the Lease; `transition` when it changes hands.
    Take { transition: bool },
    /// Someone else's claim stands.
    Wait { holder: String },
}

/// May `me` take the Lease, having seen its current version for `unchanged_for`? Pure.
fn may_take(
    spec: &LeaseSpec,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Verdict {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Verdict::Take { transition: true };
    };
    if holder == me {
        // A previous process of this replica (the same pod name): it is gone.
        return Verdict::Take { transition: false };
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    if unchanged_for >= duration {
        Verdict::Take { transition: true }
    } else {
        Verdict::Wait {
            holder: holder.to_string(),
        }
    }
}

/// Why one renewal failed.
enum RenewFailure {
    /// The Lease is not ours any more: stop now.
    Lost(String),
    /// The API failed or someone wrote the Lease meanwhile: retry until the deadline.
    Failed(String),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The spec of a Lease `settings.identity` holds, renewed at `now`; `taken` when it
/// changes hands (a new acquire time, one more transition if someone held it before).
fn claimed(
    settings: &ElectionSettings,
    previous: Option<&LeaseSpec>,
    taken: bool,
    now: MicroTime,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let seconds = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let held_before = previous
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty());
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(seconds),
        acquire_time: if taken {
            Some(now.clone())
        } else {
            previous.acquire_time.clone()
        },
        renew_time: Some(now),
        lease_transitions: Some(
            previous.lease_transitions.unwrap_or(0) + i32::from(taken && held_before),
        ),
        ..previous
    }
}

impl Elector {
    pub fn new(client: kube::Client, settings: ElectionSettings) -> Result<Elector, LeaderError> {
        settings.validate()?;
        Ok(Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            role: watch::Sender::new(Role::Standby { leader: None }),
            metrics: LeaderMetrics::default(),
            observed: Mutex::new(Observed::default()),
        })
    }

    /// Reports the role to these metrics (registered by the caller).
    pub fn with_metrics(mut self, metrics: LeaderMetrics) -> Elector {
        self.metrics = metrics;
        self
    }

    /// Follows this replica's role.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn settings(&self) -> &ElectionSettings {
        &self.settings
    }

    /// Waits until this replica holds the Lease, then runs `work` while it keeps holding it.
    /// `Ok` with the work's output when the work ended by itself (the Lease is then
    /// released, so a standby takes over at once); [`LeaderError::Lost`] when the claim
    /// lapsed, after the work was dropped.
    pub async fn lead<F: Future>(&self, work: F) -> Result<F::Output, LeaderError> {
        let sent = self.acquire().await;
        self.set_role(Role::Leader);
        self.metrics.transitions.inc();
        info!(lease = %self.settings.lease, namespace = %self.settings.namespace, identity = %self.settings.identity, "became the leader: starting the controller");
        // The claim is looked at first whenever the task wakes: after a pause of the process
        // (stopped, starved), a lapsed claim stops the work before it takes another step.
        let outcome = tokio::select! {
            biased;
            reason = self.keep(sent) => Err(reason),
            out = work => Ok(out),
        };
        // `work` is dropped here, before anything else happens.
        match outcome {
            Ok(out) => {
                self.release().await;
                self.set_role(Role::Standby { leader: None });
                Ok(out)
            }
            Err(reason) => {
                warn!(lease = %self.settings.lease, %reason, "lost the leadership: the controller is stopped");
                self.set_role(Role::Standby { leader: None });
                Err(LeaderError::Lost { reason })
            }
        }
    }

    fn set_role(&self, role: Role) {
        self.metrics.leader.set(i64::from(role == Role::Leader));
        self.role.send_replace(role);
    }

    /// Looks at the Lease every `retry_interval` until a write taking it got through;
    /// returns when that write was sent.
    async fn acquire(&self) -> Instant {
        let mut last_logged: Option<String> = None;
        loop {
            let attempt =
                tokio::time::timeout(self.settings.renew_deadline, self.try_acquire()).await;
            let note = match attempt {
                Ok(Ok(Ok(sent))) => return sent,
                Ok(Ok(Err(holder))) => {
                    self.role.send_if_modified(|role| {
                        let now = Role::Standby {
                            leader: Some(holder.clone()),
                        };
                        std::mem::replace(role, now.clone()) != now
                    });
                    format!("standby: waiting for {holder}")
                }
                Ok(Err(reason)) => format!("cannot take the leader Lease: {reason}"),
                Err(_) => format!(
                    "cannot take the leader Lease: no answer within {:?}",
                    self.settings.renew_deadline
                ),
            };
            if last_logged.as_deref() != Some(note.as_str()) {
                info!(lease = %self.settings.lease, identity = %self.settings.identity, "{note}");
                last_logged = Some(note);
            }
            tokio::time::sleep(self.settings.retry_interval).await;
        }
    }

    /// One look at the Lease: `Ok(Ok(sent))` when this replica took it, `Ok(Err(holder))`
    /// when another claim stands, `Err` when the API failed or another replica won the race.
    async fn try_acquire(&self) -> Result<Result<Instant, String>, String> {
        let name = &self.settings.lease;
        let me = &self.settings.identity;
        let current = self.api.get_opt(name).await.map_err(|e| api_error(&e))?;
        let Some(current) = current else {
            self.observed.lock().forget();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed(&self.settings, None, true, micro_now())),
            };
            let sent = Instant::now();
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Ok(sent)),
                Err(e) if is_conflict(&e) => Err("another replica created the Lease first".into()),
                Err(e) => Err(api_error(&e)),
            };
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let unchanged_for = self.observed.lock().note(&version, Instant::now());
        let spec = current.spec.clone().unwrap_or_default();
        let transition = match may_take(&spec, me, unchanged_for, self.settings.lease_duration) {
            Verdict::Wait { holder } => return Ok(Err(holder)),
            Verdict::Take { transition } => transition,
        };
        let mut lease = current;
        lease.spec = Some(claimed(
            &self.settings,
            Some(&spec),
            transition,
            micro_now(),
        ));
        let sent = Instant::now();
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => {
                if let Some(previous) = spec.holder_identity.filter(|h| h != me && !h.is_empty()) {
                    info!(lease = %name, %previous, unrenewed_for = ?unchanged_for, "took the leader Lease over");
                }
                Ok(Ok(sent))
            }
            Err(e) if is_conflict(&e) => {
                Err("another replica wrote the Lease between our read and our write".into())
            }
            Err(e) => Err(api_error(&e)),
        }
    }

    /// Renews the claim until it is lost; returns why. `last_sent` is when the last write
    /// that got through was sent: the claim is given up `renew_deadline` after it.
    async fn keep(&self, mut last_sent: Instant) -> String {
        let ElectionSettings {
            renew_deadline,
            renew_interval,
            retry_interval,
            ..
        } = self.settings;
        let mut wait = renew_interval;
        let mut last_error = String::from("none");
        loop {
            let fence_at = last_sent + renew_deadline;
            tokio::time::sleep_until((Instant::now() + wait).min(fence_at)).await;
            if Instant::now() >= fence_at {
                return format!("no renewal of the Lease got through for {renew_deadline:?} (last error: {last_error})");
            }
            let sent = Instant::now();
            match tokio::time::timeout_at(fence_at, self.renew_once()).await {
                Ok(Ok(())) => {
                    debug!(lease = %self.settings.lease, "renewed the leader Lease");
                    last_sent = sent;
                    wait = renew_interval;
                }
                Ok(Err(RenewFailure::Lost(reason))) => return reason,
                Ok(Err(RenewFailure::Failed(e))) => {
                    warn!(lease = %self.settings.lease, error = %e, left = ?fence_at.saturating_duration_since(Instant::now()), "failed to renew the leader Lease");
                    last_error = e;
                    wait = retry_interval;
                }
                Err(_) => return format!("no renewal of the Lease got through for {renew_deadline:?} (the last one got no answer)"),
            }
        }
    }

    async fn renew_once(&self) -> Result<(), RenewFailure> {
        let name = &self.settings.lease;
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| RenewFailure::Failed(api_error(&e)))?;
        let Some(mut lease) = current else {
            return Err(RenewFailure::Lost("the leader Lease was deleted".into()));
        };
        let spec = lease.spec.clone().unwrap_or_default();
        match spec.holder_identity.as_deref() {
            Some(h) if h == self.settings.identity => {}
            Some(h) if !h.is_empty() => {
                return Err(RenewFailure::Lost(format!("{h} holds the Lease now")))
            }
            _ => {
                return Err(RenewFailure::Lost(
                    "the Lease was released by someone else".into(),
                ))
            }
        }
        lease.spec = Some(claimed(&self.settings, Some(&spec), false, micro_now()));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Err(RenewFailure::Failed(
                "the Lease was written by someone else meanwhile".into(),
            )),
            Err(e) => Err(RenewFailure::Failed(api_error(&e))),
        }
    }

    /// Writes the Lease with no holder if it is still ours, so that a standby takes over at
    /// once; on failure it expires instead.
    async fn release(&self) {
        let name = &self.settings.lease;
        let attempt = tokio::time::timeout(self.settings.renew_deadline, async {
            let Some(mut lease) = self.api.get_opt(name).await.map_err(|e| api_error(&e))? else {
                return Ok(false);
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.renew_time = Some(micro_now());
            lease.spec = Some(spec);
            self.api
                .replace(name, &PostParams::default(), &lease)
                .await
                .map_err(|e| api_error(&e))?;
            Ok::<_, String>(true)
        })
        .await;
        match attempt {
            Ok(Ok(true)) => info!(lease = %name, "released the leader Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(reason)) => {
                warn!(lease = %name, %reason, "failed to release the leader Lease; it expires instead")
            }
            Err(_) => {
                warn!(lease = %name, "releasing the leader Lease timed out; it expires instead")
            }
        }
    }
}

/// This replica's identity: `POD_NAME`, else the host name and a random suffix (two
/// processes on one host must not share it).
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "duomq-operator".into());
    let suffix: String =
        rand::Rng::sample_iter(rand::thread_rng(), &rand::distributions::Alphanumeric)
            .take(6)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::sync::Arc;

    const D: Duration = Duration::from_secs(15);

    fn spec(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: seconds,
            ..LeaseSpec::default()
        }
    }

    #[rstest]
    #[case::free(spec(None, Some(15)), 0, Verdict::Take { transition: true })]
    #[case::released_empty(spec(Some(""), Some(15)), 0, Verdict::Take { transition: true })]
    #[case::ours_from_before(spec(Some("me"), Some(15)), 0, Verdict::Take { transition: false })]
    #[case::claim_stands(spec(Some("other"), Some(15)), 14, Verdict::Wait { holder: "other".into() })]
    #[case::claim_lapsed(spec(Some("other"), Some(15)), 15, Verdict::Take { transition: true })]
    #[case::holder_duration_counts(spec(Some("other"), Some(40)), 30, Verdict::Wait { holder: "other".into() })]
    #[case::no_duration_uses_ours(spec(Some("other"), None), 15, Verdict::Take { transition: true })]
    fn given_a_lease_when_a_replica_looks_should_take_only_a_free_or_lapsed_one(
        #[case] lease: LeaseSpec,
        #[case] unchanged_secs: u64,
        #[case] expected: Verdict,
    ) {
        assert_eq!(
            may_take(&lease, "me", Duration::from_secs(unchanged_secs), D),
            expected
        );
    }

    #[rstest]
    #[case::defaults(15, 10, 5, 2, true)]
    #[case::deadline_not_shorter(15, 15, 5, 2, false)]
    #[case::interval_not_shorter(15, 10, 10, 2, false)]
    #[case::fractional_duration(15_500, 10, 5, 2, false)]
    fn given_timings_when_validated_should_nest(
        #[case] duration: u64,
        #[case] deadline: u64,
        #[case] interval: u64,
        #[case] retry: u64,
        #[case] ok: bool,
    ) {
        let duration = if duration > 1000 {
            Duration::from_millis(duration)
        } else {
            Duration::from_secs(duration)
        };
        let settings = ElectionSettings {
            lease_duration: duration,
            renew_deadline: Duration::from_secs(deadline),
            renew_interval: Duration::from_secs(interval),
            retry_interval: Duration::from_secs(retry),
            ..ElectionSettings::new("ns", "lease", "me")
        };
        assert_eq!(settings.validate().is_ok(), ok, "{settings:?}");
    }

    #[rstest]
    #[case::taken_from_another(Some(spec(Some("other"), Some(15))), true, 4)]
    #[case::taken_when_free(Some(spec(None, Some(15))), true, 3)]
    #[case::created(None, true, 0)]
    #[case::renewed(Some(spec(Some("me"), Some(15))), false, 3)]
    fn given_a_lease_when_claimed_should_name_this_replica_and_count_changes_of_hands(
        #[case] previous: Option<LeaseSpec>,
        #[case] taken: bool,
        #[case] transitions: i32,
    ) {
        let settings = ElectionSettings::new("ns", "lease", "me");
        let previous = previous.map(|p| LeaseSpec {
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..p
        });
        let now = MicroTime(Timestamp::from_second(1_000).expect("a valid time"));
        let lease = claimed(&settings, previous.as_ref(), taken, now.clone());
        assert_eq!(lease.holder_identity.as_deref(), Some("me"));
        assert_eq!(lease.lease_duration_seconds, Some(15));
        assert_eq!(lease.renew_time, Some(now.clone()));
        assert_eq!(lease.lease_transitions, Some(transitions));
        let acquired = if taken {
            Some(now)
        } else {
            Some(MicroTime(Timestamp::UNIX_EPOCH))
        };
        assert_eq!(lease.acquire_time, acquired);
    }

    /// A fake Lease API for one Lease: GET, POST (create) and PUT with optimistic
    /// concurrency (a stale `resourceVersion` is 409). While `hang` is set it answers
    /// nothing, as an unreachable API server.
    mod fake {
        use std::sync::Arc;

        use http::{Method, Request, Response, StatusCode};
        use k8s_openapi::api::coordination::v1::Lease;
        use kube::client::Body;
        use parking_lot::Mutex;
        use tower_test::mock::{Handle, SendResponse};

        #[derive(Default)]
        pub struct LeaseServer {
            pub lease: Option<Lease>,
            pub version: u64,
            pub hang: bool,
            /// Requests held while hanging: dropped with the server.
            held: Vec<SendResponse<Response<Body>>>,
        }

        impl LeaseServer {
            /// Stores `lease` as the next version, as any writer would.
            pub fn write(&mut self, mut lease: Lease) {
                self.version += 1;
                lease.metadata.resource_version = Some(self.version.to_string());
                self.lease = Some(lease);
            }

            pub fn holder(&self) -> Option<String> {
                self.lease
                    .as_ref()
                    .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
            }
        }

        pub fn client() -> (kube::Client, Arc<Mutex<LeaseServer>>) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let server = Arc::new(Mutex::new(LeaseServer::default()));
            tokio::spawn(serve(handle, server.clone()));
            (kube::Client::new(service, "ns"), server)
        }

        fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
            let mut response = Response::new(Body::from(body.to_string().into_bytes()));
            *response.status_mut() = status;
            response
        }

        fn status(code: StatusCode, reason: &str) -> Response<Body> {
            let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": reason});
            json(code, body)
        }

        async fn serve(
            mut handle: Handle<Request<Body>, Response<Body>>,
            server: Arc<Mutex<LeaseServer>>,
        ) {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect_bytes()
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let mut server = server.lock();
                if server.hang {
                    server.held.push(send);
                    continue;
                }
                let response = match parts.method {
                    Method::GET => match &server.lease {
                        Some(lease) => json(
                            StatusCode::OK,
                            serde_json::to_value(lease).unwrap_or_default(),
                        ),
                        None => status(StatusCode::NOT_FOUND, "NotFound"),
                    },
                    Method::POST if server.lease.is_some() => {
                        status(StatusCode::CONFLICT, "AlreadyExists")
                    }
                    Method::POST | Method::PUT => match serde_json::from_slice::<Lease>(&body) {
                        Ok(lease) => {
                            let current = server
                                .lease
                                .as_ref()
                                .and_then(|l| l.metadata.resource_version.clone());
                            if parts.method == Method::PUT
                                && lease.metadata.resource_version != current
                            {
                                status(StatusCode::CONFLICT, "Conflict")
                            } else {
                                server.write(lease);
                                json(
                                    StatusCode::OK,
                                    serde_json::to_value(&server.lease).unwrap_or_default(),
                                )
                            }
                        }
                        Err(e) => status(StatusCode::BAD_REQUEST, &e.to_string()),
                    },
                    _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
                };
                send.send_response(response);
            }
        }
    }

    /// Sets its flag when dropped: the work of a leader is gone.
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Work that runs until dropped, and the flag its drop sets.
    fn endless_work() -> (impl Future<Output = ()>, Arc<std::sync::atomic::AtomicBool>) {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = Dropped(flag.clone());
        let work = async move {
            let _guard = guard;
            std::future::pending::<()>().await
        };
        (work, flag)
    }

    fn elector(client: kube::Client, identity: &str) -> Elector {
        Elector::new(client, ElectionSettings::new("ns", "leader", identity))
            .expect("valid settings")
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_leader_whose_api_hangs_when_the_renew_deadline_passes_should_drop_the_work_and_report_lost(
    ) {
        let (client, server) = fake::client();
        let elector = elector(client, "me");
        let mut role = elector.role();
        let (work, dropped) = endless_work();
        let leading = tokio::spawn(async move { elector.lead(work).await });
        role.wait_for(|r| *r == Role::Leader)
            .await
            .expect("becomes leader");
        assert_eq!(server.lock().holder().as_deref(), Some("me"));
        // Two renewals get through, then the API server stops answering.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let renewed = server.lock().version;
        assert!(renewed >= 3, "renewed every 5s: version {renewed}");
        server.lock().hang = true;
        let hung_at = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(60), leading)
            .await
            .expect("lead returns")
            .expect("the election task");
        let stopped = hung_at.elapsed();
        assert!(
            matches!(result, Err(LeaderError::Lost { .. })),
            "{result:?}"
        );
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the work is dropped"
        );
        // The last renewal that got through was sent at most one renew interval before the
        // hang: the leader stops within the renew deadline of it, before the 15 s Lease lapses.
        assert!(
            stopped <= DEFAULT_RENEW_DEADLINE,
            "stopped {stopped:?} after the hang"
        );
        assert!(
            stopped >= DEFAULT_RENEW_DEADLINE - DEFAULT_RENEW_INTERVAL,
            "stopped {stopped:?} after the hang: too early"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_leader_when_another_writer_takes_the_lease_should_stop_at_its_next_renewal() {
        let (client, server) = fake::client();
        let elector = elector(client, "me");
        let mut role = elector.role();
        let (work, dropped) = endless_work();
        let leading = tokio::spawn(async move { elector.lead(work).await });
        role.wait_for(|r| *r == Role::Leader)
            .await
            .expect("becomes leader");
        let stolen_at = Instant::now();
        {
            let mut server = server.lock();
            let mut lease = server.lease.clone().expect("the Lease");
            lease.spec.as_mut().expect("a spec").holder_identity = Some("thief".into());
            server.write(lease);
        }
        let result = tokio::time::timeout(Duration::from_secs(60), leading)
            .await
            .expect("lead returns")
            .expect("the election task");
        assert!(
            matches!(&result, Err(LeaderError::Lost { reason }) if reason.contains("thief")),
            "{result:?}"
        );
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the work is dropped"
        );
        assert!(
            stolen_at.elapsed() <= DEFAULT_RENEW_INTERVAL,
            "stopped {:?} after the theft",
            stolen_at.elapsed()
        );
        assert_eq!(
            server.lock().holder().as_deref(),
            Some("thief"),
            "the leader wrote nothing more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_standby_when_the_holder_stops_renewing_should_take_over_after_seeing_the_lease_unchanged_for_its_duration(
    ) {
        let (client, server) = fake::client();
        let settings = ElectionSettings::new("ns", "leader", "other");
        server.lock().write(Lease {
            metadata: ObjectMeta {
                name: Some("leader".into()),
                ..ObjectMeta::default()
            },
            spec: Some(claimed(&settings, None, true, micro_now())),
        });
        let elector = elector(client, "me");
        let mut role = elector.role();
        let started = Instant::now();
        let leading = tokio::spawn(async move { elector.lead(std::future::pending::<()>()).await });
        role.wait_for(|r| {
            *r == Role::Standby {
                leader: Some("other".into()),
            }
        })
        .await
        .expect("stands by");
        role.wait_for(|r| *r == Role::Leader)
            .await
            .expect("takes over");
        let waited = started.elapsed();
        assert!(
            waited >= DEFAULT_LEASE_DURATION,
            "took over after {waited:?}"
        );
        assert!(
            waited <= DEFAULT_LEASE_DURATION + DEFAULT_RETRY_INTERVAL,
            "took over after {waited:?}"
        );
        let lease = server
            .lock()
            .lease
            .clone()
            .and_then(|l| l.spec)
            .expect("the Lease");
        assert_eq!(
            (lease.holder_identity.as_deref(), lease.lease_transitions),
            (Some("me"), Some(1))
        );
        leading.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn given_a_leader_when_its_work_ends_should_release_the_lease() {
        let (client, server) = fake::client();
        let elector = elector(client, "me");
        let out = elector.lead(async { 7 }).await.expect("the work's output");
        assert_eq!(out, 7);
        assert_eq!(server.lock().holder(), None, "released");
        assert_eq!(*elector.role().borrow(), Role::Standby { leader: None });
    }
}
