//! The database store's journal: recovery reads the group's rows; appends are queued to one
//! writer task that group-commits them, one statement (one transaction) per batch, fenced
//! by the term's epoch.

use super::lease::Term;
use super::{Database, DbError};
use crate::admin::api::DatabaseStatus;
use crate::journal::{remembered_form, AppendFuture, JournalError, MessageId, Op, Recovered, StoredMessage, REMEMBERED_MAX};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement};

/// Longest a lone acknowledgement waits for a write to ride along with.
const LAZY_DELAY: Duration = crate::journal::LAZY_SYNC_DELAY;
/// First wait before reconnecting; it doubles up to `maxReconnectDelay`.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Longest `close` waits for the writer to finish what was queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The dedup window is trimmed once per this many commits that remembered something.
const TRIM_EVERY: u64 = 1024;

struct Request {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<(), JournalError>>,
    lazy: bool,
}

/// Handle to the database store of one live term. Appends never block.
pub struct DbStore {
    /// Appends hold the read lock while sending, so `close` (the write lock) cannot slip
    /// between an append's check and its send.
    sender: RwLock<Option<mpsc::UnboundedSender<Request>>>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    term: Arc<Term>,
    stop: tokio_util::sync::CancellationToken,
}

/// What recovery found, with the store ready to take appends.
pub async fn recover(
    db: &Database,
    client: &Client,
    term: Arc<Term>,
    next_id_floor: i64,
    remember_header: &str,
    status: Arc<dyn Fn(DatabaseStatus) + Send + Sync>,
) -> Result<(DbStore, Recovered), DbError> {
    let what = "read the stored messages";
    let query = |source| DbError::Query { what, source };
    let t = &db.tables;
    let rows = client
        .query(&format!("SELECT id, destination, headers::text, body FROM {} WHERE grp = $1 ORDER BY id", t.messages), &[&db.group])
        .await
        .map_err(query)?;
    let mut next_id = next_id_floor.max(0) as u64;
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.get(0);
        let headers_json: String = row.get(2);
        let headers: Vec<(String, String)> = serde_json::from_str(&headers_json)
            .map_err(|e| DbError::Unreadable { reason: format!("message {id} in {} has unreadable headers: {e}", t.messages) })?;
        let body: Vec<u8> = row.get(3);
        next_id = next_id.max(id as u64 + 1);
        messages.push(StoredMessage { id: MessageId(id as u64), destination: row.get(1), headers, body: Bytes::from(body) });
    }
    let remembered_rows = client
        .query(
            &format!("SELECT id, value FROM (SELECT id, value FROM {} WHERE grp = $1 ORDER BY id DESC LIMIT $2) newest ORDER BY id", t.dedup),
            &[&db.group, &(REMEMBERED_MAX as i64)],
        )
        .await
        .map_err(|source| DbError::Query { what: "read the duplicate-detection ids", source })?;
    let mut remembered = Vec::with_capacity(remembered_rows.len());
    for row in &remembered_rows {
        let id: i64 = row.get(0);
        next_id = next_id.max(id as u64 + 1);
        remembered.push(row.get::<_, String>(1));
    }
    let records = messages.len() as u64;
    let recovered =
        Recovered { messages, paged: Vec::new(), next_id: MessageId(next_id), segments: 0, records, torn_tail_bytes: 0, remembered };
    let writer_client = connect_writer(db).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = Writer {
        db: db.clone(),
        client: Some(writer_client),
        statements: None,
        term: Arc::clone(&term),
        remember_header: remember_header.to_string(),
        stop: stop.clone(),
        remembered_commits: 0,
        status,
    };
    tokio::spawn(async move {
        writer.run(receiver).await;
        let _ = done_tx.send(());
    });
    tracing::info!(messages = recovered.messages.len(), next_id = next_id, epoch = term.epoch, "recovered the database store");
    Ok((DbStore { sender: RwLock::new(Some(sender)), done: Mutex::new(Some(done_rx)), term, stop }, recovered))
}

/// The writer's connection, with its session settings: `storage.fsync: false` means the
/// writer's commits do not wait for the WAL flush.
async fn connect_writer(db: &Database) -> Result<Client, DbError> {
    let client = db.connect().await?;
    if !db.synchronous {
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(|source| DbError::Query { what: "turn synchronous_commit off (storage.fsync: false)", source })?;
    }
    Ok(client)
}

impl DbStore {
    pub fn append(&self, ops: Vec<Op>) -> AppendFuture {
        self.submit(ops, false)
    }

