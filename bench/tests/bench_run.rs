//! Runs `duomq-bench` as a process against the real `duomq-broker` binary, started on free
//! loopback ports in a temp dir, and checks the JSON it reports. The broker's log and the
//! bench's stderr are printed when a test fails.
//!
//! The broker binary is not a dependency Cargo builds for this crate, so it is looked up
//! next to this test's own target directory (`<target>/<profile>/duomq-broker`). `cargo
//! test --workspace` builds it anyway (the broker's own tests need it); when it is missing
//! this test runs `cargo build -p duomq-broker` once in the same profile.

mod common;

use anyhow::Context;
use common::{bench_json, Broker};
use std::time::{Duration, Instant};

#[test]
fn given_broker_when_benchmarked_persistently_should_report_rates_footprint_and_no_losses() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let (url, pid) = (broker.url(), broker.pid().to_string());
    let started = Instant::now();
    let report = bench_json(&[
        "run",
        "--url",
        &url,
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--persistent",
        "--window",
        "8",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--json",
        "--broker-pid",
        &pid,
        "--label",
        "test",
    ])?;
    let number = |key: &str| report[key].as_f64().with_context(|| format!("no number {key} in {report}"));
    assert!(number("received")? > 0.0, "{report}");
    assert!(number("sent")? > 0.0, "{report}");
    assert_eq!(number("lost")?, 0.0, "{report}");
    assert_eq!(number("duplicates")?, 0.0, "{report}");
    assert!(number("rss_peak_mib")? > 0.0, "{report}");
    assert!(number("rss_idle_mib")? > 0.0, "{report}");
    assert!(number("cpu_percent")? > 0.0, "{report}");
    assert!(number("bench_cpu_percent")? > 0.0, "the load generator's own CPU: {report}");
    assert!(report["latency_ms"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert_eq!(report["label"], "test");
    assert_eq!((report["producers"].as_u64(), report["consumers"].as_u64()), (Some(2), Some(2)));
    assert!(started.elapsed() < Duration::from_secs(15), "the run took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn given_subscribe_headers_when_benchmarked_should_consume_over_raw_connection() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let url = broker.url();
    let report = bench_json(&[
        "run",
        "--url",
        &url,
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--window",
        "0",
        "--persistent",
        "--ack",
        "client",
        "--prefetch",
        "50",
        "--subscribe-header",
        "x-queue-type=quorum",
        "--json",
    ])?;
    assert!(report["received"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert!(report["rss_peak_mib"].is_null(), "{report}");
    Ok(())
}

#[test]
fn given_temp_dir_when_measuring_fsync_rate_should_report_a_rate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let report = bench_json(&["fsync-rate", "--dir", &dir_arg, "--duration", "1s", "--json"])?;
    assert!(report["fsync_rate"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert!(report["preallocated"]["fsync_rate"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "scratch file left behind");
    Ok(())
}
