//! A backup's life: find the live of its group, authenticate, mirror its journal (what it
//! lacks first: everything, or only the rest when its copy is a prefix of the live's;
//! then every append), acknowledge what is durable, and, when the live is gone, ask the
//! arbiter whether it may activate. It never serves clients and never activates without
//! having been in sync.

use crate::report::error_chain;
use super::arbiter::{ActivationRequest, Decision};
use super::epoch::Epoch;
use super::{probe, HaContext, HaError};
use crate::admin::api::SyncState;
use crate::cluster::{ClusterFrame, HandshakeError, Purpose, SegmentDigest, TransportError};
use crate::config::{BackupAck, Member, PreferredRole};
use crate::journal::Mirror;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How a backup's watch ends.
#[derive(Debug)]
pub enum BackupOutcome {
    /// Become live with this epoch.
    Activate { epoch: Epoch, reason: String },
    Shutdown,
}

enum Followed {
    /// The connection to the live ended; `synced` tells whether we had all its data.
    Lost { synced: bool, reason: String },
    HandOver { epoch: Epoch },
    Refused { reason: String },
    Shutdown,
}

pub async fn run(ctx: &HaContext, shutdown: &CancellationToken) -> Result<BackupOutcome, HaError> {
    let mut mirror = Mirror::open(&ctx.journal_dir).map_err(HaError::Mirror)?.with_faults(ctx.faults.clone());
    ctx.set_backup_status(None, SyncState::Connecting, 0, 0);
    // Whether this process has held a complete copy since it last lost a live.
    let mut lost_synced: Option<(Member, String)> = None;
    let mut last_denial: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(BackupOutcome::Shutdown);
        }
        if let Some((member, epoch)) = probe::find_live(ctx).await {
            if Epoch(epoch) >= ctx.epoch() {
                match follow(ctx, &mut mirror, &member, shutdown).await {
                    Followed::Lost { synced, reason } => {
                        tracing::warn!(live = %member.name, %reason, synced, "lost the live");
                        lost_synced = synced.then(|| (member.clone(), reason));
                        ctx.set_backup_status(None, SyncState::Connecting, 0, 0);
                        continue;
                    }
                    Followed::HandOver { epoch } => {
                        drop(mirror);
                        return Ok(BackupOutcome::Activate { epoch, reason: format!("failback from {}", member.name) });
                    }
                    Followed::Refused { reason } => tracing::warn!(live = %member.name, %reason, "live refused replication"),
                    Followed::Shutdown => return Ok(BackupOutcome::Shutdown),
                }
            } else {
                tracing::warn!(live = %member.name, live_epoch = epoch, our_epoch = ctx.epoch().0, "ignoring a live with an older epoch");
            }
        }
        // Arbiters that know who is in sync are asked whenever no live answers; the others
        // only by a backup that was in sync with the live it lost.
        let ask = match &lost_synced {
            Some((live, why)) => Some((live.name.clone(), live.cluster.clone(), why.clone(), true)),
            // Also after a restart: the marker says the journal is a complete copy. Not by
            // a member that handed the live role over on purpose: its successor is taking it.
            None if ctx.arbiter.knows_sync() && !ctx.handed_over() => Some((
                ctx.live_node.read().clone().unwrap_or_default(),
                // Voters check the last live known themselves.
                ctx.live_node
                    .read()
                    .as_deref()
                    .filter(|node| *node != ctx.node_id)
                    .and_then(|node| ctx.config.members.iter().find(|m| m.name == node))
                    .map(|m| m.cluster.clone())
                    .unwrap_or_default(),
                "no live answers".to_string(),
                ctx.marked_synced(),
            )),
            None => None,
        };
        if let Some((live_node, live_addr, why, complete_copy)) = ask {
            let request =
                ActivationRequest { group: ctx.group.clone(), live_node: live_node.clone(), live_addr, epoch: ctx.epoch().0, complete_copy };
            match ctx.arbiter.may_activate(&request).await {
                Ok(Decision::Granted { reason, epoch }) => {
                    drop(mirror);
                    let epoch = epoch.unwrap_or(Epoch(ctx.epoch().0 + 1));
                    let live = if live_node.is_empty() { "unknown".to_string() } else { live_node };
                    return Ok(BackupOutcome::Activate {
                        epoch,
                        reason: format!("live {live} lost ({why}); {}: {reason}", ctx.arbiter.name()),
                    });
                }
                // Asked every retry: each new reason once at info.
                Ok(Decision::Denied { reason }) if last_denial.as_deref() == Some(reason.as_str()) => {
                    tracing::debug!(arbiter = ctx.arbiter.name(), %reason, "not activating");
                }
                Ok(Decision::Denied { reason }) => {
                    tracing::info!(arbiter = ctx.arbiter.name(), %reason, "not activating");
                    last_denial = Some(reason);
                }
                Err(e) => tracing::warn!(error = %error_chain(&e), "arbiter failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.arbiter.retry_interval.get().min(ctx.config.check_period.get() * 5)) => {}
            _ = shutdown.cancelled() => return Ok(BackupOutcome::Shutdown),
        }
    }
}

