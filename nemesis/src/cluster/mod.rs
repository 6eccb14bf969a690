//! The cluster under test as real `duomq-broker` processes on loopback, and the only code
//! that touches them: start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT, and `/status`. Every
//! process action is recorded in the history. It decides nothing about when to act; the
//! fault loop does.

pub mod config;
pub mod status;

use crate::history::{Event, ProcessRecord, Recorder};
use config::{Layout, MemberLayout};
use duomq_broker::admin::api::{BrokerStatus, FaultRules};
use duomq_broker::admin::client::AdminClient;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::process::{Child, Command};

/// How long a member may take to exit after SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `/status` request may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("failed to render the config of {member}")]
    Render { member: String, source: serde_yaml::Error },
    #[error("failed to start {member} ({binary})")]
    Spawn { member: String, binary: PathBuf, source: std::io::Error },
    #[error("failed to signal {member} (pid {pid})")]
    Signal { member: String, pid: u32, source: std::io::Error },
    #[error("failed to wait for {member} to exit")]
    Wait { member: String, source: std::io::Error },
    #[error("failed to make the admin client of {member}")]
    Admin { member: String, source: Box<duomq_broker::admin::client::ClientError> },
    #[error("failed to set the fault rules of {member}")]
    Faults { member: String, source: Box<duomq_broker::admin::client::ClientError> },
}

/// One member: its layout, its process (when running) and its admin client.
pub struct Member {
    pub layout: MemberLayout,
    binary: PathBuf,
    admin: AdminClient,
    process: tokio::sync::Mutex<Process>,
    incarnations: AtomicU32,
}

#[derive(Default)]
struct Process {
    child: Option<Child>,
    pid: u32,
    stopped: bool,
}

impl Member {
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    fn config_path(&self) -> PathBuf {
        self.layout.dir.join("broker.yaml")
    }

    /// The member's log file (its stderr, every incarnation appended).
    pub fn log_path(&self, logs: &Path) -> PathBuf {
        logs.join(format!("{}.log", self.layout.name))
    }

