//! One AMQP client connection: SASL and open (fe2o3's acceptor), then its sessions and
//! their links, each link a task of its own.
//!
//! A link from a client (the client sends) is a receiver here: each transfer is handed to
//! `Broker::accept` as it arrives and settled, in order, once durable (`accepted`) or
//! refused (`rejected` with the reason); credit is granted again as transfers are settled.
//! A link to a client is an engine consumer of the queue (or a subscription queue of the
//! topic): deliveries wait for the client's credit, and its dispositions settle them
//! (`accepted`: ack; `released`, `modified`, `rejected`: nack, so the redelivery and
//! dead-letter rules apply as for a STOMP NACK). A link that ends, or a connection that
//! drops, returns whatever it had unsettled to the queue, redelivered.
//!
//! A receiving link whose source is durable on a topic attaches to the durable
//! subscription named by the connection's container-id (Qpid JMS's ClientID) and the
//! link name, as a STOMP SUBSCRIBE with `client-id` and a subscription name does: it
//! keeps the topic's messages while detached, and a link the client closes (Qpid JMS's
//! unsubscribe, which attaches by name without a source) removes it.

use super::outbox::Outbox;
use super::{address, message, sasl, AmqpError};
use crate::engine::accept::{AcceptError, Commit, Durable};
use crate::engine::message::{ConsumerKey, Delivery};
use crate::engine::queue::{AckMode, ConsumerHandle, Outbound, Queue};
use crate::engine::{Broker, Target, Topic};
use crate::report::error_chain;
use crate::security::{Permission, Principal};
use crate::server::connection::{split, ConnectionContext, ReadHalf};
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle, ListenerSessionHandle, SessionAcceptor,
    SupportedReceiverSettleModes,
};
use fe2o3_amqp::connection::OpenError;
use fe2o3_amqp::link::delivery::{Delivery as Transfer, DeliveryInfo};
use fe2o3_amqp::link::{DetachError, DispositionError, Receiver, RecvError, Sender};
use fe2o3_amqp::types::definitions::{self, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Body, Outcome};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::types::sasl::SaslCode;
use fe2o3_amqp::Sendable;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use crate::tls::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Transfers accepted from one link but not yet durable before the link stops reading.
const MAX_PENDING: usize = 4096;
/// How long a link's or connection's closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a link that ended waits for dispositions already sent by its client.
const SETTLE_GRACE: Duration = Duration::from_millis(500);

/// What every link of a connection shares.
#[derive(Clone)]
struct Client {
    ctx: ConnectionContext,
    peer: SocketAddr,
    principal: Principal,
    /// The container-id of the client's open (Qpid JMS: the JMS ClientID), which names
    /// its durable subscriptions with the link name.
    container: Option<Arc<str>>,
    /// Cancelled when the connection ends: its links stop.
    gone: CancellationToken,
}

