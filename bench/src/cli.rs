//! The command line: `duomq-bench run`, `duomq-bench amqp`, `duomq-bench failover` and
//! `duomq-bench fsync-rate`, their options and the parsers for durations, sizes, `NAME=VALUE` headers
//! and failover members. Parsing only; nothing here
//! connects or measures.

use clap::{Args, Parser, Subcommand, ValueEnum};
use duomq_broker::client::AckMode;
use std::path::PathBuf;
use std::time::Duration;

const ABOUT: &str = "Load generator for STOMP and AMQP 1.0 brokers: throughput, end-to-end latency, broker footprint and \
correctness, for comparing duomq, ActiveMQ and RabbitMQ at equal durability.";

const LONG_ABOUT: &str = "Load generator for STOMP and AMQP 1.0 brokers: throughput, end-to-end latency, broker footprint \
and correctness, for comparing duomq, ActiveMQ and RabbitMQ at equal durability.\n\n\
Examples:\n  \
# 10 s of 1 KiB persistent messages, 64 receipts in flight, broker memory and CPU sampled\n  \
duomq-bench run --persistent --window 64 --broker-pid $(pidof duomq-broker)\n\n  \
# the same over AMQP 1.0: 64 unsettled transfers per producer, 64 credit per consumer\n  \
duomq-bench amqp --url amqp://127.0.0.1:5672 --address queue://bench --persistent --credit 64\n\n  \
# how fast the journal's disk can fsync\n  \
duomq-bench fsync-rate --dir /var/lib/duomq\n\n\
Every option of a command: duomq-bench run --help, duomq-bench amqp --help, duomq-bench failover \
--help, duomq-bench fsync-rate --help.";

const RUN_ABOUT: &str = "Run producers and consumers against a broker and report what happened.\n\n\
Every producer and every consumer gets its own connection, on its own thread (producer-N, \
consumer-N in top -H) with a single-threaded async runtime that also runs the client library's \
tasks for that connection, so the load generator adds no cross-thread hand-offs of its own; the \
phases, progress line and broker sampling run on a separate runtime. Consumers subscribe first, \
then the producers send for --warmup (not counted) plus --duration (measured). Each message body carries \
its producer, sequence number and send time, so consumers measure end-to-end latency and the \
tool can tell which receipted messages never arrived (lost) or arrived twice (duplicates). After \
the producers stop, consumers keep going until every receipted message has arrived or \
--drain-timeout passes.\n\n\
A progress line goes to stderr every second; the result goes to stdout as a table, or as one \
JSON object with --json. Losses do not change the exit code (this is a measurement) but are \
printed prominently.\n\n\
Broker-specific subscription headers (--subscribe-header) make consumers use a small built-in \
STOMP connection instead of the duomq client, which cannot add SUBSCRIBE headers; that \
connection sends the prefetch both as activemq.prefetchSize and prefetch-count.\n\n\
Examples:\n  \
# duomq, 1 KiB persistent messages, 64 receipts in flight per producer\n  \
duomq-bench run --destination /queue/bench --persistent --window 64 --broker-pid $(pidof duomq-broker)\n\n  \
# duomq over TLS: the broker's certificate checked against a CA file (test-certs writes one)\n  \
duomq-bench run --url stomp+ssl://127.0.0.1:61614 --ca-file ca.crt --persistent --window 64\n\n  \
# fully synchronous: each send waits for its RECEIPT\n  \
duomq-bench run --persistent --window 1 --duration 30s --label duomq-sync\n\n  \
# message groups: JMSXGroupID over 1000 groups, each checked to reach one consumer, in order\n  \
duomq-bench run --persistent --window 64 --producers 2 --consumers 4 --groups 1000\n\n  \
# ActiveMQ 5.17 with 4 producers and 4 consumers, as JSON\n  \
duomq-bench run --url stomp://admin:admin@127.0.0.1:61613 --producers 4 --consumers 4 --persistent --window 64 --json\n\n  \
# RabbitMQ 3.10, durable quorum queue (pass the beam.smp pid for the footprint)\n  \
duomq-bench run --url stomp://guest:guest@127.0.0.1:61613 --persistent --window 64 \\\n      \
--subscribe-header x-queue-type=quorum --subscribe-header durable=true --subscribe-header auto-delete=false \\\n      \
--broker-pid $(pgrep -f beam.smp)";

const FSYNC_ABOUT: &str = "Measure how many write+fdatasync cycles per second a directory's disk \
sustains: the ceiling for synchronous persistent sends with one fsync each.\n\n\
Two ways, --duration each, in a scratch file in --dir: appending --size bytes (the file grows, \
so each fdatasync also commits the new file size), then writing --size bytes into space \
preallocated with fallocate (each fdatasync flushes data only, as duomq's journal does). \
Reports both rates and fdatasync latencies; the faster one is the disk's real limit. The \
scratch file is removed afterwards.\n\n\
Examples:\n  \
duomq-bench fsync-rate --dir /var/lib/duomq\n  \
duomq-bench fsync-rate --dir /tmp --duration 10s --size 4096 --json";

