//! The broker's container image: built the way a user builds it (`images/build.sh`) from
//! the binary cargo built for these tests, then run the way Kubernetes runs it: read-only
//! root filesystem, not root, data on a volume, ports reached from outside the container.
//!
//! Needs Docker with a running daemon; the first run also builds the local base image
//! (`images/build-base.sh`), which needs root and debootstrap. A missing tool fails the
//! test with what to install: it never skips.

mod common;

use anyhow::{bail, ensure, Context, Result};
use common::{body_text, http_get, Conn, Deadline};
use duomq_broker::stomp::Command;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BASE_IMAGE: &str = "duomq-base:bookworm";
/// The test's image is `duomq/broker:test-<unique>`: test runs sharing a Docker daemon
/// must not retag or remove each other's image.
const TEST_IMAGE_PREFIX: &str = "duomq/broker:test";
/// The image's user, fixed so Kubernetes can set `runAsUser`/`fsGroup` to match.
const IMAGE_UID: u32 = 10001;

/// debootstrap, security updates and `docker import` of the base: one to two minutes here.
const BASE_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `docker build` of the broker image on an existing base: seconds.
const IMAGE_BUILD_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// One short docker command (run -d, port, exec, inspect, rm).
const DOCKER_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// From `docker run` until `/healthz` and `/readyz` answer 200 through the published port.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The broker gets this long to exit after SIGTERM before docker kills it.
/// How long a docker command that timed out may take to end on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const STOP_GRACE_SECONDS: u64 = 30;

#[test]
fn given_broker_image_when_run_read_only_as_non_root_should_serve_stomp_and_admin() -> Result<()> {
    require_docker()?;
    let base_missing = !docker_ok(&["image", "inspect", BASE_IMAGE])?;
    if base_missing {
        require_base_build_tools()?;
    }

    let image = Image { tag: format!("{TEST_IMAGE_PREFIX}-{}", unique_suffix()?) };
    let logs = tempfile::Builder::new().prefix("duomq-image-test-").tempdir()?;
    let build_timeout = if base_missing { BASE_BUILD_TIMEOUT + IMAGE_BUILD_TIMEOUT } else { IMAGE_BUILD_TIMEOUT };
    let started = Instant::now();
    let build_log = logs.path().join("build.log");
    let build = run_logged(
        Process::new(repo_dir().join("images/build.sh")).args([
            "broker",
            "--binary",
            env!("CARGO_BIN_EXE_duomq-broker"),
            "--tag",
            &image.tag,
        ]),
        &build_log,
        build_timeout,
        "images/build.sh broker",
    )?;
    ensure!(build.success(), "images/build.sh broker failed ({build}); its output:\n{}", tail(&build_log, 80));
    eprintln!(
        "built {}{} in {:.1}s",
        image.tag,
        if base_missing { " and its base image" } else { "" },
        started.elapsed().as_secs_f64()
    );

    // /var/lib/duomq gets the anonymous volume the image declares, so the image's
    // ownership of that directory is what makes it writable.
    let container = Container::run(&[
        "--read-only",
        // Published on loopback only; docker picks the host ports.
        "--publish",
        "127.0.0.1::61613",
        "--publish",
        "127.0.0.1::8161",
        &image.tag,
    ])?;
    let stomp_port = container.host_port(61613)?;
    let admin_port = container.host_port(8161)?;

    container.wait_for_200(admin_port, "/healthz")?;
    container.wait_for_200(admin_port, "/readyz")?;
    let (code, body) = http_get(admin_port, "/status").context("failed to GET /status")?;
    ensure!(code == 200, "GET /status answered {code}: {body}");
    let status: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("/status is not JSON: {body}"))?;
    ensure!(status["role"] == "live", "a standalone broker should be live; /status: {status}");

    let mut consumer = Conn::connect(stomp_port, &[("accept-version", "1.2"), ("host", "/")]);
    consumer.subscribe("s1", "/queue/image", "auto", &[]);
    let mut producer = Conn::connect(stomp_port, &[("accept-version", "1.2"), ("host", "/")]);
    producer.send_receipted("/queue/image", "through the published port", true);
    let message = consumer.expect(Command::Message);
    ensure!(body_text(&message) == "through the published port", "wrong body: {message:?}");
    producer.disconnect();
    consumer.disconnect();

    let proc_status = container.exec(&["cat", "/proc/1/status"])?;
    let uids = proc_status.lines().find(|l| l.starts_with("Uid:")).context("no Uid line in /proc/1/status")?;
    ensure!(
        uids.split_whitespace().skip(1).all(|uid| uid == IMAGE_UID.to_string()),
        "the broker (pid 1) should run as uid {IMAGE_UID}: {uids}"
    );
    // The journal went to the volume although the root filesystem is read-only.
    let data = container.exec(&["ls", "/var/lib/duomq"])?;
    ensure!(data.lines().any(|l| l == "node-id"), "no node-id in /var/lib/duomq: {data}");

    // Kubernetes stops a pod with SIGTERM to pid 1: the broker must drain and exit 0.
    container.stop()?;
    container.passed();
    Ok(())
}

