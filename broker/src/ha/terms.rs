//! What a voter knows of other groups' terms (quorum arbiter): for each group, the newest
//! epoch it heard of and which members held every confirmed write at that epoch.
//!
//! Two things write it: a vote this voter granted (the candidate alone starts the next
//! epoch) and a live's `TermNotice` (at its epoch, version after version, it and its synced
//! backups hold the data; a notice is sent when that set changes and, while the live is
//! alone, again every retry interval). A voter then refuses a vote to a member that is not
//! a holder of the newest term it knows, unless that member knows a newer epoch itself.
//!
//! Why: without it a member whose journal is older (a restarted preferred primary, a backup
//! that fell out of sync while the live went on alone) could win a vote once the member
//! with the newest writes was fenced or down, and confirmed writes were lost. A live needs
//! its notice recorded by enough voters that no vote can pass without one of them, and a
//! vote needs more than half of the voters, so the two always meet in one voter.
//!
//! The book is kept in `dataDir/ha/terms-<node id>.json` (two members of a shared-store
//! group share a data directory, not their books), written durably before a vote or a
//! notice is answered, so a voter that restarts still refuses what it refused before.

use super::epoch::write_durably;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TermsError {
    #[error("failed to read the voter's term book {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the voter's term book {path} is not valid: {reason}; move it away to start with an empty one")]
    Invalid { path: PathBuf, reason: String },
    #[error("failed to write the voter's term book {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The newest term a voter knows of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    pub epoch: u64,
    /// Orders the notices of one epoch (a vote's record is version 0).
    pub version: u64,
    /// The members holding every confirmed write at `epoch`.
    pub holders: Vec<String>,
}

impl TermRecord {
    fn newer_than(&self, other: &TermRecord) -> bool {
        (self.epoch, self.version) > (other.epoch, other.version)
    }
}

/// Every group's newest term, as this voter knows them.
#[derive(Debug)]
pub struct TermBook {
    path: PathBuf,
    groups: parking_lot::Mutex<BTreeMap<String, TermRecord>>,
}

impl TermBook {
    /// Reads `ha_dir/terms-<node>.json` (none yet: an empty book).
    pub fn load(ha_dir: &Path, node: &str) -> Result<TermBook, TermsError> {
        let path = ha_dir.join(format!("terms-{node}.json"));
        let groups = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TermsError::Invalid { path: path.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(TermsError::Read { path, source }),
        };
        Ok(TermBook { path, groups: parking_lot::Mutex::new(groups) })
    }

    /// The newest term known of `group`.
    pub fn get(&self, group: &str) -> Option<TermRecord> {
        self.groups.lock().get(group).cloned()
    }

    /// Why `node`, whose epoch is `epoch`, must not become live for `group`; `None` when
    /// nothing this voter knows speaks against it.
    pub fn refuses(&self, group: &str, node: &str, epoch: u64) -> Option<String> {
        let groups = self.groups.lock();
        let known = groups.get(group)?;
        if epoch > known.epoch || known.holders.iter().any(|h| h == node) {
            return None;
        }
        Some(format!(
            "at epoch {} only {} held every confirmed write of {group}, and {node} (epoch {epoch}) is not one of them",
            known.epoch,
            if known.holders.is_empty() { "nobody".to_string() } else { known.holders.join(", ") }
        ))
    }

    /// Records a vote granted to `node` at `epoch`: it alone starts epoch `epoch + 1`.
    pub fn granted(&self, group: &str, node: &str, epoch: u64) -> Result<(), TermsError> {
        let record = TermRecord { epoch: epoch + 1, version: 0, holders: vec![node.to_string()] };
        let mut groups = self.groups.lock();
        if groups.get(group).is_some_and(|known| !record.newer_than(known)) {
            return Ok(());
        }
        groups.insert(group.to_string(), record);
        self.save(&groups)
    }

    /// Records a live's notice. `Ok(Err(reason))` when this voter knows a newer term: the
    /// live sending it is stale.
    pub fn notice(&self, group: &str, record: TermRecord) -> Result<Result<(), String>, TermsError> {
        let mut groups = self.groups.lock();
        match groups.get(group) {
            Some(known) if known == &record => return Ok(Ok(())),
            Some(known) if known.epoch > record.epoch => {
                return Ok(Err(format!("{group} has a newer term (epoch {}) than this live's {}", known.epoch, record.epoch)))
            }
            // An older notice of the same epoch, overtaken on the way: the newer one stands.
            Some(known) if !record.newer_than(known) => return Ok(Ok(())),
            _ => {}
        }
        groups.insert(group.to_string(), record);
        self.save(&groups).map(Ok)
    }

    fn save(&self, groups: &BTreeMap<String, TermRecord>) -> Result<(), TermsError> {
        let bytes = serde_json::to_vec_pretty(groups).map_err(|e| TermsError::Invalid { path: self.path.clone(), reason: e.to_string() })?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TermsError::Write { path: self.path.clone(), source })?;
        }
        write_durably(&self.path, &bytes).map_err(|source| TermsError::Write { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u64, version: u64, holders: &[&str]) -> TermRecord {
        TermRecord { epoch, version, holders: holders.iter().map(|h| h.to_string()).collect() }
    }

    #[test]
    fn given_a_granted_vote_should_refuse_every_other_member_at_that_epoch_or_older() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TermBook::load(dir.path(), "v").expect("load");
        assert_eq!(book.refuses("g", "a", 0), None, "an empty book refuses nobody");
        book.granted("g", "b", 4).expect("grant");
        assert_eq!(book.refuses("g", "b", 4), None, "the winner, even before it stored its new epoch");
        assert_eq!(book.refuses("g", "b", 5), None);
        assert!(book.refuses("g", "a", 4).is_some(), "the restarted primary with the older journal");
        assert!(book.refuses("g", "a", 5).is_some(), "a member at the new epoch that is not a holder");
        assert_eq!(book.refuses("g", "a", 6), None, "a member that knows a newer epoch than this voter");
        assert_eq!(book.refuses("other", "a", 0), None, "other groups are apart");
    }

    #[test]
    fn given_notices_should_keep_the_newest_and_call_an_older_epoch_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = TermBook::load(dir.path(), "v").expect("load");
        book.granted("g", "b", 4).expect("grant");
        assert_eq!(book.notice("g", record(5, 1, &["b", "a"])).expect("write"), Ok(()), "the backup joined");
        assert_eq!(book.refuses("g", "a", 5), None, "now a holder");
        assert_eq!(book.notice("g", record(5, 3, &["b"])).expect("write"), Ok(()), "the backup left");
        assert_eq!(book.notice("g", record(5, 2, &["b", "a"])).expect("write"), Ok(()), "an older notice arriving late");
        assert_eq!(book.get("g"), Some(record(5, 3, &["b"])), "does not undo the newer one");
        assert!(book.refuses("g", "a", 5).is_some());
        assert!(book.notice("g", record(4, 9, &["a"])).expect("write").is_err(), "a live of epoch 4 is stale");
    }

    #[test]
    fn given_a_reloaded_book_should_remember_what_it_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        TermBook::load(dir.path(), "v").expect("load").granted("g", "b", 1).expect("grant");
        let again = TermBook::load(dir.path(), "v").expect("reload");
        assert!(again.refuses("g", "a", 1).is_some());
        std::fs::write(dir.path().join("terms-v.json"), b"{not json").expect("write");
        let error = TermBook::load(dir.path(), "v").expect_err("refused");
        assert!(error.to_string().contains("move it away"), "{error}");
    }
}
