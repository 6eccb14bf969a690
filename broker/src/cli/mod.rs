//! The client subcommands: `send` and `receive`, a producer and a consumer for trying a
//! broker out, checking what came through, and rough throughput numbers (thin users of
//! `duomq_broker::client` that must not speak STOMP themselves); and `switchover`, which
//! asks a live on its admin endpoint to hand its role over; `fence` and `drain`, the other
//! signed admin writes; `queue`, which lists queues and browses, purges, deletes or moves
//! their messages through the admin API; and `journal salvage`, which
//! gets a stopped broker past a damaged journal, keeping a copy of what it cuts.
//!
//! Every message `send` produces carries a `duomq-run` header (random per run) and a
//! `duomq-seq` header (0, 1, 2, ...), and its body starts with the sequence number, so
//! `receive` can count duplicates. Progress lines and summaries go to stderr; stdout
//! only carries what `receive --print` prints.

/// The `--help` paragraph on TLS that `send` and `receive` share (a macro, so that their
/// `LONG_ABOUT` constants can `concat!` it).
macro_rules! tls_help {
    () => {
        "Over TLS: use a stomp+ssl://HOST:PORT URL (ssl:// works too, also inside failover:(...)) and \
         --ca-file with the CA that signed the broker's certificate; that certificate must name HOST, \
         or the name given with --tls-server-name. A broker with tls.stomp.clientAuth wants \
         --cert-file and --key-file too; with auth.certificateUsers the certificate logs you in as \
         its user, no --login needed. A broker that refuses the handshake is reported with why \
         (certificate from another CA, for another name, expired; client certificate missing)."
    };
}

mod fence_drain;
mod progress;
mod queue;
mod receive;
mod salvage;
mod send;
mod switchover;

pub use fence_drain::{drain, fence, DrainArgs, FenceArgs, DRAIN_LONG_ABOUT, FENCE_LONG_ABOUT};
pub use queue::{queue, QueueArgs, QUEUE_LONG_ABOUT};
pub use receive::{receive, ReceiveArgs, RECEIVE_LONG_ABOUT};
pub use salvage::{journal, JournalArgs};
pub use send::{send, SendArgs, SEND_LONG_ABOUT};
pub use switchover::{switchover, SwitchoverArgs, SWITCHOVER_LONG_ABOUT};

use duomq_broker::client::{Client, ClientOptions, TlsArgs, TlsOptions};

/// Header naming the `send` run a message came from.
const RUN_HEADER: &str = "duomq-run";
/// Header with the message's sequence number within its run.
const SEQ_HEADER: &str = "duomq-seq";

/// Where the broker is and who we are; shared by `send` and `receive`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Broker URL: stomp://[user:pass@]host[:port] (port 61613 by default),
    /// stomp+ssl://host:port for STOMP over TLS (needs --ca-file), or a
    /// failover:(stomp://a:61613,stomp://b:61613) list whose members are tried in order.
    #[arg(long, env = "DUOMQ_URL", default_value = "stomp://127.0.0.1:61613", value_name = "URL")]
    pub url: String,
    /// Login sent on CONNECT (overrides a user in the URL). Not needed when the broker
    /// maps your client certificate to a user (auth.certificateUsers).
    #[arg(long, env = "DUOMQ_LOGIN", value_name = "USER")]
    pub login: Option<String>,
    /// Passcode sent on CONNECT (overrides a password in the URL).
    #[arg(long, env = "DUOMQ_PASSCODE", hide_env_values = true, value_name = "PASSWORD")]
    pub passcode: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ConnectArgs {
    async fn connect(&self) -> anyhow::Result<Client> {
        let options = ClientOptions {
            login: self.login.clone(),
            passcode: self.passcode.clone(),
            tls: TlsOptions::from(&self.tls),
            ..ClientOptions::default()
        };
        // The client's errors already name the broker and the step.
        let client = Client::connect(&self.url, options).await?;
        tracing::debug!(broker = %client.connected_to(), version = %client.version(), "connected");
        Ok(client)
    }
}

