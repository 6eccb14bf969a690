//! Fault injection: cut clients off the API server by their address, as a network
//! partition between one pod and the control plane would. A request from a cut-off address
//! gets no answer while the cut lasts (the client sees its own timeout, as with dropped
//! packets), then is served normally once the cut is lifted.
//!
//! It must not change what the server answers anyone else. Known gap: a watch stream
//! opened before the cut keeps delivering events (duomq's Lease arbiter opens none; it
//! reads and writes its Lease with plain requests).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The addresses currently cut off. Cheap to clone; clones share the set.
#[derive(Debug, Clone)]
pub struct Faults {
    cut: Arc<watch::Sender<BTreeSet<IpAddr>>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            cut: Arc::new(watch::Sender::new(BTreeSet::new())),
        }
    }
}

impl Faults {
    /// From now on requests from `ip` get no answer, until [`Faults::restore`].
    pub fn cut_off(&self, ip: IpAddr) {
        self.cut.send_modify(|cut| {
            cut.insert(ip);
        });
        tracing::info!(%ip, "api server: client address cut off");
    }

    /// Lifts the cut of `ip`: held requests are served, new ones answered at once.
    pub fn restore(&self, ip: IpAddr) {
        self.cut.send_modify(|cut| {
            cut.remove(&ip);
        });
        tracing::info!(%ip, "api server: client address restored");
    }

    pub fn is_cut_off(&self, ip: IpAddr) -> bool {
        self.cut.borrow().contains(&ip)
    }

    /// Waits while `ip` is cut off; false when `cancel` fired first (the server stops).
    pub(crate) async fn pass(&self, ip: IpAddr, cancel: &CancellationToken) -> bool {
        let mut cut = self.cut.subscribe();
        tokio::select! {
            passed = cut.wait_for(|set| !set.contains(&ip)) => passed.is_ok(),
            _ = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn given_a_cut_address_when_restored_should_let_held_requests_pass() {
        let faults = Faults::default();
        let cancel = CancellationToken::new();
        let ip: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        faults.cut_off(ip);
        assert!(faults.pass(other, &cancel).await, "another address passes");
        let held = tokio::spawn({
            let (faults, cancel) = (faults.clone(), cancel.clone());
            async move { faults.pass(ip, &cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished(), "a request of a cut address is held");
        faults.restore(ip);
        assert!(held.await.is_ok_and(|passed| passed));
    }

    #[tokio::test]
    async fn given_a_cut_address_when_the_server_stops_should_not_pass() {
        let faults = Faults::default();
        let cancel = CancellationToken::new();
        let ip: IpAddr = [10, 0, 0, 7].into();
        faults.cut_off(ip);
        cancel.cancel();
        assert!(!faults.pass(ip, &cancel).await);
    }
}
