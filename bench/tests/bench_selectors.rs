//! Selector loads against the real broker: `--header-cycle` tags the messages, and with
//! `--selector-split` each consumer subscribes with its own selector and checks every
//! delivery against it; complementary selectors take every message, none to the wrong
//! consumer. Then `bench/compare.sh --selectors-only` at its tiniest, so the section's
//! scripts, ActiveMQ's selectors over STOMP (when installed) and the report's ratio lines
//! keep working. No timing is asserted: the figures are for reports.

mod common;

use common::{compare_targets, short_run_args, bench_json, bench_outcome, ratio_after, read_jsonl, Broker, CompareRun};
use std::time::Duration;

/// One round of four 1 s cells (two without ActiveMQ) plus broker start-ups, generous for
/// a loaded machine.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(600);

fn assert_delivered_everything(report: &serde_json::Value) {
    assert!(report["received"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{report}");
}

#[test]
fn given_complementary_selectors_when_benchmarked_should_deliver_every_message_to_its_selector() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let url = broker.url();
    let report = bench_json(&short_run_args(&url, &["--header-cycle", "colour=red,blue", "--selector-split"]))?;
    assert_delivered_everything(&report);
    assert_eq!(report["selector_mismatches"], 0, "{report}");

    let plain = bench_json(&short_run_args(&url, &["--header-cycle", "colour=red,blue"]))?;
    assert_delivered_everything(&plain);
    assert!(plain.get("selector_mismatches").is_none(), "no check without selectors: {plain}");
    Ok(())
}

#[test]
fn given_selector_split_without_header_cycle_should_be_refused_naming_the_option() -> anyhow::Result<()> {
    let run = bench_outcome(&["run", "--selector-split", "--json"])?;
    assert!(!run.success && run.stderr.contains("--header-cycle"), "{}", run.stderr);
    Ok(())
}

#[test]
fn given_selectors_section_when_compared_at_the_smallest_size_should_measure_every_cell_and_print_the_ratios(
) -> anyhow::Result<()> {
    let (only, activemq) = compare_targets();
    let args = ["--selectors-only", "--only", only, "--duration", "1s", "--warmup", "0s", "--selectors-rounds", "1"];
    let run = CompareRun::run("duomq-compare-selectors-", &args, &[], COMPARE_TIMEOUT)?;
    assert!(run.status.success(), "compare.sh {args:?} failed ({}):\n{}", run.status, run.logs(40));

    let results = read_jsonl(&run.out("selectors.jsonl"))?;
    let labels: Vec<&str> = results.iter().filter_map(|r| r["label"].as_str()).collect();
    let mut systems = vec!["duomq"];
    if activemq {
        systems.push("activemq");
    }
    for system in &systems {
        for kind in ["plain", "selector"] {
            let label = format!("selectors/{system}-{kind}/r1");
            assert!(labels.contains(&label.as_str()), "no {label} in {labels:?}:\n{}", run.logs(40));
        }
    }
    for r in &results {
        assert_delivered_everything(r);
        let selector = r["label"].as_str().is_some_and(|l| l.contains("-selector/"));
        assert_eq!(r["selector_mismatches"].as_u64(), selector.then_some(0), "{r}");
    }

    let report = std::fs::read_to_string(run.out("selectors.txt"))?;
    let line = "ratio duomq selector/plain: ";
    assert!(ratio_after(&report, line).is_some_and(|x| x > 0.0), "no ratio line {line:?}:\n{report}");
    assert!(report.contains("median of 1 paired round;"), "{report}");
    for line in ["ratio ActiveMQ selector/plain: ", "ratio duomq selector/ActiveMQ selector: "] {
        if activemq {
            assert!(ratio_after(&report, line).is_some_and(|x| x > 0.0), "no ratio line {line:?}:\n{report}");
        } else {
            assert!(report.contains(line) && report.contains("not in --only"), "{report}");
        }
    }
    Ok(())
}
