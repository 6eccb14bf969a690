//! The result of a run as a value, and its two renderings: one JSON object line (stable
//! snake_case keys, for scripts) and a table for people. Pure: the caller prints.

pub use crate::failover::GapSummaryMs;
use crate::groups::GroupsReport;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

/// Latency percentiles in milliseconds; `None` when nothing was measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl LatencyMs {
    /// Percentiles of a histogram of nanoseconds.
    pub fn from_nanos(histogram: &Histogram<u64>) -> LatencyMs {
        if histogram.is_empty() {
            return LatencyMs::default();
        }
        let ms = |ns: u64| Some(round3(ns as f64 / 1e6));
        LatencyMs {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Everything `duomq-bench run` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub label: String,
    /// The broker's `server` header from CONNECTED, if it sent one.
    pub server: Option<String>,
    pub destination: String,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    pub persistent: bool,
    pub window: u32,
    pub ack: String,
    pub prefetch: u32,
    /// Messages sent during the measured interval.
    pub sent: u64,
    /// Messages received during the measured interval.
    pub received: u64,
    pub send_rate: f64,
    pub receive_rate: f64,
    /// End-to-end latency of messages sent during the measured interval.
    pub latency_ms: LatencyMs,
    /// Broker RSS before the producers started.
    pub rss_idle_mib: Option<f64>,
    /// Broker RSS sampled every 250 ms from the producers' start to the end of the drain.
    pub rss_peak_mib: Option<f64>,
    pub rss_mean_mib: Option<f64>,
    /// Broker CPU over the measured interval; 100 = one core busy.
    pub cpu_percent: Option<f64>,
    /// This load generator's own CPU over the same interval (every producer and consumer
    /// connection, its TLS included); 100 = one core busy.
    pub bench_cpu_percent: Option<f64>,
    /// Messages the broker confirmed over the whole run (receipted; with --window 0, sent).
    pub confirmed: u64,
    /// Receipted (with --window 0 and --persistent: sent) messages never delivered.
    pub lost: u64,
    /// Deliveries beyond the first of a message, redeliveries included.
    pub duplicates: u64,
    /// Messages this run did not send (left over in the queue from earlier runs).
    pub foreign: u64,
    /// Length of the measured interval in seconds.
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Seconds the consumers needed after the producers stopped.
    pub drain_s: f64,
    /// Connections that failed during the run, as "producer 2: ..." lines.
    pub errors: Vec<String>,
    /// With --groups: the grouping check and the first-of-group receipt latency.
    pub groups: Option<GroupsReport>,
    /// With --selector-split: deliveries that did not carry the value their consumer's
    /// selector selects (a broker that ignores selectors makes many); the run fails on any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector_mismatches: Option<u64>,
    /// With --backlog: the fill and the drain (send_rate and receive_rate are theirs too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogReport>,
}

/// A fill-then-drain run (`run --backlog N`).
#[derive(Debug, Clone, Serialize)]
pub struct BacklogReport {
    /// Messages the producers were asked to send, in all.
    pub messages: u64,
    /// From the producers' start until every one had its last receipt.
    pub fill_s: f64,
    pub fill_rate: f64,
    /// From the consumers' SUBSCRIBE until every confirmed message had arrived (or the
    /// drain timeout).
    pub drain_s: f64,
    pub drain_rate: f64,
    /// First deliveries a consumer got after a later message of the same producer (a
    /// queue keeps each producer's order): 0 unless the broker reordered.
    pub out_of_order: u64,
}

impl RunReport {
    pub fn to_json_line(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// A header row and a value row, then any losses, duplicates and errors in capitals.
    pub fn to_table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mib = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let columns: [(&str, String); 15] = [
            ("label", self.label.clone()),
            ("PxC", format!("{}x{}", self.producers, self.consumers)),
            ("size", self.size.to_string()),
            ("persistent", if self.persistent { "yes" } else { "no" }.to_string()),
            ("window", self.window.to_string()),
            ("sent/s", format!("{:.0}", self.send_rate)),
            ("recv/s", format!("{:.0}", self.receive_rate)),
            ("p50 ms", ms(self.latency_ms.p50)),
            ("p99 ms", ms(self.latency_ms.p99)),
            ("p99.9 ms", ms(self.latency_ms.p999)),
            ("rss idle/peak MiB", format!("{}/{}", mib(self.rss_idle_mib), mib(self.rss_peak_mib))),
            ("cpu %", self.cpu_percent.map_or("-".to_string(), |v| format!("{v:.0}"))),
            ("bench cpu %", self.bench_cpu_percent.map_or("-".to_string(), |v| format!("{v:.0}"))),
            ("lost", self.lost.to_string()),
            ("dup", self.duplicates.to_string()),
        ];
        let mut head = String::new();
        let mut row = String::new();
        for (name, value) in &columns {
            let width = name.len().max(value.len());
            let _ = write!(head, "{name:>width$}  ");
            let _ = write!(row, "{value:>width$}  ");
        }
        let mut out = format!("{}\n{}\n", head.trim_end(), row.trim_end());
        if self.lost > 0 {
            let _ = writeln!(out, "LOST: {} confirmed messages were never delivered", self.lost);
        }
        if self.duplicates > 0 {
            let _ = writeln!(out, "DUPLICATES: {} messages were delivered more than once", self.duplicates);
        }
        if self.foreign > 0 {
            let _ = writeln!(out, "note: {} messages from earlier runs were consumed and ignored", self.foreign);
        }
        if let Some(g) = &self.groups {
            let c = &g.check;
            let size = g.group_size.map_or(String::new(), |k| format!(", {k} messages each"));
            let _ = writeln!(
                out,
                "groups: {} ({}{size}), {} seen, {}..{} per consumer",
                g.groups, g.header, c.groups_seen, c.groups_per_consumer_min, c.groups_per_consumer_max,
            );
            let _ = writeln!(
                out,
                "receipt p50/p99 ms: first of a group {}/{} ({} sends), others {}/{} ({} sends)",
                ms(g.receipt_ms_first.p50),
                ms(g.receipt_ms_first.p99),
                g.first_sends,
                ms(g.receipt_ms_later.p50),
                ms(g.receipt_ms_later.p99),
                g.later_sends,
            );
            if c.violations > 0 {
                let _ = writeln!(
                    out,
                    "GROUP VIOLATIONS: {} groups reached more than one consumer, {} deliveries out of order",
                    c.split_groups, c.out_of_order
                );
                for example in &c.examples {
                    let _ = writeln!(out, "  {example}");
                }
            }
        }
        if let Some(b) = &self.backlog {
            let _ = writeln!(
                out,
                "backlog: {} messages, filled in {:.2} s ({:.0} msg/s), drained in {:.2} s ({:.0} msg/s)",
                b.messages, b.fill_s, b.fill_rate, b.drain_s, b.drain_rate
            );
            if b.out_of_order > 0 {
                let _ = writeln!(out, "OUT OF ORDER: {} first deliveries came after a later message of their producer", b.out_of_order);
            }
        }
        match self.selector_mismatches {
            Some(0) => {
                let _ = writeln!(out, "selectors: every delivery matched its consumer's selector");
            }
            Some(n) => {
                let _ = writeln!(out, "SELECTOR MISMATCHES: {n} deliveries did not match their consumer's selector");
            }
            None => {}
        }
        for error in &self.errors {
            let _ = writeln!(out, "ERROR: {error}");
        }
        out
    }

    /// Grouping violations (0 without --groups): the run fails when there are any.
    pub fn group_violations(&self) -> u64 {
        self.groups.as_ref().map_or(0, |g| g.check.violations)
    }
}

/// Everything `duomq-bench failover` reports.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub label: String,
    pub server: Option<String>,
    pub destination: String,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    pub window: u32,
    pub kills_requested: u32,
    /// Kills made (fewer than requested when a cycle failed; see `errors`).
    pub kills: u32,
    /// What the gaps were measured on: `receipts` (the producers') or `deliveries` (the
    /// consumers' first deliveries).
    pub gap_at: &'static str,
    /// Failover gap percentiles over the kills; `None` when no kill had a gap.
    pub gap_ms: Option<GapSummaryMs>,
    pub per_kill: Vec<KillReport>,
    pub sent: u64,
    /// Messages whose RECEIPT arrived.
    pub confirmed: u64,
    /// Deliveries, repeats included.
    pub received: u64,
    /// Receipted, never delivered.
    pub lost: u64,
    /// Delivered again without `redelivered:true` and with no consumer connection lost
    /// since the first delivery: stored or sent twice.
    pub duplicates: u64,
    /// Delivered again with `redelivered:true`: unacknowledged when a connection was lost.
    pub redeliveries: u64,
    /// Delivered again without `redelivered:true`, but after a consumer connection was
    /// lost since the first delivery (its ACK may have been lost with it).
    pub unflagged_redeliveries: u64,
    pub foreign: u64,
    /// Reconnects of the producers' clients.
    pub failovers: u64,
    /// Reconnects of the consumers' clients.
    pub consumer_failovers: u64,
    pub duration_s: f64,
    pub errors: Vec<String>,
}

