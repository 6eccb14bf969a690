//! Carrying out a [`Plan`]: deleting the pod a rolling upgrade updates next, asking lives
//! for switchovers on their admin endpoint, and removing annotation entries that are done.
//! It decides nothing: what to do comes from `crate::plan`; what happened goes into the
//! observation the status is computed from, and into Events.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, warn};

use super::metrics::SwitchoverLabels;
use super::{now, publish, Context, Error};
use crate::api::{BrokerGroup, FailoverReason, PendingSwitchover};
use crate::names;
use crate::plan::{format_requests, Plan};
use crate::status::Observation;

/// What the switchovers and deletions need beyond the plan.
pub struct Drive<'a> {
    pub ctx: &'a Context,
    pub bg: &'a BrokerGroup,
    pub namespace: &'a str,
    pub admin_port: u16,
    /// The cluster password admin writes are signed with, if the Secret has one.
    pub password: Option<&'a str>,
}

impl Drive<'_> {
    pub async fn carry_out(&self, plan: &Plan, seen: &mut Observation) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.namespace);
        for d in &plan.deletions {
            pods.delete(&d.pod, &DeleteParams::default())
                .await
                .map_err(Error::kube(format!(
                    "delete pod {} for the rolling upgrade",
                    d.pod
                )))?;
            self.ctx.metrics.upgrade_pod_deletions.inc();
            let note = format!(
                "group {}: deleted {} (revision {}) so that it comes back at revision {}",
                d.group, d.pod, d.revision, d.update_revision
            );
            info!(brokergroup = %self.bg.name_any(), pod = %d.pod, "{note}");
            publish(
                self.ctx,
                self.bg,
                EventType::Normal,
                "RollingUpgrade",
                &note,
            )
            .await;
        }
        for s in &plan.switchovers {
            let why = match s.reason {
                FailoverReason::Failback => "failback to the preferred live",
                FailoverReason::RollingUpgrade => "rolling upgrade",
                FailoverReason::Fence => "the live is to be fenced",
                _ => "switchover asked for",
            };
            let result = match (
                seen.pods.get(&s.from).and_then(|p| p.ip.as_deref()),
                self.password,
            ) {
                (None, _) => Err(format!("{} has no pod IP", s.from)),
                (_, None) => Err(
                    "the cluster credentials Secret has no password to sign the request with"
                        .into(),
                ),
                (Some(ip), Some(password)) => {
                    info!(brokergroup = %self.bg.name_any(), group = %s.group, from = %s.from, to = %s.to, why, "asking the live for a switchover");
                    self.ctx
                        .brokers
                        .switchover(ip, self.admin_port, &s.to, password)
                        .await
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
                    self.ctx
                        .metrics
                        .switchovers
                        .get_or_create(&labels("done"))
                        .inc();
                    let note = format!(
                        "group {}: {} handed the live role to {} at epoch {} ({why})",
                        s.group, reply.from, reply.to, reply.epoch
                    );
                    info!(brokergroup = %self.bg.name_any(), reason, "{note}");
                    publish(self.ctx, self.bg, EventType::Normal, "SwitchingOver", &note).await;
                    seen.switchovers.insert(
                        s.group.clone(),
                        PendingSwitchover {
                            to: s.to.clone(),
                            reason: s.reason,
                            time: now(),
                        },
                    );
                }
                Err(error) => {
                    self.ctx
                        .metrics
                        .switchovers
                        .get_or_create(&labels("failed"))
                        .inc();
                    let note = format!(
                        "group {}: switchover from {} to {} ({why}) failed: {error}",
                        s.group, s.from, s.to
                    );
                    warn!(brokergroup = %self.bg.name_any(), "{note}");
                    publish(
                        self.ctx,
                        self.bg,
                        EventType::Warning,
                        "SwitchoverFailed",
                        &note,
                    )
                    .await;
                    seen.problems.push(("SwitchoverFailed".into(), note));
                }
            }
        }
        for (reason, note) in &plan.problems {
            publish(self.ctx, self.bg, EventType::Warning, reason, note).await;
        }
        seen.problems.extend(plan.problems.iter().cloned());
        if !plan.done.is_empty() {
            self.clear_done(plan).await?;
        }
        Ok(())
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
        .map_err(Error::kube(format!(
            "remove finished switchovers from {}",
            names::SWITCHOVER_ANNOTATION
        )))?;
        info!(brokergroup = %self.bg.name_any(), groups = %plan.done.join(","), "switchover done: annotation entry removed");
        Ok(())
    }
}
