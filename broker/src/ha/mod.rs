//! Live/backup replication (HornetQ/Artemis style): roles, the group's epoch, arbiters,
//! and the loops a live and a backup run. A live streams its journal to its backups over
//! the cluster port; a backup mirrors it, and activates only when its arbiter allows.

pub mod arbiter;
pub mod epoch;
