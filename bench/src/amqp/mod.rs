//! `duomq-bench amqp`, top to bottom: the consumers attach, the producers attach, the idle
//! broker is sampled, warm-up and measured interval run, the producers stop, the consumers
//! drain and stop, and the report is made, in the same shape as `run`'s. The phases,
//! progress line, accounting and report are `run`'s ([`crate::run`]); only the
//! connections differ: AMQP 1.0 through fe2o3-amqp's client, one library for every broker.
//!
//! Each producer and consumer lives on its own thread with a current-thread runtime
//! ([`crate::run::threads`]), and fe2o3 spawns its connection and session tasks onto that
//! runtime, so they stay on the thread too. Nothing here prints the result.

mod consumer;
mod producer;

use crate::cli::AmqpArgs;
use crate::footprint::BrokerProcess;
use crate::report::RunReport;
use crate::run::consumer::Recorder;
use crate::run::shared::{BacklogBound, Phases, Shared};
use crate::run::threads::connect_all;
use crate::run::{measure, stop_on_ctrl_c, Ending, Load, Watch};
use anyhow::Context;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The AMQP port when the URL names none.
const AMQP_PORT: u16 = 5672;
/// How long each step of closing a client (link, session, connection) may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a run's report names its consumers' settlement: each delivery settled with the
/// accepted outcome as it is taken.
const SETTLEMENT: &str = "accepted";

/// Runs the AMQP benchmark and returns its report.
pub async fn run(args: &AmqpArgs) -> anyhow::Result<RunReport> {
    let broker = args.broker_pid.map(BrokerProcess::open).transpose()?;
    // This process: the load generator's own CPU.
    let itself = BrokerProcess::open(std::process::id())?;

    // Consumers first, so nothing a producer sends waits for a receiving link.
    let consumers = connect_all("consumer", args.consumers, |i| {
        let (url, address, credit) = (args.url.clone(), args.address.clone(), args.credit);
        async move {
            consumer::attach(&url, &address, credit, i).await.with_context(|| format!("failed to attach consumer {i}"))
        }
    })
    .await?;
    let producers = connect_all("producer", args.producers, |i| {
        let (url, address) = (args.url.clone(), args.address.clone());
        async move { producer::attach(&url, &address, i).await.with_context(|| format!("failed to attach producer {i}")) }
    })
    .await?;
    tracing::info!(url = %args.url, address = %args.address, consumers = args.consumers, producers = args.producers, "attached");
    let rss_idle = broker.as_ref().map(BrokerProcess::rss_bytes).transpose()?;

    let phases = Phases::starting_now(args.warmup, args.duration);
    let shared = Arc::new(Shared { backlog: args.max_backlog.map(BacklogBound::new), ..Shared::new(phases, args.producers) });
    let (stop_producers, stop_consumers, stop_watching) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    tokio::spawn(stop_on_ctrl_c(stop_producers.clone()));

    let mut consumer_tasks = Vec::new();
    for (id, consumer) in (0u32..).zip(consumers) {
        let (recorder, stop) = (Recorder::new(Arc::clone(&shared), id)?, stop_consumers.clone());
        consumer_tasks.push(consumer.run(move |c| c.consume(id, recorder, stop)));
    }
    let producer_tasks = (0u32..)
        .zip(producers)
        .map(|(id, producer)| {
            let spec = producer::Spec { id, size: args.size, persistent: args.persistent, in_flight: args.credit };
            let (shared, stop) = (Arc::clone(&shared), stop_producers.clone());
            producer.run(move |p| p.produce(spec, shared, stop))
        })
        .collect();
    let watch = Watch::start(broker.as_ref(), &shared, &stop_watching);

    let measured = measure(&phases, &stop_producers, broker.as_ref(), &itself).await;
    let finished = Ending { producer_tasks, consumer_tasks, stop_consumers, watch, stop_watching }
        .finish(&shared, args.drain_timeout)
        .await?;
    Ok(finished.into_report(&shared, &load(args), &measured, None, rss_idle))
}

/// The run's load as `run`'s report describes one: the credit is both the producers'
/// window of unsettled transfers and the consumers' prefetch.
fn load(args: &AmqpArgs) -> Load {
    Load {
        label: args.label.clone(),
        url: args.url.clone(),
        destination: args.address.clone(),
        producers: args.producers,
        consumers: args.consumers,
        size: args.size,
        persistent: args.persistent,
        window: args.credit,
        ack: SETTLEMENT.to_string(),
        prefetch: args.credit,
        // Every message a producer counts was settled accepted by the broker.
        promised: true,
        selector_split: false,
    }
}

/// One client's connection and session; its link is the producer's or consumer's own.
struct Endpoint {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
}

impl Endpoint {
    /// Connects to `url` with TCP_NODELAY, opens a connection with the container-id
    /// `container` and begins a session: SASL PLAIN with the URL's user and password, else
    /// ANONYMOUS. fe2o3 leaves Nagle's algorithm on for the connections it makes itself,
    /// and then a consumer's disposition and its flow, two small frames, wait for the
    /// broker's delayed ACK (tens of milliseconds) whatever the broker does.
    async fn open(url: &str, container: &str) -> anyhow::Result<Endpoint> {
        let parsed = url::Url::parse(url).with_context(|| format!("{} is not a URL", redacted(url)))?;
        let host = parsed.host_str().with_context(|| format!("{} names no host", redacted(url)))?;
        let port = parsed.port().unwrap_or(AMQP_PORT);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("failed to connect to {host}:{port}"))?;
        stream.set_nodelay(true).context("failed to set TCP_NODELAY")?;
        let sasl = SaslProfile::try_from(&parsed).unwrap_or(SaslProfile::Anonymous);
        let mut connection = Connection::builder()
            .container_id(container)
            .hostname(host)
            .sasl_profile(sasl)
            .open_with_stream(stream)
            .await
            .with_context(|| format!("failed to open an AMQP connection to {}", redacted(url)))?;
        let session = Session::begin(&mut connection).await.context("failed to begin an AMQP session")?;
        Ok(Endpoint { connection, session })
    }

    /// Ends the session and closes the connection, each within [`CLOSE_TIMEOUT`];
    /// failures only logged (the run is over).
    async fn close(mut self, who: &str) {
        closing(who, "end the AMQP session", self.session.end()).await;
        closing(who, "close the AMQP connection", self.connection.close()).await;
    }
}

/// Waits up to [`CLOSE_TIMEOUT`] for one step of closing (`what`), logging a failure or a
/// broker that did not answer: fe2o3 waits for the peer's detach, end or close without a
/// limit, and a broker that never sends it must not hold the run's report up.
async fn closing<E: std::fmt::Display>(who: &str, what: &str, step: impl std::future::Future<Output = Result<(), E>>) {
    match tokio::time::timeout(CLOSE_TIMEOUT, step).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(who, error = %e, "failed to {what}"),
        Err(_) => tracing::warn!(who, timeout = ?CLOSE_TIMEOUT, "the broker did not answer in time; gave up trying to {what}"),
    }
}

/// `url` with its password, if any, replaced by `***`, for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn given_url_with_password_should_hide_it_and_keep_the_rest() {
        assert_eq!(redacted("amqp://guest:secret@127.0.0.1:5672"), "amqp://guest:***@127.0.0.1:5672");
        assert_eq!(redacted("amqp://127.0.0.1:5672/x"), "amqp://127.0.0.1:5672/x");
        assert_eq!(redacted("amqp://u@h"), "amqp://u:***@h");
    }
}
