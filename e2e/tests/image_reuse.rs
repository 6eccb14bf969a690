//! Images of `duomq-e2e up` and of the scenarios: an image of the tag they use is reused only
//! when it holds the very binary they would put in (its SHA-256, a label `images/build.sh`
//! sets), and rebuilt when the binary changed, so a tag built from other code never runs;
//! the image it replaces is removed.
//!
//! Needs Docker and the local base image (built with debootstrap when missing) and a built
//! operator (`cargo build -p duomq-operator`); fails with what is missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use duomq_e2e::env::{ensure_image, image_label, require_tools, sha256_of, ImageOutcome, BINARY_SHA256_LABEL};

/// The operator binary cargo built next to this test.
fn operator_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("no target directory")?;
    let binary = dir.join("duomq-operator");
    ensure!(binary.is_file(), "no operator binary at {}: run `cargo build -p duomq-operator` first", binary.display());
    Ok(binary)
}

fn image_id(tag: &str) -> Result<String> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", tag]).output()?;
    ensure!(out.status.success(), "no image {tag}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Removes the test's image tag whatever the outcome.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["image", "rm", "-f", &self.0]).output();
    }
}

#[test]
fn given_image_of_same_tag_when_binary_changed_should_rebuild_and_when_unchanged_reuse() -> Result<()> {
    require_tools()?;
    let work = tempfile::tempdir()?;
    let tag = format!("duomq-e2e/operator:reuse-{}", std::process::id());
    let _cleanup = RemoveImage(tag.clone());
    let first = work.path().join("a").join("duomq-operator");
    std::fs::create_dir_all(first.parent().context("a")?)?;
    std::fs::copy(operator_binary()?, &first)?;

    let built = ensure_image("operator", &tag, &first, false, work.path())?;
    assert_eq!(built.outcome, ImageOutcome::Built);
    assert_eq!(image_label(&tag, BINARY_SHA256_LABEL), Some(sha256_of(&first)?));
    let first_id = image_id(&tag)?;

    let again = ensure_image("operator", &tag, &first, false, work.path())?;
    assert_eq!(again.outcome, ImageOutcome::Reused, "the same binary must not be rebuilt");
    assert_eq!(image_id(&tag)?, first_id);

    // Other code under the same tag: a binary that differs (trailing bytes still run).
    let second = work.path().join("b").join("duomq-operator");
    std::fs::create_dir_all(second.parent().context("b")?)?;
    std::fs::copy(&first, &second)?;
    std::fs::OpenOptions::new().append(true).open(&second)?.write_all(b"other build")?;
    let rebuilt = ensure_image("operator", &tag, &second, false, work.path())?;
    assert_eq!(rebuilt.outcome, ImageOutcome::Built, "an image of another binary was reused");
    assert_ne!(image_id(&tag)?, first_id);
    assert_eq!(image_label(&tag, BINARY_SHA256_LABEL), Some(sha256_of(&second)?));
    assert!(rebuilt.to_string().contains("built now"), "{rebuilt}");
    // The image it replaced is gone, not left dangling on the disk.
    assert!(image_id(&first_id).is_err(), "the replaced image {first_id} is still there");

    // And asked to, it rebuilds even the same binary.
    let forced = ensure_image("operator", &tag, &second, true, work.path())?;
    assert_eq!(forced.outcome, ImageOutcome::Built);
    Ok(())
}