#[derive(Parser, Debug)]
#[command(name = "duomq-bench", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// On failure, print every cause on its own line and the backtrace (captured with
    /// RUST_BACKTRACE=1), not one line.
    #[arg(long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Benchmark a broker with producers and consumers (see `duomq-bench run --help`).
    #[command(long_about = RUN_ABOUT)]
    Run(Box<RunArgs>),
    /// Measure the fdatasync rate of a directory's disk.
    #[command(long_about = FSYNC_ABOUT)]
    FsyncRate(FsyncArgs),
    /// Kill the live broker of a pair again and again under load and measure the failover
    /// (see `duomq-bench failover --help`).
    #[command(long_about = FAILOVER_ABOUT)]
    Failover(Box<FailoverArgs>),
    /// Write a throwaway CA and a loopback certificate for benchmarking stomp+ssl://
    /// (see `duomq-bench test-certs --help`).
    #[command(long_about = CERTS_ABOUT)]
    TestCerts(CertsArgs),
    /// Benchmark a broker over AMQP 1.0: producers and consumers on one queue (see
    /// `duomq-bench amqp --help`).
    #[command(long_about = AMQP_ABOUT)]
    Amqp(Box<AmqpArgs>),
}

const AMQP_ABOUT: &str = "Run AMQP 1.0 producers and consumers on one queue and report what happened, in \
the same shape as `run` (table, or one JSON object with --json).\n\n\
One client library for every broker: fe2o3-amqp's. Each producer and each consumer opens its \
own connection (SASL PLAIN with the URL's user and password, else ANONYMOUS), one session and \
one link to --address, on its own thread (producer-N, consumer-N) with a single-threaded async \
runtime. Consumers attach first; then the producers send for --warmup (not counted) plus \
--duration (measured). After the producers stop, consumers keep going until every accepted \
message has arrived or --drain-timeout passes.\n\n\
Producers send 1 data section of --size bytes (the body carries its producer, sequence number \
and send time, so consumers measure end-to-end latency and the tool counts lost and duplicated \
messages); with --persistent the message header says durable=true, so the broker must keep it \
on disk before it settles the transfer accepted. Each producer keeps up to --credit transfers \
unsettled (sent, waiting for the broker's accepted outcome; as a STOMP producer's --window of \
receipts) and counts a message confirmed once accepted; any other outcome ends that producer \
with an error. Transfers go out with fe2o3's pipelined send, which marks them batchable.\n\n\
Each consumer grants its link --credit messages of credit and settles every delivery as it \
takes it, with the accepted outcome (settled at once: the broker needs no answer back). Credit \
is topped up the way fe2o3 does it: back to --credit each time half of it has been used, so \
with --credit 1 after every message.\n\n\
With --max-backlog N the load is closed-loop: producers also wait while N messages are sent \
and not yet received, so msg/s is the rate the consumers sustain and the latency stays that \
of a short queue. Without it, producers that the broker settles faster than the consumers \
take grow the queue for the whole run, and the latency is the queue's age.\n\n\
Addresses differ by broker: duomq takes queue://NAME, /queue/NAME or a bare NAME; RabbitMQ \
3.10's rabbitmq_amqp1_0 plugin /amq/queue/NAME (a queue that exists) or /queue/NAME (declared \
on first use).\n\n\
Examples:\n  \
# duomq (amqp.enabled), 1 KiB persistent, 1 producer and 1 consumer, credit 64\n  \
duomq-bench amqp --url amqp://127.0.0.1:5672 --address queue://bench --persistent --credit 64 \\\n      \
--broker-pid $(pidof duomq-broker)\n\n  \
# RabbitMQ 3.10 with rabbitmq_amqp1_0, a durable queue declared beforehand, 4x4, credit 1\n  \
duomq-bench amqp --url amqp://guest:guest@127.0.0.1:5672 --address /amq/queue/bench --persistent \\\n      \
--producers 4 --consumers 4 --credit 1 --json";

