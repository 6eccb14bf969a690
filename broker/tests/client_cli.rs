//! The client library and the `send`/`receive` commands against the real broker binary,
//! started per test by the shared harness (free loopback ports, temp dir, own log,
//! `/readyz` polled before use).

mod common;

use common::Broker;
use duomq_broker::admin::api::BrokerStatus;
use duomq_broker::client::{AckMode, Client, ClientError, ClientOptions, ReceiptFuture, SendOptions};
use std::collections::VecDeque;
use std::process::{Command, Output};
use std::time::Duration;

/// Upper bound on waiting for one message in the library tests.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

fn url(broker: &Broker) -> String {
    format!("stomp://127.0.0.1:{}", broker.stomp_port)
}

/// Runs the broker binary as a client command against `broker`.
fn cli(broker: &Broker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .args(args)
        .args(["--url", &url(broker)])
        .output()
        .expect("failed to run duomq-broker")
}

fn persistent() -> SendOptions {
    SendOptions { persistent: true, ..SendOptions::default() }
}

#[tokio::test]
async fn given_100_persistent_receipted_messages_when_received_with_individual_acks_should_get_each_once() {
    let broker = Broker::start("client-round-trip", "");
    let producer = Client::connect(&url(&broker), ClientOptions::default()).await.unwrap();
    // Pipelined: up to 16 receipts outstanding.
    let mut window: VecDeque<ReceiptFuture> = VecDeque::new();
    for i in 0..100 {
        if window.len() == 16 {
            window.pop_front().unwrap().await.unwrap();
        }
        window.push_back(producer.send_with_receipt("/queue/round-trip", format!("m{i}"), persistent()).await.unwrap());
    }
    for receipt in window {
        receipt.await.unwrap();
    }
    producer.disconnect().await.unwrap();

    let consumer = Client::connect(&url(&broker), ClientOptions::default()).await.unwrap();
    let mut sub = consumer.subscribe("/queue/round-trip", AckMode::ClientIndividual, Some(10)).await.unwrap();
    let mut bodies = Vec::new();
    for i in 0..100 {
        let message = tokio::time::timeout(MESSAGE_TIMEOUT, sub.recv()).await.expect("message did not arrive").unwrap();
        assert!(!message.redelivered, "{message:?}");
        assert_eq!(message.destination, "/queue/round-trip");
        assert!(message.ack.is_some());
        if i == 99 {
            // For a persistent message, returns once the ack is durable.
            consumer.ack_with_receipt(&message).await.unwrap();
        } else {
            consumer.ack(&message).await.unwrap();
        }
        bodies.push(String::from_utf8(message.body.to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);
    consumer.disconnect().await.unwrap();

    let status: BrokerStatus = serde_json::from_value(broker.status()).expect("/status matches BrokerStatus");
    let queue = status.queues.into_iter().find(|q| q.name == "/queue/round-trip").expect("queue in /status");
    assert_eq!((queue.depth, queue.in_flight, queue.acked_total), (0, 0, 100));
}

#[tokio::test]
async fn given_invalid_destination_when_sending_with_receipt_should_fail_with_broker_message() {
    let broker = Broker::start("client-broker-error", "");
    let client = Client::connect(&url(&broker), ClientOptions::default()).await.unwrap();
    let receipted = SendOptions { receipt: true, ..SendOptions::default() };
    let err = client.send("/nowhere/x", "x", receipted).await.unwrap_err();
    assert!(matches!(&err, ClientError::Broker { message } if message.contains("/nowhere/x")), "{err:?}");
    assert!(client.failure().is_some());
}

#[test]
fn given_cli_sent_50_persistent_messages_when_cli_receives_50_with_print_should_print_50_lines() {
    let broker = Broker::start("cli-send-receive", "");
    let sent = cli(&broker, &["send", "--destination", "/queue/cli", "--count", "50", "--persistent", "--receipts"]);
    let sent_err = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "send failed: {sent_err}");
    assert!(sent_err.contains("sent 50 messages") && sent_err.contains("50 receipted"), "{sent_err}");

    let received =
        cli(&broker, &["receive", "--destination", "/queue/cli", "--count", "50", "--print", "--timeout", "10s"]);
    let received_err = String::from_utf8_lossy(&received.stderr);
    assert!(received.status.success(), "receive failed: {received_err}");
    let stdout = String::from_utf8(received.stdout).unwrap();
    let expected: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
    assert!(received_err.contains("received 50 messages") && received_err.contains("0 duplicates"), "{received_err}");
}

#[test]
fn given_empty_queue_when_cli_receives_a_count_should_fail_after_timeout() {
    let broker = Broker::start("cli-receive-timeout", "");
    let received = cli(&broker, &["receive", "--destination", "/queue/empty", "--count", "1", "--timeout", "200ms"]);
    assert!(!received.status.success());
    let stderr = String::from_utf8_lossy(&received.stderr);
    assert!(stderr.contains("received 0 of 1 messages"), "{stderr}");
}

#[test]
fn given_three_queued_messages_when_cli_receives_one_should_leave_the_others_for_the_next_receive() {
    let broker = Broker::start("cli-receive-leaves-rest", "");
    let sent = cli(&broker, &["send", "--destination", "/queue/rest", "--count", "3", "--receipts"]);
    assert!(sent.status.success(), "send failed: {}", String::from_utf8_lossy(&sent.stderr));

    let first = cli(&broker, &["receive", "--destination", "/queue/rest", "--count", "1", "--print"]);
    assert!(first.status.success(), "receive failed: {}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(String::from_utf8_lossy(&first.stdout), "message 0\n");

    let rest =
        cli(&broker, &["receive", "--destination", "/queue/rest", "--count", "2", "--print", "--timeout", "10s"]);
    assert!(rest.status.success(), "receive failed: {}", String::from_utf8_lossy(&rest.stderr));
    assert_eq!(String::from_utf8_lossy(&rest.stdout), "message 1\nmessage 2\n");
}

#[test]
fn given_a_failing_command_should_print_one_line_and_exit_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .args(["run", "--config", "/nonexistent-duomq-config.yaml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("failed to run duomq-broker");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line, no backtrace: {stderr}");
    assert!(
        stderr.starts_with("error: failed to read config file /nonexistent-duomq-config.yaml: "),
        "the step and its cause: {stderr}"
    );
    let detailed = Command::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .args(["--verbose", "run", "--config", "/nonexistent-duomq-config.yaml"])
        .output()
        .expect("failed to run duomq-broker");
    assert!(String::from_utf8_lossy(&detailed.stderr).contains("Caused by:"), "--verbose shows the causes one per line");
}

#[test]
fn given_cli_send_with_groups_and_a_stomp_style_header_when_received_with_print_header_should_print_each_group_before_its_body() {
    let broker = Broker::start("cli-groups-print-header", "");
    let sent = cli(
        &broker,
        &["send", "--destination", "/queue/grouped", "--count", "6", "--groups", "3", "--header", "tenant:acme", "--receipts"],
    );
    let sent_err = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "send failed: {sent_err}");
    assert!(sent_err.contains("sent 6 messages in 3 groups"), "{sent_err}");

    let received = cli(
        &broker,
        &[
            "receive",
            "--destination",
            "/queue/grouped",
            "--count",
            "6",
            "--print-header",
            "JMSXGroupID",
            "--print-header",
            "tenant",
            "--timeout",
            "10s",
        ],
    );
    let received_err = String::from_utf8_lossy(&received.stderr);
    assert!(received.status.success(), "receive failed: {received_err}");
    assert!(received_err.starts_with("subscribed to /queue/grouped at stomp://127.0.0.1:"), "says when it is subscribed: {received_err}");
    let stdout = String::from_utf8(received.stdout).unwrap();
    let expected: Vec<String> = (0..6).map(|i| format!("JMSXGroupID:g{}\ttenant:acme\tmessage {i}", i % 3)).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
}

/// Runs a client command against a `stomp+ssl://` broker, with `env` set.
fn tls_cli(port: u16, args: &[&str], env: &[(&str, &std::path::Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .args(args)
        .args(["--url", &format!("stomp+ssl://127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("failed to run duomq-broker")
}

/// The single `error: ...` line of a failed command.
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "expected a failure: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    println!("{}", stderr.trim_end());
    stderr
}

#[test]
fn given_tls_broker_with_client_certificates_when_cli_sends_and_receives_over_stomp_ssl_should_deliver() {
    let pki = common::tls::Pki::new("cli-tls");
    let config = pki.config_with_client_auth(&pki.leaf("broker"), &["stomp"], "stomp", "required");
    let auth = "auth:\n  users:\n    - name: app\n      password: app-pw\n  certificateUsers:\n    cli-app: app\n";
    let broker = Broker::start("cli-tls", &format!("{config}{auth}"));
    let me = pki.leaf("cli-app");
    // Flags for send, the environment variables for receive.
    let (ca, cert, key) = (pki.ca_file.display().to_string(), me.cert.display().to_string(), me.key.display().to_string());
    let sent = tls_cli(
        broker.stomp_port,
        &["send", "--ca-file", &ca, "--cert-file", &cert, "--key-file", &key, "-d", "/queue/cli-tls", "-n", "20", "--persistent", "--receipts"],
        &[],
    );
    let sent_err = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success() && sent_err.contains("20 receipted"), "send over TLS: {sent_err}");
    let env = [("DUOMQ_CA_FILE", pki.ca_file.as_path()), ("DUOMQ_CERT_FILE", me.cert.as_path()), ("DUOMQ_KEY_FILE", me.key.as_path())];
    let received = tls_cli(broker.stomp_port, &["receive", "-d", "/queue/cli-tls", "--count", "20", "--print", "--timeout", "10s"], &env);
    let received_err = String::from_utf8_lossy(&received.stderr);
    assert!(received.status.success(), "receive over TLS: {received_err}");
    assert!(received_err.starts_with("subscribed to /queue/cli-tls at stomp+ssl://127.0.0.1:"), "{received_err}");
    assert_eq!(String::from_utf8_lossy(&received.stdout).lines().count(), 20);

    // Without a certificate the broker refuses the handshake; the one line says so.
    let line = one_error_line(&tls_cli(broker.stomp_port, &["send", "--ca-file", &ca, "-d", "/queue/x"], &[]));
    assert!(line.contains("requires a client certificate") && line.contains("--cert-file"), "{line}");
    // No CA: which option to set.
    let line = one_error_line(&tls_cli(broker.stomp_port, &["send", "-d", "/queue/x"], &[]));
    assert!(line.contains("--ca-file") && line.contains("DUOMQ_CA_FILE"), "{line}");
    // A CA file that is not there: named.
    let missing = pki.dir.join("missing-ca.crt");
    let line = one_error_line(&tls_cli(broker.stomp_port, &["send", "-d", "/queue/x"], &[("DUOMQ_CA_FILE", missing.as_path())]));
    assert!(line.contains(&missing.display().to_string()), "{line}");
    // Another CA: the broker's certificate is not from it.
    let other = common::tls::Pki::new("cli-tls-other");
    let line = one_error_line(&tls_cli(
        broker.stomp_port,
        &["send", "--cert-file", &cert, "--key-file", &key, "-d", "/queue/x"],
        &[("DUOMQ_CA_FILE", other.ca_file.as_path())],
    ));
    assert!(line.contains("not signed by a CA in"), "{line}");
}

#[test]
fn given_send_and_receive_help_should_explain_the_tls_options() {
    for command in ["send", "receive"] {
        let out = Command::new(env!("CARGO_BIN_EXE_duomq-broker")).args([command, "--help"]).output().expect("run --help");
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in ["stomp+ssl://", "--ca-file", "--cert-file", "--key-file", "--tls-server-name", "DUOMQ_CA_FILE", "certificateUsers"] {
            assert!(help.contains(flag), "{command} --help does not mention {flag}:\n{help}");
        }
    }
}
