//! The live's side of replication, one task per backup: it streams the journal's segment
//! files (the initial sync, read from disk while the live keeps serving, never loaded
//! whole), then follows every append; it reads the backup's acks and feeds them to the
//! journal's replication gate, which holds receipts back in sync mode. When the backup's
//! copy is a prefix of the live's journal (checked segment by segment, see
//! [`resume_plan`]) only what it lacks is sent; otherwise it gets everything again. When
//! the writer cuts back a batch whose fdatasync failed, the backup is told to cut its copy
//! too. It decides nothing about roles; on a failback request, or when a switchover names
//! its backup, it hands the live role over once that backup has everything, and stops.

use super::{HaContext, HaError, LiveTerm};
use crate::admin::api::{BackupStatus, SyncState};
use crate::cluster::{ClientPeer, ClusterConn, ClusterFrame, SegmentDigest, SegmentExtent};
use crate::journal::{Journal, JournalPosition, SegmentOnDisk, SegmentReader, SEGMENT_HEADER_LEN};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use crate::tls::Stream;
use tokio_util::sync::CancellationToken;

/// Bytes read and sent per Append frame.
const CHUNK: usize = 256 * 1024;
/// Bytes queued before a flush.
const FLUSH_AT: usize = 1024 * 1024;

/// How a replica task ends.
#[derive(Debug)]
pub enum ReplicaEnd {
    /// The backup left or failed.
    Gone(String),
    /// The live is stopping.
    Stopped,
    /// Failback: the backup had everything when client traffic stopped and was told to
    /// activate with this epoch.
    HandedOver(u64),
    /// The live lost its claim: the backup is let go to find the next live.
    Fenced,
}

/// Streams the journal to one backup until it leaves, the live stops, or it asks for failback.
pub async fn serve(
    ctx: &HaContext,
    term: &LiveTerm,
    journal: &Journal,
    conn: &mut ClusterConn<Stream>,
    peer: &ClientPeer,
    stop: &CancellationToken,
) -> Result<ReplicaEnd, HaError> {
    let gate = journal.replication_gate();
    let replica = gate.register();
    let result = stream(ctx, term, journal, conn, peer, stop, replica).await;
    leave(ctx, journal, replica, &peer.node_id, &result).await;
    result
}

/// Takes a backup that is done out of the gate. A synced backup that left holds the
/// live's receipts until the arbiter has published that it is no longer in sync, so a
/// backup that takes over always has every confirmed write.
async fn leave(ctx: &HaContext, journal: &Journal, replica: crate::journal::ReplicaId, node: &str, result: &Result<ReplicaEnd, HaError>) {
    let gate = journal.replication_gate();
    match result {
        Ok(ReplicaEnd::Stopped | ReplicaEnd::Fenced) => {
            // The live is stopping or fenced: it confirms nothing its backups do not have.
            // The backup stays in the published in-sync list, which remains true.
            gate.fence();
        }
        Ok(ReplicaEnd::HandedOver(_)) => ctx.remove_backup(node),
        Ok(ReplicaEnd::Gone(_)) | Err(_) => {
            let was_synced = gate.is_synced(replica);
            ctx.remove_backup(node);
            if was_synced {
                if let Err(reason) = ctx.arbiter.in_sync_changed().await {
                    tracing::warn!(backup = %node, %reason, "could not publish that a backup left: confirming no more writes");
                    gate.fence();
                }
            }
        }
    }
    gate.remove(replica);
}

