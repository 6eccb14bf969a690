//! A live's drain (`POST /ha/drain`): its group is being removed, so it takes no more
//! clients and hands every queued message to the groups that stay (the targets) over its
//! network bridges. This is the switch the admin endpoint throws and the parts that obey
//! it read: client connections (refuse and close), the bridges (no demand advertised, no
//! forward taken in, every queue forwarded to a target), and the queues' bridge consumers
//! (messages of bound message groups may leave too).
//!
//! Held by the broker of one live term: a member that becomes live later starts undrained
//! and is asked again (by the operator).

use super::message::{GroupOwner, Message};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The message of the ERROR a draining live sends its clients. It starts with `not live`,
/// which failover clients take as "move to another member" (see `client::failover`).
pub fn refusal(group: &str) -> String {
    format!("not live: group {group} is draining and being removed; connect to another group")
}

#[derive(Default)]
pub struct Drain {
    /// Set once a drain begins: what bridge consumers read for every message they look at.
    draining: AtomicBool,
    /// The groups messages go to, sorted; `None` until a drain begins.
    targets: RwLock<Option<Arc<[String]>>>,
    /// Cancelled when the drain begins: open client connections close.
    started: CancellationToken,
    /// Forwards to a target confirmed (stored there) since the drain began.
    forwarded: AtomicU64,
}

impl Drain {
    /// Begins the drain towards `targets`, or changes them; whether it began just now.
    pub fn begin(&self, mut targets: Vec<String>) -> bool {
        targets.sort();
        targets.dedup();
        let began = self.targets.write().replace(targets.into()).is_none();
        self.draining.store(true, Ordering::Release);
        self.started.cancel();
        began
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn targets(&self) -> Option<Arc<[String]>> {
        self.targets.read().clone()
    }

    /// Whether the drain sends messages to `group`.
    pub fn is_target(&self, group: &str) -> bool {
        self.targets.read().as_ref().is_some_and(|t| t.binary_search_by(|g| g.as_str().cmp(group)).is_ok())
    }

    /// Resolves once the drain has begun.
    pub fn started(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.started.cancelled()
    }

    /// A target stored one more forwarded message.
    pub fn count_forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Whether a bridge to `peer` may carry `message` while draining: only to a target;
    /// a message of a group the grouping handler gave to a target group goes only there,
    /// any other (ungrouped, or a group bound here or to a group that is no target) to any
    /// target. The queue keeps a group on the one bridge consumer that took it first, so
    /// its order holds while that link stays up.
    pub fn carries(&self, message: &Message, peer: &str) -> bool {
        if !self.is_target(peer) {
            return false;
        }
        match message.group.as_ref().map(|g| g.owner()) {
            Some(GroupOwner::Elsewhere(owner)) if self.is_target(owner) => **owner == *peer,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::message::MessageGroup;
    use crate::journal::MessageId;

    fn message(group: Option<(&str, GroupOwner)>) -> Message {
        Message {
            id: MessageId(1),
            destination: Arc::from("/queue/q"),
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            persistent: true,
            group: group.map(|(id, owner)| MessageGroup::new(Arc::from(id), false, owner)),
            properties: Default::default(),
        }
    }

    #[test]
    fn given_targets_should_carry_only_to_them_and_a_target_owned_group_only_to_its_owner() {
        let drain = Drain::default();
        assert!(!drain.is_draining());
        assert!(drain.begin(vec!["gb".into(), "ga".into(), "ga".into()]));
        assert!(!drain.begin(vec!["ga".into(), "gb".into()]), "asking again does not begin again");
        assert_eq!(drain.targets().as_deref(), Some(&["ga".to_string(), "gb".to_string()][..]));
        let plain = message(None);
        assert!(drain.carries(&plain, "ga") && drain.carries(&plain, "gb"));
        assert!(!drain.carries(&plain, "gc"), "not a target");
        let owned_by_b = message(Some(("g1", GroupOwner::Elsewhere(Arc::from("gb")))));
        assert!(!drain.carries(&owned_by_b, "ga") && drain.carries(&owned_by_b, "gb"));
        let owned_by_c = message(Some(("g2", GroupOwner::Elsewhere(Arc::from("gc")))));
        assert!(drain.carries(&owned_by_c, "ga"), "its owner is no target: any target");
        let here = message(Some(("g3", GroupOwner::Here)));
        assert!(drain.carries(&here, "gb"));
    }
}
