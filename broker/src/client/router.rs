//! The state of one client session, shared by the API, the connection tasks and the
//! failover supervisor: who waits for which RECEIPT, which subscriptions exist and where
//! their messages go, which transactions are open. It outlives any one connection: when
//! one is lost, [`Router::connection_lost`] settles what cannot survive the move to
//! another broker and [`Router::replay`] lists what the next connection must be told
//! again. No I/O here, and no waiting: every method takes the lock briefly and returns.
//!
//! Frames whose meaning depends on what one broker connection knows (SUBSCRIBE,
//! UNSUBSCRIBE, ACK/NACK, BEGIN/COMMIT/ABORT and transactional SENDs) are bound to the
//! [`Generation`] they were prepared for, atomically with the state change they make
//! here; the writer of another generation drops them. A SEND outside a transaction is
//! bound to nothing: it means the same to every broker.

use super::error::ClientError;
use super::message::Message;
use super::options::AckMode;
use crate::stomp::{CodecError, Command, Frame, Version};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Numbers the connections of one client: 1 for the first, one more per failover. While
/// disconnected, the current generation is the one the next connection will get.
pub(super) type Generation = u64;

/// A frame on its way to the writer.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) frame: Frame,
    /// `Some`: only the connection of this generation may write it.
    pub(super) bound: Option<Generation>,
}

/// Why a connection (or, once the router is closed, the whole session) ended. Kept
/// (cloneable) so every later call can report it.
#[derive(Debug, Clone)]
pub(super) enum CloseReason {
    /// The user disconnected, or dropped every handle.
    Disconnected,
    /// The broker closed the socket without an ERROR.
    Eof,
    Broker(String),
    Io(std::io::ErrorKind, String),
    Protocol(CodecError),
    Silent(Duration),
    /// A failover client ran out of reconnect attempts.
    GaveUp { attempts: u32, last_error: String },
}

impl CloseReason {
    pub(super) fn to_error(&self) -> ClientError {
        match self {
            CloseReason::Disconnected | CloseReason::Eof => ClientError::Closed,
            CloseReason::Broker(message) => ClientError::Broker { message: message.clone() },
            CloseReason::Io(kind, text) => ClientError::Io(std::io::Error::new(*kind, text.clone())),
            CloseReason::Protocol(e) => ClientError::Protocol(e.clone()),
            CloseReason::Silent(after) => {
                ClientError::Timeout { what: format!("a heart-beat from the broker ({after:?} of silence)") }
            }
            CloseReason::GaveUp { attempts, last_error } => {
                ClientError::FailoverExhausted { attempts: *attempts, last_error: last_error.clone() }
            }
        }
    }
}

type ReceiptSender = oneshot::Sender<Result<(), ClientError>>;
pub(super) type ReceiptAnswer = oneshot::Receiver<Result<(), ClientError>>;

/// What a pending RECEIPT confirms, which decides its fate when the connection is lost.
#[derive(Debug)]
enum ReceiptKind {
    /// A SEND outside a transaction. `frame` (kept by failover clients only) is resent on
    /// the next connection if it had been written.
    Send { frame: Option<Frame> },
    /// A SEND, ACK or NACK inside a transaction: lost with the transaction.
    InTransaction { transaction: String },
    /// A SUBSCRIBE: replayed with the same receipt id, so the caller still gets its answer.
    Subscribe { id: String },
    Unsubscribe,
    /// An ACK or NACK outside a transaction.
    Settle { message_id: String },
    Commit { transaction: String },
    Abort,
    Disconnect,
}

struct PendingReceipt {
    waiter: ReceiptSender,
    kind: ReceiptKind,
    /// When the frame was handed to a socket (write order); `None` while queued.
    written: Option<u64>,
}

struct SubscriptionState {
    channel: mpsc::UnboundedSender<Message>,
    ack: AckMode,
    /// The generation whose broker knows this subscription (or will, once its SUBSCRIBE
    /// is written).
    bound: Generation,
    /// Creation order, so a replay subscribes in the order the user did.
    created: u64,
    /// The SUBSCRIBE to replay, without receipt (failover clients only).
    replay: Option<Frame>,
    /// The receipt id of the SUBSCRIBE while the broker has not confirmed it.
    pending_receipt: Option<String>,
    /// Ack keys of deliveries on the current connection not yet settled, in delivery
    /// order (failover clients, non-auto subscriptions only). The broker's prefetch
    /// bounds it.
    outstanding: VecDeque<String>,
}