/// One kill of a failover run.
#[derive(Debug, Clone, Serialize)]
pub struct KillReport {
    pub member: String,
    pub pid: i32,
    /// When SIGKILL was sent, in seconds since the run started.
    pub at_s: f64,
    /// Last receipt from the killed broker to the first from its successor, or with
    /// `gap_at: deliveries` the longest pause between new messages at the consumers.
    pub gap_ms: Option<f64>,
    /// The SIGKILL to the end of that gap: the first receipt from the successor, or the
    /// delivery that ended the longest pause.
    pub kill_to_resume_ms: Option<f64>,
    /// Kill to another member answering as live (as polled).
    pub promoted_ms: f64,
    /// Kill to the restarted member being ready again.
    pub ready_ms: f64,
}

impl FailoverReport {
    pub fn to_json_line(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// One line per kill, then the summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, k) in self.per_kill.iter().enumerate() {
            let gap = k.gap_ms.map_or("-".to_string(), |g| format!("{g:.1}"));
            let resumed = k.kill_to_resume_ms.map_or("-".to_string(), |g| format!("{g:.1}"));
            let _ = writeln!(
                out,
                "kill {:>2}: {} (pid {}) at {:.1}s  gap {gap} ms  (from the kill {resumed} ms)  promoted {:.0} ms  ready {:.0} ms",
                i + 1,
                k.member,
                k.pid,
                k.at_s,
                k.promoted_ms,
                k.ready_ms
            );
        }
        let gaps = self.gap_ms.map_or("-".to_string(), |g| format!("{:.1}/{:.1}/{:.1}", g.p50, g.p99, g.max));
        let _ = writeln!(
            out,
            "{}: {}/{} kills  gap p50/p99/max {gaps} ms  sent {}  confirmed {}  lost {}  duplicates {}  redeliveries {} (+{} unflagged)  failovers {} (consumers {})",
            self.label,
            self.kills,
            self.kills_requested,
            self.sent,
            self.confirmed,
            self.lost,
            self.duplicates,
            self.redeliveries,
            self.unflagged_redeliveries,
            self.failovers,
            self.consumer_failovers
        );
        for error in &self.errors {
            let _ = writeln!(out, "ERROR: {error}");
        }
        out
    }
}