/// Serves one client from its first byte to its close.
pub async fn serve(stream: Stream, peer: SocketAddr, ctx: ConnectionContext) {
    let _ = stream.tcp().set_nodelay(true);
    let broker = Arc::clone(&ctx.broker);
    let metrics = ctx.metrics.amqp.clone();
    // A verified client certificate that auth.certificateUsers maps proves its user
    // (SASL EXTERNAL), as it does on STOMP.
    let certificate_user = stream.peer_common_name().and_then(|cn| broker.config.auth.certificate_users.get(&cn).cloned());
    let sasl = sasl::BrokerSasl::new(broker.users(), broker.config.auth.allow_anonymous, certificate_user);
    let outcome = Arc::clone(&sasl.outcome);
    let cfg = &broker.config.amqp;
    let idle = cfg.idle_timeout.get();
    let mut acceptor = ConnectionAcceptor::builder()
        .container_id(broker.node_id.clone())
        .max_frame_size(cfg.max_frame_size.0 as u32)
        // JMS 2 delivery delay (x-opt-delivery-time / -delay annotations, see `message`).
        .add_offered_capabilities("DELAYED_DELIVERY")
        .sasl_acceptor(sasl)
        .build();
    if !idle.is_zero() {
        acceptor.local_open.idle_time_out = Some(idle.as_millis() as u32);
    }
    let connect_timeout = broker.config.stomp.connect_timeout.get();
    let (stream, opening) = Tap::new(stream);
    let accepted = tokio::select! {
        r = tokio::time::timeout(connect_timeout, acceptor.accept(stream)) => r,
        _ = ctx.shutdown.cancelled() => return,
    };
    let mut connection = match accepted {
        Ok(Ok(c)) => c,
        Ok(Err(OpenError::SaslError { code: SaslCode::Auth, .. })) => {
            metrics.refused("authentication");
            let who = match outcome.lock().take() {
                Some(sasl::Outcome::Refused(login)) => login,
                _ => String::new(),
            };
            tracing::info!(%peer, login = %who, "refused AMQP connection: authentication failed");
            return;
        }
        Ok(Err(e)) => {
            metrics.refused("protocol");
            tracing::info!(%peer, error = %e, "refused AMQP connection");
            return;
        }
        Err(_) => {
            metrics.refused("timeout");
            tracing::debug!(%peer, ?connect_timeout, "AMQP client did not open in time");
            return;
        }
    };
    let user = match outcome.lock().take() {
        Some(sasl::Outcome::User(user)) => user,
        // fe2o3 does not let an open through without a SASL outcome ok.
        _ => String::new(),
    };
    metrics.opened.inc();
    metrics.connections.inc();
    ctx.metrics.connections_total.inc();
    tracing::debug!(%peer, user = %user, "AMQP client connected");
    let container = opening.container_id().map(Arc::from);
    let client = Client {
        container,
        principal: broker.authorizer().principal(&user),
        ctx: ctx.clone(),
        peer,
        gone: CancellationToken::new(),
    };
    let drain_started = broker.drain.started();
    tokio::pin!(drain_started);
    loop {
        tokio::select! {
            incoming = connection.next_incoming_session() => match incoming {
                Some(incoming) => match SessionAcceptor::new().accept_incoming_session(incoming, &mut connection).await {
                    Ok(session) => {
                        tokio::spawn(serve_session(session, client.clone()));
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "AMQP session not begun"),
                },
                None => break,
            },
            _ = ctx.shutdown.cancelled() => {
                close(&mut connection, AmqpError::Shutdown.to_amqp()).await;
                break;
            }
            _ = &mut drain_started => {
                let refusal = crate::engine::drain::refusal(broker.group_name());
                let error = definitions::Error::new(definitions::ConnectionError::ConnectionForced, Some(refusal), None);
                close(&mut connection, error).await;
                break;
            }
        }
    }
    use fe2o3_amqp::connection::Error as Closed;
    match tokio::time::timeout(CLOSE_TIMEOUT, connection.on_close()).await {
        Ok(Ok(()) | Err(Closed::RemoteClosed)) | Err(_) => {
            tracing::debug!(%peer, "AMQP client connection closed")
        }
        // Gone without a close (the process ended, the network dropped).
        Ok(Err(Closed::TransportError(fe2o3_amqp::transport::Error::Io(e)))) => {
            tracing::debug!(%peer, error = %e, "AMQP client connection dropped")
        }
        Ok(Err(Closed::TransportError(fe2o3_amqp::transport::Error::IdleTimeoutElapsed))) => {
            broker.metrics.limit_hit(crate::engine::metrics::Limit::Idle);
            tracing::info!(%peer, idle = ?broker.config.amqp.idle_timeout.get(), "closed an idle AMQP connection (amqp.idleTimeout)")
        }
        Ok(Err(e)) => {
            ctx.metrics.protocol_errors.inc();
            tracing::info!(%peer, error = %e, "AMQP connection closed after an error");
        }
    }
    client.gone.cancel();
    metrics.connections.dec();
}

async fn close(connection: &mut ListenerConnectionHandle, error: definitions::Error) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close_with_error(error)).await;
}

/// Accepts the links of one session until it ends.
async fn serve_session(mut session: ListenerSessionHandle, client: Client) {
    loop {
        let attach = tokio::select! {
            a = session.next_incoming_attach() => match a {
                Some(a) => a,
                None => break,
            },
            _ = client.gone.cancelled() => break,
        };
        attach_link(&mut session, attach, &client).await;
    }
}

/// What a link attach asks for, checked before it is answered.
struct Plan {
    destination: String,
    /// The client sends (its role is sender); else it receives.
    inbound: bool,
    /// The client receives pre-settled deliveries (at most once).
    presettled: bool,
    /// Takes only what this selects (a JMS selector filter on the source).
    selector: Option<crate::selector::Selector>,
    /// The durable subscription (client container-id, link name) it attaches to.
    durable: Option<(Arc<str>, String)>,
}

