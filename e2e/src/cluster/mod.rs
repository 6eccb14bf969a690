//! Controllers, scheduler and the Docker kubelet of the local control plane.

use std::time::Duration;

pub mod names;
pub mod scheduler;
pub mod selector;
pub mod watch;

/// How often every controller re-checks the world even without a watch event.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(5);
