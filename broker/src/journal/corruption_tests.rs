//! Damage versus torn tails, on crash copies of journals written through the real writer:
//! what recovery refuses (naming file and offset, changing nothing), what it still cuts on
//! its own, and what `salvage` makes of the damage.
//!
//! A crash copy is the journal directory copied while the journal is open, which is what
//! a kill -9 leaves (the page cache is what survives it); the copy is then damaged the
//! way a bad disk would.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rstest::rstest;

use super::record::{self, FrameRead, MARK_FRAME_LEN};
use super::segment::{SegmentSeq, HEADER_LEN};
use super::*;

const BODY_LEN: usize = 1024;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

fn add(id: u64) -> Op {
    Op::Add(StoredMessage {
        id: MessageId(id),
        destination: "/queue/orders".into(),
        headers: vec![("receipt".into(), format!("r-{id}"))],
        body: Bytes::from(vec![b'x'; BODY_LEN]),
    })
}

fn open(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
    Journal::open(JournalConfig::new(dir), JournalMetrics::unregistered())
}

fn ids(recovered: &Recovered) -> Vec<u64> {
    recovered.messages.iter().map(|m| m.id.0).collect()
}

/// Every file in `dir` but the lock, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("journal dir is listable")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != super::lock::LOCK_FILE_NAME)
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).expect("read journal file");
            (name, bytes)
        })
        .collect()
}

/// A crash copy of a journal that committed `batches` group commits of `per_batch` adds
/// each (ids from 1), all in its first segment, with the newer segment prepared.
async fn crash_copy(batches: u64, per_batch: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path()).expect("open a fresh journal");
    let mut id = 1;
    for _ in 0..batches {
        let pending: Vec<_> = (0..per_batch)
            .map(|_| {
                id += 1;
                journal.append(vec![add(id - 1)])
            })
            .collect();
        for append in pending {
            append.await.expect("append is durable");
        }
    }
    let prepared = SegmentSeq(2).prepared_path(dir.path());
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while fs::metadata(&prepared).map(|m| m.len()).unwrap_or(0) != HEADER_LEN as u64 {
        assert!(Instant::now() < deadline, "the housekeeper did not prepare segment 2 in {SETTLE_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let copy = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in snapshot(dir.path()) {
        fs::write(copy.path().join(name), bytes).expect("write crash copy");
    }
    journal.close().expect("close the original");
    copy
}

/// Where each record of `data` starts, and whether it is a sync mark.
fn records(data: &[u8]) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while let FrameRead::Valid { payload, end } = record::read_frame(data, at) {
        let mark = record::decode_payload(payload).expect("decodes").mark.is_some();
        out.push((at, mark));
        at = end;
    }
    out
}

/// The start of the record holding byte `at`.
fn record_holding(data: &[u8], at: usize) -> usize {
    records(data).into_iter().map(|(start, _)| start).take_while(|&start| start <= at).last().expect("a record")
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    SegmentSeq(seq).path(dir)
}

/// Damage done to a crash copy; returns the offset recovery must name.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The third byte of the length of the add nearest the middle of the segment.
    FlippedLengthByte,
    /// The 4 KiB page nearest the middle of the segment, zeroed.
    ZeroedPage,
}

impl Damage {
    fn apply(self, path: &Path) -> usize {
        let mut data = fs::read(path).expect("read segment");
        let end = records(&data).last().map(|&(at, _)| at).expect("records");
        let named = match self {
            Damage::FlippedLengthByte => {
                let (at, _) = records(&data)
                    .into_iter()
                    .find(|&(at, mark)| !mark && at >= end / 2)
                    .expect("an add past the middle");
                data[at + 2] ^= 0x01;
                at
            }
            Damage::ZeroedPage => {
                let page = end / 2 / 4096 * 4096;
                let named = record_holding(&data, page);
                data[page..page + 4096].fill(0);
                named
            }
        };
        fs::write(path, &data).expect("damage segment");
        named
    }
}

