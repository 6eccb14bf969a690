//! The cluster port's gate for connections that have not yet proved the cluster password:
//! at most `ha.cluster.maxPendingConnections` are in their handshake at once. When every
//! place is taken, a newcomer takes the place of the oldest connection if that one has
//! been in its handshake for at least [`DISPLACE_AFTER`] (a member's handshake takes
//! milliseconds, so only a connection that stalls is displaced); otherwise the newcomer is
//! turned away. So strangers who open sockets and say nothing cannot keep members out,
//! and cannot hold more than that many sockets and buffers.
//!
//! It decides and keeps count; it does no I/O: the accept loop closes what it turns away
//! and the connection's task stops when told it was displaced.

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a connection must have been in its handshake before a newcomer may take its
/// place.
pub const DISPLACE_AFTER: Duration = Duration::from_secs(1);

/// The places, shared by the accept loop and the connections holding them.
#[derive(Clone)]
pub struct PendingGate {
    places: Arc<Mutex<Places>>,
    limit: usize,
    /// `duomq_cluster_pending_connections`: places held now.
    gauge: Gauge,
}

#[derive(Default)]
struct Places {
    next_id: u64,
    /// Oldest first (ids only grow): when each came in, and how to tell it it was displaced.
    held: BTreeMap<u64, (Instant, CancellationToken)>,
}

/// What the gate decided for a newcomer.
pub enum Admission {
    /// A free place.
    Admitted(PendingPlace),
    /// The place of the oldest connection, which has been told to stop.
    Displaced(PendingPlace),
    /// Every place is held by a connection younger than [`DISPLACE_AFTER`].
    Refused,
}

/// One connection's place, given back when dropped.
pub struct PendingPlace {
    id: u64,
    displaced: CancellationToken,
    gate: PendingGate,
}

impl PendingPlace {
    /// Cancelled when a newcomer took this place: the handshake must stop.
    pub fn displaced(&self) -> &CancellationToken {
        &self.displaced
    }
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        let mut places = self.gate.places.lock();
        places.held.remove(&self.id);
        self.gate.gauge.set(places.held.len() as i64);
    }
}

impl PendingGate {
    pub fn new(limit: usize, gauge: Gauge) -> PendingGate {
        PendingGate { places: Arc::new(Mutex::new(Places::default())), limit, gauge }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Decides for a connection that came in at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut places = self.places.lock();
        let mut displaced = false;
        if places.held.len() >= self.limit {
            let oldest_stalls = places
                .held
                .first_key_value()
                .is_some_and(|(_, (since, _))| now.saturating_duration_since(*since) >= DISPLACE_AFTER);
            if !oldest_stalls {
                return Admission::Refused;
            }
            if let Some((_, (_, token))) = places.held.pop_first() {
                token.cancel();
                displaced = true;
            }
        }
        let id = places.next_id;
        places.next_id += 1;
        let token = CancellationToken::new();
        places.held.insert(id, (now, token.clone()));
        self.gauge.set(places.held.len() as i64);
        drop(places);
        let place = PendingPlace { id, displaced: token, gate: self.clone() };
        if displaced {
            Admission::Displaced(place)
        } else {
            Admission::Admitted(place)
        }
    }
}

/// Lets a kind of log line through at most once a second, and says how many happened
/// since the last one that went through (itself included).
#[derive(Default)]
pub struct LogThrottle {
    last: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// `Some(count)` when this one should be logged.
    pub fn allow(&mut self) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> PendingPlace {
        match a {
            Admission::Admitted(p) => p,
            Admission::Displaced(_) => panic!("displaced instead of a free place"),
            Admission::Refused => panic!("refused instead of a free place"),
        }
    }

    #[test]
    fn given_free_places_when_admitting_should_admit_and_count() {
        let gauge = Gauge::default();
        let gate = PendingGate::new(2, gauge.clone());
        let t = Instant::now();
        let _a = admitted(gate.admit(t));
        let _b = admitted(gate.admit(t));
        assert_eq!(gauge.get(), 2);
    }

    #[test]
    fn given_every_place_held_by_young_connections_when_admitting_should_refuse() {
        let gate = PendingGate::new(2, Gauge::default());
        let t = Instant::now();
        let a = admitted(gate.admit(t));
        let _b = admitted(gate.admit(t));
        assert!(matches!(gate.admit(t + DISPLACE_AFTER / 2), Admission::Refused));
        assert!(!a.displaced().is_cancelled());
    }

    #[test]
    fn given_the_oldest_place_held_past_the_displace_time_when_admitting_should_take_its_place() {
        let gauge = Gauge::default();
        let gate = PendingGate::new(2, gauge.clone());
        let t = Instant::now();
        let a = admitted(gate.admit(t));
        let b = admitted(gate.admit(t + Duration::from_millis(500)));
        let Admission::Displaced(c) = gate.admit(t + DISPLACE_AFTER) else { panic!("expected to displace the oldest") };
        assert!(a.displaced().is_cancelled());
        assert!(!b.displaced().is_cancelled());
        assert_eq!(gauge.get(), 2);
        // The displaced one's place is already gone; dropping it changes nothing.
        drop(a);
        assert_eq!(gauge.get(), 2);
        // b is next, but not yet stalled for long enough.
        assert!(matches!(gate.admit(t + DISPLACE_AFTER + Duration::from_millis(100)), Admission::Refused));
        drop(c);
        assert_eq!(gauge.get(), 1);
        let _d = admitted(gate.admit(t + DISPLACE_AFTER));
    }

    #[test]
    fn given_a_place_given_back_when_admitting_should_reuse_it() {
        let gauge = Gauge::default();
        let gate = PendingGate::new(1, gauge.clone());
        let t = Instant::now();
        drop(admitted(gate.admit(t)));
        assert_eq!(gauge.get(), 0);
        let _b = admitted(gate.admit(t));
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn given_a_burst_when_throttling_log_lines_should_let_the_first_through_and_count_the_rest() {
        let mut log = LogThrottle::default();
        assert_eq!(log.allow(), Some(1));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
    }
}
