//! The plugin binary as a user meets it before any cluster answers: help that names every
//! command, and one-line errors for a kubeconfig that is missing or points nowhere. (The
//! commands against a running BrokerGroup are in e2e/tests/plugin_commands.rs.)

use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

fn plugin(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_kubectl-duomq"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .context("failed to run kubectl-duomq")
}

#[test]
fn given_help_when_asked_should_name_every_command_and_the_kubectl_flags() -> Result<()> {
    let out = plugin(&["--help"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{text}");
    for word in [
        "status",
        "switchover",
        "fence",
        "unfence",
        "hibernate",
        "resume",
        "logs",
        "--namespace",
        "--kubeconfig",
        "--context",
        "kubectl duomq status pair",
    ] {
        ensure!(
            text.contains(word),
            "--help does not mention {word}:\n{text}"
        );
    }
    let out = plugin(&["switchover", "--help"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("--wait")
            && text.contains("--timeout")
            && text.contains("<BROKERGROUP> <GROUP> <POD>"),
        "{text}"
    );
    Ok(())
}

#[test]
fn given_a_missing_kubeconfig_when_run_should_fail_with_one_line_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope");
    let out = plugin(&["status", "pair", "--kubeconfig", &missing.to_string_lossy()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "succeeded without a kubeconfig");
    ensure!(
        err.trim_end().lines().count() == 1,
        "more than one line:\n{err}"
    );
    ensure!(
        err.starts_with("error: failed to read kubeconfig") && err.contains("nope"),
        "{err}"
    );
    Ok(())
}

#[test]
fn given_a_kubeconfig_pointing_at_no_server_when_run_should_fail_with_one_line() -> Result<()> {
    // A port nothing listens on, reserved so no other test starts a server there.
    let port = duomq_testkit::reserve_port();
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: team\ncurrent-context: x\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )?;
    let out = plugin(&[
        "hibernate",
        "pair",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "succeeded without a server");
    ensure!(
        err.trim_end().lines().count() == 1,
        "more than one line:\n{err}"
    );
    // The context's namespace is the default one.
    ensure!(
        err.contains("failed to read BrokerGroup team/pair"),
        "{err}"
    );
    let out = plugin(&[
        "--context",
        "other",
        "status",
        "pair",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("other"),
        "an unknown context is named: {err}"
    );
    Ok(())
}
