//! `duomq-broker receive`: consume from a destination with the chosen acknowledgement
//! mode until a count is reached or the destination stays quiet, and report what came.

use super::progress::Progress;
use super::{ConnectArgs, RUN_HEADER, SEQ_HEADER};
use anyhow::Context;
use duomq_broker::client::{AckMode, Message};
use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

/// How `receive` acknowledges; mirrors the SUBSCRIBE `ack` header.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckArg {
    /// The broker forgets a message once it has sent it.
    Auto,
    /// Each ACK also covers every earlier message of the subscription.
    Client,
    /// Each message is acknowledged on its own.
    ClientIndividual,
}

impl From<AckArg> for AckMode {
    fn from(a: AckArg) -> AckMode {
        match a {
            AckArg::Auto => AckMode::Auto,
            AckArg::Client => AckMode::Client,
            AckArg::ClientIndividual => AckMode::ClientIndividual,
        }
    }
}

/// `--help` text of the subcommand (see [`super::SEND_LONG_ABOUT`]).
pub const RECEIVE_LONG_ABOUT: &str = concat!("Receive messages from a queue or topic, as a STOMP consumer.\n\n\
        Stops after --count messages, or when nothing arrives for --timeout; with --count, \
        stopping early is an error (exit status 1). Once the broker has confirmed the subscription, \
        a line `subscribed to DESTINATION at BROKER` goes to stderr. By default (--ack client-individual) each \
        message is acknowledged after it is handled; messages left unacknowledged go back to the \
        queue when the connection closes and come again marked redelivered. Progress goes to \
        stderr every second, then a summary: received, redelivered, and duplicates (messages \
        from `duomq-broker send` seen twice).\n\n\
        Examples:\n  \
        duomq-broker receive --destination /queue/hello --count 1 --print\n  \
        duomq-broker receive --destination /queue/demo --count 1000 --ack client-individual --prefetch 100\n  \
        duomq-broker receive --destination /topic/news --timeout 1m --print\n  \
        duomq-broker receive --destination /queue/orders --print-header JMSXGroupID --timeout 10s\n  \
        duomq-broker receive --url stomp+ssl://broker:61614 --ca-file ca.crt --cert-file me.crt --key-file me.key \
        --destination /queue/hello --count 1 --print\n\n\
        --print-header NAME prints NAME:VALUE and a tab before each body (NAME: when the message \
        lacks it), e.g. `JMSXGroupID:g3<TAB>message 7`, to see which message groups reached \
        this consumer; repeat it for more headers, in the order given.\n\n", tls_help!());

/// Options of `duomq-broker receive`.
#[derive(clap::Args, Debug, Clone)]
#[command(about = "Receive messages from a queue or topic", long_about = RECEIVE_LONG_ABOUT)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where to receive from: /queue/NAME or /topic/NAME (a topic only delivers what is
    /// sent after subscribing).
    #[arg(long, short = 'd', value_name = "DESTINATION")]
    pub destination: String,
    /// Stop after this many messages (default: run until --timeout passes with nothing).
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// How messages are acknowledged. With auto, messages the broker pushed ahead but that
    /// were not handled before stopping are gone; with the others they return to the queue.
    #[arg(long, value_enum, default_value_t = AckArg::ClientIndividual)]
    pub ack: AckArg,
    /// At most this many unacknowledged messages in flight to this consumer. Unset: --count
    /// (capped at 1000) when given, else the broker's default.
    #[arg(long, value_name = "N")]
    pub prefetch: Option<u32>,
    /// Stop after this long with no message, e.g. 500ms, 5s, 2m.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print each body to stdout, one per line.
    #[arg(long)]
    pub print: bool,
    /// Print this header before each body as NAME:VALUE and a tab (implies --print); repeat
    /// for more, e.g. --print-header JMSXGroupID --print-header duomq-seq.
    #[arg(long = "print-header", value_name = "NAME")]
    pub print_headers: Vec<String>,
}

/// The line `--print` writes for `message`: the `--print-header` headers, then the body.
fn print_line(message: &Message, headers: &[String]) -> String {
    let body = String::from_utf8_lossy(&message.body);
    let mut line = String::new();
    for name in headers {
        line.push_str(name);
        line.push(':');
        line.push_str(message.header(name).unwrap_or_default());
        line.push('\t');
    }
    line.push_str(body.strip_suffix('\n').unwrap_or(&body));
    line
}

/// What `receive` saw.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    redelivered: u64,
    duplicates: u64,
    /// (run, sequence) of messages from `duomq-broker send`.
    seen: HashSet<(String, u64)>,
}

impl Tally {
    fn count(&mut self, message: &Message) {
        self.received += 1;
        self.redelivered += u64::from(message.redelivered);
        let run = message.header(RUN_HEADER);
        let seq = message.header(SEQ_HEADER).and_then(|s| s.parse::<u64>().ok());
        if let (Some(run), Some(seq)) = (run, seq) {
            if !self.seen.insert((run.to_string(), seq)) {
                self.duplicates += 1;
            }
        }
    }
}