fn plan(attach: &Attach, client: &Client) -> Result<Plan, AmqpError> {
    let inbound = attach.role == Role::Sender;
    let destination = if inbound {
        let target = attach.target.as_deref();
        let Some(fe2o3_amqp::types::messaging::TargetArchetype::Target(target)) = target else {
            return Err(AmqpError::NotImplemented("a coordinator target (transactions)"));
        };
        if target.dynamic {
            return Err(AmqpError::NotImplemented("a dynamic (temporary) target"));
        }
        address::destination(target.address.as_deref(), target.capabilities.as_ref())?
    } else {
        let Some(source) = attach.source.as_deref() else {
            // Qpid JMS's unsubscribe: a link of the subscription's name without a source,
            // closed at once.
            return existing_durable(attach, client);
        };
        if source.dynamic {
            return Err(AmqpError::NotImplemented("a dynamic (temporary) source"));
        }
        if source.distribution_mode == Some(fe2o3_amqp::types::messaging::DistributionMode::Copy) {
            return Err(AmqpError::NotImplemented("browsing (distribution-mode copy)"));
        }
        if let Some(what) = address::unsupported_capability(source.capabilities.as_ref()) {
            return Err(AmqpError::NotImplemented(what));
        }
        let destination = address::destination(source.address.as_deref(), source.capabilities.as_ref())?;
        destination
    };
    let durable = match attach.source.as_deref().filter(|_| !inbound) {
        Some(s) if s.durable != fe2o3_amqp::types::messaging::TerminusDurability::None && destination.starts_with("/topic/") => {
            let container = client.container.clone().ok_or_else(|| {
                AmqpError::Durable(crate::engine::durable::DurableError::NoClientId { name: attach.name.clone() })
            })?;
            Some((container, attach.name.clone()))
        }
        _ => None,
    };
    let selector = match attach.source.as_deref().and_then(|s| s.filter.as_ref()).filter(|_| !inbound) {
        Some(filters) => match selector_text(filters)? {
            Some(text) => Some(client.ctx.broker.selector(text)?),
            None => None,
        },
        None => None,
    };
    let permission = if inbound { Permission::Send } else { Permission::Consume };
    authorize(&client.ctx.broker, &client.principal, &destination, permission)?;
    Ok(Plan { destination, inbound, presettled: !inbound && attach.snd_settle_mode == SenderSettleMode::Settled, selector, durable })
}

/// A receiving link without a source naming a durable subscription of this client: it
/// attaches to that subscription (its topic and selector), so closing it removes it.
fn existing_durable(attach: &Attach, client: &Client) -> Result<Plan, AmqpError> {
    let container = client.container.clone().ok_or(AmqpError::NoAddress)?;
    let sub = client.ctx.broker.durable_subscription(&container, &attach.name).ok_or(AmqpError::NoAddress)?;
    let destination = sub.topic.name.to_string();
    authorize(&client.ctx.broker, &client.principal, &destination, Permission::Consume)?;
    Ok(Plan {
        destination,
        inbound: false,
        presettled: attach.snd_settle_mode == SenderSettleMode::Settled,
        selector: sub.selector.clone(),
        durable: Some((container, attach.name.clone())),
    })
}

/// The JMS selector among a source's filters (`apache.org:selector-filter:string`, as Qpid
/// JMS and Proton send it); any other filter is refused.
fn selector_text(filters: &fe2o3_amqp::types::messaging::FilterSet) -> Result<Option<&str>, AmqpError> {
    use serde_amqp::descriptor::Descriptor;
    let mut selector = None;
    for value in filters.values() {
        let Value::Described(described) = value else {
            return Err(AmqpError::NotImplemented("a source filter other than a JMS selector"));
        };
        let is_selector = match &described.descriptor {
            Descriptor::Name(name) => name.as_str() == SELECTOR_FILTER,
            Descriptor::Code(code) => *code == SELECTOR_FILTER_CODE,
        };
        match (&described.value, is_selector) {
            (Value::String(text), true) => selector = Some(text.as_str()).filter(|t| !t.trim().is_empty()),
            _ => return Err(AmqpError::NotImplemented("a source filter other than a JMS selector")),
        }
    }
    Ok(selector)
}

/// The described type of a JMS selector filter (the Apache filter registry).
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
const SELECTOR_FILTER_CODE: u64 = 0x0000_468C_0000_0004;

/// Whether the client may do `permission` on `destination` (and create it when the broker
/// does not hold it yet), as STOMP checks a SEND or SUBSCRIBE.
fn authorize(broker: &Broker, principal: &Principal, destination: &str, permission: Permission) -> Result<(), AmqpError> {
    let authorizer = broker.authorizer();
    if authorizer.is_open() {
        return Ok(());
    }
    let held = broker.holds(destination)?;
    let mut result = authorizer.check(principal, destination, permission);
    if result.is_ok() && !held {
        result = authorizer.check(principal, destination, Permission::Create);
    }
    result.map_err(|denied| {
        broker.metrics.authorization_denied(denied.permission);
        AmqpError::NotAuthorized(Box::new(denied))
    })
}