/// What `duomq-bench fsync-rate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct FsyncReport {
    pub dir: String,
    pub size: usize,
    /// Appending: every fdatasync also commits a new file size.
    pub fsyncs: u64,
    pub fsync_rate: f64,
    pub latency_ms: LatencyMs,
    pub duration_s: f64,
    /// Writing into preallocated space: every fdatasync flushes data only.
    pub preallocated: FsyncMode,
}

/// One way of measuring, for the second (preallocated) measurement.
#[derive(Debug, Clone, Serialize)]
pub struct FsyncMode {
    pub fsyncs: u64,
    pub fsync_rate: f64,
    pub latency_ms: LatencyMs,
    pub duration_s: f64,
}

impl FsyncReport {
    pub fn to_json_line(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn to_text(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let pre = &self.preallocated;
        format!(
            "fsync-rate in {}, {}-byte writes, {:.1} s each:\n  \
             appending:               {:.0} fsyncs/s (fdatasync latency p50 {} ms, p99 {} ms, max {} ms)\n  \
             into preallocated space: {:.0} fsyncs/s (fdatasync latency p50 {} ms, p99 {} ms, max {} ms)\n",
            self.dir,
            self.size,
            self.duration_s,
            self.fsync_rate,
            ms(self.latency_ms.p50),
            ms(self.latency_ms.p99),
            ms(self.latency_ms.max),
            pre.fsync_rate,
            ms(pre.latency_ms.p50),
            ms(pre.latency_ms.p99),
            ms(pre.latency_ms.max),
        )
    }
}

/// A histogram of nanoseconds from 1 ns to one hour, 3 significant digits.
pub fn nanos_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000_000, 3)?)
}

