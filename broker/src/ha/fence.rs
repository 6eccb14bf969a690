//! Fencing by an admin request (`POST /ha/fence`, CloudNativePG's fencing): a switch the
//! admin endpoint flips and the node loops obey. A fenced member stops replicating (or
//! polling the journal lock, or the database lease), never becomes live, answers clients
//! "not live" and reports `fenced`; its data stays. Unfenced, it rejoins its group as a
//! backup. A fenced live (only with `force`) stops serving as after a crash, confirms no
//! more writes and gives its claim up, so a backup takes over.
//!
//! Held in memory only: a restarted member is unfenced until the operator asks again.

use crate::admin::api::Role;
use crate::config::HaPolicy;
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FenceError {
    #[error("this broker is standalone (ha.policy: none): it has no group to fence it from")]
    Standalone,
    #[error("this member is live: switch the live role over to an in-sync backup first, or fence with force (the group then fails over as after a crash)")]
    Live,
}

/// The admin fence of this process: off at start.
pub struct AdminFence {
    fenced: watch::Sender<bool>,
}

impl Default for AdminFence {
    fn default() -> Self {
        AdminFence { fenced: watch::channel(false).0 }
    }
}

impl AdminFence {
    pub fn is_fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Fences or unfences; whether anything changed.
    pub fn set(&self, fenced: bool) -> bool {
        self.fenced.send_if_modified(|now| std::mem::replace(now, fenced) != fenced)
    }

    /// Resolves once the member is fenced (at once if it is).
    pub async fn fenced(&self) {
        self.wait_for(true).await
    }

    /// Resolves once the member is unfenced (at once if it is not fenced).
    pub async fn unfenced(&self) {
        self.wait_for(false).await
    }

    async fn wait_for(&self, value: bool) {
        let mut rx = self.fenced.subscribe();
        // The sender lives as long as `self`, so this only ends with the value.
        let _ = rx.wait_for(|v| *v == value).await;
    }
}

/// Whether a fence request may be carried out on a member of `policy` now in `role`.
/// Unfencing is always allowed; a live is fenced only with `force`.
pub fn check(policy: HaPolicy, role: Role, fenced: bool, force: bool) -> Result<(), FenceError> {
    if !fenced {
        return Ok(());
    }
    if policy == HaPolicy::None {
        return Err(FenceError::Standalone);
    }
    if role == Role::Live && !force {
        return Err(FenceError::Live);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::backup(HaPolicy::Replication, Role::Backup, true, false, Ok(()))]
    #[case::shared_store_backup(HaPolicy::SharedStore, Role::Backup, true, false, Ok(()))]
    #[case::lease_fenced(HaPolicy::Replication, Role::Fenced, true, false, Ok(()))]
    #[case::starting(HaPolicy::Replication, Role::Starting, true, false, Ok(()))]
    #[case::live(HaPolicy::Replication, Role::Live, true, false, Err(FenceError::Live))]
    #[case::live_forced(HaPolicy::SharedStore, Role::Live, true, true, Ok(()))]
    #[case::standalone(HaPolicy::None, Role::Live, true, true, Err(FenceError::Standalone))]
    #[case::unfence_live(HaPolicy::Replication, Role::Live, false, false, Ok(()))]
    fn given_a_role_should_fence_a_live_only_with_force(
        #[case] policy: HaPolicy,
        #[case] role: Role,
        #[case] fenced: bool,
        #[case] force: bool,
        #[case] expected: Result<(), FenceError>,
    ) {
        assert_eq!(check(policy, role, fenced, force), expected);
    }

    #[tokio::test]
    async fn given_a_fence_should_wake_waiters_and_report_changes_once() {
        let fence = std::sync::Arc::new(AdminFence::default());
        fence.unfenced().await;
        let waiter = tokio::spawn({
            let fence = std::sync::Arc::clone(&fence);
            async move { fence.fenced().await }
        });
        assert!(fence.set(true));
        assert!(!fence.set(true), "idempotent");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
        assert!(fence.is_fenced());
        assert!(fence.set(false));
        fence.unfenced().await;
    }
}
