//! An async (tokio) STOMP 1.2 client, for the `send`/`receive` commands, for duomq's
//! tests and for the benchmark tool.
//!
//! [`Client::connect`] performs the handshake; after that a background reader routes
//! RECEIPTs to whoever waits for them and MESSAGEs to their [`Subscription`], and a
//! background writer batches frames and keeps heart-beats going. With a `stomp://` URL a
//! lost connection stays lost: a broker ERROR, an I/O failure or heart-beat silence fails
//! every pending request with its cause.
//!
//! # Failover
//!
//! With a `failover:(stomp://a,stomp://b)?...` URL (ActiveMQ's failover transport
//! semantics and option names) the client connects to the first member that accepts, in
//! the order written or shuffled (`randomize`), once. When that connection is lost later
//! (socket error, EOF, heart-beat silence, or an ERROR saying the broker is shutting down
//! or is `not live`), it reconnects in the background: a round over the members after
//! `initialReconnectDelay`, growing by `backOffMultiplier` up to `maxReconnectDelay`
//! (`useExponentialBackOff`), giving up after `maxReconnectAttempts` rounds (`-1`: never),
//! after which every pending request fails, and `recv` ends, with
//! [`ClientError::FailoverExhausted`]. A member that answers CONNECT with an ERROR (a
//! backup answers `not live: ...`) is skipped. Calls made meanwhile wait in the outbox.
//! On the new connection, before anything queued:
//!
//! - every active subscription is subscribed again with the same id, ack mode, prefetch
//!   and headers; its [`Subscription`] keeps receiving, transparently;
//! - every SEND that asked for a receipt and was written but not receipted is sent again,
//!   in the original order, with the same `message-id`; its [`ReceiptFuture`] completes on
//!   the new broker's RECEIPT. A failover client gives every SEND a `message-id`
//!   (`<client-run-id>-<seq>`, or [`SendOptions::message_id`]) so the broker can store a
//!   resent message once; until it does, a resend may be stored twice.
//! - **A SEND without a receipt is at-most-once**: one written just before the loss may be
//!   lost, and nothing tells. Ask for receipts for what must arrive.
//! - Transactions open at the loss are gone: their COMMIT fails with
//!   [`ClientError::TransactionLost`] ([`ClientError::CommitInDoubt`] if the COMMIT was
//!   already written), as in Artemis and ActiveMQ.
//! - A message delivered on the lost connection cannot be acknowledged any more: an ACK
//!   or NACK that waits for a receipt (or is in a transaction) fails with
//!   [`ClientError::AckLost`], one that does not is dropped. The broker redelivers every
//!   unacknowledged message to the new connection, marked `redelivered`, so consumers
//!   see at-least-once delivery.
//!
//! [`Client::failovers`], [`Client::connected_to`] and [`Client::events`] show what
//! happened. What this client does not do: de-duplicate deliveries, or resend anything
//! whose [`ReceiptFuture`] timed out (`receipt_timeout` covers the whole failover).
//!
//! ```no_run
//! # async fn demo() -> Result<(), duomq_broker::client::ClientError> {
//! use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions};
//! let client = Client::connect("stomp://127.0.0.1:61613", ClientOptions::default()).await?;
//! let durable = SendOptions { persistent: true, receipt: true, ..SendOptions::default() };
//! client.send("/queue/demo", "hello", durable).await?;
//! let mut sub = client.subscribe("/queue/demo", AckMode::ClientIndividual, Some(10)).await?;
//! if let Some(message) = sub.recv().await {
//!     client.ack(&message).await?;
//! }
//! client.disconnect().await
//! # }
//! ```

mod args;
mod connection;
mod error;
mod failover;
mod message;
mod options;
mod router;
mod tls;
mod url;

#[cfg(test)]
mod tests;

pub use args::TlsArgs;
pub use error::ClientError;
pub use failover::ConnectionEvent;
pub use message::Message;
pub use options::{AckMode, AckOptions, ClientOptions, Heartbeat, SendOptions, SubscribeOptions, TlsOptions};
pub use url::{BrokerUrl, FailoverOptions, FailoverUrl, StompUrl, DEFAULT_STOMP_PORT};