/// Runs `duomq-broker receive`.
pub async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    let ack: AckMode = args.ack.into();
    let mut subscription = client
        .subscribe(&args.destination, ack, prefetch(&args))
        .await
        .with_context(|| format!("failed to subscribe to {}", args.destination))?;
    // The broker has confirmed the SUBSCRIBE: a script may start its producers now.
    eprintln!("subscribed to {} at {}", args.destination, client.connected_to());
    let mut progress = Progress::start("received");
    let mut tally = Tally::default();
    let mut stdout = std::io::stdout();
    while !matches!(args.count, Some(n) if tally.received >= n) {
        let message = match tokio::time::timeout(args.timeout, subscription.recv()).await {
            Err(_) => break,
            Ok(Some(m)) => m,
            Ok(None) => {
                let why = client.failure().map_or_else(|| "the connection closed".to_string(), |e| e.to_string());
                anyhow::bail!("stopped after {} messages: {why}", tally.received);
            }
        };
        if args.print || !args.print_headers.is_empty() {
            writeln!(stdout, "{}", print_line(&message, &args.print_headers)).context("failed to write to stdout")?;
        }
        if ack != AckMode::Auto {
            client
                .ack(&message)
                .await
                .with_context(|| format!("failed to acknowledge message {}", message.message_id))?;
        }
        tally.count(&message);
        progress.tick(tally.received);
    }
    stdout.flush().context("failed to write to stdout")?;
    let elapsed = progress.elapsed();
    // DISCONNECT's receipt comes after the broker has handled every ACK sent before it.
    client.disconnect().await?;
    eprintln!(
        "received {} messages from {} ({} redelivered, {} duplicates) in {:.2}s: {:.0} msg/s",
        tally.received,
        args.destination,
        tally.redelivered,
        tally.duplicates,
        elapsed.as_secs_f64(),
        progress.overall_rate(tally.received)
    );
    if let Some(n) = args.count.filter(|n| tally.received < *n) {
        anyhow::bail!("received {} of {n} messages: nothing arrived for {:?}", tally.received, args.timeout);
    }
    Ok(())
}

/// Without an explicit prefetch, a counted run asks for no more than it will handle, so
/// messages it will not take are not marked redelivered for the next consumer.
fn prefetch(args: &ReceiveArgs) -> Option<u32> {
    const COUNTED_PREFETCH_CAP: u64 = 1000;
    args.prefetch.or_else(|| args.count.map(|n| n.clamp(1, COUNTED_PREFETCH_CAP) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(run: &str, seq: u64, redelivered: bool) -> Message {
        Message {
            destination: "/queue/a".into(),
            message_id: seq.to_string(),
            subscription: "s".into(),
            ack: None,
            redelivered,
            headers: vec![(RUN_HEADER.into(), run.into()), (SEQ_HEADER.into(), seq.to_string())],
            body: Bytes::new(),
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        receive: ReceiveArgs,
    }

    fn parse(args: &[&str]) -> ReceiveArgs {
        let argv = ["receive", "--destination", "/queue/a"].iter().chain(args);
        <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.receive).unwrap()
    }

    #[test]
    fn given_count_without_prefetch_when_subscribing_should_prefetch_at_most_the_count() {
        assert_eq!(prefetch(&parse(&["--count", "5"])), Some(5));
        assert_eq!(prefetch(&parse(&["--count", "1000000"])), Some(1000));
        assert_eq!(prefetch(&parse(&["--count", "5", "--prefetch", "50"])), Some(50));
        assert_eq!(prefetch(&parse(&[])), None);
        assert_eq!(parse(&[]).ack, AckArg::ClientIndividual);
        assert_eq!(parse(&["--timeout", "250ms"]).timeout, Duration::from_millis(250));
    }

    #[test]
    fn given_print_headers_when_printing_should_put_each_header_before_the_body_in_order() {
        let mut m = message("r1", 7, false);
        m.headers.push(("JMSXGroupID".into(), "g3".into()));
        m.body = Bytes::from("message 7\n");
        let names = ["JMSXGroupID".to_string(), SEQ_HEADER.to_string(), "absent".to_string()];
        assert_eq!(print_line(&m, &names), "JMSXGroupID:g3\tduomq-seq:7\tabsent:\tmessage 7");
        assert_eq!(print_line(&m, &[]), "message 7");
        assert_eq!(parse(&["--print-header", "a", "--print-header", "b"]).print_headers, ["a", "b"]);
    }

    #[test]
    fn given_repeats_within_a_run_when_counted_should_report_duplicates_only_within_that_run() {
        let mut tally = Tally::default();
        tally.count(&message("r1", 0, false));
        tally.count(&message("r1", 0, true));
        tally.count(&message("r2", 0, false));
        assert_eq!((tally.received, tally.redelivered, tally.duplicates), (3, 1, 1));
    }
}
