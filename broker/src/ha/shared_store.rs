//! Shared-store master/slave (ActiveMQ's shared file system master/slave): the members of
//! a group point `storage.dataDir` at one shared volume, and whoever holds the journal's
//! directory lock is live. The others wait as backups, answer clients with an ERROR, and
//! try the lock again every `ha.arbiter.retryInterval`. A dead live's lock is dropped by
//! the kernel (or the file server), so the next try succeeds: that member recovers the
//! journal and goes live.
//!
//! This module decides, from what the runtime found, and keeps the small live-holder file
//! that tells backups who is live. It never takes the lock itself: the lock is taken only
//! by opening the journal, so the member holding it is always the one that recovers it.

use crate::report::error_chain;
use crate::admin::StoreCheck;
use crate::config::{Member, PreferredRole};
use crate::engine::EngineError;
use crate::journal::JournalError;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the live-holder file in `dataDir/ha/`, next to the epoch.
pub const LIVE_FILE_NAME: &str = "live";

/// Who holds the lock, as the live wrote it before serving clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHolder {
    pub node: String,
    /// The live's `stomp.listen`, which may be a wildcard address.
    pub stomp: String,
}

impl LiveHolder {
    pub fn path(ha_dir: &Path) -> PathBuf {
        ha_dir.join(LIVE_FILE_NAME)
    }

    fn encode(&self) -> String {
        format!("node={}\nstomp={}\n", self.node, self.stomp)
    }

    fn decode(text: &str) -> Option<LiveHolder> {
        let field = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(|v| v.trim().to_string())
        };
        let node = field("node").filter(|n| !n.is_empty())?;
        Some(LiveHolder { node, stomp: field("stomp").unwrap_or_default() })
    }

    /// The holder named in the file; `None` when there is no file or it is unreadable
    /// (a backup then shows the live as unknown; it never decides anything from it).
    pub fn read(ha_dir: &Path) -> io::Result<Option<LiveHolder>> {
        match std::fs::read_to_string(Self::path(ha_dir)) {
            Ok(text) => Ok(LiveHolder::decode(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Written by the lock holder only, so members never race on it.
    pub fn write(&self, ha_dir: &Path) -> io::Result<()> {
        super::epoch::write_durably(&Self::path(ha_dir), self.encode().as_bytes())
    }

    /// The address clients should be sent to: the member list's entry for the holder (the
    /// address clients can reach), else the holder's own listen address unless it is a
    /// wildcard, which names no host.
    pub fn client_address(&self, members: &[Member]) -> Option<String> {
        if let Some(m) = members.iter().find(|m| m.name == self.node && !m.stomp.is_empty()) {
            return Some(m.stomp.clone());
        }
        match self.stomp.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => None,
            Ok(_) => Some(self.stomp.clone()),
            Err(_) => (!self.stomp.is_empty()).then(|| self.stomp.clone()),
        }
    }
}

/// Why an attempt to open the shared journal did not make this member live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// Another member holds the lock: it is live.
    LockHeld,
    /// The data directory or its lock file could not be used; perhaps a storage blip.
    StoreUnreachable { reason: String },
    /// This member had the lock but the journal cannot be recovered; retrying will not help.
    Broken,
}

/// Sorts a failed open by what it means for a waiting member.
pub fn classify(err: &EngineError) -> OpenFailure {
    match err {
        EngineError::OpenJournal(JournalError::Lock { source, .. })
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) =>
        {
            OpenFailure::LockHeld
        }
        EngineError::CreateDataDir { .. }
        | EngineError::NodeId { .. }
        | EngineError::OpenJournal(JournalError::Lock { .. } | JournalError::CreateDir { .. } | JournalError::ListDir { .. }) => {
            OpenFailure::StoreUnreachable { reason: error_chain(err) }
        }
        EngineError::OpenJournal(_) => OpenFailure::Broken,
    }
}

/// What a member does after an attempt that did not make it live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Be a backup: report `store` to `/readyz` and try again after `retry_in`.
    Backup { store: StoreCheck, retry_in: Duration },
    /// Stop with the error the attempt returned.
    Fail,
}

/// The decisions of one shared-store member; the runtime does the I/O.
#[derive(Debug)]
pub struct SharedStoreMember {
    node_id: String,
    preferred: PreferredRole,
    retry: Duration,
    /// Whether another member held the lock since this process started.
    seen_other_live: bool,
}

impl SharedStoreMember {
    pub fn new(node_id: String, preferred: PreferredRole, retry: Duration) -> SharedStoreMember {
        SharedStoreMember { node_id, preferred, retry, seen_other_live: false }
    }

    /// A preferred backup lets a primary that starts at the same time take the lock first.
    pub fn first_try_in(&self) -> Duration {
        match self.preferred {
            PreferredRole::Primary => Duration::ZERO,
            PreferredRole::Backup => self.retry,
        }
    }

    /// Whether messages recovered by the next open may have been delivered already: true
    /// when another member was live (its consumers may have had them), as in a
    /// replication takeover; false when this member was the last live itself.
    pub fn possibly_delivered(&self, last_holder: Option<&LiveHolder>) -> bool {
        self.seen_other_live || last_holder.is_some_and(|h| h.node != self.node_id)
    }

