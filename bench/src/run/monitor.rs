//! Watching a run from the side: the broker's RSS every 250 ms, and a progress line on
//! stderr every second. Neither touches a connection; both stop when cancelled.

use super::shared::Shared;
use crate::body::wall_clock_ns;
use crate::footprint::{BrokerProcess, RssStats, MIB};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Samples the broker's RSS until `stop`; returns peak and mean.
pub async fn sample_rss(broker: BrokerProcess, shared: Arc<Shared>, stop: CancellationToken) -> RssStats {
    let mut stats = RssStats::default();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return stats,
            _ = ticks.tick() => {}
        }
        match broker.rss_bytes() {
            Ok(bytes) => {
                stats.add(bytes);
                shared.counters.rss_bytes.store(bytes, Ordering::Relaxed);
            }
            Err(e) if !warned => {
                tracing::warn!(pid = broker.pid(), error = format!("{e:#}"), "failed to sample the broker's memory");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// Prints a progress line every second until `stop`.
pub async fn print_progress(shared: Arc<Shared>, stop: CancellationToken) {
    let counters = &shared.counters;
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    let (mut last_sent, mut last_received) = (0u64, 0u64);
    let mut last_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let secs = (now - last_at).as_secs_f64().max(1e-3);
        let sent = counters.sent.load(Ordering::Relaxed);
        let received = counters.received.load(Ordering::Relaxed);
        let rss = counters.rss_bytes.load(Ordering::Relaxed);
        let rss = if rss == 0 { "-".to_string() } else { format!("{:.0} MiB", rss as f64 / MIB) };
        eprintln!(
            "{:>6.1}s {:<7} sent {:>8.0}/s  received {:>8.0}/s  outstanding {:>5}  broker rss {}",
            (now - shared.phases.started).as_secs_f64(),
            shared.phases.name_at(wall_clock_ns()),
            (sent - last_sent) as f64 / secs,
            (received - last_received) as f64 / secs,
            counters.outstanding.load(Ordering::Relaxed),
            rss,
        );
        (last_sent, last_received, last_at) = (sent, received, now);
    }
}
