//! The journal's error type: one variant per step that can fail.
//!
//! Errors are `Clone` (I/O causes sit behind an `Arc`) because one failed batch hands
//! the same error to every waiter in it. Messages never repeat their cause; callers walk
//! `source()` to print it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a journal operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The journal directory could not be created.
    #[error("failed to create journal directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The journal directory could not be listed.
    #[error("failed to list journal directory {}", path.display())]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The directory lock is held by another journal or could not be taken.
    #[error("failed to lock journal directory with {} (is another broker using it?)", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// An existing segment file could not be opened.
    #[error("failed to open journal segment {}", path.display())]
    OpenSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A new segment file could not be created or moved into place.
    #[error("failed to create journal segment {}", path.display())]
    CreateSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A segment file could not be read during recovery.
    #[error("failed to read journal segment {}", path.display())]
    ReadSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A record that is not a torn tail is damaged; start-up must stop.
    #[error(
        "failed to recover journal: segment {} is corrupt at byte offset {offset}: {reason}; \
         the journal was left untouched (`duomq-broker journal salvage --help` explains how to \
         cut the damage out and keep a copy)",
        path.display()
    )]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged record within the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A segment file does not start with a valid header; start-up must stop.
    #[error(
        "failed to recover journal: segment {} has a bad header: {reason}; \
         the journal was left untouched",
        path.display()
    )]
    BadSegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Truncating a segment (torn tail, or undoing a failed batch) failed.
    #[error("failed to truncate journal segment {} to {offset} bytes", path.display())]
    TruncateSegment {
        /// The segment file.
        path: PathBuf,
        /// The length it was to be cut to.
        offset: u64,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Writing to a segment failed (for example a full disk).
    #[error("failed to write to journal segment {}", path.display())]
    Write {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Syncing a segment to disk failed.
    #[error("failed to sync journal segment {}", path.display())]
    Sync {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Deleting a reclaimed segment failed; it is retried.
    #[error("failed to delete journal segment {}", path.display())]
    DeleteSegment {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Syncing the journal directory (after creating or deleting a segment) failed.
    #[error("failed to sync journal directory {}", path.display())]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The writer thread could not be started.
    #[error("failed to start the journal writer thread")]
    SpawnWriter {
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The housekeeper thread (which prepares and deletes segments) could not be started.
    #[error("failed to start the journal housekeeper thread")]
    SpawnHousekeeper {
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The housekeeper thread stopped, so no new segment can be prepared.
    #[error("failed to prepare a journal segment: the housekeeper thread stopped")]
    HousekeeperStopped,
    /// One record's payload is above [`super::MAX_RECORD_PAYLOAD`]; nothing was written.
    #[error("failed to append: record payload of {len} bytes exceeds the maximum of {max}")]
    RecordTooLarge {
        /// Encoded payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The journal was closed (or its writer is gone); nothing was written.
    #[error("failed to append: the journal is closed")]
    Closed,
    /// The live lost its claim (its Lease, or the database lease) or is stopping before its
    /// backups confirmed the write, so the member that takes over may not have it. The
    /// write may or may not survive.
    #[error("failed to confirm the write: this member stopped being live before the write was safe (its backups or the database lease); it may or may not survive, resend it to the new live")]
    Fenced,
    /// The database store refused the write (not a lost connection: those are retried
    /// until the live fences). Nothing of the batch was written.
    #[error("failed to store in the database: {reason}")]
    Database {
        /// What the database said.
        reason: String,
    },
    /// The writer thread panicked; what it last wrote is unknown.
    #[error("failed to stop the journal writer: it panicked")]
    WriterPanicked,
}
