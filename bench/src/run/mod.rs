//! `duomq-bench run`, top to bottom: subscribe the consumers, connect the producers,
//! sample the idle broker, run warm-up and measured interval, stop the producers, drain,
//! stop the consumers, account (with --groups, the grouping check too) and report. The
//! phases live here; sending, consuming and watching live in their own modules, and
//! nothing here prints the result.
//!
//! Threading: every producer and every consumer connection lives on its own OS thread
//! with a current-thread runtime ([`threads`]), from connect to disconnect, so the load
//! generator adds no cross-thread hand-offs of its own to a message's round trip. The
//! phases, stop tokens, progress line, memory sampler and drain run here, on the
//! caller's runtime.

pub(crate) mod backlog;
pub(crate) mod consumer;
pub(crate) mod monitor;
pub(crate) mod producer;
mod raw;
pub(crate) mod shared;
pub(crate) mod threads;

use crate::cli::RunArgs;
use crate::footprint::{BrokerProcess, RssStats, MIB};
use crate::groups::{GroupCheck, GroupPlan, GroupsReport, ReceiptLatencies};
use crate::report::{nanos_histogram, round3, LatencyMs, RunReport};
use crate::tally::{DeliveryCounts, SeqSet};
use anyhow::Context;
use consumer::{ConsumerOutcome, ConsumerSpec, Recorder, Subscribed};
use duomq_broker::client::{AckMode, Client, ClientOptions, TlsOptions};
use producer::{ProducerOutcome, ProducerSpec};
use shared::{Phases, Shared};
use std::sync::Arc;
use std::time::Duration;
use threads::{connect_all, OnThread, ThreadTask};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the drain checks whether every confirmed message has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Runs the benchmark and returns its report.
pub async fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    let broker = args.broker_pid.map(BrokerProcess::open).transpose()?;
    // This process: the load generator's own CPU, so a cost both ends pay (TLS) shows whole.
    let itself = BrokerProcess::open(std::process::id())?;
    let options = client_options(args);
    let consumer_spec = consumer_spec(args, &options);

    // Consumers first, so nothing a producer sends waits for a subscriber.
    let subscribed = subscribe_consumers(&consumer_spec, args.consumers).await?;
    let server = subscribed.first().and_then(|s| s.connection().server());
    let producers = connect_producers(&args.url, &options, args.producers).await?;
    tracing::info!(
        server = server.as_deref().unwrap_or("unknown"),
        consumers = args.consumers,
        producers = args.producers,
        "connected"
    );
    let rss_idle = broker.as_ref().map(BrokerProcess::rss_bytes).transpose()?;

    let phases = Phases::starting_now(args.warmup, args.duration);
    let shared = Arc::new(Shared {
        groups: group_plan(args).map(|plan| GroupCheck::new(plan, args.producers)),
        ..Shared::new(phases, args.producers)
    });
    let stop_producers = CancellationToken::new();
    let stop_consumers = CancellationToken::new();
    let stop_watching = CancellationToken::new();
    tokio::spawn(stop_on_ctrl_c(stop_producers.clone()));

    let consumer_tasks = start_consumers(subscribed, &shared, &consumer_spec, &stop_consumers)?;
    let producer_tasks = start_producers(args, producers, None, &shared, &stop_producers);
    let watch = Watch::start(broker.as_ref(), &shared, &stop_watching);

    let measured = measure(&phases, &stop_producers, broker.as_ref(), &itself).await;
    let finished = Ending { producer_tasks, consumer_tasks, stop_consumers, watch, stop_watching }
        .finish(&shared, args.drain_timeout)
        .await?;
    let groups = match &shared.groups {
        Some(check) => {
            let mut latencies = ReceiptLatencies::new()?;
            for outcome in &finished.producer_outcomes {
                if let Some(l) = &outcome.receipt_latencies {
                    latencies.merge(l)?;
                }
            }
            let report = GroupsReport::of(&args.group_header, check, args.consumers, &latencies);
            if report.check.violations > 0 {
                tracing::warn!(
                    split_groups = report.check.split_groups,
                    out_of_order = report.check.out_of_order,
                    examples = ?report.check.examples,
                    "message groups were not kept to one consumer in order"
                );
            }
            Some(report)
        }
        None => None,
    };
    let mut report = finished.into_report(&shared, &Load::of(args), &measured, server, rss_idle);
    report.groups = groups;
    Ok(report)
}

