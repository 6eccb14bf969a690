//! An async (tokio) STOMP 1.2 client, for the `send`/`receive` commands, for duomq's
//! tests and for the benchmark tool.
//!
//! [`Client::connect`] performs the handshake; after that a background reader routes
//! RECEIPTs to whoever waits for them and MESSAGEs to their [`Subscription`], and a
//! background writer batches frames and keeps heart-beats going. A broker ERROR fails
//! every pending request with the broker's message.
//!
//! What it does not do (yet): reconnect. A `failover:(...)` URL is parsed in full, but
//! connecting with one only tries its members in the order written until one accepts
//! the CONNECT; a connection that later drops stays dropped. Nor does it retry or
//! de-duplicate anything on its own: what was delivered, acknowledged or receipted is
//! reported as the broker said it.
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

mod connection;
mod error;
mod message;
mod options;
mod url;

#[cfg(test)]
mod tests;

pub use error::ClientError;
pub use message::Message;
pub use options::{AckMode, AckOptions, ClientOptions, Heartbeat, SendOptions, SubscribeOptions};
pub use url::{BrokerUrl, FailoverOptions, FailoverUrl, StompUrl, DEFAULT_STOMP_PORT};

use crate::stomp::{Command, Frame, Version};
use bytes::Bytes;
use connection::{CloseReason, Router};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A connection to a broker. Cheap to clone; clones share the connection, which closes
/// when [`Client::disconnect`] is called or when every clone and every [`Subscription`]
/// is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: mpsc::Sender<Frame>,
    router: Arc<Router>,
    version: Version,
    session: Option<String>,
    server: Option<String>,
    connected_to: StompUrl,
    receipt_timeout: Duration,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connected_to", &self.inner.connected_to)
            .field("version", &self.inner.version)
            .field("session", &self.inner.session)
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
    /// (accept-version, host, login/passcode, heart-beat) and waits for CONNECTED. When
    /// every member fails, the last member's error is returned; an ERROR answer is
    /// [`ClientError::Refused`] with the broker's message.
    pub async fn connect_to(url: &BrokerUrl, options: ClientOptions) -> Result<Client, ClientError> {
        let mut last_error = ClientError::Closed;
        for member in url.members() {
            match connection::handshake(member, &options).await {
                Ok(established) => {
                    let router = Router::new();
                    let inner = Inner {
                        version: established.version,
                        session: established.session.clone(),
                        server: established.server.clone(),
                        outbox: connection::start(established, &router),
                        router,
                        connected_to: member.clone(),
                        receipt_timeout: options.receipt_timeout,
                        next_id: AtomicU64::new(1),
                    };
                    return Ok(Client { inner: Arc::new(inner) });
                }
                Err(e) => {
                    tracing::debug!(broker = %member, error = %e, "broker did not accept the connection");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    /// The STOMP version agreed with the broker.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The session id from CONNECTED, if the broker sent one.
    pub fn session(&self) -> Option<&str> {
        self.inner.session.as_deref()
    }

    /// The `server` header from CONNECTED (name/version of the broker), if sent.
    pub fn server(&self) -> Option<&str> {
        self.inner.server.as_deref()
    }

    /// The broker (failover member) this client is connected to.
    pub fn connected_to(&self) -> &StompUrl {
        &self.inner.connected_to
    }

    /// Why the connection ended, when it ended other than by [`Client::disconnect`]:
    /// a broker ERROR, an I/O failure, silence past the heart-beat. `None` while open.
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
        let frame = send_frame(destination, body.into(), options);
        if receipt {
            self.request_with_receipt(frame).await?.await
        } else {
            self.request(frame).await
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
        self.request_with_receipt(send_frame(destination, body.into(), options)).await
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
        let messages = self.inner.router.add_subscription(id.clone())?;
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id.as_str())
            .header("destination", destination)
            .header("ack", ack.as_str());
        if let Some(n) = prefetch {
            frame = frame.header("activemq.prefetchSize", n.to_string()).header("prefetch-count", n.to_string());
        }
        frame.headers.extend(headers);
        let subscription = Subscription {
            id,
            destination: destination.to_string(),
            ack,
            messages,
            client: self.clone(),
            active: true,
        };
        // On failure the dropped subscription removes its route again.
        self.request_with_receipt(frame).await?.await?;
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
        self.request(Frame::new(Command::Begin).header("transaction", tx)).await
    }

    /// Commits transaction `tx` and waits for the RECEIPT: its sends and acks are then
    /// applied (and durable, all or nothing).
    pub async fn commit(&self, tx: &str) -> Result<(), ClientError> {
        self.request_with_receipt(Frame::new(Command::Commit).header("transaction", tx)).await?.await
    }

    /// Aborts transaction `tx`, discarding its sends and acks; waits for the RECEIPT.
    pub async fn abort(&self, tx: &str) -> Result<(), ClientError> {
        self.request_with_receipt(Frame::new(Command::Abort).header("transaction", tx)).await?.await
    }

    /// Disconnects gracefully: DISCONNECT with a receipt, which the broker sends after
    /// finishing everything sent before it. Then the connection is closed for every
    /// clone; subscriptions still yield what they had buffered. Calling it again is a
    /// no-op.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        if let Some(CloseReason::Disconnected) = self.inner.router.close_reason() {
            return Ok(());
        }
        self.inner.router.begin_disconnect();
        let result = match self.request_with_receipt(Frame::new(Command::Disconnect)).await {
            Ok(receipt) => receipt.await,
            Err(e) => Err(e),
        };
        self.inner.router.close(CloseReason::Disconnected);
        result
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a frame for the writer; waits only while the outbox is full.
    async fn request(&self, frame: Frame) -> Result<(), ClientError> {
        self.inner.router.check_open()?;
        if self.inner.outbox.send(frame).await.is_err() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Queues a frame with a fresh `receipt` header and returns the future of its RECEIPT.
    async fn request_with_receipt(&self, frame: Frame) -> Result<ReceiptFuture, ClientError> {
        let id = self.next_id().to_string();
        let command = frame.command;
        let answer = self.inner.router.register_receipt(id.clone())?;
        if let Err(e) = self.request(frame.header("receipt", id.as_str())).await {
            self.inner.router.forget_receipt(&id);
            return Err(e);
        }
        Ok(ReceiptFuture {
            deadline: Box::pin(tokio::time::sleep(self.inner.receipt_timeout)),
            timeout: self.inner.receipt_timeout,
            router: Arc::clone(&self.inner.router),
            answer,
            command,
            id,
        })
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
        if let Some(tx) = options.transaction {
            frame = frame.header("transaction", tx);
        }
        if options.receipt {
            self.request_with_receipt(frame).await?.await
        } else {
            self.request(frame).await
        }
    }

    fn closed_error(&self) -> ClientError {
        self.inner.router.close_reason().map_or(ClientError::Closed, |r| r.to_error())
    }
}

fn send_frame(destination: &str, body: Bytes, options: SendOptions) -> Frame {
    let mut frame = Frame::new(Command::Send).header("destination", destination);
    if options.persistent {
        frame = frame.header("persistent", "true");
    }
    if let Some(tx) = options.transaction {
        frame = frame.header("transaction", tx);
    }
    frame.headers.extend(options.headers);
    frame.with_body(body)
}

/// The pending RECEIPT of one request. Resolves to `Ok` when the broker confirms, to the
/// broker's error if the connection fails first, or to [`ClientError::Timeout`] after the
/// client's receipt timeout.
#[must_use = "a receipt confirms nothing until awaited"]
pub struct ReceiptFuture {
    id: String,
    command: Command,
    answer: oneshot::Receiver<Result<(), ClientError>>,
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
        self.client.inner.router.remove_subscription(&self.id);
        let frame = Frame::new(Command::Unsubscribe).header("id", self.id.as_str());
        self.client.request_with_receipt(frame).await?.await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let router = &self.client.inner.router;
        router.remove_subscription(&self.id);
        if router.check_open().is_ok() {
            // Best effort: with a full outbox the broker learns at disconnect instead.
            let _ = self.client.inner.outbox.try_send(Frame::new(Command::Unsubscribe).header("id", self.id.as_str()));
        }
    }
}