async fn stream(
    ctx: &HaContext,
    term: &LiveTerm,
    journal: &Journal,
    conn: &mut ClusterConn<Stream>,
    peer: &ClientPeer,
    stop: &CancellationToken,
    replica: crate::journal::ReplicaId,
) -> Result<ReplicaEnd, HaError> {
    let gate = journal.replication_gate();
    let ttl = ctx.config.connection_ttl.get();
    // The backup first says what it already holds.
    let held = match tokio::time::timeout(ttl, conn.recv()).await {
        Ok(Ok(Some(ClusterFrame::SyncRequest { segments }))) => segments,
        Ok(Ok(Some(other))) => return Ok(ReplicaEnd::Gone(format!("expected a sync request, got {}", other.name()))),
        Ok(Ok(None)) => return Ok(ReplicaEnd::Gone("connection closed".into())),
        Ok(Err(e)) => return Ok(ReplicaEnd::Gone(crate::report::error_chain(&e))),
        Err(_) => return Ok(ReplicaEnd::Gone(format!("no sync request within {ttl:?}"))),
    };
    let mut position = journal.written_position();
    let mut target = *position.borrow_and_update();
    // The segment being read stays open in the reader across batches.
    let mut reader = journal.reader();
    let extents = reader.segments().map_err(HaError::Journal)?;
    let first = extents.first().map(|s| s.seq).unwrap_or(target.segment);
    let hold = journal.hold_segments_from(first);
    let keep = match tokio::task::block_in_place(|| resume_plan(&reader, &held, &extents, target)) {
        Ok(keep) if !keep.is_empty() => {
            tracing::info!(backup = %peer.node_id, segments = keep.len(), bytes = keep.values().sum::<u64>(), "the backup's journal is a prefix of ours: sending only what it lacks");
            keep
        }
        Ok(_) => {
            tracing::info!(backup = %peer.node_id, reason = "the backup holds no segment", "full copy");
            BTreeMap::new()
        }
        Err(reason) => {
            tracing::warn!(backup = %peer.node_id, %reason, "full copy: the backup's journal is no prefix of ours");
            BTreeMap::new()
        }
    };
    let first_records = journal.first_records();
    conn.queue(&ClusterFrame::SyncBegin {
        segments: extents
            .iter()
            .map(|&SegmentOnDisk { seq, len }| SegmentExtent { seq, len, first_record: first_records.get(&seq).copied().unwrap_or(0) })
            .collect(),
        resume: !keep.is_empty(),
    })
    .map_err(HaError::Cluster)?;
    conn.queue(&ClusterFrame::SyncEnd { seq: target.segment, len: target.offset }).map_err(HaError::Cluster)?;
    tracing::info!(backup = %peer.node_id, segments = extents.len(), target_segment = target.segment, target_offset = target.offset, "initial sync started");
    let mut cursor = (first, keep.get(&first).copied().unwrap_or(0));
    // Journal bytes sent on this connection.
    let mut streamed = 0u64;
    let mut acked_records = 0u64;
    let mut sent: BTreeSet<u64> = BTreeSet::new();
    let mut synced = false;
    let mut acked = (0u64, 0u64);
    let mut last_heard = Instant::now();
    let mut last_listing = Instant::now();
    let check = ctx.config.check_period.get();
    let mut ping = tokio::time::interval(check);
    let mut handing_over = false;
    let mut step_down_seen = false;
    let result = loop {
        // The writer cut back a batch the backup may hold already: it cuts its copy too,
        // and everything from there is sent again. A segment cut back to its header gets
        // its header again as well (the next batch may rewrite it).
        if let Some((seq, len)) = gate.take_cut(replica) {
            tracing::warn!(backup = %peer.node_id, segment = seq, len, "the journal cut back a batch it failed to sync: the backup cuts its copy too");
            conn.queue(&ClusterFrame::Truncate { seq, len }).map_err(HaError::Cluster)?;
            cursor = cursor.min(if len <= SEGMENT_HEADER_LEN { (seq, 0) } else { (seq, len) });
            acked = acked.min((seq, len));
            if target.at() > (seq, len) {
                target = JournalPosition { segment: seq, offset: len, records: target.records };
            }
        }
        // Send everything written that the backup does not have yet.
        let end = *position.borrow_and_update();
        let mut queued = 0usize;
        while cursor < (end.segment, end.offset) {
            let (seq, offset) = cursor;
            let limit = reader.readable_len(seq, end);
            if offset >= limit {
                // Done with this segment (or it is gone): on to the next one on disk.
                let next = reader.next_after(seq).map_err(HaError::Journal)?.unwrap_or(end.segment);
                cursor = (next, keep.get(&next).copied().unwrap_or(0));
                hold.advance(next);
                continue;
            }
            let len = ((limit - offset) as usize).min(CHUNK);
            let mut data = vec![0u8; len];
            let mut read_chunk = || reader.read_at(seq, offset, &mut data);
            // The tail of the current segment was just written: it is in the page cache and
            // read in place. Older segments (an initial sync) may come from disk and are read
            // off the async workers.
            let read = if seq == end.segment && synced { read_chunk() } else { tokio::task::block_in_place(read_chunk) };
            read.map_err(HaError::Journal)?;
            sent.insert(seq);
            conn.queue(&ClusterFrame::Append { seq, offset, records: end.records, data: data.into() })
                .map_err(HaError::Cluster)?;
            cursor = (seq, offset + len as u64);
            queued += len;
            streamed += len as u64;
            if queued >= FLUSH_AT {
                conn.flush().await.map_err(HaError::Cluster)?;
                queued = 0;
            }
        }
        // Tell the backup about segments the live reclaimed.
        if last_listing.elapsed() > Duration::from_secs(1) {
            last_listing = Instant::now();
            let on_disk: BTreeSet<u64> = reader.segments().map_err(HaError::Journal)?.into_iter().map(|s| s.seq).collect();
            let gone: Vec<u64> = sent.iter().copied().filter(|s| *s < cursor.0 && !on_disk.contains(s)).collect();
            for seq in gone {
                sent.remove(&seq);
                conn.queue(&ClusterFrame::Reclaim { seq }).map_err(HaError::Cluster)?;
            }
        }
        if let Err(e) = conn.flush().await {
            break Ok(ReplicaEnd::Gone(crate::report::error_chain(&e)));
        }
        if handing_over && term.clients_stopped.is_cancelled() && acked >= (end.segment, end.offset) {
            let epoch = ctx.epoch().0 + 1;
            // Only this backup may take the claim now: another in-sync one could otherwise
            // win the race for it.
            ctx.arbiter.hand_over(&peer.node_id).await;
            if let Err(e) = conn.send(&ClusterFrame::HandOver { epoch }).await {
                break Ok(ReplicaEnd::Gone(crate::report::error_chain(&e)));
            }
            term.handover_epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
            term.handed_over.cancel();
            tracing::info!(backup = %peer.node_id, epoch, "handed the live role over");
            break Ok(ReplicaEnd::HandedOver(epoch));
        }
        let lag = if end.segment == acked.0 { end.offset.saturating_sub(acked.1) } else { end.offset };
        ctx.update_backup(BackupStatus {
            node: peer.node_id.clone(),
            state: if synced { SyncState::Synced } else { SyncState::Syncing },
            lag_bytes: lag,
            lag_records: end.records.saturating_sub(acked_records),
        });
        tokio::select! {
            changed = position.changed() => {
                if changed.is_err() {
                    break Ok(ReplicaEnd::Stopped);
                }
            }
            frame = conn.recv() => match frame {
                Ok(Some(ClusterFrame::Ack { seq, offset, records })) => {
                    last_heard = Instant::now();
                    let at = JournalPosition { segment: seq, offset, records };
                    // False for acks the backup sent before it cut its copy: they may
                    // describe bytes the journal no longer has.
                    if gate.acked(replica, at, synced || at.at() >= target.at()) {
                        acked = at.at();
                        acked_records = records;
                        if !synced && acked >= target.at() {
                            synced = true;
                            tracing::info!(backup = %peer.node_id, streamed_bytes = streamed, "backup in sync; replication is now synchronous for it");
                        }
                    }
                }
                Ok(Some(ClusterFrame::Truncated { .. })) => {
                    last_heard = Instant::now();
                    gate.cut_confirmed(replica);
                }
                Ok(Some(ClusterFrame::Pong { .. })) => last_heard = Instant::now(),
                Ok(Some(ClusterFrame::FailbackRequest)) if synced && !handing_over => {
                    if term.claim_handover(&peer.node_id) {
                        tracing::info!(backup = %peer.node_id, "failback requested: stopping client traffic to hand over");
                        handing_over = true;
                        term.step_down.cancel();
                    } else {
                        tracing::info!(backup = %peer.node_id, "failback requested while handing over to another member: ignored");
                    }
                }
                Ok(Some(ClusterFrame::Goodbye { reason })) => break Ok(ReplicaEnd::Gone(reason)),
                Ok(Some(other)) => tracing::debug!(frame = other.name(), "ignoring frame from backup"),
                Ok(None) => break Ok(ReplicaEnd::Gone("connection closed".into())),
                Err(e) => break Ok(ReplicaEnd::Gone(crate::report::error_chain(&e))),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > ttl {
                    break Ok(ReplicaEnd::Gone(format!("no word from the backup for {ttl:?}")));
                }
                let at = u64::try_from(last_heard.elapsed().as_millis()).unwrap_or(u64::MAX);
                if conn.send(&ClusterFrame::Ping { at }).await.is_err() {
                    break Ok(ReplicaEnd::Gone("failed to ping".into()));
                }
            }
            // A switchover chose this backup: hand over to it once clients have stopped.
            _ = term.step_down.cancelled(), if !handing_over && !step_down_seen => {
                step_down_seen = true;
                if term.handover_target().as_deref() == Some(peer.node_id.as_str()) {
                    if synced {
                        handing_over = true;
                    } else {
                        tracing::warn!(backup = %peer.node_id, "switchover target is not in sync: not handing over");
                    }
                }
            }
            _ = term.clients_stopped.cancelled(), if handing_over && !term.clients_stopped.is_cancelled() => {}
            _ = stop.cancelled(), if !handing_over => break Ok(ReplicaEnd::Stopped),
            _ = term.fenced.cancelled() => {
                let _ = conn.send(&ClusterFrame::Goodbye { reason: "the live lost its claim (fenced)".into() }).await;
                break Ok(ReplicaEnd::Fenced);
            }
        }
    };
    result
}

