//! The test kit of the whole workspace: the broker's, the operator's, the bench's and the
//! end-to-end tests use it instead of keeping their own copies.
//!
//! - [`ports`]: loopback ports reserved across every test process at once (a lock file
//!   per port, held until the process ends), never bind-and-release.
//! - [`timeouts`]: the one table of named timeouts every wait uses, scaled on slow machines.
//! - [`eventually`], [`eventually_some`], [`eventually_async`], [`eventually_ok`]: poll a
//!   condition until one of those timeouts.
//! - [`Deadline`]: for loops that collect until a time is up (frames, messages, a socket
//!   closing) and give each blocking read the time that is left.
//! - [`process`]: child processes with a log file per test, killed when dropped, and
//!   waits with a limit.
//! - [`admin`]: the broker's admin API with its own types (`duomq_broker::admin::api`).
//!
//! It holds no knowledge of what a test checks; it must not grow assertions of its own
//! beyond "this did not happen in time".

pub mod admin;
pub mod ports;
pub mod process;
pub mod timeouts;

mod deadline;
mod wait;

pub use deadline::Deadline;
pub use ports::reserve_port;
pub use wait::{eventually, eventually_async, eventually_ok, eventually_ok_every, eventually_some, TimedOut};
