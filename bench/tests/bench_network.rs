//! Runs `bench/compare.sh --network-only` in its quickest form (1 s cells, one kill)
//! against the debug builds of duomq-broker and duomq-bench, so the network section's
//! scripts, broker configs and report keep working: the local and bridged cells must
//! drain without losses and the failover of the bridge's target must report a gap and
//! lose nothing. The ActiveMQ cell runs too when ActiveMQ is installed (the Debian
//! package's layout), and is left out otherwise. On failure the script's output and
//! every log of the run are printed.

mod common;

use anyhow::{bail, Context};
use common::{activemq_installed, bench_binary, broker_binary, read_jsonl, wait_with_timeout};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The whole section: broker start-ups, three short cells, one kill with its restart
/// and resync, generous for a loaded machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);


fn compare_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compare.sh")
}



/// The script's output and every log of the run, for a failed assertion.
fn run_logs(root: &Path) -> String {
    let mut out = std::fs::read_to_string(root.join("compare.log")).unwrap_or_default();
    let logs = root.join("out/logs");
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(&logs).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        out += &format!("\n--- {} (last 60 lines) ---\n", path.display());
        out.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
    }
    out
}

#[test]
fn given_quick_network_section_when_run_should_measure_local_and_bridged_flows_and_a_lossless_failover(
) -> anyhow::Result<()> {
    let root = tempfile::Builder::new().prefix("duomq-bench-network-").tempdir()?;
    let with_activemq = activemq_installed();
    let only = if with_activemq { "duomq,activemq" } else { "duomq" };
    let out_dir = root.path().join("out");
    let log = std::fs::File::create(root.path().join("compare.log"))?;
    let mut child = Command::new("bash")
        .arg(compare_script())
        .args(["--network-only", "--duration", "1s", "--warmup", "1s", "--network-kills", "1", "--only", only])
        .arg("--out")
        .arg(&out_dir)
        .env("DUOMQ_BROKER", broker_binary()?)
        .env("DUOMQ_BENCH", bench_binary())
        .env("BENCH_FAILOVER_EVERY", "1s")
        .env("TMPDIR", root.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("failed to run bench/compare.sh")?;
    let status = wait_with_timeout(&mut child, RUN_TIMEOUT)?;
    let logs = || run_logs(root.path());
    if !status.success() {
        bail!("compare.sh --network-only exited with {status}:\n{}", logs());
    }

    let cells = read_jsonl(&out_dir.join("network.jsonl"))?;
    let labels: Vec<&str> = cells.iter().filter_map(|c| c["label"].as_str()).collect();
    let mut want = vec!["network/duomq-local", "network/duomq-bridged"];
    if with_activemq {
        want.push("network/activemq");
    }
    assert_eq!(labels, want, "{}", logs());
    for cell in &cells {
        assert!(cell["receive_rate"].as_f64().is_some_and(|r| r > 0.0), "{cell}\n{}", logs());
        assert!(cell["confirmed"].as_u64().is_some_and(|n| n > 0), "{cell}");
        assert_eq!(cell["lost"], 0, "{cell}");
        assert_eq!(cell["duplicates"], 0, "{cell}");
    }

    let failovers = read_jsonl(&out_dir.join("network-failover.jsonl"))?;
    let [failover] = failovers.as_slice() else { bail!("want one failover result, got {failovers:?}\n{}", logs()) };
    assert_eq!(failover["kills"], 1, "{failover}");
    assert_eq!(failover["gap_at"], "deliveries", "{failover}");
    assert!(failover["gap_ms"]["p50"].as_f64().is_some_and(|ms| ms > 0.0), "{failover}");
    assert!(failover["confirmed"].as_u64().is_some_and(|n| n > 0), "{failover}");
    assert_eq!(failover["lost"], 0, "{failover}\n{}", logs());
    assert!(failover["consumer_failovers"].as_u64().is_some_and(|n| n >= 1), "the consumer followed the kill: {failover}");

    let table = std::fs::read_to_string(out_dir.join("network.txt"))?;
    assert!(table.contains("bridged / local") && table.contains("gap at the consumer"), "{table}");
    Ok(())
}
