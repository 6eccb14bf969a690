//! `duomq-e2e up` as a user runs it: started as a process with its own state dir, it prints
//! the KUBECONFIG line once the operator and the example pair are applied; kubectl works
//! with it; Ctrl-C (SIGINT) stops it and removes every container and the network it made.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use duomq_e2e::cluster::names::DOCKER_LABEL_CLUSTER;
use duomq_e2e::env::{kubectl, repo_root, require_tools};

/// Images exist or are built from this checkout's binaries, the operator starts, the
/// example is applied: tens of seconds here; generous for slow CI.
const UP_READY: Duration = Duration::from_secs(300);
/// SIGINT to exit: containers stopped and removed.
const DOWN_DONE: Duration = Duration::from_secs(120);

/// Kills the process if the test fails before it exited (SIGKILL skips its cleanup: the
/// test removes by label what it left).
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn docker_lines(args: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("docker").args(args).output().context("failed to run docker")?;
    ensure!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect())
}

#[test]
fn given_duomq_e2e_up_when_interrupted_should_have_served_kubectl_and_remove_its_containers() -> Result<()> {
    require_tools()?;
    let state = tempfile::Builder::new().prefix("duomq-e2e-up-").tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_duomq-e2e"))
        .arg("up")
        .arg("--state-dir")
        .arg(state.path())
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start duomq-e2e up")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let up = Up(child);

    // The line a user copies: `export KUBECONFIG=...`.
    let (lines, found) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
                let _ = lines.send(PathBuf::from(path));
            }
        }
    });
    let kubeconfig = found.recv_timeout(UP_READY).context("duomq-e2e up printed no KUBECONFIG line")?;
    let cluster = format!("label={DOCKER_LABEL_CLUSTER}=duomq-e2e-{pid}");
    let result = check_and_stop(up, &kubeconfig, &cluster, pid);
    // Whatever the outcome, leave nothing of this run behind.
    for id in docker_lines(&["ps", "-aq", "--filter", &cluster]).unwrap_or_default() {
        let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    }
    for id in docker_lines(&["network", "ls", "-q", "--filter", &cluster]).unwrap_or_default() {
        let _ = Command::new("docker").args(["network", "rm", &id]).output();
    }
    result
}

fn check_and_stop(mut up: Up, kubeconfig: &std::path::Path, cluster: &str, pid: u32) -> Result<()> {
    let listed = kubectl(kubeconfig, &["get", "bg", "-o", "name"])?;
    ensure!(listed.trim() == "brokergroup.duomq.io/pair", "kubectl get bg: {listed:?}");
    ensure!(!docker_lines(&["ps", "-q", "--filter", cluster])?.is_empty(), "no containers of this run are running");

    let interrupted = Command::new("kill").args(["-INT", &pid.to_string()]).status().context("failed to run kill")?;
    ensure!(interrupted.success(), "kill -INT {pid} failed");
    let status = duomq_testkit::process::wait_within(&mut up.0, DOWN_DONE).map_err(|e| anyhow::anyhow!("duomq-e2e up after SIGINT: {e}"))?;
    ensure!(status.success(), "duomq-e2e up exited with {status}");
    let left = docker_lines(&["ps", "-aq", "--filter", cluster])?;
    ensure!(left.is_empty(), "containers left after Ctrl-C: {left:?}");
    let networks = docker_lines(&["network", "ls", "-q", "--filter", cluster])?;
    ensure!(networks.is_empty(), "network left after Ctrl-C: {networks:?}");
    Ok(())
}

#[test]
fn given_missing_tool_when_up_should_print_one_error_line_without_backtrace_and_exit_1() -> Result<()> {
    // A PATH without kubectl; RUST_BACKTRACE=1 as set on many developer machines.
    let empty = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_duomq-e2e"))
        .args(["up", "--state-dir"])
        .arg(empty.path().join("state"))
        .env("PATH", empty.path())
        .env("RUST_BACKTRACE", "1")
        .current_dir(repo_root())
        .output()
        .context("failed to run duomq-e2e up")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "exit status {}, stderr: {stderr}", out.status);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "more than one line on stderr: {stderr}");
    ensure!(lines[0].starts_with("error: kubectl is missing: "), "stderr: {stderr}");

    // --verbose shows the causes and the backtrace.
    let verbose = Command::new(env!("CARGO_BIN_EXE_duomq-e2e"))
        .args(["up", "--verbose"])
        .env("PATH", empty.path())
        .env("RUST_BACKTRACE", "1")
        .current_dir(repo_root())
        .output()
        .context("failed to run duomq-e2e up --verbose")?;
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    ensure!(verbose.status.code() == Some(1) && stderr.contains("backtrace"), "--verbose: {stderr}");
    Ok(())
}
