//! `duomq-broker send`: produce numbered messages, optionally persistent and receipted
//! with a window of outstanding receipts, and report the rate.

use super::progress::Progress;
use super::{ConnectArgs, RUN_HEADER, SEQ_HEADER};
use anyhow::Context;
use bytes::Bytes;
use duomq_broker::client::{ReceiptFuture, SendOptions};
use std::collections::VecDeque;

/// `--help` text of the subcommand; the binary's subcommand variant uses it too, because
/// a doc comment there would replace it.
pub const SEND_LONG_ABOUT: &str = concat!("Send messages to a queue or topic, as a STOMP producer.\n\n\
        Each message gets a sequence number (in its body and in the duomq-seq header) so that \
        `duomq-broker receive` can spot duplicates. Progress goes to stderr every second, then a \
        summary with the rate.\n\n\
        Without --receipts a send is fire-and-forget (the final DISCONNECT still waits until the \
        broker has taken everything). With --receipts each message is confirmed by the broker; \
        with --persistent too, only after it is on disk. --window lets that many receipts be \
        outstanding at once, which is much faster than waiting for each.\n\n\
        Examples:\n  \
        duomq-broker send --destination /queue/hello --message 'hello, duomq'\n  \
        duomq-broker send --destination /queue/demo --count 1000 --size 1024 --persistent --receipts --window 32\n  \
        duomq-broker send --url stomp://app:secret@broker:61613 --destination /topic/news --header priority=high\n  \
        duomq-broker send --destination /queue/orders --count 1000 --groups 10 --receipts --window 32\n  \
        duomq-broker send --url stomp+ssl://broker:61614 --ca-file ca.crt --destination /queue/hello -m hi\n\n\
        With --groups N, message i carries JMSXGroupID: g<i % N> (ActiveMQ's and Artemis' message \
        group header): every message of a group goes to one consumer of the queue, also across the \
        live/backup groups of a cluster with a grouping handler. `duomq-broker receive --print-header \
        JMSXGroupID` shows which groups a consumer got.\n\n", tls_help!());

/// Options of `duomq-broker send`.
#[derive(clap::Args, Debug, Clone)]
#[command(about = "Send messages to a queue or topic", long_about = SEND_LONG_ABOUT)]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where to send: /queue/NAME (one consumer gets each message) or /topic/NAME (every
    /// subscriber does).
    #[arg(long, short = 'd', value_name = "DESTINATION")]
    pub destination: String,
    /// How many messages to send.
    #[arg(long, short = 'n', default_value_t = 1, value_name = "N")]
    pub count: u64,
    /// Body size in bytes: the sequence number, padded with dots (cut if SIZE is smaller).
    #[arg(long, value_name = "BYTES", conflicts_with = "message")]
    pub size: Option<usize>,
    /// Body text, the same for every message (the sequence number is then only in the
    /// duomq-seq header). Default body: "message <N>".
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
    /// Ask the broker to journal the messages (persistent:true), so they survive a crash.
    #[arg(long)]
    pub persistent: bool,
    /// Wait for a RECEIPT per message: the broker has accepted it (and, with
    /// --persistent, written it to disk).
    #[arg(long)]
    pub receipts: bool,
    /// With --receipts: how many receipts may be outstanding at once.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "receipts",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub window: u32,
    /// Extra header on every message, as NAME=VALUE or NAME:VALUE (split at the first = or
    /// :); repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Spread the messages over N message groups: message i carries the header
    /// JMSXGroupID: <PREFIX><i % N> (see --group-prefix).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub groups: Option<u64>,
    /// With --groups: the start of every group id.
    #[arg(long, default_value = "g", value_name = "PREFIX", requires = "groups")]
    pub group_prefix: String,
}

/// The message group header of ActiveMQ and Artemis.
const GROUP_HEADER: &str = "JMSXGroupID";

/// The group id of message `seq`, if the run sends to groups.
fn group_of(seq: u64, args: &SendArgs) -> Option<String> {
    args.groups.map(|n| format!("{}{}", args.group_prefix, seq % n))
}

/// Runs `duomq-broker send`.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let run = format!("{:08x}", rand::random::<u32>());
    let mut progress = Progress::start("sent");
    let mut window: VecDeque<(u64, ReceiptFuture)> = VecDeque::new();
    let mut receipted = 0u64;
    for seq in 0..args.count {
        let mut headers = Vec::with_capacity(args.headers.len() + 3);
        headers.push((RUN_HEADER.to_string(), run.clone()));
        headers.push((SEQ_HEADER.to_string(), seq.to_string()));
        if let Some(group) = group_of(seq, &args) {
            headers.push((GROUP_HEADER.to_string(), group));
        }
        headers.extend(args.headers.iter().cloned());
        let options = SendOptions { persistent: args.persistent, headers, ..SendOptions::default() };
        let body = body(seq, &args);
        if args.receipts {
            if window.len() >= args.window as usize {
                if let Some((n, receipt)) = window.pop_front() {
                    receipt.await.with_context(|| format!("failed to get the receipt for message {n}"))?;
                    receipted += 1;
                }
            }
            let receipt = client
                .send_with_receipt(&args.destination, body, options)
                .await
                .with_context(|| format!("failed to send message {seq} to {}", args.destination))?;
            window.push_back((seq, receipt));
        } else {
            client
                .send(&args.destination, body, options)
                .await
                .with_context(|| format!("failed to send message {seq} to {}", args.destination))?;
        }
        progress.tick(seq + 1);
    }
    for (n, receipt) in window {
        receipt.await.with_context(|| format!("failed to get the receipt for message {n}"))?;
        receipted += 1;
    }
    // DISCONNECT's receipt comes after the broker has handled everything sent before it, so
    // an ERROR caused by an unreceipted send surfaces here.
    client.disconnect().await?;
    let elapsed = progress.elapsed();
    let receipts = if args.receipts { format!(", {receipted} receipted") } else { String::new() };
    let groups = args.groups.map_or_else(String::new, |n| format!(" in {} groups", n.min(args.count)));
    eprintln!(
        "sent {} messages{groups} to {}{receipts} in {:.2}s: {:.0} msg/s",
        args.count,
        args.destination,
        elapsed.as_secs_f64(),
        progress.overall_rate(args.count)
    );
    Ok(())
}

