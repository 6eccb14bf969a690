//! `duomq-bench fsync-rate`: how many write + fdatasync cycles a directory's disk
//! sustains, the ceiling of a broker that fsyncs every persistent send on its own. Two
//! ways: appending (each fdatasync also commits the grown file size) and writing into
//! preallocated space (data only, what duomq's journal does). It writes only its own
//! scratch file, and removes it however the measurement ends.

use crate::cli::FsyncArgs;
use crate::report::{nanos_histogram, FsyncMode, FsyncReport, LatencyMs};
use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The scratch file starts over at this size, so a fast disk (or tmpfs) cannot fill up.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Runs both measurements, appending first.
pub fn fsync_rate(args: &FsyncArgs) -> anyhow::Result<FsyncReport> {
    let scratch = Scratch::create(&args.dir)?;
    let appending = measure(&scratch, args, false)?;
    let preallocated = measure(&scratch, args, true)?;
    Ok(FsyncReport {
        dir: args.dir.display().to_string(),
        size: args.size.max(1),
        fsyncs: appending.fsyncs,
        fsync_rate: appending.fsync_rate,
        latency_ms: appending.latency_ms,
        duration_s: appending.duration_s,
        preallocated,
    })
}

/// Writes `args.size` bytes and fdatasyncs, in a loop, for `args.duration`: at the end of
/// the file, or into space preallocated beforehand (not timed).
fn measure(scratch: &Scratch, args: &FsyncArgs, preallocated: bool) -> anyhow::Result<FsyncMode> {
    let block = vec![b'.'; args.size.max(1)];
    let mut latencies = nanos_histogram()?;
    let mut written = 0u64;
    let mut fsyncs = 0u64;
    let mut measured = Duration::ZERO;
    while measured < args.duration {
        if written == 0 || written + block.len() as u64 > MAX_FILE_BYTES {
            scratch.restart(preallocated)?;
            written = 0;
        }
        let before = Instant::now();
        scratch
            .file
            .write_all_at(&block, written)
            .with_context(|| format!("failed to write to {}", scratch.path.display()))?;
        written += block.len() as u64;
        let synced = Instant::now();
        scratch.file.sync_data().with_context(|| format!("failed to fdatasync {}", scratch.path.display()))?;
        latencies.saturating_record(duration_ns(synced.elapsed()).max(1));
        measured += before.elapsed();
        fsyncs += 1;
    }
    let elapsed = measured.as_secs_f64();
    tracing::debug!(fsyncs, elapsed, preallocated, "fsync-rate measurement finished");
    Ok(FsyncMode {
        fsyncs,
        fsync_rate: if elapsed > 0.0 { fsyncs as f64 / elapsed } else { 0.0 },
        latency_ms: LatencyMs::from_nanos(&latencies),
        duration_s: elapsed,
    })
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The scratch file; removed on drop.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(dir: &Path) -> anyhow::Result<Scratch> {
        let path = dir.join(format!(".duomq-bench-fsync-{}", std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to create scratch file {}", path.display()))?;
        Ok(Scratch { path, file })
    }

    /// Empties the file and, for the preallocated measurement, preallocates it whole and
    /// makes that durable, so the timed fdatasyncs flush data only.
    fn restart(&self, preallocate: bool) -> anyhow::Result<()> {
        self.file.set_len(0).with_context(|| format!("failed to truncate {}", self.path.display()))?;
        if preallocate {
            use std::os::fd::AsRawFd;
            let len = libc::off_t::try_from(MAX_FILE_BYTES).context("scratch size")?;
            // SAFETY: fallocate reads only its integer arguments; the descriptor stays open
            // (owned by self.file) for the whole call.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("failed to preallocate {}", self.path.display()));
            }
            self.file.sync_all().with_context(|| format!("failed to fsync {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "failed to remove the scratch file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_directory_should_measure_and_remove_scratch_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let args =
            FsyncArgs { dir: dir.path().to_path_buf(), duration: Duration::from_millis(200), size: 512, json: false };
        let report = fsync_rate(&args)?;
        assert!(report.fsyncs > 0 && report.fsync_rate > 0.0);
        assert!(report.latency_ms.p50.is_some());
        assert!(report.preallocated.fsyncs > 0 && report.preallocated.fsync_rate > 0.0);
        assert!(report.preallocated.latency_ms.p50.is_some());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }

    #[test]
    fn given_missing_directory_should_fail_naming_it() {
        let args = FsyncArgs {
            dir: PathBuf::from("/nonexistent/duomq-bench"),
            duration: Duration::from_millis(10),
            size: 1,
            json: false,
        };
        let error = fsync_rate(&args).map(|_| ()).unwrap_err();
        assert!(format!("{error}").contains("/nonexistent/duomq-bench"));
    }
}
