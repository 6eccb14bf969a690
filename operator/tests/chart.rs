//! Offline checks of what duomq installs, run from cargo: the Helm chart (lint, values
//! schema, Kubernetes 1.33 schemas), drift of `manifests/install.yaml` and of the chart's
//! copy of the CRDs, the operator's rendered snapshots and the example BrokerGroups.
//! The checks themselves are the pytest suite in `charts/tests` (Helm through PyPI
//! `helm-python-sdk`, `kubernetes-validate`, `jsonschema`); this test runs it and fails
//! when any of it fails. It never skips: without python3 or one of those packages it
//! fails and says how to install them.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use duomq_testkit::timeouts::{CLI as PROBE_TIMEOUT, SUITE as SUITE_TIMEOUT};
const INSTALL_HINT: &str = "python3 -m pip install 'helm-python-sdk>=0.2.2,<0.3' \
                            'kubernetes-validate>=1.33,<2' 'jsonschema>=4,<5' 'pytest>=7'";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the repository")
        .to_path_buf()
}

/// Checks that python3 runs and has the packages the suite imports; panics with the install hint otherwise.
fn require_python_tools() {
    let probe = "from importlib.metadata import version\n\
                 import helm_python, kubernetes_validate, jsonschema, yaml, pytest\n\
                 names = ('helm-python-sdk', 'kubernetes-validate', 'jsonschema', 'pytest')\n\
                 print(', '.join(f'{n} {version(n)}' for n in names), f'(Helm {helm_python.helm_sdk_version()})')";
    let child = Command::new("python3")
        .args(["-c", probe])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!(
            "failed to run python3 ({e}); the chart checks need Python 3 and: {INSTALL_HINT}"
        ),
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
        "python3 lacks a package the chart checks need; install them with\n    {INSTALL_HINT}\n{err}"
    );
    println!("chart: {}", out.trim());
}

fn wait_with_timeout(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    duomq_testkit::process::wait_within(child, timeout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Forwards each line of `stream` to the test output (so `--nocapture` streams it live and a
/// failing run shows it) and to `lines` for the final assertion.
fn forward_lines(
    stream: impl Read + Send + 'static,
    lines: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = lines.send(line);
        }
    })
}

#[test]
fn given_chart_crds_snapshots_and_examples_when_checked_offline_should_pass() {
    require_python_tools();
    let root = repo_root();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "charts/tests",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfE",
        ])
        .current_dir(&root)
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("failed to run python3 -m pytest ({e}); install: {INSTALL_HINT}")
        });

    let (tx, rx) = mpsc::channel();
    let stdout = forward_lines(child.stdout.take().expect("piped stdout"), tx.clone());
    let stderr = forward_lines(child.stderr.take().expect("piped stderr"), tx);
    let status = wait_with_timeout(&mut child, SUITE_TIMEOUT, "the chart check suite");
    let _ = stdout.join();
    let _ = stderr.join();

    let output: Vec<String> = rx.try_iter().collect();
    let failures: Vec<&String> = output
        .iter()
        .filter(|l| l.starts_with("FAILED ") || l.starts_with("ERROR "))
        .collect();
    let summary = output
        .iter()
        .rev()
        .find(|l| {
            [" passed", " failed", " error", "no tests ran"]
                .iter()
                .any(|w| l.contains(w))
        })
        .cloned()
        .unwrap_or_else(|| "(no pytest summary line)".to_string());
    assert!(
        status.success(),
        "chart checks failed ({status}): {summary}\n{}\n(the full pytest output is printed above; \
         regenerate the CRDs and manifests/install.yaml with scripts/generate)",
        failures
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("chart: {summary}");
}
