//! What the bench's integration tests share: the binaries under test (the broker built
//! first when missing), free loopback ports, a broker process in a temp dir, and running
//! the bench for its JSON line.

#![allow(dead_code)] // each test file uses its own part

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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

/// Waits for `child` up to `limit` (the kit's wait, as an `anyhow` error).
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    duomq_testkit::process::wait_within(child, limit).map_err(anyhow::Error::msg)
}

pub use duomq_testkit::reserve_port;

/// Runs the bench and parses its one JSON line; its stderr is shown if that fails.
pub fn bench_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let run = bench_outcome(args)?;
    if !run.success {
        bail!("duomq-bench {args:?} failed; stderr:\n{}", run.stderr);
    }
    run.json
}

/// What one bench process did: whether it exited 0, its JSON line, its stderr.
pub struct BenchOutcome {
    pub success: bool,
    pub json: anyhow::Result<serde_json::Value>,
    pub stderr: String,
}

/// Runs the bench, whatever its exit status, and parses its JSON line.
pub fn bench_outcome(args: &[&str]) -> anyhow::Result<BenchOutcome> {
    let Output { status, stdout, stderr } = Command::new(bench_binary()).args(args).output()?;
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON in {stdout:?}; stderr:\n{stderr}"))
        .and_then(|line| serde_json::from_str(line).with_context(|| format!("bad JSON {line:?}; stderr:\n{stderr}")));
    Ok(BenchOutcome { success: status.success(), json, stderr })
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


/// A broker process in its own temp dir; killed on drop, its log printed on failure.
pub struct Broker {
    child: Child,
    stomp_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> anyhow::Result<Broker> {
        Broker::start_with_config(None)
    }

    /// A broker reading `yaml` as its broker.yaml (its listeners and data directory are
    /// still set by flags).
    pub fn start_with_config(yaml: Option<&str>) -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new().prefix("duomq-bench-test-").tempdir()?;
        let log = dir.path().join("broker.log");
        let (stomp_port, admin_port) = (reserve_port(), reserve_port());
        let mut command = Command::new(broker_binary()?);
        command.arg("run");
        if let Some(yaml) = yaml {
            let config = dir.path().join("broker.yaml");
            std::fs::write(&config, yaml)?;
            command.arg("--config").arg(config);
        }
        let child = command
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
        let child = &mut self.child;
        let ready = duomq_testkit::eventually_some("the broker ready", duomq_testkit::timeouts::BROKER_READY, || match child.try_wait() {
            Ok(Some(status)) => Some(Err(status)),
            _ => http_get(admin_port, "/readyz").is_ok_and(|(code, _)| code == 200).then_some(Ok(())),
        });
        ready.map_err(|status| anyhow::anyhow!("broker exited with {status} before it was ready:\n{}", self.log_text()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("stomp://127.0.0.1:{}", self.stomp_port)
    }

    /// The STOMP listener as `stomp+ssl://`, for a broker started with TLS on it.
    pub fn tls_url(&self) -> String {
        format!("stomp+ssl://127.0.0.1:{}", self.stomp_port)
    }

    pub fn log_text(&self) -> String {
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

/// Where compare.sh finds ActiveMQ unless ACTIVEMQ_HOME says otherwise.
const ACTIVEMQ_HOME: &str = "/usr/share/activemq";

/// Whether ActiveMQ is installed as compare.sh expects it (the Debian package's layout)
/// and a JVM runs.
pub fn activemq_installed() -> bool {
    let home = std::env::var("ACTIVEMQ_HOME").unwrap_or_else(|_| ACTIVEMQ_HOME.to_string());
    Path::new(&home).join("bin/activemq.jar").exists()
        && Command::new("java")
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// `duomq-bench run` arguments for a short test run against `url`: 1 s after 500 ms,
/// persistent, 2 producers with 16 receipts in flight, 2 consumers, JSON; then `extra`.
pub fn short_run_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--url", url, "--duration", "1s", "--warmup", "500ms", "--persistent", "--window", "16"];
    args.extend_from_slice(&["--producers", "2", "--consumers", "2", "--json"]);
    args.extend_from_slice(extra);
    args
}

/// The `--only` list of a section test: duomq and ActiveMQ, or duomq alone (said on stderr)
/// when ActiveMQ is not installed; and whether ActiveMQ is in it.
pub fn compare_targets() -> (&'static str, bool) {
    if activemq_installed() {
        ("duomq,activemq", true)
    } else {
        eprintln!("ActiveMQ is not installed: the section runs duomq's cells only (apt-get install activemq for all)");
        ("duomq", false)
    }
}

/// A number after `prefix` on a line of `text` (`-` or nothing: None): a section report's
/// ratio line.
pub fn ratio_after(text: &str, prefix: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split_whitespace().next()?.trim_end_matches('x').parse().ok()
}

/// One JSON value per non-empty line of a file.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// A finished `bench/compare.sh` run in a temp dir of its own: its output directory is
/// `out/`, its output `compare.log`, and TMPDIR (the brokers' data) the temp dir.
/// Runs `bench/SCRIPT` with ARGS against the debug builds of duomq-broker and duomq-bench
/// (DUOMQ_BROKER, DUOMQ_BENCH), with ENV added and its output in LOG, for at most `limit`.
pub fn run_bench_script(
    script: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&std::ffi::OsStr, &std::ffi::OsStr)],
    log: &Path,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let log = std::fs::File::create(log)?;
    let mut child = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .args(args)
        .env("DUOMQ_BROKER", broker_binary()?)
        .env("DUOMQ_BENCH", bench_binary())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to run bench/{script}"))?;
    wait_with_timeout(&mut child, limit)
}

pub struct CompareRun {
    pub root: tempfile::TempDir,
    pub status: std::process::ExitStatus,
}

impl CompareRun {
    /// Runs compare.sh with ARGS and `--out`, against the debug builds of duomq-broker and
    /// duomq-bench, with ENV added, for at most `limit`.
    pub fn run(prefix: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> anyhow::Result<CompareRun> {
        let root = tempfile::Builder::new().prefix(prefix).tempdir()?;
        // Searchable by others: as root, compare.sh runs PostgreSQL as the postgres user,
        // whose data directory is below this one.
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let out = root.path().join("out");
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        args.extend([std::ffi::OsStr::new("--out"), out.as_os_str()]);
        let mut env: Vec<(&std::ffi::OsStr, &std::ffi::OsStr)> =
            env.iter().map(|(k, v)| (std::ffi::OsStr::new(*k), std::ffi::OsStr::new(*v))).collect();
        env.insert(0, (std::ffi::OsStr::new("TMPDIR"), root.path().as_os_str()));
        let status = run_bench_script("compare.sh", &args, &env, &root.path().join("compare.log"), limit)?;
        Ok(CompareRun { root, status })
    }

    pub fn out(&self, file: &str) -> PathBuf {
        self.root.path().join("out").join(file)
    }

    /// The script's output and the last `lines` lines of every log of the run, for a
    /// failed assertion.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = std::fs::read_to_string(self.root.path().join("compare.log")).unwrap_or_default();
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(self.out("logs")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("\n--- {} (last {lines} lines) ---\n", path.display());
            out.extend(tail.into_iter().rev().map(|l| format!("{l}\n")));
        }
        out
    }
}