/// Answers an attach: a link task when the plan holds, else an attach followed at once by
/// a detach carrying the reason.
async fn attach_link(session: &mut ListenerSessionHandle, attach: Attach, client: &Client) {
    let peer = client.peer;
    let planned = plan(&attach, client);
    let max_message = client.ctx.broker.config.stomp.max_body_bytes.0;
    let acceptor = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .max_message_size(max_message)
        // The terminus is checked here (plan), not by fe2o3's comparison of both copies.
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build();
    let name = attach.name.clone();
    let endpoint = match acceptor.accept_incoming_attach(attach, session).await {
        Ok(endpoint) => endpoint,
        Err(e) => {
            client.ctx.metrics.amqp.links_refused.inc();
            tracing::debug!(%peer, link = %name, error = ?e, "AMQP link not attached");
            return;
        }
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(refusal) => {
            client.ctx.metrics.amqp.links_refused.inc();
            tracing::debug!(%peer, link = %name, reason = %refusal, "AMQP link refused");
            let error = refusal.to_amqp();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                match endpoint {
                    LinkEndpoint::Sender(s) => drop(s.close_with_error(error).await),
                    LinkEndpoint::Receiver(r) => drop(r.close_with_error(error).await),
                }
            })
            .await;
            return;
        }
    };
    tracing::debug!(%peer, link = %name, destination = %plan.destination, inbound = plan.inbound, presettled = plan.presettled, "AMQP link attached");
    let client = client.clone();
    match endpoint {
        LinkEndpoint::Receiver(receiver) if plan.inbound => {
            tokio::spawn(receive(receiver, plan.destination, client));
        }
        LinkEndpoint::Sender(sender) if !plan.inbound => {
            tokio::spawn(deliver(sender, name, plan, client));
        }
        // fe2o3 answers a sender's attach with a receiver and the other way round.
        _ => {}
    }
}

type Accepting = BoxFuture<'static, (DeliveryInfo, Result<Durable, AcceptError>)>;

