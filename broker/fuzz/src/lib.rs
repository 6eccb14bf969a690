//! The properties the fuzz targets check, over the broker's own source files compiled here
//! on their own (`#[path]`, not copies): the STOMP codec, the cluster frame codec and the
//! journal. Only the crate around them differs, so a fuzz build instruments a handful of
//! small dependencies instead of the broker's whole tree (kube, axum, ...).
//!
//! Each check panics, which libFuzzer records as a crash and saves the input for, when a
//! property fails; it must not panic on any other input. It must not touch anything but
//! the temporary directories it creates.

#[allow(dead_code, unused_imports)]
#[path = "../../src/stomp/mod.rs"]
pub mod stomp;

#[allow(dead_code, unused_imports)]
#[path = "../../src/cluster/frame.rs"]
pub mod cluster_frame;

#[allow(dead_code, unused_imports)]
#[path = "../../src/journal/mod.rs"]
pub mod journal;

/// The journal asks the broker's fault registry after every fdatasync (`debug.faultInjection`).
/// The registry itself lives with the cluster code this crate leaves out, and fuzzing
/// injects no faults: here it is always off, as in a broker started without the opt-in.
pub mod faults {
    #[derive(Debug, Clone, Default)]
    pub struct Faults;

    impl Faults {
        pub fn off() -> Faults {
            Faults
        }