/// Mirrors one live until the connection ends.
async fn follow(ctx: &HaContext, mirror: &mut Mirror, live: &Member, shutdown: &CancellationToken) -> Followed {
    let (mut conn, peer) = match ctx.open(&live.cluster, Purpose::Replicate, ctx.config.connection_ttl.get()).await {
        Ok(x) => x,
        Err(e @ (TransportError::Connect { .. } | TransportError::ConnectTimeout { .. })) => {
            return Followed::Lost { synced: false, reason: e.describe() }
        }
        // An injected partition is a cut network, not a refusal.
        Err(e @ TransportError::Handshake(HandshakeError::Partitioned { .. })) => {
            return Followed::Lost { synced: false, reason: e.describe() }
        }
        Err(e) => return Followed::Refused { reason: e.describe() },
    };
    if peer.role != "live" {
        return Followed::Refused { reason: format!("{} is {}, not live", peer.node_id, peer.role) };
    }
    if Epoch(peer.epoch) < ctx.epoch() {
        return Followed::Refused { reason: format!("live epoch {} is older than ours {}", peer.epoch, ctx.epoch()) };
    }
    if let Err(e) = ctx.store_epoch(Epoch(peer.epoch)) {
        return Followed::Refused { reason: error_chain(&e) };
    }
    *ctx.live_stomp.write() = Some(live.stomp.clone());
    *ctx.live_amqp.write() = super::member_amqp(live);
    ctx.following_live();
    // Watch the live's claim being renewed, so its expiry counts from the last renewal
    // seen, not from the moment the live is lost (a live cut off from the arbiter fences
    // itself long before it stops answering us). Stopped when this function returns.
    let _observer = ctx.arbiter.observe_every().map(|every| {
        let arbiter = Arc::clone(&ctx.arbiter);
        AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                arbiter.observe().await;
                tokio::time::sleep(every).await;
            }
        }))
    });
    let tls = conn.stream().protocol().map_or_else(|| "off".to_string(), |v| format!("{v:?}"));
    tracing::info!(live = %peer.node_id, epoch = peer.epoch, %tls, "following the live");
    // Tell the live what this copy holds, so that it sends only what is missing.
    let held = match tokio::task::block_in_place(|| mirror.digests()) {
        Ok(held) => held,
        Err(e) => return mirror_failed(ctx, "failed to read the mirrored journal", &e),
    };
    let segments = held.iter().map(|s| SegmentDigest { seq: s.seq, len: s.len, crc: s.crc }).collect();
    if let Err(e) = conn.send(&ClusterFrame::SyncRequest { segments }).await {
        return Followed::Lost { synced: false, reason: error_chain(&e) };
    }
    let ttl = ctx.config.connection_ttl.get();
    let mut state = SyncState::Syncing;
    let mut written: Option<(u64, u64)> = None;
    let mut acked: Option<(u64, u64)> = None;
    let mut sync_target: Option<(u64, u64)> = None;
    // Records in the live's journal, as of its last append.
    let mut live_records = 0u64;
    let mut asked_failback = false;
    ctx.set_backup_status(Some(&peer.node_id), state, 0, 0);
    loop {
        let frame = tokio::select! {
            r = tokio::time::timeout(ttl, conn.recv()) => match r {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return Followed::Lost { synced: state == SyncState::Synced, reason: "connection closed".into() },
                Ok(Err(e)) => return Followed::Lost { synced: state == SyncState::Synced, reason: error_chain(&e) },
                Err(_) => return Followed::Lost { synced: state == SyncState::Synced, reason: format!("no word from the live for {ttl:?}") },
            },
            _ = shutdown.cancelled() => {
                let _ = conn.send(&ClusterFrame::Goodbye { reason: "backup shutting down".into() }).await;
                return Followed::Shutdown;
            }
        };
        let result = match frame {
            ClusterFrame::SyncBegin { segments, resume } => {
                state = SyncState::Syncing;
                // From here the mirror is no complete copy until it is in sync again.
                if let Err(e) = ctx.unmark_synced() {
                    return Followed::Lost { synced: false, reason: error_chain(&e) };
                }
                let keep = if resume {
                    let listed: std::collections::BTreeSet<u64> = segments.iter().map(|s| s.seq).collect();
                    held.iter().filter(|s| listed.contains(&s.seq)).map(|s| (s.seq, s.len)).collect()
                } else {
                    std::collections::BTreeMap::new()
                };
                tracing::info!(live = %peer.node_id, resume, kept_segments = keep.len(), "syncing with the live");
                // What is kept counts as written: acknowledged even if the live has
                // nothing more to send.
                written = keep.iter().next_back().map(|(&seq, &len)| (seq, len));
                mirror.set_first_records(segments.iter().map(|s| (s.seq, s.first_record)));
                tokio::task::block_in_place(|| if resume { mirror.resume(&keep) } else { mirror.reset() })
            }
            ClusterFrame::Append { seq, offset, records, data } => {
                if let Err(reason) = continues(mirror, seq, offset) {
                    return Followed::Lost { synced: state == SyncState::Synced, reason };
                }
                // Following the live's tail: a write into the page cache, done in place.
                // `block_in_place` would hand this worker's tasks to another thread for every
                // batch, which costs more than the write (see the sync below).
                let r = mirror.write(seq, offset, &data);
                written = Some((seq, offset + data.len() as u64));
                live_records = records;
                r
            }
            ClusterFrame::SegmentChunk { seq, offset, data } => {
                if let Err(reason) = continues(mirror, seq, offset) {
                    return Followed::Lost { synced: state == SyncState::Synced, reason };
                }
                let r = tokio::task::block_in_place(|| mirror.write(seq, offset, &data));
                written = Some((seq, offset + data.len() as u64));
                r
            }
            ClusterFrame::Truncate { seq, len } => {
                tracing::warn!(live = %peer.node_id, segment = seq, len, "the live cut back a batch it failed to sync: cutting the copy too");
                let cut = (seq, len);
                written = written.map(|w| w.min(cut));
                acked = acked.map(|a| a.min(cut));
                sync_target = sync_target.map(|t| t.min(cut));
                match tokio::task::block_in_place(|| mirror.truncate(seq, len)) {
                    Ok(()) => match conn.send(&ClusterFrame::Truncated { seq, len }).await {
                        Ok(()) => Ok(()),
                        Err(e) => return Followed::Lost { synced: state == SyncState::Synced, reason: error_chain(&e) },
                    },
                    Err(e) => Err(e),
                }
            }
            ClusterFrame::SyncEnd { seq, len } => {
                sync_target = Some((seq, len));
                Ok(())
            }
            ClusterFrame::Reclaim { seq } => tokio::task::block_in_place(|| mirror.remove(seq)),
            ClusterFrame::Ping { at } => {
                if let Err(e) = conn.send(&ClusterFrame::Pong { at }).await {
                    return Followed::Lost { synced: state == SyncState::Synced, reason: error_chain(&e) };
                }
                Ok(())
            }
            ClusterFrame::HandOver { epoch } => {
                if let Err(e) = tokio::task::block_in_place(|| mirror.sync()) {
                    return Followed::Refused { reason: error_chain(&e) };
                }
                return Followed::HandOver { epoch: Epoch(epoch) };
            }
            ClusterFrame::Goodbye { reason } => return Followed::Lost { synced: state == SyncState::Synced, reason },
            other => {
                tracing::debug!(frame = other.name(), "ignoring unexpected frame from the live");
                Ok(())
            }
        };
        if let Err(e) = result {
            return mirror_failed(ctx, "failed to mirror the journal; dropping the live connection", &e);
        }
        // Acknowledge once everything buffered is written: one fsync for a burst of appends.
        if conn.buffered().is_empty() && written != acked {
            // The fdatasync (into preallocated space) runs on this worker thread:
            // `block_in_place` cost two thread hand-offs per batch, more than the sync
            // itself, and nothing else a backup serves (status, probes) minds the wait.
            // With `backupAck: written` it follows the ack, so the live's receipts wait for
            // its own fdatasync and our write, not for ours as well; the next burst is
            // read once it is done.
            let ack_first = ctx.config.backup_ack == BackupAck::Written;
            if !ack_first {
                if let Err(e) = mirror.sync() {
                    return mirror_failed(ctx, "failed to sync the mirrored journal", &e);
                }
            }
            if let Some((seq, offset)) = written {
                if let Err(e) = conn.send(&ClusterFrame::Ack { seq, offset, records: mirror.records() }).await {
                    return Followed::Lost { synced: state == SyncState::Synced, reason: error_chain(&e) };
                }
            }
            if ack_first {
                if let Err(e) = mirror.sync() {
                    return mirror_failed(ctx, "failed to sync the mirrored journal", &e);
                }
            }
            acked = written;
        }
        if state == SyncState::Syncing && sync_target.is_some() && acked.is_some() && acked >= sync_target {
            state = SyncState::Synced;
            tracing::info!(live = %peer.node_id, "backup is in sync with the live");
            if let Err(e) = ctx.mark_synced(&peer.node_id) {
                tracing::warn!(error = %error_chain(&e), "failed to record that this backup is in sync; a restart will not count it as a complete copy");
            }
        }
        let lag = match (sync_target, acked) {
            (Some((ts, tl)), Some((s, o))) if state == SyncState::Syncing && ts == s => tl.saturating_sub(o),
            _ => 0,
        };
        ctx.set_backup_status(Some(&peer.node_id), state, lag, live_records.saturating_sub(mirror.records()));
        if state == SyncState::Synced
            && !asked_failback
            && ctx.config.allow_failback
            && ctx.config.role == PreferredRole::Primary
        {
            asked_failback = true;
            if ctx.handed_over() {
                // Failback undoes failovers; a switchover away from this member was meant.
                tracing::info!(live = %peer.node_id, "in sync as the preferred live, but this process handed the role over on purpose: not asking for failback until it restarts");
            } else {
                tracing::info!(live = %peer.node_id, "in sync as the preferred live: asking for failback");
                if let Err(e) = conn.send(&ClusterFrame::FailbackRequest).await {
                    return Followed::Lost { synced: true, reason: error_chain(&e) };
                }
            }
        }
    }
}

/// Journal bytes from the live must continue the copy (or rewrite part of it, as a
/// repeated frame does): bytes that start past its end mean frames went missing on the
/// way, and writing them would leave a hole that an acknowledgement would then cover.
/// The connection is dropped instead, and the next one resyncs what is missing.
fn continues(mirror: &Mirror, seq: u64, offset: u64) -> Result<(), String> {
    let held = mirror.segment_len(seq);
    if offset > held {
        return Err(format!(
            "the live's bytes for segment {seq} start at {offset}, but this copy ends at {held}: frames went missing; resyncing"
        ));
    }
    Ok(())
}

/// The mirror may be damaged: it no longer counts as a complete copy.
fn mirror_failed(ctx: &HaContext, what: &str, e: &crate::journal::JournalError) -> Followed {
    tracing::error!(error = %error_chain(e), "{what}");
    if let Err(unmark) = ctx.unmark_synced() {
        tracing::error!(error = %error_chain(&unmark), "failed to forget that this backup was in sync");
    }
    Followed::Lost { synced: false, reason: error_chain(e) }
}