/// A link from the client: its transfers into the broker, each settled once durable.
/// Outcomes that fall due together (one group commit made their transfers durable) go out
/// as one disposition per run of consecutive deliveries, not one frame each.
///
/// A transfer goes to the journal's writer thread (group commit), except a lone one of the
/// only producer link of the listener: when no earlier transfer of the link is still on
/// its way to disk and no later one has arrived yet (read ahead without waiting), the
/// producer waits for this one alone (a credit-1 producer, or the last of a burst), and
/// nothing could share its group commit. It is then committed on this thread when the
/// journal is idle ([`Commit::Inline`], as a STOMP SEND that is the last frame read),
/// which saves the hand-offs to the writer thread and back. With several producer links
/// every transfer goes to the writer thread: their transfers often reach an idle journal
/// one at a time, and one committed inline holds a runtime worker through its fdatasync
/// while the others wait (four credit-1 producers lost a quarter of their rate).
async fn receive(mut receiver: Receiver, destination: String, client: Client) {
    let broker = Arc::clone(&client.ctx.broker);
    let metrics = Arc::clone(&client.ctx.metrics);
    metrics.amqp.links.inc();
    let producers = Arc::clone(&client.ctx.amqp_producers);
    producers.fetch_add(1, Ordering::Relaxed);
    let mut pending: FuturesOrdered<Accepting> = FuturesOrdered::new();
    // A transfer read ahead (fe2o3's recv is cancel-safe), handled before waiting again.
    let mut ahead: Option<Result<Transfer<Body<Value>>, RecvError>> = None;
    let end = loop {
        let event = match ahead.take() {
            Some(read) => read.map(Ok),
            None => tokio::select! {
                biased;
                Some(done) = pending.next(), if !pending.is_empty() => Ok(Err(done)),
                d = receiver.recv::<Body<Value>>(), if pending.len() < MAX_PENDING => d.map(Ok),
                _ = client.gone.cancelled() => break None,
                _ = client.ctx.shutdown.cancelled() => break None,
            },
        };
        match event {
            Ok(Err(done)) => {
                if settle_due(&receiver, &mut pending, done, &client, &destination).await.is_err() {
                    break None;
                }
            }
            Ok(Ok(delivery)) => {
                if pending.len() + 1 < MAX_PENDING {
                    ahead = receiver.recv::<Body<Value>>().now_or_never();
                }
                let alone = producers.load(Ordering::Relaxed) == 1;
                let commit = if alone && ahead.is_none() && pending.is_empty() { Commit::Inline } else { Commit::Grouped };
                let (info, msg) = delivery.into_parts();
                let refused = match message::incoming(&destination, msg) {
                    Ok(incoming) => {
                        let size = incoming.body.len() as u64;
                        match broker.accept(incoming, commit).await {
                            Ok(acceptance) => {
                                if acceptance.blocked() {
                                    metrics.producer_blocked.inc();
                                }
                                if !acceptance.is_duplicate() {
                                    metrics.messages_in.inc();
                                    metrics.amqp.messages_in.inc();
                                    metrics.bytes_in.inc_by(size);
                                }
                                pending.push_back(Box::pin(async move { (info, acceptance.await) }));
                                None
                            }
                            Err(e) => Some((info, AmqpError::from(e))),
                        }
                    }
                    Err(e) => Some((info, e)),
                };
                if let Some((info, e)) = refused {
                    tracing::info!(peer = %client.peer, %destination, error = %e, "AMQP transfer refused");
                    if receiver.reject(info, e.to_amqp()).await.is_err() {
                        break None;
                    }
                }
            }
            Err(e) => break Some(e),
        }
    };
    // Accepted transfers still in the journal's hands are published all the same (an
    // Acceptance dropped publishes once durable); their client learns nothing of them.
    drop(pending);
    match end {
        Some(e) => tracing::debug!(peer = %client.peer, %destination, reason = %e, "AMQP sending link ended"),
        None => tracing::debug!(peer = %client.peer, %destination, "AMQP sending link stopped"),
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await;
    producers.fetch_sub(1, Ordering::Relaxed);
    metrics.amqp.links.dec();
}

/// Settles `first` and every outcome already due behind it, in order: accepted ones in
/// one disposition per run of consecutive deliveries, a refused one rejected with its
/// reason.
///
/// Accepted messages are published (made visible to consumers) only once their
/// disposition is handed to fe2o3, not before: the producer's next transfer waits for that
/// disposition, while the delivery to a consumer does not hold anyone up, so it should not
/// get ahead of it on the runtime. 1P+1C credit 1 on tmpfs: +6 % by median over 5
/// interleaved rounds. A message whose disposition could not be sent is published all the
/// same (a [`Durable`] dropped publishes).
async fn settle_due(
    receiver: &Receiver,
    pending: &mut FuturesOrdered<Accepting>,
    first: (DeliveryInfo, Result<Durable, AcceptError>),
    client: &Client,
    destination: &str,
) -> Result<(), DispositionError> {
    let mut accepted = Vec::new();
    let mut durable = Vec::new();
    let mut next = Some(first);
    while let Some((info, result)) = next {
        match result {
            Ok(d) => {
                durable.push(d);
                accepted.push(info);
            }
            Err(e) => {
                // Those before it first, so the client learns outcomes in order.
                let sent = receiver.accept_all(std::mem::take(&mut accepted)).await;
                publish_all(&mut durable);
                sent?;
                tracing::info!(peer = %client.peer, %destination, error = %error_chain(&e), "AMQP transfer refused");
                receiver.reject(info, AmqpError::from(e).to_amqp()).await?;
            }
        }
        next = pending.next().now_or_never().flatten();
    }
    let sent = receiver.accept_all(accepted).await;
    publish_all(&mut durable);
    sent
}

/// Makes durable messages visible to consumers, in the order they were accepted.
fn publish_all(durable: &mut Vec<Durable>) {
    for d in durable.drain(..) {
        d.publish();
    }
}

/// Where a receiving link takes its messages from.
struct Source {
    queue: Arc<Queue>,
    /// A topic's subscription queue, removed with the link.
    topic: Option<Arc<Topic>>,
    /// The durable subscription consumed, released (kept) with the link.
    durable: Option<Arc<crate::engine::durable::DurableSubscription>>,
    key: ConsumerKey,
}

impl Source {
    /// A topic's subscription queue selects the copies it gets; a queue's consumer selects
    /// what it takes (as for a STOMP SUBSCRIBE).
    /// A durable subscription's queue keeps what its selector selects; a new one is
    /// attached once its definition is durable.
    async fn attach(
        broker: &Broker,
        plan: &Plan,
        handle: impl FnOnce(ConsumerKey, Option<crate::selector::Selector>) -> ConsumerHandle,
    ) -> Result<Source, AmqpError> {
        let selector = plan.selector.clone();
        let key = broker.next_consumer_key();
        let (queue, topic, durable, selector) = match (broker.resolve(&plan.destination)?, &plan.durable) {
            (Target::Queue(q), _) => (q, None, None, selector),
            (Target::Topic(t), Some((container, name))) => {
                let (sub, definition) = broker.durable_subscribe(container, name, &t, selector.as_ref(), key)?;
                if let Some(write) = definition {
                    if let Err(e) = write.await {
                        sub.release(key);
                        return Err(AmqpError::Accept(AcceptError::Persist(e)));
                    }
                }
                (Arc::clone(&sub.queue), None, Some(sub), None)
            }
            (Target::Topic(t), None) => (broker.subscribe_topic_selecting(&t, selector), Some(t), None, None),
        };
        queue.add_consumer(handle(key, selector));
        Ok(Source { queue, topic, durable, key })
    }

    /// Removes the consumer: what it had unsettled goes back to the queue, redelivered.
    /// A durable subscription stays (released for another consumer) unless `closed`: a
    /// link closed by its client (not merely detached) removes it, as Qpid JMS's
    /// unsubscribe does.
    async fn detach(self, broker: &Broker, closed: bool) {
        self.queue.remove_consumer(self.key);
        if let Some(topic) = &self.topic {
            broker.unsubscribe_topic(topic, &self.queue);
        }
        if let Some(sub) = &self.durable {
            sub.release(self.key);
            if closed {
                match broker.durable_unsubscribe(&sub.client_id, &sub.name) {
                    Ok(write) => {
                        if let Err(e) = write.await {
                            tracing::warn!(client_id = %sub.client_id, name = %sub.name, error = %error_chain(&e), "durable subscription removal not journaled");
                        }
                    }
                    Err(e) => tracing::debug!(client_id = %sub.client_id, name = %sub.name, error = %e, "durable subscription not removed"),
                }
            }
        }
    }
}

/// What a delivery's settlement says.
type Settling = BoxFuture<'static, (u64, Option<Outcome>)>;

/// The engine prefetch of a link to the client (the messages the engine lets it hold
/// unsettled), as far as sending shows the client's credit: fe2o3 does not show a sender
/// its credit. It starts at one; when a delivery goes through and the link holds as many
/// as the prefetch allows, the prefetch doubles (up to `stomp.defaultPrefetch`); when a
/// delivery has to wait for credit, it shrinks to what the link holds. So the broker holds
/// about as much as the client's credit lets through, and a consumer without credit does
/// not keep messages from the others. The link counts what it holds itself and the engine
/// hears of the prefetch only when it changes: no queue lock per delivery. Pure: [`deliver`]
/// applies what it returns.
#[derive(Debug)]
struct Window {
    /// Deliveries taken from the engine and not yet settled.
    held: usize,
    /// The prefetch the engine has.
    limit: usize,
    cap: usize,
}

impl Window {
    fn new(cap: usize) -> Window {
        Window { held: 0, limit: 1, cap: cap.max(1) }
    }

    /// A delivery came from the engine.
    fn taken(&mut self) {
        self.held += 1;
    }

    /// A delivery was settled (by the client, or at once for a pre-settled one).
    fn settled(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// A delivery has to wait for credit: the new prefetch, if it changed.
    fn out_of_credit(&mut self) -> Option<usize> {
        self.set(self.held.max(1))
    }

    /// A delivery went through: the new prefetch, if it changed.
    fn sent(&mut self) -> Option<usize> {
        if self.held < self.limit {
            return None;
        }
        self.set((self.limit * 2).max(self.held + 1).min(self.cap))
    }

    fn set(&mut self, limit: usize) -> Option<usize> {
        (limit != self.limit).then(|| {
            self.limit = limit;
            limit
        })
    }
}

/// A link to the client: an engine consumer whose deliveries wait for the client's credit,
/// its prefetch a [`Window`] on that credit.
async fn deliver(mut sender: Sender, name: String, plan: Plan, client: Client) {
    let broker = Arc::clone(&client.ctx.broker);
    let metrics = Arc::clone(&client.ctx.metrics);
    let (outbox, mut deliveries) = mpsc::unbounded_channel();
    let kill = client.gone.child_token();
    let cap = (broker.config.stomp.default_prefetch as usize).max(1);
    let mode = if plan.presettled { AckMode::Auto } else { AckMode::ClientIndividual };
    let source = match Source::attach(&broker, &plan, |key, selector| ConsumerHandle {
        key,
        subscription_id: Arc::from(name.as_str()),
        ack_mode: mode,
        prefetch: 1,
        outbox,
        kill: kill.clone(),
        selector,
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            metrics.amqp.links_refused.inc();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(e.to_amqp())).await;
            return;
        }
    };
    metrics.amqp.links.inc();
    let mut window = Window::new(cap);
    let mut settling: FuturesUnordered<Settling> = FuturesUnordered::new();
    let mut error = None;
    // How the client ended the link: detached (Some(false)) or closed (Some(true)).
    let mut remote_end: Option<bool> = None;
    loop {
        enum Event {
            Delivery(Option<Outbound>),
            Settled(u64, Option<Outcome>),
            /// Whether the client closed the link (not merely detached it).
            Detached(bool),
            Stop,
        }
        let event = tokio::select! {
            biased;
            Some((tag, outcome)) = settling.next(), if !settling.is_empty() => Event::Settled(tag, outcome),
            item = deliveries.recv() => Event::Delivery(item),
            e = sender.on_detach() => Event::Detached(matches!(e, DetachError::ClosedByRemote | DetachError::RemoteClosedWithError(_))),
            _ = kill.cancelled() => Event::Stop,
            _ = client.ctx.shutdown.cancelled() => Event::Stop,
        };
        match event {
            Event::Delivery(Some(Outbound::Deliver(d))) => {
                window.taken();
                let sendable = Sendable::builder().message(message::outgoing(&d)).settled(plan.presettled).build();
                let size = d.entry.message.body.len() as u64;
                let sending = sender.send_batchable(sendable);
                tokio::pin!(sending);
                let sent = match futures::poll!(&mut sending) {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => {
                        // Out of credit: hold no more than is in flight until the client grants more.
                        if let Some(limit) = window.out_of_credit() {
                            source.queue.set_prefetch(source.key, limit);
                        }
                        let sent = loop {
                            tokio::select! {
                                biased;
                                r = &mut sending => break r,
                                Some((tag, outcome)) = settling.next(), if !settling.is_empty() => {
                                    window.settled();
                                    if let Some(outcome) = outcome {
                                        settle_outcome(&broker, &source, tag, &outcome);
                                    }
                                }
                            }
                        };
                        sent
                    }
                };
                match sent {
                    Ok(settled) => {
                        metrics.messages_out.inc();
                        metrics.amqp.messages_out.inc();
                        metrics.bytes_out.inc_by(size);
                        if d.auto_ack {
                            settle_presettled(&broker, &d);
                            window.settled();
                        } else {
                            let tag = d.tag;
                            settling.push(Box::pin(async move { (tag, settled.await.ok()) }));
                        }
                        if let Some(limit) = window.sent() {
                            source.queue.set_prefetch(source.key, limit);
                        }
                    }
                    // The link or connection is gone: the delivery goes back with the rest.
                    Err(e) => {
                        tracing::debug!(peer = %client.peer, link = %name, error = %e, "AMQP delivery not sent");
                        break;
                    }
                }
            }
            Event::Delivery(Some(Outbound::Frame(frame))) => {
                // The engine cuts a consumer off (a slow topic subscriber, a deleted queue).
                let reason = frame.get("message").unwrap_or("consumer removed by the broker").to_string();
                error = Some(definitions::Error::new(definitions::LinkError::DetachForced, Some(reason), None));
                break;
            }
            Event::Detached(was_closed) => {
                remote_end = Some(was_closed);
                break;
            }
            Event::Delivery(Some(Outbound::Close) | None) | Event::Stop => break,
            Event::Settled(tag, outcome) => {
                window.settled();
                if let Some(outcome) = outcome {
                    settle_outcome(&broker, &source, tag, &outcome);
                }
            }
        }
    }
    // Dispositions the client sent just before it went may still be on their way through
    // the session: settle what arrives within a moment, return the rest to the queue.
    // Meanwhile the consumer takes nothing more, and a durable subscription is free for
    // the client's next link at once (a reconnecting client attaches again).
    source.queue.set_prefetch(source.key, 0);
    if let Some(sub) = &source.durable {
        sub.release(source.key);
    }
    let grace = tokio::time::Instant::now() + SETTLE_GRACE;
    while let Ok(Some((tag, outcome))) = tokio::time::timeout_at(grace, settling.next()).await {
        if let Some(outcome) = outcome {
            settle_outcome(&broker, &source, tag, &outcome);
        }
    }
    source.detach(&broker, remote_end == Some(true)).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        // A detach or close by the client was answered by fe2o3 already.
        match error {
            Some(e) => drop(sender.close_with_error(e).await),
            None => drop(sender.close().await),
        }
    })
    .await;
    metrics.amqp.links.dec();
    tracing::debug!(peer = %client.peer, link = %name, destination = %plan.destination, "AMQP receiving link ended");
}

