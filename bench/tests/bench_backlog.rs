//! `duomq-bench run --backlog` against the real broker: the fill sends exactly the backlog
//! with no consumer, the drain delivers every receipted message, and the report carries
//! both rates. Then `bench/compare.sh --backlog-only` at its tiniest, so the section's
//! scripts, the paged broker (a 64 KiB maxSizeBytes with addressFullPolicy page), ActiveMQ
//! (when installed) and the report's ratio lines keep working. No timing
//! is asserted: the figures are for reports.

mod common;

use common::{compare_targets, bench_json, ratio_after, read_jsonl, Broker, CompareRun};
use std::time::Duration;

/// Three small fill-and-drain cells plus broker start-ups, generous for a loaded machine.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(600);

fn assert_drained_everything(report: &serde_json::Value, messages: u64) {
    assert_eq!(report["backlog"]["messages"], messages, "{report}");
    assert_eq!(report["confirmed"], messages, "every message of the backlog is receipted: {report}");
    assert!(report["received"].as_u64().is_some_and(|n| n >= messages), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{report}");
    for rate in ["fill_rate", "drain_rate", "drain_s"] {
        assert!(report["backlog"][rate].as_f64().is_some_and(|x| x > 0.0), "{rate}: {report}");
    }
    assert_eq!(report["backlog"]["drain_rate"], report["receive_rate"], "{report}");
    assert_eq!(report["backlog"]["out_of_order"], 0, "{report}");
}

#[test]
fn given_backlog_when_benchmarked_should_fill_it_without_consumers_then_drain_every_message() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let (url, pid) = (broker.url(), broker.pid().to_string());
    let report = bench_json(&[
        "run",
        "--url",
        &url,
        "--backlog",
        "3001",
        "--persistent",
        "--window",
        "32",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--drain-timeout",
        "60s",
        "--broker-pid",
        &pid,
        "--json",
    ])?;
    assert_drained_everything(&report, 3001);
    assert!(report["rss_peak_mib"].as_f64().is_some_and(|x| x > 0.0), "{report}");
    Ok(())
}

#[test]
fn given_backlog_section_when_compared_at_the_smallest_size_should_measure_every_setup_and_print_the_ratios(
) -> anyhow::Result<()> {
    let (only, activemq) = compare_targets();
    let args = ["--backlog-only", "--only", only, "--backlog-messages", "2000", "--backlog-page-bytes", "64KiB"];
    let run = CompareRun::run("duomq-compare-backlog-", &args, &[], COMPARE_TIMEOUT)?;
    let results = read_jsonl(&run.out("backlog.jsonl"))?;
    let report = std::fs::read_to_string(run.out("backlog.txt"))?;
    let labels: Vec<&str> = results.iter().filter_map(|r| r["label"].as_str()).collect();
    assert!(run.status.success(), "compare.sh {args:?} failed ({}):\n{}", run.status, run.logs(40));
    let mut want = vec!["backlog/duomq-memory/r1", "backlog/duomq-paged/r1"];
    if activemq {
        want.push("backlog/activemq/r1");
    }
    for label in want {
        assert!(labels.contains(&label), "no {label} in {labels:?}:\n{}", run.logs(40));
    }
    for r in &results {
        assert_drained_everything(r, 2000);
        assert_eq!((r["producers"].as_u64(), r["window"].as_u64()), (Some(4), Some(64)), "{r}");
    }
    let ratios = [
        ("ratio duomq paged/in-memory drain: ", true),
        ("ratio duomq paged/ActiveMQ drain: ", activemq),
        ("ratio duomq in-memory/ActiveMQ drain: ", activemq),
    ];
    for (line, measured) in ratios {
        assert!(report.contains(line), "no ratio line {line:?}:\n{report}");
        if measured {
            assert!(ratio_after(&report, line).is_some_and(|x| x > 0.0), "no ratio on {line:?}:\n{report}");
        }
    }
    assert!(report.contains("goal >= 0.5: "), "{report}");
    Ok(())
}
