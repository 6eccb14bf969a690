//! Runs `duomq-bench` as a process against the real `duomq-broker` binary, started on free
//! loopback ports in a temp dir, and checks the JSON it reports. The broker's log and the
//! bench's stderr are printed when a test fails.
//!
//! The broker binary is not a dependency Cargo builds for this crate, so it is looked up
//! next to this test's own target directory (`<target>/<profile>/duomq-broker`). `cargo
//! test --workspace` builds it anyway (the broker's own tests need it); when it is missing
//! this test runs `cargo build -p duomq-broker` once in the same profile.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to answer /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long building a missing broker binary may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

fn bench_binary() -> &'static str {
    env!("CARGO_BIN_EXE_duomq-bench")
}

/// `<target>/<profile>/duomq-broker`, built first when it is not there.
fn broker_binary() -> anyhow::Result<PathBuf> {
    let test_exe = std::env::current_exe().context("failed to locate the test binary")?;
    // The test runs from <target>/<profile>/deps/.
    let profile_dir =
        test_exe.parent().and_then(Path::parent).context("test binary is not in <target>/<profile>/deps")?;
    let broker = profile_dir.join(format!("duomq-broker{}", std::env::consts::EXE_SUFFIX));
    if broker.exists() {
        return Ok(broker);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "duomq-broker"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let mut child = build.spawn().context("failed to run cargo build -p duomq-broker")?;
    let status = wait_with_timeout(&mut child, BUILD_TIMEOUT)?;
    if !status.success() || !broker.exists() {
        bail!("cargo build -p duomq-broker did not produce {}; build it first", broker.display());
    }
    Ok(broker)
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A broker process in its own temp dir; killed on drop, its log printed on failure.
struct Broker {
    child: Child,
    stomp_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new().prefix("duomq-bench-test-").tempdir()?;
        let log = dir.path().join("broker.log");
        let (stomp_port, admin_port) = (free_port()?, free_port()?);
        let child = Command::new(broker_binary()?)
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--stomp-listen", &format!("127.0.0.1:{stomp_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("failed to start duomq-broker")?;
        let mut broker = Broker { child, stomp_port, log, _dir: dir };
        broker.wait_ready(admin_port)?;
        Ok(broker)
    }

    fn wait_ready(&mut self, admin_port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("broker exited with {status} before it was ready:\n{}", self.log_text());
            }
            if http_status(admin_port, "/readyz").is_ok_and(|code| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("broker was not ready within {READY_TIMEOUT:?}:\n{}", self.log_text())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("stomp://127.0.0.1:{}", self.stomp_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ({}) ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// The status code of a plain HTTP/1.0 GET.
fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response.split_whitespace().nth(1).context("empty HTTP response")?;
    Ok(code.parse()?)
}

/// Runs the bench and parses its one JSON line; its stderr is shown if that fails.
fn bench_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let Output { status, stdout, stderr } = Command::new(bench_binary()).args(args).output()?;
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        bail!("duomq-bench {args:?} exited with {status}; stderr:\n{stderr}");
    }
    let line = stdout.lines().find(|l| l.starts_with('{')).with_context(|| format!("no JSON in {stdout:?}"))?;
    serde_json::from_str(line).with_context(|| format!("bad JSON {line:?}; stderr:\n{stderr}"))
}

#[test]
fn given_broker_when_benchmarked_persistently_should_report_rates_footprint_and_no_losses() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let (url, pid) = (broker.url(), broker.pid().to_string());
    let started = Instant::now();
    let report = bench_json(&[
        "run",
        "--url",
        &url,
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--persistent",
        "--window",
        "8",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--json",
        "--broker-pid",
        &pid,
        "--label",
        "test",
    ])?;
    let number = |key: &str| report[key].as_f64().with_context(|| format!("no number {key} in {report}"));
    assert!(number("received")? > 0.0, "{report}");
    assert!(number("sent")? > 0.0, "{report}");
    assert_eq!(number("lost")?, 0.0, "{report}");
    assert_eq!(number("duplicates")?, 0.0, "{report}");
    assert!(number("rss_peak_mib")? > 0.0, "{report}");
    assert!(number("rss_idle_mib")? > 0.0, "{report}");
    assert!(number("cpu_percent")? > 0.0, "{report}");
    assert!(report["latency_ms"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert_eq!(report["label"], "test");
    assert_eq!((report["producers"].as_u64(), report["consumers"].as_u64()), (Some(2), Some(2)));
    assert!(started.elapsed() < Duration::from_secs(15), "the run took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn given_subscribe_headers_when_benchmarked_should_consume_over_raw_connection() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let url = broker.url();
    let report = bench_json(&[
        "run",
        "--url",
        &url,
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--window",
        "0",
        "--persistent",
        "--ack",
        "client",
        "--prefetch",
        "50",
        "--subscribe-header",
        "x-queue-type=quorum",
        "--json",
    ])?;
    assert!(report["received"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert!(report["rss_peak_mib"].is_null(), "{report}");
    Ok(())
}

#[test]
fn given_temp_dir_when_measuring_fsync_rate_should_report_a_rate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let report = bench_json(&["fsync-rate", "--dir", &dir_arg, "--duration", "1s", "--json"])?;
    assert!(report["fsync_rate"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "scratch file left behind");
    Ok(())
}
