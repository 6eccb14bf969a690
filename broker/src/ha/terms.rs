//! What a voter knows of other groups' terms (quorum arbiter): for each group, the newest
//! epoch it heard of and which members held every confirmed write at that epoch, plus the
//! vote it granted last, while that vote has not become a term.
//!
//! A term is written by a live's `TermNotice`: at its epoch, version after version, it and
//! its synced backups hold the data. A notice is sent when that set changes and, while the
//! live is alone, again every retry interval. A voter refuses a vote to a member that is
//! not a holder of the newest term it knows, unless that member knows a newer epoch itself.
//!
//! A vote is only a *grant*, tentative: it keeps other candidates out for a while (twice the
//! vote timeout) so two members asking at once do not both win, and the candidate that wins
//! enough grants must then have its first notice (epoch + 1, itself alone) recorded by as
//! many voters as a vote needs before it activates. A grant whose candidate never sent that
//! notice expires; the voter may then vote for another member, or record the old live's
//! notices again. Before grants were tentative, two members that split the voters' grants
//! between them each held some voters for good, and neither could win a vote again: the
//! group stayed without a live (nemesis finding 9).
//!
//! Why: without the book a member whose journal is older (a restarted preferred primary, a
//! backup that fell out of sync while the live went on alone) could win a vote once the
//! member with the newest writes was fenced or down, and confirmed writes were lost. A live
//! needs its notice recorded by enough voters that no vote can pass without one of them, a
//! new term needs its first notice recorded by a vote's majority, and a vote needs more
//! than half of the voters, so each two of these meet in one voter, which refuses the later.
//! A voter accepts a notice of a newer epoch only from the member it granted the vote or a
//! holder of the term it knows (a hand-over), and a notice of the current epoch only from a
//! holder and while no grant for a newer one is fresh.
//!
//! The book is kept in `dataDir/ha/terms-<node id>.json` (two members of a shared-store
//! group share a data directory, not their books), written durably before a vote or a
//! notice is answered, so a voter that restarts still refuses what it refused before.

use super::epoch::write_durably;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
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
    /// Orders the notices of one epoch.
    pub version: u64,
    /// The members holding every confirmed write at `epoch`.
    pub holders: Vec<String>,
}

impl TermRecord {
    fn newer_than(&self, other: &TermRecord) -> bool {
        (self.epoch, self.version) > (other.epoch, other.version)
    }

    fn holds(&self, node: &str) -> bool {
        self.holders.iter().any(|h| h == node)
    }
}

/// A vote this voter granted: `node` may start epoch `epoch` once its first notice is
/// recorded; until `at_ms` + the grant's lifetime no other member gets a vote here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub epoch: u64,
    pub node: String,
    pub at_ms: u64,
}

/// What a voter keeps of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTerms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<TermRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
}

/// A book written before grants were tentative held the bare record (a grant then counted
/// as a term of its candidate alone); it is read as that term.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    // First: every field of a `GroupTerms` is optional, so it would match an old record too.
    Before(TermRecord),
    Now(GroupTerms),
}

/// Milliseconds since the Unix epoch, the clock grants are dated with.
pub use crate::engine::message::now_millis as now_ms;

/// Every group's newest term, as this voter knows them.
#[derive(Debug)]
pub struct TermBook {
    path: PathBuf,
    /// How long a grant keeps other candidates out.
    grant_life: Duration,
    groups: parking_lot::Mutex<BTreeMap<String, GroupTerms>>,
}

impl TermBook {
    /// Reads `ha_dir/terms-<node>.json` (none yet: an empty book). A grant keeps other
    /// candidates out for `grant_life`.
    pub fn load(ha_dir: &Path, node: &str, grant_life: Duration) -> Result<TermBook, TermsError> {
        let path = ha_dir.join(format!("terms-{node}.json"));
        let stored: BTreeMap<String, Stored> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TermsError::Invalid { path: path.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(TermsError::Read { path, source }),
        };
        let groups = stored
            .into_iter()
            .map(|(group, stored)| {
                let terms = match stored {
                    Stored::Now(terms) => terms,
                    Stored::Before(term) => GroupTerms { term: Some(term), grant: None },
                };
                (group, terms)
            })
            .collect();
        Ok(TermBook { path, grant_life, groups: parking_lot::Mutex::new(groups) })
    }

