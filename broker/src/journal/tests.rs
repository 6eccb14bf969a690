//! Journal behaviour through its public API, on real files in temporary directories.
//!
//! A kill -9 is simulated by closing the journal and then cutting or damaging its files
//! the way a crash (or a bad disk) would have left them, or by copying the directory of
//! a running journal (what the page cache holds is what survives a kill -9).
//!
//! Segments are prepared and deleted by the housekeeper thread, so tests that look for
//! either poll with [`HOUSEKEEPING_TIMEOUT`]; closing the journal waits for it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rstest::rstest;

use super::segment::{SegmentSeq, HEADER_LEN};
use crate::faults::{DiskFault, FaultMetrics, FaultRules, Faults};
use super::*;

fn message(id: u64) -> StoredMessage {
    message_with_body(id, format!("body of message {id}").into_bytes())
}

fn message_with_body(id: u64, body: Vec<u8>) -> StoredMessage {
    StoredMessage {
        id: MessageId(id),
        destination: "/queue/orders".into(),
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("seq".into(), id.to_string()),
        ],
        body: Bytes::from(body),
    }
}

/// How long a test waits for the housekeeper to prepare or delete a segment.
const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `done` until it holds, failing the test after [`HOUSEKEEPING_TIMEOUT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HOUSEKEEPING_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {HOUSEKEEPING_TIMEOUT:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until exactly the segments `expected` are on disk and in the stats.
async fn wait_for_segments(journal: &Journal, dir: &Path, expected: &[u64]) {
    wait_until(&format!("the segments on disk are {expected:?}"), || {
        segment_seqs(dir) == expected && journal.stats().segments == expected.len()
    })
    .await;
}

fn prepared_path(dir: &Path, seq: u64) -> PathBuf {
    SegmentSeq(seq).prepared_path(dir)
}

/// What a kill -9 of the running journal would leave: a copy of its files as they are.
/// Callers wait for the housekeeper to be idle first, so the copy is a consistent one;
/// only a retired segment (`.del`) may still be shrinking, and one unlinked between the
/// listing and its copy is simply gone, as it would be from a crash a moment later.
fn copy_journal_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    for entry in fs::read_dir(from).expect("journal dir is listable") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == super::lock::LOCK_FILE_NAME {
            continue;
        }
        match fs::copy(entry.path(), to.path().join(&name)) {
            Ok(_) => {}
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && name.to_string_lossy().ends_with(".del") => {}
            Err(error) => panic!("copy journal file {name:?}: {error}"),
        }
    }
    to
}

fn add(id: u64) -> Op {
    Op::Add(message(id))
}

fn ack(id: u64) -> Op {
    Op::Ack(MessageId(id))
}

/// A config whose every batch rolls to a new segment, so tests choose segment contents.
fn one_batch_per_segment(dir: &Path) -> JournalConfig {
    JournalConfig {
        segment_size: 1,
        ..JournalConfig::new(dir)
    }
}

fn open(config: JournalConfig) -> (Journal, Recovered) {
    // Another test forking a process (mount, umount) briefly holds a copy of every open
    // descriptor, the directory lock included, until its exec: wait that out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Journal::open(config.clone(), JournalMetrics::unregistered()) {
            Ok(opened) => return opened,
            Err(JournalError::Lock { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(error) => panic!("journal should open: {error:?}"),
        }
    }
}

fn reopen(dir: &Path) -> Recovered {
    let (journal, recovered) = open(JournalConfig::new(dir));
    close(&journal);
    recovered
}

fn close(journal: &Journal) {
    if let Err(error) = journal.close() {
        panic!("journal should close: {error:?}");
    }
}

async fn durable(journal: &Journal, ops: Vec<Op>) {
    if let Err(error) = journal.append(ops).await {
        panic!("append should be durable: {error:?}");
    }
}

fn ids(recovered: &Recovered) -> Vec<u64> {
    recovered.messages.iter().map(|m| m.id.0).collect()
}

fn segment_seqs(dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = fs::read_dir(dir)
        .expect("journal dir is listable")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            SegmentSeq::parse_file_name(name.to_str()?).map(|seq| seq.0)
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    SegmentSeq(seq).path(dir)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("segment exists").len()
}

/// Writes ids 1..=count (one record each) into a single fresh segment and returns the
/// segment path and the offset at which each record starts.
async fn single_segment_journal(dir: &Path, count: u64) -> (PathBuf, Vec<u64>) {
    let (journal, _) = open(JournalConfig::new(dir));
    let mut starts = Vec::new();
    for id in 1..=count {
        starts.push(journal.stats().bytes_on_disk);
        durable(&journal, vec![add(id)]).await;
    }
    let records_end = journal.stats().bytes_on_disk;
    close(&journal);
    // Tests damage the file right after its records: drop the preallocated zeros.
    let path = segment_path(dir, 1);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(records_end))
        .expect("trim preallocated space");
    (path, starts)
}

#[test]
fn given_append_future_should_be_send_unpin_and_static() {
    fn assert_traits<T: Future<Output = Result<(), JournalError>> + Send + Unpin + 'static>() {}
    assert_traits::<AppendFuture>();
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<Journal>();
    assert_shareable::<JournalError>();
}

#[tokio::test]
async fn given_adds_and_acks_when_reopened_should_recover_exactly_unacked_messages_in_id_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, recovered) = open(JournalConfig::new(dir.path()));
    assert!(recovered.messages.is_empty());
    assert_eq!(recovered.next_id, MessageId(0));
    for id in [5, 3, 1, 4, 2] {
        durable(&journal, vec![add(id)]).await;
    }
    durable(&journal, vec![ack(3)]).await;
    close(&journal);

    let recovered = reopen(dir.path());
    let expected: Vec<StoredMessage> = [1, 2, 4, 5].into_iter().map(message).collect();
    assert_eq!(recovered.messages, expected);
    assert_eq!(recovered.next_id, MessageId(6));
    assert_eq!(recovered.records, 6);
    assert_eq!(recovered.torn_tail_bytes, 0);
}

#[tokio::test]
async fn given_multi_op_record_when_reopened_should_apply_all_its_ops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1)]).await;
    durable(&journal, vec![add(2), add(3), ack(1)]).await;
    close(&journal);

    assert_eq!(ids(&reopen(dir.path())), vec![2, 3]);
}

#[tokio::test]
async fn given_torn_multi_op_record_when_reopened_should_contribute_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1)]).await;
    let torn_start = journal.stats().bytes_on_disk;
    durable(&journal, vec![add(2), add(3), ack(1)]).await;
    let full = journal.stats().bytes_on_disk;
    close(&journal);
    let segment = segment_path(dir.path(), 1);
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|file| file.set_len(torn_start + (full - torn_start) / 2))
        .expect("cut segment");

    let recovered = reopen(dir.path());
    assert_eq!(ids(&recovered), vec![1]);
    // The batch's sync mark is whole: the cut comes right after it.
    let mark = record::MARK_FRAME_LEN as u64;
    assert_eq!(recovered.torn_tail_bytes, (full - torn_start) / 2 - mark);
    assert_eq!(file_len(&segment), torn_start + mark);
}

#[tokio::test]
async fn given_last_record_cut_at_every_offset_when_reopened_should_truncate_and_keep_appending() {
    let template = tempfile::tempdir().expect("tempdir");
    let (segment, starts) = single_segment_journal(template.path(), 3).await;
    let bytes = fs::read(&segment).expect("read segment");
    let last_start = starts[2] as usize;

    for cut in last_start..bytes.len() {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = segment_path(dir.path(), 1);
        fs::write(&copy, &bytes[..cut]).expect("write cut copy");

        let (journal, recovered) = open(JournalConfig::new(dir.path()));
        // The batch opens with its sync mark; once that is whole, the cut comes after it.
        let kept = if cut >= last_start + record::MARK_FRAME_LEN { last_start + record::MARK_FRAME_LEN } else { last_start };
        assert_eq!(ids(&recovered), vec![1, 2], "cut at {cut}");
        assert_eq!(
            recovered.torn_tail_bytes,
            (cut - kept) as u64,
            "cut at {cut}"
        );
        assert_eq!(file_len(&copy), kept as u64, "cut at {cut}");
        durable(&journal, vec![add(4)]).await;
        close(&journal);

        assert_eq!(ids(&reopen(dir.path())), vec![1, 2, 4], "cut at {cut}");
    }
}

#[rstest]
#[case::zero_length_then_junk(vec![0, 0, 0, 0, 0, 0, 0, 0, 1])]
#[case::short_garbage(vec![0xde, 0xad, 0xbe])]
#[case::huge_length(vec![0xff; 13])]
#[case::length_past_end(vec![200, 0, 0, 0, 1, 2, 3, 4, 5, 6])]
#[case::bad_checksum_at_end(vec![2, 0, 0, 0, 0, 0, 0, 0, 7, 7])]
#[tokio::test]
async fn given_junk_after_last_record_when_reopened_should_truncate_it(#[case] junk: Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (segment, _) = single_segment_journal(dir.path(), 2).await;
    let clean_len = file_len(&segment);
    let mut bytes = fs::read(&segment).expect("read segment");
    bytes.extend_from_slice(&junk);
    fs::write(&segment, &bytes).expect("append junk");

    let (journal, recovered) = open(JournalConfig::new(dir.path()));
    assert_eq!(ids(&recovered), vec![1, 2]);
    assert_eq!(recovered.torn_tail_bytes, junk.len() as u64);
    assert_eq!(file_len(&segment), clean_len);
    durable(&journal, vec![add(3)]).await;
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![1, 2, 3]);
}

#[rstest]
#[case::last_segment(false)]
#[case::older_segment(true)]
#[tokio::test]
async fn given_zeros_after_last_record_when_reopened_should_read_them_as_preallocated_space(
    #[case] then_roll: bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (segment, _) = single_segment_journal(dir.path(), 2).await;
    let clean_len = file_len(&segment);
    let mut bytes = fs::read(&segment).expect("read segment");
    bytes.extend_from_slice(&[0; 8192]);
    fs::write(&segment, &bytes).expect("append zeros");

    let config = JournalConfig {
        segment_size: if then_roll { 1 } else { DEFAULT_SEGMENT_SIZE },
        ..JournalConfig::new(dir.path())
    };
    let (journal, recovered) = open(config.clone());
    assert_eq!(ids(&recovered), vec![1, 2]);
    assert_eq!(recovered.torn_tail_bytes, 0, "zeros are no torn record");
    assert_eq!(file_len(&segment), clean_len + 8192, "nothing is cut");
    durable(&journal, vec![add(3)]).await;
    close(&journal);
    if then_roll {
        assert!(segment_seqs(dir.path()).len() > 1, "add 3 went to a newer segment");
    }
    let (journal, recovered) = open(config);
    assert_eq!(ids(&recovered), vec![1, 2, 3]);
    assert_eq!(recovered.torn_tail_bytes, 0);
    close(&journal);
}

#[tokio::test]
async fn given_appends_should_write_into_preallocated_space_and_recover_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1)]).await;
    durable(&journal, vec![add(2), ack(1)]).await;
    let segment = SegmentSeq(segment_seqs(dir.path())[0]).path(dir.path());
    let on_disk = fs::read(&segment).expect("read segment");
    let records_end = on_disk.iter().rposition(|&b| b != 0).expect("records") + 1;
    assert!(
        on_disk.len() >= records_end + 1024 * 1024,
        "the segment is preallocated ahead of its records ({} bytes, records end at {records_end})",
        on_disk.len()
    );
    close(&journal);
    let (journal, recovered) = open(JournalConfig::new(dir.path()));
    assert_eq!(ids(&recovered), vec![2]);
    assert_eq!(recovered.torn_tail_bytes, 0);
    durable(&journal, vec![add(3)]).await;
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![2, 3]);
}

#[tokio::test]
async fn given_corrupt_middle_record_in_last_segment_when_reopened_should_fail_and_leave_file_untouched(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (segment, starts) = single_segment_journal(dir.path(), 3).await;
    let mut bytes = fs::read(&segment).expect("read segment");
    let middle = starts[1];
    bytes[middle as usize + 12] ^= 0x40;
    fs::write(&segment, &bytes).expect("damage segment");

    let error = Journal::open(
        JournalConfig::new(dir.path()),
        JournalMetrics::unregistered(),
    )
    .expect_err("mid-file corruption must stop recovery");
    match &error {
        JournalError::CorruptRecord { path, offset, .. } => {
            assert_eq!(path, &segment);
            assert_eq!(*offset, middle);
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&segment.display().to_string()), "{text}");
    assert!(text.contains(&format!("offset {middle}")), "{text}");
    assert!(text.contains("left untouched"), "{text}");
    assert_eq!(fs::read(&segment).expect("read segment"), bytes);
}

/// Recovery reads segments a few MiB at a time: records that straddle its chunks or are
/// larger than one come back whole.
#[tokio::test]
async fn given_records_across_and_larger_than_recovery_read_chunks_when_reopened_should_recover_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    let sizes = [3 << 20, 3 << 20, 100, 9 << 20, 5, 3 << 20];
    let mut expected = Vec::new();
    for (id, size) in (1u64..).zip(sizes) {
        let message = message_with_body(id, (0..size).map(|i| (i % 251) as u8).collect());
        durable(&journal, vec![Op::Add(message.clone())]).await;
        expected.push(message);
    }
    durable(&journal, vec![ack(3)]).await;
    close(&journal);
    expected.remove(2);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.messages, expected);
    assert_eq!(recovered.torn_tail_bytes, 0);
}

/// Damage far into a segment, past recovery's first read chunk, is still told from a torn
/// tail by the sync marks after it (which hold their file offsets).
#[tokio::test]
async fn given_damage_past_the_first_read_chunk_when_reopened_should_fail_at_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    let mut starts = Vec::new();
    for id in 1..=12u64 {
        starts.push(journal.stats().bytes_on_disk);
        durable(&journal, vec![Op::Add(message_with_body(id, vec![7; 1 << 20]))]).await;
    }
    close(&journal);
    let segment = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&segment).expect("read segment");
    let damaged = starts[8];
    assert!(damaged > 8 << 20, "{damaged}");
    bytes[damaged as usize + 12] ^= 0x40;
    fs::write(&segment, &bytes).expect("damage segment");
    match Journal::open(JournalConfig::new(dir.path()), JournalMetrics::unregistered()) {
        Err(JournalError::CorruptRecord { offset, .. }) => assert_eq!(offset, damaged),
        other => panic!("expected CorruptRecord at {damaged}, got {other:?}"),
    }
    assert_eq!(fs::read(&segment).expect("read segment"), bytes, "left untouched");
}

#[rstest]
#[case::flipped_byte(true)]
#[case::cut_short(false)]
#[tokio::test]
async fn given_damaged_record_in_older_segment_when_reopened_should_fail(#[case] flip: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    for id in 1..=3 {
        durable(&journal, vec![add(id)]).await;
    }
    close(&journal);
    let seqs = segment_seqs(dir.path());
    assert_eq!(seqs.len(), 3, "one segment per batch: {seqs:?}");
    let older = segment_path(dir.path(), seqs[1]);
    let mut bytes = fs::read(&older).expect("read segment");
    if flip {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    } else {
        bytes.pop();
    }
    fs::write(&older, &bytes).expect("damage segment");

    let error = Journal::open(
        JournalConfig::new(dir.path()),
        JournalMetrics::unregistered(),
    )
    .expect_err("damage in an older segment must stop recovery");
    assert!(
        matches!(&error, JournalError::CorruptRecord { path, offset, .. }
            if path == &older && *offset == (HEADER_LEN + record::MARK_FRAME_LEN) as u64),
        "{error:?}"
    );
    assert_eq!(fs::read(&older).expect("read segment"), bytes);
}

#[tokio::test]
async fn given_bad_segment_header_when_reopened_should_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (segment, _) = single_segment_journal(dir.path(), 1).await;
    let mut bytes = fs::read(&segment).expect("read segment");
    bytes[0] = b'X';
    fs::write(&segment, &bytes).expect("damage header");

    let error = Journal::open(
        JournalConfig::new(dir.path()),
        JournalMetrics::unregistered(),
    )
    .expect_err("a bad header must stop recovery");
    assert!(
        matches!(&error, JournalError::BadSegmentHeader { path, .. } if path == &segment),
        "{error:?}"
    );
}

#[tokio::test]
async fn given_small_segment_size_when_appending_should_roll_and_recover_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_size: 512,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _) = open(config);
    for id in 1..=40 {
        durable(
            &journal,
            vec![Op::Add(message_with_body(id, vec![b'x'; 100]))],
        )
        .await;
    }
    let stats = journal.stats();
    close(&journal);

    let seqs = segment_seqs(dir.path());
    assert!(seqs.len() >= 5, "expected several segments, got {seqs:?}");
    assert_eq!(stats.segments, seqs.len());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    for &seq in &seqs[..seqs.len() - 1] {
        // A segment overshoots its size by at most the one batch that crossed it.
        assert!(file_len(&segment_path(dir.path(), seq)) < 512 + 200);
    }
    let recovered = reopen(dir.path());
    assert_eq!(recovered.segments, seqs.len());
    assert_eq!(ids(&recovered), (1..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn given_fully_acked_segments_when_acks_are_durable_should_delete_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    for id in 1..=5 {
        durable(&journal, vec![add(id)]).await;
    }
    // Segment 1 stayed empty, so it goes too.
    wait_for_segments(&journal, dir.path(), &[2, 3, 4, 5, 6]).await;
    durable(&journal, (1..=5).map(ack).collect()).await;

    // Only the segment holding the acks is left: it is the one being written.
    wait_for_segments(&journal, dir.path(), &[7]).await;
    let seqs = segment_seqs(dir.path());
    let stats = journal.stats();
    assert_eq!(stats.live_messages, 0);
    assert_eq!(
        stats.bytes_on_disk,
        file_len(&segment_path(dir.path(), seqs[0]))
    );
    close(&journal);
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("journal dir is listable")
        .filter_map(|entry| Some(entry.ok()?.file_name().to_str()?.to_owned()))
        .collect();
    assert!(
        names.iter().all(|name| !name.ends_with(".del")),
        "deleted segments are off the disk after close: {names:?}"
    );
    let recovered = reopen(dir.path());
    assert!(recovered.messages.is_empty());
    assert_eq!(recovered.next_id, MessageId(6));
}

#[tokio::test]
async fn given_segment_whose_ack_refers_to_live_older_segment_should_keep_it_until_older_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await; // segment 2 (segment 1 was empty)
    durable(&journal, vec![ack(1)]).await; // segment 3: depends on 2
    durable(&journal, vec![add(3)]).await; // segment 4
    wait_for_segments(&journal, dir.path(), &[2, 3, 4]).await;

    durable(&journal, vec![ack(2)]).await; // segment 5: frees 2, then 3
    wait_for_segments(&journal, dir.path(), &[4, 5]).await;
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![3]);
}

#[tokio::test]
async fn given_reclamation_state_when_reopened_should_keep_reclaiming_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await;
    durable(&journal, vec![ack(1)]).await;
    durable(&journal, vec![add(3)]).await;
    close(&journal);

    let (journal, recovered) = open(one_batch_per_segment(dir.path()));
    assert_eq!(ids(&recovered), vec![2, 3]);
    // Segment 3 holds only an ack, but the add it cancels still sits in segment 2.
    assert_eq!(segment_seqs(dir.path()), vec![2, 3, 4]);
    durable(&journal, vec![ack(2)]).await;
    wait_for_segments(&journal, dir.path(), &[4, 5]).await;
    close(&journal);

    let recovered = reopen(dir.path());
    assert_eq!(ids(&recovered), vec![3]);
    assert_eq!(recovered.next_id, MessageId(4));
}

#[tokio::test]
async fn given_every_add_reclaimed_when_reopened_should_keep_next_id_monotonic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    for id in 1..=3 {
        durable(&journal, vec![add(id)]).await;
    }
    durable(&journal, (1..=3).map(ack).collect()).await;
    // Harmless: id 2 is no longer known. It moves the journal to a segment without adds.
    durable(&journal, vec![ack(2)]).await;
    close(&journal);
    assert_eq!(segment_seqs(dir.path()).len(), 1);

    let recovered = reopen(dir.path());
    assert!(recovered.messages.is_empty());
    assert_eq!(recovered.next_id, MessageId(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_200_concurrent_appends_when_committed_should_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = JournalMetrics::register(&mut registry);
    let (journal, _) =
        Journal::open(JournalConfig::new(dir.path()), metrics).expect("journal opens");
    let tasks: Vec<_> = (0..200)
        .map(|id| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(vec![add(id)]).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task ran").expect("append is durable");
    }
    let stats = journal.stats();
    close(&journal);

    assert_eq!(stats.records_appended, 200);
    assert!(
        stats.batches < 200,
        "no group commit: {} batches",
        stats.batches
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    assert!(text.contains("duomq_journal_records_total 200"), "{text}");
    assert!(
        text.contains(&format!("duomq_journal_batches_total {}", stats.batches)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "duomq_journal_fsync_seconds_count {}",
            stats.batches
        )),
        "{text}"
    );
    for name in [
        "duomq_journal_bytes_written_total",
        "duomq_journal_segments 1",
        "duomq_journal_write_errors_total 0",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    assert_eq!(reopen(dir.path()).messages.len(), 200);
}

#[tokio::test]
async fn given_idle_journal_when_appending_inline_should_commit_on_the_calling_thread_with_waiting_lazy_acks() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1)]).await;
    wait_until("the writer thread is idle", || journal.shared.committer.is_idle()).await;
    drop(journal.append_lazy(vec![ack(1)]));

    let inline = journal.append_inline(vec![add(2)]).now_or_never();

    assert!(matches!(inline, Some(Ok(()))), "committed before returning: {inline:?}");
    let stats = journal.stats();
    assert_eq!((stats.inline_batches, stats.records_appended), (1, 3), "{stats:?}");
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![2], "the lazy ack rode along");
}

#[tokio::test]
async fn given_a_record_queued_for_the_writer_when_appending_inline_should_not_overtake_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    for id in 0..20 {
        // Back to back: the ack, inline if it could, must land after the queued add.
        let added = journal.append(vec![add(id)]);
        let acked = journal.append_inline(vec![ack(id)]);
        acked.await.expect("ack is durable");
        added.await.expect("add is durable");
    }
    close(&journal);
    assert!(reopen(dir.path()).messages.is_empty());
}

#[tokio::test]
async fn given_concurrent_load_or_a_backup_when_appending_inline_should_leave_it_to_the_writer_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    // The last batch carried several records: producers are concurrent.
    journal.shared.committer.set_last_sync_records(5);
    journal.append_inline(vec![add(1)]).await.expect("durable");
    assert_eq!(journal.stats().inline_batches, 0);
    // That batch carried one: the next lone record is committed inline.
    wait_until("the writer thread is idle", || journal.shared.committer.is_idle()).await;
    journal.append_inline(vec![add(2)]).await.expect("durable");
    assert_eq!(journal.stats().inline_batches, 1);
    // A connected backup copies batches while the live syncs them, on the caller's runtime.
    let replica = journal.replication_gate().register();
    journal.append_inline(vec![add(3)]).await.expect("durable");
    assert_eq!(journal.stats().inline_batches, 1);
    journal.replication_gate().remove(replica);
    wait_until("the writer thread is idle", || journal.shared.committer.is_idle()).await;
    journal.append_inline(vec![add(4)]).await.expect("durable");
    assert_eq!(journal.stats().inline_batches, 2);
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![1, 2, 3, 4]);
    let result = journal.append_inline(vec![add(5)]).await;
    assert!(matches!(result, Err(JournalError::Closed)), "{result:?}");
}

#[tokio::test]
async fn given_add_and_ack_queued_back_to_back_when_reopened_should_keep_call_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    let added = journal.append(vec![add(1)]);
    let acked = journal.append(vec![ack(1)]);
    acked.await.expect("ack is durable");
    added.await.expect("add is durable");
    close(&journal);
    assert!(reopen(dir.path()).messages.is_empty());
}

#[tokio::test]
async fn given_closed_journal_when_appending_should_fail_with_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    let before_close = journal.append(vec![add(1)]);
    close(&journal);
    close(&journal);
    before_close
        .await
        .expect("appended before close is durable");
    let result = journal.clone().append(vec![add(2)]).await;
    assert!(matches!(result, Err(JournalError::Closed)), "{result:?}");
    assert_eq!(ids(&reopen(dir.path())), vec![1]);
}

#[test]
fn given_open_journal_when_opened_again_should_fail_to_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    let error = Journal::open(
        JournalConfig::new(dir.path()),
        JournalMetrics::unregistered(),
    )
    .expect_err("second open must fail");
    assert!(matches!(error, JournalError::Lock { .. }), "{error:?}");
    close(&journal);
    reopen(dir.path());
}

#[tokio::test]
async fn given_oversized_record_when_appending_should_refuse_it_without_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    let body = vec![0; MAX_RECORD_PAYLOAD];
    let result = journal
        .append(vec![Op::Add(message_with_body(1, body))])
        .await;
    assert!(
        matches!(result, Err(JournalError::RecordTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(journal.stats().records_appended, 0);
    close(&journal);
}

#[rstest]
#[case::interrupted_creation(".tmp")]
#[case::interrupted_deletion(".del")]
#[tokio::test]
async fn given_leftover_segment_file_when_reopened_should_ignore_and_remove_it(
    #[case] suffix: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _) = single_segment_journal(dir.path(), 1).await;
    let leftover = dir
        .path()
        .join(format!("{}{suffix}", SegmentSeq(2).file_name()));
    fs::write(&leftover, b"half a header").expect("write leftover");
    assert_eq!(ids(&reopen(dir.path())), vec![1]);
    assert!(!leftover.exists());
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct TmpfsMount {
    dir: tempfile::TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|error| format!("no tempdir: {error}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|error| format!("could not run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount failed (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Lazy, so a file some failed assertion left open cannot keep the mount alive.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Whether the journal in `dir` holds one segment, one prepared next segment (header
/// written) and nothing being deleted or created.
fn housekeeping_done(dir: &Path) -> bool {
    let mut segments = 0;
    let mut prepared = 0;
    for entry in fs::read_dir(dir).expect("journal dir is listable").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if SegmentSeq::parse_file_name(&name).is_some() {
            segments += 1;
        } else if name.ends_with(".seg.next") && len == HEADER_LEN as u64 {
            prepared += 1;
        } else if name.ends_with(".del") || name.ends_with(".tmp") || name.ends_with(".next") {
            return false;
        }
    }
    segments == 1 && prepared == 1
}

/// Writes 4 KiB chunks to `path` until the filesystem refuses more.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut file = fs::File::create(path).expect("create filler");
    let chunk = [0xaa; 4096];
    while file.write_all(&chunk).is_ok() {}
    // Flushing to tmpfs cannot fail once the pages are allocated; ignore the result.
    let _ = file.flush();
}

#[rstest]
#[case::writing_records(64 * 1024)]
#[case::rolling_segments(1)]
#[tokio::test]
async fn given_full_disk_when_appending_should_fail_and_recover_once_space_returns(
    #[case] segment_size: u64,
) {
    let mount = match TmpfsMount::new("256k") {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("skipping the full-disk test: {why}");
            return;
        }
    };
    let dir = mount.path().join("journal");
    let config = JournalConfig {
        segment_size,
        ..JournalConfig::new(&dir)
    };
    let (journal, _) = open(config.clone());
    let big = |id: u64| vec![Op::Add(message_with_body(id, vec![b'm'; 3000]))];
    // Settle the journal before the disk fills. With 1-byte segments the first append
    // rolls, and the housekeeper deletes the empty first segment; it also prepares the
    // next segment. Either one landing after the disk is full frees or takes a page at a
    // random point of what follows, and "the disk is still full" would depend on it.
    journal
        .append(big(1))
        .await
        .expect("append before the disk fills");
    let mut ok_ids = vec![1];
    wait_until(
        "the housekeeper has deleted what it was given and prepared the next segment",
        || journal.stats().segments == 1 && housekeeping_done(&dir),
    )
    .await;
    let filler = mount.path().join("filler");
    fill_disk(&filler);

    let mut failure = None;
    for id in 2..=64 {
        match journal.append(big(id)).await {
            Ok(()) => ok_ids.push(id),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let failure = failure.expect("a full disk must fail an append");
    assert!(
        matches!(
            failure,
            JournalError::Write { .. }
                | JournalError::Sync { .. }
                | JournalError::CreateSegment { .. }
        ),
        "{failure:?}"
    );
    assert!(
        journal.append(big(100)).await.is_err(),
        "the disk is still full"
    );
    assert_eq!(journal.stats().write_errors, 2);
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .expect("journal dir is listable")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "a failed roll left {leftovers:?}");

    fs::remove_file(&filler).expect("remove filler");
    journal
        .append(big(200))
        .await
        .expect("append once space returns");
    ok_ids.push(200);
    close(&journal);

    let (journal, recovered) = open(config);
    assert_eq!(ids(&recovered), ok_ids);
    assert_eq!(
        recovered.torn_tail_bytes, 0,
        "failed batches were cut off at once"
    );
    close(&journal);
}

#[tokio::test]
async fn given_lazy_ack_when_a_sync_append_follows_should_share_its_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await;
    let before = journal.stats().batches;
    let lazy = journal.append_lazy(vec![ack(1)]);
    durable(&journal, vec![add(3)]).await;
    lazy.await
        .expect("lazy ack written with the next group commit");
    assert_eq!(
        journal.stats().batches,
        before + 1,
        "the lazy ack cost no batch of its own"
    );
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![2, 3]);
}

#[tokio::test]
async fn given_idle_writer_when_a_lazy_ack_comes_should_wake_and_write_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await;
    close(&journal);
    // A fresh writer has committed nothing, so it sleeps without a timer.
    let (journal, _) = open(JournalConfig::new(dir.path()));
    tokio::time::timeout(Duration::from_secs(10), journal.append_lazy(vec![ack(1)]))
        .await
        .expect("an idle writer is woken for a lazy record")
        .expect("lazy ack written");
    assert_eq!(journal.stats().batches, 1, "written as a batch of its own");
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![2]);
}

#[tokio::test]
async fn given_only_lazy_acks_should_be_written_within_the_lazy_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await;
    let started = std::time::Instant::now();
    let a = journal.append_lazy(vec![ack(1)]);
    let b = journal.append_lazy(vec![ack(2)]);
    a.await.expect("lazy ack written");
    b.await.expect("lazy ack written");
    // Generous bound: the point is that it is written without any further sync append.
    assert!(
        started.elapsed() < LAZY_SYNC_DELAY * 50,
        "took {:?}",
        started.elapsed()
    );
    // Simulate a crash right after: no close, the journal is dropped with its thread.
    drop(journal);
    let recovered = loop {
        match Journal::open(
            JournalConfig::new(dir.path()),
            JournalMetrics::unregistered(),
        ) {
            Ok((j, r)) => {
                close(&j);
                break r;
            }
            Err(JournalError::Lock { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
            Err(e) => panic!("reopen failed: {e:?}"),
        }
    };
    assert!(recovered.messages.is_empty());
}

#[tokio::test]
async fn given_open_journal_when_rolling_should_switch_to_the_segment_prepared_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    let prepared = prepared_path(dir.path(), 2);
    wait_until("segment 2 is prepared", || prepared.exists()).await;
    let inode = fs::metadata(&prepared).expect("prepared segment").ino();

    durable(&journal, vec![add(1)]).await;

    assert!(!prepared.exists(), "the roll renamed the prepared segment");
    let rolled_to = fs::metadata(segment_path(dir.path(), 2)).expect("segment 2");
    assert_eq!(
        rolled_to.ino(),
        inode,
        "segment 2 is the file prepared before the roll"
    );
    let following = prepared_path(dir.path(), 3);
    wait_until("segment 3 is prepared", || following.exists()).await;
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![1]);
}

#[tokio::test]
async fn given_crash_with_unused_prepared_segment_when_reopened_should_recover_everything_and_keep_appending(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_size: 512,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _) = open(config.clone());
    for id in 1..=10 {
        durable(
            &journal,
            vec![Op::Add(message_with_body(id, vec![b'x'; 100]))],
        )
        .await;
    }
    durable(&journal, vec![ack(4)]).await;
    let last = *segment_seqs(dir.path()).last().expect("a segment");
    let prepared = prepared_path(dir.path(), last + 1);
    wait_until("the next segment is prepared", || prepared.exists()).await;
    let crashed = copy_journal_dir(dir.path());
    close(&journal);

    let (journal, recovered) = open(JournalConfig {
        dir: crashed.path().to_path_buf(),
        ..config
    });
    let expected: Vec<u64> = (1..=10).filter(|&id| id != 4).collect();
    assert_eq!(ids(&recovered), expected);
    assert_eq!(recovered.next_id, MessageId(11));
    assert_eq!(recovered.torn_tail_bytes, 0);
    assert_eq!(
        segment_seqs(crashed.path()).last(),
        Some(&last),
        "the unused one is no segment"
    );
    for id in 11..=20 {
        durable(
            &journal,
            vec![Op::Add(message_with_body(id, vec![b'x'; 100]))],
        )
        .await;
    }
    close(&journal);
    let expected: Vec<u64> = (1..=20).filter(|&id| id != 4).collect();
    assert_eq!(ids(&reopen(crashed.path())), expected);
}

#[tokio::test]
async fn given_crash_that_undid_the_rename_of_a_rolled_segment_when_reopened_should_adopt_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await; // segment 2
    durable(&journal, vec![add(3), ack(1)]).await; // segment 3
    wait_for_segments(&journal, dir.path(), &[2, 3]).await;
    wait_until("segment 4 is prepared", || {
        prepared_path(dir.path(), 4).exists()
    })
    .await;
    let crashed = copy_journal_dir(dir.path());
    close(&journal);
    // The rename at the roll to segment 3 never reached the disk, its records did.
    fs::rename(
        segment_path(crashed.path(), 3),
        prepared_path(crashed.path(), 3),
    )
    .expect("undo rename");

    let (journal, recovered) = open(one_batch_per_segment(crashed.path()));
    assert_eq!(ids(&recovered), vec![2, 3]);
    assert!(
        segment_path(crashed.path(), 3).exists(),
        "renamed into place"
    );
    assert!(!prepared_path(crashed.path(), 3).exists());
    durable(&journal, vec![ack(2)]).await;
    close(&journal);
    assert_eq!(ids(&reopen(crashed.path())), vec![3]);
}

#[tokio::test]
async fn given_prepared_segment_with_stale_floor_when_every_add_is_reclaimed_should_keep_next_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    // Segment 2; segment 3 is prepared at this roll, while next_id is still 0.
    durable(&journal, vec![add(1), add(2), add(3), ack(3)]).await;
    // Segment 3 holds acks of ids below 3 only, and segment 2 is reclaimed.
    durable(&journal, vec![ack(1), ack(2)]).await;
    wait_for_segments(&journal, dir.path(), &[3]).await;
    close(&journal);

    let recovered = reopen(dir.path());
    assert!(recovered.messages.is_empty());
    assert_eq!(recovered.next_id, MessageId(4));
}

#[tokio::test]
async fn given_crash_right_after_a_roll_when_older_segments_are_reclaimed_should_keep_next_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    // Segment 2, fully acked in itself; segment 3 is prepared while next_id is still 0.
    durable(
        &journal,
        vec![add(1), add(2), add(3), ack(1), ack(2), ack(3)],
    )
    .await;
    wait_for_segments(&journal, dir.path(), &[2]).await;
    wait_until("segment 3 is prepared", || {
        prepared_path(dir.path(), 3).exists()
    })
    .await;
    let crashed = copy_journal_dir(dir.path());
    close(&journal);
    // The crash came right after the roll renamed segment 3 into place.
    fs::rename(
        prepared_path(crashed.path(), 3),
        segment_path(crashed.path(), 3),
    )
    .expect("roll");

    let (journal, recovered) = open(JournalConfig::new(crashed.path()));
    assert_eq!(recovered.next_id, MessageId(4));
    // Segment 2 goes before anything is written to segment 3.
    wait_for_segments(&journal, crashed.path(), &[3]).await;
    close(&journal);
    assert_eq!(reopen(crashed.path()).next_id, MessageId(4));
}

#[tokio::test]
async fn given_segment_that_cannot_be_deleted_should_keep_newer_ones_that_depend_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(one_batch_per_segment(dir.path()));
    durable(&journal, vec![add(1), add(2)]).await; // segment 2
    durable(&journal, vec![ack(1)]).await; // segment 3: depends on 2
    durable(&journal, vec![add(3)]).await; // segment 4
    wait_for_segments(&journal, dir.path(), &[2, 3, 4]).await;
    // A non-empty directory where segment 2 is moved out of the journal makes that fail.
    let blocker = SegmentSeq(2).retired_path(dir.path());
    fs::create_dir(&blocker).expect("directory in the way");
    fs::write(blocker.join("pin"), b"").expect("pin the directory");

    durable(&journal, vec![ack(2)]).await; // segment 5: frees 2, then 3
                                           // Closing makes a last attempt at the queued deletions and waits for it.
    close(&journal);
    assert!(
        segment_path(dir.path(), 3).exists(),
        "segment 3 may only go once segment 2 is gone"
    );

    assert!(segment_path(dir.path(), 2).exists());
    fs::remove_dir_all(&blocker).expect("unblock");
    let (journal, recovered) = open(one_batch_per_segment(dir.path()));
    assert_eq!(ids(&recovered), vec![3]);
    wait_for_segments(&journal, dir.path(), &[4, 5]).await;
    close(&journal);
}

#[tokio::test]
async fn given_mirrored_segments_should_preallocate_the_newest_trim_older_and_recover_as_a_journal() {
    let live = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_size: 512,
        ..JournalConfig::new(live.path())
    };
    let (journal, _) = open(config);
    for id in 1..=8 {
        durable(&journal, vec![Op::Add(message_with_body(id, vec![b'x'; 200]))]).await;
    }
    durable(&journal, vec![ack(3)]).await;
    close(&journal);
    let seqs = segment_seqs(live.path());
    assert!(seqs.len() >= 2, "several segments to mirror: {seqs:?}");

    let backup = tempfile::tempdir().expect("tempdir");
    let mut mirror = Mirror::open(backup.path()).expect("mirror opens");
    let mut copied = Vec::new();
    for &seq in &seqs {
        let bytes = fs::read(SegmentSeq(seq).path(live.path())).expect("read live segment");
        // In two chunks, as the live streams them.
        let half = bytes.len() / 2;
        mirror.write(seq, 0, &bytes[..half]).expect("mirror write");
        mirror.write(seq, half as u64, &bytes[half..]).expect("mirror write");
        mirror.sync().expect("mirror sync");
        copied.push((seq, bytes.len() as u64));
    }
    let (&(newest, newest_len), older) = copied.split_last().expect("segments");
    for &(seq, len) in older {
        assert_eq!(file_len(&SegmentSeq(seq).path(backup.path())), len, "segment {seq} trimmed to its records");
    }
    assert!(
        file_len(&SegmentSeq(newest).path(backup.path())) > newest_len,
        "the newest mirrored segment is preallocated"
    );
    drop(mirror);

    let expected: Vec<u64> = (1..=8).filter(|&id| id != 3).collect();
    assert_eq!(ids(&reopen(backup.path())), expected);
}

fn with_dedup_id(id: u64, dedup: &str) -> Op {
    let mut message = message(id);
    message.headers.push(("dedup-id".into(), dedup.into()));
    Op::Add(message)
}

#[tokio::test]
async fn given_remembered_ids_when_their_segments_are_reclaimed_should_survive_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig { remember_header: Some("dedup-id".into()), ..one_batch_per_segment(dir.path()) };
    let (journal, _) = open(config.clone());
    for id in 1..=4 {
        durable(&journal, vec![with_dedup_id(id, &format!("p-{id}"))]).await;
        durable(&journal, vec![ack(id)]).await;
    }
    // Every add is acked, so only the segment being written is left.
    wait_for_segments(&journal, dir.path(), &[9]).await;
    close(&journal);

    let (journal, recovered) = open(config.clone());
    assert_eq!(recovered.remembered, ["p-1", "p-2", "p-3", "p-4"], "ids outlive the segments of their adds");
    durable(&journal, vec![with_dedup_id(5, "p-5")]).await;
    durable(&journal, vec![ack(5)]).await;
    wait_for_segments(&journal, dir.path(), &[11]).await;
    close(&journal);
    let (journal, recovered) = open(config);
    assert_eq!(recovered.remembered, ["p-1", "p-2", "p-3", "p-4", "p-5"]);
    assert!(recovered.messages.is_empty());
    close(&journal);
}

#[tokio::test]
async fn given_crash_before_the_first_batch_of_a_segment_should_keep_the_segment_carrying_the_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig { remember_header: Some("dedup-id".into()), ..JournalConfig::new(dir.path()) };
    let (journal, _) = open(config.clone());
    durable(&journal, vec![with_dedup_id(1, "p-1"), ack(1)]).await;
    close(&journal);
    // A segment rolled to but never written (the crash came before its first batch): the
    // window is in the older one only, which therefore stays.
    let next = SegmentSeq(2);
    segment::create(dir.path(), segment::SegmentHeader { seq: next, id_floor: 2 }, true).expect("create segment");
    let (journal, recovered) = open(config.clone());
    assert_eq!(recovered.remembered, ["p-1"]);
    close(&journal);
    assert_eq!(segment_seqs(dir.path()), vec![1, 2]);
    let (journal, recovered) = open(config);
    assert_eq!(recovered.remembered, ["p-1"]);
    close(&journal);
}

/// Frames of `count` records `first..` as the writer would write them.
fn frames(first: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for id in first..first + count {
        record::encode_frame(&[add(id)], &mut out);
    }
    out
}

fn segment_header(seq: u64) -> Vec<u8> {
    segment::SegmentHeader { seq: SegmentSeq(seq), id_floor: 0 }.encode().to_vec()
}

#[rstest]
#[case::whole(usize::MAX)]
#[case::byte_by_byte(1)]
#[case::odd_chunks(7)]
fn given_records_mirrored_in_any_chunks_should_count_them_across_segments(#[case] chunk: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mirror = Mirror::open(dir.path()).expect("open mirror");
    mirror.set_first_records([(1, 100)]);
    let one = [segment_header(1), frames(1, 5)].concat();
    let two = [segment_header(2), frames(6, 3)].concat();
    for (seq, data) in [(1, &one), (2, &two)] {
        for (n, piece) in data.chunks(chunk.min(data.len())).enumerate() {
            mirror.write(seq, (n * chunk.min(data.len())) as u64, piece).expect("mirror write");
        }
        if seq == 1 {
            assert_eq!(mirror.records(), 105);
        }
    }
    assert_eq!(mirror.records(), 108, "segment 2 follows segment 1");
    mirror.sync().expect("sync");
}

#[test]
fn given_a_cut_after_a_copied_batch_when_a_shorter_batch_follows_should_recover_no_ghost_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mirror = Mirror::open(dir.path()).expect("open mirror");
    let good = [segment_header(1), frames(1, 2)].concat();
    mirror.write(1, 0, &good).expect("write");
    // A batch of three records the live wrote, the backup copied, and the live's
    // fdatasync then failed; the live cut it off and wrote a batch of one in its place.
    let failed = frames(10, 3);
    mirror.write(1, good.len() as u64, &failed).expect("write");
    mirror.truncate(1, good.len() as u64).expect("cut");
    assert_eq!(mirror.records(), 2);
    mirror.write(1, good.len() as u64, &frames(20, 1)).expect("write");
    mirror.sync().expect("sync");
    assert_eq!(mirror.records(), 3);
    drop(mirror);
    let recovered = reopen(dir.path());
    assert_eq!(ids(&recovered), vec![1, 2, 20], "records 11 and 12 of the failed batch are gone");
}

#[test]
fn given_a_mirror_with_a_torn_tail_when_resumed_should_describe_and_keep_only_its_valid_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mirror = Mirror::open(dir.path()).expect("open mirror");
    let one = [segment_header(1), frames(1, 4)].concat();
    let two = [segment_header(2), frames(5, 2)].concat();
    mirror.write(1, 0, &one).expect("write");
    mirror.write(2, 0, &two).expect("write");
    let torn = &frames(7, 1)[..10];
    mirror.write(2, two.len() as u64, torn).expect("write");
    mirror.sync().expect("sync");
    drop(mirror);

    let mut mirror = Mirror::open(dir.path()).expect("reopen mirror");
    let digests = mirror.digests().expect("digests");
    let lens: Vec<(u64, u64)> = digests.iter().map(|d| (d.seq, d.len)).collect();
    assert_eq!(lens, [(1, one.len() as u64), (2, two.len() as u64)]);
    let file = fs::File::open(segment_path(dir.path(), 2)).expect("open");
    assert_eq!(digests[1].crc, prefix_digest(&file, two.len() as u64).expect("digest"));
    // The live reclaimed segment 1 and confirmed segment 2.
    mirror.resume(&[(2, two.len() as u64)].into_iter().collect()).expect("resume");
    mirror.set_first_records([(2, 4)]);
    assert_eq!(segment_seqs(dir.path()), vec![2]);
    assert_eq!(file_len(&segment_path(dir.path(), 2)), two.len() as u64, "the torn tail is cut");
    mirror.write(2, two.len() as u64, &frames(7, 1)).expect("write");
    assert_eq!(mirror.records(), 7);
    mirror.sync().expect("sync");
    drop(mirror);
    assert_eq!(ids(&reopen(dir.path())), vec![5, 6, 7]);
}

#[tokio::test]
async fn given_a_failed_fdatasync_after_backups_could_copy_the_batch_should_cut_it_and_tell_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new(FaultMetrics::default());
    let (journal, _) = open(JournalConfig { faults: faults.clone(), ..JournalConfig::new(dir.path()) });
    let gate = journal.replication_gate();
    let backup = gate.register();
    durable(&journal, vec![add(1)]).await;
    let before = *journal.written_position().borrow();
    assert!(gate.acked(backup, before, true));

    faults.set(FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_next_syncs: 1, ..DiskFault::default() }) }).expect("set");
    let failed = journal.append(vec![add(2), add(3)]).await;
    assert!(matches!(failed, Err(JournalError::Sync { .. })), "{failed:?}");
    assert_eq!(*journal.written_position().borrow(), before, "the batch is no longer offered to backups");
    assert_eq!(gate.take_cut(backup), Some(before.at()), "backups that copied it are told to cut it");
    let stale = JournalPosition { offset: before.offset + 100, ..before };
    assert!(!gate.acked(backup, stale, true), "acks are not counted until the backup cut its copy");
    gate.cut_confirmed(backup);
    gate.remove(backup);

    durable(&journal, vec![add(4)]).await;
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![1, 4]);
}

#[tokio::test]
async fn given_every_fdatasync_failing_should_fail_appends_until_the_disk_heals_and_keep_none_of_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new(FaultMetrics::default());
    let (journal, _) = open(JournalConfig { faults: faults.clone(), ..JournalConfig::new(dir.path()) });
    durable(&journal, vec![add(1)]).await;
    faults.set(FaultRules { frames: Vec::new(), disk: Some(DiskFault { fail_all_syncs: true, ..DiskFault::default() }) }).expect("set");
    for id in 2..=4 {
        let failed = journal.append(vec![add(id)]).await;
        assert!(matches!(failed, Err(JournalError::Sync { .. })), "{failed:?}");
    }
    assert_eq!(faults.status().disk.map(|d| d.failed), Some(3));
    faults.clear().expect("clear");
    durable(&journal, vec![add(5)]).await;
    close(&journal);
    assert_eq!(ids(&reopen(dir.path())), vec![1, 5]);
}

/// Extents of `file` as (logical start, length, unwritten), after syncing it; `None` where
/// the file system cannot map them (FIEMAP is not supported everywhere, tmpfs among them).
fn extents(file: &fs::File) -> Option<Vec<(u64, u64, bool)>> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 0x1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const MAX_EXTENTS: usize = 64;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; MAX_EXTENTS],
    }
    let mut map = Map {
        start: 0,
        length: u64::MAX,
        flags: FIEMAP_FLAG_SYNC,
        mapped: 0,
        count: MAX_EXTENTS as u32,
        reserved: 0,
        extents: [Extent::default(); MAX_EXTENTS],
    };
    // SAFETY: FS_IOC_FIEMAP writes at most `count` extents into the array that follows
    // the header, which `map` holds; the descriptor stays open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Map) };
    if rc != 0 {
        return None;
    }
    let mapped = (map.mapped as usize).min(MAX_EXTENTS);
    Some(
        map.extents[..mapped]
            .iter()
            .map(|e| (e.logical, e.length, e.flags & FIEMAP_EXTENT_UNWRITTEN != 0))
            .collect(),
    )
}

#[tokio::test]
async fn given_lone_sync_appends_should_write_zeros_ahead_so_later_ones_overwrite_initialized_blocks(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(JournalConfig::new(dir.path()));
    durable(&journal, vec![add(1)]).await;
    let first_end = journal.stats().bytes_on_disk;
    for id in 2..=3 {
        durable(&journal, vec![add(id)]).await;
    }
    let end = journal.stats().bytes_on_disk;
    let file = fs::File::open(segment_path(dir.path(), 1)).expect("open segment");
    let len = file.metadata().expect("segment metadata").len();
    let Some(extents) = extents(&file).filter(|e| e.iter().any(|&(_, _, unwritten)| unwritten)) else {
        eprintln!("skipping: this file system does not map preallocated space as unwritten extents");
        close(&journal);
        return;
    };
    // The first append wrote 256 KiB of zeros after its record; the next two landed in
    // them. Those blocks are written; what lies beyond is still only preallocated.
    let zeroed_to = (first_end + 256 * 1024) / 4096 * 4096;
    assert!(end < zeroed_to, "the later records fit in the zeros");
    assert!(
        !extents.iter().any(|&(start, _, unwritten)| unwritten && start < zeroed_to),
        "blocks before {zeroed_to} are unwritten: {extents:?}"
    );
    assert!(
        extents.iter().any(|&(start, _, unwritten)| unwritten && start >= end),
        "the preallocated rest stays unwritten (not zero-filled whole): {extents:?}"
    );
    assert!(len > zeroed_to, "the file was preallocated past the zeros ({len} bytes)");
    close(&journal);

    // Zeros after the records read as their end: nothing torn, nothing lost.
    let recovered = reopen(dir.path());
    assert_eq!(ids(&recovered), vec![1, 2, 3]);
    assert_eq!(recovered.torn_tail_bytes, 0);
}