/// The image this test built; removed when dropped, after the container that uses it.
struct Image {
    tag: String,
}

impl Drop for Image {
    fn drop(&mut self) {
        match docker(&["image", "rm", &self.tag], DOCKER_COMMAND_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No such image") => {}
            Ok(out) => {
                eprintln!("failed to remove image {}: {}", self.tag, String::from_utf8_lossy(&out.stderr).trim())
            }
            Err(e) => eprintln!("failed to remove image {}: {e:#}", self.tag),
        }
    }
}

/// A container this test started; removed (with its anonymous volume) when dropped, also
/// when the test fails, after printing its log.
struct Container {
    name: String,
    passed: bool,
}

impl Container {
    fn run(args: &[&str]) -> Result<Container> {
        // The guard exists before `docker run`, so a half-started container goes too.
        let container = Container { name: format!("duomq-image-test-{}", unique_suffix()?), passed: false };
        let mut run = vec!["run", "--detach", "--name", &container.name];
        run.extend_from_slice(args);
        docker_stdout(&run)?;
        Ok(container)
    }

    /// The loopback port docker published for `container_port`.
    fn host_port(&self, container_port: u16) -> Result<u16> {
        let out = docker_stdout(&["port", &self.name, &format!("{container_port}/tcp")])?;
        let line = out.lines().find(|l| l.starts_with("127.0.0.1:")).with_context(|| {
            format!("container port {container_port} is not published on 127.0.0.1: docker port said {out:?}")
        })?;
        line.rsplit(':').next().unwrap_or_default().parse().with_context(|| format!("bad docker port line {line:?}"))
    }