/// Options of `duomq-bench amqp`.
#[derive(Args, Debug, Clone)]
pub struct AmqpArgs {
    /// Broker URL: amqp://[user:password@]host[:port] (port 5672 when left out). With a user,
    /// SASL PLAIN; without, SASL ANONYMOUS. No TLS (amqps://).
    #[arg(long, env = "DUOMQ_AMQP_URL", default_value = "amqp://127.0.0.1:5672", value_name = "URL",
        value_parser = parse_amqp_url)]
    pub url: String,
    /// The node every producer sends to and every consumer takes from (target and source
    /// address), as the broker names queues (see above).
    #[arg(long, short = 'a', default_value = "queue://bench", value_name = "ADDRESS")]
    pub address: String,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Consumers, each on its own connection.
    #[arg(long, default_value_t = 1, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumers: u32,
    /// Body size, in bytes or with a unit (512, 1KiB, 64KiB, 1MiB); never shorter than its
    /// stamp (about 30 bytes).
    #[arg(long, default_value = "1024", value_name = "BYTES", value_parser = parse_size)]
    pub size: usize,
    /// Send header durable=true: the broker must keep the messages on disk.
    #[arg(long)]
    pub persistent: bool,
    /// Link credit each consumer grants, and transfers each producer keeps unsettled: 1 = each
    /// send waits for its outcome and each consumer takes one message at a time.
    #[arg(long, default_value_t = 1, value_name = "C", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub credit: u32,
    /// Bound the backlog: producers wait while N messages are sent and not yet received
    /// (over all producers and consumers), so they send at the rate the consumers sustain
    /// and the latency is not that of a queue growing (a closed-loop load). Without it the
    /// producers send as fast as the broker settles their transfers, whether or not the
    /// consumers keep up.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: Option<u64>,
    /// Measured time, after the warm-up (10s, 1m, 500ms).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Time before the measurement starts: messages are sent and consumed but not counted.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After the producers stop, how long consumers may take to receive the rest.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Process id of the broker: sample its memory (VmRSS) and CPU time from /proc (for
    /// RabbitMQ pass the beam.smp pid).
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Name of this run in the report (default: the URL).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Print the result as one JSON object line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// An `amqp://` URL (the only scheme `duomq-bench amqp` speaks), as given.
pub fn parse_amqp_url(s: &str) -> Result<String, String> {
    match s.trim().split_once("://") {
        Some(("amqp", rest)) if !rest.is_empty() => Ok(s.trim().to_string()),
        Some(("amqps", _)) => Err(format!("{s:?}: amqps:// (TLS) is not supported; use amqp://")),
        _ => Err(format!("{s:?} is not an AMQP URL like amqp://127.0.0.1:5672")),
    }
}

const CERTS_ABOUT: &str = "Write a throwaway CA and a certificate signed by it for a broker on this \
machine, to benchmark stomp+ssl:// without a real PKI.\n\n\
Writes into --dir: ca.crt (the CA certificate: what clients trust, --ca-file), broker.crt and \
broker.key (ECDSA P-256, valid for localhost, 127.0.0.1 and ::1, for the broker's tls.certFile \
and tls.keyFile), and with --client-cn also client.crt and client.key (a certificate a client \
can present). The CA's key is thrown away. Certificates come from duomq's own certificate \
code (the operator's), so they are what a deployment gets.\n\n\
Example:\n  \
duomq-bench test-certs --dir /tmp/bench-tls\n  \
openssl pkcs12 -export -in /tmp/bench-tls/broker.crt -inkey /tmp/bench-tls/broker.key \\\n      \
-out /tmp/bench-tls/broker.p12 -passout pass:secret   # the same certificate for a Java broker";

/// Options of `duomq-bench test-certs`.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write the files into (created if missing; files there are replaced).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Common name of the broker's certificate.
    #[arg(long, default_value = "duomq-bench broker", value_name = "NAME")]
    pub cn: String,
    /// Also write client.crt and client.key with this common name.
    #[arg(long, value_name = "NAME")]
    pub client_cn: Option<String>,
    /// How long the certificates are valid (from an hour ago).
    #[arg(long, default_value = "1d", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub valid_for: Duration,
    /// Print the file names as one JSON object line.
    #[arg(long)]
    pub json: bool,
}

pub use duomq_broker::client::TlsArgs;