/// The measured interval as it went: its length (zero when `stop` came before it began)
/// and the CPU use across it of the broker and of this process.
pub(crate) struct Measured {
    pub seconds: f64,
    pub cpu_percent: Option<f64>,
    pub bench_cpu_percent: Option<f64>,
}

/// Waits out the measured interval of `phases` (or until `stop`), reading the CPU time of
/// the broker (when sampled) and of this process at its start and end.
pub(crate) async fn measure(
    phases: &Phases,
    stop: &CancellationToken,
    broker: Option<&BrokerProcess>,
    itself: &BrokerProcess,
) -> Measured {
    let interrupted = !sleep_until_unless(phases.measure_start(), stop).await;
    let cpu_start = cpu_seconds(broker);
    let own_start = cpu_seconds(Some(itself));
    let cpu_from = Instant::now();
    if !interrupted {
        sleep_until_unless(phases.measure_end(), stop).await;
    }
    let cpu_end = cpu_seconds(broker);
    let own_end = cpu_seconds(Some(itself));
    let cpu_window = cpu_from.elapsed().as_secs_f64();
    let measured = match interrupted {
        true => Duration::ZERO,
        false => Instant::now().min(phases.measure_end()) - phases.measure_start(),
    };
    Measured {
        seconds: measured.as_secs_f64(),
        cpu_percent: cpu_percent(cpu_start, cpu_end, cpu_window),
        bench_cpu_percent: cpu_percent(own_start, own_end, cpu_window),
    }
}

/// What still runs after the measured interval: the producers finish their sends, the
/// consumers drain what was confirmed and stop, then the watch stops.
pub(crate) struct Ending {
    pub producer_tasks: Vec<ThreadTask<ProducerOutcome>>,
    pub consumer_tasks: Vec<ThreadTask<ConsumerOutcome>>,
    pub stop_consumers: CancellationToken,
    pub watch: Watch,
    pub stop_watching: CancellationToken,
}

/// A run's outcomes once everything has stopped.
pub(crate) struct Finished {
    pub producer_outcomes: Vec<ProducerOutcome>,
    pub confirmed: Vec<SeqSet>,
    /// Confirmed messages not delivered when the drain ended.
    pub missing: u64,
    pub drain_s: f64,
    pub rss: RssStats,
    pub totals: Totals,
    pub warmup_s: f64,
}

impl Ending {
    /// Joins the producers, waits up to `drain_timeout` for every confirmed message to
    /// arrive, then stops and joins the consumers and the watch.
    pub(crate) async fn finish(self, shared: &Shared, drain_timeout: Duration) -> anyhow::Result<Finished> {
        let mut producer_outcomes = Vec::new();
        for task in self.producer_tasks {
            producer_outcomes.push(task.join().await?);
        }
        let confirmed: Vec<SeqSet> = producer_outcomes.iter_mut().map(|o| std::mem::take(&mut o.confirmed)).collect();
        let drain_started = Instant::now();
        let missing = drain(shared, &confirmed, drain_timeout).await;
        let drain_s = drain_started.elapsed().as_secs_f64();
        self.stop_consumers.cancel();
        let mut consumer_outcomes = Vec::new();
        for task in self.consumer_tasks {
            consumer_outcomes.push(task.join().await?);
        }
        let rss = self.watch.finish(&self.stop_watching).await?;
        let totals = Totals::of(&producer_outcomes, consumer_outcomes)?;
        Ok(Finished { producer_outcomes, confirmed, missing, drain_s, rss, totals, warmup_s: shared.phases.warmup.as_secs_f64() })
    }
}

