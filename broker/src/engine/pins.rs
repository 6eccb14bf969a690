//! Bridge pins: which remote group may hold a message this group forwarded and has not
//! seen confirmed. A bridge journals the pin ("message M to group G", a record of the
//! broker's own) and waits until it is durable, replicated to the backups too, before the
//! `Forward` leaves; the confirmation's ack removes it in the same record as the message's.
//!
//! After a failover (or a restart) of this group, recovery sets each pinned message aside
//! in its queue (see [`super::queue::Queue::pin`]): no local consumer and no bridge to
//! another group gets it, only a bridge to G claims it and sends it again, and G's
//! duplicate detection stores it once. What no bridge to G claimed within
//! [`RELEASE_AFTER`](crate::network::forwarder::RELEASE_AFTER) goes back to its queue, as a
//! bridge's own unconfirmed forwards do (see [`Broker::release_pins`]).

use super::queue::Queue;
use super::Broker;
use crate::engine::accept::Commit;
use crate::journal::{AppendFuture, MessageId, Op, StoredMessage};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// The reserved destination of pin records.
pub const PINS: &str = "/queue/$duomq.bridge-pins";
/// Record header names of a pin.
const MESSAGE: &str = "message";
const GROUP: &str = "group";

/// A recovered pin: `message` of `queue` may be at the remote group it is filed under.
#[derive(Debug, Clone)]
pub struct Pin {
    pub queue: Arc<Queue>,
    pub message: MessageId,
    /// The pin's own record, removed with the message's ack.
    pub record: MessageId,
}

/// Recovered pins no bridge has claimed yet, by remote group.
#[derive(Debug, Default)]
pub(super) struct Registry {
    by_group: parking_lot::Mutex<HashMap<Arc<str>, Vec<Pin>>>,
    /// Records of pins that no longer matter (their message is gone, or a newer pin
    /// replaced them), removed once this broker is live.
    stale: parking_lot::Mutex<Vec<MessageId>>,
}

/// Recovered pins by message: (group, record).
pub(super) type Pinned = HashMap<MessageId, (Arc<str>, MessageId)>;

/// The pins `records` (pin records recovery found) hold. Where a message has several (a
/// release whose removal a crash lost, then a new pin), the newest counts and the others
/// are returned to be removed.
fn read(records: Vec<StoredMessage>) -> (Pinned, Vec<MessageId>) {
    let mut pins = Pinned::new();
    let mut stale = Vec::new();
    for record in records {
        let get = |name: &str| record.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let (Some(message), Some(group)) = (get(MESSAGE).and_then(|m| m.parse::<u64>().ok()), get(GROUP)) else {
            tracing::warn!(id = record.id.0, "ignoring a bridge pin record without message and group");
            stale.push(record.id);
            continue;
        };
        let group: Arc<str> = Arc::from(group);
        match pins.get(&MessageId(message)) {
            Some((_, newer)) if *newer > record.id => stale.push(record.id),
            Some((_, older)) => {
                stale.push(*older);
                pins.insert(MessageId(message), (group, record.id));
            }
            None => {
                pins.insert(MessageId(message), (group, record.id));
            }
        }
    }
    (pins, stale)
}

impl Broker {
    /// Reads the pin records recovery found; see [`Broker::pin_recovered`].
    pub(super) fn read_pins(&self, records: Vec<StoredMessage>) -> Pinned {
        let (pinned, stale) = read(records);
        self.pins.stale.lock().extend(stale);
        pinned
    }

    /// Pins recovered message `id` of `queue` if a record says so (before it is enqueued
    /// or paged), and files the pin for a bridge to claim.
    pub(super) fn pin_recovered(&self, queue: &Arc<Queue>, id: MessageId, pinned: &mut Pinned) {
        if let Some((group, record)) = pinned.remove(&id) {
            queue.pin(id, Arc::clone(&group));
            self.pins.by_group.lock().entry(group).or_default().push(Pin { queue: Arc::clone(queue), message: id, record });
        }
    }

    /// Pins left over once every message was recovered: their messages are gone.
    pub(super) fn unmatched_pins(&self, pinned: Pinned) {
        let count = self.pins.by_group.lock().values().map(Vec::len).sum::<usize>();
        if count > 0 {
            tracing::info!(messages = count, "recovered messages a bridge forwarded before a failover without a confirmation: each goes again to the group it went to");
        }
        self.pins.stale.lock().extend(pinned.into_values().map(|(_, record)| record));
    }

    /// Removes the records of pins recovery found stale (once live).
    pub fn forget_stale_pins(&self) {
        let stale = std::mem::take(&mut *self.pins.stale.lock());
        self.forget_records(&stale);
    }

    /// Journals pins of `messages` to the remote group `group` as one record; returns
    /// their record ids (in order) and the append, which resolves once they are durable
    /// (and held by the synced backups).
    pub fn pin(&self, group: &str, messages: &[MessageId]) -> (Vec<MessageId>, AppendFuture) {
        let mut records = Vec::with_capacity(messages.len());
        let ops = messages
            .iter()
            .map(|m| {
                let id = self.next_message_id();
                records.push(id);
                let headers = vec![(MESSAGE.to_string(), m.0.to_string()), (GROUP.to_string(), group.to_string())];
                Op::Add(StoredMessage { id, destination: PINS.to_string(), headers, body: Bytes::new() })
            })
            .collect();
        (records, self.store.append(ops, Commit::Grouped))
    }

    /// Takes the recovered pins to `group` no bridge has claimed yet (each once).
    pub fn take_pins(&self, group: &str) -> Vec<Pin> {
        self.pins.by_group.lock().remove(group).unwrap_or_default()
    }

    /// Ends every recovered pin no bridge claimed: their messages go back to their queues
    /// and the records are removed. Returns how many.
    pub fn release_pins(&self) -> usize {
        let all: Vec<(Arc<str>, Vec<Pin>)> = self.pins.by_group.lock().drain().collect();
        let mut released = 0;
        for (group, pins) in all {
            tracing::warn!(
                %group,
                messages = pins.len(),
                "no bridge to this group was linked in time: messages forwarded to it before a failover and not confirmed go back to their queues and may be delivered twice if it stored them"
            );
            released += pins.len();
            end_pins(self, &pins);
        }
        released
    }
}

/// Unpins `pins`' messages in their queues and removes the records.
pub fn end_pins(broker: &Broker, pins: &[Pin]) {
    let mut by_queue: HashMap<*const Queue, (&Arc<Queue>, Vec<MessageId>)> = HashMap::new();
    for pin in pins {
        by_queue.entry(Arc::as_ptr(&pin.queue)).or_insert_with(|| (&pin.queue, Vec::new())).1.push(pin.message);
    }
    for (queue, ids) in by_queue.into_values() {
        queue.unpin(&ids);
    }
    broker.forget_records(&pins.iter().map(|p| p.record).collect::<Vec<_>>());
}
