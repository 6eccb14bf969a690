//! The controller: watches BrokerGroups and what they own, and reconciles each one in
//! steps that read top to bottom and never go back: dereference (reads only) → validate
//! (pure) → render (pure) → apply (server-side apply, one field manager) → observe (facts
//! only) → plan (pure: every action) → act (carries the plan out, returns an outcome) →
//! status (pure: computed from facts and outcome; then pod labels, Events, the status patch).

mod act;
mod apply;
mod brokers;
mod dereference;
pub mod metrics;
mod observe;
mod request;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use thiserror::Error;
use tracing::{info, warn};

pub use brokers::{Access, BrokerStatusSource, Endpoint, EndpointTls, HttpBrokerStatus};
pub use request::{request_switchover, RequestError};

use crate::api::{condition, BrokerGroup, BrokerGroupStatus};
use crate::names;
use crate::plan;
use crate::render::render;
use crate::status::reason::Reason;
use crate::status;
use crate::validate::{validate, InvalidSpec};

/// A reconcile that failed, by the step that failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error("dereference: failed to {what}")]
    Dereference {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("apply: failed to {what}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("observe: failed to {what}")]
    Observe {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("act: failed to {what}")]
    Act {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("status: failed to {what}")]
    Status {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the BrokerGroup has no namespace")]
    NoNamespace,
    #[error("the reconcile did not finish within {0:?}: a Kubernetes API or broker call did not answer; it was cut off and is retried")]
    TimedOut(Duration),
}

macro_rules! step_error {
    ($($name:ident => $variant:ident),*) => {
        impl Error {
            $(
                fn $name(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
                    let what = what.into();
                    move |source| Error::$variant { what, source }
                }
            )*
        }
    };
}

step_error!(dereference => Dereference, apply => Apply, observe => Observe, act => Act, status => Status);

/// How often a settled BrokerGroup is looked at again (its brokers' status is polled, not
/// watched), and how often while members are starting or a group has no live.
const REQUEUE_STABLE: Duration = Duration::from_secs(15);
const REQUEUE_BUSY: Duration = Duration::from_secs(3);
/// Backoff after a failed reconcile: doubles from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How long one reconcile may take. Its slowest call is a switchover (the live answers
/// within 45 s); every broker call has its own timeout, but a Kubernetes API call has only
/// kube's read timeout (295 s, sized for watches). A reconcile stuck on one is cut off here
/// and retried with the backoff: until it ends, no other reconcile of that BrokerGroup runs,
/// so a renewal, a failover or a status update would wait with it. Cutting a reconcile off
/// anywhere is safe: each one observes afresh and applies idempotently.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(90);

/// Event recorders kept at most; past that they start afresh (repeats of an event already
/// published then make a new event instead of counting up the old one's series).
const MAX_RECORDERS: usize = 1024;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<metrics::Metrics>,
    pub brokers: Arc<dyn BrokerStatusSource>,
    reporter: Reporter,
    /// One event recorder per (reason, note): see [`Context::recorder`].
    recorders: Mutex<HashMap<(String, String), Recorder>>,
    /// Consecutive failures per BrokerGroup, for backoff.
    failures: Mutex<HashMap<ObjectRef<BrokerGroup>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<metrics::Metrics>,
        brokers: Arc<dyn BrokerStatusSource>,
    ) -> Context {
        let reporter = Reporter {
            controller: names::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            client,
            metrics,
            brokers,
            reporter,
            recorders: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// kube's Recorder folds an event into the last one it published with the same type,
    /// reason and object (a series: count + 1), whatever the note, so two groups failing over
    /// in one reconcile would show as one event naming the first group only. A recorder per
    /// note keeps different transitions different events, while one that repeats (a split
    /// brain seen on every reconcile) still only counts up.
    fn recorder(&self, reason: &str, note: &str) -> Recorder {
        let mut recorders = self.recorders.lock();
        if recorders.len() >= MAX_RECORDERS {
            recorders.clear();
        }
        recorders
            .entry((reason.to_string(), note.to_string()))
            .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
            .clone()
    }
}

/// Runs the controller until a shutdown signal. `namespace` limits it to one namespace.
pub async fn run(client: Client, namespace: Option<String>, ctx: Arc<Context>) {
    let groups: Api<BrokerGroup> = scoped(&client, &namespace);
    let (sts, svc, cm, secret, pdb, pods) = (
        scoped::<StatefulSet>(&client, &namespace),
        scoped::<Service>(&client, &namespace),
        scoped::<ConfigMap>(&client, &namespace),
        scoped::<Secret>(&client, &namespace),
        scoped::<PodDisruptionBudget>(&client, &namespace),
        scoped::<Pod>(&client, &namespace),
    );
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::FIELD_MANAGER
    ));
    let broker_pods =
        watcher::Config::default().labels(&format!("{}={}", names::LABEL_NAME, names::APP_NAME));
    Controller::new(groups, watcher::Config::default())
        .owns(sts, managed.clone())
        .owns(svc, managed.clone())
        .owns(cm, managed.clone())
        .owns(secret, managed.clone())
        .owns(pdb, managed)
        // A pod dying or coming back changes the status at once, not at the next poll.
        .watches(pods, broker_pods, |pod| {
            let instance = pod.labels().get(names::LABEL_INSTANCE)?.clone();
            Some(ObjectRef::<BrokerGroup>::new(&instance).within(&pod.namespace()?))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(brokergroup = %object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile loop"),
            }
        })
        .await;
}