/// A pre-settled delivery counts as acknowledged once sent, as a STOMP auto-ack one once
/// written.
fn settle_presettled(broker: &Arc<Broker>, d: &Delivery) {
    if let Ok(settled) = broker.settle(&d.queue, d.consumer, d.tag, false, false) {
        broker.acknowledge_lazy(settled);
    }
}

/// The client's disposition of delivery `tag`: accepted is an ACK, the others a NACK
/// (back to the queue, redelivered, dead-lettered after `maxDeliveryAttempts`).
fn settle_outcome(broker: &Arc<Broker>, source: &Source, tag: u64, outcome: &Outcome) {
    let nack = !matches!(outcome, Outcome::Accepted(_));
    match broker.settle(&source.queue, source.key, tag, false, nack) {
        Ok(settled) => broker.acknowledge_lazy(settled),
        Err(e) => tracing::debug!(queue = %source.queue.name, tag, error = %e, "AMQP disposition for nothing in flight"),
    }
}

/// A client's stream, with the first bytes it sends kept (up to [`Tap::KEEP`]) so the
/// container-id of its open can be read once fe2o3 has accepted it (fe2o3's acceptor does
/// not show the remote open). What fe2o3 writes goes through an [`Outbox`]: the frames it
/// writes and flushes one by one leave in one write when several are ready.
struct Tap {
    read: ReadHalf,
    write: Outbox,
    /// `None` once the opening was read: nothing more is kept.
    seen: Arc<parking_lot::Mutex<Option<Vec<u8>>>>,
    /// Set with `seen` taken, so reads after the opening take no lock.
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("write", &self.write).finish_non_exhaustive()
    }
}