use crate::stomp::{Command, Frame, Version};
use bytes::Bytes;
use failover::{Status, Supervisor};
use router::{CloseReason, Outbound, Prepared, ReceiptAnswer, Router};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// TLS over an open TCP connection to `member` when it is a `stomp+ssl://` one, set up as
/// [`Client::connect`] does (`options.tls`: CA file, client certificate, server name;
/// within `options.connect_timeout`), with the same errors; plaintext otherwise. For
/// tools that speak STOMP themselves with the client's settings.
pub async fn secure(
    tcp: tokio::net::TcpStream,
    member: &StompUrl,
    options: &ClientOptions,
) -> Result<crate::tls::Stream, ClientError> {
    tls::wrap(tcp, member, &options.tls, options.connect_timeout).await
}

/// A connection to a broker (with a failover URL: to whichever member is live). Cheap to
/// clone; clones share the connection, which closes when [`Client::disconnect`] is called
/// or when every clone and every [`Subscription`] is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: mpsc::Sender<Outbound>,
    router: Arc<Router>,
    status: Arc<Status>,
    version: Version,
    server: Option<String>,
    receipt_timeout: Duration,
    next_id: AtomicU64,
    /// The client-run id that prefixes generated `message-id`s; `None`: none generated.
    message_ids: Option<String>,
    next_message: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connected_to", &self.inner.status.connected_to())
            .field("version", &self.inner.version)
            .field("failovers", &self.inner.status.failovers())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Parses `url` (`stomp://...` or `failover:(...)`) and connects; see
    /// [`Client::connect_to`].
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let url: BrokerUrl = url.parse()?;
        Client::connect_to(&url, options).await
    }

    /// Connects to the first member of `url` that accepts: opens TCP, sends CONNECT
    /// (accept-version, host, login/passcode, heart-beat) and waits for CONNECTED. A
    /// failover URL's members are tried once each (shuffled with `randomize`); when every
    /// member fails, the last member's error is returned, [`ClientError::Refused`] with
    /// the broker's message for an ERROR answer. Later losses of a failover client's
    /// connection are handled in the background (see the module docs).
    pub async fn connect_to(url: &BrokerUrl, options: ClientOptions) -> Result<Client, ClientError> {
        let policy = match url {
            BrokerUrl::Failover(f) => Some(f.options.clone()),
            BrokerUrl::Stomp(_) => None,
        };
        let members = url.members().to_vec();
        tls::check(&members, &options.tls)?;
        let order = failover::member_order(members.len(), policy.as_ref().is_some_and(|p| p.randomize));
        let (index, established) = failover::connect_round(&members, &order, &options).await?;
        let version = established.version;
        let router = Router::new(version, policy.is_some());
        let status = Status::new(members[index].clone(), established.session.clone());
        let (outbox, queued) = mpsc::channel(connection::OUTBOX_FRAMES);
        let inner = Inner {
            outbox,
            router: Arc::clone(&router),
            status: Arc::clone(&status),
            version,
            server: established.server.clone(),
            receipt_timeout: options.receipt_timeout,
            next_id: AtomicU64::new(1),
            message_ids: (policy.is_some() || options.dedup_ids).then(|| format!("{:016x}", rand::random::<u64>())),
            next_message: AtomicU64::new(1),
        };
        // Another member must speak the same version: acks and codecs depend on it.
        let options = ClientOptions { versions: vec![version], ..options };
        let supervisor = Supervisor { router, status, members, policy, options };
        tokio::spawn(supervisor.run(established, queued));
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The STOMP version agreed with the broker (the same on every failover member).
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The session id from the current connection's CONNECTED, if the broker sent one.
    pub fn session(&self) -> Option<String> {
        self.inner.status.session()
    }

    /// The `server` header from the first CONNECTED (name/version of the broker), if sent.
    pub fn server(&self) -> Option<&str> {
        self.inner.server.as_deref()
    }

    /// The broker (failover member) this client is connected to, or was last connected
    /// to while it reconnects.
    pub fn connected_to(&self) -> StompUrl {
        self.inner.status.connected_to()
    }

    /// How many times this client reconnected after losing its connection.
    pub fn failovers(&self) -> u64 {
        self.inner.status.failovers()
    }

    /// Connection losses and reconnects from now on (failover clients), e.g. to measure
    /// how long a failover kept the client away. A receiver that falls more than a few
    /// dozen events behind misses the oldest.
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.status.events()
    }

    /// Why the connection ended, when it ended other than by [`Client::disconnect`]:
    /// a broker ERROR, an I/O failure, silence past the heart-beat, a failover that gave
    /// up. `None` while open, and while a failover client reconnects.
    pub fn failure(&self) -> Option<ClientError> {
        match self.inner.router.close_reason()? {
            CloseReason::Disconnected => None,
            other => Some(other.to_error()),
        }
    }

    /// Sends a message. With `options.receipt`, returns once the broker's RECEIPT
    /// arrives (for a persistent message: once it is on disk); otherwise once the frame is
    /// queued for writing.
    pub async fn send(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        options: SendOptions,
    ) -> Result<(), ClientError> {
        let receipt = options.receipt;
        match self.submit_send(destination, body.into(), options, receipt).await? {
            Some(receipt) => receipt.await,
            None => Ok(()),
        }
    }

    /// Sends a message asking for a RECEIPT (whatever `options.receipt` says) and returns
    /// as soon as the frame is queued, with a future that completes on the RECEIPT. Keep
    /// several outstanding to pipeline: the broker answers receipts in send order.
    pub async fn send_with_receipt(
        &self,
        destination: &str,
        body: impl Into<Bytes>,
        options: SendOptions,
    ) -> Result<ReceiptFuture, ClientError> {
        match self.submit_send(destination, body.into(), options, true).await? {
            Some(receipt) => Ok(receipt),
            None => Err(ClientError::Closed),
        }
    }

    /// Subscribes and returns once the broker confirmed the subscription (by RECEIPT), so
    /// messages sent to a topic afterwards reach it. `prefetch` caps how many
    /// unacknowledged messages the broker pushes (`activemq.prefetchSize`); `None` leaves
    /// the broker's default.
    pub async fn subscribe(
        &self,
        destination: &str,
        ack: AckMode,
        prefetch: Option<u32>,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_with(destination, SubscribeOptions { ack, prefetch, headers: Vec::new() }).await
    }

    /// Subscribes with extra SUBSCRIBE headers, for brokers that need them (RabbitMQ's
    /// `x-queue-type`, `durable`, `auto-delete`). The prefetch goes out under both common
    /// names, `activemq.prefetchSize` (duomq, ActiveMQ) and `prefetch-count` (RabbitMQ).
    pub async fn subscribe_with(&self, destination: &str, options: SubscribeOptions) -> Result<Subscription, ClientError> {
        let SubscribeOptions { ack, prefetch, headers } = options;
        let id = format!("sub-{}", self.next_id());
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id.as_str())
            .header("destination", destination)
            .header("ack", ack.as_str());
        if let Some(n) = prefetch {
            frame = frame.header("activemq.prefetchSize", n.to_string()).header("prefetch-count", n.to_string());
        }
        frame.headers.extend(headers);
        let receipt = self.next_id().to_string();
        let (messages, prepared) = self.inner.router.prepare_subscribe(&id, ack, frame.clone(), &receipt)?;
        let subscription = Subscription {
            id,
            destination: destination.to_string(),
            ack,
            messages,
            client: self.clone(),
            active: true,
        };
        // On failure the dropped subscription removes its route again.
        let frame = frame.header("receipt", receipt.as_str());
        if let Some(confirmed) = self.submit(frame, prepared, Some(receipt)).await? {
            confirmed.await?;
        }
        Ok(subscription)
    }

    /// Acknowledges a message of a `client` (cumulative) or `client-individual`
    /// subscription, without waiting for the broker.
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        self.settle(Command::Ack, message, AckOptions::default()).await
    }

    /// Refuses a message: the broker redelivers it (marked `redelivered`).
    pub async fn nack(&self, message: &Message) -> Result<(), ClientError> {
        self.settle(Command::Nack, message, AckOptions::default()).await
    }

    /// Acknowledges and waits for the broker's RECEIPT: for a persistent message the ack
    /// is durable when this returns.
    pub async fn ack_with_receipt(&self, message: &Message) -> Result<(), ClientError> {
        self.settle(Command::Ack, message, AckOptions { receipt: true, transaction: None }).await
    }

    /// Acknowledges with options: a receipt, or inside a transaction.
    pub async fn ack_with(&self, message: &Message, options: AckOptions) -> Result<(), ClientError> {
        self.settle(Command::Ack, message, options).await
    }

    /// Refuses with options: a receipt, or inside a transaction.
    pub async fn nack_with(&self, message: &Message, options: AckOptions) -> Result<(), ClientError> {
        self.settle(Command::Nack, message, options).await
    }

    /// Begins transaction `tx`; sends and acks naming it take effect at [`Client::commit`].
    pub async fn begin(&self, tx: &str) -> Result<(), ClientError> {
        let prepared = self.inner.router.prepare_begin(tx)?;
        self.submit(Frame::new(Command::Begin).header("transaction", tx), prepared, None).await.map(drop)
    }

    /// Commits transaction `tx` and waits for the RECEIPT: its sends and acks are then
    /// applied (and durable, all or nothing). A transaction lost in a failover fails with
    /// [`ClientError::TransactionLost`].
    pub async fn commit(&self, tx: &str) -> Result<(), ClientError> {
        self.end_transaction(Command::Commit, tx).await
    }

    /// Aborts transaction `tx`, discarding its sends and acks; waits for the RECEIPT.
    pub async fn abort(&self, tx: &str) -> Result<(), ClientError> {
        self.end_transaction(Command::Abort, tx).await
    }

    /// Disconnects gracefully: DISCONNECT with a receipt, which the broker sends after
    /// finishing everything sent before it. Then the connection is closed for every
    /// clone; subscriptions still yield what they had buffered. Calling it again is a
    /// no-op.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        if let Some(CloseReason::Disconnected) = self.inner.router.close_reason() {
            return Ok(());
        }
        let receipt = self.next_id().to_string();
        let result = match self.inner.router.prepare_disconnect(&receipt) {
            Ok(prepared) => {
                let frame = Frame::new(Command::Disconnect).header("receipt", receipt.as_str());
                match self.submit(frame, prepared, Some(receipt)).await {
                    Ok(Some(confirmed)) => confirmed.await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        self.inner.router.close(CloseReason::Disconnected);
        result
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Builds, registers and queues a SEND; with `receipt`, returns its RECEIPT's future.
    async fn submit_send(
        &self,
        destination: &str,
        body: Bytes,
        options: SendOptions,
        receipt: bool,
    ) -> Result<Option<ReceiptFuture>, ClientError> {
        let transaction = options.transaction.clone();
        let receipt = receipt.then(|| self.next_id().to_string());
        let mut frame = self.send_frame(destination, body, options);
        if let Some(id) = &receipt {
            frame = frame.header("receipt", id.as_str());
        }
        let prepared = self.inner.router.prepare_send(&frame, receipt.as_deref(), transaction.as_deref())?;
        self.submit(frame, prepared, receipt).await
    }

    fn send_frame(&self, destination: &str, body: Bytes, options: SendOptions) -> Frame {
        let mut frame = Frame::new(Command::Send).header("destination", destination);
        if options.persistent {
            frame = frame.header("persistent", "true");
        }
        if let Some(tx) = options.transaction {
            frame = frame.header("transaction", tx);
        }
        if let Some(id) = options.message_id.or_else(|| self.generate_message_id(&options.headers)) {
            frame = frame.header("message-id", id);
        }
        frame.headers.extend(options.headers);
        frame.with_body(body)
    }

    /// `<client-run-id>-<seq>`, when this client numbers its sends and the caller did not
    /// set a `message-id` header of its own.
    fn generate_message_id(&self, headers: &[(String, String)]) -> Option<String> {
        let run = self.inner.message_ids.as_ref()?;
        if headers.iter().any(|(name, _)| name == "message-id") {
            return None;
        }
        Some(format!("{run}-{}", self.inner.next_message.fetch_add(1, Ordering::Relaxed)))
    }

    /// Queues a frame the router has prepared (its `receipt` header, if any, already set)
    /// and returns the future of its RECEIPT. Waits only while the outbox is full.
    async fn submit(
        &self,
        frame: Frame,
        prepared: Prepared,
        receipt: Option<String>,
    ) -> Result<Option<ReceiptFuture>, ClientError> {
        let command = frame.command;
        if self.inner.outbox.send(Outbound { frame, bound: prepared.bound }).await.is_err() {
            if let Some(id) = &receipt {
                self.inner.router.forget_receipt(id);
            }
            return Err(self.closed_error());
        }
        Ok(match (receipt, prepared.answer) {
            (Some(id), Some(answer)) => Some(self.receipt_future(id, command, answer)),
            _ => None,
        })
    }

    fn receipt_future(&self, id: String, command: Command, answer: ReceiptAnswer) -> ReceiptFuture {
        ReceiptFuture {
            deadline: Box::pin(tokio::time::sleep(self.inner.receipt_timeout)),
            timeout: self.inner.receipt_timeout,
            router: Arc::clone(&self.inner.router),
            answer,
            command,
            id,
        }
    }

    async fn settle(&self, command: Command, message: &Message, options: AckOptions) -> Result<(), ClientError> {
        let mut frame = Frame::new(command);
        match self.inner.version {
            Version::V1_2 => {
                let Some(token) = &message.ack else {
                    return Err(ClientError::NotAckable { message_id: message.message_id.clone() });
                };
                frame = frame.header("id", token.as_str());
            }
            Version::V1_1 => {
                frame = frame
                    .header("message-id", message.message_id.as_str())
                    .header("subscription", message.subscription.as_str());
            }
            Version::V1_0 => frame = frame.header("message-id", message.message_id.as_str()),
        }
        if let Some(tx) = &options.transaction {
            frame = frame.header("transaction", tx.as_str());
        }
        let receipt = options.receipt.then(|| self.next_id().to_string());
        if let Some(id) = &receipt {
            frame = frame.header("receipt", id.as_str());
        }
        let router = &self.inner.router;
        let Some(prepared) = router.prepare_settle(message, options.transaction.as_deref(), receipt.as_deref())? else {
            return Ok(());
        };
        match self.submit(frame, prepared, receipt).await? {
            Some(confirmed) => confirmed.await,
            None => Ok(()),
        }
    }

    async fn end_transaction(&self, command: Command, tx: &str) -> Result<(), ClientError> {
        let receipt = self.next_id().to_string();
        let Some(prepared) = self.inner.router.prepare_end(tx, command == Command::Commit, &receipt)? else {
            return Ok(());
        };
        let frame = Frame::new(command).header("transaction", tx).header("receipt", receipt.as_str());
        match self.submit(frame, prepared, Some(receipt)).await? {
            Some(confirmed) => confirmed.await,
            None => Ok(()),
        }
    }

    fn closed_error(&self) -> ClientError {
        self.inner.router.close_reason().map_or(ClientError::Closed, |r| r.to_error())
    }
}

/// The pending RECEIPT of one request. Resolves to `Ok` when the broker confirms, to the
/// broker's error if the connection fails first, or to [`ClientError::Timeout`] after the
/// client's receipt timeout.
#[must_use = "a receipt confirms nothing until awaited"]
pub struct ReceiptFuture {
    id: String,
    command: Command,
    answer: ReceiptAnswer,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    router: Arc<Router>,
}

impl ReceiptFuture {
    /// The `receipt` header value this future waits for.
    pub fn receipt_id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for ReceiptFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptFuture").field("id", &self.id).field("command", &self.command).finish()
    }
}

impl Future for ReceiptFuture {
    type Output = Result<(), ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(answer) = Pin::new(&mut this.answer).poll(cx) {
            // A dropped sender means the router went away with the connection.
            return Poll::Ready(answer.unwrap_or(Err(ClientError::Closed)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.router.forget_receipt(&this.id);
            return Poll::Ready(Err(ClientError::Timeout {
                what: format!("the RECEIPT of {} (receipt {}, {:?})", this.command, this.id, this.timeout),
            }));
        }
        Poll::Pending
    }
}

/// Messages of one subscription, in delivery order. Dropping it unsubscribes (without
/// waiting); [`Subscription::unsubscribe`] waits for the broker.
pub struct Subscription {
    id: String,
    destination: String,
    ack: AckMode,
    messages: mpsc::UnboundedReceiver<Message>,
    client: Client,
    active: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("destination", &self.destination)
            .field("ack", &self.ack)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message; `None` once the connection has closed and everything delivered
    /// before was taken ([`Client::failure`] says why it closed).
    pub async fn recv(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    /// The subscription id sent on SUBSCRIBE.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    pub fn ack_mode(&self) -> AckMode {
        self.ack
    }

    /// The client this subscription belongs to, e.g. to acknowledge from another task.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends UNSUBSCRIBE and waits for the broker's RECEIPT; messages delivered but not
    /// acknowledged go back to the queue.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.active = false;
        let receipt = self.client.next_id().to_string();
        let Some(prepared) = self.client.inner.router.prepare_unsubscribe(&self.id, Some(&receipt))? else {
            // Made for a connection lost since: the current broker never heard of it.
            return Ok(());
        };
        let frame = Frame::new(Command::Unsubscribe).header("id", self.id.as_str()).header("receipt", receipt.as_str());
        match self.client.submit(frame, prepared, Some(receipt)).await? {
            Some(confirmed) => confirmed.await,
            None => Ok(()),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        if let Ok(Some(prepared)) = self.client.inner.router.prepare_unsubscribe(&self.id, None) {
            // Best effort: with a full outbox the broker learns at disconnect instead.
            let frame = Frame::new(Command::Unsubscribe).header("id", self.id.as_str());
            let _ = self.client.inner.outbox.try_send(Outbound { frame, bound: prepared.bound });
        }
    }
}