/// An Api over one namespace, or all.
fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn error_policy(bg: Arc<BrokerGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(bg.as_ref());
    let mut failures = ctx.failures.lock();
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    let delay = BACKOFF_FIRST
        .saturating_mul(1u32 << (*n - 1).min(16))
        .min(BACKOFF_CAP);
    warn!(brokergroup = %bg.name_any(), error = %error, source = ?std::error::Error::source(error).map(|s| s.to_string()), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// One reconcile of one BrokerGroup.
pub async fn reconcile(bg: Arc<BrokerGroup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started();
    let result = match tokio::time::timeout(RECONCILE_DEADLINE, reconcile_phases(&bg, &ctx)).await {
        Ok(result) => result,
        Err(_) => Err(Error::TimedOut(RECONCILE_DEADLINE)),
    };
    timer.finish(match &result {
        Ok(_) => "ok",
        Err(_) => "error",
    });
    if result.is_ok() {
        ctx.failures
            .lock()
            .remove(&ObjectRef::from_obj(bg.as_ref()));
    }
    result
}

async fn reconcile_phases(bg: &BrokerGroup, ctx: &Context) -> Result<Action, Error> {
    // Owner references let Kubernetes' garbage collector delete everything: nothing to do.
    if bg.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = bg.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;

    // Dereference: the status as last written, everything the spec points at, what exists.
    let Some(mut inputs) = dereference::dereference(client, &namespace, bg).await? else {
        return Ok(Action::await_change());
    };

    // spec.tls: the certificates found, or made now (keys are random and renewal reads the
    // clock, so this is not part of validation).
    let groups = crate::validate::groups_with_existing(
        &bg.name_any(),
        &namespace,
        &bg.spec,
        &inputs.dependencies.existing_groups,
    );
    let prepared = crate::certificates::prepare(
        &bg.name_any(),
        &namespace,
        bg.spec.tls.as_ref(),
        &groups,
        &inputs.certificates,
        std::time::SystemTime::now(),
    );
    inputs.dependencies.certificates = match prepared {
        Ok(c) => c,
        Err(p) => {
            let invalid = InvalidSpec::Dependency {
                reason: p.reason,
                message: p.message,
            };
            return report_invalid(bg, ctx, &namespace, &invalid).await;
        }
    };
    let previous = &inputs.previous;

    // Validate.
    let mut validated = match validate(bg, &inputs.dependencies) {
        Ok(v) => v,
        Err(invalid) => return report_invalid(bg, ctx, &namespace, &invalid).await,
    };
    validated.problems.splice(0..0, inputs.problems.iter().cloned());

    // Render and apply.
    let rendered = render(&validated);
    apply::apply_all(client, &namespace, &rendered).await?;

    // Observe: facts only.
    let existing_password = inputs
        .dependencies
        .cluster_secret
        .as_ref()
        .and_then(|d| d.get(names::CLUSTER_PASSWORD_KEY).cloned());
    let access = brokers::Access {
        namespace: namespace.clone(),
        port: u16::try_from(validated.spec.ports.admin)
            .unwrap_or(duomq_broker::admin::api::DEFAULT_PORT),
        password: existing_password.or_else(|| validated.credentials.generated_password.clone()),
        tls: match validated.certificates.as_ref().and_then(|c| c.ca_pem()) {
            Some(ca) => Some(admin_trust(ca).map_err(|e| {
                warn!(brokergroup = %bg.name_any(), error = %e, "the CA certificates do not load: the brokers' admin API cannot be checked");
                e
            }).ok()).flatten(),
            None => None,
        },
    };
    let seen = observe::observe(
        client,
        ctx.brokers.as_ref(),
        &access,
        &namespace,
        &validated,
        &inputs.statefulsets,
    )
    .await?;

    // Plan every action, then carry it out.
    let rendered_keys: BTreeSet<(String, String)> = rendered
        .objects()
        .into_iter()
        .map(|o| (o.kind.to_string(), o.name))
        .collect();
    let now = now();
    let plan = plan::plan(
        &validated,
        &seen,
        &plan::PlanInputs {
            annotation: bg
                .annotations()
                .get(names::SWITCHOVER_ANNOTATION)
                .map(String::as_str),
            previous,
            rendered: &rendered_keys,
            now: &now,
        },
    );
    let act = act::Act {
        ctx,
        bg,
        namespace: &namespace,
        access: &access,
    };
    let outcome = act.carry_out(&plan, &seen).await?;

    // Status, from the facts and the outcome.
    let facts = status::Facts {
        seen: &seen,
        plan: &plan,
        outcome: &outcome,
    };
    let computed = status::compute(&validated, bg.meta().generation, &facts, previous, &now);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for (pod, role) in &computed.role_labels {
        let patch = serde_json::json!({"metadata": {"labels": {names::LABEL_ROLE: role}}});
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::status(format!("label pod {pod} {role}")))?;
        info!(pod = %pod, role = %role, "pod role label set");
    }
    for t in &computed.transitions {
        publish(ctx, bg, t.reason, &t.note).await;
        if t.reason == Reason::FailedOver {
            ctx.metrics.failovers.inc();
        }
        info!(brokergroup = %bg.name_any(), reason = %t.reason, "{}", t.note);
    }
    if &computed.status != previous {
        patch_status(client, &namespace, bg, &computed.status).await?;
    }
    let progressing = computed
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::PROGRESSING && c.status == "True");
    let all_live = computed.status.groups.iter().all(|g| g.live.is_some());
    let next = if (!progressing && all_live) || (validated.hibernate && seen.pods.is_empty()) {
        REQUEUE_STABLE
    } else {
        REQUEUE_BUSY
    };
    // A certificate due for renewal sooner than the next look is renewed on time.
    let renewal = validated
        .certificates
        .as_ref()
        .and_then(|c| c.renew_at)
        .map(|at| {
            let now = Timestamp::now().as_second();
            Duration::from_secs(u64::try_from(at.saturating_sub(now)).unwrap_or(0).max(1))
        });
    Ok(Action::requeue(renewal.map_or(next, |r| r.min(next))))
}

