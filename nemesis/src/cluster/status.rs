//! Polls every member's `/status` a few times a second, records each answer (or its
//! absence) in the history, and keeps the latest as the [`View`] the fault loop and the
//! drain decide by. A member whose process ended by itself is recorded as such here and
//! started again.

use super::Cluster;
use crate::history::{Event, MemberRole, Recorder, StatusRecord};
use duomq_broker::admin::api::{BrokerStatus, Role, SyncState};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each member is asked.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// What the last poll of a member said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub role: MemberRole,
    pub epoch: Option<u64>,
    /// Messages of the run's queues held (waiting or in flight) on this member.
    pub messages: u64,
}

/// The latest poll of every member; clones share it.
#[derive(Debug, Clone, Default)]
pub struct View {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl View {
    pub fn get(&self, member: &str) -> Option<Seen> {
        self.seen.lock().get(member).copied()
    }

    fn set(&self, member: &str, seen: Seen) {
        self.seen.lock().insert(member.to_string(), seen);
    }

    /// The member of `members` that answered live last, if exactly one did.
    pub fn live_of<'a>(&self, members: &[&'a str]) -> Option<&'a str> {
        let lives: Vec<&str> = members.iter().copied().filter(|m| self.get(m).is_some_and(|s| s.role == MemberRole::Live)).collect();
        (lives.len() == 1).then(|| lives[0])
    }

    /// One member live and every other one a synced backup.
    pub fn healthy(&self, members: &[&str]) -> bool {
        self.live_of(members).is_some()
            && members.iter().all(|m| self.get(m).is_some_and(|s| matches!(s.role, MemberRole::Live | MemberRole::SyncedBackup)))
    }

    /// Messages held on the members that answered live.
    pub fn messages_on_lives(&self) -> u64 {
        self.seen.lock().values().filter(|s| s.role == MemberRole::Live).map(|s| s.messages).sum()
    }
}

/// A member's role, epoch and messages held, from its `/status`.
pub fn seen_of(status: &BrokerStatus, queue_prefix: &str) -> Seen {
    let ha = status.ha.as_ref();
    let role = match status.role {
        Role::Live => MemberRole::Live,
        Role::Backup if ha.and_then(|h| h.sync.as_ref()).is_some_and(|s| s.state == SyncState::Synced) => MemberRole::SyncedBackup,
        Role::Backup => MemberRole::Backup,
        Role::Starting => MemberRole::Starting,
        Role::Stopping => MemberRole::Stopping,
        Role::Fenced => MemberRole::Fenced,
    };
    let messages = status.queues.iter().filter(|q| q.name.starts_with(queue_prefix)).map(|q| q.depth + q.in_flight).sum();
    Seen { role, epoch: ha.map(|h| h.epoch), messages }
}

/// Polls until `stop`; restarts a member whose process ended by itself.
pub async fn poll(cluster: Arc<Cluster>, view: View, recorder: Recorder, queue_prefix: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let polls = cluster.members.iter().map(|m| {
            let (cluster, view, recorder, prefix) = (&cluster, &view, &recorder, queue_prefix.as_str());
            async move {
                if let Some(how) = m.reap(recorder).await {
                    tracing::warn!(member = m.name(), exit = %how, "a member's process ended by itself; starting it again");
                    if let Err(e) = m.start(&cluster.logs, recorder).await {
                        tracing::warn!(member = m.name(), error = %duomq_broker::report::error_chain(&e), "failed to start it again");
                    }
                }
                let t = recorder.now();
                let seen = match m.status().await {
                    Some(status) => seen_of(&status, prefix),
                    None => Seen { role: MemberRole::Unreachable, epoch: view.get(m.name()).and_then(|s| s.epoch), messages: 0 },
                };
                view.set(m.name(), seen);
                recorder.record(Event::Status(StatusRecord {
                    t,
                    done_t: recorder.now(),
                    member: m.layout.name.clone(),
                    group: m.layout.group.clone(),
                    role: seen.role,
                    epoch: seen.epoch.filter(|_| seen.role != MemberRole::Unreachable),
                    messages: seen.messages,
                }));
            }
        });
        futures::future::join_all(polls).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duomq_broker::admin::api::{HaStatus, SyncStatus};

    fn with_ha(role: Role, sync: Option<SyncState>) -> BrokerStatus {
        let mut s = BrokerStatus::bare("g0-a", role);
        s.ha = Some(HaStatus {
            group: "g0".into(),
            epoch: 4,
            live: None,
            sync: sync.map(|state| SyncStatus { state, lag_bytes: 0, lag_records: 0 }),
            backups: Vec::new(),
            alone: false,
            database: None,
            refused_by: Vec::new(),
        });
        s
    }

    #[test]
    fn given_statuses_should_tell_a_synced_backup_from_one_still_catching_up() {
        assert_eq!(seen_of(&with_ha(Role::Live, None), "/queue/n").role, MemberRole::Live);
        assert_eq!(seen_of(&with_ha(Role::Backup, Some(SyncState::Synced)), "/queue/n").role, MemberRole::SyncedBackup);
        assert_eq!(seen_of(&with_ha(Role::Backup, Some(SyncState::Syncing)), "/queue/n").role, MemberRole::Backup);
        assert_eq!(seen_of(&with_ha(Role::Live, None), "/queue/n").epoch, Some(4));
    }

    #[test]
    fn given_a_view_should_call_a_group_healthy_only_with_one_live_and_a_synced_backup() {
        let view = View::default();
        let seen = |role| Seen { role, epoch: Some(1), messages: 0 };
        view.set("a", seen(MemberRole::Live));
        view.set("b", seen(MemberRole::Backup));
        assert!(!view.healthy(&["a", "b"]));
        view.set("b", seen(MemberRole::SyncedBackup));
        assert!(view.healthy(&["a", "b"]));
        assert_eq!(view.live_of(&["a", "b"]), Some("a"));
        view.set("b", seen(MemberRole::Live));
        assert!(!view.healthy(&["a", "b"]));
        assert_eq!(view.live_of(&["a", "b"]), None);
    }
}
