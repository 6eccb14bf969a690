//! `duomq-bench` over `stomp+ssl://` against the real broker with its STOMP listener on
//! TLS, certificates from `duomq-bench test-certs` (duomq's own certificate code): both
//! consumer paths (the duomq client and the raw subscriber that sends broker-specific
//! SUBSCRIBE headers) deliver everything; a client certificate is presented when the
//! broker requires one; a missing or wrong CA fails with a message saying so. Then
//! `bench/compare.sh --tls-only` at its tiniest, so the section's scripts, ActiveMQ's
//! stomp+ssl config (when ActiveMQ is installed) and the report's ratio lines keep working.
//! No timing is asserted: the figures are for reports.

mod common;

use anyhow::Context;
use common::{compare_targets, short_run_args, bench_json, bench_outcome, ratio_after, read_jsonl, Broker, CompareRun};
use rstest::rstest;
use std::path::PathBuf;
use std::time::Duration;

/// The section with one round of eight 1 s cells (four without ActiveMQ) plus broker
/// start-ups, generous for a loaded machine.
const COMPARE_TIMEOUT: Duration = Duration::from_secs(600);

/// What `duomq-bench test-certs` wrote into its own temp dir.
struct Certs {
    dir: tempfile::TempDir,
    client: bool,
}

impl Certs {
    fn new(client_cn: Option<&str>) -> anyhow::Result<Certs> {
        let dir = tempfile::Builder::new().prefix("duomq-bench-tls-").tempdir()?;
        let dir_arg = dir.path().to_string_lossy().into_owned();
        let mut args = vec!["test-certs", "--dir", &dir_arg, "--json"];
        if let Some(cn) = client_cn {
            args.extend(["--client-cn", cn]);
        }
        let written = bench_json(&args)?;
        let certs = Certs { dir, client: client_cn.is_some() };
        for (key, file) in [("ca_file", "ca.crt"), ("cert_file", "broker.crt"), ("key_file", "broker.key")] {
            assert_eq!(written[key].as_str().map(PathBuf::from), Some(certs.path(file)), "{written}");
        }
        assert_eq!(written["client_cert_file"].is_null(), !certs.client, "{written}");
        Ok(certs)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    /// broker.yaml's `tls:` section for the STOMP listener with these files.
    fn broker_yaml(&self, client_auth: &str) -> String {
        let show = |f: &str| self.path(f).display().to_string();
        format!(
            "tls:\n  certFile: {}\n  keyFile: {}\n  caFile: {}\n  stomp:\n    enabled: true\n    clientAuth: {client_auth}\n",
            show("broker.crt"),
            show("broker.key"),
            show("ca.crt"),
        )
    }
}

fn assert_delivered_everything(report: &serde_json::Value) {
    assert!(report["received"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert!(report["confirmed"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{report}");
}

#[rstest]
#[case::duomq_client_consumers(&[])]
#[case::raw_consumers(&["--subscribe-header", "activemq.prefetchSize=100"])]
fn given_tls_listener_when_benchmarked_over_stomp_ssl_should_deliver_every_receipted_message(
    #[case] consumer: &[&str],
) -> anyhow::Result<()> {
    let certs = Certs::new(None)?;
    let broker = Broker::start_with_config(Some(&certs.broker_yaml("none")))?;
    let (url, ca) = (broker.tls_url(), certs.arg("ca.crt"));
    let mut extra = vec!["--ca-file", &ca];
    extra.extend_from_slice(consumer);
    let report = bench_json(&short_run_args(&url, &extra))?;
    assert_delivered_everything(&report);
    Ok(())
}

#[rstest]
#[case::duomq_client_consumers(&[])]
#[case::raw_consumers(&["--subscribe-header", "activemq.prefetchSize=100"])]
fn given_client_auth_required_when_benchmarked_with_a_client_certificate_should_deliver_and_without_one_should_fail(
    #[case] consumer: &[&str],
) -> anyhow::Result<()> {
    let certs = Certs::new(Some("bench-client"))?;
    let broker = Broker::start_with_config(Some(&certs.broker_yaml("required")))?;
    let (url, ca, cert, key) = (broker.tls_url(), certs.arg("ca.crt"), certs.arg("client.crt"), certs.arg("client.key"));
    let mut with_cert = vec!["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key];
    with_cert.extend_from_slice(consumer);
    assert_delivered_everything(&bench_json(&short_run_args(&url, &with_cert))?);

    let mut without = vec!["--ca-file", &ca];
    without.extend_from_slice(consumer);
    let run = bench_outcome(&short_run_args(&url, &without))?;
    assert!(!run.success, "a client without a certificate must be refused; stderr:\n{}", run.stderr);
    Ok(())
}

#[test]
fn given_stomp_ssl_url_without_ca_file_when_benchmarked_should_fail_naming_the_option() -> anyhow::Result<()> {
    let certs = Certs::new(None)?;
    let broker = Broker::start_with_config(Some(&certs.broker_yaml("none")))?;
    let url = broker.tls_url();
    let run = bench_outcome(&short_run_args(&url, &[]))?;
    assert!(!run.success, "{}", run.stderr);
    assert!(run.stderr.contains("--ca-file"), "the error must say which option to set:\n{}", run.stderr);
    Ok(())
}

#[rstest]
#[case::duomq_client_consumers(&[])]
#[case::raw_consumers(&["--subscribe-header", "activemq.prefetchSize=100"])]
fn given_ca_of_another_authority_when_benchmarked_should_fail_the_handshake_and_say_so(
    #[case] consumer: &[&str],
) -> anyhow::Result<()> {
    let certs = Certs::new(None)?;
    let other = Certs::new(None)?;
    let broker = Broker::start_with_config(Some(&certs.broker_yaml("none")))?;
    let (url, wrong_ca) = (broker.tls_url(), other.arg("ca.crt"));
    let mut extra = vec!["--ca-file", &wrong_ca];
    extra.extend_from_slice(consumer);
    let run = bench_outcome(&short_run_args(&url, &extra))?;
    assert!(!run.success, "{}", run.stderr);
    let said = run.stderr.to_lowercase();
    assert!(
        said.contains("tls") && ["not signed", "unknownissuer", "badsignature"].iter().any(|w| said.contains(w)),
        "the error must say the broker's certificate is not from that CA:\n{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn given_tls_section_when_compared_at_the_smallest_size_should_measure_every_setup_and_print_the_ratios(
) -> anyhow::Result<()> {
    let (only, activemq) = compare_targets();
    let args = ["--tls-only", "--only", only, "--duration", "1s", "--warmup", "0s", "--tls-rounds", "1"];
    let run = CompareRun::run("duomq-compare-tls-", &args, &[], COMPARE_TIMEOUT)?;
    assert!(run.status.success(), "compare.sh {args:?} failed ({}):\n{}", run.status, run.logs(40));

    let results = read_jsonl(&run.out("tls.jsonl"))?;
    let labels: Vec<&str> = results.iter().filter_map(|r| r["label"].as_str()).collect();
    let mut want = vec!["duomq-plain", "duomq-tls"];
    if activemq {
        want.extend(["activemq-plain", "activemq-tls"]);
    }
    for setup in &want {
        for cell in ["p-1k-w64", "p-1k-4x4-w64"] {
            let label = format!("tls/{setup}/{cell}/r1");
            assert!(labels.contains(&label.as_str()), "no {label} in {labels:?}:\n{}", run.logs(40));
        }
    }
    for r in &results {
        assert_delivered_everything(r);
        let producers = r["producers"].as_u64().context("no producers")?;
        assert_eq!((r["window"].as_u64(), r["persistent"].as_bool()), (Some(64), Some(true)), "{r}");
        assert!(producers == 1 || producers == 4, "{r}");
        assert!(r["cpu_percent"].as_f64().is_some() && r["bench_cpu_percent"].as_f64().is_some(), "{r}");
    }

    let report = std::fs::read_to_string(run.out("tls.txt"))?;
    for cell in ["1 KiB persistent 1P+1C w64", "1 KiB persistent 4P+4C w64"] {
        let line = format!("ratio duomq TLS/plaintext {cell}: ");
        assert!(ratio_after(&report, &line).is_some_and(|x| x > 0.0), "no ratio line {line:?}:\n{report}");
        assert!(report.contains("median of 1 paired round;"), "{report}");
        let line = format!("ratio duomq TLS/ActiveMQ stomp+ssl {cell}: ");
        if activemq {
            assert!(ratio_after(&report, &line).is_some_and(|x| x > 0.0), "no ratio line {line:?}:\n{report}");
            let own = format!("ratio ActiveMQ TLS/plaintext {cell}: ");
            assert!(ratio_after(&report, &own).is_some_and(|x| x > 0.0), "no ratio line {own:?}:\n{report}");
        } else {
            assert!(report.contains(&line) && report.contains("not in --only"), "{report}");
        }
    }
    Ok(())
}
