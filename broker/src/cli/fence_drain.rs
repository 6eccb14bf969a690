//! `duomq-broker fence` and `duomq-broker drain`: the admin writes `POST /ha/fence` and
//! `POST /ha/drain`, signed with the cluster password, for people without the operator.
//! Thin clients like `switchover`: the broker decides and does everything.

use super::switchover::AdminEndpointArgs;
use anyhow::{bail, Context};
use duomq_broker::admin::api::{DrainRequest, DrainState, DrainStatus, FenceReply, FenceRequest, DRAIN, FENCE};
use std::time::{Duration, Instant};

/// Both answer at once; a drain is then polled with the same request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

pub const FENCE_LONG_ABOUT: &str = "Fence a member of a group, or unfence it (--unfence).\n\n\
        A fenced member stops replicating (or trying the shared journal lock, or the database \
        lease), is not ready, never takes the live role, and keeps its data. Unfenced, it \
        rejoins its group as a backup. A live is refused unless --force: switch its role over \
        first. With --force it stops serving as after a crash and gives its claim up, so a \
        backup takes over. Not kept across a restart of the member.\n\n\
        On Kubernetes list the member in the BrokerGroup's duomq.io/fenced-members annotation \
        instead: the operator asks again after restarts.\n\n\
        Example:\n  duomq-broker fence --admin 127.0.0.1:8162 --password-file broker/examples/cluster-password";

pub const DRAIN_LONG_ABOUT: &str = "Drain a group that is being removed into other groups.\n\n\
        Sent to the group's live. It refuses new clients and closes open ones (failover \
        clients move on), stops asking its bridges for messages, and forwards every queued \
        message over its linked network bridges to the --target groups, each settled only \
        once stored there. Waits until the group is drained (no message, no client), and \
        fails if the drain is stuck (no bridge to a target is linked). Not kept across a \
        restart or failover: ask the new live again.\n\n\
        Example:\n  duomq-broker drain --admin 127.0.0.1:8161 --target g0 --password-file broker/examples/cluster-password";

#[derive(clap::Args, Debug, Clone)]
#[command(about = "Fence a member (or unfence it)", long_about = FENCE_LONG_ABOUT)]
pub struct FenceArgs {
    #[command(flatten)]
    pub endpoint: AdminEndpointArgs,
    /// Unfence: the member rejoins its group as a backup.
    #[arg(long)]
    pub unfence: bool,
    /// Fence even a live (the group fails over as after a crash).
    #[arg(long, conflicts_with = "unfence")]
    pub force: bool,
}

#[derive(clap::Args, Debug, Clone)]
#[command(about = "Drain a group into other groups", long_about = DRAIN_LONG_ABOUT)]
pub struct DrainArgs {
    #[command(flatten)]
    pub endpoint: AdminEndpointArgs,
    /// A group that takes the messages (its ha.groupName); repeat for several.
    #[arg(long = "target", value_name = "GROUP", required = true)]
    pub targets: Vec<String>,
    /// How long to wait for the group to be drained.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

pub async fn fence(args: FenceArgs) -> anyhow::Result<()> {
    let request = FenceRequest { fenced: !args.unfence, force: args.force };
    let body = serde_json::to_vec(&request).context("failed to encode the request")?;
    let reply: FenceReply = match args.endpoint.signed_post(FENCE, &body, REPLY_TIMEOUT).await? {
        Ok(answer) => serde_json::from_slice(&answer).context("failed to read the member's answer")?,
        Err((409, error)) => bail!("fence refused, nothing changed: {error}"),
        Err((401, error)) => bail!("fence not authorized: {error}"),
        Err((status, error)) => bail!("fence failed (HTTP {status}): {error}"),
    };
    println!("{} is {}", reply.node, if reply.fenced { "fenced" } else { "unfenced: it rejoins its group as a backup" });
    Ok(())
}

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&DrainRequest { targets: args.targets.clone() }).context("failed to encode the request")?;
    let deadline = Instant::now() + args.timeout;
    let mut last = None;
    loop {
        let status: DrainStatus = match args.endpoint.signed_post(DRAIN, &body, REPLY_TIMEOUT).await? {
            Ok(answer) => serde_json::from_slice(&answer).context("failed to read the live's answer")?,
            Err((409, error)) => bail!("drain refused: {error}"),
            Err((401, error)) => bail!("drain not authorized: {error}"),
            Err((status, error)) => bail!("drain failed (HTTP {status}): {error}"),
        };
        let line = format!("{:?}: {} messages left, {} forwarded", status.state, status.messages_left, status.forwarded).to_lowercase();
        if last.as_ref() != Some(&line) {
            eprintln!("{line}");
            last = Some(line);
        }
        match status.state {
            DrainState::Drained => return Ok(()),
            DrainState::Stuck => bail!("drain stuck: {}", status.reason.unwrap_or_default()),
            DrainState::Draining if Instant::now() > deadline => {
                bail!("not drained within {:?}: {} messages left", args.timeout, status.messages_left)
            }
            DrainState::Draining => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
