//! `duomq-broker queue list|browse|purge|delete|move`: the admin API's queue views and
//! message operations (`/queues...`), for people without the operator. Thin clients like
//! `switchover`: the broker checks and does everything. Tables for people, `--json` (the
//! API's answer as it is) for scripts.

use super::switchover::{post, AdminAddressArgs};
use anyhow::{bail, Context};
use duomq_broker::admin::api::{
    BodyEncoding, BrowseReply, BrowseRequest, DeleteReply, DeleteRequest, DestinationList, MoveReply, MoveRequest, PurgeReply, PurgeRequest,
    QUEUES, QUEUE_BROWSE, QUEUE_DELETE, QUEUE_MOVE, QUEUE_PURGE,
};
use duomq_broker::admin::client::AdminClient;
use std::path::PathBuf;
use std::time::Duration;

/// A purge or move of a deep queue journals batch after batch before it answers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);
const READ_TIMEOUT: Duration = duomq_broker::admin::client::READ_TIMEOUT;

pub const QUEUE_LONG_ABOUT: &str = "List queues, and browse, purge, delete or move the messages waiting in one.\n\n\
        Asks the member's admin endpoint (its admin.listen). list and browse are reads: give an \
        admin user (--user, --password or DUOMQ_ADMIN_PASSWORD; a user holding a role in \
        auth.adminRoles) or --password-file. purge, delete and move change messages: they are \
        signed with the group's cluster password (--password-file, the members' \
        ha.cluster.passwordFile) and go to the group's live. Only waiting messages are touched: \
        what a consumer holds unacknowledged stays with it. Removals and moves are journaled \
        (and replicated) before the command answers, so nothing removed comes back and nothing \
        moved is lost or doubled by a crash.\n\n\
        Examples:\n  \
        DUOMQ_ADMIN_PASSWORD=... duomq-broker queue list --user ops\n  \
        duomq-broker queue browse --queue /queue/DLQ.orders --limit 20 --password-file cluster-password\n  \
        duomq-broker queue move --from /queue/DLQ.orders --to /queue/orders --password-file cluster-password\n  \
        duomq-broker queue delete --queue /queue/orders --id 17 --id 18 --password-file cluster-password\n  \
        duomq-broker queue purge --queue /queue/orders --password-file cluster-password";