        pub fn fsync(&self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

use bytes::BytesMut;
use std::collections::BTreeMap;
use std::path::Path;

use cluster_frame::{ClusterCodec, ClusterCodecError, ClusterFrame};
use journal::{Journal, JournalConfig, JournalMetrics, MessageId, Op, StoredMessage};
use stomp::{CodecError, Frame, Inbound, Limits, StompCodec, Version};

/// Read sizes drawn from a seed: mostly a few bytes, sometimes one, sometimes kilobytes.
struct Chunks {
    state: u64,
}

impl Chunks {
    fn new(seed: u8) -> Chunks {
        Chunks { state: 0x9E37_79B9_7F4A_7C15 ^ (u64::from(seed) << 17) ^ u64::from(seed) }
    }

    fn next_len(&mut self) -> usize {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let x = self.state;
        let n = (x >> 8) as usize;
        match x % 8 {
            0 => 1,
            1..=5 => 1 + n % 16,
            6 => 1 + n % 256,
            _ => 1 + n % 4096,
        }
    }
}

/// Feeds `input` to `decode` in reads of the sizes `lens` yields, decoding after each read
/// until the decoder wants more; stops at the first error. Returns what was decoded, each
/// item with the bytes it took off the buffer when the input came whole (for re-encoding
/// checks), and the error.
fn feed<T, E>(
    input: &[u8],
    lens: &mut dyn FnMut() -> usize,
    decode: &mut dyn FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> (Vec<(T, usize)>, Option<E>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    while fed < input.len() {
        let n = lens().min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(item)) => out.push((item, before - buf.len())),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// Input: a control byte (version: `% 3`; small limits: top bit), a chunking seed, then the
/// byte stream. Properties: the same items and the same error whole and in chunks; every
/// frame re-encodes (same version) to bytes that decode to the same frame, except for the
/// `content-length` the encoder adds to a body that came without one.
pub fn check_stomp(data: &[u8]) {
    let [control, seed, input @ ..] = data else { return };
    let version = [Version::V1_0, Version::V1_1, Version::V1_2][usize::from(control % 3)];
    let limits = if control & 0x80 != 0 {
        Limits { max_header_bytes: 64, max_headers: 4, max_body_bytes: 32 }
    } else {
        Limits { max_header_bytes: 4096, max_headers: 32, max_body_bytes: 64 * 1024 }
    };
    let decode_with = |lens: &mut dyn FnMut() -> usize| -> (Vec<Inbound>, Option<CodecError>) {
        let mut codec = StompCodec::new(limits);
        codec.set_version(version);
        let (items, err) = feed(input, lens, &mut |buf| codec.decode(buf));
        (items.into_iter().map(|(item, _)| item).collect(), err)
    };
    let whole = decode_with(&mut || usize::MAX);
    let mut chunks = Chunks::new(*seed);
    let chunked = decode_with(&mut || chunks.next_len());
    assert_eq!(whole, chunked, "STOMP {version}: decoding in chunks differs from decoding whole");
    for item in &whole.0 {
        if let Inbound::Frame(frame) = item {
            check_stomp_reencode(version, frame);
        }
    }
}

fn check_stomp_reencode(version: Version, frame: &Frame) {
    let mut codec = StompCodec::new(Limits::default());
    codec.set_version(version);
    let mut buf = BytesMut::new();
    codec.encode(frame, &mut buf);
    let encoded = buf.clone();
    let again = match codec.decode(&mut buf) {
        Ok(Some(Inbound::Frame(again))) => again,
        other => panic!("STOMP {version}: {frame:?} re-encoded as {encoded:?} decodes to {other:?}"),
    };
    let mut again = again;
    if frame.get("content-length").is_none() && !frame.body.is_empty() {
        let added = again.headers.pop();
        assert_eq!(added.as_ref().map(|(k, _)| k.as_str()), Some("content-length"), "STOMP {version}: {encoded:?}");
    }
    assert_eq!(&again, frame, "STOMP {version}: frame re-encoded as {encoded:?} decodes differently");
    assert!(buf.is_empty(), "STOMP {version}: {encoded:?} left {buf:?} after its frame");
}

/// Input: a control byte (small frame limit: lowest bit), a chunking seed, then the byte
/// stream. Properties: the same frames and the same error whole and in chunks; every frame
/// re-encodes to exactly the bytes it was decoded from.
pub fn check_cluster(data: &[u8]) {
    let [control, seed, input @ ..] = data else { return };
    let max_frame = if control & 1 != 0 { 64 } else { 1 << 20 };
    let decode_with = |lens: &mut dyn FnMut() -> usize| -> (Vec<(ClusterFrame, usize)>, Option<ClusterCodecError>) {
        let mut codec = ClusterCodec::new(max_frame);
        feed(input, lens, &mut |buf| codec.decode(buf))
    };
    let whole = decode_with(&mut || usize::MAX);
    let mut chunks = Chunks::new(*seed);
    let chunked = decode_with(&mut || chunks.next_len());
    let frames = |r: &(Vec<(ClusterFrame, usize)>, Option<ClusterCodecError>)| {
        (r.0.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(), r.1.clone())
    };
    assert_eq!(frames(&whole), frames(&chunked), "cluster: decoding in chunks differs from decoding whole");
    let mut offset = 0;
    for (frame, len) in &whole.0 {
        let original = &input[offset..offset + len];
        offset += len;
        let mut codec = ClusterCodec::new(max_frame);
        let mut buf = BytesMut::new();
        if let Err(e) = codec.encode(frame, &mut buf) {
            panic!("cluster: decoded {frame:?} from {original:?} but cannot encode it: {e}");
        }
        assert_eq!(&buf[..], original, "cluster: {frame:?} re-encodes to other bytes");
    }
}

/// The files recovery may touch: everything in `dir` but the lock file, which `open`
/// creates before it reads anything.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "journal.lock" {
            continue;
        }
        let contents = std::fs::read(entry.path()).unwrap_or_else(|e| panic!("failed to read {name}: {e}"));
        files.insert(name, contents);
    }
    files
}

fn journal_config(dir: &Path, segment_size: u64) -> JournalConfig {
    let mut config = JournalConfig::new(dir);
    config.segment_size = segment_size;
    config.fsync = false;
    config.remember_header = Some("message-id".into());
    config
}

/// The recovery contract: `open` either fails and leaves every file as it was, or succeeds,
/// and then a second `open` succeeds too, recovers the same messages, id floor and
/// remembered window, and finds nothing left to cut.
fn check_recovery_contract(dir: &Path, segment_size: u64) {
    let before = snapshot(dir);
    match Journal::open(journal_config(dir, segment_size), JournalMetrics::unregistered()) {
        Err(e) => {
            let after = snapshot(dir);
            if after != before {
                let changed: Vec<_> = before
                    .keys()
                    .chain(after.keys())
                    .filter(|name| before.get(*name) != after.get(*name))
                    .collect();
                panic!("journal: recovery failed ({e}) but changed {changed:?}");
            }
        }
        Ok((first_journal, first)) => {
            if let Err(e) = first_journal.close() {
                panic!("journal: failed to close a recovered journal: {e}");
            }
            let (second_journal, second) =
                match Journal::open(journal_config(dir, segment_size), JournalMetrics::unregistered()) {
                    Ok(opened) => opened,
                    Err(e) => panic!("journal: recovered once ({} messages), then refused: {e}", first.messages.len()),
                };
            if let Err(e) = second_journal.close() {
                panic!("journal: failed to close a recovered journal: {e}");
            }
            assert_eq!(first.messages, second.messages, "journal: a second recovery found other messages");
            assert_eq!(first.next_id, second.next_id, "journal: a second recovery found another id floor");
            assert_eq!(first.remembered, second.remembered, "journal: a second recovery remembered other ids");
            assert_eq!(second.torn_tail_bytes, 0, "journal: a second recovery cut a torn tail the first left");
        }
    }
}

/// Reads bytes off the front of the input, then zeros.
pub struct Script<'a> {
    pub data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// Input, first byte even: a journal written through the journal's own API from a script
/// of adds and acks (ending at a 0xff byte), then damaged by a script of edits to its files
/// (bit flips, zeroed pages, truncations, deletions, appended bytes). First byte odd: the
/// rest, split at each `"\n--segment--\n"`, is taken as the segment files themselves.
pub fn check_journal(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let dir = match tempfile::Builder::new().prefix("duomq-fuzz-journal-").tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("failed to create a temporary directory: {e}"),
    };
    let segment_size = 2048 + u64::from(control >> 4) * 1024;
    if control % 2 == 1 {
        write_raw_segments(dir.path(), rest);
    } else {
        let (ops, edits) = match rest.iter().position(|&b| b == 0xff) {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &[][..]),
        };
        if !write_journal(dir.path(), segment_size, Script { data: ops }) {
            return;
        }
        damage(dir.path(), Script { data: edits });
    }
    check_recovery_contract(dir.path(), segment_size);
}