    /// What this voter keeps of `group`.
    pub fn get(&self, group: &str) -> GroupTerms {
        self.groups.lock().get(group).cloned().unwrap_or_default()
    }

    fn fresh<'a>(&self, grant: Option<&'a Grant>, now_ms: u64) -> Option<&'a Grant> {
        grant.filter(|g| now_ms < g.at_ms.saturating_add(self.grant_life.as_millis() as u64))
    }

    /// Why `node`, whose epoch is `epoch`, must not get a vote for `group` now; `None` when
    /// nothing this voter knows speaks against it.
    pub fn refuses(&self, group: &str, node: &str, epoch: u64, now_ms: u64) -> Option<String> {
        let groups = self.groups.lock();
        self.refusal(groups.get(group)?, group, node, epoch, now_ms)
    }

    fn refusal(&self, known: &GroupTerms, group: &str, node: &str, epoch: u64, now_ms: u64) -> Option<String> {
        if let Some(grant) = self.fresh(known.grant.as_ref(), now_ms).filter(|g| g.node != node) {
            return Some(format!(
                "voted {} ms ago for {} to start epoch {} of {group}; no other vote until it does or {} ms have passed",
                now_ms.saturating_sub(grant.at_ms),
                grant.node,
                grant.epoch,
                self.grant_life.as_millis()
            ));
        }
        let term = known.term.as_ref()?;
        if epoch > term.epoch || term.holds(node) {
            return None;
        }
        Some(format!(
            "at epoch {} only {} held every confirmed write of {group}, and {node} (epoch {epoch}) is not one of them",
            term.epoch,
            if term.holders.is_empty() { "nobody".to_string() } else { term.holders.join(", ") }
        ))
    }

    /// Grants `node` (at `epoch`) the vote to start epoch `epoch + 1`, unless the book
    /// refuses it now; checked and recorded in one step, so no notice slips in between.
    pub fn grant(&self, group: &str, node: &str, epoch: u64, now_ms: u64) -> Result<Result<(), String>, TermsError> {
        let mut groups = self.groups.lock();
        let known = groups.get(group).cloned().unwrap_or_default();
        if let Some(reason) = self.refusal(&known, group, node, epoch, now_ms) {
            return Ok(Err(reason));
        }
        // Asking again does not make a grant last longer: two candidates that split the
        // voters between them must both lose their grants in time.
        if let Some(grant) = self.fresh(known.grant.as_ref(), now_ms).filter(|g| g.epoch == epoch + 1) {
            debug_assert_eq!(grant.node, node, "refusal() lets only the grant's own candidate through");
            return Ok(Ok(()));
        }
        let grant = Grant { epoch: epoch + 1, node: node.to_string(), at_ms: now_ms };
        groups.insert(group.to_string(), GroupTerms { term: known.term, grant: Some(grant) });
        self.save(&groups).map(Ok)
    }

    /// Records `sender`'s notice. `Ok(Err(reason))` when this voter must not: it knows a
    /// newer term (the sender is stale), the sender is not a holder of the term it knows,
    /// or it granted a vote for a newer term that is still fresh.
    pub fn notice(&self, group: &str, sender: &str, record: TermRecord, now_ms: u64) -> Result<Result<(), String>, TermsError> {
        let mut groups = self.groups.lock();
        let known = groups.get(group).cloned().unwrap_or_default();
        let fresh = self.fresh(known.grant.as_ref(), now_ms);
        let granted_to_sender = known.grant.as_ref().is_some_and(|g| g.node == sender && g.epoch <= record.epoch);
        match &known.term {
            Some(term) if term.epoch > record.epoch => {
                return Ok(Err(format!("{group} has a newer term (epoch {}) than {sender}'s {}", term.epoch, record.epoch)))
            }
            Some(term) if term.epoch == record.epoch && !term.holds(sender) => {
                return Ok(Err(format!("{sender} is not a holder of epoch {} of {group} ({})", term.epoch, term.holders.join(", "))))
            }
            Some(term) if term.epoch < record.epoch && !term.holds(sender) && !granted_to_sender => {
                return Ok(Err(format!(
                    "{sender} was not granted epoch {} of {group} here and holds nothing of epoch {} ({})",
                    record.epoch,
                    term.epoch,
                    term.holders.join(", ")
                )))
            }
            _ => {}
        }
        if let Some(grant) = fresh.filter(|g| g.node != sender) {
            return Ok(Err(format!(
                "voted {} ms ago for {} to start epoch {} of {group}",
                now_ms.saturating_sub(grant.at_ms),
                grant.node,
                grant.epoch
            )));
        }
        // The grant is spent (its candidate's term began) or lapsed (the sender, its old
        // live or a holder, goes on): a late notice of that candidate is refused from now on.
        let term = match known.term {
            // An older notice of the same epoch, overtaken on the way: the newer one stands.
            Some(term) if !record.newer_than(&term) => term,
            _ => record,
        };
        let updated = GroupTerms { term: Some(term), grant: None };
        if groups.get(group) == Some(&updated) {
            return Ok(Ok(()));
        }
        groups.insert(group.to_string(), updated);
        self.save(&groups).map(Ok)
    }

    fn save(&self, groups: &BTreeMap<String, GroupTerms>) -> Result<(), TermsError> {
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

    const LIFE: Duration = Duration::from_secs(4);

    fn record(epoch: u64, version: u64, holders: &[&str]) -> TermRecord {
        TermRecord { epoch, version, holders: holders.iter().map(|h| h.to_string()).collect() }
    }

    fn book(dir: &Path) -> TermBook {
        TermBook::load(dir, "v", LIFE).expect("load")
    }

    #[test]
    fn given_a_fresh_grant_should_refuse_every_other_candidate_until_it_lapses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(dir.path());
        assert_eq!(book.refuses("g", "a", 0, 0), None, "an empty book refuses nobody");
        assert_eq!(book.grant("g", "b", 4, 1_000).expect("write"), Ok(()));
        assert_eq!(book.refuses("g", "b", 4, 1_500), None, "the same candidate asking again");
        assert_eq!(book.grant("g", "b", 4, 1_500).expect("write"), Ok(()), "is granted again");
        assert_eq!(book.get("g").grant.map(|g| g.at_ms), Some(1_000), "but its grant lasts no longer");
        assert!(book.refuses("g", "a", 4, 1_500).is_some(), "a second candidate while the grant is fresh");
        assert!(book.grant("g", "a", 9, 4_999).expect("write").is_err(), "whatever its epoch");
        assert_eq!(book.refuses("g", "a", 4, 5_000), None, "the grant lapsed: its candidate never began a term");
        assert_eq!(book.grant("g", "a", 4, 5_000).expect("write"), Ok(()));
        assert_eq!(book.get("g").grant.map(|g| (g.node, g.epoch)), Some(("a".to_string(), 5)));
        assert_eq!(book.refuses("other", "x", 0, 5_000), None, "other groups are apart");
    }

    #[test]
    fn given_a_term_should_refuse_votes_to_members_that_do_not_hold_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(dir.path());
        assert_eq!(book.notice("g", "b", record(5, 1, &["b"]), 0).expect("write"), Ok(()), "a first notice, empty book");
        assert_eq!(book.refuses("g", "b", 5, 10), None, "the holder");
        assert!(book.refuses("g", "a", 4, 10).is_some(), "the restarted primary with the older journal");
        assert!(book.refuses("g", "a", 5, 10).is_some(), "a member at the same epoch that is not a holder");
        assert_eq!(book.refuses("g", "a", 6, 10), None, "a member that knows a newer epoch than this voter");
        assert_eq!(book.notice("g", "b", record(5, 2, &["b", "a"]), 20).expect("write"), Ok(()), "the backup joined");
        assert_eq!(book.refuses("g", "a", 5, 30), None, "now a holder");
        assert_eq!(book.notice("g", "b", record(5, 4, &["b"]), 40).expect("write"), Ok(()), "the backup left");
        assert_eq!(book.notice("g", "b", record(5, 3, &["b", "a"]), 50).expect("write"), Ok(()), "an older notice arriving late");
        assert_eq!(book.get("g").term, Some(record(5, 4, &["b"])), "does not undo the newer one");
        assert!(book.refuses("g", "a", 5, 60).is_some());
        assert!(book.notice("g", "a", record(4, 9, &["a"]), 70).expect("write").is_err(), "a live of epoch 4 is stale");
        assert!(book.notice("g", "a", record(5, 9, &["a"]), 70).expect("write").is_err(), "a non-holder at the same epoch");
    }

    #[test]
    fn given_a_grant_should_record_only_its_candidates_first_notice_of_the_new_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(dir.path());
        book.notice("g", "a", record(3, 1, &["a"]), 0).expect("write").expect("the live alone");
        assert!(book.grant("g", "b", 3, 100).expect("write").is_err(), "b holds nothing of epoch 3");
        book.notice("g", "a", record(3, 2, &["a", "b"]), 200).expect("write").expect("b synced");
        book.grant("g", "b", 3, 300).expect("write").expect("a holder");
        assert!(book.notice("g", "c", record(4, 1, &["c"]), 400).expect("write").is_err(), "not granted, not a holder");
        assert!(
            book.notice("g", "a", record(3, 3, &["a"]), 500).expect("write").is_err(),
            "the old live shrinking while the grant is fresh: it may have lost"
        );
        assert_eq!(book.notice("g", "b", record(4, 1, &["b"]), 600).expect("write"), Ok(()), "the grant becomes a term");
        assert_eq!(book.get("g"), GroupTerms { term: Some(record(4, 1, &["b"])), grant: None });
        assert!(book.notice("g", "a", record(3, 4, &["a"]), 700).expect("write").is_err(), "the old live is stale now");
    }

    #[test]
    fn given_a_lapsed_grant_should_let_the_old_live_go_on_and_refuse_its_candidate_afterwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(dir.path());
        book.notice("g", "a", record(3, 1, &["a", "b"]), 0).expect("write").expect("b synced");
        book.grant("g", "b", 3, 100).expect("write").expect("a holder");
        assert_eq!(
            book.notice("g", "a", record(3, 2, &["a"]), 100 + LIFE.as_millis() as u64).expect("write"),
            Ok(()),
            "the grant lapsed: the old live records that b left"
        );
        assert!(
            book.notice("g", "b", record(4, 1, &["b"]), 5_000).expect("write").is_err(),
            "b's late first notice: it holds nothing of what a confirmed alone"
        );
        assert!(book.refuses("g", "b", 3, 5_000).is_some());
    }

    #[test]
    fn given_a_hand_over_should_record_the_holder_taking_the_next_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = book(dir.path());
        book.notice("g", "a", record(3, 1, &["a", "b"]), 0).expect("write").expect("b synced");
        assert_eq!(book.notice("g", "b", record(4, 1, &["b"]), 10).expect("write"), Ok(()), "b took over from a on purpose");
    }

    #[test]
    fn given_a_reloaded_book_should_remember_what_it_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = book(dir.path());
        first.notice("g", "b", record(2, 1, &["b"]), 0).expect("write").expect("recorded");
        first.grant("g", "b", 2, 10).expect("write").expect("granted");
        let again = book(dir.path());
        assert!(again.refuses("g", "a", 2, 20).is_some(), "the term");
        assert!(again.refuses("g", "a", 3, 20).is_some(), "the fresh grant");
        std::fs::write(dir.path().join("terms-v.json"), br#"{"g":{"epoch":5,"version":0,"holders":["b"]}}"#).expect("write");
        assert_eq!(book(dir.path()).get("g").term, Some(record(5, 0, &["b"])), "a book of the version before grants");
        std::fs::write(dir.path().join("terms-v.json"), b"{not json").expect("write");
        let error = TermBook::load(dir.path(), "v", LIFE).expect_err("refused");
        assert!(error.to_string().contains("move it away"), "{error}");
    }
}