impl Finished {
    /// The report of a run of `load` that ended so after `measured`, with what was
    /// confirmed and never arrived logged; `server` names the broker, `rss_idle` is its
    /// memory before the load.
    pub(crate) fn into_report(
        self,
        shared: &Shared,
        load: &Load,
        measured: &Measured,
        server: Option<String>,
        rss_idle: Option<u64>,
    ) -> RunReport {
        warn_missing(load.promised, shared, &self.confirmed, self.missing);
        Ended {
            server,
            rss_idle,
            rss: self.rss,
            confirmed: &self.confirmed,
            missing: self.missing,
            totals: self.totals,
            measured_s: measured.seconds,
            warmup_s: self.warmup_s,
            drain_s: self.drain_s,
            cpu_percent: measured.cpu_percent,
            bench_cpu_percent: measured.bench_cpu_percent,
        }
        .into_report(load)
    }
}

/// CPU use between two readings of a process's CPU seconds `window_s` apart; 100 = one
/// core busy.
fn cpu_percent(start: Option<f64>, end: Option<f64>, window_s: f64) -> Option<f64> {
    match (start, end) {
        (Some(a), Some(b)) if window_s > 0.0 => Some(round3((b - a) / window_s * 100.0)),
        _ => None,
    }
}

/// The side tasks of a run: the broker's RSS sampler and the progress line.
pub(crate) struct Watch {
    sampler: Option<tokio::task::JoinHandle<RssStats>>,
    progress: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub(crate) fn start(broker: Option<&BrokerProcess>, shared: &Arc<Shared>, stop: &CancellationToken) -> Watch {
        Watch {
            sampler: broker.cloned().map(|b| tokio::spawn(monitor::sample_rss(b, Arc::clone(shared), stop.clone()))),
            progress: tokio::spawn(monitor::print_progress(Arc::clone(shared), stop.clone())),
        }
    }

    /// Stops both (cancels `stop`) and returns the RSS samples.
    async fn finish(self, stop: &CancellationToken) -> anyhow::Result<RssStats> {
        stop.cancel();
        let rss = match self.sampler {
            Some(task) => task.await.context("the memory sampler panicked")?,
            None => RssStats::default(),
        };
        let _ = self.progress.await;
        Ok(rss)
    }
}

/// How every connection of a run logs in.
fn client_options(args: &RunArgs) -> ClientOptions {
    ClientOptions {
        login: args.login.clone(),
        passcode: args.passcode.clone(),
        host: args.vhost.clone(),
        tls: TlsOptions::from(&args.tls),
        ..ClientOptions::default()
    }
}

/// How every consumer of a run subscribes.
fn consumer_spec(args: &RunArgs, options: &ClientOptions) -> Arc<ConsumerSpec> {
    Arc::new(ConsumerSpec {
        url: args.consumer_url.clone().unwrap_or_else(|| args.url.clone()),
        options: options.clone(),
        destination: args.destination.clone(),
        ack: AckMode::from(args.ack),
        prefetch: args.prefetch,
        subscribe_headers: args.subscribe_headers.clone(),
        selectors: args.header_cycle.clone().filter(|_| args.selector_split),
    })
}