    fn wait_for_200(&self, admin_port: u16, path: &str) -> Result<()> {
        let deadline = Deadline::after(format!("{path} answering 200"), READY_TIMEOUT);
        loop {
            // Docker's proxy accepts on the host port before the broker listens, so a
            // connection alone means nothing: only a 200 counts.
            if let Ok((200, _)) = http_get(admin_port, path) {
                return Ok(());
            }
            if !self.running()? {
                bail!("the container exited before {path} answered 200");
            }
            if deadline.passed() {
                bail!("{path} did not answer 200 within READY_TIMEOUT ({:?})", deadline.timeout());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn running(&self) -> Result<bool> {
        Ok(docker_stdout(&["inspect", "--format", "{{.State.Running}}", &self.name])?.trim() == "true")
    }

    fn exec(&self, command: &[&str]) -> Result<String> {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(command);
        docker_stdout(&args)
    }

    fn stop(&self) -> Result<()> {
        let grace = STOP_GRACE_SECONDS.to_string();
        docker_stdout_within(
            &["stop", "--time", &grace, &self.name],
            DOCKER_COMMAND_TIMEOUT + Duration::from_secs(STOP_GRACE_SECONDS),
        )?;
        let code = docker_stdout(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])?;
        ensure!(
            code.trim() == "0",
            "the broker should exit 0 on SIGTERM within {STOP_GRACE_SECONDS}s; exit code {}",
            code.trim()
        );
        Ok(())
    }

    fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.passed {
            if let Ok(out) = docker(&["logs", &self.name], DOCKER_COMMAND_TIMEOUT) {
                eprintln!(
                    "--- log of container {} ---\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if let Err(e) = docker(&["rm", "--force", "--volumes", &self.name], DOCKER_COMMAND_TIMEOUT) {
            eprintln!("failed to remove container {}: {e:#}", self.name);
        }
    }
}

/// Unique on this machine: the process id and the clock.
fn unique_suffix() -> Result<String> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    Ok(format!("{}-{nanos}", std::process::id()))
}

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_docker() -> Result<()> {
    let out = match Process::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "docker is not installed: install Docker Engine (your distribution's Docker package) and start its daemon; \
             the image test builds and runs the broker image"
        ),
        other => other.context("failed to run docker version")?,
    };
    ensure!(
        out.status.success(),
        "the Docker daemon is unreachable: start it (systemctl start docker, or dockerd) or set DOCKER_HOST; \
         docker said: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Building the base image (once per machine) runs debootstrap, as root.
fn require_base_build_tools() -> Result<()> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join("debootstrap").is_file());
    ensure!(
        on_path,
        "debootstrap is not installed: apt-get install debootstrap (needed once, to build the local base image \
         {BASE_IMAGE} with images/build-base.sh)"
    );
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the base image {BASE_IMAGE} is missing and building it needs root (debootstrap): run \
         `sudo images/build-base.sh` once, then the tests again"
    );
    Ok(())
}

/// True when `docker ARGS` exits 0.
fn docker_ok(args: &[&str]) -> Result<bool> {
    Ok(docker(args, DOCKER_COMMAND_TIMEOUT)?.status.success())
}

/// The stdout of `docker ARGS`, which must exit 0.
fn docker_stdout(args: &[&str]) -> Result<String> {
    docker_stdout_within(args, DOCKER_COMMAND_TIMEOUT)
}

fn docker_stdout_within(args: &[&str], timeout: Duration) -> Result<String> {
    let out = docker(args, timeout)?;
    ensure!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn docker(args: &[&str], timeout: Duration) -> Result<Output> {
    let dir = tempfile::tempdir()?;
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut command = Process::new("docker");
    command.args(args).stdout(File::create(&stdout)?).stderr(File::create(&stderr)?);
    let status = wait_within(&mut command, timeout, &format!("docker {}", args.join(" ")))?;
    Ok(Output { status, stdout: std::fs::read(&stdout)?, stderr: std::fs::read(&stderr)? })
}

/// Runs `command` with stdout and stderr in `log`.
fn run_logged(command: &mut Process, log: &Path, timeout: Duration, what: &str) -> Result<std::process::ExitStatus> {
    let file = File::create(log).with_context(|| format!("failed to create {}", log.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    wait_within(command, timeout, what).with_context(|| format!("output so far:\n{}", tail(log, 80)))
}

/// Runs `command` in its own process group and waits for it, polling; past `timeout` the
/// whole group gets SIGTERM (so the scripts' cleanup traps run), then SIGKILL.
fn wait_within(command: &mut Process, timeout: Duration, what: &str) -> Result<std::process::ExitStatus> {
    let mut child =
        command.stdin(Stdio::null()).process_group(0).spawn().with_context(|| format!("failed to start {what}"))?;
    let deadline = Deadline::after(what, timeout);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if deadline.passed() {
            let group = -(child.id() as i32);
            // SAFETY: signals only the process group this function created.
            unsafe { libc::kill(group, libc::SIGTERM) };
            let grace = Deadline::after(format!("{what} ending on SIGTERM"), STOP_GRACE);
            while child.try_wait()?.is_none() && !grace.passed() {
                std::thread::sleep(Duration::from_millis(100));
            }
            unsafe { libc::kill(group, libc::SIGKILL) };
            let _ = child.wait();
            bail!("{what} did not finish within {:?}", deadline.timeout());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