/// Rounds to three decimals, so JSON stays readable.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunReport {
        RunReport {
            label: "duomq".into(),
            server: Some("duomq-broker/0.1.0".into()),
            destination: "/queue/bench".into(),
            producers: 4,
            consumers: 4,
            size: 1024,
            persistent: true,
            window: 64,
            ack: "client-individual".into(),
            prefetch: 1000,
            sent: 1000,
            received: 990,
            send_rate: 100.0,
            receive_rate: 99.0,
            latency_ms: LatencyMs { p50: Some(1.5), p99: Some(3.0), p999: Some(4.0), max: Some(5.0) },
            rss_idle_mib: Some(10.0),
            rss_peak_mib: Some(20.0),
            rss_mean_mib: Some(15.0),
            cpu_percent: Some(80.0),
            bench_cpu_percent: Some(60.0),
            confirmed: 1200,
            lost: 2,
            duplicates: 0,
            foreign: 0,
            duration_s: 10.0,
            warmup_s: 2.0,
            drain_s: 0.1,
            errors: vec![],
            groups: None,
            selector_mismatches: None,
            backlog: None,
        }
    }

    #[test]
    fn given_report_when_json_should_use_snake_case_keys() -> anyhow::Result<()> {
        let value: serde_json::Value = serde_json::from_str(&sample().to_json_line()?)?;
        for key in [
            "label",
            "producers",
            "consumers",
            "size",
            "persistent",
            "window",
            "sent",
            "received",
            "send_rate",
            "receive_rate",
            "rss_idle_mib",
            "rss_peak_mib",
            "rss_mean_mib",
            "cpu_percent",
            "bench_cpu_percent",
            "lost",
            "duplicates",
            "duration_s",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["latency_ms"]["p999"], 4.0);
        Ok(())
    }

    #[test]
    fn given_losses_when_table_should_print_them_prominently() {
        let table = sample().to_table();
        assert!(table.contains("4x4"));
        assert!(table.contains("LOST: 2"));
        assert!(!table.contains("DUPLICATES"));
    }

    #[test]
    fn given_group_violations_when_table_should_print_them_and_count_them() {
        let mut report = sample();
        assert_eq!(report.group_violations(), 0);
        report.groups = Some(GroupsReport {
            header: "JMSXGroupID".into(),
            groups: 10,
            group_size: None,
            check: crate::groups::GroupCheckSummary {
                groups_seen: 10,
                split_groups: 3,
                violations: 3,
                examples: vec!["group g1: ...".into()],
                ..Default::default()
            },
            first_sends: 0,
            later_sends: 5,
            receipt_ms_first: LatencyMs::default(),
            receipt_ms_later: LatencyMs::default(),
        });
        let table = report.to_table();
        assert!(table.contains("GROUP VIOLATIONS: 3 groups"), "{table}");
        assert!(table.contains("  group g1: ..."), "{table}");
        assert_eq!(report.group_violations(), 3);
    }

    #[test]
    fn given_histogram_should_report_percentiles_in_ms() -> anyhow::Result<()> {
        let mut h = nanos_histogram()?;
        assert_eq!(LatencyMs::from_nanos(&h), LatencyMs::default());
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000)?;
        }
        let l = LatencyMs::from_nanos(&h);
        assert!((l.p50.unwrap_or(0.0) - 500.0).abs() < 1.0);
        assert!((l.max.unwrap_or(0.0) - 1000.0).abs() < 1.0);
        Ok(())
    }
}
