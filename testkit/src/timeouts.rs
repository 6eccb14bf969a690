//! The one table of named timeouts (CloudNativePG's `tests/utils/timeouts`): how long a
//! test waits for each kind of event before it fails. A test names the event it waits
//! for, never a bare number, so a slow step is made more patient in one place.
//!
//! They are generous on purpose: a timeout only ends a test that already failed, and CI
//! runs three tests at a time on two cores. The real figures are in the benchmarks and
//! the README, not here. `DUOMQ_TEST_TIMEOUT_SCALE` (a factor, e.g. `2` or `0.5`)
//! stretches every one of them for an unusually slow or fast machine; [`scaled`] applies it.

use std::time::Duration;

/// A broker process answers `/readyz` (journal recovery included).
pub const BROKER_READY: Duration = Duration::from_secs(30);
/// One expected STOMP frame (a RECEIPT, a MESSAGE, an ERROR) arrives.
pub const FRAME: Duration = Duration::from_secs(10);
/// The broker closes, or turns away, a connection it must not keep (a limit reached, a
/// refused handshake, bad input).
pub const CLOSE: Duration = Duration::from_secs(10);
/// The broker settles after a burst of clients: their connections counted as closed,
/// limits and evictions counted.
pub const SETTLE: Duration = Duration::from_secs(20);
/// The cluster port's handshake deadline (10 s) closes a socket that never completes its
/// handshake, plus slack for a loaded machine.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(40);
/// Producers are accepted again once consumers freed the space a limit counts (disk,
/// memory, paging).
pub const SPACE_FREED: Duration = Duration::from_secs(30);
/// A message reaches a consumer through the broker (queues, topics, redeliveries).
pub const MESSAGE: Duration = Duration::from_secs(15);
/// The journal reclaims the segments no message needs any more (after a group commit).
pub const RECLAIM: Duration = Duration::from_secs(10);
/// How long a test lets a producer get well under way before it injects a fault anyway
/// (a slow producer is then faulted earlier, not failed).
pub const UNDER_WAY: Duration = Duration::from_secs(20);
/// A member takes the role it should have (live after a failover, backup in sync).
pub const ROLE: Duration = Duration::from_secs(30);
/// A process exits cleanly after SIGTERM (its journal flushed, its sockets closed).
pub const STOP: Duration = Duration::from_secs(30);
/// A failover client connects through a Service that may not list a live yet.
pub const CONNECT: Duration = Duration::from_secs(60);
/// A producer (or a probe) through a Service gets its first receipts.
pub const RECEIPTS: Duration = Duration::from_secs(30);
/// Traffic resumes after a failover: receipts come again, and every receipted message
/// reaches its consumer.
pub const RESUME: Duration = Duration::from_secs(60);
/// A bridge or grouping link between groups comes up or moves to a new live.
pub const LINK: Duration = Duration::from_secs(30);
/// A PostgreSQL server the test started accepts connections.
pub const DATABASE: Duration = Duration::from_secs(60);
/// A CLI command (duomq-broker's, kubectl-duomq's, a Python client script) finishes.
pub const CLI: Duration = Duration::from_secs(60);
/// A whole external test suite (pytest against the broker or the Helm chart) finishes.
pub const SUITE: Duration = Duration::from_secs(300);
/// A producer finishes sending a batch under faults (failovers, restarts).
pub const PRODUCE: Duration = Duration::from_secs(120);
/// The operator reconciles a change into the local control plane (Pods, Services, status).
pub const RECONCILE: Duration = Duration::from_secs(120);
/// A whole benchmark command (bench/compare.sh section or a duomq-bench run) finishes.
pub const BENCH_RUN: Duration = Duration::from_secs(600);
/// How long a test watches for something that must *not* happen (no takeover, no
/// redelivery) before taking its absence as the answer.
pub const QUIET: Duration = Duration::from_millis(800);

/// `timeout` stretched by `DUOMQ_TEST_TIMEOUT_SCALE` (1 when unset or not a positive number).
pub fn scaled(timeout: Duration) -> Duration {
    match std::env::var("DUOMQ_TEST_TIMEOUT_SCALE").ok().and_then(|s| s.parse::<f64>().ok()) {
        Some(factor) if factor > 0.0 && factor.is_finite() => timeout.mul_f64(factor),
        _ => timeout,
    }
}