    pub fn append_lazy(&self, ops: Vec<Op>) -> AppendFuture {
        self.submit(ops, true)
    }

    fn submit(&self, ops: Vec<Op>, lazy: bool) -> AppendFuture {
        if self.term.is_fenced() {
            return AppendFuture::ready(Err(JournalError::Fenced));
        }
        let (reply, receiver) = oneshot::channel();
        let sender = self.sender.read();
        let Some(sender) = sender.as_ref() else { return AppendFuture::ready(Err(JournalError::Closed)) };
        match sender.send(Request { ops, reply, lazy }) {
            Ok(()) => AppendFuture::waiting(receiver),
            Err(_) => AppendFuture::ready(Err(JournalError::Closed)),
        }
    }

    /// Lets the writer finish what was queued (while the term holds), then stops it.
    /// Blocks: call from `spawn_blocking`.
    pub fn close(&self) -> Result<(), JournalError> {
        drop(self.sender.write().take());
        let Some(done) = self.done.lock().take() else { return Ok(()) };
        if done.recv_timeout(CLOSE_TIMEOUT).is_err() {
            // The database stays away: what is still queued is answered with an error.
            self.stop.cancel();
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
        Ok(())
    }
}

/// The prepared statements of one connection.
struct Statements {
    commit: Statement,
    trim: Statement,
}

struct Writer {
    db: Database,
    client: Option<Client>,
    statements: Option<Statements>,
    term: Arc<Term>,
    remember_header: String,
    stop: tokio_util::sync::CancellationToken,
    remembered_commits: u64,
    status: Arc<dyn Fn(DatabaseStatus) + Send + Sync>,
}

/// One added message, as its row.
struct AddRow {
    id: i64,
    destination: String,
    headers: String,
    body: Bytes,
}

/// The ops of one batch.
#[derive(Default)]
struct Batch {
    adds: Vec<AddRow>,
    acks: Vec<i64>,
    remembered_ids: Vec<i64>,
    remembered: Vec<String>,
    max_id: i64,
    bytes: usize,
}

/// A batch's adds as the statement's arrays, built once per batch (a retry reuses them).
struct Columns<'a> {
    ids: Vec<i64>,
    destinations: Vec<&'a str>,
    headers: Vec<&'a str>,
    bodies: Vec<&'a [u8]>,
}

impl Batch {
    fn add(&mut self, ops: &[Op], remember_header: &str) {
        for op in ops {
            match op {
                Op::Add(m) => {
                    let id = m.id.0 as i64;
                    self.max_id = self.max_id.max(id);
                    let headers = serde_json::to_string(&m.headers).unwrap_or_else(|_| "[]".into());
                    self.bytes += m.body.len() + headers.len() + m.destination.len();
                    if let Some((_, v)) = m.headers.iter().find(|(k, _)| k == remember_header) {
                        self.remembered_ids.push(id);
                        self.remembered.push(remembered_form(v).into_owned());
                    }
                    self.adds.push(AddRow { id, destination: m.destination.clone(), headers, body: m.body.clone() });
                }
                Op::Ack(id) => self.acks.push(id.0 as i64),
            }
        }
    }

    /// An add and its ack in one batch cancel out: the statement's delete does not see the
    /// rows its own insert writes. (The add's duplicate-detection id is still remembered,
    /// as the file journal remembers acknowledged messages' ids.)
    fn cancel_out(&mut self) {
        if self.acks.is_empty() || self.adds.is_empty() {
            return;
        }
        let added: HashSet<i64> = self.adds.iter().map(|a| a.id).collect();
        let both: HashSet<i64> = self.acks.iter().copied().filter(|id| added.contains(id)).collect();
        if !both.is_empty() {
            self.adds.retain(|a| !both.contains(&a.id));
            self.acks.retain(|id| !both.contains(id));
        }
    }

    fn columns(&self) -> Columns<'_> {
        Columns {
            ids: self.adds.iter().map(|a| a.id).collect(),
            destinations: self.adds.iter().map(|a| a.destination.as_str()).collect(),
            headers: self.adds.iter().map(|a| a.headers.as_str()).collect(),
            bodies: self.adds.iter().map(|a| a.body.as_ref()).collect(),
        }
    }
}

