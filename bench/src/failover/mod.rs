//! `duomq-bench failover`, top to bottom: find the live member, subscribe the consumers,
//! connect the producers, then kill the live member `--kills` times (SIGKILL, wait for the
//! promotion, restart, wait until the restarted member is ready), stop the producers,
//! drain, and account: failover gaps from the receipt times, lost, duplicates and
//! redeliveries from the delivery bitsets. Sending and consuming are `run`'s own modules,
//! each connection on its own thread as in `run`; touching the members is [`members`];
//! the gap arithmetic is [`gaps`]. Nothing here prints the result.

mod gaps;
mod members;

use crate::cli::{FailoverArgs, GapAt};
use crate::report::{round3, FailoverReport, KillReport};
use crate::run::consumer::{ConsumerSpec, Recorder};
use crate::run::producer::{self, ProducerSpec};
use crate::run::{connect_producers, drain, subscribe_consumers};
use crate::run::shared::{nanos_since, ArrivalLog, ConnectionGenerations, Counters, Phases, ReceiptLog, Shared};
use crate::tally::{Deliveries, DeliveryCounts, SeqSet};
use anyhow::{bail, Context};
use duomq_broker::client::{AckMode, Client, ClientOptions, ConnectionEvent, TlsOptions};
pub use gaps::GapSummaryMs;
use gaps::{delivery_gaps, failover_gaps};
use members::{Member, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often members are probed while waiting for a role change.
const ROLE_POLL: Duration = Duration::from_millis(20);
/// Producers stop at the end of the kills, not at a deadline: a measured interval longer
/// than any run.
const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What one kill cycle observed, before the receipts are matched to it.
#[derive(Debug, Clone)]
struct Kill {
    member: String,
    pid: i32,
    /// When SIGKILL was sent, in nanoseconds since the run started.
    at_ns: u64,
    /// Until another member answered as live.
    promoted: Duration,
    /// Until the killed member was restarted and ready again.
    ready: Duration,
}

/// Runs the failover benchmark and returns its report.
pub async fn failover(args: &FailoverArgs) -> anyhow::Result<FailoverReport> {
    let members = members::members_of(args)?;
    let first_live = wait_for_live(&members, None, args.role_timeout).await.context("no member is live")?;
    tracing::info!(live = members[first_live].name, "found the live member");
    let options = ClientOptions {
        login: args.login.clone(),
        passcode: args.passcode.clone(),
        // A receipt may wait out a whole promotion.
        receipt_timeout: args.role_timeout,
        tls: TlsOptions::from(&args.tls),
        ..ClientOptions::default()
    };
    let consumer_spec = Arc::new(ConsumerSpec {
        url: args.consumer_url.clone().unwrap_or_else(|| args.url.clone()),
        options: options.clone(),
        destination: args.destination.clone(),
        ack: AckMode::ClientIndividual,
        prefetch: args.prefetch,
        subscribe_headers: Vec::new(),
        selectors: None,
    });
    let subscribed = subscribe_consumers(&consumer_spec, args.consumers).await?;
    let producers = connect_producers(&args.url, &options, args.producers).await?;
    // Kept here to count failovers and log reconnects; the connections run on their threads.
    let clients: Vec<Client> = producers.iter().map(|p| p.connection().clone()).collect();
    let server = subscribed.first().and_then(|s| s.connection().server());
    let consumer_clients: Vec<Client> = subscribed
        .iter()
        .filter_map(|s| match s.connection() {
            crate::run::consumer::Subscribed::Client { client, .. } => Some(client.clone()),
            crate::run::consumer::Subscribed::Raw(_) => None,
        })
        .collect();

    let phases = Phases::starting_now(Duration::ZERO, NO_DEADLINE);
    let shared = Arc::new(Shared {
        phases,
        counters: Counters::default(),
        deliveries: Deliveries::new(args.producers),
        receipts: Some(ReceiptLog::default()),
        generations: Some(ConnectionGenerations::default()),
        arrivals: (args.gap_at == GapAt::Deliveries).then(ArrivalLog::default),
        groups: None,
        backlog: None,
    });
    let (stop_producers, stop_consumers) = (CancellationToken::new(), CancellationToken::new());
    let mut consumer_tasks = Vec::new();
    for (id, consumer) in (0u32..).zip(subscribed) {
        if let Some(events) = consumer.connection().events() {
            tokio::spawn(count_connection_losses(events, Arc::clone(&shared)));
        }
        let recorder = Recorder::new(Arc::clone(&shared), id)?;
        let (spec, stop) = (Arc::clone(&consumer_spec), stop_consumers.clone());
        consumer_tasks.push(consumer.run(move |c| async move { c.consume(&spec, id, recorder, stop).await }));
    }
    for client in &clients {
        tokio::spawn(log_reconnects(client.events(), Arc::clone(&shared)));
    }
    let mut producer_tasks = Vec::new();
    for (id, client) in (0u32..).zip(producers) {
        let spec = ProducerSpec {
            id,
            destination: args.destination.clone(),
            size: args.size,
            persistent: true,
            window: args.window,
            headers: Vec::new(),
            groups: None,
            cycle: None,
            limit: None,
        };
        producer_tasks.push(client.run(|c| producer::produce(c, spec, Arc::clone(&shared), stop_producers.clone())));
    }

    let cycles = kill_cycles(&members, args, phases.started, &stop_producers).await;
    let (kills, kill_error) = match cycles {
        Ok(kills) => (kills, None),
        Err((kills, e)) => {
            tracing::error!(error = format!("{e:#}"), "kill cycle failed; stopping early");
            (kills, Some(format!("{e:#}")))
        }
    };
    stop_producers.cancel();
    let load_end_ns = nanos_since(phases.started);
    let mut confirmed = Vec::new();
    let mut errors: Vec<String> = kill_error.into_iter().collect();
    for task in producer_tasks {
        let mut outcome = task.join().await?;
        confirmed.push(std::mem::take(&mut outcome.confirmed));
        errors.extend(outcome.error);
    }
    let duration = phases.started.elapsed();
    let missing = drain(&shared, &confirmed, args.drain_timeout).await;
    stop_consumers.cancel();
    let mut counts = DeliveryCounts::default();
    for task in consumer_tasks {
        let outcome = task.join().await?;
        counts.merge(outcome.counts);
        errors.extend(outcome.error);
    }
    if missing > 0 {
        let examples = shared.deliveries.missing_examples(&confirmed, 5);
        tracing::warn!(lost = missing, ?examples, "receipted messages never arrived (producer, seq)");
    }

    let kill_times: Vec<u64> = kills.iter().map(|k| k.at_ns).collect();
    let gaps = match &shared.arrivals {
        Some(arrivals) => delivery_gaps(&arrivals.sorted(), &kill_times, load_end_ns),
        None => {
            let receipts = shared.receipts.as_ref().map(ReceiptLog::sorted).unwrap_or_default();
            let reconnects = shared.receipts.as_ref().map(ReceiptLog::sorted_reconnects).unwrap_or_default();
            failover_gaps(&receipts, &kill_times, &reconnects)
        }
    };
    let gap_ns: Vec<u64> = gaps.iter().flatten().map(gaps::Gap::nanos).collect();
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    Ok(FailoverReport {
        label: args.label.clone().or_else(|| server.clone()).unwrap_or_else(|| args.url.clone()),
        server,
        destination: args.destination.clone(),
        producers: args.producers,
        consumers: args.consumers,
        size: args.size,
        window: args.window,
        kills_requested: args.kills,
        kills: kills.len() as u32,
        gap_at: match args.gap_at {
            GapAt::Receipts => "receipts",
            GapAt::Deliveries => "deliveries",
        },
        gap_ms: GapSummaryMs::of(&gap_ns),
        per_kill: kills
            .iter()
            .zip(&gaps)
            .map(|(k, gap)| KillReport {
                member: k.member.clone(),
                pid: k.pid,
                at_s: round3(k.at_ns as f64 / 1e9),
                gap_ms: gap.map(|g| round3(g.nanos() as f64 / 1e6)),
                kill_to_resume_ms: gap.map(|g| round3(g.first_after_ns.saturating_sub(k.at_ns) as f64 / 1e6)),
                promoted_ms: ms(k.promoted),
                ready_ms: ms(k.ready),
            })
            .collect(),
        sent: shared.counters.sent.load(std::sync::atomic::Ordering::Relaxed),
        confirmed: confirmed.iter().map(SeqSet::len).sum(),
        received: shared.counters.received.load(std::sync::atomic::Ordering::Relaxed),
        lost: missing,
        duplicates: counts.duplicates,
        redeliveries: counts.redeliveries,
        unflagged_redeliveries: counts.unflagged_redeliveries,
        foreign: counts.foreign,
        failovers: clients.iter().map(Client::failovers).sum(),
        consumer_failovers: consumer_clients.iter().map(Client::failovers).sum(),
        duration_s: round3(duration.as_secs_f64()),
        errors,
    })
}

/// The kill cycles; on failure, the kills made so far and the error.
async fn kill_cycles(
    members: &[Member],
    args: &FailoverArgs,
    started: Instant,
    stop: &CancellationToken,
) -> Result<Vec<Kill>, (Vec<Kill>, anyhow::Error)> {
    let mut kills = Vec::new();
    for round in 0..args.kills {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(args.kill_every) => {}
        }
        match kill_once(members, args, started).await {
            Ok(kill) => {
                tracing::info!(
                    round = round + 1,
                    member = kill.member,
                    promoted_ms = kill.promoted.as_millis() as u64,
                    ready_ms = kill.ready.as_millis() as u64,
                    "killed the live member and restarted it"
                );
                kills.push(kill);
            }
            Err(e) => return Err((kills, e.context(format!("kill {} of {}", round + 1, args.kills)))),
        }
    }
    Ok(kills)
}

