//! The members of the pair under test, and the only code that touches them: ask which is
//! live, SIGKILL one by its pid file, run its restart command. It decides nothing about
//! when to kill; `failover::run` does.

use crate::cli::{FailoverArgs, KillMode, MemberArg};
use anyhow::{bail, Context};
use duomq_broker::admin::client::AdminClient;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpStream;

/// Limit on one probe (TCP connect, or a whole /status request).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How a member is asked about its role.
#[derive(Debug, Clone)]
pub enum Probe {
    /// `GET /status` of this admin endpoint (signed, over TLS, as the options say).
    Admin(Box<AdminClient>),
    /// A TCP connect to this STOMP `host:port`.
    Stomp(String),
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Live,
    /// A backup that could take over (status mode only): in sync with the live
    /// (replication), or with the shared database reachable (database store).
    ReadyBackup,
    /// Down, starting, syncing, or a slave waiting for a lock.
    Other,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pid_file: PathBuf,
    restart_cmd: String,
    probe: Probe,
}

/// The members as the command line names them, each with the probe its kill mode needs.
pub fn members_of(args: &FailoverArgs) -> anyhow::Result<Vec<Member>> {
    if args.members.len() < 2 {
        bail!("--member: give at least two members (got {})", args.members.len());
    }
    let (flag, addresses) = match args.kill_mode {
        KillMode::Status => ("--member-admin", &args.member_admins),
        KillMode::Port => ("--member-stomp", &args.member_stomps),
    };
    args.members
        .iter()
        .map(|MemberArg { name, pid_file, restart_cmd }| {
            let Some((_, address)) = addresses.iter().find(|(n, _)| n == name) else {
                bail!("{flag}: member {name:?} has none (--kill-mode {:?})", args.kill_mode);
            };
            let probe = match args.kill_mode {
                KillMode::Status => Probe::Admin(Box::new(admin_client(args, address)?)),
                KillMode::Port => Probe::Stomp(address.trim_start_matches("http://").trim_end_matches('/').to_string()),
            };
            Ok(Member { name: name.clone(), pid_file: pid_file.clone(), restart_cmd: restart_cmd.clone(), probe })
        })
        .collect()
}

impl Member {
    /// The member's role now; a member that does not answer is `Other`.
    pub async fn role(&self) -> Role {
        match &self.probe {
            Probe::Stomp(address) => match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(_)) => Role::Live,
                _ => Role::Other,
            },
            Probe::Admin(client) => match tokio::time::timeout(PROBE_TIMEOUT, client.status_json()).await {
                Ok(Ok(status)) => role_of_status(&status),
                _ => Role::Other,
            },
        }
    }

    pub fn read_pid(&self) -> anyhow::Result<i32> {
        let text = std::fs::read_to_string(&self.pid_file)
            .with_context(|| format!("failed to read the pid file {}", self.pid_file.display()))?;
        text.trim().parse().with_context(|| format!("pid file {} holds {:?}, not a pid", self.pid_file.display(), text))
    }

    /// Whether the pid file names a running process.
    pub fn is_running(&self) -> bool {
        // SAFETY: kill with signal 0 only checks that the process exists.
        self.read_pid().is_ok_and(|pid| pid > 0 && unsafe { libc::kill(pid, 0) } == 0)
    }

    /// Sends SIGKILL to the pid in the pid file.
    pub fn kill9(&self, pid: i32) -> anyhow::Result<()> {
        if pid <= 0 {
            bail!("refusing to signal pid {pid} of member {}", self.name);
        }
        // SAFETY: plain kill(2) on a pid the caller read from this member's pid file.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("failed to SIGKILL member {} (pid {pid})", self.name));
        }
        Ok(())
    }

    /// Runs the restart command with `sh -c` and waits for it to return.
    pub async fn restart(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(&self.restart_cmd).stdin(std::process::Stdio::null()).kill_on_drop(true);
        let status = tokio::time::timeout(timeout, command.status())
            .await
            .with_context(|| format!("restart command of {} did not return within {timeout:?}", self.name))?
            .with_context(|| format!("failed to run the restart command of {}", self.name))?;
        if !status.success() {
            bail!("restart command of {} ({:?}) exited with {status}", self.name, self.restart_cmd);
        }
        Ok(())
    }
}

/// `role`, `ha.sync.state` and `ha.database.reachable` of duomq's /status. A backup of
/// the database store has nothing to sync: it is ready once it reaches the database.
pub fn role_of_status(status: &serde_json::Value) -> Role {
    let ha = &status["ha"];
    match (status["role"].as_str(), ha["sync"]["state"].as_str(), ha["database"]["reachable"].as_bool()) {
        (Some("live"), _, _) => Role::Live,
        (Some("backup"), Some("synced"), _) | (Some("backup"), _, Some(true)) => Role::ReadyBackup,
        _ => Role::Other,
    }
}

/// The admin client of a member's `--member-admin` URL: `https://` ones are checked against
/// `--ca-file` (the CA of the members' certificates), and requests are signed with the
/// cluster password of `--admin-password-file` when given (a member with a cluster password
/// answers `/status` only so).
fn admin_client(args: &FailoverArgs, address: &str) -> anyhow::Result<AdminClient> {
    let mut client = AdminClient::new(address)?;
    if address.starts_with("https://") {
        let ca = args.tls.ca_file.as_deref().context("an https:// --member-admin needs --ca-file (the CA of the members' certificates)")?;
        client = client.with_ca_file(ca, None)?;
    }
    if let Some(file) = &args.admin_password_file {
        client = client.with_password_file(file)?;
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case(json!({"role": "live", "ha": {"sync": {"state": "none"}}}), Role::Live)]
    #[case(json!({"role": "backup", "ha": {"sync": {"state": "synced"}}}), Role::ReadyBackup)]
    #[case(json!({"role": "backup", "ha": {"sync": {"state": "catchingUp"}}}), Role::Other)]
    #[case(json!({"role": "backup", "ha": {"database": {"reachable": true}}}), Role::ReadyBackup)]
    #[case(json!({"role": "backup", "ha": {"database": {"reachable": false}}}), Role::Other)]
    #[case(json!({"role": "fenced", "ha": {"database": {"reachable": true}}}), Role::Other)]
    #[case(json!({"queues": []}), Role::Other)]
    fn given_status_json_should_read_role(#[case] status: serde_json::Value, #[case] want: Role) {
        assert_eq!(role_of_status(&status), want);
    }
}