const FAILOVER_ABOUT: &str = "Kill the live broker of a live/backup pair with SIGKILL, again and again, \
under persistent load, restart it, and report the failover gaps, lost and duplicated messages.\n\n\
Producers send persistent messages with receipts (window W) and consumers acknowledge each \
message (client-individual), all over --url, normally a failover:(...) URL listing both \
members. Each cycle: wait --kill-every, find the live member, read its pid from its pid file, \
SIGKILL it, wait until another member is live, run its restart command with `sh -c` (it must \
start the broker in the background, write the pid file and return), and wait until the restarted \
member is ready again. After --kills cycles the producers stop and the consumers drain.\n\n\
How the live member is found (--kill-mode):\n  \
status  each member's admin /status (--member-admin NAME=URL): the live one reports \
\"role\":\"live\"; a restarted member is ready once it reports role backup with \
ha.sync.state synced (duomq, replication) or with ha.database.reachable true (duomq, database \
store)\n  \
port    each member's STOMP address (--member-stomp NAME=HOST:PORT): the live one accepts TCP \
connections, a slave does not listen; a restarted member is ready once its pid file names a \
running process and --settle has passed (ActiveMQ shared-storage master/slave)\n\n\
The failover gap of one kill is the time from the last RECEIPT any producer received from the \
killed broker to the first RECEIPT from its successor (each kill also reports the time from the \
SIGKILL itself to that first RECEIPT, kill_to_resume_ms): receipts are timed as they arrive, and \
the first producer reconnect after the SIGKILL separates the two brokers' receipts (the dead \
broker's last ones can still be read a moment after the kill). With --gap-at deliveries it is \
instead the longest pause between two consecutive first deliveries (new messages) at the \
consumers, from the kill until the next kill: what a consumer behind a network bridge sees \
when the killed pair is the bridge's target and the producers' broker stays up \
(--consumer-url names the pair, --url the producers' broker). Deliveries beyond the first are split into \
redeliveries (marked redelivered:true), unflagged redeliveries (not marked, but a consumer \
connection was lost since the first delivery, so its ACK may have died with it) and duplicates \
(neither: the broker stored or sent the message twice).\n\n\
Example (duomq pair):\n  \
duomq-bench failover --url 'failover:(stomp://127.0.0.1:61613,stomp://127.0.0.1:61623)?maxReconnectAttempts=-1' \\\n      \
--member 'a=/tmp/a.pid:./start-member.sh a' --member-admin a=http://127.0.0.1:8161 \\\n      \
--member 'b=/tmp/b.pid:./start-member.sh b' --member-admin b=http://127.0.0.1:8171 --kills 20";

/// Options of `duomq-bench failover`.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Broker URL, normally failover:(stomp://a,stomp://b)?maxReconnectAttempts=-1.
    #[arg(long, env = "DUOMQ_URL", value_name = "URL")]
    pub url: String,
    /// Where the consumers connect, when not to --url: the far side of a network bridge
    /// (producers on a standalone broker, consumers on the pair whose live is killed).
    #[arg(long, value_name = "URL")]
    pub consumer_url: Option<String>,
    /// What the failover gap is measured on (see above).
    #[arg(long, value_enum, default_value_t = GapAt::Receipts)]
    pub gap_at: GapAt,
    /// Login sent on CONNECT (overrides a user in the URL).
    #[arg(long, env = "DUOMQ_LOGIN", value_name = "USER")]
    pub login: Option<String>,
    /// Passcode sent on CONNECT (overrides a password in the URL).
    #[arg(long, env = "DUOMQ_PASSCODE", hide_env_values = true, value_name = "PASSWORD")]
    pub passcode: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Queue every producer sends to and every consumer subscribes to.
    #[arg(long, short = 'd', default_value = "/queue/failover", value_name = "DESTINATION")]
    pub destination: String,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub producers: u32,
    /// Consumers, each on its own connection.
    #[arg(long, default_value_t = 1, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub consumers: u32,
    /// Body size, in bytes or with a unit (512, 1KiB).
    #[arg(long, default_value = "1024", value_name = "BYTES", value_parser = parse_size)]
    pub size: usize,
    /// Receipts each producer may have outstanding.
    #[arg(long, default_value_t = 16, value_name = "W", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub window: u32,
    /// Unacknowledged messages the broker may push to each consumer.
    #[arg(long, default_value_t = 100, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch: u32,
    /// Kills to make.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub kills: u32,
    /// Load before the first kill, and between a member being ready again and the next kill.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub kill_every: Duration,
    /// A member: NAME=PID_FILE:RESTART_CMD. The pid file holds the broker's pid; the
    /// command (run with `sh -c`, `{name}` replaced by NAME) starts it again in the
    /// background and returns. Repeat for each member.
    #[arg(long = "member", value_name = "NAME=PID_FILE:CMD", value_parser = parse_member, required = true)]
    pub members: Vec<MemberArg>,
    /// A member's admin base URL, for --kill-mode status: NAME=http://HOST:PORT, or
    /// NAME=https://HOST:PORT for members with tls.admin.enabled (checked against --ca-file).
    #[arg(long = "member-admin", value_name = "NAME=URL", value_parser = parse_header)]
    pub member_admins: Vec<(String, String)>,
    /// The members' cluster password file (ha.cluster.passwordFile): /status requests are
    /// signed with it, as members with a cluster password answer /status only so.
    #[arg(long, value_name = "FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// A member's STOMP address, for --kill-mode port: NAME=HOST:PORT.
    #[arg(long = "member-stomp", value_name = "NAME=HOST:PORT", value_parser = parse_header)]
    pub member_stomps: Vec<(String, String)>,
    /// How to tell the live member and when a restarted one is ready (see above).
    #[arg(long, value_enum, default_value_t = KillMode::Status)]
    pub kill_mode: KillMode,
    /// In --kill-mode port: how long a restarted member gets to start before the next cycle.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub settle: Duration,
    /// How long a role change (promotion, restart, resync) may take before the run fails.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub role_timeout: Duration,
    /// After the producers stop, how long consumers may take to receive the rest.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Name of this run in the report.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Print the result as one JSON object line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One member of the pair under test, from `--member NAME=PID_FILE:RESTART_CMD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberArg {
    pub name: String,
    pub pid_file: PathBuf,
    pub restart_cmd: String,
}