/// The client settings the operator dials the brokers' admin API with: trusting `ca_pem`
/// (the group's CA), checking the pod's DNS name.
fn admin_trust(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("ca.crt is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca.crt holds a certificate that cannot be trusted: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(duomq_broker::tls::provider())
        .with_protocol_versions(duomq_broker::tls::versions(
            duomq_broker::config::TlsVersion::V1_2,
        ))
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An invalid spec: say so in the status and an event, and wait for the spec to change.
async fn report_invalid(
    bg: &BrokerGroup,
    ctx: &Context,
    namespace: &str,
    invalid: &InvalidSpec,
) -> Result<Action, Error> {
    let message = invalid.to_string();
    let previous = bg.status.clone().unwrap_or_default();
    let already = previous
        .conditions
        .iter()
        .any(|c| c.type_ == condition::DEGRADED && c.status == "True" && c.message == message)
        && previous.observed_generation == bg.meta().generation;
    if !already {
        warn!(brokergroup = %bg.name_any(), reason = %invalid.reason(), "{message}");
        publish(ctx, bg, invalid.reason(), &message).await;
        let mut status = previous.clone();
        status.observed_generation = bg.meta().generation;
        status.conditions.retain(|c| c.type_ != condition::DEGRADED);
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: condition::DEGRADED.into(),
                status: "True".into(),
                reason: invalid.reason().as_str().into(),
                message,
                last_transition_time: now(),
                observed_generation: bg.meta().generation,
            });
        patch_status(&ctx.client, namespace, bg, &status).await?;
    }
    ctx.metrics.invalid_specs.inc();
    // A missing Secret or ConfigMap may appear without the spec changing.
    Ok(if invalid.retry() {
        Action::requeue(REQUEUE_STABLE)
    } else {
        Action::await_change()
    })
}

async fn patch_status(
    client: &Client,
    namespace: &str,
    bg: &BrokerGroup,
    status: &BrokerGroupStatus,
) -> Result<(), Error> {
    let api: Api<BrokerGroup> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
        "kind": crate::api::KIND,
        "status": status,
    });
    api.patch_status(
        &bg.name_any(),
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::status("patch BrokerGroup status"))?;
    Ok(())
}

async fn publish(ctx: &Context, bg: &BrokerGroup, reason: Reason, note: &str) {
    let note: String = note.chars().take(1000).collect();
    let recorder = ctx.recorder(reason.as_str(), &note);
    let event = Event {
        type_: if reason.warning() {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.as_str().into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event that cannot be written is not worth failing the reconcile for.
    if let Err(e) = recorder.publish(&event, &bg.object_ref(&())).await {
        warn!(error = %e, reason = %reason, "failed to publish event");
    }
}

/// Keys of a Secret's data as text (values that are not UTF-8 are skipped).
pub(crate) fn secret_text(secret: &Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(text) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), text);
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}
