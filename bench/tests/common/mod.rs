//! What the bench's integration tests share: the binaries under test (the broker built
//! first when missing), free loopback ports, and running the bench for its JSON line.

#![allow(dead_code)] // each test file uses its own part

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// How long building a missing broker binary may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

pub fn bench_binary() -> &'static str {
    env!("CARGO_BIN_EXE_duomq-bench")
}

/// `<target>/<profile>/duomq-broker`, built first when it is not there.
pub fn broker_binary() -> anyhow::Result<PathBuf> {
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

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
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

pub fn free_port() -> anyhow::Result<u16> {
    // Below the kernel's ephemeral range (32768+), so outgoing connections cannot take
    // the port before the broker binds it; a stretch per process, never reused.
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() * 89) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the bench and parses its one JSON line; its stderr is shown if that fails.
pub fn bench_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let Output { status, stdout, stderr } = Command::new(bench_binary()).args(args).output()?;
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        bail!("duomq-bench {args:?} exited with {status}; stderr:\n{stderr}");
    }
    let line = stdout.lines().find(|l| l.starts_with('{')).with_context(|| format!("no JSON in {stdout:?}"))?;
    serde_json::from_str(line).with_context(|| format!("bad JSON {line:?}; stderr:\n{stderr}"))
}


/// A plain HTTP/1.0 GET on loopback: the status code and the body.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response.split_whitespace().nth(1).context("empty HTTP response")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code.parse()?, body))
}