/// One cycle: SIGKILL the live member, wait for another to be live, restart the killed
/// one and wait until it is ready to take over again.
async fn kill_once(members: &[Member], args: &FailoverArgs, started: Instant) -> anyhow::Result<Kill> {
    let live = wait_for_live(members, None, args.role_timeout).await?;
    let victim = &members[live];
    let pid = victim.read_pid()?;
    let at_ns = nanos_since(started);
    let killed_at = Instant::now();
    victim.kill9(pid)?;
    wait_for_live(members, Some(live), args.role_timeout)
        .await
        .with_context(|| format!("no other member became live after {} was killed", victim.name))?;
    let promoted = killed_at.elapsed();
    victim.restart(args.role_timeout).await?;
    wait_until_ready(victim, args).await?;
    Ok(Kill { member: victim.name.clone(), pid, at_ns, promoted, ready: killed_at.elapsed() })
}

/// Polls until a member other than `except` answers as live; returns its index.
async fn wait_for_live(members: &[Member], except: Option<usize>, timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, m) in members.iter().enumerate() {
            if Some(i) != except && m.role().await == Role::Live {
                return Ok(i);
            }
        }
        if Instant::now() >= deadline {
            bail!("no member was live within {timeout:?}");
        }
        tokio::time::sleep(ROLE_POLL).await;
    }
}