/// Starts every subscribed consumer consuming on its thread, until `stop`.
fn start_consumers(
    subscribed: Vec<OnThread<Subscribed>>,
    shared: &Arc<Shared>,
    spec: &Arc<ConsumerSpec>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<ThreadTask<ConsumerOutcome>>> {
    let mut tasks = Vec::new();
    for (id, consumer) in (0u32..).zip(subscribed) {
        let recorder = Recorder::new(Arc::clone(shared), id)?;
        let (spec, stop) = (Arc::clone(spec), stop.clone());
        tasks.push(consumer.run(move |c| async move { c.consume(&spec, id, recorder, stop).await }));
    }
    Ok(tasks)
}

/// Starts every connected producer sending on its thread; with `limits`, producer i
/// sends `limits[i]` messages at most.
fn start_producers(
    args: &RunArgs,
    producers: Vec<OnThread<Client>>,
    limits: Option<&[u64]>,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> Vec<ThreadTask<ProducerOutcome>> {
    (0u32..)
        .zip(producers)
        .map(|(id, client)| {
            let spec = ProducerSpec {
                id,
                destination: args.destination.clone(),
                size: args.size,
                persistent: args.persistent,
                window: args.window,
                headers: args.send_headers.clone(),
                groups: group_plan(args).map(|plan| (args.group_header.clone(), plan)),
                cycle: args.header_cycle.clone(),
                limit: limits.and_then(|l| l.get(id as usize).copied()),
            };
            let (shared, stop) = (Arc::clone(shared), stop.clone());
            client.run(|c| producer::produce(c, spec, shared, stop))
        })
        .collect()
}

/// Whether the broker promised to deliver what the producers of `args` sent: with
/// receipts, or persistent.
fn promised(args: &RunArgs) -> bool {
    args.window > 0 || args.persistent
}

/// Logs confirmed messages that never arrived; `promised`: the broker confirmed them (a
/// receipt, an accepted outcome), rather than merely being sent them.
fn warn_missing(promised: bool, shared: &Shared, confirmed: &[SeqSet], missing: u64) {
    if missing > 0 {
        let examples = shared.deliveries.missing_examples(confirmed, 5);
        if promised {
            tracing::warn!(lost = missing, ?examples, "confirmed messages never arrived (producer, seq)");
        } else {
            tracing::warn!(
                undelivered = missing,
                ?examples,
                "non-persistent messages sent without receipts never arrived"
            );
        }
    }
}

/// The load a run put on the broker, as its report describes it.
pub(crate) struct Load {
    pub label: Option<String>,
    pub url: String,
    pub destination: String,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    pub persistent: bool,
    pub window: u32,
    pub ack: String,
    pub prefetch: u32,
    /// The broker confirmed each message the producers count as sent.
    pub promised: bool,
    pub selector_split: bool,
}

impl Load {
    fn of(args: &RunArgs) -> Load {
        Load {
            label: args.label.clone(),
            url: args.url.clone(),
            destination: args.destination.clone(),
            producers: args.producers,
            consumers: args.consumers,
            size: args.size,
            persistent: args.persistent,
            window: args.window,
            ack: AckMode::from(args.ack).as_str().to_string(),
            prefetch: args.prefetch,
            promised: promised(args),
            selector_split: args.selector_split,
        }
    }
}

/// What a finished run measured, before it becomes a [`RunReport`].
struct Ended<'a> {
    server: Option<String>,
    rss_idle: Option<u64>,
    rss: RssStats,
    confirmed: &'a [SeqSet],
    missing: u64,
    totals: Totals,
    measured_s: f64,
    warmup_s: f64,
    drain_s: f64,
    cpu_percent: Option<f64>,
    bench_cpu_percent: Option<f64>,
}

impl Ended<'_> {
    fn into_report(self, load: &Load) -> RunReport {
        let Ended { totals, measured_s, .. } = self;
        let per_second = |n: u64| if measured_s > 0.0 { round3(n as f64 / measured_s) } else { 0.0 };
        RunReport {
            label: load.label.clone().or_else(|| self.server.clone()).unwrap_or_else(|| load.url.clone()),
            server: self.server,
            destination: load.destination.clone(),
            producers: load.producers,
            consumers: load.consumers,
            size: load.size,
            persistent: load.persistent,
            window: load.window,
            ack: load.ack.clone(),
            prefetch: load.prefetch,
            sent: totals.sent,
            received: totals.received,
            send_rate: per_second(totals.sent),
            receive_rate: per_second(totals.received),
            latency_ms: LatencyMs::from_nanos(&totals.latencies),
            rss_idle_mib: self.rss_idle.map(|b| round3(b as f64 / MIB)),
            rss_peak_mib: self.rss.peak_mib().map(round3),
            rss_mean_mib: self.rss.mean_mib().map(round3),
            cpu_percent: self.cpu_percent,
            bench_cpu_percent: self.bench_cpu_percent,
            confirmed: self.confirmed.iter().map(SeqSet::len).sum(),
            lost: if load.promised { self.missing } else { 0 },
            duplicates: totals.counts.repeated(),
            foreign: totals.counts.foreign,
            duration_s: round3(measured_s),
            warmup_s: round3(self.warmup_s),
            drain_s: round3(self.drain_s),
            errors: totals.errors,
            groups: None,
            selector_mismatches: load.selector_split.then_some(totals.selector_mismatches),
            backlog: None,
        }
    }
}