#[derive(clap::Args, Debug, Clone)]
#[command(about = "List queues; browse, purge, delete or move their messages", long_about = QUEUE_LONG_ABOUT)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
    #[command(flatten)]
    pub endpoint: QueueEndpointArgs,
    /// Print the admin API's JSON answer instead of a table or a sentence.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Where the member is and who asks.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueEndpointArgs {
    #[command(flatten)]
    pub address: AdminAddressArgs,
    /// File with the group's cluster password (the members' ha.cluster.passwordFile): signs
    /// every request; needed for purge, delete and move.
    #[arg(long, value_name = "FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// An admin user (holding a role in auth.adminRoles), for list and browse.
    #[arg(long, value_name = "USER", global = true)]
    pub user: Option<String>,
    /// That user's password.
    #[arg(long, env = "DUOMQ_ADMIN_PASSWORD", hide_env_values = true, value_name = "PASSWORD", global = true)]
    pub password: Option<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum QueueCommand {
    /// Every queue and topic with its waiting and in-flight messages, consumers and bytes.
    List,
    /// The first messages waiting in a queue, in the order consumers get them; nothing is taken.
    Browse {
        /// The queue, /queue/NAME.
        #[arg(long, value_name = "DESTINATION")]
        queue: String,
        /// How many messages to show (1 to 10000).
        #[arg(long, default_value_t = duomq_broker::admin::api::BROWSE_DEFAULT_LIMIT, value_name = "N")]
        limit: usize,
    },
    /// Remove every message waiting in a queue (in-flight ones stay with their consumers).
    Purge {
        /// The queue, /queue/NAME.
        #[arg(long, value_name = "DESTINATION")]
        queue: String,
    },
    /// Remove waiting messages by id (the ID column of browse; consumers see it as message-id).
    Delete {
        /// The queue, /queue/NAME.
        #[arg(long, value_name = "DESTINATION")]
        queue: String,
        /// A message id; repeat for several.
        #[arg(long = "id", value_name = "ID", required = true)]
        ids: Vec<u64>,
    },
    /// Move waiting messages to another queue (created if missing), keeping their order:
    /// all of them, the first --limit, or those named with --id.
    Move {
        /// The queue the messages leave, /queue/NAME.
        #[arg(long, value_name = "DESTINATION")]
        from: String,
        /// The queue they go to, /queue/NAME.
        #[arg(long, value_name = "DESTINATION")]
        to: String,
        /// Move only this message; repeat for several.
        #[arg(long = "id", value_name = "ID", conflicts_with = "limit")]
        ids: Vec<u64>,
        /// Move only the first N waiting messages.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

impl QueueEndpointArgs {
    /// A client with what was given: the cluster signature and/or an admin user.
    fn reader(&self) -> anyhow::Result<AdminClient> {
        if self.password_file.is_none() && self.user.is_none() {
            bail!("give --user (an admin user, with --password or DUOMQ_ADMIN_PASSWORD) or --password-file (the cluster password)");
        }
        let mut client = self.address.client()?;
        if let Some(file) = &self.password_file {
            client = client.with_password_file(file)?;
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => client = client.with_basic(user, password),
            (Some(user), None) => bail!("--user {user} needs --password (or DUOMQ_ADMIN_PASSWORD)"),
            (None, _) => {}
        }
        Ok(client)
    }

    /// A client that signs with the cluster password, which writes need.
    fn writer(&self, what: &str) -> anyhow::Result<AdminClient> {
        let Some(file) = &self.password_file else {
            bail!("{what} needs --password-file: changes to messages are signed with the group's cluster password (ha.cluster.passwordFile)");
        };
        Ok(self.address.client()?.with_password_file(file)?)
    }
}

pub async fn queue(args: QueueArgs) -> anyhow::Result<()> {
    let endpoint = &args.endpoint;
    match &args.command {
        QueueCommand::List => {
            let reply = endpoint.reader()?.get(QUEUES).await?;
            let error = reply.error_text();
            let answer = answer("list", reply.code, reply.body, || error)?;
            print_or(args.json, &answer, |list: DestinationList| print_list(&list))
        }
        QueueCommand::Browse { queue, limit } => {
            let request = BrowseRequest { queue: queue.clone(), limit: Some(*limit) };
            let answer = call(&endpoint.reader()?, "browse", QUEUE_BROWSE, &request, READ_TIMEOUT).await?;
            print_or(args.json, &answer, |reply: BrowseReply| print_browse(&reply))
        }
        QueueCommand::Purge { queue } => {
            let request = PurgeRequest { queue: queue.clone() };
            let answer = call(&endpoint.writer("purge")?, "purge", QUEUE_PURGE, &request, WRITE_TIMEOUT).await?;
            print_or(args.json, &answer, |r: PurgeReply| println!("removed {} messages from {}", r.removed, r.queue))
        }
        QueueCommand::Delete { queue, ids } => {
            let request = DeleteRequest { queue: queue.clone(), ids: ids.clone() };
            let answer = call(&endpoint.writer("delete")?, "delete", QUEUE_DELETE, &request, WRITE_TIMEOUT).await?;
            print_or(args.json, &answer, |r: DeleteReply| {
                println!("removed {} messages from {}{}", r.removed, r.queue, not_waiting(&r.missing));
            })
        }
        QueueCommand::Move { from, to, ids, limit } => {
            let ids = (!ids.is_empty()).then(|| ids.clone());
            let request = MoveRequest { from: from.clone(), to: to.clone(), ids, limit: *limit };
            let answer = call(&endpoint.writer("move")?, "move", QUEUE_MOVE, &request, WRITE_TIMEOUT).await?;
            print_or(args.json, &answer, |r: MoveReply| println!("moved {} messages from {} to {}{}", r.moved, r.from, r.to, not_waiting(&r.missing)))
        }
    }
}

/// Posts `request` as JSON; the 200 answer's body, or a one-line error.
async fn call<T: serde::Serialize>(client: &AdminClient, what: &str, path: &str, request: &T, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let body = serde_json::to_vec(request).context("failed to encode the request")?;
    match post(client, path, &body, timeout).await? {
        Ok(answer) => Ok(answer),
        Err((code, error)) => answer(what, code, Vec::new(), || error),
    }
}

/// The body of a 200 answer, or the error `what` met, in one line.
fn answer(what: &str, code: u16, body: Vec<u8>, error: impl FnOnce() -> String) -> anyhow::Result<Vec<u8>> {
    match code {
        200 => Ok(body),
        401 | 403 => bail!("{what} not authorized: {}", error()),
        404 => bail!("{what} failed: {}", error()),
        409 => bail!("{what} refused: {}", error()),
        code => bail!("{what} failed (HTTP {code}): {}", error()),
    }
}

/// Prints `answer` as it is (`--json`), or reads it as `T` and hands it to `human`.
fn print_or<T: serde::de::DeserializeOwned>(json: bool, answer: &[u8], human: impl FnOnce(T)) -> anyhow::Result<()> {
    if json {
        println!("{}", String::from_utf8_lossy(answer).trim_end());
        return Ok(());
    }
    human(serde_json::from_slice(answer).context("failed to read the member's answer")?);
    Ok(())
}

fn not_waiting(missing: &[u64]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = missing.iter().map(u64::to_string).collect();
    format!("; not waiting there (in flight or gone): {}", ids.join(", "))
}

fn print_list(list: &DestinationList) {
    let rows: Vec<Vec<String>> = list
        .destinations
        .iter()
        .map(|d| {
            let kind = format!("{:?}", d.kind).to_lowercase();
            vec![d.name.clone(), kind, d.depth.to_string(), d.in_flight.to_string(), d.consumers.to_string(), d.bytes.to_string()]
        })
        .collect();
    print_table(&["DESTINATION", "KIND", "WAITING", "IN-FLIGHT", "CONSUMERS", "BYTES"], &rows);
}

/// How much of a body or of the headers a table row shows.
const CELL_CHARS: usize = 60;

fn print_browse(reply: &BrowseReply) {
    let rows: Vec<Vec<String>> = reply
        .messages
        .iter()
        .map(|m| {
            let headers: Vec<String> = m.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let body = match m.body_encoding {
                BodyEncoding::Utf8 => m.body.clone(),
                BodyEncoding::Base64 => format!("(binary, base64) {}", m.body),
            };
            let redelivered = if m.redelivered { "yes" } else { "no" };
            vec![m.id.to_string(), redelivered.to_string(), m.size.to_string(), cell(&headers.join(" ")), cell(&body)]
        })
        .collect();
    print_table(&["ID", "REDELIVERED", "SIZE", "HEADERS", "BODY"], &rows);
    eprintln!("{} of {} waiting messages in {} (--json for whole headers and bodies)", reply.messages.len(), reply.depth, reply.queue);
}

/// `text` on one line, cut at [`CELL_CHARS`].
fn cell(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= CELL_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(CELL_CHARS - 1).collect();
    format!("{cut}…")
}

fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