impl SubscriptionState {
    fn position(&self, key: &str) -> Option<usize> {
        self.outstanding.iter().position(|k| k == key)
    }

    /// Forgets a settled delivery, and in `client` mode every earlier one with it.
    fn settle(&mut self, key: &str) {
        if let Some(at) = self.position(key) {
            match self.ack {
                AckMode::Client => drop(self.outstanding.drain(..=at)),
                AckMode::ClientIndividual | AckMode::Auto => drop(self.outstanding.remove(at)),
            }
        }
    }
}

/// The acks a transaction will apply at COMMIT, as (subscription id, ack key).
type TransactionAcks = Vec<(String, String)>;

struct RouterState {
    generation: Generation,
    receipts: HashMap<String, PendingReceipt>,
    subscriptions: HashMap<String, SubscriptionState>,
    transactions: HashMap<String, TransactionAcks>,
    /// Transactions open when a connection was lost, until the user commits or aborts them.
    lost_transactions: HashSet<String>,
    next_write: u64,
    next_subscription: u64,
    closed: Option<CloseReason>,
    /// DISCONNECT was sent: the broker closing the socket is then the expected end.
    disconnecting: bool,
}

impl RouterState {
    fn check_open(&self) -> Result<(), ClientError> {
        match &self.closed {
            Some(reason) => Err(reason.to_error()),
            None => Ok(()),
        }
    }

    fn register(&mut self, id: &str, kind: ReceiptKind) -> ReceiptAnswer {
        let (waiter, answer) = oneshot::channel();
        self.receipts.insert(id.to_string(), PendingReceipt { waiter, kind, written: None });
        answer
    }

    fn check_transaction(&self, transaction: Option<&str>) -> Result<(), ClientError> {
        match transaction {
            Some(tx) if self.lost_transactions.contains(tx) => {
                Err(ClientError::TransactionLost { transaction: tx.to_string() })
            }
            _ => Ok(()),
        }
    }
}

/// What the API queues after a `prepare_*` call: the frame's binding and, when a receipt
/// was asked for, where its answer arrives.
pub(super) struct Prepared {
    pub(super) bound: Option<Generation>,
    pub(super) answer: Option<ReceiptAnswer>,
}

/// Who waits for what in one client session; see the module docs.
pub(super) struct Router {
    state: Mutex<RouterState>,
    closed: watch::Sender<bool>,
    version: Version,
    /// Keep what a reconnect needs: SEND copies, SUBSCRIBE frames, ack keys.
    failover: bool,
}