/// How the run spreads its messages over groups; `None` without --groups.
fn group_plan(args: &RunArgs) -> Option<GroupPlan> {
    args.groups.map(|groups| GroupPlan { groups, group_size: args.group_size })
}

/// Connects and subscribes `count` consumers, each on its own thread.
pub(crate) async fn subscribe_consumers(
    spec: &Arc<ConsumerSpec>,
    count: u32,
) -> anyhow::Result<Vec<OnThread<Subscribed>>> {
    connect_all("consumer", count, |i| {
        let spec = Arc::clone(spec);
        async move { consumer::subscribe(&spec, i).await.with_context(|| format!("failed to subscribe consumer {i}")) }
    })
    .await
}

/// Connects `count` producers, each on its own thread.
pub(crate) async fn connect_producers(
    url: &str,
    options: &ClientOptions,
    count: u32,
) -> anyhow::Result<Vec<OnThread<Client>>> {
    connect_all("producer", count, |i| {
        let (url, options) = (url.to_string(), options.clone());
        async move { Client::connect(&url, options).await.with_context(|| format!("failed to connect producer {i}")) }
    })
    .await
}

/// Sums of every producer's and consumer's outcome.
pub(crate) struct Totals {
    sent: u64,
    received: u64,
    latencies: hdrhistogram::Histogram<u64>,
    counts: DeliveryCounts,
    selector_mismatches: u64,
    errors: Vec<String>,
}

impl Totals {
    fn of(producers: &[ProducerOutcome], consumers: Vec<ConsumerOutcome>) -> anyhow::Result<Totals> {
        let mut totals = Totals {
            sent: producers.iter().map(|p| p.measured_sent).sum(),
            received: 0,
            latencies: nanos_histogram()?,
            counts: DeliveryCounts::default(),
            selector_mismatches: 0,
            errors: producers.iter().filter_map(|p| p.error.clone()).collect(),
        };
        for c in consumers {
            totals.received += c.measured_received;
            totals.latencies.add(&c.latencies).context("failed to merge latency histograms")?;
            totals.counts.merge(c.counts);
            totals.selector_mismatches += c.selector_mismatches;
            totals.errors.extend(c.error);
        }
        Ok(totals)
    }
}

/// Waits until every confirmed message was delivered or `timeout` passes; returns how
/// many are still missing.
pub(crate) async fn drain(shared: &Shared, confirmed: &[SeqSet], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let missing = shared.deliveries.missing(confirmed);
        if missing == 0 || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Sleeps until `at`; false when `stop` came first.
async fn sleep_until_unless(at: Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

fn cpu_seconds(broker: Option<&BrokerProcess>) -> Option<f64> {
    let broker = broker?;
    match broker.cpu_seconds() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(pid = broker.pid(), error = format!("{e:#}"), "failed to read a process's CPU time");
            None
        }
    }
}

/// Ctrl-C ends the producers early; the run still drains and reports.
pub(crate) async fn stop_on_ctrl_c(stop: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::warn!("interrupted: stopping the producers, then draining and reporting");
        stop.cancel();
    }
}
