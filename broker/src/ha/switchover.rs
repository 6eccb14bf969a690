//! Planned switchover, asked for over the admin endpoint: the live hands its role to a
//! named in-sync backup with nothing lost. This module checks the request and starts the
//! hand-over on the live's current term; the replica task of the target does the rest
//! (`replica`): it waits until client traffic has stopped and the target has acknowledged
//! every record, hands the arbiter's claim to exactly that member and tells it to
//! activate. The live then rejoins as a backup (`runtime`). A broker-side failback
//! (`allowFailback` with a non-Kubernetes arbiter) takes the same path.
//!
//! It does not authenticate callers itself beyond checking the signature the admin
//! endpoint passes on; it never touches the Lease or the journal.

use super::{HaContext, LiveSlot};
use crate::admin::api::{Role, SwitchoverReply};
use crate::admin::auth::{self, AuthError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long the caller waits for the hand-over: the live's client drain (10 s) plus its
/// hand-over wait (30 s), with room to spare.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SwitchoverError {
    #[error("this member is {role}, not live: send the switchover to the group's live")]
    NotLive { role: String },
    #[error("{to} is this member, which is live already")]
    AlreadyLive { to: String },
    #[error("{to} is not an in-sync backup of this live (in sync: {in_sync}); wait until it reports synced")]
    NotInSync { to: String, in_sync: String },
    #[error("a hand-over to {to} is already under way")]
    Busy { to: String },
    #[error("the live lost its claim during the hand-over; the group fails over to an in-sync member")]
    Fenced,
    #[error("the hand-over to {to} did not complete within {timeout:?}; the group fails over to an in-sync member")]
    TimedOut { to: String, timeout: Duration },
}

impl SwitchoverError {
    /// Refused before anything changed (409), as opposed to failed half-way (500).
    pub fn refused(&self) -> bool {
        !matches!(self, SwitchoverError::Fenced | SwitchoverError::TimedOut { .. })
    }
}

/// Whether `me`, in `role`, may hand the live role to `to`, given its in-sync backups and
/// the hand-over already under way in this term, if any (asking again for the same target
/// joins it).
pub fn check_target(role: Role, me: &str, to: &str, in_sync: &[String], under_way: Option<&str>) -> Result<(), SwitchoverError> {
    if role != Role::Live {
        return Err(SwitchoverError::NotLive { role: format!("{role:?}").to_lowercase() });
    }
    if to == me {
        return Err(SwitchoverError::AlreadyLive { to: to.into() });
    }
    match under_way {
        Some(target) if target == to => return Ok(()),
        Some(target) => return Err(SwitchoverError::Busy { to: target.into() }),
        None => {}
    }
    if !in_sync.iter().any(|n| n == to) {
        let in_sync = if in_sync.is_empty() { "none".to_string() } else { in_sync.join(",") };
        return Err(SwitchoverError::NotInSync { to: to.into(), in_sync });
    }
    Ok(())
}

/// The admin endpoint's handle on a replicated member.
pub struct Switchover {
    ctx: Arc<HaContext>,
    live: LiveSlot,
}

impl Switchover {
    pub fn new(ctx: Arc<HaContext>, live: LiveSlot) -> Switchover {
        Switchover { ctx, live }
    }

    /// Checks an admin write's signature against the group's cluster password.
    pub fn authorize(&self, method: &str, path: &str, body: &[u8], signature: Option<&str>) -> Result<(), AuthError> {
        auth::verify(&self.ctx.password, method, path, body, signature, auth::unix_now())
    }

    /// Hands the live role to `to` and answers once it was told to take over.
    pub async fn request(&self, to: &str) -> Result<SwitchoverReply, SwitchoverError> {
        let role = *self.ctx.role.read();
        let term = self.live.read().as_ref().map(|(_, term)| Arc::clone(term));
        let Some(term) = term.filter(|_| role == Role::Live) else {
            let role = if role == Role::Live { Role::Stopping } else { role };
            return Err(SwitchoverError::NotLive { role: format!("{role:?}").to_lowercase() });
        };
        let under_way = term.handover_target();
        check_target(role, &self.ctx.node_id, to, &self.ctx.synced_backups(), under_way.as_deref())?;
        if !term.claim_handover(to) {
            return Err(SwitchoverError::Busy { to: term.handover_target().unwrap_or_default() });
        }
        if under_way.is_none() {
            tracing::warn!(to, group = %self.ctx.group, "switchover requested: stopping client traffic to hand the live role over");
        }
        term.step_down.cancel();
        tokio::select! {
            _ = term.handed_over.cancelled() => Ok(SwitchoverReply {
                from: self.ctx.node_id.clone(),
                to: to.into(),
                epoch: term.handover_epoch.load(Ordering::SeqCst),
            }),
            _ = term.fenced.cancelled() => Err(SwitchoverError::Fenced),
            _ = tokio::time::sleep(REPLY_TIMEOUT) => Err(SwitchoverError::TimedOut { to: to.into(), timeout: REPLY_TIMEOUT }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn synced(nodes: &[&str]) -> Vec<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[rstest]
    #[case::in_sync(Role::Live, "b", &["b", "c"], None, Ok(()))]
    #[case::joins_the_same(Role::Live, "b", &["b"], Some("b"), Ok(()))]
    #[case::backup(Role::Backup, "b", &["b"], None, Err("not live"))]
    #[case::fenced(Role::Fenced, "b", &["b"], None, Err("fenced, not live"))]
    #[case::itself(Role::Live, "a", &["b"], None, Err("live already"))]
    #[case::not_synced(Role::Live, "c", &["b"], None, Err("c is not an in-sync backup of this live (in sync: b)"))]
    #[case::nobody_synced(Role::Live, "c", &[], None, Err("(in sync: none)"))]
    #[case::another_under_way(Role::Live, "c", &["b", "c"], Some("b"), Err("a hand-over to b is already under way"))]
    fn given_a_target_should_hand_over_only_to_an_in_sync_backup(
        #[case] role: Role,
        #[case] to: &str,
        #[case] in_sync: &[&str],
        #[case] under_way: Option<&str>,
        #[case] expected: Result<(), &str>,
    ) {
        let got = check_target(role, "a", to, &synced(in_sync), under_way);
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(part)) => {
                assert!(e.to_string().contains(part), "{e}");
                assert!(e.refused(), "a refusal changes nothing: {e:?}");
            }
            (got, want) => panic!("expected {want:?}, got {got:?}"),
        }
    }
}