impl Router {
    pub(super) fn new(version: Version, failover: bool) -> Arc<Router> {
        let state = RouterState {
            generation: 1,
            receipts: HashMap::new(),
            subscriptions: HashMap::new(),
            transactions: HashMap::new(),
            lost_transactions: HashSet::new(),
            next_write: 0,
            next_subscription: 0,
            closed: None,
            disconnecting: false,
        };
        Arc::new(Router { state: Mutex::new(state), closed: watch::Sender::new(false), version, failover })
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        // The lock is never held across a panic-prone call; a poisoned lock still holds
        // consistent maps.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn is_failover(&self) -> bool {
        self.failover
    }

    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closed.clone()
    }

    /// Flips to `true` when the session closes for good.
    pub(super) fn closed_watch(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub(super) fn generation(&self) -> Generation {
        self.lock().generation
    }

    pub(super) fn is_disconnecting(&self) -> bool {
        self.lock().disconnecting
    }

    pub(super) fn forget_receipt(&self, id: &str) {
        self.lock().receipts.remove(id);
    }

    /// A SEND, with its `receipt` header (if any) already set.
    pub(super) fn prepare_send(
        &self,
        frame: &Frame,
        receipt: Option<&str>,
        transaction: Option<&str>,
    ) -> Result<Prepared, ClientError> {
        let mut state = self.lock();
        state.check_open()?;
        state.check_transaction(transaction)?;
        let bound = transaction.map(|_| state.generation);
        let answer = receipt.map(|id| {
            let kind = match transaction {
                Some(tx) => ReceiptKind::InTransaction { transaction: tx.to_string() },
                None => ReceiptKind::Send { frame: self.failover.then(|| frame.clone()) },
            };
            state.register(id, kind)
        });
        Ok(Prepared { bound, answer })
    }

    /// Opens the route of subscription `id`; `replay` is its SUBSCRIBE without receipt.
    pub(super) fn prepare_subscribe(
        &self,
        id: &str,
        ack: AckMode,
        replay: Frame,
        receipt: &str,
    ) -> Result<(mpsc::UnboundedReceiver<Message>, Prepared), ClientError> {
        let mut state = self.lock();
        state.check_open()?;
        let (channel, messages) = mpsc::unbounded_channel();
        let generation = state.generation;
        state.next_subscription += 1;
        let subscription = SubscriptionState {
            channel,
            ack,
            bound: generation,
            created: state.next_subscription,
            replay: self.failover.then_some(replay),
            pending_receipt: Some(receipt.to_string()),
            outstanding: VecDeque::new(),
        };
        state.subscriptions.insert(id.to_string(), subscription);
        let answer = state.register(receipt, ReceiptKind::Subscribe { id: id.to_string() });
        Ok((messages, Prepared { bound: Some(generation), answer: Some(answer) }))
    }

    /// Closes the route of subscription `id`. `None`: the broker of the current generation
    /// never heard of it (it was made for a lost connection), so there is nothing to send.
    pub(super) fn prepare_unsubscribe(&self, id: &str, receipt: Option<&str>) -> Result<Option<Prepared>, ClientError> {
        let mut state = self.lock();
        let removed = state.subscriptions.remove(id);
        state.check_open()?;
        match removed {
            Some(s) if s.bound == state.generation => {
                let answer = receipt.map(|r| state.register(r, ReceiptKind::Unsubscribe));
                Ok(Some(Prepared { bound: Some(state.generation), answer }))
            }
            _ => Ok(None),
        }
    }

    /// An ACK or NACK of `message`. `None`: the message came on a lost connection and the
    /// caller asked for no confirmation, so the settlement is dropped (the broker
    /// redelivers the message).
    pub(super) fn prepare_settle(
        &self,
        message: &Message,
        transaction: Option<&str>,
        receipt: Option<&str>,
    ) -> Result<Option<Prepared>, ClientError> {
        let mut state = self.lock();
        state.check_open()?;
        state.check_transaction(transaction)?;
        if self.failover {
            let key = ack_key(self.version, message).to_string();
            let delivered_here = state
                .subscriptions
                .get(&message.subscription)
                .is_some_and(|s| s.position(&key).is_some());
            if !delivered_here {
                if receipt.is_some() || transaction.is_some() {
                    return Err(ClientError::AckLost { message_id: message.message_id.clone() });
                }
                tracing::debug!(
                    message_id = %message.message_id,
                    "dropping the acknowledgement of a message delivered on a lost connection"
                );
                return Ok(None);
            }
            match transaction.and_then(|tx| state.transactions.get_mut(tx)) {
                Some(acks) => acks.push((message.subscription.clone(), key)),
                None if transaction.is_some() => {}
                None => {
                    if let Some(s) = state.subscriptions.get_mut(&message.subscription) {
                        s.settle(&key);
                    }
                }
            }
        }
        let answer = receipt.map(|id| {
            let kind = match transaction {
                Some(tx) => ReceiptKind::InTransaction { transaction: tx.to_string() },
                None => ReceiptKind::Settle { message_id: message.message_id.clone() },
            };
            state.register(id, kind)
        });
        Ok(Some(Prepared { bound: Some(state.generation), answer }))
    }

    pub(super) fn prepare_begin(&self, transaction: &str) -> Result<Prepared, ClientError> {
        let mut state = self.lock();
        state.check_open()?;
        state.lost_transactions.remove(transaction);
        state.transactions.insert(transaction.to_string(), Vec::new());
        Ok(Prepared { bound: Some(state.generation), answer: None })
    }

    /// A COMMIT (`commit`) or ABORT. `None`: an ABORT of a transaction lost in a failover,
    /// which the broker already discarded.
    pub(super) fn prepare_end(
        &self,
        transaction: &str,
        commit: bool,
        receipt: &str,
    ) -> Result<Option<Prepared>, ClientError> {
        let mut state = self.lock();
        state.check_open()?;
        if state.lost_transactions.remove(transaction) {
            return match commit {
                true => Err(ClientError::TransactionLost { transaction: transaction.to_string() }),
                false => Ok(None),
            };
        }
        let acks = state.transactions.remove(transaction).unwrap_or_default();
        if commit {
            for (subscription, key) in acks {
                if let Some(s) = state.subscriptions.get_mut(&subscription) {
                    s.settle(&key);
                }
            }
        }
        let kind = match commit {
            true => ReceiptKind::Commit { transaction: transaction.to_string() },
            false => ReceiptKind::Abort,
        };
        let answer = state.register(receipt, kind);
        Ok(Some(Prepared { bound: Some(state.generation), answer: Some(answer) }))
    }

    /// DISCONNECT: from now on, the broker closing the socket is the expected end.
    pub(super) fn prepare_disconnect(&self, receipt: &str) -> Result<Prepared, ClientError> {
        let mut state = self.lock();
        state.disconnecting = true;
        state.check_open()?;
        let answer = state.register(receipt, ReceiptKind::Disconnect);
        Ok(Prepared { bound: None, answer: Some(answer) })
    }

    /// The writer handed the frame with this receipt to a socket (failover clients).
    pub(super) fn mark_written(&self, receipt: &str) {
        let mut state = self.lock();
        state.next_write += 1;
        let order = state.next_write;
        if let Some(pending) = state.receipts.get_mut(receipt) {
            pending.written = Some(order);
        }
    }

    /// Routes one inbound frame; `Some` ends the connection.
    pub(super) fn dispatch(&self, frame: Frame) -> Option<CloseReason> {
        match frame.command {
            Command::Message => {
                let message = Message::from_frame(frame);
                let mut state = self.lock();
                match state.subscriptions.get_mut(&message.subscription) {
                    Some(subscription) => {
                        if self.failover && subscription.ack != AckMode::Auto {
                            subscription.outstanding.push_back(ack_key(self.version, &message).to_string());
                        }
                        let _ = subscription.channel.send(message);
                    }
                    None => tracing::debug!(
                        subscription = %message.subscription,
                        message_id = %message.message_id,
                        "dropping MESSAGE for a subscription no longer open"
                    ),
                }
                None
            }
            Command::Receipt => {
                let id = frame.get("receipt-id").unwrap_or_default();
                let mut state = self.lock();
                match state.receipts.remove(id) {
                    Some(pending) => {
                        if let ReceiptKind::Subscribe { id: subscription } = &pending.kind {
                            if let Some(s) = state.subscriptions.get_mut(subscription) {
                                s.pending_receipt = None;
                            }
                        }
                        let _ = pending.waiter.send(Ok(()));
                    }
                    None => tracing::debug!(receipt = %id, "RECEIPT nobody waits for (timed out?)"),
                }
                None
            }
            Command::Error => Some(CloseReason::Broker(error_message(&frame))),
            other => {
                tracing::debug!(command = %other, "ignoring unexpected frame from the broker");
                None
            }
        }
    }

    /// Connection `lost` is gone and a failover begins: deliveries it made can no longer
    /// be settled, its open transactions are lost, and pending receipts that no other
    /// broker can give fail (or, where the outcome is known, succeed). Receipts of plain
    /// SENDs and SUBSCRIBEs stay pending for [`Router::replay`].
    pub(super) fn connection_lost(&self, lost: Generation) {
        let mut settled = Vec::new();
        {
            let mut state = self.lock();
            state.generation = lost + 1;
            for s in state.subscriptions.values_mut() {
                s.outstanding.clear();
            }
            let open: Vec<String> = state.transactions.drain().map(|(tx, _)| tx).collect();
            state.lost_transactions.extend(open);
            let pending = std::mem::take(&mut state.receipts);
            for (id, p) in pending {
                let outcome = match &p.kind {
                    ReceiptKind::Subscribe { id: s } if !state.subscriptions.contains_key(s) => Ok(()),
                    ReceiptKind::Send { .. } | ReceiptKind::Subscribe { .. } | ReceiptKind::Disconnect => {
                        state.receipts.insert(id, p);
                        continue;
                    }
                    ReceiptKind::Unsubscribe | ReceiptKind::Abort => Ok(()),
                    ReceiptKind::Settle { message_id } => Err(ClientError::AckLost { message_id: message_id.clone() }),
                    ReceiptKind::InTransaction { transaction } => {
                        Err(ClientError::TransactionLost { transaction: transaction.clone() })
                    }
                    ReceiptKind::Commit { transaction } if p.written.is_some() => {
                        Err(ClientError::CommitInDoubt { transaction: transaction.clone() })
                    }
                    ReceiptKind::Commit { transaction } => {
                        Err(ClientError::TransactionLost { transaction: transaction.clone() })
                    }
                };
                settled.push((p.waiter, outcome));
            }
        }
        for (waiter, outcome) in settled {
            let _ = waiter.send(outcome);
        }
    }

    /// What connection `generation` must be sent before anything queued: a SUBSCRIBE for
    /// every subscription made on an earlier connection (same id and headers; with its
    /// receipt id if the broker never confirmed it), then every SEND that was written but
    /// not receipted, in the order it was first written.
    pub(super) fn replay(&self, generation: Generation) -> Vec<Frame> {
        let mut state = self.lock();
        let mut subscriptions: Vec<&mut SubscriptionState> =
            state.subscriptions.values_mut().filter(|s| s.bound < generation).collect();
        subscriptions.sort_by_key(|s| s.created);
        let mut frames = Vec::new();
        for s in subscriptions {
            s.bound = generation;
            if let Some(subscribe) = &s.replay {
                let mut frame = subscribe.clone();
                if let Some(receipt) = &s.pending_receipt {
                    frame = frame.header("receipt", receipt.as_str());
                }
                frames.push(frame);
            }
        }
        let mut sends: Vec<(u64, &Frame)> = state
            .receipts
            .values()
            .filter_map(|p| match (&p.kind, p.written) {
                (ReceiptKind::Send { frame: Some(frame) }, Some(order)) => Some((order, frame)),
                _ => None,
            })
            .collect();
        sends.sort_by_key(|(order, _)| *order);
        frames.extend(sends.into_iter().map(|(_, frame)| frame.clone()));
        frames
    }

    /// Ends the session for everyone: pending receipts fail with `reason`, message
    /// channels end once drained. The first reason wins.
    pub(super) fn close(&self, reason: CloseReason) {
        let (receipts, error) = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            let reason = match reason {
                CloseReason::Eof if state.disconnecting => CloseReason::Disconnected,
                other => other,
            };
            state.subscriptions.clear();
            state.closed = Some(reason.clone());
            (std::mem::take(&mut state.receipts), reason)
        };
        match &error {
            CloseReason::Disconnected => tracing::debug!("disconnected from the broker"),
            other => tracing::debug!(reason = ?other, "connection to the broker ended"),
        }
        for (_, pending) in receipts {
            let _ = pending.waiter.send(Err(error.to_error()));
        }
        self.closed.send_replace(true);
    }
}