    /// Starts the process unless it runs; returns its pid.
    pub async fn start(&self, logs: &Path, recorder: &Recorder) -> Result<u32, ClusterError> {
        let mut process = self.process.lock().await;
        if process.child.is_some() {
            return Ok(process.pid);
        }
        let log_path = self.log_path(logs);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ClusterError::Write { path: log_path.clone(), source })?;
        let child = Command::new(&self.binary)
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ClusterError::Spawn { member: self.layout.name.clone(), binary: self.binary.clone(), source })?;
        let pid = child.id().unwrap_or_default();
        *process = Process { child: Some(child), pid, stopped: false };
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        recorder.record(self.event(recorder, "start", pid, incarnation));
        tracing::debug!(member = self.name(), pid, incarnation, "started");
        Ok(pid)
    }

    fn event(&self, recorder: &Recorder, action: &str, pid: u32, incarnation: u32) -> Event {
        Event::Process(ProcessRecord { t: recorder.now(), member: self.layout.name.clone(), action: action.into(), pid, incarnation })
    }

    fn incarnation(&self) -> u32 {
        self.incarnations.load(Ordering::Relaxed)
    }

    /// Whether a process of this member runs (stopped or not).
    pub async fn is_running(&self) -> bool {
        self.process.lock().await.child.is_some()
    }

    /// SIGKILL, and waits for the process to be gone. Nothing when it does not run.
    pub async fn kill(&self, recorder: &Recorder) -> Result<(), ClusterError> {
        let mut process = self.process.lock().await;
        let Some(mut child) = process.child.take() else { return Ok(()) };
        recorder.record(self.event(recorder, "kill", process.pid, self.incarnation()));
        // A stopped process dies of SIGKILL too.
        let _ = child.start_kill();
        child.wait().await.map_err(|source| ClusterError::Wait { member: self.layout.name.clone(), source })?;
        Ok(())
    }

    /// SIGTERM (after SIGCONT, were it stopped), then waits for a clean exit; SIGKILL
    /// after [`TERM_TIMEOUT`].
    pub async fn terminate(&self, recorder: &Recorder) -> Result<(), ClusterError> {
        let mut process = self.process.lock().await;
        let Some(mut child) = process.child.take() else { return Ok(()) };
        let pid = process.pid;
        recorder.record(self.event(recorder, "term", pid, self.incarnation()));
        if process.stopped {
            signal(&self.layout.name, pid, libc::SIGCONT)?;
        }
        signal(&self.layout.name, pid, libc::SIGTERM)?;
        match tokio::time::timeout(TERM_TIMEOUT, child.wait()).await {
            Ok(exit) => {
                exit.map_err(|source| ClusterError::Wait { member: self.layout.name.clone(), source })?;
            }
            Err(_) => {
                tracing::warn!(member = self.name(), pid, timeout = ?TERM_TIMEOUT, "did not exit after SIGTERM; killing it");
                let _ = child.start_kill();
                child.wait().await.map_err(|source| ClusterError::Wait { member: self.layout.name.clone(), source })?;
            }
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub async fn stop(&self, recorder: &Recorder) -> Result<(), ClusterError> {
        let mut process = self.process.lock().await;
        if process.child.is_none() || process.stopped {
            return Ok(());
        }
        signal(&self.layout.name, process.pid, libc::SIGSTOP)?;
        process.stopped = true;
        recorder.record(self.event(recorder, "stop", process.pid, self.incarnation()));
        Ok(())
    }

    /// SIGCONT of a stopped process.
    pub async fn cont(&self, recorder: &Recorder) -> Result<(), ClusterError> {
        let mut process = self.process.lock().await;
        if process.child.is_none() || !process.stopped {
            return Ok(());
        }
        signal(&self.layout.name, process.pid, libc::SIGCONT)?;
        process.stopped = false;
        recorder.record(self.event(recorder, "cont", process.pid, self.incarnation()));
        Ok(())
    }

    /// If the process ended by itself (nobody here signalled it), records it and returns
    /// how it ended.
    pub async fn reap(&self, recorder: &Recorder) -> Option<String> {
        let mut process = self.process.lock().await;
        let status = process.child.as_mut()?.try_wait().ok()??;
        process.child = None;
        recorder.record(self.event(recorder, "exit", process.pid, self.incarnation()));
        Some(status.to_string())
    }

    /// Replaces the member's fault rules (`PUT /debug/faults`).
    pub async fn set_faults(&self, rules: &FaultRules) -> Result<(), ClusterError> {
        self.admin.set_faults(rules).await.map(drop).map_err(|e| ClusterError::Faults { member: self.layout.name.clone(), source: Box::new(e) })
    }

    /// Removes the member's fault rules (`DELETE /debug/faults`). A member whose process
    /// ended has none left, so there is nothing to do then.
    pub async fn clear_faults(&self) -> Result<(), ClusterError> {
        if !self.is_running().await {
            return Ok(());
        }
        self.admin.clear_faults().await.map(drop).map_err(|e| ClusterError::Faults { member: self.layout.name.clone(), source: Box::new(e) })
    }

    /// `/status`, or `None` when it does not answer within [`STATUS_TIMEOUT`].
    pub async fn status(&self) -> Option<BrokerStatus> {
        tokio::time::timeout(STATUS_TIMEOUT, self.admin.status()).await.ok()?.ok()
    }
}

fn signal(member: &str, pid: u32, signal: libc::c_int) -> Result<(), ClusterError> {
    let Ok(target) = libc::pid_t::try_from(pid) else {
        return Err(ClusterError::Signal { member: member.into(), pid, source: std::io::Error::other("not a pid") });
    };
    // SAFETY: kill(2) on the pid of a child this process started and has not reaped yet,
    // so the pid cannot belong to another process.
    if unsafe { libc::kill(target, signal) } != 0 {
        return Err(ClusterError::Signal { member: member.into(), pid, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Every member of the run.
pub struct Cluster {
    pub layout: Layout,
    pub members: Vec<Member>,
    pub logs: PathBuf,
}

impl Cluster {
    /// Writes the password and every member's config under the layout's root; starts
    /// nothing.
    pub fn prepare(layout: Layout, binary: &Path, logs: &Path) -> Result<Cluster, ClusterError> {
        let write = |path: &Path, text: &str| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| ClusterError::Write { path: dir.to_path_buf(), source })?;
            }
            std::fs::write(path, text).map_err(|source| ClusterError::Write { path: path.to_path_buf(), source })
        };
        write(&layout.password_file, &format!("nemesis-{:016x}\n", rand::random::<u64>()))?;
        std::fs::create_dir_all(logs).map_err(|source| ClusterError::Write { path: logs.to_path_buf(), source })?;
        let mut members = Vec::new();
        for (g, pair) in layout.groups.iter().enumerate() {
            for (i, m) in pair.iter().enumerate() {
                let yaml = serde_yaml::to_string(&layout.broker_config(g, i))
                    .map_err(|source| ClusterError::Render { member: m.name.clone(), source })?;
                write(&m.dir.join("broker.yaml"), &format!("# Written by duomq-nemesis for one run.\n{yaml}"))?;
                let admin = AdminClient::new(&m.admin_addr())
                    .and_then(|c| c.with_password_file(&layout.password_file))
                    .map_err(|source| ClusterError::Admin { member: m.name.clone(), source: Box::new(source) })?;
                members.push(Member {
                    layout: m.clone(),
                    binary: binary.to_path_buf(),
                    admin,
                    process: tokio::sync::Mutex::new(Process::default()),
                    incarnations: AtomicU32::new(0),
                });
            }
        }
        Ok(Cluster { layout, members, logs: logs.to_path_buf() })
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.layout.name == name)
    }

    /// The members of group `g`: its primary, then its backup.
    pub fn group(&self, g: usize) -> impl Iterator<Item = &Member> {
        let name = format!("g{g}");
        self.members.iter().filter(move |m| m.layout.group == name)
    }

    /// Stops every member: SIGTERM (continuing stopped ones), SIGKILL past the timeout.
    pub async fn shut_down(&self, recorder: &Recorder) {
        let all = self.members.iter().map(|m| async move {
            if let Err(e) = m.terminate(recorder).await {
                tracing::warn!(member = m.name(), error = %duomq_broker::report::error_chain(&e), "failed to stop cleanly");
                let _ = m.kill(recorder).await;
            }
        });
        futures::future::join_all(all).await;
    }
}
