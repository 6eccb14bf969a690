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