/// A restarted member is ready when it could take over again: a synced backup, or one
/// that reaches the shared database (status mode), or a running process given `--settle` to find the lock (port mode).
async fn wait_until_ready(member: &Member, args: &FailoverArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.role_timeout;
    loop {
        let ready = match args.kill_mode {
            crate::cli::KillMode::Status => member.role().await == Role::ReadyBackup,
            crate::cli::KillMode::Port => member.is_running(),
        };
        if ready {
            if args.kill_mode == crate::cli::KillMode::Port {
                tokio::time::sleep(args.settle).await;
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} was not ready again within {:?} after its restart", member.name, args.role_timeout);
        }
        tokio::time::sleep(ROLE_POLL).await;
    }
}

/// Bumps the connection generation on every lost consumer connection, until the client
/// is gone.
async fn count_connection_losses(mut events: tokio::sync::broadcast::Receiver<ConnectionEvent>, shared: Arc<Shared>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(ConnectionEvent::Lost { .. }) | Err(RecvError::Lagged(_)) => {
                if let Some(generations) = &shared.generations {
                    generations.bump();
                }
            }
            Ok(_) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Logs when a producer's client reconnected, until the client is gone.
async fn log_reconnects(mut events: tokio::sync::broadcast::Receiver<ConnectionEvent>, shared: Arc<Shared>) {
    use tokio::sync::broadcast::error::RecvError;
    let started = shared.phases.started.into_std();
    loop {
        match events.recv().await {
            Ok(ConnectionEvent::Reconnected { at, .. }) => {
                if let Some(log) = &shared.receipts {
                    log.reconnected(u64::try_from(at.saturating_duration_since(started).as_nanos()).unwrap_or(u64::MAX));
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

