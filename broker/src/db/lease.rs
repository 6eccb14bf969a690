//! The database lease (ActiveMQ's lease-database-locker): who is live, for how long, under
//! which epoch. Expiry is in the database's clock; the live's own deadline is on its
//! monotonic clock, counted from when it *sent* its last successful renewal, so it always
//! falls before the expiry the database recorded.

use super::{Database, DbError};
use crate::admin::api::DatabaseStatus;
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// The lease as a backup last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: String,
    pub epoch: i64,
    /// The holder's STOMP address as it wrote it.
    pub stomp: String,
    /// Until it expires in the database's clock (0 when expired).
    pub remaining: Duration,
}

/// The lease, just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub epoch: i64,
    /// Who held it before (`None`: the group's first live).
    pub previous_holder: Option<String>,
    /// The lowest message id this live may use.
    pub next_id: i64,
    /// When the statement that took it was sent: the term's first deadline counts from it.
    pub sent_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Taken(Acquired),
    /// Another member holds an unexpired lease.
    Held(LeaseView),
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Database {
    /// Takes the lease if it expired, was released, or is this member's own (a restarted
    /// live), bumping the epoch; otherwise reports who holds it.
    pub async fn try_acquire(&self, client: &mut Client, stomp: &str) -> Result<Attempt, DbError> {
        let what = "read or take the database lease";
        let query = |source| DbError::Query { what, source };
        let lease = &self.tables.lease;
        let sent_at = Instant::now();
        let tx = client.transaction().await.map_err(query)?;
        tx.execute(
            &format!("INSERT INTO {lease} (grp, holder, epoch, expires_at) VALUES ($1, '', 0, 'epoch') ON CONFLICT (grp) DO NOTHING"),
            &[&self.group],
        )
        .await
        .map_err(query)?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT holder, epoch, stomp, next_id,
                            GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000))::bigint AS remaining_ms
                     FROM {lease} WHERE grp = $1 FOR UPDATE"
                ),
                &[&self.group],
            )
            .await
            .map_err(query)?;
        let holder: String = row.get(0);
        let epoch: i64 = row.get(1);
        let remaining_ms: i64 = row.get(4);
        if remaining_ms > 0 && holder != self.node {
            tx.rollback().await.map_err(query)?;
            return Ok(Attempt::Held(LeaseView {
                holder,
                epoch,
                stomp: row.get(2),
                remaining: Duration::from_millis(remaining_ms.max(0) as u64),
            }));
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE {lease} SET holder = $2, epoch = epoch + 1, stomp = $3, acquired_at = now(),
                            expires_at = now() + $4::bigint * interval '1 millisecond'
                     WHERE grp = $1 RETURNING epoch, next_id"
                ),
                &[&self.group, &self.node, &stomp, &millis(self.config.lease.duration.get())],
            )
            .await
            .map_err(query)?;
        tx.commit().await.map_err(query)?;
        Ok(Attempt::Taken(Acquired {
            epoch: row.get(0),
            previous_holder: (!holder.is_empty()).then_some(holder),
            next_id: row.get(1),
            sent_at,
        }))
    }

    /// Extends the lease of `epoch`; `false` when it is not ours any more.
    pub async fn renew(&self, client: &Client, epoch: i64) -> Result<bool, DbError> {
        let rows = client
            .execute(
                &format!(
                    "UPDATE {} SET expires_at = now() + $3::bigint * interval '1 millisecond' WHERE grp = $1 AND epoch = $2 AND holder = $4",
                    self.tables.lease
                ),
                &[&self.group, &epoch, &millis(self.config.lease.duration.get()), &self.node],
            )
            .await
            .map_err(|source| DbError::Query { what: "renew the database lease", source })?;
        Ok(rows == 1)
    }

    /// Lets the lease go at a clean shutdown, so a backup takes over at its next poll.
    pub async fn release(&self, client: &Client, epoch: i64) -> Result<(), DbError> {
        client
            .execute(
                &format!("UPDATE {} SET expires_at = 'epoch' WHERE grp = $1 AND epoch = $2 AND holder = $3", self.tables.lease),
                &[&self.group, &epoch, &self.node],
            )
            .await
            .map_err(|source| DbError::Query { what: "release the database lease", source })?;
        Ok(())
    }
}

/// One term as live under one epoch: its deadline, and the signal that it ended.
#[derive(Debug)]
pub struct Term {
    pub epoch: i64,
    duration: Duration,
    deadline: Mutex<Instant>,
    lost: CancellationToken,
    reason: Mutex<Option<String>>,
    /// Batches committed in this term.
    pub commits: std::sync::atomic::AtomicU64,
}

