//! Durable topic subscriptions on a connection (see [`crate::engine::durable`]): SUBSCRIBE
//! to a `/topic/…` naming one attaches to it (creating it first), UNSUBSCRIBE naming one
//! removes it. A plain UNSUBSCRIBE by id, or the connection's end, only detaches the
//! consumer: the subscription goes on keeping the topic's messages.

use super::{Connection, Effect, FrameError, Pending};
use crate::engine::durable::{self, DurableError, DurableSubscription};
use crate::engine::message::ConsumerKey;
use crate::engine::Topic;
use crate::journal::AppendFuture;
use crate::report::error_chain;
use crate::security::Permission;
use crate::selector::Selector;
use crate::stomp::Frame;
use std::sync::Arc;

/// What a durable SUBSCRIBE attached to, and the write of its definition when it is new.
type Attached = (Arc<DurableSubscription>, Option<AppendFuture>);

/// The SUBSCRIBE's effect, once the new subscription's definition (if any) is durable: its
/// RECEIPT then promises that the subscription outlives a crash.
pub(super) fn once_defined(definition: Option<AppendFuture>, effect: Effect) -> Pending {
    Box::pin(async move {
        if let Some(write) = definition {
            if let Err(e) = write.await {
                return Err((FrameError::Persist(error_chain(&e)), effect.receipt));
            }
        }
        Ok(effect)
    })
}

impl Connection {
    /// Attaches consumer `key` to the durable subscription the SUBSCRIBE names on `topic`
    /// (with the SUBSCRIBE's `selector`); `None` for a plain topic subscription.
    pub(super) fn durable_subscribe(
        &self,
        frame: &Frame,
        topic: &Arc<Topic>,
        selector: Option<&Selector>,
        key: ConsumerKey,
    ) -> Result<Option<Attached>, FrameError> {
        let Some(name) = durable::subscription_name(|h| frame.get(h)) else { return Ok(None) };
        let client_id = self.client_id.as_deref().ok_or_else(|| DurableError::NoClientId { name: name.into() })?;
        let attached = self.ctx.broker.durable_subscribe(client_id, name, topic, selector, key)?;
        tracing::debug!(peer = %self.peer, client_id, name, topic = %topic.name, "attached to a durable subscription");
        Ok(Some(attached))
    }

    /// UNSUBSCRIBE naming a durable subscription: detaches this connection's consumer with
    /// the frame's `id` (if any), then removes the subscription and its messages; the
    /// RECEIPT follows once the removal is durable.
    pub(super) fn durable_unsubscribe(&mut self, frame: &Frame, name: &str) -> Result<Pending, FrameError> {
        if let Some(sub) = frame.get("id").and_then(|id| self.subscriptions.remove(id)) {
            self.drop_subscription(sub);
        }
        let client_id = self.client_id.clone().ok_or_else(|| DurableError::NoClientId { name: name.into() })?;
        let broker = Arc::clone(&self.ctx.broker);
        let unknown = || DurableError::Unknown { client_id: client_id.to_string(), name: name.into() };
        let sub = broker.durable_subscription(&client_id, name).ok_or_else(unknown)?;
        // Removing it takes its messages: the consumer's permission on its topic.
        self.authorize(&sub.topic.name, Permission::Consume)?;
        let write = broker.durable_unsubscribe(&client_id, name)?;
        let receipt = frame.get("receipt").map(str::to_string);
        Ok(Box::pin(async move {
            match write.await {
                Ok(()) => Ok(Effect::receipt(receipt)),
                Err(e) => Err((FrameError::Persist(error_chain(&e)), receipt)),
            }
        }))
    }

    /// Detaches every durable subscription of this connection now (before a DISCONNECT's
    /// RECEIPT, so the client may attach again elsewhere as soon as it reads it).
    pub(super) fn detach_durables(&mut self) {
        let ids: Vec<String> = self.subscriptions.iter().filter(|(_, s)| s.durable.is_some()).map(|(id, _)| id.clone()).collect();
        for id in ids {
            if let Some(sub) = self.subscriptions.remove(&id) {
                self.drop_subscription(sub);
            }
        }
    }
}
