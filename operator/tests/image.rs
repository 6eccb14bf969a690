//! The operator's container image, built the way users build it (`images/build.sh`) from the
//! binary cargo built for these tests, and run the way Kubernetes runs it: read-only root
//! filesystem, not root. Needs Docker (and, the first time, root with debootstrap for the
//! local base image); a missing tool fails the test with what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docker(args: &[&str]) -> Result<Output> {
    Command::new("docker")
        .args(args)
        .output()
        .context("failed to run docker: install Docker Engine and start its daemon")
}

/// Removes the test's image however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["image", "rm", "--force", &self.0]);
    }
}

#[test]
fn given_operator_image_when_run_read_only_should_print_the_crd_as_non_root() -> Result<()> {
    ensure!(
        docker(&["info"])?.status.success(),
        "the Docker daemon is unreachable: start it (systemctl start docker, or dockerd)"
    );
    let image = Image(format!("duomq/operator:test-{}", std::process::id()));
    let build = Command::new(repo().join("images/build.sh"))
        .args([
            "operator",
            "--binary",
            env!("CARGO_BIN_EXE_duomq-operator"),
            "--tag",
            &image.0,
        ])
        .output()
        .context("failed to run images/build.sh")?;
    ensure!(
        build.status.success(),
        "images/build.sh operator failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let user = docker(&["image", "inspect", "--format", "{{.Config.User}}", &image.0])?;
    ensure!(
        String::from_utf8_lossy(&user.stdout)
            .trim()
            .starts_with("10001"),
        "image user: {}",
        String::from_utf8_lossy(&user.stdout)
    );

    let crd = docker(&[
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        &image.0,
        "crd",
    ])?;
    ensure!(
        crd.status.success(),
        "duomq-operator crd failed in the image: {}",
        String::from_utf8_lossy(&crd.stderr)
    );
    let printed = String::from_utf8_lossy(&crd.stdout);
    let on_disk = std::fs::read_to_string(repo().join("crds/brokergroups.duomq.io.yaml"))?;
    ensure!(
        printed == on_disk,
        "the image prints a CRD other than crds/brokergroups.duomq.io.yaml"
    );

    // Without a Kubernetes API, `run` must fail with a message, not hang or panic.
    let run = docker(&["run", "--rm", "--read-only", "--network", "none", &image.0])?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    ensure!(
        !run.status.success() && stderr.contains("failed to find a Kubernetes API"),
        "operator run without a cluster: {stderr}"
    );
    Ok(())
}
