//! The crash test: producers send persistent messages with receipts and a consumer acks
//! with receipts while the broker is killed with SIGKILL at random moments, again and
//! again. Afterwards no receipted message may be missing and no message whose ack was
//! receipted may come back.

mod common;

use common::{Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::{Command, Frame};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KILLS: usize = 25;
const PRODUCERS: usize = 3;
const WINDOW: usize = 8;
const DEST: &str = "/queue/crash";

#[derive(Default)]
struct Ledger {
    receipted: HashSet<String>,
    ack_sent: HashSet<String>,
    ack_receipted: HashSet<String>,
}

/// xorshift: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn producer(port: u16, id: usize, round: usize, ledger: Arc<Mutex<Ledger>>) {
    let Some(mut c) = Conn::try_connect(port) else { return };
    let mut seq = 0usize;
    let mut outstanding = 0usize;
    loop {
        while outstanding < WINDOW {
            let body = format!("p{id}-r{round:03}-s{seq:06}");
            let f = Frame::new(Command::Send)
                .header("destination", DEST)
                .header("persistent", "true")
                .header("receipt", body.clone())
                .with_body(body);
            if c.try_send(&f).is_err() {
                return;
            }
            seq += 1;
            outstanding += 1;
        }
        match c.read_frame(FRAME_TIMEOUT) {
            Some(f) if f.command == Command::Receipt => {
                let id = f.get("receipt-id").unwrap_or_default().to_string();
                ledger.lock().unwrap().receipted.insert(id);
                outstanding -= 1;
            }
            _ => return,
        }
    }
}

fn consumer(port: u16, ledger: Arc<Mutex<Ledger>>) {
    let Some(mut c) = Conn::try_connect(port) else { return };
    let sub = Frame::new(Command::Subscribe)
        .header("id", "c")
        .header("destination", DEST)
        .header("ack", "client-individual")
        .header("activemq.prefetchSize", "20");
    if c.try_send(&sub).is_err() {
        return;
    }
    while let Some(f) = c.read_frame(FRAME_TIMEOUT) {
        match f.command {
            Command::Message => {
                let body = String::from_utf8_lossy(&f.body).into_owned();
                let ack = Frame::new(Command::Ack)
                    .header("id", f.get("ack").unwrap_or_default())
                    .header("receipt", format!("ack:{body}"));
                ledger.lock().unwrap().ack_sent.insert(body);
                if c.try_send(&ack).is_err() {
                    return;
                }
            }
            Command::Receipt => {
                let id = f.get("receipt-id").unwrap_or_default();
                if let Some(body) = id.strip_prefix("ack:") {
                    ledger.lock().unwrap().ack_receipted.insert(body.to_string());
                }
            }
            _ => return,
        }
    }
}

#[test]
fn given_broker_killed_at_random_moments_should_lose_no_receipted_and_resurrect_no_acked_message() {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7) | 1
    });
    println!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut b = Broker::start("crash", "storage:\n  segmentSize: 1MiB\n  maxBatchBytes: 256KiB\nstomp:\n  maxBodyBytes: 64KiB\n");
    let started = Instant::now();
    for round in 0..KILLS {
        let port = b.stomp_port;
        let mut threads = Vec::new();
        for id in 0..PRODUCERS {
            let l = Arc::clone(&ledger);
            threads.push(std::thread::spawn(move || producer(port, id, round, l)));
        }
        // The consumer runs in half the rounds, so the queue both grows and drains.
        if round % 2 == 1 {
            let l = Arc::clone(&ledger);
            threads.push(std::thread::spawn(move || consumer(port, l)));
        }
        let life = Duration::from_millis(30 + rng.next() % 400);
        std::thread::sleep(life); // the random moment of the kill, not a synchronisation
        b.kill9();
        for t in threads {
            t.join().expect("client thread");
        }
        b.restart();
    }
    println!("{KILLS} kills in {:?}", started.elapsed());

    // Drain everything that survived.
    let mut c = b.connect();
    c.subscribe("final", DEST, "client-individual", &[("activemq.prefetchSize", "1000")]);
    let mut drained: Vec<String> = Vec::new();
    while let Some(f) = c.read_frame(Duration::from_secs(2)) {
        assert_eq!(f.command, Command::Message);
        drained.push(String::from_utf8_lossy(&f.body).into_owned());
        c.ack(&f, false);
    }
    let ledger = ledger.lock().unwrap();
    let drained_set: HashSet<&String> = drained.iter().collect();
    assert_eq!(drained_set.len(), drained.len(), "duplicates in the queue after recovery");
    let lost: Vec<&String> =
        ledger.receipted.iter().filter(|m| !drained_set.contains(m) && !ledger.ack_sent.contains(*m)).collect();
    assert!(lost.is_empty(), "{} receipted, unacked messages lost, e.g. {:?}", lost.len(), lost.iter().take(5).collect::<Vec<_>>());
    let resurrected: Vec<&String> = ledger.ack_receipted.iter().filter(|m| drained_set.contains(m)).collect();
    assert!(resurrected.is_empty(), "{} acked messages came back, e.g. {:?}", resurrected.len(), resurrected.iter().take(5).collect::<Vec<_>>());
    // Order per producer is kept.
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for m in &drained {
        let (producer, rest) = m.split_once('-').expect("body format");
        if let Some(prev) = last.insert(producer, rest) {
            assert!(prev < rest, "order broken for {producer}: {prev} before {rest}");
        }
    }
    assert!(ledger.receipted.len() > 100, "the test must actually send: {} receipted", ledger.receipted.len());
    assert!(!ledger.ack_receipted.is_empty(), "the test must actually ack");
    println!(
        "receipted {}, acks receipted {}, recovered at the end {}",
        ledger.receipted.len(),
        ledger.ack_receipted.len(),
        drained.len()
    );
}