/// What identifies a delivery in an ACK: the `ack` token in 1.2, the message id before.
fn ack_key(version: Version, message: &Message) -> &str {
    match (version, &message.ack) {
        (Version::V1_2, Some(token)) => token,
        _ => &message.message_id,
    }
}

/// The broker's explanation in an ERROR frame: its `message` header, else its body.
pub(super) fn error_message(frame: &Frame) -> String {
    match frame.get("message") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => String::from_utf8_lossy(&frame.body).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(subscription: &str, n: u32) -> Frame {
        Frame::new(Command::Message)
            .header("subscription", subscription)
            .header("message-id", n.to_string())
            .header("destination", "/queue/a")
            .header("ack", format!("t-{n}"))
    }

    fn message(subscription: &str, n: u32) -> Message {
        Message::from_frame(delivery(subscription, n))
    }

    fn subscribed(router: &Router, id: &str, ack: AckMode) -> mpsc::UnboundedReceiver<Message> {
        let replay = Frame::new(Command::Subscribe).header("id", id);
        let (messages, _) = router.prepare_subscribe(id, ack, replay, &format!("r-{id}")).unwrap();
        router.dispatch(Frame::new(Command::Receipt).header("receipt-id", format!("r-{id}")));
        messages
    }

    #[test]
    fn given_cumulative_ack_should_settle_every_earlier_delivery() {
        let router = Router::new(Version::V1_2, true);
        let _messages = subscribed(&router, "s", AckMode::Client);
        for n in 1..=3 {
            router.dispatch(delivery("s", n));
        }
        assert!(router.prepare_settle(&message("s", 2), None, None).unwrap().is_some());
        // 1 went with 2; 3 is still outstanding.
        assert!(router.prepare_settle(&message("s", 1), None, None).unwrap().is_none());
        assert!(router.prepare_settle(&message("s", 3), None, None).unwrap().is_some());
    }

    #[test]
    fn given_lost_connection_when_acking_old_delivery_should_drop_or_fail_with_ack_lost() {
        let router = Router::new(Version::V1_2, true);
        let _messages = subscribed(&router, "s", AckMode::ClientIndividual);
        router.dispatch(delivery("s", 1));
        router.connection_lost(1);
        assert!(router.prepare_settle(&message("s", 1), None, None).unwrap().is_none());
        let err = router.prepare_settle(&message("s", 1), None, Some("r")).err();
        assert!(matches!(err, Some(ClientError::AckLost { .. })), "{err:?}");
    }

    #[test]
    fn given_open_transaction_when_connection_lost_should_fail_commit_and_accept_abort() {
        let router = Router::new(Version::V1_2, true);
        router.prepare_begin("t1").unwrap();
        router.prepare_begin("t2").unwrap();
        router.connection_lost(1);
        let err = router.prepare_end("t1", true, "r1").err();
        assert!(matches!(err, Some(ClientError::TransactionLost { .. })), "{err:?}");
        assert!(router.prepare_end("t2", false, "r2").unwrap().is_none());
        let send = Frame::new(Command::Send);
        assert!(router.prepare_send(&send, None, Some("t1")).is_ok(), "a lost transaction is reported once");
    }

    #[test]
    fn given_subscription_of_lost_connection_when_unsubscribing_should_send_nothing() {
        let router = Router::new(Version::V1_2, true);
        let _messages = subscribed(&router, "s", AckMode::Auto);
        router.connection_lost(1);
        assert!(router.prepare_unsubscribe("s", Some("r")).unwrap().is_none());
        assert!(router.replay(2).is_empty());
    }

    #[test]
    fn given_written_and_queued_sends_when_replayed_should_resend_only_written_in_write_order() {
        let router = Router::new(Version::V1_2, true);
        let _messages = subscribed(&router, "sub-1", AckMode::ClientIndividual);
        let mut answers = Vec::new();
        for id in ["a", "b", "c"] {
            let frame = Frame::new(Command::Send).header("receipt", id);
            answers.push(router.prepare_send(&frame, Some(id), None).unwrap().answer);
        }
        router.mark_written("b");
        router.mark_written("a");
        router.connection_lost(1);
        let replay = router.replay(2);
        let shown: Vec<(Command, Option<&str>, Option<&str>)> =
            replay.iter().map(|f| (f.command, f.get("id"), f.get("receipt"))).collect();
        assert_eq!(
            shown,
            [(Command::Subscribe, Some("sub-1"), None), (Command::Send, None, Some("b")), (Command::Send, None, Some("a"))]
        );
        assert!(router.replay(2).iter().all(|f| f.command == Command::Send), "subscriptions replay once");
    }
}
