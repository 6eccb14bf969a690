//! `duomq-bench run --backlog N`: fill, then drain. The producers send N messages in all
//! (split evenly among them, each keeping its window of receipts in flight) while no
//! consumer is subscribed, so the whole backlog sits in the broker; once every producer
//! has its last receipt, the consumers subscribe and take it all. The fill rate is
//! receipted messages over the fill's time, the drain rate deliveries over the time from
//! the consumers' SUBSCRIBE until every receipted message has arrived: how fast a broker
//! hands out a backlog it holds in memory, pages in from disk or reads from its store.
//! The broker's RSS is sampled over both, so its peak shows what the backlog cost in
//! memory. Latencies are each message's time in the broker (mostly its wait in the queue).

use super::shared::{Phases, Shared};
use super::{
    client_options, connect_producers, consumer_spec, cpu_seconds, drain, start_consumers, start_producers,
    stop_on_ctrl_c, subscribe_consumers, warn_missing, Ended, Load, Totals, Watch,
};
use crate::cli::RunArgs;
use crate::footprint::BrokerProcess;
use crate::report::{round3, BacklogReport, RunReport};
use crate::tally::SeqSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The "measured interval" of a backlog run: everything it sends and receives counts, for
/// as long as the fill and drain take.
const UNBOUNDED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Fills the destination with `messages` messages, then drains it; returns the report.
pub async fn backlog(args: &RunArgs, messages: u64) -> anyhow::Result<RunReport> {
    let broker = args.broker_pid.map(BrokerProcess::open).transpose()?;
    let itself = BrokerProcess::open(std::process::id())?;
    let options = client_options(args);
    let consumer_spec = consumer_spec(args, &options);
    let producers = connect_producers(&args.url, &options, args.producers).await?;
    let server = producers.first().and_then(|p| p.connection().server().map(str::to_string));
    let rss_idle = broker.as_ref().map(BrokerProcess::rss_bytes).transpose()?;

    let shared = Arc::new(Shared::new(Phases::starting_now(Duration::ZERO, UNBOUNDED), args.producers));
    let (stop_producers, stop_consumers, stop_watching) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());
    tokio::spawn(stop_on_ctrl_c(stop_producers.clone()));
    let watch = Watch::start(broker.as_ref(), &shared, &stop_watching);

    tracing::info!(messages, producers = args.producers, "filling the backlog, no consumer subscribed");
    let fill_started = Instant::now();
    let limits = split(messages, args.producers);
    let mut producer_outcomes = Vec::new();
    for task in start_producers(args, producers, Some(&limits), &shared, &stop_producers) {
        producer_outcomes.push(task.join().await?);
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    let confirmed: Vec<SeqSet> = producer_outcomes.iter_mut().map(|o| std::mem::take(&mut o.confirmed)).collect();
    let filled: u64 = confirmed.iter().map(SeqSet::len).sum();
    tracing::info!(filled, fill_s, consumers = args.consumers, "backlog filled; draining");

    let (cpu_start, own_start) = (cpu_seconds(broker.as_ref()), cpu_seconds(Some(&itself)));
    let drain_started = Instant::now();
    let subscribed = subscribe_consumers(&consumer_spec, args.consumers).await?;
    let consumer_tasks = start_consumers(subscribed, &shared, &consumer_spec, &stop_consumers)?;
    let missing = drain(&shared, &confirmed, args.drain_timeout).await;
    let drain_s = drain_started.elapsed().as_secs_f64();
    let (cpu_end, own_end) = (cpu_seconds(broker.as_ref()), cpu_seconds(Some(&itself)));
    stop_consumers.cancel();
    let mut consumer_outcomes = Vec::new();
    for task in consumer_tasks {
        consumer_outcomes.push(task.join().await?);
    }
    let rss = watch.finish(&stop_watching).await?;
    warn_missing(super::promised(args), &shared, &confirmed, missing);
    if missing > 0 {
        tracing::warn!(missing, drain_timeout = ?args.drain_timeout, "the drain did not finish; raise --drain-timeout");
    }

    let totals = Totals::of(&producer_outcomes, consumer_outcomes)?;
    let sent = totals.sent;
    let mut report = Ended {
        server,
        rss_idle,
        rss,
        confirmed: &confirmed,
        missing,
        totals,
        measured_s: drain_s,
        warmup_s: 0.0,
        drain_s,
        cpu_percent: super::cpu_percent(cpu_start, cpu_end, drain_s),
        bench_cpu_percent: super::cpu_percent(own_start, own_end, drain_s),
    }
    .into_report(&Load::of(args));
    let fill_rate = if fill_s > 0.0 { round3(filled as f64 / fill_s) } else { 0.0 };
    report.send_rate = if fill_s > 0.0 { round3(sent as f64 / fill_s) } else { 0.0 };
    report.backlog = Some(BacklogReport {
        messages,
        fill_s: round3(fill_s),
        fill_rate,
        drain_s: round3(drain_s),
        drain_rate: report.receive_rate,
        out_of_order: shared.counters.out_of_order.load(std::sync::atomic::Ordering::Relaxed),
    });
    Ok(report)
}

/// `total` messages over `producers`: equal shares, the first ones one more when it does
/// not divide.
fn split(total: u64, producers: u32) -> Vec<u64> {
    let n = u64::from(producers.max(1));
    (0..n).map(|i| total / n + u64::from(i < total % n)).collect()
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn given_backlog_should_split_it_over_producers_to_the_message() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(200_000, 1), vec![200_000]);
    }
}