/// What `failover` measures its gaps on.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapAt {
    /// The producers' RECEIPTs: last from the killed broker to first from its successor.
    Receipts,
    /// The consumers' first deliveries: the longest pause between two consecutive new
    /// messages from the kill until the next kill (or the end of the load).
    Deliveries,
}

/// How `failover` finds the live member.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// The admin `/status` JSON: `role` is `live`; ready once `backup` and `synced` (or,
    /// with the database store, the database reachable).
    Status,
    /// Whoever accepts TCP on its STOMP address; ready once its pid file names a process.
    Port,
}

/// `NAME=PID_FILE:RESTART_CMD`; the pid file ends at the first `:`, the command may
/// contain more.
pub fn parse_member(s: &str) -> Result<MemberArg, String> {
    let (name, rest) = parse_header(s)?;
    match rest.split_once(':') {
        Some((pid_file, cmd)) if !pid_file.is_empty() && !cmd.trim().is_empty() => Ok(MemberArg {
            restart_cmd: cmd.replace("{name}", &name),
            name,
            pid_file: PathBuf::from(pid_file),
        }),
        _ => Err(format!("{s:?} is not NAME=PID_FILE:RESTART_CMD")),
    }
}

/// Options of `duomq-bench run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Broker URL: stomp://[user:pass@]host[:port], or stomp+ssl:// for TLS (see --ca-file).
    /// A failover:(...) list is tried in order.
    #[arg(long, env = "DUOMQ_URL", default_value = "stomp://127.0.0.1:61613", value_name = "URL")]
    pub url: String,
    /// Where the consumers connect, when not to --url: another broker that a network
    /// bridge forwards the producers' messages to. Rates count what arrives there.
    #[arg(long, value_name = "URL")]
    pub consumer_url: Option<String>,
    /// Login sent on CONNECT (overrides a user in the URL).
    #[arg(long, env = "DUOMQ_LOGIN", value_name = "USER")]
    pub login: Option<String>,
    /// Passcode sent on CONNECT (overrides a password in the URL).
    #[arg(long, env = "DUOMQ_PASSCODE", hide_env_values = true, value_name = "PASSWORD")]
    pub passcode: Option<String>,
    /// The CONNECT `host` header (a virtual host; RabbitMQ needs `/`). Default: the URL's host.
    #[arg(long, value_name = "HOST")]
    pub vhost: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Queue (or topic) every producer sends to and every consumer subscribes to.
    #[arg(long, short = 'd', default_value = "/queue/bench", value_name = "DESTINATION")]
    pub destination: String,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Consumers, each on its own connection.
    #[arg(long, default_value_t = 1, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumers: u32,
    /// Body size, in bytes or with a unit (512, 1KiB, 64KiB, 1MiB). Bodies are never
    /// shorter than their stamp (about 30 bytes).
    #[arg(long, default_value = "1024", value_name = "BYTES", value_parser = parse_size)]
    pub size: usize,
    /// Send persistent:true: the broker must keep the messages on disk.
    #[arg(long)]
    pub persistent: bool,
    /// Receipts each producer may have outstanding: 1 = send and wait for the RECEIPT
    /// before the next; 64 = pipeline 64; 0 = send without receipts.
    #[arg(long, default_value_t = 1, value_name = "W", value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub window: u32,
    /// Measured time, after the warm-up (10s, 1m, 500ms).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Time before the measurement starts: messages are sent and consumed but not counted.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Unacknowledged messages the broker may push to each consumer.
    #[arg(long, default_value_t = 1000, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch: u32,
    /// How consumers acknowledge: every message (client-individual), cumulatively in
    /// batches of half the prefetch (client), or not at all (auto).
    #[arg(long, value_enum, default_value_t = AckArg::ClientIndividual)]
    pub ack: AckArg,
    /// Extra header on every SEND, as NAME=VALUE; repeat for more.
    #[arg(long = "send-header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub send_headers: Vec<(String, String)>,
    /// Extra header on every SUBSCRIBE, as NAME=VALUE (e.g. x-queue-type=quorum); repeat
    /// for more.
    #[arg(long = "subscribe-header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub subscribe_headers: Vec<(String, String)>,
    /// Message groups: tag message i of each producer with the group header, value
    /// g<i % N>, and check that every group's messages reached exactly one consumer, in
    /// order per producer (the run fails on any violation). Also reports the receipt
    /// latency of each group's first message apart from the others.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub groups: Option<u64>,
    /// With --groups: messages each producer sends per group before a fresh group takes
    /// its place, so new groups keep arriving all run (first-of-group latency).
    #[arg(long, value_name = "K", requires = "groups", value_parser = clap::value_parser!(u64).range(1..))]
    pub group_size: Option<u64>,
    /// With --groups: the SEND header that carries the group.
    #[arg(long, value_name = "NAME", requires = "groups", default_value = crate::groups::DEFAULT_GROUP_HEADER)]
    pub group_header: String,
    /// Tag message i of each producer with the SEND header NAME, value V[i % k] (k values,
    /// each on 1/k of the messages), for selector loads (see --selector-split).
    #[arg(long, value_name = "NAME=V1,V2", value_parser = crate::selectors::parse_header_cycle)]
    pub header_cycle: Option<crate::selectors::HeaderCycle>,
    /// With --header-cycle: consumer c subscribes with the JMS selector NAME = 'V[c % k]'
    /// (STOMP's `selector` header) and counts every message it gets with another value as a
    /// selector mismatch. Two consumers and two values: complementary selectors, half each.
    #[arg(long, requires = "header_cycle")]
    pub selector_split: bool,
    /// Fill, then drain: the producers send N persistent messages in all (split among
    /// them) with no consumer subscribed; then the consumers subscribe and take them all.
    /// Rates are the fill's (send) and the drain's (receive); --duration and --warmup do
    /// not apply and --drain-timeout bounds the drain.
    #[arg(long, value_name = "N", conflicts_with = "groups", value_parser = clap::value_parser!(u64).range(1..))]
    pub backlog: Option<u64>,
    /// Process id of the broker: sample its memory (VmRSS) and CPU time from /proc. Only
    /// that process, not its children (for RabbitMQ pass the beam.smp pid).
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Name of this run in the report (default: the broker's `server` header).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Print the result as one JSON object line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// After the producers stop, how long consumers may take to receive the rest.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Ack modes as spelled on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckArg {
    ClientIndividual,
    Client,
    Auto,
}

