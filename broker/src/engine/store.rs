//! Where the engine's records become durable: the file journal (replicated to backups, or
//! on a shared volume) or the shared database (`storage.store: database`, see
//! [`crate::db`]). Both answer an append with an [`AppendFuture`] that resolves once the
//! record is durable, so the engine's SEND, ACK and transaction paths do not know which
//! one they write to.
//!
//! An enum rather than a trait object: there are exactly two kinds, and only the file
//! journal has the replication parts (gate, segment reader) the replicated live needs.

use super::accept::Commit;
use crate::db::DbStore;
use crate::journal::{AppendFuture, Journal, JournalError, Op};

pub enum Store {
    File(Journal),
    Database(DbStore),
}

impl Store {
    /// One record holding `ops`, durable when the future resolves `Ok`. Records appended
    /// in order become durable in that order.
    pub fn append(&self, ops: Vec<Op>, commit: Commit) -> AppendFuture {
        match (self, commit) {
            (Store::File(journal), Commit::Grouped) => journal.append(ops),
            (Store::File(journal), Commit::Inline) => journal.append_inline(ops),
            (Store::Database(db), _) => db.append(ops),
        }
    }

    /// Acknowledgements nobody waits for: they ride along with a later write.
    pub fn append_lazy(&self, ops: Vec<Op>) -> AppendFuture {
        match self {
            Store::File(journal) => journal.append_lazy(ops),
            Store::Database(db) => db.append_lazy(ops),
        }
    }

    /// Finishes what was appended and stops; blocks.
    pub fn close(&self) -> Result<(), JournalError> {
        match self {
            Store::File(journal) => journal.close(),
            Store::Database(db) => db.close(),
        }
    }

    /// The file journal, when that is the store (replication needs it).
    pub fn journal(&self) -> Option<&Journal> {
        match self {
            Store::File(journal) => Some(journal),
            Store::Database(_) => None,
        }
    }
}