const RAW_SEPARATOR: &[u8] = b"\n--segment--\n";

fn write_raw_segments(dir: &Path, data: &[u8]) {
    let mut rest = data;
    for seq in 1u64.. {
        let (file, next) = match rest.windows(RAW_SEPARATOR.len()).position(|w| w == RAW_SEPARATOR) {
            Some(at) => (&rest[..at], Some(&rest[at + RAW_SEPARATOR.len()..])),
            None => (rest, None),
        };
        let path = dir.join(format!("journal-{seq:020}.seg"));
        if let Err(e) = std::fs::write(&path, file) {
            panic!("failed to write {}: {e}", path.display());
        }
        match next {
            Some(next) if seq < 16 => rest = next,
            _ => break,
        }
    }
}

/// Writes a journal through the API; false if the (fresh) journal would not open, which is
/// not what this target is about.
pub fn write_journal(dir: &Path, segment_size: u64, mut script: Script<'_>) -> bool {
    let Ok((journal, recovered)) = Journal::open(journal_config(dir, segment_size), JournalMetrics::unregistered())
    else {
        return false;
    };
    let mut next_id = recovered.next_id.0;
    let mut added: Vec<u64> = Vec::new();
    let mut pending = Vec::new();
    for step in 0..64 {
        if script.data.is_empty() {
            break;
        }
        let op = script.byte();
        let mut ops = Vec::new();
        let adds = if op % 4 == 3 { 2 } else { usize::from(op % 4 < 2) };
        for _ in 0..adds {
            let len = usize::from(script.byte()) * (1 + usize::from(op >> 6) * 15);
            ops.push(Op::Add(StoredMessage {
                id: MessageId(next_id),
                destination: format!("/queue/q{}", op % 3),
                headers: vec![("message-id".into(), format!("m{next_id}"))],
                body: vec![b'x'; len].into(),
            }));
            added.push(next_id);
            next_id += 1;
        }
        if op % 4 >= 2 && !added.is_empty() {
            let victim = added.remove(usize::from(script.byte()) % added.len());
            ops.push(Op::Ack(MessageId(victim)));
        }
        if ops.is_empty() {
            continue;
        }
        pending.push(journal.append(ops));
        // Sometimes let appends queue up so they share a batch.
        if op & 0x20 == 0 || step % 8 == 7 {
            for future in pending.drain(..) {
                if futures::executor::block_on(future).is_err() {
                    return false;
                }
            }
        }
    }
    for future in pending.drain(..) {
        if futures::executor::block_on(future).is_err() {
            return false;
        }
    }
    journal.close().is_ok()
}

/// Applies edits to the files in `dir` (the lock file aside), each naming a file by index.
fn damage(dir: &Path, mut script: Script<'_>) {
    for _ in 0..8 {
        if script.data.is_empty() {
            return;
        }
        let kind = script.byte();
        let names: Vec<String> = snapshot(dir).into_keys().collect();
        if names.is_empty() {
            return;
        }
        let name = &names[usize::from(script.byte()) % names.len()];
        let path = dir.join(name);
        let Ok(mut contents) = std::fs::read(&path) else { return };
        let len = contents.len().max(1);
        let at = script.u32() as usize % len;
        match kind % 6 {
            0 => {
                if let Some(b) = contents.get_mut(at) {
                    *b ^= 1 << (script.byte() % 8);
                }
            }
            1 => {
                let page = at & !4095;
                let end = (page + 4096).min(contents.len());
                contents[page.min(end)..end].fill(0);
            }
            2 => {
                let end = (at + usize::from(script.u16() % 64) + 1).min(contents.len());
                contents[at.min(end)..end].fill(script.byte());
            }
            3 => contents.truncate(at),
            4 => {
                if let Err(e) = std::fs::remove_file(&path) {
                    panic!("failed to remove {name}: {e}");
                }
                continue;
            }
            _ => {
                let n = usize::from(script.byte() % 64);
                for _ in 0..n {
                    contents.push(script.byte());
                }
            }
        }
        if let Err(e) = std::fs::write(&path, &contents) {
            panic!("failed to write {name}: {e}");
        }
    }
}