impl From<AckArg> for AckMode {
    fn from(arg: AckArg) -> AckMode {
        match arg {
            AckArg::ClientIndividual => AckMode::ClientIndividual,
            AckArg::Client => AckMode::Client,
            AckArg::Auto => AckMode::Auto,
        }
    }
}

/// Options of `duomq-bench fsync-rate`.
#[derive(Args, Debug, Clone)]
pub struct FsyncArgs {
    /// Directory on the disk to measure (where the broker keeps its journal).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// How long to measure.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Bytes appended before each fdatasync (512, 1KiB, 64KiB).
    #[arg(long, default_value = "1024", value_name = "BYTES", value_parser = parse_size)]
    pub size: usize,
    /// Print the result as one JSON object line.
    #[arg(long)]
    pub json: bool,
}

/// `NAME=VALUE` as a header; the value may itself contain `=`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_string(), value.to_string())),
        Some(_) => Err(format!("{s:?} has an empty header name; expected NAME=VALUE")),
        None => Err(format!("{s:?} has no '='; expected NAME=VALUE")),
    }
}

/// A human duration: `10s`, `500ms`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 10s or 500ms ({e})"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        d => Ok(d),
    }
}

/// Largest body this tool sends: the broker's default frame body limit.
const MAX_SIZE: usize = 16 * 1024 * 1024;