/// Which of the backup's segments (`held`) are prefixes of ours (`live`: sequence and file
/// length, with `written` the end of the newest), and how long: the backup keeps those and
/// gets the rest. The backup's segments older than ours were reclaimed here and go. Any
/// other segment that does not continue into ours makes the whole copy suspect: the error
/// says which, and the backup then gets everything again.
fn resume_plan(
    reader: &SegmentReader,
    held: &[SegmentDigest],
    live: &[SegmentOnDisk],
    written: JournalPosition,
) -> Result<BTreeMap<u64, u64>, String> {
    let first = live.first().map_or(written.segment, |s| s.seq);
    let mut keep = BTreeMap::new();
    for segment in held.iter().filter(|s| s.seq >= first) {
        let Some(&SegmentOnDisk { len: file_len, .. }) = live.iter().find(|s| s.seq == segment.seq) else {
            return Err(format!("the backup holds segment {}, which we do not", segment.seq));
        };
        let ours = match segment.seq.cmp(&written.segment) {
            std::cmp::Ordering::Less => file_len,
            std::cmp::Ordering::Equal => written.offset,
            std::cmp::Ordering::Greater => 0,
        };
        if segment.len > ours {
            return Err(format!("the backup's segment {} holds {} bytes, ours {ours}", segment.seq, segment.len));
        }
        let crc = reader
            .prefix_digest(segment.seq, segment.len)
            .map_err(|e| format!("failed to read our segment {}: {}", segment.seq, crate::report::error_chain(&e)))?;
        if crc != segment.crc {
            return Err(format!("the backup's segment {} differs from ours before byte {}", segment.seq, segment.len));
        }
        keep.insert(segment.seq, segment.len);
    }
    Ok(keep)
}
