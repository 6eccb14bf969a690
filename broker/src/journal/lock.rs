//! Exclusive ownership of a journal directory for the life of one open journal.
//!
//! Two writers appending to the same segments would interleave records and turn a clean
//! journal into a corrupt one, so `open` takes a non-blocking `flock` before reading
//! anything. This module only locks; it never touches segment files.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::JournalError;

/// Name of the lock file inside the journal directory.
pub(super) const LOCK_FILE_NAME: &str = "journal.lock";

/// Holds the directory's flock; released when dropped (the kernel also drops it when the
/// process dies, so a kill -9 never leaves a stale lock).
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir`, failing at once if another journal holds it.
    pub(super) fn acquire(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join(LOCK_FILE_NAME);
        let lock_error = |source: std::io::Error| JournalError::Lock {
            path: path.clone(),
            source: source.into(),
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_error)?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(lock_error(std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}
