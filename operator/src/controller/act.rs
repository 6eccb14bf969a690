//! Act: carrying out a [`Plan`] in its order (lease releases, removals, claim resizes, pod
//! deletions, switchovers, fences, drains, then the switchover annotation's finished entries)
//! and returning what happened as an [`Outcome`]. It decides nothing: what to do comes from
//! `crate::plan`; the status and Events are computed from the outcome afterwards.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use tracing::{info, warn};

use super::metrics::SwitchoverLabels;
use super::brokers::{Access, Endpoint};
use super::{apply, now, Context, Error};
use crate::api::{BrokerGroup, FailoverReason, PendingSwitchover};
use crate::names;
use crate::plan::{format_requests, Outcome, Plan, Resize};
use crate::status::reason::{Problem, Reason, Transition};
use crate::status::Observation;

/// What acting needs beyond the plan.
pub struct Act<'a> {
    pub ctx: &'a Context,
    pub bg: &'a BrokerGroup,
    pub namespace: &'a str,
    /// How to reach the brokers: admin port, cluster password, TLS trust.
    pub access: &'a Access,
}

impl Act<'_> {
    pub async fn carry_out(&self, plan: &Plan, seen: &Observation) -> Result<Outcome, Error> {
        let client = &self.ctx.client;
        let mut out = Outcome::default();
        for r in &plan.lease_releases {
            if apply::release_lease(client, self.namespace, &names::lease(&r.group), &r.holder)
                .await?
            {
                out.transitions.push(Transition::new(
                    Reason::OperatorFailover,
                    format!("group {}: live {} is dead; released its Lease so an in-sync backup takes over now", r.group, r.holder),
                ));
                out.released.insert(r.group.clone(), r.holder.clone());
            }
        }
        for r in &plan.removals {
            apply::delete_object(client, self.namespace, &r.kind, &r.name, false).await?;
            if r.kind == "StatefulSet" {
                out.transitions.push(Transition::new(
                    Reason::GroupRemoved,
                    format!("group {} is no longer in the spec and holds no message: deleted it; its journal claims are kept", r.name),
                ));
            }
        }
        for r in &plan.resizes {
            self.resize(r, &mut out).await?;
        }
        self.delete_pods(plan, &mut out).await?;
        self.switchovers(plan, seen, &mut out).await;
        self.fences(plan, seen, &mut out).await;
        self.drains(plan, seen, &mut out).await;
        if !plan.done.is_empty() {
            self.clear_done(plan).await?;
        }
        Ok(out)
    }

    /// Grows every claim of a group, then recreates its StatefulSet around the running pods
    /// (orphan deletion; the next apply creates it with the new claim template).
    async fn resize(&self, r: &Resize, out: &mut Outcome) -> Result<(), Error> {
        let client = &self.ctx.client;
        for claim in &r.claims {
            if let Err(why) = apply::resize_claim(client, self.namespace, claim, &r.size).await {
                out.problems.push(Problem::new(
                    Reason::VolumeExpansionRefused,
                    format!("group {}: claim {claim} cannot grow to {}: {why}; set storage.size back, or use a storage class with allowVolumeExpansion", r.group, r.size),
                ));
                return Ok(());
            }
        }
        apply::delete_object(client, self.namespace, "StatefulSet", &r.group, true).await?;
        out.transitions.push(Transition::new(
            Reason::VolumeExpanding,
            format!("group {}: asked for journal claims of {}; the StatefulSet is recreated with the new size, its pods keep running", r.group, r.size),
        ));
        Ok(())
    }

    async fn delete_pods(&self, plan: &Plan, out: &mut Outcome) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.namespace);
        for d in &plan.deletions {
            pods.delete(&d.pod, &DeleteParams::default())
                .await
                .map_err(Error::act(format!(
                    "delete pod {} for the rolling upgrade",
                    d.pod
                )))?;
            self.ctx.metrics.upgrade_pod_deletions.inc();
            let note = format!(
                "group {}: deleted {} (revision {}) so that it comes back at revision {}",
                d.group, d.pod, d.revision, d.update_revision
            );
            info!(brokergroup = %self.bg.name_any(), pod = %d.pod, "{note}");
            out.transitions
                .push(Transition::new(Reason::RollingUpgrade, note));
        }
        Ok(())
    }

    /// The admin endpoint of member `pod` of `group`.
    fn endpoint(&self, seen: &Observation, group: &str, pod: &str) -> Result<Endpoint, String> {
        let observed = seen.pods.get(pod);
        let ip = observed
            .and_then(|p| p.ip.as_deref())
            .ok_or_else(|| format!("{pod} has no pod IP"))?;
        let tls = observed.is_some_and(|p| p.tls);
        Ok(self.access.endpoint(group, pod, ip, tls))
    }

    async fn switchovers(&self, plan: &Plan, seen: &Observation, out: &mut Outcome) {
        for s in &plan.switchovers {
            let why = match s.reason {
                FailoverReason::Failback => "failback to the preferred live",
                FailoverReason::RollingUpgrade => "rolling upgrade",
                FailoverReason::Fence => "the live is to be fenced",
                _ => "switchover asked for",
            };
            let result = match self.endpoint(seen, &s.group, &s.from) {
                Err(e) => Err(e),
                Ok(at) => {
                    info!(brokergroup = %self.bg.name_any(), group = %s.group, from = %s.from, to = %s.to, why, "asking the live for a switchover");
                    self.ctx.brokers.switchover(&at, &s.to).await
                }
            };
            let reason = match s.reason {
                FailoverReason::Failback => "Failback",
                FailoverReason::RollingUpgrade => "RollingUpgrade",
                FailoverReason::Fence => "Fence",
                _ => "Switchover",
            };
            let labels = |result: &'static str| SwitchoverLabels { reason, result };
            match result {
                Ok(reply) => {
                    self.ctx.metrics.switchovers.get_or_create(&labels("done")).inc();
                    let note = format!(
                        "group {}: {} handed the live role to {} at epoch {} ({why})",
                        s.group, reply.from, reply.to, reply.epoch
                    );
                    info!(brokergroup = %self.bg.name_any(), reason, "{note}");
                    out.transitions.push(Transition::new(Reason::SwitchingOver, note));
                    out.switchovers.insert(
                        s.group.clone(),
                        PendingSwitchover {
                            to: s.to.clone(),
                            reason: s.reason,
                            time: now(),
                        },
                    );
                }
                Err(error) => {
                    self.ctx.metrics.switchovers.get_or_create(&labels("failed")).inc();
                    let note = format!(
                        "group {}: switchover from {} to {} ({why}) failed: {error}",
                        s.group, s.from, s.to
                    );
                    warn!(brokergroup = %self.bg.name_any(), "{note}");
                    // The problem is announced once, with the others (crate::status).
                    out.problems.push(Problem::new(Reason::SwitchoverFailed, note));
                }
            }
        }
    }

    async fn fences(&self, plan: &Plan, seen: &Observation, out: &mut Outcome) {
        for f in &plan.fences {
            let verb = if f.fenced { "fence" } else { "unfence" };
            let result = match self.endpoint(seen, &f.group, &f.pod) {
                Err(e) => Err(e),
                Ok(at) => self.ctx.brokers.fence(&at, f.fenced, f.force).await,
            };
            match result {
                Ok(reply) => {
                    let (reason, note) = if reply.fenced {
                        (Reason::Fenced, format!("group {}: fenced {}: it serves and replicates nothing and never takes the live role until unfenced", f.group, f.pod))
                    } else {
                        (Reason::Unfenced, format!("group {}: unfenced {}: it rejoins as a backup", f.group, f.pod))
                    };
                    info!(brokergroup = %self.bg.name_any(), pod = %f.pod, "{note}");
                    out.transitions.push(Transition::new(reason, note));
                    out.fences.insert(f.pod.clone(), reply.fenced);
                }
                Err(error) => {
                    let note = format!("group {}: could not {verb} {}: {error}", f.group, f.pod);
                    warn!(brokergroup = %self.bg.name_any(), "{note}");
                    out.problems.push(Problem::new(Reason::FenceFailed, note));
                }
            }
        }
    }

    async fn drains(&self, plan: &Plan, seen: &Observation, out: &mut Outcome) {
        for d in &plan.drains {
            let result = match self.endpoint(seen, &d.group, &d.live) {
                Err(e) => Err(e),
                Ok(at) => self.ctx.brokers.drain(&at, &d.targets).await,
            };
            match result {
                Ok(progress) => {
                    let note = format!(
                        "group {} is being removed: its live {} moves its {} messages to {}",
                        d.group,
                        d.live,
                        progress.messages_left,
                        d.targets.join(", ")
                    );
                    info!(brokergroup = %self.bg.name_any(), "{note}");
                    out.transitions.push(Transition::new(Reason::Draining, note));
                    out.drains.insert(d.group.clone(), progress);
                }
                Err(error) => {
                    let note = format!(
                        "group {} is being removed but its live {} did not start draining: {error}",
                        d.group, d.live
                    );
                    warn!(brokergroup = %self.bg.name_any(), "{note}");
                    out.problems.push(Problem::new(Reason::DrainStuck, note));
                }
            }
        }
    }

    /// Rewrites the annotation without the entries that are done.
    async fn clear_done(&self, plan: &Plan) -> Result<(), Error> {
        let api: Api<BrokerGroup> = Api::namespaced(self.ctx.client.clone(), self.namespace);
        let patch = serde_json::json!({"metadata": {"annotations": {
            names::SWITCHOVER_ANNOTATION: format_requests(&plan.requests_left),
        }}});
        api.patch(
            &self.bg.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::act(format!(
            "remove finished switchovers from {}",
            names::SWITCHOVER_ANNOTATION
        )))?;
        info!(brokergroup = %self.bg.name_any(), groups = %plan.done.join(","), "switchover done: annotation entry removed");
        Ok(())
    }
}
