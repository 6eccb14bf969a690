//! Micro-benchmarks of the STOMP codec and of a cluster connection's frames with and without
//! the fault seam, for finding regressions (`cargo bench -p duomq-broker --bench codec`).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use duomq_broker::cluster::{ClusterCodec, ClusterConn, ClusterFrame, Purpose};
use duomq_broker::faults::{FaultMetrics, Faults};
use duomq_broker::stomp::{Command, Frame, Limits, StompCodec};

fn send_frame(size: usize) -> Frame {
    Frame::new(Command::Send)
        .header("destination", "/queue/bench")
        .header("persistent", "true")
        .header("receipt", "123456")
        .header("x-producer", "p1")
        .with_body(vec![b'x'; size])
}

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("stomp");
    for size in [64usize, 1024, 65536] {
        let frame = send_frame(size);
        let codec = StompCodec::new(Limits::default());
        let mut wire = BytesMut::new();
        codec.encode(&frame, &mut wire);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &frame, |b, f| {
            let mut out = BytesMut::with_capacity(size + 256);
            b.iter(|| {
                out.clear();
                codec.encode(f, &mut out);
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, w| {
            let mut decoder = StompCodec::new(Limits::default());
            b.iter(|| {
                let mut buf = BytesMut::from(&w[..]);
                decoder.decode(&mut buf).expect("valid frame")
            })
        });
    }
    group.finish();
}

/// A replication append of 4 KiB sent and received over a connection without the fault
/// seam (`off`) and with it but no rule set (`on_no_rules`): the seam's cost on the hot path.
fn bench_cluster_conn(c: &mut Criterion) {
    const FRAMES: usize = 1000;
    const MAX_FRAME: usize = 1 << 20;
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let frame = ClusterFrame::Append { seq: 1, offset: 0, records: 1, data: Bytes::from(vec![b'x'; 4096]) };
    let mut wire = BytesMut::new();
    for _ in 0..FRAMES {
        ClusterCodec::new(MAX_FRAME).encode(&frame, &mut wire).expect("encode");
    }
    let faults = Faults::new(FaultMetrics::default());
    let tap = |on: bool| on.then(|| faults.tap("node-b", None, Purpose::Replicate)).flatten();
    let mut group = c.benchmark_group("cluster_conn");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    for (name, on) in [("off", false), ("on_no_rules", true)] {
        group.bench_function(BenchmarkId::new("send_1000", name), |b| {
            let mut conn = ClusterConn::new(tokio::io::sink(), MAX_FRAME);
            conn.set_faults(tap(on));
            b.iter(|| {
                runtime.block_on(async {
                    for _ in 0..FRAMES {
                        conn.send(&frame).await.expect("send");
                    }
                })
            })
        });
        group.bench_function(BenchmarkId::new("recv_1000", name), |b| {
            b.iter_batched(
                || {
                    let mut conn = ClusterConn::new(std::io::Cursor::new(wire.to_vec()), MAX_FRAME);
                    conn.set_faults(tap(on));
                    conn
                },
                |mut conn| {
                    runtime.block_on(async {
                        for _ in 0..FRAMES {
                            conn.recv().await.expect("receive").expect("a frame");
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_codec, bench_cluster_conn);
criterion_main!(benches);
