//! Child processes for tests: a broker, a CLI, a Python client. Each [`LoggedChild`]
//! writes its stdout and stderr to its own log file in the test's directory, is killed
//! when dropped (a failed test leaves nothing running), and prints its log when the test
//! fails, so a failure in CI shows what the process said.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A process with its own log file, killed when dropped.
pub struct LoggedChild {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl LoggedChild {
    /// Starts `command` with stdin closed and stdout and stderr appended to
    /// `<dir>/<name>.log`.
    pub fn spawn(mut command: Command, dir: &Path, name: &str) -> std::io::Result<LoggedChild> {
        let log = dir.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
        Ok(LoggedChild { child: Some(child), name: name.to_string(), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited (and with what), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL and reap: the process gets no chance to flush anything.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after that).
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or_else(|| format!("{} is not running", self.name))?;
        signal(child.id(), libc::SIGTERM);
        wait_within(&mut child, limit).map_err(|e| format!("{} after SIGTERM: {e}", self.name))
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes as a long GC pause or an
    /// overloaded host would, holding its sockets and locks.
    pub fn pause(&self, paused: bool) {
        if let Some(pid) = self.pid() {
            signal(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process does not die of SIGKILL until continued on some kernels' views
            // of ptrace; SIGCONT first costs nothing.
            signal(child.id(), libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} log ({}) ---\n{}", self.name, self.log.display(), self.log_text());
        }
    }
}

/// Sends `sig` to `pid`, a process the test started.
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) on a child this test started; a gone pid gives ESRCH, ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` to exit, up to `limit`; kills it and says so after that.
pub fn wait_within(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + crate::timeouts::scaled(limit);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("process {} did not finish within {limit:?}", child.id()));
            }
            Err(e) => return Err(format!("failed to wait for process {}: {e}", child.id())),
        }
    }
}

/// Waits for `child` (its stdout and stderr piped, or not) and collects its output; kills
/// it once `timeout` has passed. A thread drains the pipes meanwhile, so a chatty child
/// cannot block on them.
pub fn output_within(child: Child, timeout: Duration) -> Result<Output, String> {
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let timeout = crate::timeouts::scaled(timeout);
    match result.recv_timeout(timeout) {
        Ok(output) => output.map_err(|e| format!("failed to wait for process {pid}: {e}")),
        Err(_) => {
            // The thread still waits on it, and reaps it once killed.
            signal(pid, libc::SIGKILL);
            Err(format!("process {pid} did not finish within {timeout:?}"))
        }
    }
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in bytes; `None` when
/// the process is gone.
pub fn proc_memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_child_should_log_to_its_file_and_be_killed_on_drop() {
        let dir = std::env::temp_dir().join(format!("duomq-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; exec sleep 600"]);
        let mut child = LoggedChild::spawn(c, &dir, "sleeper").expect("spawn");
        let pid = child.pid().expect("pid");
        crate::eventually("the child logs", Duration::from_secs(10), || child.log_text().contains("started"));
        assert!(child.exited().is_none());
        drop(child);
        crate::eventually("the child is gone", Duration::from_secs(10), || proc_memory(pid, "VmRSS:").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn given_a_hanging_child_should_kill_it_after_the_limit() {
        let child = Command::new("sleep").arg("600").stdout(Stdio::piped()).spawn().expect("spawn");
        let err = output_within(child, Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("did not finish within"), "{err}");
    }
}
