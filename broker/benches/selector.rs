//! Micro-benchmarks of selector evaluation, for finding regressions
//! (`cargo bench -p duomq-broker --bench selector`). A selecting consumer evaluates up to
//! `SELECTOR_SCAN` (1024) messages per dispatch: multiply to get a dispatch's worst case.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use duomq_broker::engine::message::{Message, Properties};
use duomq_broker::journal::MessageId;
use duomq_broker::selector::Selector;
use std::sync::Arc;

fn message() -> Message {
    let headers = [
        ("content-type", "application/json"),
        ("persistent", "true"),
        ("priority", "7"),
        ("correlation-id", "c-0042"),
        ("type", "order"),
        ("customer", "acme-industries"),
        ("region", "eu"),
        ("amount", "150.25"),
    ];
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Message {
        id: MessageId(42),
        destination: Arc::from("/queue/bench"),
        properties: Properties::from_headers(&headers),
        headers,
        body: Bytes::from_static(b"{}"),
        persistent: true,
        group: None,
    }
}

fn bench_selector(c: &mut Criterion) {
    let m = message();
    let mut group = c.benchmark_group("selector");
    for (name, text) in [
        ("equals", "region = 'eu'"),
        ("and-number", "region = 'us' AND amount > 100"),
        ("jms", "JMSPriority >= 5 AND JMSDeliveryMode = 'PERSISTENT'"),
        ("in-like-between", "region IN ('us', 'apac', 'eu') AND customer LIKE 'acme%' AND amount BETWEEN 100 AND 200"),
    ] {
        let selector = Selector::parse(text).expect("valid selector");
        group.bench_with_input(BenchmarkId::new("matches", name), &selector, |b, s| b.iter(|| s.matches(&m)));
    }
    group.bench_function("parse", |b| {
        b.iter(|| Selector::parse("region IN ('us', 'apac', 'eu') AND customer LIKE 'acme%' AND amount BETWEEN 100 AND 200"))
    });
    group.finish();
}

criterion_group!(benches, bench_selector);
criterion_main!(benches);