impl Term {
    pub fn new(acquired: &Acquired, duration: Duration) -> Term {
        Term {
            epoch: acquired.epoch,
            duration,
            deadline: Mutex::new(acquired.sent_at + duration),
            lost: CancellationToken::new(),
            reason: Mutex::new(None),
            commits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A renewal sent at `sent_at` succeeded.
    pub fn renewed(&self, sent_at: Instant) {
        let mut deadline = self.deadline.lock();
        *deadline = (*deadline).max(sent_at + self.duration);
    }

    pub fn deadline(&self) -> Instant {
        *self.deadline.lock()
    }

    /// Whether this member may still write and confirm under the epoch: not fenced and
    /// within its deadline. Past the deadline it fences itself here.
    pub fn valid(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        if Instant::now() >= self.deadline() {
            self.fence(format!("could not renew the database lease within {:?}", self.duration));
            return false;
        }
        true
    }

    /// Ends the term: nothing more is written or confirmed. The first reason wins.
    pub fn fence(&self, reason: String) {
        let mut slot = self.reason.lock();
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.lost.cancel();
    }

    pub fn is_fenced(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the term is fenced.
    pub async fn fenced(&self) -> String {
        self.lost.cancelled().await;
        self.reason.lock().clone().unwrap_or_default()
    }
}

/// Renews the lease every `renewInterval` until the term ends, fencing it when the lease
/// is lost or its deadline passes without a renewal. Reconnects on a lost connection;
/// returns the connection it ends with (for the release at shutdown).
pub async fn keep_lease(
    db: Database,
    mut client: Arc<Client>,
    term: Arc<Term>,
    status: Arc<dyn Fn(DatabaseStatus) + Send + Sync>,
) -> Arc<Client> {
    let interval = db.config.lease.renew_interval.get();
    let mut failing = false;
    loop {
        let next = Instant::now() + interval;
        let show = |reachable: bool, last_error: Option<String>| {
            status(DatabaseStatus {
                reachable,
                last_error,
                lease_holder: Some(db.node.clone()),
                lease_remaining_ms: Some(term.deadline().saturating_duration_since(Instant::now()).as_millis() as u64),
                commits: term.commits.load(std::sync::atomic::Ordering::Relaxed),
            })
        };
        // Wake at the next renewal, or at the deadline if that comes first.
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(term.deadline()).into()) => {}
            _ = term.lost.cancelled() => return client,
        }
        if !term.valid() {
            db.metrics.renewal("failed");
            return client;
        }
        if client.is_closed() {
            match tokio::time::timeout(term.deadline().saturating_duration_since(Instant::now()), db.connect()).await {
                Ok(Ok(fresh)) => {
                    client = Arc::new(fresh);
                    db.metrics.reconnects.inc();
                }
                Ok(Err(e)) => {
                    db.metrics.renewal("failed");
                    let reason = crate::report::error_chain(&e);
                    if !failing {
                        tracing::warn!(error = %reason, deadline_in = ?term.deadline().saturating_duration_since(Instant::now()), "cannot reach the database to renew the lease");
                        failing = true;
                    }
                    show(false, Some(reason));
                    continue;
                }
                Err(_) => continue,
            }
        }
        let sent_at = Instant::now();
        let left = term.deadline().saturating_duration_since(sent_at);
        match tokio::time::timeout(left, db.renew(&client, term.epoch)).await {
            Ok(Ok(true)) => {
                term.renewed(sent_at);
                db.metrics.renewal("ok");
                db.metrics.reachable.set(1);
                if failing {
                    tracing::info!("database lease renewed again");
                    failing = false;
                }
                show(true, None);
            }
            Ok(Ok(false)) => {
                db.metrics.renewal("lost");
                term.fence(format!("the database lease of epoch {} was taken by another member", term.epoch));
                return client;
            }
            Ok(Err(e)) => {
                db.metrics.renewal("failed");
                db.metrics.reachable.set(0);
                let reason = crate::report::error_chain(&e);
                if !failing {
                    tracing::warn!(error = %reason, deadline_in = ?term.deadline().saturating_duration_since(Instant::now()), "failed to renew the database lease; retrying until the deadline");
                    failing = true;
                }
                show(false, Some(reason));
            }
            // The deadline passed waiting for the answer: `valid` fences at the top.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(sent_at: Instant) -> Acquired {
        Acquired { epoch: 3, previous_holder: None, next_id: 0, sent_at }
    }

    #[test]
    fn given_renewals_should_extend_the_deadline_from_when_they_were_sent_and_never_shorten_it() {
        let start = Instant::now();
        let term = Term::new(&acquired(start), Duration::from_secs(10));
        assert_eq!(term.deadline(), start + Duration::from_secs(10));
        term.renewed(start + Duration::from_secs(2));
        assert_eq!(term.deadline(), start + Duration::from_secs(12));
        term.renewed(start + Duration::from_secs(1));
        assert_eq!(term.deadline(), start + Duration::from_secs(12), "a late answer to an older renewal does not shorten it");
        assert!(term.valid());
    }

    #[test]
    fn given_deadline_passed_should_fence_itself_with_the_reason() {
        let term = Term::new(&acquired(Instant::now() - Duration::from_secs(20)), Duration::from_secs(10));
        assert!(!term.valid());
        assert!(term.is_fenced());
        term.fence("later reason".into());
        let reason = futures::executor::block_on(term.fenced());
        assert!(reason.contains("could not renew"), "{reason}");
    }
}