    pub fn not_opened(&mut self, failure: &OpenFailure) -> Decision {
        match failure {
            OpenFailure::LockHeld => {
                self.seen_other_live = true;
                Decision::Backup { store: StoreCheck::Reachable, retry_in: self.retry }
            }
            OpenFailure::StoreUnreachable { reason } => {
                Decision::Backup { store: StoreCheck::Unreachable { reason: reason.clone() }, retry_in: self.retry }
            }
            OpenFailure::Broken => Decision::Fail,
        }
    }

    /// The live to show on `/status`: the file's holder, unless the file still names this
    /// member (it was live before a restart and the new live has not written it yet).
    pub fn shown_live<'a>(&self, holder: Option<&'a LiveHolder>) -> Option<&'a LiveHolder> {
        holder.filter(|h| h.node != self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::sync::Arc;

    const RETRY: Duration = Duration::from_millis(300);

    fn holder(node: &str, stomp: &str) -> LiveHolder {
        LiveHolder { node: node.into(), stomp: stomp.into() }
    }

    fn lock_error(errno: i32) -> EngineError {
        EngineError::OpenJournal(JournalError::Lock {
            path: "journal.lock".into(),
            source: Arc::new(io::Error::from_raw_os_error(errno)),
        })
    }

    #[rstest]
    #[case(PreferredRole::Primary, Duration::ZERO)]
    #[case(PreferredRole::Backup, RETRY)]
    fn given_preferred_role_should_let_a_primary_try_first(#[case] role: PreferredRole, #[case] wait: Duration) {
        assert_eq!(SharedStoreMember::new("a".into(), role, RETRY).first_try_in(), wait);
    }

    #[test]
    fn given_lock_held_should_wait_as_reachable_backup_and_then_count_as_takeover() {
        let mut member = SharedStoreMember::new("b".into(), PreferredRole::Backup, RETRY);
        assert!(!member.possibly_delivered(None));
        let failure = classify(&lock_error(libc::EWOULDBLOCK));
        assert_eq!(failure, OpenFailure::LockHeld);
        assert_eq!(member.not_opened(&failure), Decision::Backup { store: StoreCheck::Reachable, retry_in: RETRY });
        assert!(member.possibly_delivered(None), "another live held the lock: it may have delivered");
    }

    #[rstest]
    #[case(None, false)]
    #[case(Some(holder("a", "x:1")), false)]
    #[case(Some(holder("b", "x:1")), true)]
    fn given_last_holder_at_start_should_mark_redelivered_only_after_another_live(
        #[case] last: Option<LiveHolder>,
        #[case] possibly_delivered: bool,
    ) {
        let member = SharedStoreMember::new("a".into(), PreferredRole::Primary, RETRY);
        assert_eq!(member.possibly_delivered(last.as_ref()), possibly_delivered);
    }

    #[test]
    fn given_unreachable_store_should_stay_backup_and_not_ready_and_broken_journal_should_fail() {
        let mut member = SharedStoreMember::new("b".into(), PreferredRole::Backup, RETRY);
        let failure = classify(&lock_error(libc::ESTALE));
        let OpenFailure::StoreUnreachable { reason } = &failure else { panic!("{failure:?}") };
        assert!(reason.contains("journal.lock"), "{reason}");
        assert!(matches!(member.not_opened(&failure), Decision::Backup { store: StoreCheck::Unreachable { .. }, .. }));
        assert!(!member.possibly_delivered(None), "no live was seen");
        let broken = classify(&EngineError::OpenJournal(JournalError::SpawnWriter { source: Arc::new(io::Error::other("x")) }));
        assert_eq!(member.not_opened(&broken), Decision::Fail);
    }

    #[test]
    fn given_live_file_should_round_trip_and_tolerate_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LiveHolder::read(dir.path()).unwrap(), None);
        holder("node-a", "0.0.0.0:61613").write(dir.path()).unwrap();
        assert_eq!(LiveHolder::read(dir.path()).unwrap(), Some(holder("node-a", "0.0.0.0:61613")));
        std::fs::write(LiveHolder::path(dir.path()), "garbage").unwrap();
        assert_eq!(LiveHolder::read(dir.path()).unwrap(), None);
    }

    #[rstest]
    #[case(holder("a", "10.0.0.5:61613"), vec![], Some("10.0.0.5:61613"))]
    #[case(holder("a", "0.0.0.0:61613"), vec![], None)]
    #[case(holder("a", "0.0.0.0:61613"), vec![("a", "a.pair.ns.svc:61613")], Some("a.pair.ns.svc:61613"))]
    #[case(holder("a", "10.0.0.5:61613"), vec![("b", "b:61613")], Some("10.0.0.5:61613"))]
    fn given_holder_and_members_should_name_a_reachable_address(
        #[case] holder: LiveHolder,
        #[case] members: Vec<(&str, &str)>,
        #[case] expected: Option<&str>,
    ) {
        let members: Vec<Member> =
            members.into_iter().map(|(n, s)| Member { name: n.into(), cluster: String::new(), stomp: s.into(), amqp: String::new() }).collect();
        assert_eq!(holder.client_address(&members).as_deref(), expected);
    }

    #[test]
    fn given_file_naming_this_member_should_show_no_live() {
        let member = SharedStoreMember::new("a".into(), PreferredRole::Backup, RETRY);
        assert_eq!(member.shown_live(Some(&holder("a", "x:1"))), None);
        assert!(member.shown_live(Some(&holder("b", "x:1"))).is_some());
    }
}
