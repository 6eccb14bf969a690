//! Runs `bench/paging-soak.sh` at its smallest against the debug builds: a paged backlog
//! filled and drained with a kill -9 half way through the drain, checked to pass with
//! every figure printed; and the same script failing when the broker's peak RSS reaches
//! the limit (a limit of 1 MiB), so its verdict is not a foregone one.

mod common;

use common::run_bench_script;
use std::ffi::OsStr;
use std::time::Duration;

/// A small fill and drain in a debug build plus two broker start-ups, on a loaded machine.
const SOAK_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the soak with `args`; returns its exit success and its output (stdout + stderr).
fn soak(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let root = tempfile::Builder::new().prefix("duomq-paging-soak-").tempdir()?;
    let (log, work) = (root.path().join("soak.log"), root.path().join("work"));
    let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    args.extend([OsStr::new("--work"), work.as_os_str()]);
    let status = run_bench_script("paging-soak.sh", &args, &[], &log, SOAK_TIMEOUT)?;
    Ok((status.success(), std::fs::read_to_string(&log)?))
}

#[test]
fn given_a_small_backlog_and_a_kill_mid_drain_should_pass_and_print_every_figure() -> anyhow::Result<()> {
    let (passed, out) = soak(&["--messages", "40000", "--page-bytes", "256KiB", "--kill-during-drain"])?;
    assert!(passed, "the soak failed:\n{out}");
    for line in ["fill: ", "drain: ", "kill -9 half way through the drain", "peak RSS", "result: PASS"] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    assert!(out.contains("confirmed 40,000, lost 0,") && out.contains("out of order 0"), "{out}");
    Ok(())
}

#[test]
fn given_an_rss_limit_below_what_the_broker_needs_should_fail_saying_so() -> anyhow::Result<()> {
    let (passed, out) = soak(&["--messages", "2000", "--rss-limit", "1"])?;
    assert!(!passed, "a 1 MiB limit passed:\n{out}");
    assert!(out.contains("result: FAIL: peak RSS") && out.contains("reached the limit of 1 MiB"), "{out}");
    Ok(())
}
