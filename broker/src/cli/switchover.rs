//! `duomq-broker switchover`: asks a group's live, on its admin endpoint, to hand the live
//! role to a named in-sync backup (`POST /ha/switchover`), signing the request with the
//! cluster password. A thin HTTP/1.1 client; the broker decides and does everything.

use anyhow::{bail, Context};
use duomq_broker::admin::api::{AdminError, SwitchoverReply, SwitchoverRequest, SWITCHOVER};
use duomq_broker::admin::auth;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `--help` text of the subcommand.
pub const SWITCHOVER_LONG_ABOUT: &str = "Hand the live role of a group to one of its in-sync backups, with nothing lost.\n\n\
        Sent to the live's admin endpoint. The live stops accepting clients (failover clients \
        move on), waits until the backup has every record, hands the role over and becomes \
        that member's backup. It refuses, and nothing changes, when the target is not an in-sync \
        backup (its /status shows ha.sync.state synced). The request is signed with the group's \
        cluster password (ha.cluster.passwordFile); the password is not sent.\n\n\
        On Kubernetes use `duomq-operator switchover` instead: the operator finds the live and \
        records the switchover in the BrokerGroup's status.\n\n\
        Example (the pair of broker/examples, pair-b live):\n  \
        duomq-broker switchover --admin 127.0.0.1:8162 --to pair-a --password-file broker/examples/cluster-password";

/// How long the live may take: its client drain and hand-over, plus a margin.
const REPLY_TIMEOUT: Duration = Duration::from_secs(duomq_broker::ha::switchover::REPLY_TIMEOUT.as_secs() + 5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `duomq-broker switchover`.
#[derive(clap::Args, Debug, Clone)]
#[command(about = "Hand the live role to an in-sync backup", long_about = SWITCHOVER_LONG_ABOUT)]
pub struct SwitchoverArgs {
    /// Admin HTTP address of the group's live (its admin.listen).
    #[arg(long, default_value = "127.0.0.1:8161", value_name = "HOST:PORT")]
    pub admin: String,
    /// Node id (node.id) of the in-sync backup that becomes live.
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// File with the group's cluster password (the members' ha.cluster.passwordFile).
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,
}

pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&SwitchoverRequest { to: args.to.clone() }).context("failed to encode the request")?;
    let reply = signed_post(&args.admin, SWITCHOVER, &args.password_file, &body, REPLY_TIMEOUT).await;
    let done: SwitchoverReply = match reply? {
        Ok(answer) => serde_json::from_slice(&answer).context("failed to read the live's answer")?,
        Err((409, error)) => bail!("switchover refused, nothing changed: {error}"),
        Err((401, error)) => bail!("switchover not authorized: {error}"),
        Err((status, error)) => bail!("switchover failed (HTTP {status}): {error}"),
    };
    println!("{} handed the live role to {} (epoch {})", done.from, done.to, done.epoch);
    Ok(())
}

/// Signs `body` with the cluster password in `password_file` and posts it to `path` on the
/// admin endpoint `admin`: the 200 answer's body, or the status code and the error it gave.
pub(super) async fn signed_post(
    admin: &str,
    path: &str,
    password_file: &std::path::Path,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Result<Vec<u8>, (u16, String)>> {
    let password = std::fs::read_to_string(password_file)
        .with_context(|| format!("failed to read the cluster password from {}", password_file.display()))?;
    let password = password.trim_end_matches(['\n', '\r']);
    let signature = auth::sign(password.as_bytes(), "POST", path, body, auth::unix_now());
    let (status, reply) = tokio::time::timeout(timeout, post(admin, path, &signature, body))
        .await
        .with_context(|| format!("{admin} did not answer within {timeout:?}"))??;
    if status == 200 {
        return Ok(Ok(reply));
    }
    let error = serde_json::from_slice::<AdminError>(&reply)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&reply).trim().to_string());
    Ok(Err((status, error)))
}

/// One `POST` of an admin write over HTTP/1.1 with `Connection: close`: the status code and body.
async fn post(admin: &str, path: &str, signature: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(admin))
        .await
        .with_context(|| format!("failed to connect to {admin} within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("failed to connect to the admin endpoint {admin}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}: {signature}\r\nConnection: close\r\n\r\n",
        body.len(),
        auth::SIGNATURE_HEADER
    );
    stream.write_all(head.as_bytes()).await.context("failed to send the request")?;
    stream.write_all(body).await.context("failed to send the request")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.context("failed to read the answer")?;
    parse_response(&response)
}

/// The status code and body of an HTTP/1.1 response without chunked encoding (what the
/// admin endpoint sends for a JSON answer with `Connection: close`).
fn parse_response(response: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").context("the answer is not HTTP")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("the answer has no status code")?;
    Ok((status, response[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_http_answer_should_split_status_and_body() {
        let answer = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"error\":1}";
        let (status, body) = parse_response(answer).unwrap();
        assert_eq!((status, body.as_slice()), (409, &b"{\"error\":1}"[..]));
        assert!(parse_response(b"garbage").is_err());
    }
}