enum Outcome {
    Committed,
    Refused,
    Failed(DbError),
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Request>) {
        let max_bytes = self.db.max_batch_bytes;
        loop {
            let first = tokio::select! {
                r = receiver.recv() => match r { Some(r) => r, None => break },
                _ = self.stop.cancelled() => break,
            };
            let mut all_lazy = first.lazy;
            let mut requests = vec![first];
            let mut batch = Batch::default();
            batch.add(&requests[0].ops, &self.remember_header);
            let lazy_until = Instant::now() + LAZY_DELAY;
            loop {
                while batch.bytes < max_bytes {
                    match receiver.try_recv() {
                        Ok(r) => {
                            all_lazy &= r.lazy;
                            batch.add(&r.ops, &self.remember_header);
                            requests.push(r);
                        }
                        Err(_) => break,
                    }
                }
                if !all_lazy || batch.bytes >= max_bytes {
                    break;
                }
                // Only acknowledgements nobody waits for: give a write a moment to come.
                match tokio::time::timeout_at(lazy_until.into(), receiver.recv()).await {
                    Ok(Some(r)) => {
                        all_lazy &= r.lazy;
                        batch.add(&r.ops, &self.remember_header);
                        requests.push(r);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            batch.cancel_out();
            let result = self.commit(&batch).await;
            for r in requests {
                let _ = r.reply.send(result.clone());
            }
            if result.is_ok() {
                self.trim_if_due(&batch).await;
            }
        }
        // Closed or stopped: whatever is left was not written.
        receiver.close();
        while let Ok(r) = receiver.try_recv() {
            let _ = r.reply.send(Err(if self.term.is_fenced() { JournalError::Fenced } else { JournalError::Closed }));
        }
    }

    /// Commits `batch`, retrying across lost connections while the term holds. `Ok` only
    /// when the database committed it under this term's epoch and the term still holds.
    async fn commit(&mut self, batch: &Batch) -> Result<(), JournalError> {
        let columns = batch.columns();
        let mut delay = FIRST_RECONNECT_DELAY;
        let mut logged = false;
        loop {
            if !self.term.valid() {
                return Err(JournalError::Fenced);
            }
            if self.stop.is_cancelled() {
                return Err(JournalError::Closed);
            }
            let outcome = match self.ready().await {
                Ok(()) => self.execute(batch, &columns).await,
                Err(e) => Outcome::Failed(e),
            };
            match outcome {
                Outcome::Committed => {
                    if logged {
                        tracing::info!("database reachable again: writes go on");
                    }
                    // A write answered after the deadline is not confirmed: the next live
                    // may already serve it, and this one is fencing.
                    return if self.term.valid() { Ok(()) } else { Err(JournalError::Fenced) };
                }
                Outcome::Refused => {
                    self.db.metrics.writes_refused.inc();
                    self.term.fence(format!("the database refused a write of epoch {}: another member took the lease", self.term.epoch));
                    return Err(JournalError::Fenced);
                }
                // The term ended while the statement was out: nothing is confirmed.
                Outcome::Failed(DbError::Fenced { .. }) => return Err(JournalError::Fenced),
                Outcome::Failed(e) if e.transient() => {
                    tracing::debug!(error = %crate::report::error_chain(&e), "the database rolled a batch back; sending it again");
                    tokio::time::sleep(FIRST_RECONNECT_DELAY).await;
                }
                Outcome::Failed(e) if e.lost_connection() => {
                    self.client = None;
                    self.statements = None;
                    self.db.metrics.reachable.set(0);
                    (self.status)(DatabaseStatus { reachable: false, last_error: Some(crate::report::error_chain(&e)), ..Default::default() });
                    if !logged {
                        tracing::warn!(error = %crate::report::error_chain(&e), "database unreachable: writes wait and are retried until the lease runs out");
                        logged = true;
                    }
                    let wait = delay.min(self.term.deadline().saturating_duration_since(Instant::now()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => {}
                    }
                    delay = (delay * 2).min(self.db.config.max_reconnect_delay.get());
                }
                Outcome::Failed(e) => {
                    let reason = crate::report::error_chain(&e);
                    tracing::warn!(error = %reason, "the database refused a write");
                    return Err(JournalError::Database { reason });
                }
            }
        }
    }

    /// A connection with its statements prepared.
    async fn ready(&mut self) -> Result<(), DbError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.statements = None;
        }
        if self.client.is_none() {
            // Recovery made the first connection: this one replaces a lost one.
            self.client = Some(connect_writer(&self.db).await?);
            self.db.metrics.reconnects.inc();
        }
        if self.statements.is_none() {
            let Some(client) = &self.client else { return Ok(()) };
            let t = &self.db.tables;
            let prepare = |source| DbError::Query { what: "prepare the write statements", source };
            let commit = client
                .prepare(&format!(
                    "WITH fence AS (
                        UPDATE {lease} SET next_id = GREATEST(next_id, $3) WHERE grp = $1 AND epoch = $2 RETURNING grp
                     ), added AS (
                        INSERT INTO {messages} (grp, id, epoch, destination, headers, body)
                        SELECT fence.grp, m.id, $2, m.destination, m.headers::jsonb, m.body
                        FROM fence, unnest($4::bigint[], $5::text[], $6::text[], $7::bytea[]) AS m(id, destination, headers, body)
                        ON CONFLICT (grp, id) DO NOTHING
                        RETURNING 1
                     ), acked AS (
                        DELETE FROM {messages} d USING fence WHERE d.grp = fence.grp AND d.id = ANY($8::bigint[])
                        RETURNING 1
                     ), remembered AS (
                        INSERT INTO {dedup} (grp, id, value)
                        SELECT fence.grp, r.id, r.value FROM fence, unnest($9::bigint[], $10::text[]) AS r(id, value)
                        ON CONFLICT (grp, id) DO NOTHING
                        RETURNING 1
                     )
                     SELECT count(*) FROM fence",
                    lease = t.lease,
                    messages = t.messages,
                    dedup = t.dedup
                ))
                .await
                .map_err(prepare)?;
            let trim = client
                .prepare(&format!(
                    "DELETE FROM {dedup} WHERE grp = $1
                       AND id < (SELECT id FROM {dedup} WHERE grp = $1 ORDER BY id DESC OFFSET $3 LIMIT 1)
                       AND EXISTS (SELECT 1 FROM {lease} WHERE grp = $1 AND epoch = $2)",
                    dedup = t.dedup,
                    lease = t.lease
                ))
                .await
                .map_err(prepare)?;
            self.statements = Some(Statements { commit, trim });
        }
        Ok(())
    }

    async fn execute(&mut self, batch: &Batch, columns: &Columns<'_>) -> Outcome {
        let (Some(client), Some(statements)) = (&self.client, &self.statements) else {
            return Outcome::Failed(DbError::NotConnected);
        };
        let next_id = batch.max_id + 1;
        let started = Instant::now();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
            &self.db.group,
            &self.term.epoch,
            &next_id,
            &columns.ids,
            &columns.destinations,
            &columns.headers,
            &columns.bodies,
            &batch.acks,
            &batch.remembered_ids,
            &batch.remembered,
        ];
        let query = client.query_one(&statements.commit, &params);
        // A database that stops answering must not hold the batch past the term: the
        // renewer fences at the deadline, and the waiters hear it now.
        let result = tokio::select! {
            r = query => r,
            reason = self.term.fenced() => return Outcome::Failed(DbError::Fenced { reason }),
        };
        match result {
            Ok(row) => {
                let fenced_in: i64 = row.get(0);
                self.db.metrics.reachable.set(1);
                if fenced_in != 1 {
                    return Outcome::Refused;
                }
                self.db.metrics.commits.inc();
                self.db.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                self.term.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Outcome::Committed
            }
            Err(source) => Outcome::Failed(DbError::Query { what: "commit a batch to the database", source }),
        }
    }

    async fn trim_if_due(&mut self, batch: &Batch) {
        if batch.remembered.is_empty() {
            return;
        }
        self.remembered_commits += 1;
        if !self.remembered_commits.is_multiple_of(TRIM_EVERY) {
            return;
        }
        let (Some(client), Some(statements)) = (&self.client, &self.statements) else { return };
        if let Err(e) = client.execute(&statements.trim, &[&self.db.group, &self.term.epoch, &(REMEMBERED_MAX as i64)]).await {
            tracing::debug!(error = %crate::report::error_chain(&e), "failed to trim the duplicate-detection ids; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64) -> Op {
        Op::Add(StoredMessage { id: MessageId(id), destination: "/queue/a".into(), headers: vec![("k".into(), "v".into())], body: Bytes::from_static(b"x") })
    }

    #[test]
    fn given_add_and_ack_in_one_batch_should_cancel_out_and_keep_the_rest_aligned() {
        let mut batch = Batch::default();
        batch.add(&[add(1), add(2), add(3)], "dedup");
        batch.add(&[Op::Ack(MessageId(2)), Op::Ack(MessageId(9))], "dedup");
        batch.cancel_out();
        let columns = batch.columns();
        assert_eq!(columns.ids, vec![1, 3]);
        assert_eq!((columns.destinations.len(), columns.headers.len(), columns.bodies.len()), (2, 2, 2));
        assert_eq!(batch.acks, vec![9]);
        assert_eq!(batch.max_id, 3, "the id floor still counts the cancelled add");
    }
}
