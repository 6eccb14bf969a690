//! `duomq-bench run --groups` against the real broker: grouped messages must come out one
//! consumer per group, in order, and a grouping the broker does not keep must make the
//! bench report the violations and fail; the first-of-group receipt latency must be
//! measured apart from the rest. Then `bench/compare.sh --groups-only` in its quickest
//! form, so the section's scripts, broker configs and report keep working (the ActiveMQ
//! cells run too when ActiveMQ is installed).

mod common;

use anyhow::{bail, Context};
use common::{activemq_installed, bench_binary, bench_json, bench_outcome, broker_binary, read_jsonl, wait_with_timeout, Broker};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The whole section: broker start-ups and six short cells, generous for a loaded machine.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(600);

/// 2 producers, 4 consumers, 39 groups: a count coprime with the consumer count, so that
/// strict round-robin dispatch cannot keep groups together by chance.
fn grouped_run(url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--url",
        url,
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        "--persistent",
        "--window",
        "16",
        "--producers",
        "2",
        "--consumers",
        "4",
        "--groups",
        "39",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn given_groups_in_a_header_the_broker_ignores_when_benchmarked_should_report_split_groups_and_fail(
) -> anyhow::Result<()> {
    let broker = Broker::start()?;
    // The broker round-robins messages whose group it cannot see: a broken grouping.
    let args = grouped_run(&broker.url(), &["--group-header", "X-Bench-Not-A-Group"]);
    let run = bench_outcome(&as_strs(&args))?;
    let report = run.json?;
    assert!(!run.success, "a run with violations must fail: {report}");
    let groups = &report["groups"];
    assert_eq!(groups["header"], "X-Bench-Not-A-Group", "{report}");
    assert_eq!(groups["groups_seen"], 39, "{report}");
    assert!(groups["split_groups"].as_u64().is_some_and(|n| n > 0), "{report}");
    let count = |key: &str| groups[key].as_u64().unwrap_or(0);
    assert_eq!(count("violations"), count("split_groups") + count("out_of_order"), "{report}");
    assert!(groups["examples"][0].as_str().is_some_and(|e| e.contains("reached consumer")), "{report}");
    assert!(run.stderr.contains("message group violations"), "{}", run.stderr);
    assert_eq!(report["lost"], 0, "{report}");
    Ok(())
}

#[test]
fn given_grouped_messages_when_benchmarked_should_keep_each_group_on_one_consumer_in_order() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let args = grouped_run(&broker.url(), &[]);
    let report = bench_json(&as_strs(&args))?;
    let groups = &report["groups"];
    assert_eq!(groups["header"], "JMSXGroupID", "{report}");
    assert_eq!(groups["groups_seen"], 39, "{report}");
    assert_eq!(groups["violations"], 0, "{report}");
    // Spread over the consumers, not all on one.
    assert!(groups["groups_per_consumer_max"].as_u64().is_some_and(|n| n < 39), "{report}");
    assert_eq!((report["lost"].as_u64(), report["duplicates"].as_u64()), (Some(0), Some(0)), "{report}");
    Ok(())
}

#[test]
fn given_rotating_groups_with_window_one_should_time_first_sends_apart_from_the_others() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let url = broker.url();
    let report = bench_json(&[
        "run", "--url", &url, "--duration", "1s", "--warmup", "200ms", "--persistent", "--window", "1", "--groups",
        "4", "--group-size", "5", "--json",
    ])?;
    let groups = &report["groups"];
    assert_eq!(groups["group_size"], 5, "{report}");
    let (first, later) = (groups["first_sends"].as_u64().unwrap_or(0), groups["later_sends"].as_u64().unwrap_or(0));
    assert!(first > 0 && later > 0, "{report}");
    // One send in five opens a group (four later ones each); the measured interval cuts
    // generations short at both ends.
    assert!(later > 2 * first && later < 8 * first, "first {first}, later {later}: {report}");
    assert!(groups["receipt_ms_first"]["p50"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert!(groups["receipt_ms_later"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    // New groups kept coming for the whole run.
    assert!(groups["groups_seen"].as_u64().is_some_and(|n| n >= first), "{report}");
    assert_eq!(groups["violations"], 0, "{report}");
    Ok(())
}



/// The script's output and every log of the run, for a failed assertion.
fn run_logs(root: &Path) -> String {
    let mut out = std::fs::read_to_string(root.join("compare.log")).unwrap_or_default();
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(root.join("out/logs")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out += &format!("\n--- {} (last 40 lines) ---\n", path.display());
        out.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
    }
    out
}

#[test]
fn given_quick_groups_section_when_run_should_compare_grouped_with_ungrouped_and_time_cluster_decisions(
) -> anyhow::Result<()> {
    let root = tempfile::Builder::new().prefix("duomq-bench-groups-").tempdir()?;
    let with_activemq = activemq_installed();
    let only = if with_activemq { "duomq,activemq" } else { "duomq" };
    let out_dir = root.path().join("out");
    let log = std::fs::File::create(root.path().join("compare.log"))?;
    let mut child = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("compare.sh"))
        .args(["--groups-only", "--duration", "1s", "--warmup", "1s", "--only", only])
        .arg("--out")
        .arg(&out_dir)
        .env("DUOMQ_BROKER", broker_binary()?)
        .env("DUOMQ_BENCH", bench_binary())
        .env("TMPDIR", root.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("failed to run bench/compare.sh")?;
    let status = wait_with_timeout(&mut child, COMPARE_TIMEOUT)?;
    let logs = || run_logs(root.path());
    if !status.success() {
        bail!("compare.sh --groups-only exited with {status}:\n{}", logs());
    }

    let cells = read_jsonl(&out_dir.join("groups.jsonl"))?;
    let labels: Vec<&str> = cells.iter().filter_map(|c| c["label"].as_str()).collect();
    let mut want = vec!["groups/duomq-ungrouped", "groups/duomq-grouped"];
    if with_activemq {
        want.extend(["groups/activemq-ungrouped", "groups/activemq-grouped"]);
    }
    want.extend(["groups/cluster-remote", "groups/cluster-local"]);
    assert_eq!(labels, want, "{}", logs());
    for cell in &cells {
        assert!(cell["receive_rate"].as_f64().is_some_and(|r| r > 0.0), "{cell}\n{}", logs());
        assert_eq!((cell["lost"].as_u64(), cell["duplicates"].as_u64()), (Some(0), Some(0)), "{cell}");
        let grouped = !cell["label"].as_str().is_some_and(|l| l.ends_with("-ungrouped"));
        assert_eq!(cell["groups"].is_object(), grouped, "{cell}");
        if grouped {
            assert_eq!(cell["groups"]["violations"], 0, "{cell}\n{}", logs());
        }
    }
    let table = std::fs::read_to_string(out_dir.join("groups.txt"))?;
    assert!(table.contains("duomq grouped / ungrouped") && table.contains("R (asks L)"), "{table}");
    assert!(table.contains("RabbitMQ: no message groups"), "{table}");
    Ok(())
}
