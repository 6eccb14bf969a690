//! The probes of a pod worker: when each is due (initialDelaySeconds, periodSeconds), what
//! its outcome does (startup gates the others, liveness restarts the container after
//! failureThreshold, readiness sets the Ready flag after successThreshold or
//! failureThreshold). Running one is `kubelet::probe`'s job.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{record_in, secs, PodWorker, DEFAULT_GRACE_SECONDS};
use crate::cluster::docker;
use crate::cluster::error_chain;
use crate::cluster::kubelet::{container_name, probe};

#[derive(Debug, Clone, Copy)]
pub(super) enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Debug, Default)]
pub(super) struct ProbeState {
    pub(super) started: bool,
    pub(super) ready: bool,
    pub(super) startup_failures: i32,
    pub(super) liveness_failures: i32,
    pub(super) readiness_successes: i32,
    pub(super) readiness_failures: i32,
    pub(super) next_startup: Option<Instant>,
    pub(super) next_liveness: Option<Instant>,
    pub(super) next_readiness: Option<Instant>,
}

impl ProbeState {
    fn next(&self, kind: ProbeKind) -> Option<Instant> {
        match kind {
            ProbeKind::Startup => self.next_startup,
            ProbeKind::Liveness => self.next_liveness,
            ProbeKind::Readiness => self.next_readiness,
        }
    }

    fn set_next(&mut self, kind: ProbeKind, at: Instant) {
        let slot = match kind {
            ProbeKind::Startup => &mut self.next_startup,
            ProbeKind::Liveness => &mut self.next_liveness,
            ProbeKind::Readiness => &mut self.next_readiness,
        };
        *slot = Some(at);
    }
}

impl PodWorker {
    /// Runs the container's probes that are due; a failed startup or liveness probe
    /// restarts the container. Returns when the next probe is due.
    pub(super) async fn probe(&mut self, pod: &Pod, c: &Container) -> Option<Instant> {
        let started_at = {
            let r = record_in(&mut self.records, &c.name);
            r.state.running.as_ref()?.started_at.clone()
        };
        let now = Instant::now();
        // When the container started, on the Instant clock.
        let age = started_at
            .map(|t| {
                k8s_openapi::jiff::Timestamp::now()
                    .duration_since(t.0)
                    .unsigned_abs()
            })
            .unwrap_or_default();
        let started_at = now.checked_sub(age).unwrap_or(now);
        let mut next: Option<Instant> = None;

        if c.startup_probe.is_none() {
            record_in(&mut self.records, &c.name).probes.started = true;
        }
        if let (false, Some(p)) = (
            record_in(&mut self.records, &c.name).probes.started,
            &c.startup_probe,
        ) {
            let (outcome, due) = self
                .due_probe(ProbeKind::Startup, p, c, started_at, now)
                .await;
            let r = record_in(&mut self.records, &c.name);
            match outcome {
                Some(Ok(())) => r.probes.started = true,
                Some(Err(why)) => {
                    r.probes.startup_failures += 1;
                    if r.probes.startup_failures >= p.failure_threshold.unwrap_or(3) {
                        info!(pod = %self.name, container = %c.name, %why, "startup probe failed; restarting container");
                        self.kill_for_probe(pod, c).await;
                        return Some(Instant::now());
                    }
                }
                None => {}
            }
            if !record_in(&mut self.records, &c.name).probes.started {
                return Some(due);
            }
        }

        if let Some(p) = &c.liveness_probe {
            let (outcome, due) = self
                .due_probe(ProbeKind::Liveness, p, c, started_at, now)
                .await;
            next = Some(due);
            let r = record_in(&mut self.records, &c.name);
            match outcome {
                Some(Ok(())) => r.probes.liveness_failures = 0,
                Some(Err(why)) => {
                    r.probes.liveness_failures += 1;
                    if r.probes.liveness_failures >= p.failure_threshold.unwrap_or(3) {
                        info!(pod = %self.name, container = %c.name, %why, "liveness probe failed; restarting container");
                        self.kill_for_probe(pod, c).await;
                        return Some(Instant::now());
                    }
                }
                None => {}
            }
        }

        let Some(p) = &c.readiness_probe else {
            record_in(&mut self.records, &c.name).probes.ready = true;
            return next;
        };
        let (outcome, due) = self
            .due_probe(ProbeKind::Readiness, p, c, started_at, now)
            .await;
        let r = record_in(&mut self.records, &c.name);
        match outcome {
            Some(Ok(())) => {
                r.probes.readiness_failures = 0;
                r.probes.readiness_successes += 1;
                if r.probes.readiness_successes >= p.success_threshold.unwrap_or(1) {
                    r.probes.ready = true;
                }
            }
            Some(Err(why)) => {
                r.probes.readiness_successes = 0;
                r.probes.readiness_failures += 1;
                // Not ready until the first success; once ready, only after the threshold.
                if !r.probes.ready
                    || r.probes.readiness_failures >= p.failure_threshold.unwrap_or(3)
                {
                    if r.probes.ready {
                        debug!(pod = %self.name, container = %c.name, %why, "readiness probe failed");
                    }
                    r.probes.ready = false;
                }
            }
            None => {}
        }
        Some(next.map_or(due, |n| n.min(due)))
    }

    /// Runs probe `kind` if it is due (its first run after initialDelaySeconds, then every
    /// periodSeconds); returns its outcome if it ran, and when it is due next.
    async fn due_probe(
        &mut self,
        kind: ProbeKind,
        p: &Probe,
        c: &Container,
        started_at: Instant,
        now: Instant,
    ) -> (Option<Result<(), String>>, Instant) {
        let probes = &mut record_in(&mut self.records, &c.name).probes;
        let at = probes
            .next(kind)
            .unwrap_or(started_at + secs(p.initial_delay_seconds, 0));
        if now < at {
            return (None, at);
        }
        let cname = container_name(
            self.cluster(),
            &self.namespace,
            &self.name,
            &self.uid,
            &c.name,
        );
        let target =
            probe::resolve_target(p, c, self.pod_ip.as_deref()).map_err(|e| error_chain(&e));
        let outcome = match target {
            Ok(target) => {
                probe::run(&target, self.docker(), &cname, secs(p.timeout_seconds, 1)).await
            }
            Err(e) => Err(e),
        };
        let due = now + secs(p.period_seconds, 10);
        record_in(&mut self.records, &c.name)
            .probes
            .set_next(kind, due);
        (Some(outcome), due)
    }

    /// Stops a container whose probe failed, with the pod's grace period; the next sync
    /// restarts it under the restart policy.
    async fn kill_for_probe(&mut self, pod: &Pod, c: &Container) {
        let cname = &container_name(
            self.cluster(),
            &self.namespace,
            &self.name,
            &self.uid,
            &c.name,
        );
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        if let Err(error) = docker::stop(
            self.docker(),
            cname,
            Duration::from_secs(grace.max(0) as u64),
        )
        .await
        {
            warn!(container = %cname, error = %error_chain(&error), "failed to stop container");
        }
    }
}