/// Bytes, bare or with a unit: `1024`, `1KiB`, `4 KiB`, `1MiB`, `100B`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size like 1024 or 1KiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        other => return Err(format!("{s:?} has unknown unit {other:?}; use B, KiB or MiB")),
    };
    match n.checked_mul(scale) {
        Some(bytes) if bytes <= MAX_SIZE => Ok(bytes),
        _ => Err(format!("{s:?} is larger than the limit of 16MiB")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("x-queue-type=quorum", ("x-queue-type", "quorum"))]
    #[case("selector=a=b", ("selector", "a=b"))]
    #[case("durable=", ("durable", ""))]
    #[case(" prefetch-count =10", ("prefetch-count", "10"))]
    fn given_name_value_when_parsed_should_split_at_first_equals(#[case] input: &str, #[case] want: (&str, &str)) {
        assert_eq!(parse_header(input), Ok((want.0.to_string(), want.1.to_string())));
    }

    #[rstest]
    #[case("durable")]
    #[case("=true")]
    #[case("")]
    fn given_malformed_header_should_be_refused(#[case] input: &str) {
        assert!(parse_header(input).is_err());
    }

    #[rstest]
    #[case("10s", Duration::from_secs(10))]
    #[case("500ms", Duration::from_millis(500))]
    #[case("1m 30s", Duration::from_secs(90))]
    #[case("0s", Duration::ZERO)]
    fn given_human_duration_when_parsed_should_match(#[case] input: &str, #[case] want: Duration) {
        assert_eq!(parse_duration(input), Ok(want));
    }

    #[rstest]
    #[case("10")]
    #[case("soon")]
    fn given_bad_duration_should_be_refused(#[case] input: &str) {
        assert!(parse_duration(input).is_err());
    }

    #[test]
    fn given_zero_measured_duration_should_be_refused() {
        assert!(parse_positive_duration("0s").is_err());
    }

    #[rstest]
    #[case("1024", 1024)]
    #[case("1KiB", 1024)]
    #[case("4 KiB", 4096)]
    #[case("1MiB", 1024 * 1024)]
    #[case("100B", 100)]
    fn given_size_when_parsed_should_be_bytes(#[case] input: &str, #[case] want: usize) {
        assert_eq!(parse_size(input), Ok(want));
    }

    #[rstest]
    #[case("1 GiB")]
    #[case("17MiB")]
    #[case("KiB")]
    #[case("-1")]
    fn given_bad_size_should_be_refused(#[case] input: &str) {
        assert!(parse_size(input).is_err());
    }

    #[test]
    fn given_full_run_command_line_should_parse_every_option() {
        let cli = Cli::try_parse_from([
            "duomq-bench",
            "run",
            "--url",
            "stomp://127.0.0.1:61613",
            "--login",
            "u",
            "--passcode",
            "p",
            "--destination",
            "/queue/x",
            "--producers",
            "4",
            "--consumers",
            "2",
            "--size",
            "2KiB",
            "--persistent",
            "--window",
            "64",
            "--duration",
            "3s",
            "--warmup",
            "500ms",
            "--prefetch",
            "10",
            "--ack",
            "client",
            "--send-header",
            "a=1",
            "--subscribe-header",
            "x-queue-type=quorum",
            "--subscribe-header",
            "durable=true",
            "--broker-pid",
            "42",
            "--label",
            "duomq",
            "--json",
            "--drain-timeout",
            "1s",
        ]);
        let Ok(Cli { command: Command::Run(run), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((run.producers, run.consumers, run.size, run.window), (4, 2, 2048, 64));
        assert_eq!((run.duration, run.warmup), (Duration::from_secs(3), Duration::from_millis(500)));
        assert_eq!(run.ack, AckArg::Client);
        assert_eq!(run.send_headers, vec![("a".to_string(), "1".to_string())]);
        assert_eq!(run.subscribe_headers.len(), 2);
        assert!(run.persistent && run.json);
        assert_eq!(run.broker_pid, Some(42));
    }

    #[test]
    fn given_no_options_should_use_documented_defaults() {
        let cli = Cli::try_parse_from(["duomq-bench", "run"]);
        let Ok(Cli { command: Command::Run(run), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((run.producers, run.consumers, run.size, run.window, run.prefetch), (1, 1, 1024, 1, 1000));
        assert_eq!(run.ack, AckArg::ClientIndividual);
        assert_eq!(run.destination, "/queue/bench");
        assert!(!run.persistent);
    }

    #[test]
    fn given_groups_options_should_parse_and_group_size_should_need_groups() {
        let cli = Cli::try_parse_from(["duomq-bench", "run", "--groups", "1000", "--group-size", "5"]);
        let Ok(Cli { command: Command::Run(run), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((run.groups, run.group_size), (Some(1000), Some(5)));
        assert_eq!(run.group_header, "JMSXGroupID");
        assert!(Cli::try_parse_from(["duomq-bench", "run", "--group-size", "5"]).is_err());
        assert!(Cli::try_parse_from(["duomq-bench", "run", "--groups", "0"]).is_err());
    }

    #[test]
    fn given_backlog_and_selector_options_should_parse_and_selector_split_should_need_a_cycle() {
        let cli = Cli::try_parse_from([
            "duomq-bench",
            "run",
            "--backlog",
            "1000",
            "--header-cycle",
            "colour=red,blue",
            "--selector-split",
        ]);
        let Ok(Cli { command: Command::Run(run), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!(run.backlog, Some(1000));
        assert!(run.selector_split);
        assert_eq!(run.header_cycle.map(|c| c.values), Some(vec!["red".to_string(), "blue".to_string()]));
        assert!(Cli::try_parse_from(["duomq-bench", "run", "--selector-split"]).is_err());
        assert!(Cli::try_parse_from(["duomq-bench", "run", "--backlog", "0"]).is_err());
        assert!(Cli::try_parse_from(["duomq-bench", "run", "--backlog", "5", "--groups", "2"]).is_err());
    }

    #[test]
    fn given_zero_producers_should_be_refused() {
        assert!(Cli::try_parse_from(["duomq-bench", "run", "--producers", "0"]).is_err());
    }

    #[test]
    fn given_member_spec_should_split_name_pid_file_and_command() {
        let m = parse_member("a=/tmp/a.pid:bash start.sh {name} --x=1:2");
        assert_eq!(
            m,
            Ok(MemberArg {
                name: "a".into(),
                pid_file: PathBuf::from("/tmp/a.pid"),
                restart_cmd: "bash start.sh a --x=1:2".into()
            })
        );
    }

    #[rstest]
    #[case("a=/tmp/a.pid")]
    #[case("a=:cmd")]
    #[case("a=/tmp/a.pid: ")]
    #[case("/tmp/a.pid:cmd")]
    fn given_malformed_member_should_be_refused(#[case] input: &str) {
        assert!(parse_member(input).is_err());
    }

    #[test]
    fn given_failover_command_line_should_parse_members_and_defaults() {
        let cli = Cli::try_parse_from([
            "duomq-bench",
            "failover",
            "--url",
            "failover:(stomp://a:1,stomp://b:2)",
            "--member",
            "a=/a.pid:start a",
            "--member",
            "b=/b.pid:start b",
            "--member-admin",
            "a=http://127.0.0.1:3",
            "--kills",
            "2",
        ]);
        let Ok(Cli { command: Command::Failover(f), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((f.kills, f.window, f.kill_every), (2, 16, Duration::from_secs(3)));
        assert_eq!(f.kill_mode, KillMode::Status);
        assert_eq!(f.members.len(), 2);
        assert_eq!(f.member_admins, vec![("a".to_string(), "http://127.0.0.1:3".to_string())]);
    }

    #[test]
    fn given_consumer_url_and_gap_at_deliveries_should_parse_for_run_and_failover() {
        let cli = Cli::try_parse_from(["duomq-bench", "run", "--url", "stomp://a:1", "--consumer-url", "stomp://b:2"]);
        let Ok(Cli { command: Command::Run(run), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!(run.consumer_url.as_deref(), Some("stomp://b:2"));
        let cli = Cli::try_parse_from([
            "duomq-bench",
            "failover",
            "--url",
            "stomp://a:1",
            "--consumer-url",
            "failover:(stomp://b:2,stomp://c:3)",
            "--gap-at",
            "deliveries",
            "--member",
            "b=/b.pid:start b",
            "--member",
            "c=/c.pid:start c",
        ]);
        let Ok(Cli { command: Command::Failover(f), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!(f.gap_at, GapAt::Deliveries);
        assert_eq!(f.consumer_url.as_deref(), Some("failover:(stomp://b:2,stomp://c:3)"));
    }

    #[test]
    fn given_failover_without_gap_at_should_measure_receipts() {
        let cli = Cli::try_parse_from(["duomq-bench", "failover", "--url", "stomp://a:1", "--member", "a=/a.pid:x"]);
        let Ok(Cli { command: Command::Failover(f), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((f.gap_at, f.consumer_url), (GapAt::Receipts, None));
    }

    #[test]
    fn given_amqp_command_line_should_parse_and_default_to_credit_one() {
        let cli = Cli::try_parse_from([
            "duomq-bench",
            "amqp",
            "--url",
            "amqp://guest:guest@127.0.0.1:5673",
            "--address",
            "/amq/queue/q",
            "--producers",
            "4",
            "--consumers",
            "4",
            "--persistent",
            "--credit",
            "64",
        ]);
        let Ok(Cli { command: Command::Amqp(a), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((a.producers, a.consumers, a.credit, a.size), (4, 4, 64, 1024));
        assert_eq!((a.url.as_str(), a.address.as_str()), ("amqp://guest:guest@127.0.0.1:5673", "/amq/queue/q"));
        assert!(a.persistent && !a.json);
        let cli = Cli::try_parse_from(["duomq-bench", "amqp"]);
        let Ok(Cli { command: Command::Amqp(a), .. }) = cli else { panic!("did not parse: {cli:?}") };
        assert_eq!((a.credit, a.address.as_str(), a.persistent), (1, "queue://bench", false));
        assert!(Cli::try_parse_from(["duomq-bench", "amqp", "--credit", "0"]).is_err());
    }

    #[rstest]
    #[case("stomp://127.0.0.1:61613")]
    #[case("amqps://127.0.0.1:5671")]
    #[case("127.0.0.1:5672")]
    #[case("amqp://")]
    fn given_url_that_is_not_plain_amqp_should_be_refused(#[case] input: &str) {
        assert!(parse_amqp_url(input).is_err(), "{input}");
    }

    #[test]
    fn given_clap_definition_should_be_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