#[rstest]
#[case::flipped_length_byte(Damage::FlippedLengthByte)]
#[case::zeroed_page(Damage::ZeroedPage)]
#[tokio::test]
async fn given_damage_mid_newest_segment_when_opened_should_refuse_naming_file_and_offset_and_change_no_file(
    #[case] damage: Damage,
) {
    let copy = crash_copy(300, 8).await;
    let path = segment(copy.path(), 1);
    let offset = damage.apply(&path);
    let before = snapshot(copy.path());

    let error = open(copy.path()).expect_err("damage before synced records must stop start-up");

    match &error {
        JournalError::CorruptRecord { path: named, offset: at, .. } => {
            assert_eq!((named, *at), (&path, offset as u64), "{error}");
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    let text = error.to_string();
    for expected in [path.display().to_string(), format!("offset {offset}"), "not a torn write".into(), "salvage".into()] {
        assert!(text.contains(&expected), "{expected:?} missing from: {text}");
    }
    assert_eq!(snapshot(copy.path()), before, "a refused recovery changes no file");
}

#[rstest]
#[case::cut_mid_record(true)]
#[case::cut_mid_mark(false)]
#[tokio::test]
async fn given_last_batch_torn_by_a_crash_with_zeros_after_when_opened_should_cut_it_and_keep_every_earlier_batch(
    #[case] in_record: bool,
) {
    let copy = crash_copy(50, 8).await;
    let path = segment(copy.path(), 1);
    let mut data = fs::read(&path).expect("read segment");
    let all = records(&data);
    let (last_mark, _) = *all.iter().rfind(|(_, mark)| *mark).expect("a mark");
    let adds_before = all.iter().filter(|&&(at, mark)| !mark && at < last_mark).count() as u64;
    // A kill -9 in the middle of the last batch's write: a prefix of it, then the
    // preallocated zeros (a partial page of the batch included).
    let tear = if in_record { last_mark + MARK_FRAME_LEN + 100 } else { last_mark + 5 };
    data[tear..].fill(0);
    fs::write(&path, &data).expect("tear segment");

    let (journal, recovered) = open(copy.path()).expect("a torn tail recovers on its own");
    let kept = if in_record { last_mark + MARK_FRAME_LEN } else { last_mark };
    assert_eq!(ids(&recovered), (1..=adds_before).collect::<Vec<_>>());
    assert_eq!(recovered.torn_tail_bytes, (data.len() - kept) as u64);
    journal.append(vec![add(1000)]).await.expect("appends after recovery");
    journal.close().expect("close");
    let (journal, recovered) = open(copy.path()).expect("reopens");
    assert_eq!(recovered.messages.last().map(|m| m.id.0), Some(1000));
    journal.close().expect("close");
}

#[tokio::test]
async fn given_damaged_older_segment_in_a_crash_copy_when_opened_should_refuse_and_change_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig { segment_size: 64 * 1024, ..JournalConfig::new(dir.path()) };
    let (journal, _) = Journal::open(config, JournalMetrics::unregistered()).expect("open");
    for id in 1..=200 {
        journal.append(vec![add(id)]).await.expect("append");
    }
    journal.close().expect("close");
    let older = segment(dir.path(), 2);
    let offset = Damage::ZeroedPage.apply(&older);
    let before = snapshot(dir.path());

    let error = open(dir.path()).expect_err("damage in an older segment stops start-up");
    assert!(
        matches!(&error, JournalError::CorruptRecord { path, offset: at, .. } if path == &older && *at == offset as u64),
        "{error:?}"
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[rstest]
#[case::flipped_length_byte(Damage::FlippedLengthByte)]
#[case::zeroed_page(Damage::ZeroedPage)]
#[tokio::test]
async fn given_damage_mid_newest_segment_when_salvaged_should_keep_a_copy_and_recover_every_record_after_it(
    #[case] damage: Damage,
) {
    let copy = crash_copy(300, 8).await;
    let path = segment(copy.path(), 1);
    let original = fs::read(&path).expect("read segment");
    let offset = damage.apply(&path);
    let damaged = fs::read(&path).expect("read segment");
    let salvage_dir = tempfile::tempdir().expect("tempdir");
    let salvage_dir = salvage_dir.path().join("salvage-test");

    let planned = plan_salvage(copy.path(), &salvage_dir).expect("plan");
    assert_eq!(fs::read(&path).expect("read segment"), damaged, "planning changes nothing");
    let actions = salvage(copy.path(), &salvage_dir).expect("salvage");
    assert_eq!(actions, planned);

    let [SalvageAction::Padded { segment: padded, from, to, copy: saved, .. }] = actions.as_slice() else {
        panic!("expected one padding, got {actions:?}");
    };
    assert_eq!((padded, *from), (&path, offset as u64));
    let (from, to) = (*from as usize, *to as usize);
    assert_eq!(fs::read(saved).expect("the copy exists"), damaged[from..to], "the copy holds the bytes replaced");
    assert!(saved.starts_with(&salvage_dir));
    assert_eq!(fs::read(&path).expect("read segment")[to..], damaged[to..], "nothing after the damage changed");

    // What the damage took: the adds whose records lay in from..to of the original.
    let lost: Vec<u64> = records(&original)
        .into_iter()
        .filter(|&(at, mark)| !mark && at >= from && at < to)
        .map(|(at, _)| records(&original).iter().filter(|&&(a, m)| !m && a <= at).count() as u64)
        .collect();
    assert!(!lost.is_empty() && lost.len() < 8 * 2, "lost {lost:?}");
    let (journal, recovered) = open(copy.path()).expect("a salvaged journal opens");
    let expected: Vec<u64> = (1..=300 * 8).filter(|id| !lost.contains(id)).collect();
    assert_eq!(ids(&recovered), expected);
    journal.append(vec![add(5000)]).await.expect("appends after salvage");
    journal.close().expect("close");
    assert_eq!(salvage(copy.path(), &salvage_dir).expect("salvage again"), vec![], "nothing left to salvage");
}

#[tokio::test]
async fn given_damage_with_no_sync_mark_after_it_in_an_older_segment_when_salvaged_should_cut_there_keep_a_copy_and_keep_newer_segments(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every batch rolls to a segment of its own.
    let config = JournalConfig { segment_size: 1, ..JournalConfig::new(dir.path()) };
    let (journal, _) = Journal::open(config, JournalMetrics::unregistered()).expect("open");
    for id in 1..=3 {
        journal.append(vec![add(id)]).await.expect("append");
    }
    journal.close().expect("close");
    let older = segment(dir.path(), 2);
    let mut data = fs::read(&older).expect("read segment");
    let at = HEADER_LEN + MARK_FRAME_LEN;
    let end = data.iter().rposition(|&b| b != 0).expect("records") + 1;
    data[at + 40] ^= 0xff;
    fs::write(&older, &data).expect("damage segment");
    open(dir.path()).expect_err("damage in an older segment stops start-up");
    let salvage_dir = tempfile::tempdir().expect("tempdir");

    let actions = salvage(dir.path(), salvage_dir.path()).expect("salvage");

    let [SalvageAction::Cut { segment: cut, at: cut_at, bytes, copy: saved, .. }] = actions.as_slice() else {
        panic!("expected one cut, got {actions:?}");
    };
    assert_eq!((cut, *cut_at, *bytes), (&older, at as u64, (end - at) as u64));
    assert_eq!(fs::read(saved).expect("the copy exists"), data[at..end]);
    assert_eq!(fs::metadata(&older).expect("segment").len(), at as u64);
    let (journal, recovered) = open(dir.path()).expect("opens after salvage");
    // Segment 1 stays empty (the first batch already rolls), so segment 2 held add 1.
    assert_eq!(ids(&recovered), vec![2, 3], "only the damaged add is gone");
    journal.close().expect("close");
}

#[tokio::test]
async fn given_healthy_journal_when_salvaged_should_do_nothing() {
    let copy = crash_copy(5, 2).await;
    let before = snapshot(copy.path());
    let salvage_dir = copy.path().join("salvage-test");
    assert_eq!(salvage(copy.path(), &salvage_dir).expect("salvage"), vec![]);
    assert_eq!(snapshot(copy.path()), before);
    assert!(!salvage_dir.exists(), "no empty salvage folder");
}

#[tokio::test]
async fn given_open_journal_when_salvaged_should_refuse_without_touching_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(dir.path()).expect("open");
    let error = salvage(dir.path(), &dir.path().join("salvage-test")).expect_err("salvage needs the lock");
    assert!(error.to_string().contains("is another broker using it?"), "{error}");
    journal.close().expect("close");
}

#[tokio::test]
async fn given_bad_header_of_newest_segment_when_opened_or_salvaged_should_refuse_naming_it_and_change_no_file() {
    let copy = crash_copy(5, 2).await;
    let path = segment(copy.path(), 1);
    let mut data = fs::read(&path).expect("read segment");
    data[3] ^= 0xff;
    fs::write(&path, &data).expect("damage header");
    let before = snapshot(copy.path());

    let error = open(copy.path()).expect_err("a bad header stops start-up");
    assert!(matches!(&error, JournalError::BadSegmentHeader { path: named, .. } if named == &path), "{error:?}");
    let salvage_dir = tempfile::tempdir().expect("tempdir");
    let error = salvage(copy.path(), salvage_dir.path()).expect_err("salvage repairs records only");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains("move that file"), "{text}");

    assert_eq!(snapshot(copy.path()), before, "neither changed a file");
    assert_eq!(fs::read_dir(salvage_dir.path()).expect("salvage dir").count(), 0, "nothing copied");
}

#[tokio::test]
async fn given_damage_anywhere_in_the_records_when_salvaged_should_always_open_and_keep_every_record_outside_the_copied_bytes(
) {
    let template = crash_copy(100, 8).await;
    let path = segment(template.path(), 1);
    let original = fs::read(&path).expect("read segment");
    let all = records(&original);
    let end = all.last().map(|&(at, _)| at).expect("records");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..24 {
        // xorshift: the same positions every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = HEADER_LEN + (state as usize) % (end - HEADER_LEN);
        let copy = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in snapshot(template.path()) {
            fs::write(copy.path().join(name), bytes).expect("copy journal");
        }
        let damaged_path = segment(copy.path(), 1);
        let mut data = original.clone();
        if round % 2 == 0 {
            data[at] ^= 1 << (state % 8);
        } else {
            let page_end = (at + 4096).min(data.len());
            data[at..page_end].fill(0);
        }
        fs::write(&damaged_path, &data).expect("damage segment");

        let salvage_dir = tempfile::tempdir().expect("tempdir");
        let actions = salvage(copy.path(), salvage_dir.path()).expect("salvage");
        let (journal, recovered) = open(copy.path()).unwrap_or_else(|e| panic!("round {round} at {at}: {e} after {actions:?}"));
        journal.close().expect("close");
        let cut: Vec<(usize, usize)> = actions
            .iter()
            .map(|action| match action {
                SalvageAction::Padded { from, to, .. } => (*from as usize, *to as usize),
                SalvageAction::Cut { at, .. } => (*at as usize, usize::MAX),
            })
            .collect();
        let kept = all.iter().filter(|&&(start, mark)| !mark && !cut.iter().any(|&(from, to)| start >= from && start < to)).count();
        assert_eq!(recovered.messages.len(), kept, "round {round} at {at}: {actions:?}");
    }
}
