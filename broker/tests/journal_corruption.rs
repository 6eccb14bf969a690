//! Journal damage with a real broker: receipted messages, kill -9, then a flipped length
//! byte or a zeroed 4 KiB page in the middle of the newest segment. Start-up must refuse
//! naming the file and the offset and change nothing; `journal salvage` must cut the
//! damage out keeping a copy; the broker must then start with every receipted message but
//! those whose records lay in the damaged bytes.

mod common;

use common::{cli, Broker, Conn};
use duomq_broker::stomp::{Command, Frame};
use rstest::rstest;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

const PRODUCERS: usize = 3;
const PER_PRODUCER: usize = 600;
const WINDOW: usize = 16;
const DEST: &str = "/queue/corruption";
/// How long a broker refusing to start may take to exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `PER_PRODUCER` persistent messages with receipts, `WINDOW` in flight; returns the
/// bodies the broker receipted.
fn produce(port: u16, producer: usize) -> Vec<String> {
    let mut c = Conn::connect(port, &[("accept-version", "1.2"), ("host", "/")]);
    let mut receipted = Vec::new();
    let mut sent = 0;
    let padding = "x".repeat(1000);
    while receipted.len() < PER_PRODUCER {
        while sent < PER_PRODUCER && sent - receipted.len() < WINDOW {
            let body = format!("p{producer}-{sent:05}-{padding}");
            c.send(
                &Frame::new(Command::Send)
                    .header("destination", DEST)
                    .header("persistent", "true")
                    .header("receipt", format!("p{producer}-{sent:05}"))
                    .with_body(body),
            );
            sent += 1;
        }
        let f = c.expect(Command::Receipt);
        let id = f.get("receipt-id").expect("receipt-id").to_string();
        receipted.push(id);
    }
    receipted
}

/// Where the records of a segment start (`[u32 length][u32 crc][payload]` after a 32-byte
/// header; zeros end them).
fn record_starts(data: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 32;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += 8 + len;
    }
    starts
}

fn newest_segment(journal: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(journal)
        .expect("journal dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

/// Runs the broker on `b`'s config and data dir, expecting it to refuse to start; returns
/// what it printed.
fn start_expecting_refusal(b: &Broker) -> String {
    let mut child = Process::new(env!("CARGO_BIN_EXE_duomq-broker"))
        .args(["run", "--config"])
        .arg(b.config_path())
        .arg("--data-dir")
        .arg(&b.data_dir)
        .args(["--stomp-listen", &format!("127.0.0.1:{}", b.stomp_port)])
        .args(["--admin-listen", &format!("127.0.0.1:{}", b.admin_port)])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn duomq-broker");
    let status = duomq_testkit::process::wait_within(&mut child, REFUSAL_TIMEOUT)
        .unwrap_or_else(|e| panic!("the broker neither refused nor stopped: {e}"));
    let out = child.wait_with_output().expect("broker output");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!status.success(), "the broker started on a damaged journal: {text}");
    text
}

/// What the test does to the newest segment.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The third byte of the length of a message's record past the middle.
    FlippedLengthByte,
    /// The 4 KiB page at the middle, zeroed.
    ZeroedPage,
}

#[rstest]
#[case::flipped_length_byte(Damage::FlippedLengthByte)]
#[case::zeroed_page(Damage::ZeroedPage)]
fn given_receipted_messages_and_damage_mid_newest_segment_when_started_should_refuse_then_salvage_should_recover_all_but_the_damaged_records(
    #[case] damage: Damage,
) {
    let mut b = Broker::start("journal-corruption", "");
    let port = b.stomp_port;
    let producers: Vec<_> = (0..PRODUCERS).map(|p| std::thread::spawn(move || produce(port, p))).collect();
    let receipted: HashSet<String> =
        producers.into_iter().flat_map(|t| t.join().expect("producer thread")).collect();
    assert_eq!(receipted.len(), PRODUCERS * PER_PRODUCER);
    b.kill9();

    let journal = b.data_dir.join("journal");
    let segment = newest_segment(&journal);
    let mut data = std::fs::read(&segment).expect("read segment");
    let original = data.clone();
    let starts = record_starts(&data);
    let records_end = starts.last().copied().expect("records");
    // A message's record, not a batch's 13-byte sync mark.
    let len_at = |at: usize| u32::from_le_bytes(original[at..at + 4].try_into().expect("4 bytes"));
    let damaged = match damage {
        Damage::FlippedLengthByte => {
            let at = starts.iter().copied().find(|&at| at >= records_end / 2 && len_at(at) > 13).expect("a record mid-segment");
            data[at + 2] ^= 0x01;
            at
        }
        Damage::ZeroedPage => {
            let page = records_end / 2 / 4096 * 4096;
            data[page..page + 4096].fill(0);
            starts.iter().copied().take_while(|&at| at <= page).last().expect("a record before the page")
        }
    };
    std::fs::write(&segment, &data).expect("damage the segment");

    let refusal = start_expecting_refusal(&b);
    let name = segment.file_name().expect("file name").to_string_lossy().into_owned();
    assert!(refusal.contains(&name), "the refusal names the segment: {refusal}");
    assert!(refusal.contains(&format!("corrupt at byte offset {damaged}")), "the refusal names the offset: {refusal}");
    assert!(refusal.contains("not a torn write"), "{refusal}");
    assert_eq!(std::fs::read(&segment).expect("read segment"), data, "a refused start changes nothing");

    let out = cli(&["journal", "salvage", "--data-dir", &b.data_dir.display().to_string()])
        .output()
        .expect("run salvage");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "salvage failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "one line per action and a summary: {said}");
    assert!(lines[0].starts_with(&format!("padded {}", segment.display())), "{said}");
    assert!(lines[0].contains(&format!("bytes {damaged}..")), "{said}");
    let salvage_dirs: Vec<PathBuf> = std::fs::read_dir(&b.data_dir)
        .expect("data dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("salvage-")))
        .collect();
    assert_eq!(salvage_dirs.len(), 1, "one salvage folder in the data dir");
    let copies: Vec<PathBuf> = std::fs::read_dir(&salvage_dirs[0]).expect("salvage dir").flatten().map(|e| e.path()).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = std::fs::read(&copies[0]).expect("read copy");
    assert_eq!(copy, data[damaged..damaged + copy.len()], "the copy holds the damaged bytes");
    // The messages salvage gives up: those whose records started in the padded bytes.
    let given_up = starts.iter().filter(|&&at| at >= damaged && at < damaged + copy.len() && len_at(at) > 13).count();
    assert!(given_up >= 1, "the damage hit a message");

    b.restart();
    let mut c = b.connect();
    c.subscribe("all", DEST, "client-individual", &[("activemq.prefetchSize", "5000")]);
    let mut drained = HashSet::new();
    while let Some(f) = c.read_frame(Duration::from_secs(3)) {
        assert_eq!(f.command, Command::Message);
        // The body starts with the receipt id: `p<producer>-<seq>-`.
        let body = String::from_utf8_lossy(&f.body).into_owned();
        drained.insert(body.split('-').take(2).collect::<Vec<_>>().join("-"));
        c.ack(&f, false);
    }
    let lost: Vec<&String> = receipted.iter().filter(|r| !drained.contains(*r)).collect();
    assert_eq!(lost.len(), given_up, "exactly the messages of the padded records are lost: {lost:?}");
    assert!(drained.iter().all(|d| receipted.contains(d)), "nothing but receipted messages came back");
}