fn body(seq: u64, args: &SendArgs) -> Bytes {
    match (&args.message, args.size) {
        (Some(text), _) => Bytes::from(text.clone()),
        (None, Some(size)) => {
            let mut body = seq.to_string().into_bytes();
            body.resize(size, b'.');
            Bytes::from(body)
        }
        (None, None) => Bytes::from(format!("message {seq}")),
    }
}

/// `NAME=VALUE` or `NAME:VALUE` (STOMP's own form), split at the first `=` or `:`.
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.find(['=', ':']) {
        Some(at) if at > 0 => Ok((s[..at].to_string(), s[at + 1..].to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE or NAME:VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    fn parse(args: &[&str]) -> Result<SendArgs, clap::Error> {
        let argv = ["send", "--destination", "/queue/a"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| c.send)
    }

    #[test]
    fn given_size_when_building_bodies_should_start_with_sequence_and_fill_to_size() {
        let args = parse(&["--size", "8"]).unwrap();
        assert_eq!(&body(42, &args)[..], b"42......");
        let tiny = parse(&["--size", "1"]).unwrap();
        assert_eq!(&body(42, &tiny)[..], b"4");
        assert_eq!(&body(7, &parse(&[]).unwrap())[..], b"message 7");
        assert_eq!(&body(7, &parse(&["--message", "hi"]).unwrap())[..], b"hi");
    }

    #[test]
    fn given_headers_when_parsed_should_split_at_first_equals() {
        let args = parse(&["-H", "a=b=c", "--header", "e="]).unwrap();
        assert_eq!(args.headers, [("a".into(), "b=c".into()), ("e".into(), String::new())]);
        assert!(parse(&["--header", "novalue"]).is_err());
        assert!(parse(&["--header", "=v"]).is_err());
        let stomp_style = parse(&["-H", "JMSXGroupID:g1", "-H", "a:b=c"]).unwrap();
        assert_eq!(stomp_style.headers, [("JMSXGroupID".into(), "g1".into()), ("a".into(), "b=c".into())]);
        assert!(parse(&["--header", ":v"]).is_err());
    }

    #[test]
    fn given_groups_when_numbering_messages_should_cycle_through_n_group_ids() {
        let args = parse(&["--groups", "3"]).unwrap();
        let ids: Vec<Option<String>> = (0..5).map(|i| group_of(i, &args)).collect();
        assert_eq!(ids, ["g0", "g1", "g2", "g0", "g1"].map(|g| Some(g.to_string())));
        let prefixed = parse(&["--groups", "2", "--group-prefix", "order-"]).unwrap();
        assert_eq!(group_of(3, &prefixed).as_deref(), Some("order-1"));
        assert_eq!(group_of(3, &parse(&[]).unwrap()), None);
        assert!(parse(&["--groups", "0"]).is_err());
        assert!(parse(&["--group-prefix", "x"]).is_err(), "--group-prefix needs --groups");
    }

    #[test]
    fn given_tls_flags_when_parsed_should_become_client_tls_options() {
        let args = parse(&["--ca-file", "ca.pem", "--cert-file", "me.pem", "--key-file", "me.key"]).unwrap();
        let tls = duomq_broker::client::TlsOptions::from(&args.connect.tls);
        assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!((tls.cert_file.is_some(), tls.key_file.is_some(), tls.server_name), (true, true, None));
        assert!(parse(&["--cert-file", "me.pem"]).is_err(), "a certificate needs its key");
        assert!(parse(&["--key-file", "me.key"]).is_err(), "a key needs its certificate");
        let named = parse(&["--tls-server-name", "broker.svc"]).unwrap();
        assert_eq!(named.connect.tls.tls_server_name.as_deref(), Some("broker.svc"));
    }

    #[test]
    fn given_window_without_receipts_when_parsed_should_fail() {
        assert!(parse(&["--window", "8"]).is_err());
        assert!(parse(&["--receipts", "--window", "0"]).is_err());
        assert_eq!(parse(&["--receipts", "--window", "64"]).unwrap().window, 64);
        assert!(parse(&["--size", "1", "--message", "x"]).is_err());
    }
}
