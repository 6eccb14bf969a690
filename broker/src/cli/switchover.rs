//! `duomq-broker switchover`: asks a group's live, on its admin endpoint, to hand the live
//! role to a named in-sync backup (`POST /ha/switchover`), signing the request with the
//! cluster password, over TLS when the member's admin API has it (`https://`, `--ca-file`).
//! A thin client (`duomq_broker::admin::client`); the broker decides and does everything.

use anyhow::{bail, Context};
use duomq_broker::admin::api::{SwitchoverReply, SwitchoverRequest, SWITCHOVER};
use duomq_broker::admin::client::AdminClient;
use std::path::PathBuf;
use std::time::Duration;

/// `--help` text of the subcommand.
pub const SWITCHOVER_LONG_ABOUT: &str = "Hand the live role of a group to one of its in-sync backups, with nothing lost.\n\n\
        Sent to the live's admin endpoint. The live stops accepting clients (failover clients \
        move on), waits until the backup has every record, hands the role over and becomes \
        that member's backup. It refuses, and nothing changes, when the target is not an in-sync \
        backup (its /status shows ha.sync.state synced). The request is signed with the group's \
        cluster password (ha.cluster.passwordFile); the password is not sent. A member with \
        tls.admin.enabled is reached with --admin https://HOST:PORT --ca-file FILE.\n\n\
        On Kubernetes use `duomq-operator switchover` instead: the operator finds the live and \
        records the switchover in the BrokerGroup's status.\n\n\
        Example (the pair of broker/examples, pair-b live):\n  \
        duomq-broker switchover --admin 127.0.0.1:8162 --to pair-a --password-file broker/examples/cluster-password";

/// How long the live may take: its client drain and hand-over, plus a margin.
const REPLY_TIMEOUT: Duration = Duration::from_secs(duomq_broker::ha::switchover::REPLY_TIMEOUT.as_secs() + 5);

/// Where a member's admin endpoint is and how to reach it, signed or not: the options
/// every admin command shares (global, so `queue`'s subcommands take them after their name).
#[derive(clap::Args, Debug, Clone)]
pub struct AdminAddressArgs {
    /// Admin address of the member (its admin.listen): HOST:PORT, http://HOST:PORT, or
    /// https://HOST:PORT when it has tls.admin.enabled (then give --ca-file).
    #[arg(long, default_value = "127.0.0.1:8161", value_name = "ADDRESS", global = true)]
    pub admin: String,
    /// CA certificates (PEM) that signed the member's certificate: speak TLS to it.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// The name the member's certificate must carry, when it is not the host of --admin
    /// (for example the member's DNS name while --admin is an IP address).
    #[arg(long, value_name = "NAME", requires = "ca_file", global = true)]
    pub tls_server_name: Option<String>,
}

impl AdminAddressArgs {
    /// An admin client of the member, without credentials yet.
    pub fn client(&self) -> anyhow::Result<AdminClient> {
        let client = AdminClient::new(&self.admin)?;
        Ok(match &self.ca_file {
            Some(ca) => client.with_ca_file(ca, self.tls_server_name.as_deref())?,
            None => client,
        })
    }
}

/// The options of the signed admin writes (`switchover`, `fence`, `drain`).
#[derive(clap::Args, Debug, Clone)]
pub struct AdminEndpointArgs {
    #[command(flatten)]
    pub address: AdminAddressArgs,
    /// File with the group's cluster password (the members' ha.cluster.passwordFile).
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,
}

impl AdminEndpointArgs {
    /// The admin client these options describe.
    pub fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(self.address.client()?.with_password_file(&self.password_file)?)
    }

    /// Posts the signed `body` to `path`: the 200 answer's body, or the status code and the
    /// error it gave.
    pub async fn signed_post(&self, path: &str, body: &[u8], timeout: Duration) -> anyhow::Result<Result<Vec<u8>, (u16, String)>> {
        post(&self.client()?, path, body, timeout).await
    }
}

/// Posts `body` to `path` with `client`'s credentials: the 200 answer's body, or the status
/// code and the error it gave.
pub async fn post(client: &AdminClient, path: &str, body: &[u8], timeout: Duration) -> anyhow::Result<Result<Vec<u8>, (u16, String)>> {
    let reply = client.post_signed(path, body, timeout).await?;
    Ok(if reply.code == 200 { Ok(reply.body) } else { Err((reply.code, reply.error_text())) })
}

/// Options of `duomq-broker switchover`.
#[derive(clap::Args, Debug, Clone)]
#[command(about = "Hand the live role to an in-sync backup", long_about = SWITCHOVER_LONG_ABOUT)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub endpoint: AdminEndpointArgs,
    /// Node id (node.id) of the in-sync backup that becomes live.
    #[arg(long, value_name = "NODE")]
    pub to: String,
}

pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&SwitchoverRequest { to: args.to.clone() }).context("failed to encode the request")?;
    let reply = args.endpoint.signed_post(SWITCHOVER, &body, REPLY_TIMEOUT).await;
    let done: SwitchoverReply = match reply? {
        Ok(answer) => serde_json::from_slice(&answer).context("failed to read the live's answer")?,
        Err((409, error)) => bail!("switchover refused, nothing changed: {error}"),
        Err((401, error)) => bail!("switchover not authorized: {error}"),
        Err((status, error)) => bail!("switchover failed (HTTP {status}): {error}"),
    };
    println!("{} handed the live role to {} (epoch {})", done.from, done.to, done.epoch);
    Ok(())
}
