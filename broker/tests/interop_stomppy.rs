//! Interop: the independent Python client stomp.py (8.x) drives the real broker over
//! STOMP 1.1 and 1.2. This test starts three brokers (one open, one with users, one on
//! stomp+ssl with client certificates mapped to users), runs the pytest suite in
//! `tests/interop` against them and fails when any pytest test fails.
//! It never skips: without python3, stomp.py or pytest it fails and says how to install them.

mod common;

use common::tls::Pki;
use common::Broker;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use duomq_testkit::timeouts::{CLI as PROBE_TIMEOUT, SUITE as SUITE_TIMEOUT};
const INSTALL_HINT: &str = "scripts/test --install-only (installs everything the tests need), or python3 -m pip install 'stomp.py>=8,<9' pytest";

const AUTH_CONFIG: &str = "auth:\n  users:\n    - name: app\n      password: s3cret\n";
/// The TLS broker's users: app by passcode, or by the certificate named client-app.
const TLS_AUTH_CONFIG: &str =
    "auth:\n  users:\n    - name: app\n      password: s3cret\n  certificateUsers:\n    client-app: app\n";

/// Checks that python3 runs and has stomp.py 8.x and pytest; panics with the install hint otherwise.
fn require_python_tools() {
    let probe = "import stomp, pytest\n\
                 v = stomp.__version__\n\
                 major = int((v if isinstance(v, str) else '.'.join(map(str, v))).split('.')[0])\n\
                 assert major == 8, f'stomp.py {v} found, 8.x needed'\n\
                 print(f'stomp.py {v}, pytest {pytest.__version__}')";
    let mut child = match Command::new("python3")
        .args(["-c", probe])
        .env("STOMP_SKIP_HOSTNAME_SCAN", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("failed to run python3 ({e}); the stomp.py interop tests need it: {INSTALL_HINT}"),
    };
    let status = wait_with_timeout(&mut child, PROBE_TIMEOUT, "python3 import probe");
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "python3 lacks stomp.py 8.x or pytest, which the interop tests need; install them with\n    {INSTALL_HINT}\n{err}"
    );
    println!("interop: {}", out.trim());
}

fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    duomq_testkit::process::wait_within(child, timeout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Forwards each line of `stream` to the test output (so `--nocapture` streams it live and a
/// failing run shows it) and to `lines` for the final assertion.
fn forward_lines(stream: impl Read + Send + 'static, lines: mpsc::Sender<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = lines.send(line);
        }
    })
}

#[test]
fn given_stomppy_client_when_driving_broker_should_pass_interop_suite() {
    require_python_tools();
    let broker = Broker::start("interop-stomppy", "");
    let auth_broker = Broker::start("interop-stomppy-auth", AUTH_CONFIG);
    let pki = Pki::new("interop");
    let other_ca = Pki::new("interop-other");
    let client = pki.leaf("client-app");
    let tls = pki.config_with_client_auth(&pki.leaf("broker"), &["stomp"], "stomp", "optional");
    assert!(tls.contains("clientAuth: optional"), "the tls: section of the test kit changed shape:\n{tls}");
    let tls_broker = Broker::start("interop-stomppy-tls", &format!("{tls}{TLS_AUTH_CONFIG}"));

    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let suite = manifest.join("tests").join("interop");
    let mut child = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"])
        .arg(&suite)
        .current_dir(&manifest)
        .env("DUOMQ_STOMP_HOST", "127.0.0.1")
        .env("DUOMQ_STOMP_PORT", broker.stomp_port.to_string())
        .env("DUOMQ_AUTH_STOMP_PORT", auth_broker.stomp_port.to_string())
        .env("DUOMQ_TLS_STOMP_PORT", tls_broker.stomp_port.to_string())
        .env("DUOMQ_TLS_CA_FILE", &pki.ca_file)
        .env("DUOMQ_TLS_CERT_FILE", &client.cert)
        .env("DUOMQ_TLS_KEY_FILE", &client.key)
        .env("DUOMQ_TLS_OTHER_CA_FILE", &other_ca.ca_file)
        // No __pycache__ in the source tree; no slow hostname lookups at stomp.py import.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("STOMP_SKIP_HOSTNAME_SCAN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run python3 -m pytest ({e}); install: {INSTALL_HINT}"));

    let (tx, rx) = mpsc::channel();
    let stdout = forward_lines(child.stdout.take().expect("piped stdout"), tx.clone());
    let stderr = forward_lines(child.stderr.take().expect("piped stderr"), tx);
    let status = wait_with_timeout(&mut child, SUITE_TIMEOUT, "the stomp.py interop suite");
    let _ = stdout.join();
    let _ = stderr.join();

    let output: Vec<String> = rx.try_iter().collect();
    let summary = output
        .iter()
        .rev()
        .find(|l| [" passed", " failed", " error", "no tests ran"].iter().any(|w| l.contains(w)))
        .cloned()
        .unwrap_or_else(|| "(no pytest summary line)".to_string());
    assert!(
        status.success(),
        "stomp.py interop suite failed ({status}): {summary}\n\
         broker logs: {}, {} and {} (printed below)",
        broker.log.display(),
        auth_broker.log.display(),
        tls_broker.log.display()
    );
    println!("interop: {summary}");
}
