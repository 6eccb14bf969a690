//! Loopback ports for tests that run side by side (nextest runs every test in its own
//! process, three at a time, and the end-to-end tests start brokers of their own).
//!
//! Checking that a port binds and then letting it go races: another test can take the
//! same port before the broker under test binds it. Here a port is *reserved*: an
//! exclusive lock on `<temp dir>/duomq-test-ports/<port>.lock`, held by this process until
//! it exits (the kernel drops the lock with the process, even after kill -9, so nothing
//! needs cleaning). Every test process takes ports the same way, so no two get the same
//! one. Ports come from below the kernel's ephemeral range (read from
//! `/proc/sys/net/ipv4/ip_local_port_range`), so outgoing connections never take them
//! either; a port something else already listens on is skipped.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The lowest port handed out.
const LOW: u32 = 20_000;

/// The locks this process holds: a reserved port stays reserved until the process ends.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that no other test process holds and nothing listens on.
///
/// # Panics
/// When every port of the range is taken (thousands of brokers at once), or the lock
/// directory cannot be created: a test cannot go on without a port.
pub fn reserve_port() -> u16 {
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("failed to create the port lock directory {}: {e}", dir.display()));
    // Processes start at different places so they rarely contend for the same lock.
    let start = (std::process::id().wrapping_mul(97)) % span;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else { continue };
        let Ok(file) = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(format!("{port}.lock"))) else {
            continue;
        };
        if !try_lock(&file) {
            continue;
        }
        // Reserved; still skip a port someone outside the tests listens on.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
        return port;
    }
    panic!("no free test port between {LOW} and {high}: every one is reserved or in use");
}

/// `n` reserved ports.
pub fn reserve_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| reserve_port())
}

/// An exclusive flock(2) on `file`, without waiting. Held until the file is closed or
/// the process ends.
fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows for the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("duomq-test-ports")
}

/// The first port the kernel picks for outgoing connections (32768 by default).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_many_reservations_should_hand_out_distinct_bindable_ports_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| reserve_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| u32::from(*p) >= LOW && u32::from(*p) < ephemeral_low().max(LOW + 1_000)));
        for p in ports {
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok(), "{p} is free to bind for its holder");
        }
    }

    #[test]
    fn given_a_port_locked_by_another_holder_should_skip_it() {
        let first = reserve_port();
        // Another process would find the lock taken: a second open of the same file
        // cannot lock it while this process holds it.
        let again = OpenOptions::new().write(true).open(lock_dir().join(format!("{first}.lock"))).expect("lock file exists");
        assert!(!try_lock(&again), "the reservation holds the lock");
    }
}