/// The bytes a [`Tap`] kept.
struct Opening {
    seen: Arc<parking_lot::Mutex<Option<Vec<u8>>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Tap {
    /// SASL frames and an open are a few hundred bytes.
    const KEEP: usize = 16 * 1024;

    /// The tap over `stream`, with its writer task spawned.
    fn new(stream: Stream) -> (Tap, Opening) {
        let (read, write) = split(stream);
        let (write, writer) = Outbox::new(write);
        tokio::spawn(writer);
        let seen = Arc::new(parking_lot::Mutex::new(Some(Vec::new())));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (Tap { read, write, seen: Arc::clone(&seen), done: Arc::clone(&done) }, Opening { seen, done })
    }
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.read).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            if !self.done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(seen) = self.seen.lock().as_mut().filter(|s| s.len() < Tap::KEEP) {
                    let new = &buf.filled()[before..];
                    let room = Tap::KEEP - seen.len();
                    seen.extend_from_slice(&new[..new.len().min(room)]);
                }
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

impl Opening {
    /// The container-id of the client's open, decoded by fe2o3's types.
    /// Keeping stops here.
    fn container_id(&self) -> Option<String> {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = self.seen.lock().take()?;
        open_container_id(&seen)
    }
}

/// Finds the open in what a client sent first: protocol headers (8 bytes each) and the
/// SASL frames between them, then the first AMQP frame, whose body is the open.
fn open_container_id(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    loop {
        let rest = bytes.get(at..)?;
        if rest.starts_with(b"AMQP") {
            let sasl = *rest.get(4)? == 3;
            at += 8;
            if !sasl {
                break;
            }
            continue;
        }
        // A SASL frame: skip it.
        let size = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        at += size.max(8);
    }
    let frame = bytes.get(at..)?;
    let size = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let doff = usize::from(*frame.get(4)?) * 4;
    let body = frame.get(doff..size)?;
    let open: fe2o3_amqp::types::performatives::Open = serde_amqp::from_slice(body).ok()?;
    Some(open.container_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::FilterSet;
    use fe2o3_amqp::types::primitives::Symbol;
    use serde_amqp::descriptor::Descriptor;
    use serde_amqp::described::Described;

    fn filters(descriptor: Descriptor, value: Value) -> FilterSet {
        let mut f = FilterSet::new();
        f.insert(Symbol::from("jms-selector"), Value::Described(Box::new(Described { descriptor, value })));
        f
    }

    #[test]
    fn given_sasl_and_open_bytes_should_read_the_container_id() {
        use fe2o3_amqp::types::performatives::Open;
        let open = Open {
            container_id: "client-7".into(),
            hostname: None,
            max_frame_size: 4096.into(),
            channel_max: 16.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let body = serde_amqp::to_vec(&open).unwrap();
        let mut bytes = b"AMQP\x03\x01\x00\x00".to_vec();
        let init = b"\x00\x53\x41\xc0\x0c\x01\xa3\x09ANONYMOUS";
        bytes.extend_from_slice(&((8 + init.len()) as u32).to_be_bytes());
        bytes.extend_from_slice(&[2, 1, 0, 0]);
        bytes.extend_from_slice(init);
        bytes.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        bytes.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        bytes.extend_from_slice(&[2, 0, 0, 0]);
        bytes.extend_from_slice(&body);
        assert_eq!(open_container_id(&bytes).as_deref(), Some("client-7"));
        assert_eq!(open_container_id(&bytes[..bytes.len() - 3]), None, "a cut frame reads as nothing");
        assert_eq!(open_container_id(b"GET / HTTP/1.1"), None);
    }

    #[test]
    fn given_credit_that_lets_deliveries_through_should_double_the_prefetch_only_when_it_binds() {
        let mut w = Window::new(1000);
        w.taken();
        assert_eq!(w.sent(), Some(2), "holding its one allowed delivery: room for more");
        w.taken();
        assert_eq!(w.sent(), Some(4));
        w.settled();
        w.settled();
        w.taken();
        assert_eq!(w.sent(), None, "holds 1 of 4: the engine needs no word");
        for _ in 0..3 {
            w.taken();
        }
        assert_eq!(w.sent(), Some(8));
    }

    #[test]
    fn given_no_credit_should_shrink_to_what_is_held_and_stop_at_the_cap() {
        let mut w = Window::new(6);
        for _ in 0..5 {
            w.taken();
            w.sent();
        }
        assert_eq!(w.limit, 6, "doubling stops at stomp.defaultPrefetch");
        w.settled();
        w.settled();
        assert_eq!(w.out_of_credit(), Some(3), "three held, none more until credit comes");
        assert_eq!(w.out_of_credit(), None, "unchanged: nothing to tell the engine");
        for _ in 0..3 {
            w.settled();
        }
        w.taken();
        assert_eq!(w.out_of_credit(), Some(1));
        assert_eq!(w.sent(), Some(2), "credit came: the held one went, room for another");
    }

    #[test]
    fn given_selector_filter_by_name_or_code_should_read_it_and_refuse_others() {
        let by_name = filters(Descriptor::Name(Symbol::from(SELECTOR_FILTER)), Value::String("a = 1".into()));
        assert_eq!(selector_text(&by_name).unwrap(), Some("a = 1"));
        let by_code = filters(Descriptor::Code(SELECTOR_FILTER_CODE), Value::String("b > 2".into()));
        assert_eq!(selector_text(&by_code).unwrap(), Some("b > 2"));
        let other = filters(Descriptor::Name(Symbol::from("apache.org:legacy-amqp-topic-binding:string")), Value::String("x".into()));
        assert!(matches!(selector_text(&other), Err(AmqpError::NotImplemented(_))));
        assert_eq!(selector_text(&FilterSet::new()).unwrap(), None);
    }
}
