//! Writes the seed corpus of every fuzz target into `seeds/<target>/` (run from
//! `broker/fuzz`: `cargo run --example make_seeds`). The seeds are committed; run this again
//! only when a format changes, and keep the total small (well under 1 MiB).

use bytes::BytesMut;
use duomq_broker_fuzz::cluster_frame::{ClusterCodec, ClusterFrame, Purpose, SegmentDigest, SegmentExtent};
use duomq_broker_fuzz::{write_journal, Script};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn stomp() -> anyhow::Result<()> {
    // [control: version % 3, small limits in the top bit][chunking seed][stream]
    let seeds: &[(&str, u8, &[u8])] = &[
        ("connect-send-1.2", 2, b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:app\npasscode:pw\nheart-beat:0,10000\n\n\0SEND\ndestination:/queue/a\nreceipt:1\ncontent-type:text/plain\n\nhello\0\nSUBSCRIBE\nid:0\ndestination:/queue/a\nack:client-individual\n\n\0"),
        ("crlf-1.2", 2, b"CONNECT\r\naccept-version:1.2\r\nhost:/\r\n\r\n\0\r\nSEND\r\ndestination:/queue/a\r\nk:a\\r\\n\\c\\\\b\r\n\r\nbody\0\r\n"),
        ("cr-values-1.1", 1, b"STOMP\naccept-version:1.1\nlogin:app\r\n\n\0SEND\ndestination:/queue/a\nk:v\r\nx:a\\cb\n\n\0"),
        ("plain-1.0", 0, b"CONNECT\nlogin:a:b\n\n\0SEND\ndestination:/queue/a\nk:a\\nb\n\nbody\0MESSAGE\nsubscription:0\nmessage-id:7\ndestination:/topic/t\n\n\0"),
        ("binary-body", 2, b"SEND\ndestination:/queue/bin\ncontent-length:5\n\na\0b\0c\0ACK\nid:1-2\n\n\0NACK\nid:1-3\nreceipt:9\n\n\0"),
        ("transaction", 2, b"BEGIN\ntransaction:t1\n\n\0SEND\ndestination:/queue/a\ntransaction:t1\n\nx\0COMMIT\ntransaction:t1\n\n\0ABORT\ntransaction:t2\n\n\0DISCONNECT\nreceipt:bye\n\n\0"),
        ("server-frames", 2, b"CONNECTED\nversion:1.2\nheart-beat:10000,10000\nsession:s-1\nserver:duomq/0.1.0\n\n\0RECEIPT\nreceipt-id:1\n\n\0ERROR\nmessage:bad\ncontent-type:text/plain\ncontent-length:4\n\nbad\n\0"),
        ("small-limits", 0x82, b"SEND\ndestination:/queue/a\nh1:1\nh2:2\nh3:3\nh4:4\n\n\0SEND\n\n0123456789012345678901234567890123456789\0"),
        ("heartbeats", 2, b"\n\n\r\n\n\r\nUNSUBSCRIBE\nid:0\n\n\0\n"),
        ("nul-and-cr", 2, b"SEND\ndestination:/queue/a\nk:v\r\r\n\n\0SEND\nk:a\0b\n\n\0"),
    ];
    for (name, control, stream) in seeds {
        let mut bytes = vec![*control, 0x5a];
        bytes.extend_from_slice(stream);
        write("stomp_decoder", name, &bytes)?;
    }
    Ok(())
}

fn cluster() -> anyhow::Result<()> {
    let frames = vec![
        ClusterFrame::Hello { version: 2, node_id: "a-0".into(), group: "g".into(), purpose: Purpose::Replicate, epoch: 3, nonce: [7; 32] },
        ClusterFrame::Challenge { version: 2, node_id: "a-1".into(), group: "g".into(), epoch: 3, nonce: [1; 32], proof: [2; 32] },
        ClusterFrame::Response { proof: [3; 32] },
        ClusterFrame::Welcome { node_id: "a-1".into(), role: "live".into(), epoch: 3 },
        ClusterFrame::SyncRequest { segments: vec![SegmentDigest { seq: 1, len: 4096, crc: 0xdead_beef }] },
        ClusterFrame::SyncBegin { segments: vec![SegmentExtent { seq: 1, len: 4096, first_record: 0 }], resume: true },
        ClusterFrame::SegmentChunk { seq: 1, offset: 0, data: vec![9u8; 40].into() },
        ClusterFrame::SyncEnd { seq: 1, len: 4096 },
        ClusterFrame::Append { seq: 1, offset: 4096, records: 12, data: vec![5u8; 24].into() },
        ClusterFrame::Truncate { seq: 1, len: 100 },
        ClusterFrame::Truncated { seq: 1, len: 100 },
        ClusterFrame::Roll { seq: 2 },
        ClusterFrame::Reclaim { seq: 1 },
        ClusterFrame::Ack { seq: 2, offset: 64, records: 13 },
        ClusterFrame::Ping { at: 1 },
        ClusterFrame::Pong { at: 1 },
        ClusterFrame::VoteRequest { group: "g".into(), live_node: "a-0".into(), live_addr: "10.0.0.1:61616".into(), epoch: 3 },
        ClusterFrame::VoteReply { granted: true, live_seen: false, reason: "ok".into() },
        ClusterFrame::FailbackRequest,
        ClusterFrame::HandOver { epoch: 4 },
        ClusterFrame::Refused { reason: "bad proof".into() },
        ClusterFrame::Goodbye { reason: "bye".into() },
    ];
    let mut codec = ClusterCodec::new(1 << 20);
    let mut all = BytesMut::new();
    for frame in &frames {
        let mut one = BytesMut::new();
        codec.encode(frame, &mut one)?;
        all.extend_from_slice(&one);
        // [control: small frame limit in the lowest bit][chunking seed][stream]
        let mut bytes = vec![0u8, 0x33];
        bytes.extend_from_slice(&one);
        write("cluster_frame", frame.name(), &bytes)?;
    }
    let mut bytes = vec![0u8, 0x77];
    bytes.extend_from_slice(&all);
    write("cluster_frame", "all-in-a-row", &bytes)?;
    Ok(())
}

fn journal() -> anyhow::Result<()> {
    // [control: even = scripted][ops script][0xff][edits script]; see `check_journal`.
    let scripts: &[(&str, &[u8])] = &[
        ("adds", &[0x00, 0, 10, 1, 20, 0, 30, 1, 40, 0xff]),
        ("adds-acks", &[0x10, 0, 10, 1, 200, 2, 0, 0, 5, 3, 9, 1, 0, 0x40, 100, 0xff]),
        ("batched", &[0x20, 0x20, 10, 0x21, 20, 0x22, 0, 0x20, 30, 0x23, 1, 2, 3, 0xff]),
        ("rolls", &[0x00, 0x40, 200, 0x41, 200, 0x40, 200, 0x41, 200, 2, 0, 2, 0, 0xff]),
        ("flip-bit", &[0x00, 0, 50, 1, 50, 0, 50, 1, 50, 0xff, 0, 0, 40, 0, 0, 0, 3]),
        ("zero-page", &[0x00, 0x40, 200, 0x41, 200, 0x40, 200, 0xff, 1, 0, 100, 0, 0, 0]),
        ("truncate", &[0x00, 0, 50, 1, 50, 0, 50, 0xff, 3, 0, 90, 0, 0, 0]),
        ("delete-one", &[0x30, 0x40, 250, 0x41, 250, 0x40, 250, 0x41, 250, 0xff, 4, 0, 0, 0, 0, 0]),
        ("garbage-after", &[0x00, 0, 50, 0xff, 5, 0, 0, 0, 0, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    ];
    for (name, bytes) in scripts {
        write("journal_recovery", name, bytes)?;
    }
    // Raw segment files as the journal writes them: [control odd][file]["\n--segment--\n"][file]...
    let dir = tempfile::tempdir()?;
    if !write_journal(dir.path(), 4096, Script { data: &[0x40, 200, 0x41, 200, 2, 0, 0, 30, 1, 40, 0x40, 250] }) {
        anyhow::bail!("failed to write a journal for the raw seed");
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    let mut raw = vec![0x01u8];
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            raw.extend_from_slice(b"\n--segment--\n");
        }
        raw.extend_from_slice(&std::fs::read(dir.path().join(name))?);
    }
    write("journal_recovery", "raw-segments", &raw)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    stomp()?;
    cluster()?;
    journal()?;
    Ok(())
}
