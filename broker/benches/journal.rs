//! Micro-benchmarks of journal appends, for finding regressions
//! (`cargo bench -p duomq-broker --bench journal`). With fsync off they measure the
//! encode/write path; with fsync on, group commit under concurrent appenders.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duomq_broker::journal::{Journal, JournalConfig, JournalMetrics, MessageId, Op, StoredMessage};
use std::sync::atomic::{AtomicU64, Ordering};

fn message(id: u64, size: usize) -> StoredMessage {
    StoredMessage {
        id: MessageId(id),
        destination: "/queue/bench".to_string(),
        headers: vec![("persistent".to_string(), "true".to_string())],
        body: Bytes::from(vec![b'x'; size]),
    }
}

fn bench_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("journal_append");
    for (fsync, batch) in [(false, 1usize), (true, 1), (true, 64)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = JournalConfig::new(dir.path().join("j"));
        config.fsync = fsync;
        let (journal, _) = Journal::open(config, JournalMetrics::unregistered()).expect("open journal");
        let next = AtomicU64::new(0);
        group.throughput(Throughput::Elements(batch as u64));
        let name = format!("fsync={fsync},concurrent={batch}");
        group.bench_function(BenchmarkId::new(name, 1024), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let futures: Vec<_> = (0..batch)
                        .map(|_| journal.append(vec![Op::Add(message(next.fetch_add(1, Ordering::Relaxed), 1024))]))
                        .collect();
                    for f in futures {
                        f.await.expect("append");
                    }
                })
            })
        });
        journal.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
