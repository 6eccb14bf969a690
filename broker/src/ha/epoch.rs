//! The group's epoch as this member last knew it, persisted in `dataDir/ha/epoch`. It
//! grows on every activation; a member that sees a higher epoch than its own never acts
//! as live (that is how a returning former live learns it was replaced).

use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A group's generation of leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Error)]
pub enum EpochError {
    #[error("failed to read epoch file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("epoch file {path} holds {text:?}, not a number")]
    Parse { path: PathBuf, text: String },
    #[error("failed to write epoch file {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Reads and durably writes the epoch file.
#[derive(Debug, Clone)]
pub struct EpochStore {
    path: PathBuf,
}

impl EpochStore {
    pub fn new(data_dir: &Path) -> EpochStore {
        EpochStore { path: data_dir.join("ha").join("epoch") }
    }

    /// The stored epoch; 0 when the member has never been part of a group.
    pub fn load(&self) -> Result<Epoch, EpochError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Epoch)
                .map_err(|_| EpochError::Parse { path: self.path.clone(), text: text.trim().to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Epoch(0)),
            Err(source) => Err(EpochError::Read { path: self.path.clone(), source }),
        }
    }

    /// Writes the epoch so it survives a crash.
    pub fn store(&self, epoch: Epoch) -> Result<(), EpochError> {
        write_durably(&self.path, format!("{}\n", epoch.0).as_bytes())
            .map_err(|source| EpochError::Write { path: self.path.clone(), source })
    }
}

/// Replaces a small file so that a crash leaves either the old or the new content, never a
/// mix: temp file, fsync, rename, fsync dir. Other members may read it at any time (a
/// shared store), and rename is what makes that safe.
pub(crate) fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_no_file_should_load_zero_then_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EpochStore::new(dir.path());
        assert_eq!(store.load().unwrap(), Epoch(0));
        store.store(Epoch(7)).unwrap();
        assert_eq!(store.load().unwrap(), Epoch(7));
        assert_eq!(EpochStore::new(dir.path()).load().unwrap(), Epoch(7));
    }

    #[test]
    fn given_garbage_should_name_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ha")).unwrap();
        std::fs::write(dir.path().join("ha/epoch"), "seven").unwrap();
        let err = EpochStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("epoch") && err.contains("seven"), "{err}");
    }
}
