//! The supervisor: the task that owns a client's connections, one after another, with
//! the ActiveMQ failover transport's semantics. It runs a connection until it ends, then
//! either closes the session (a `stomp://` URL, a user disconnect, a broker ERROR that is
//! not about failover) or fails over: it settles what the lost connection took with it,
//! reconnects with back-off to the first member that accepts, and starts the next
//! connection with the frames the [`Router`] says must be replayed.
//!
//! It decides and sequences; it never touches a frame's content. The delay sequence,
//! member order and which endings call for a failover are pure functions, tested alone.

use super::connection::{self, Established};
use super::error::ClientError;
use super::options::ClientOptions;
use super::router::{CloseReason, Outbound, Router};
use super::url::{FailoverOptions, StompUrl};
use crate::stomp::Frame;
use rand::seq::SliceRandom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// Events kept for a slow [`ConnectionEvent`] receiver before it starts missing some.
const EVENT_BACKLOG: usize = 64;

/// A change of a failover client's connection, from [`super::Client::events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection to `member` ended; the client is reconnecting.
    Lost { at: Instant, member: StompUrl, reason: String },
    /// The client is connected again, to `member`, `gap` after the loss.
    Reconnected { at: Instant, member: StompUrl, gap: Duration },
    /// The client used up `maxReconnectAttempts`; it is closed for good.
    GaveUp { at: Instant, attempts: u32, reason: String },
}

/// What the API reports about the connection of the moment; written by the supervisor.
pub(super) struct Status {
    connected_to: Mutex<StompUrl>,
    session: Mutex<Option<String>>,
    failovers: AtomicU64,
    events: broadcast::Sender<ConnectionEvent>,
}

impl Status {
    pub(super) fn new(member: StompUrl, session: Option<String>) -> Arc<Status> {
        Arc::new(Status {
            connected_to: Mutex::new(member),
            session: Mutex::new(session),
            failovers: AtomicU64::new(0),
            events: broadcast::Sender::new(EVENT_BACKLOG),
        })
    }

    pub(super) fn connected_to(&self) -> StompUrl {
        self.connected_to.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(super) fn session(&self) -> Option<String> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub(super) fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    pub(super) fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    fn reconnected(&self, member: StompUrl, session: Option<String>) {
        *self.connected_to.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = member;
        *self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = session;
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    fn emit(&self, event: ConnectionEvent) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }
}

/// The wait before reconnect attempt `attempt` (1 for the first): `initialReconnectDelay`,
/// then, with `useExponentialBackOff`, multiplied by `backOffMultiplier` per attempt, never
/// more than `maxReconnectDelay`.
pub(super) fn reconnect_delay(options: &FailoverOptions, attempt: u32) -> Duration {
    let initial = options.initial_reconnect_delay;
    if !options.use_exponential_back_off || attempt <= 1 {
        return initial.min(options.max_reconnect_delay);
    }
    let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
    let grown = initial.as_secs_f64() * options.back_off_multiplier.powi(exponent);
    Duration::try_from_secs_f64(grown).unwrap_or(options.max_reconnect_delay).min(options.max_reconnect_delay)
}

/// The order to try `members` members in: as written, or shuffled (`randomize`).
pub(super) fn member_order(members: usize, randomize: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..members).collect();
    if randomize {
        order.shuffle(&mut rand::thread_rng());
    }
    order
}

/// Does a broker ERROR mean "this broker is going away or is not the live", so that a
/// failover client should move to another member? duomq says `broker is shutting down`
/// when it stops, a backup says `not live: ...`, and a live that lost its claim (fenced)
/// fails the writes it could not confirm with `... stopped being live ...`
/// ([`crate::journal::JournalError::Fenced`]): the client resends those to the new live.
/// Any other ERROR (a bad frame, a full destination) would follow the client to the next
/// broker, so it ends the session.
pub(super) fn is_failover_error(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("shutting down") || message.starts_with("not live") || message.contains("stopped being live")
}

/// Which endings of a connection a failover client reconnects after.
fn calls_for_failover(reason: &CloseReason) -> bool {
    match reason {
        CloseReason::Eof | CloseReason::Io(..) | CloseReason::Silent(_) => true,
        CloseReason::Broker(message) => is_failover_error(message),
        CloseReason::Disconnected | CloseReason::Protocol(_) | CloseReason::GaveUp { .. } => false,
    }
}

