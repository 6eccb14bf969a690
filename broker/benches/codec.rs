//! Micro-benchmarks of the STOMP codec, for finding regressions (`cargo bench -p duomq-broker --bench codec`).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

criterion_group!(benches, bench_codec);
criterion_main!(benches);
