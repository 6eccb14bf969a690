//! `duomq-bench amqp` against the real broker with its AMQP 1.0 listener on: producers and
//! consumers on one queue at credit 1 and 16, every accepted message delivered once, the
//! JSON in `run`'s shape; URLs it cannot speak refused with a message naming the fix. Then
//! `bench/compare.sh --amqp-only` at its tiniest, so the section's scripts, RabbitMQ's AMQP
//! 1.0 plugin (when RabbitMQ is installed), the ActiveMQ check and the report's ratio lines
//! keep working. No timing is asserted: the figures are for reports.

mod common;

use common::{activemq_installed, bench_json, bench_outcome, ratio_after, read_jsonl, reserve_port, Broker, CompareRun};
use rstest::rstest;
use std::path::Path;
use std::time::Duration;

/// One round of eight 1 s cells (four without RabbitMQ) plus broker start-ups, generous
/// for a loaded machine.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where compare.sh starts RabbitMQ from (the Debian package's layout).
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A broker with its AMQP listener on a free port, and that port's URL.
fn amqp_broker() -> anyhow::Result<(Broker, String)> {
    let port = reserve_port();
    let broker = Broker::start_with_config(Some(&format!("amqp:\n  enabled: true\n  listen: 127.0.0.1:{port}\n")))?;
    Ok((broker, format!("amqp://127.0.0.1:{port}")))
}

fn assert_delivered_everything(report: &serde_json::Value) {
    assert!(report["received"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert!(report["confirmed"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["foreign"], 0, "{report}");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{report}");
}

#[rstest]
#[case::one_by_one_credit_1("1", "1", None)]
#[case::two_by_two_credit_16("2", "16", None)]
#[case::two_by_two_credit_16_closed_loop("2", "16", Some("8"))]
fn given_amqp_listener_when_benchmarked_should_deliver_every_accepted_message_once(
    #[case] clients: &str,
    #[case] credit: &str,
    #[case] max_backlog: Option<&str>,
) -> anyhow::Result<()> {
    let (broker, url) = amqp_broker()?;
    let pid = broker.pid().to_string();
    let mut args = vec![
        "amqp", "--url", &url, "--address", "queue://bench-test", "--producers", clients, "--consumers", clients,
        "--persistent", "--credit", credit, "--duration", "1s", "--warmup", "500ms", "--broker-pid", &pid, "--json",
    ];
    if let Some(bound) = max_backlog {
        args.extend(["--max-backlog", bound]);
    }
    let report = bench_json(&args)?;
    assert_delivered_everything(&report);
    let clients: u64 = clients.parse()?;
    let credit: u64 = credit.parse()?;
    assert_eq!((report["producers"].as_u64(), report["consumers"].as_u64()), (Some(clients), Some(clients)), "{report}");
    assert_eq!((report["window"].as_u64(), report["prefetch"].as_u64()), (Some(credit), Some(credit)), "{report}");
    assert_eq!((report["persistent"].as_bool(), report["ack"].as_str()), (Some(true), Some("accepted")), "{report}");
    assert_eq!(report["destination"], "queue://bench-test", "{report}");
    assert!(report["cpu_percent"].as_f64().is_some() && report["latency_ms"]["p99"].as_f64().is_some(), "{report}");
    Ok(())
}

#[test]
fn given_stomp_and_amqp_addresses_of_one_queue_when_benchmarked_should_share_it() -> anyhow::Result<()> {
    let (broker, url) = amqp_broker()?;
    for address in ["/queue/shared", "shared"] {
        let report = bench_json(&[
            "amqp", "--url", &url, "--address", address, "--duration", "500ms", "--warmup", "0s", "--json",
        ])?;
        assert_delivered_everything(&report);
    }
    assert!(broker.log_text().contains("AMQP 1.0 listening"), "{}", broker.log_text());
    Ok(())
}

#[rstest]
#[case::amqps("amqps://127.0.0.1:5671", "amqps://")]
#[case::stomp("stomp://127.0.0.1:61613", "amqp://127.0.0.1:5672")]
fn given_url_it_cannot_speak_should_be_refused_naming_the_form(#[case] url: &str, #[case] said: &str) -> anyhow::Result<()> {
    let run = bench_outcome(&["amqp", "--url", url, "--json"])?;
    assert!(!run.success && run.stderr.contains(said), "{}", run.stderr);
    Ok(())
}

#[test]
fn given_nothing_listening_when_benchmarked_should_fail_naming_the_address() -> anyhow::Result<()> {
    let port = reserve_port().to_string();
    let url = format!("amqp://127.0.0.1:{port}");
    let run = bench_outcome(&["amqp", "--url", &url, "--duration", "500ms", "--json"])?;
    assert!(!run.success && run.stderr.contains(&format!("127.0.0.1:{port}")), "{}", run.stderr);
    Ok(())
}

#[test]
fn given_amqp_section_when_compared_at_the_smallest_size_should_measure_every_cell_and_print_the_ratios(
) -> anyhow::Result<()> {
    let rabbitmq = Path::new(RABBITMQ_SERVER).exists();
    let activemq = activemq_installed();
    let mut only = vec!["duomq"];
    if rabbitmq {
        only.push("rabbitmq");
    } else {
        eprintln!("RabbitMQ is not installed: the section runs duomq's cells only (apt-get install rabbitmq-server for all)");
    }
    if activemq {
        only.push("activemq");
    }
    let only = only.join(",");
    let args = ["--amqp-only", "--only", &only, "--duration", "1s", "--warmup", "0s", "--amqp-rounds", "1"];
    let run = CompareRun::run("duomq-compare-amqp-", &args, &[], COMPARE_TIMEOUT)?;
    assert!(run.status.success(), "compare.sh {args:?} failed ({}):\n{}", run.status, run.logs(40));

    let results = read_jsonl(&run.out("amqp.jsonl"))?;
    let labels: Vec<&str> = results.iter().filter_map(|r| r["label"].as_str()).collect();
    let mut systems = vec!["duomq"];
    if rabbitmq {
        systems.push("rabbitmq");
    }
    for system in &systems {
        for cell in ["p-1k-1x1-c1", "p-1k-1x1-c64", "p-1k-4x4-c1", "p-1k-4x4-c64"] {
            let label = format!("amqp/{system}/{cell}/r1");
            assert!(labels.contains(&label.as_str()), "no {label} in {labels:?}:\n{}", run.logs(40));
        }
    }
    assert_eq!(results.len(), systems.len() * 4, "{labels:?}");
    for r in &results {
        assert_delivered_everything(r);
        assert_eq!(r["persistent"].as_bool(), Some(true), "{r}");
    }

    let report = std::fs::read_to_string(run.out("amqp.txt"))?;
    assert!(report.contains("(closed-loop: producers wait while"), "the report does not say the load is closed-loop:\n{report}");
    for cell in ["1P+1C credit 1", "1P+1C credit 64", "4P+4C credit 1", "4P+4C credit 64"] {
        let line = format!("ratio duomq/best peer 1 KiB persistent {cell}: ");
        if rabbitmq {
            assert!(ratio_after(&report, &line).is_some_and(|x| x > 0.0), "no ratio line {line:?}:\n{report}");
        } else {
            assert!(report.contains(&line) && report.contains("not in --only"), "{report}");
        }
    }
    if activemq {
        // Debian's package has no AMQP transport; the report says so rather than a figure.
        assert!(report.contains("ActiveMQ") && report.contains("AMQP transport"), "{report}");
    }
    Ok(())
}