/// Tries each member in `order` once; the first to answer CONNECTED wins. A member that
/// refuses (an ERROR, as a backup answers) is skipped like one that is down. When all
/// fail, the last member's error is returned.
pub(super) async fn connect_round(
    members: &[StompUrl],
    order: &[usize],
    options: &ClientOptions,
) -> Result<(usize, Established), ClientError> {
    let mut last_error = ClientError::Closed;
    for &index in order {
        let member = &members[index];
        match connection::handshake(member, options).await {
            Ok(established) => return Ok((index, established)),
            Err(e) => {
                tracing::debug!(broker = %member, error = %describe(&e), "broker did not accept the connection");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// An error with its causes, for a log line or an event.
fn describe(error: &ClientError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a reconnect ended.
enum Reconnect {
    Connected { member: StompUrl, established: Box<Established>, attempt: u32 },
    GaveUp { attempts: u32, last_error: String },
    /// The user disconnected or dropped every handle meanwhile.
    Stopped,
}

/// Owns the connections of one client; see the module docs.
pub(super) struct Supervisor {
    pub(super) router: Arc<Router>,
    pub(super) status: Arc<Status>,
    pub(super) members: Vec<StompUrl>,
    /// `None` for a `stomp://` URL: the first lost connection ends the session.
    pub(super) policy: Option<FailoverOptions>,
    /// For reconnects: offers only the version the first connection agreed on.
    pub(super) options: ClientOptions,
}

impl Supervisor {
    /// Runs connection after connection until the session ends.
    pub(super) async fn run(self, mut established: Established, mut outbox: mpsc::Receiver<Outbound>) {
        let mut closed = self.router.closed_watch();
        let mut replay: Vec<Frame> = Vec::new();
        loop {
            let generation = self.router.generation();
            let running = connection::start(established, generation, &self.router, outbox, replay);
            tokio::select! {
                _ = running.link.lost() => {}
                _ = closed.wait_for(|c| *c) => running.link.fail(CloseReason::Disconnected),
            }
            let reason = running.link.reason();
            outbox = match running.join().await {
                Ok(outbox) => outbox,
                Err(e) => {
                    let text = format!("a client connection task failed: {e}");
                    self.router.close(CloseReason::Io(std::io::ErrorKind::Other, text));
                    return;
                }
            };
            if self.router.close_reason().is_some() {
                return;
            }
            let policy = match &self.policy {
                Some(policy)
                    if calls_for_failover(&reason) && !self.router.is_disconnecting() && !outbox.is_closed() =>
                {
                    policy
                }
                _ => {
                    self.router.close(reason);
                    return;
                }
            };

            let lost_at = Instant::now();
            let from = self.status.connected_to();
            let why = describe(&reason.to_error());
            self.router.connection_lost(generation);
            tracing::info!(broker = %from, reason = %why, "lost the connection to the broker; failing over");
            self.status.emit(ConnectionEvent::Lost { at: lost_at, member: from.clone(), reason: why });
            match self.reconnect(policy, &outbox, &mut closed).await {
                Reconnect::Connected { member, established: next, attempt } => {
                    let gap = lost_at.elapsed();
                    replay = self.router.replay(self.router.generation());
                    tracing::info!(
                        from = %from,
                        to = %member,
                        attempt,
                        gap_ms = gap.as_millis() as u64,
                        replayed_frames = replay.len(),
                        "reconnected after failover"
                    );
                    self.status.reconnected(member.clone(), next.session.clone());
                    self.status.emit(ConnectionEvent::Reconnected { at: Instant::now(), member, gap });
                    established = *next;
                }
                Reconnect::GaveUp { attempts, last_error } => {
                    tracing::warn!(attempts, last_error = %last_error, "gave up reconnecting; the client is closed");
                    let reason = CloseReason::GaveUp { attempts, last_error };
                    let text = reason.to_error().to_string();
                    self.router.close(reason);
                    self.status.emit(ConnectionEvent::GaveUp { at: Instant::now(), attempts, reason: text });
                    return;
                }
                Reconnect::Stopped => {
                    self.router.close(CloseReason::Disconnected);
                    return;
                }
            }
        }
    }

    /// Rounds over the members, each after its back-off delay, until one accepts or the
    /// attempts run out.
    async fn reconnect(
        &self,
        policy: &FailoverOptions,
        outbox: &mpsc::Receiver<Outbound>,
        closed: &mut watch::Receiver<bool>,
    ) -> Reconnect {
        let mut last_error = String::from("no attempt was made (maxReconnectAttempts=0)");
        let mut attempt = 0u32;
        loop {
            if policy.max_reconnect_attempts.is_some_and(|max| attempt >= max) {
                return Reconnect::GaveUp { attempts: attempt, last_error };
            }
            if outbox.is_closed() {
                return Reconnect::Stopped;
            }
            attempt += 1;
            let delay = reconnect_delay(policy, attempt);
            let order = member_order(self.members.len(), policy.randomize);
            let round = async {
                tokio::time::sleep(delay).await;
                connect_round(&self.members, &order, &self.options).await
            };
            let result = tokio::select! {
                _ = closed.wait_for(|c| *c) => return Reconnect::Stopped,
                result = round => result,
            };
            match result {
                Ok((index, established)) => {
                    let member = self.members[index].clone();
                    return Reconnect::Connected { member, established: Box::new(established), attempt };
                }
                Err(e) => {
                    last_error = describe(&e);
                    tracing::debug!(attempt, ?delay, error = %last_error, "no broker accepted the reconnect");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(initial: u64, max: u64, exponential: bool, multiplier: f64) -> FailoverOptions {
        FailoverOptions {
            initial_reconnect_delay: ms(initial),
            max_reconnect_delay: ms(max),
            use_exponential_back_off: exponential,
            back_off_multiplier: multiplier,
            ..FailoverOptions::default()
        }
    }

    #[rstest]
    #[case(policy(10, 200, true, 2.0), &[10, 20, 40, 80, 160, 200, 200])]
    #[case(policy(10, 200, false, 2.0), &[10, 10, 10, 10])]
    #[case(policy(100, 1000, true, 1.5), &[100, 150, 225, 337, 506, 759, 1000])]
    #[case(policy(0, 50, true, 2.0), &[0, 0, 0])]
    fn given_policy_when_attempts_fail_should_grow_the_delay_up_to_the_cap(
        #[case] policy: FailoverOptions,
        #[case] expected: &[u64],
    ) {
        let delays: Vec<u64> =
            (1..=expected.len() as u32).map(|n| reconnect_delay(&policy, n).as_millis() as u64).collect();
        assert_eq!(delays, expected);
    }

    #[test]
    fn given_many_attempts_should_stay_at_the_cap_without_overflow() {
        let policy = policy(10, 2000, true, 2.0);
        assert_eq!(reconnect_delay(&policy, u32::MAX), ms(2000));
        assert_eq!(reconnect_delay(&policy, 5000), ms(2000));
    }

    #[rstest]
    #[case("broker is shutting down", true)]
    #[case("not live: backup of group g1; live is stomp://10.0.0.1:61613", true)]
    #[case("Not Live", true)]
    #[case("failed to persist: failed to confirm the write: this member stopped being live before the write was safe", true)]
    #[case("destination is full: no room within 1s (memory limits)", false)]
    #[case("authentication failed for login \"x\"", false)]
    fn given_broker_error_should_fail_over_only_when_the_broker_stops_serving(#[case] message: &str, #[case] fails_over: bool) {
        assert_eq!(is_failover_error(message), fails_over);
    }

    #[test]
    fn given_a_write_failed_by_fencing_should_fail_over() {
        let error = crate::journal::JournalError::Fenced;
        assert!(is_failover_error(&format!("failed to persist: {error}")));
    }

    #[test]
    fn given_randomize_false_should_keep_the_written_order_and_true_should_permute() {
        assert_eq!(member_order(3, false), [0, 1, 2]);
        let mut shuffled = member_order(5, true);
        shuffled.sort_unstable();
        assert_eq!(shuffled, [0, 1, 2, 3, 4]);
    }
}
