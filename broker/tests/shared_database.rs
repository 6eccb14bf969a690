//! Shared-database master/slave (`storage.store: database`) with real broker processes
//! and a real PostgreSQL server per test (see `common::postgres`). Covered: the pair on
//! one database (live, ready backup refusing clients); two members starting together; a
//! clean stop handing the lease over; ten kill -9 failovers under receipted load; a
//! consumer across a failover; a live frozen (SIGSTOP) past its lease, fenced when it
//! wakes; a lease taken behind the live's back, its write refused by the database;
//! PostgreSQL crashing under load, briefly and for longer than the lease; a rotated
//! password in a URL file; the database unreachable at start; a wrong password and a
//! malformed URL.
//!
//! Lease timings are the harness's (`Member::start_shared_database`): 3s lease, renewed
//! every 500ms, backups polling every 200ms.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::postgres::Postgres;
use common::{cli, eventually, output_within, Conn, Deadline};
use duomq_broker::stomp::{Command as Stomp, Frame};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const GROUP: &str = "g1";
/// The lease duration `start_shared_database` configures.
const LEASE: Duration = Duration::from_secs(3);
/// Header each producer run carries, so a consumer can tell the runs apart.
/// How long the test reads what a woken, fenced live sends on its old connection.
const WOKEN_WATCH: Duration = Duration::from_secs(5);
const RUN_TAG: &str = "test-run";
/// Receipts outstanding per producer.
const WINDOW: &str = "16";
/// How long a producer may take, failovers and database outages included.
use duomq_testkit::timeouts::PRODUCE as PRODUCE_TIMEOUT;
/// How long a consumer waits for one more message before it stops.
const QUIET: &str = "5s";

fn url_of(members: &[&Member]) -> String {
    let list: Vec<String> = members.iter().map(|m| format!("stomp://{}", m.stomp_addr())).collect();
    format!("failover:({})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1", list.join(","))
}

/// A producer of `count` persistent, receipted messages tagged with `run`.
fn producer(url: &str, queue: &str, count: u64, run: &str) -> Child {
    let count = count.to_string();
    let tag = format!("{RUN_TAG}={run}");
    cli(&["send", "--url", url, "--destination", queue, "--count", &count, "--size", "64", "--persistent", "--receipts", "--window", WINDOW, "--header", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn producer")
}

/// Waits for a producer: whether it succeeded, and its stderr.
fn finish(producer: Child) -> (bool, String) {
    match output_within(producer, PRODUCE_TIMEOUT) {
        Ok(Output { status, stderr, .. }) => (status.success(), String::from_utf8_lossy(&stderr).into_owned()),
        Err(e) => panic!("the producer: {e}"),
    }
}

/// How many messages of a `count`-message producer run were surely receipted: all of them
/// when it succeeded; else those before the one whose receipt failed (receipts are awaited
/// in order).
fn receipted(success: bool, stderr: &str, count: u64) -> u64 {
    if success {
        assert!(stderr.contains(&format!("{count} receipted")), "{stderr}");
        return count;
    }
    let number_after = |marker: &str| {
        stderr.find(marker).and_then(|i| stderr[i + marker.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
    };
    if let Some(n) = number_after("failed to get the receipt for message ") {
        return n;
    }
    // A send failed: up to a window of earlier ones may still have been waiting.
    number_after("failed to send message ").map_or(0, |n| n.saturating_sub(WINDOW.parse::<u64>().unwrap_or(0)))
}

/// What a consumer got: per run tag, sequence number → deliveries.
type Delivered = BTreeMap<String, BTreeMap<u64, u32>>;

/// Receives from `queue` until nothing comes for [`QUIET`].
fn drain(url: &str, queue: &str) -> Delivered {
    collect(consumer(url, queue, &[]))
}

/// A consumer of `queue`, running until nothing comes for [`QUIET`]; its output is read
/// as it comes (a full pipe would stall it). See [`collect`].
fn consumer(url: &str, queue: &str, extra: &[&str]) -> std::thread::JoinHandle<Result<Output, String>> {
    let child = cli(&["receive", "--url", url, "--destination", queue, "--timeout", QUIET, "--print-header", RUN_TAG, "--print-header", "duomq-seq"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    std::thread::spawn(move || output_within(child, PRODUCE_TIMEOUT))
}

/// What a [`consumer`] got, once it has stopped.
fn collect(consumer: std::thread::JoinHandle<Result<Output, String>>) -> Delivered {
    let out = consumer.join().expect("consumer thread").unwrap_or_else(|e| panic!("the consumer: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "consumer failed: {stderr}");
    println!("consumer: {}", stderr.lines().last().unwrap_or_default());
    let mut delivered = Delivered::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split('\t');
        let run = fields.next().and_then(|f| f.strip_prefix(&format!("{RUN_TAG}:"))).unwrap_or_default().to_string();
        let seq = fields.next().and_then(|f| f.strip_prefix("duomq-seq:")).and_then(|s| s.parse::<u64>().ok());
        let seq = seq.unwrap_or_else(|| panic!("consumer line without a sequence number: {line}"));
        *delivered.entry(run).or_default().entry(seq).or_default() += 1;
    }
    delivered
}

/// Asserts every receipted message (`runs`: tag → how many were receipted) was delivered;
/// returns how many deliveries were duplicates.
fn assert_delivered(delivered: &Delivered, runs: &[(String, u64)]) -> u32 {
    for (run, receipted) in runs {
        let seen = delivered.get(run).cloned().unwrap_or_default();
        let missing: Vec<u64> = (0..*receipted).filter(|seq| !seen.contains_key(seq)).collect();
        assert!(
            missing.is_empty(),
            "run {run}: {} of {receipted} receipted messages lost; first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
    }
    delivered.values().flat_map(|seqs| seqs.values()).map(|n| n - 1).sum()
}

fn role(member: &Member) -> String {
    member.status().and_then(|s| s["role"].as_str().map(str::to_string)).unwrap_or_else(|| "unreachable".into())
}

fn epoch(member: &Member) -> u64 {
    member.status().and_then(|s| s["ha"]["epoch"].as_u64()).unwrap_or_else(|| panic!("{} has no epoch in /status", member.name))
}

/// A counter or gauge of the member's `/metrics` (a series name, no labels), 0 if absent.
fn metric(member: &Member, series: &str) -> u64 {
    common::metric_value(member.admin, &format!("{series} "))
}

fn count(pg: &Postgres, sql: &str) -> u64 {
    let text = pg.psql(sql);
    text.parse().unwrap_or_else(|_| panic!("not a count: {text:?} from {sql}"))
}

fn stored(pg: &Postgres) -> u64 {
    count(pg, &format!("SELECT count(*) FROM duomq_messages WHERE grp = '{GROUP}'"))
}

/// A pair on one database: `node-a` live, `node-b` its ready backup.
fn start_pair(root: &Path, pg: &Postgres) -> (Member, Member) {
    let mut a = Member::new(root, "node-a");
    let mut b = Member::new(root, "node-b");
    a.start_shared_database(&pg.url(), &[b.peer()], "primary", GROUP, "");
    a.wait_live();
    b.start_shared_database(&pg.url(), &[a.peer()], "backup", GROUP, "");
    b.wait_for("a backup of node-a", |s| s["role"] == "backup" && s["ha"]["live"] == "node-a");
    b.wait_ready();
    (a, b)
}

/// Waits until `producer` has stored at least `more` messages beyond `before`, or ended.
fn wait_for_load(pg: &Postgres, producer: &mut Child, before: u64, more: u64) {
    eventually("the producer under way", PRODUCE_TIMEOUT, || {
        matches!(producer.try_wait(), Ok(Some(_))) || pg.try_psql(&format!("SELECT count(*) FROM duomq_messages WHERE grp = '{GROUP}'")).ok().and_then(|t| t.parse::<u64>().ok()).is_some_and(|n| n >= before + more)
    });
}

/// True once every thread of process `pid` is stopped (state `T` in `/proc`): SIGSTOP
/// takes effect asynchronously, thread by thread.
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

fn log_has_panic(log: &str) -> bool {
    log.contains("panicked") || log.contains("stack backtrace") || log.contains("RUST_BACKTRACE")
}

#[test]
fn given_postgres_harness_when_started_restarted_and_crashed_should_answer_and_keep_committed_rows() {
    let mut pg = Postgres::start("harness");
    assert_eq!(pg.psql("SELECT 1"), "1");
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    pg.restart();
    assert_eq!(pg.psql("SELECT x FROM t"), "42");
    pg.kill9();
    assert!(pg.try_psql("SELECT 1").is_err(), "the server still answers after an immediate stop");
    pg.start_again();
    assert_eq!(pg.psql("SELECT x FROM t"), "42");
    assert!(pg.url().starts_with("postgresql://duomq:") && pg.url().ends_with("/duomq?sslmode=disable"), "{}", pg.url());
}

#[test]
fn given_pair_on_one_database_should_have_one_live_and_a_ready_backup_refusing_clients_with_the_live() {
    let pg = Postgres::start("pair");
    let root = tempfile::Builder::new().prefix("duomq-db-pair-").tempdir().unwrap();
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start_shared_database(&pg.url(), &[b.peer()], "primary", GROUP, "");
    a.wait_live();
    // From the moment it is live, not only after its first renewal.
    let live = a.status().expect("live status");
    let database = &live["ha"]["database"];
    assert_eq!((&database["reachable"], &database["leaseHolder"]), (&true.into(), &"node-a".into()), "the new live's /status: {live}");
    b.start_shared_database(&pg.url(), &[a.peer()], "backup", GROUP, "");
    b.wait_for("a backup of node-a", |s| s["role"] == "backup" && s["ha"]["live"] == "node-a");
    b.wait_ready();

    let mut refused = Conn::raw(b.stomp);
    refused.send(&Frame::new(Stomp::Connect).header("accept-version", "1.2"));
    let error = refused.expect(Stomp::Error);
    let message = error.get("message").unwrap_or_default().to_string();
    assert!(message.starts_with("not live") && message.contains(&a.stomp_addr()), "{message}");

    let backup = b.status().expect("backup status");
    let database = &backup["ha"]["database"];
    assert_eq!((&database["reachable"], &database["leaseHolder"]), (&true.into(), &"node-a".into()), "{backup}");
    assert_eq!(&backup["ha"]["live"], "node-a", "{backup}");
    let epoch = live["ha"]["epoch"].as_u64().expect("epoch");
    assert_eq!(backup["ha"]["epoch"].as_u64(), Some(epoch), "{backup}");
    // The lease row says the same, in the database.
    assert_eq!(pg.psql(&format!("SELECT holder || ' ' || epoch FROM duomq_lease WHERE grp = '{GROUP}'")), format!("node-a {epoch}"));

    let url = url_of(&[&a, &b]);
    let (ok, report) = finish(producer(&url, "/queue/pair", 100, "pair"));
    assert!(ok, "{report}");
    assert_eq!(stored(&pg), 100, "every receipted message is a row");
    let delivered = drain(&url, "/queue/pair");
    assert_eq!(assert_delivered(&delivered, &[("pair".into(), 100)]), 0);
    for (member, line) in [(&a, "duomq_database_lease_held 1"), (&b, "duomq_database_lease_held 0"), (&a, "duomq_database_reachable 1")] {
        let page = common::http_get_at(&member.ip, member.admin, "/metrics").expect("GET /metrics").1;
        assert!(page.contains(line), "{} metrics lack {line}:\n{page}", member.name);
    }
}

#[test]
fn given_two_members_starting_together_should_elect_one_live_and_a_clean_stop_should_hand_over_before_the_lease_runs_out() {
    let pg = Postgres::start("together");
    let root = tempfile::Builder::new().prefix("duomq-db-together-").tempdir().unwrap();
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start_shared_database(&pg.url(), &[b.peer()], "primary", GROUP, "");
    b.start_shared_database(&pg.url(), &[a.peer()], "primary", GROUP, "");
    eventually("one of two members live", ROLE_TIMEOUT, || role(&a) == "live" || role(&b) == "live");
    // Watched for two lease renewals of time: never both live, the other a backup.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(1) {
        assert!(!(role(&a) == "live" && role(&b) == "live"), "two lives on one database");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut live, backup) = if role(&a) == "live" { (a, b) } else { (b, a) };
    backup.wait_for("the backup", |s| s["role"] == "backup" && s["ha"]["live"] == live.name.as_str());

    let status = live.terminate();
    assert!(status.success(), "{} did not stop cleanly: {status}", live.name);
    let stopped = Instant::now();
    backup.wait_live();
    let took = stopped.elapsed();
    println!("{} live {took:?} after {} stopped cleanly (lease {LEASE:?})", backup.name, live.name);
    assert!(took < LEASE, "a clean stop did not give the lease up: the backup waited {took:?}");
}

#[test]
fn given_pair_under_load_when_the_live_is_killed_ten_times_should_lose_no_receipted_message() {
    const ROUNDS: usize = 10;
    const PER_ROUND: u64 = 1500;
    let pg = Postgres::start("kills");
    let root = tempfile::Builder::new().prefix("duomq-db-kills-").tempdir().unwrap();
    let (a, b) = start_pair(root.path(), &pg);
    let url = url_of(&[&a, &b]);
    let mut members = [a, b];
    let mut live = 0;
    let mut last_epoch = epoch(&members[0]);
    let mut runs = Vec::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let backup = 1 - live;
        let before = stored(&pg);
        let run = format!("round-{round}");
        let mut p = producer(&url, "/queue/kills", PER_ROUND, &run);
        wait_for_load(&pg, &mut p, before, PER_ROUND / 5);
        let mid_load = matches!(p.try_wait(), Ok(None));
        members[live].kill9();
        let killed = Instant::now();
        members[backup].wait_live();
        let took_over = killed.elapsed();
        let new_epoch = epoch(&members[backup]);
        assert!(new_epoch > last_epoch, "round {round}: the new live's epoch {new_epoch} is not above {last_epoch}");
        last_epoch = new_epoch;
        let (live_name, live_peer) = (members[backup].name.clone(), members[backup].peer());
        members[live].start_shared_database(&pg.url(), &[live_peer], if live == 0 { "primary" } else { "backup" }, GROUP, "");
        members[live].wait_for("the backup again", |s| s["role"] == "backup" && s["ha"]["live"] == live_name.as_str());
        let (ok, report) = finish(p);
        assert!(ok, "round {round}: the producer failed across the failover: {report}");
        println!(
            "round {round}: killed {} {}, {live_name} live after {took_over:?} (epoch {new_epoch}); producer: {}",
            members[live].name,
            if mid_load { "mid-load" } else { "after the load (it finished first)" },
            report.lines().last().unwrap_or_default()
        );
        runs.push((run, receipted(ok, &report, PER_ROUND)));
        live = backup;
    }
    println!("{ROUNDS} failovers in {:?}", started.elapsed());
    let delivered = drain(&url, "/queue/kills");
    let duplicates = assert_delivered(&delivered, &runs);
    let total: u32 = delivered.values().flat_map(|s| s.values()).sum();
    println!("delivered {total} messages for {} receipted; {duplicates} duplicates", ROUNDS as u64 * PER_ROUND);
    eventually("acknowledged rows deleted", Duration::from_secs(30), || stored(&pg) == 0);
}

#[test]
fn given_consumer_draining_when_the_live_is_killed_should_get_every_message_from_the_new_live() {
    const COUNT: u64 = 3000;
    let pg = Postgres::start("consume");
    let root = tempfile::Builder::new().prefix("duomq-db-consume-").tempdir().unwrap();
    let (mut a, b) = start_pair(root.path(), &pg);
    let url = url_of(&[&a, &b]);
    let (ok, report) = finish(producer(&url, "/queue/consume", COUNT, "stored"));
    assert!(ok, "{report}");
    // A small prefetch keeps most messages in the database until the kill.
    let c = consumer(&url, "/queue/consume", &["--prefetch", "10"]);
    eventually("some consumed and acknowledged", PRODUCE_TIMEOUT, || stored(&pg) <= COUNT - 300);
    a.kill9();
    let killed = Instant::now();
    b.wait_live();
    println!("node-b live {:?} after the kill, {} messages left in the database", killed.elapsed(), stored(&pg));
    let delivered = collect(c);
    let duplicates = assert_delivered(&delivered, &[("stored".into(), COUNT)]);
    println!("every message delivered across the failover; {duplicates} delivered again (acknowledged on node-a, not yet deleted)");
    eventually("acknowledged rows deleted", Duration::from_secs(30), || stored(&pg) == 0);
}

#[test]
fn given_live_frozen_past_its_lease_when_it_wakes_should_be_fenced_and_confirm_nothing_written_meanwhile() {
    let pg = Postgres::start("sigstop");
    let root = tempfile::Builder::new().prefix("duomq-db-sigstop-").tempdir().unwrap();
    let (a, b) = start_pair(root.path(), &pg);
    let mut client = Conn::connect(a.stomp, &[("accept-version", "1.2"), ("host", "/")]);
    client.send_receipted("/queue/frozen", "before the stop", true);
    let old_epoch = a.status().expect("live status")["ha"]["epoch"].as_u64().expect("epoch");
    let rows_of_old_epoch = || count(&pg, &format!("SELECT count(*) FROM duomq_messages WHERE grp = '{GROUP}' AND epoch = {old_epoch}"));
    let pid = a.pid().expect("live running");

    // SAFETY: signals to the broker process this test started.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let stopped = Instant::now();
    eventually("every thread of node-a stopped", Duration::from_secs(10), || all_threads_stopped(pid));
    // Written while it is frozen: they wait in its socket buffer until it wakes.
    for n in 0..5 {
        let send = Frame::new(Stomp::Send)
            .header("destination", "/queue/frozen")
            .header("persistent", "true")
            .header("receipt", format!("during-{n}"))
            .with_body(format!("during the stop {n}"));
        client.send(&send);
    }
    b.wait_live();
    println!("backup live {:?} after the SIGSTOP (lease {LEASE:?})", stopped.elapsed());
    let new_epoch = b.status().expect("new live status")["ha"]["epoch"].as_u64().expect("epoch");
    assert!(new_epoch > old_epoch, "the new live's epoch {new_epoch} is not above {old_epoch}");
    let rows_before_wake = rows_of_old_epoch();

    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    // Whatever the woken live answers on the old connection, no RECEIPT for the frozen sends.
    let watch = Deadline::after("the woken live's answers on the old connection", WOKEN_WATCH);
    let mut answers = Vec::new();
    while !watch.passed() {
        let Some(frame) = client.read_frame(watch.left()) else { break };
        answers.push(format!("{} {:?}", frame.command, frame.headers));
        assert!(
            !(frame.command == Stomp::Receipt && frame.get("receipt-id").is_some_and(|id| id.starts_with("during-"))),
            "the fenced live confirmed a send made while it was frozen: {answers:?}"
        );
    }
    println!("the woken live answered the old connection with: {answers:?}");
    a.wait_for("fenced or a backup", |s| s["role"] == "fenced" || s["role"] == "backup");
    assert_eq!(rows_of_old_epoch(), rows_before_wake, "rows were written under the fenced epoch {old_epoch} after the wake");
    assert!(a.log().to_lowercase().contains("fenced"), "the old live's log does not say it was fenced:\n{}", a.log());
    assert!(metric(&a, "duomq_database_fenced_total") >= 1, "duomq_database_fenced_total not counted");
    assert_ne!(role(&a), "live");
    assert_eq!(b.status().expect("live status")["role"], "live");
    a.wait_for("a backup of node-b", |s| s["role"] == "backup" && s["ha"]["live"] == "node-b");

    // The new live has the receipted message; the frozen ones were never stored.
    let out = cli(&["receive", "--url", &format!("stomp://{}", b.stomp_addr()), "--destination", "/queue/frozen", "--timeout", "2s", "--print"])
        .output()
        .expect("run consumer");
    let bodies = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bodies.lines().collect::<Vec<_>>(), vec!["before the stop"], "what the new live delivered");
}

#[test]
fn given_lease_taken_behind_the_lives_back_when_it_writes_should_be_refused_by_the_database_and_fence_it() {
    let pg = Postgres::start("stolen");
    let root = tempfile::Builder::new().prefix("duomq-db-stolen-").tempdir().unwrap();
    let mut a = Member::new(root.path(), "node-a");
    // Renewals far apart, so the write is what meets the taken lease first.
    let slow_renewals = "storage:\n  database:\n    lease:\n      duration: 60s\n      renewInterval: 30s\n";
    a.start_shared_database(&pg.url(), &[], "primary", GROUP, slow_renewals);
    a.wait_live();
    let mut client = Conn::connect(a.stomp, &[("accept-version", "1.2"), ("host", "/")]);
    client.send_receipted("/queue/stolen", "before the theft", true);
    let old_epoch = epoch(&a);
    // Another member's takeover, as the database sees it (as after a clock jump on the live).
    pg.psql(&format!(
        "UPDATE duomq_lease SET holder = 'intruder', epoch = epoch + 1, expires_at = now() + interval '5 minutes' WHERE grp = '{GROUP}'"
    ));
    let rows = stored(&pg);
    client.send(
        &Frame::new(Stomp::Send)
            .header("destination", "/queue/stolen")
            .header("persistent", "true")
            .header("receipt", "after-theft")
            .with_body("after the theft"),
    );
    let answer = client.read_frame(Duration::from_secs(10));
    let answer = answer.map(|f| format!("{} {:?}", f.command, f.headers)).unwrap_or_else(|| "nothing (closed or silent)".into());
    assert!(!answer.starts_with("RECEIPT"), "a write under the old epoch {old_epoch} was confirmed: {answer}");
    println!("the live answered a write under its taken lease with: {answer}");
    assert_eq!(stored(&pg), rows, "the database stored a write of epoch {old_epoch} after the lease moved on");
    a.wait_for("fenced or a backup of the intruder", |s| s["role"] == "fenced" || s["role"] == "backup");
    assert!(metric(&a, "duomq_database_writes_refused_total") >= 1, "the refusal was not counted in duomq_database_writes_refused_total");
    assert!(a.log().to_lowercase().contains("fenced"), "{}", a.log());
}

#[test]
fn given_postgres_crashing_under_load_should_lose_no_receipted_message_and_a_long_outage_should_fence_the_live() {
    const COUNT: u64 = 3000;
    let mut pg = Postgres::start("outage");
    let root = tempfile::Builder::new().prefix("duomq-db-outage-").tempdir().unwrap();
    let (a, b) = start_pair(root.path(), &pg);
    let url = url_of(&[&a, &b]);
    let mut runs = Vec::new();

    // A short crash: back within the lease.
    let mut p = producer(&url, "/queue/outage", COUNT, "short");
    wait_for_load(&pg, &mut p, 0, COUNT / 5);
    assert!(matches!(p.try_wait(), Ok(None)), "the producer finished before the crash: make COUNT larger");
    pg.kill9();
    let crashed = Instant::now();
    // The outage itself (a fault's length, not a synchronisation).
    std::thread::sleep(Duration::from_secs(1));
    pg.start_again();
    println!("PostgreSQL back {:?} after the crash", crashed.elapsed());
    let (ok, report) = finish(p);
    assert!(ok, "the producer failed across a short database crash: {report}");
    println!("short outage: producer: {}; roles a={} b={}", report.lines().last().unwrap_or_default(), role(&a), role(&b));
    runs.push(("short".to_string(), receipted(ok, &report, COUNT)));
    eventually("a live after the short outage", ROLE_TIMEOUT, || role(&a) == "live" || role(&b) == "live");

    // A long one: past the lease, so the live must fence itself.
    let (live, backup) = if role(&a) == "live" { (&a, &b) } else { (&b, &a) };
    let before = stored(&pg);
    let mut p = producer(&url, "/queue/outage", COUNT, "long");
    wait_for_load(&pg, &mut p, before, COUNT / 5);
    assert!(matches!(p.try_wait(), Ok(None)), "the producer finished before the crash: make COUNT larger");
    let fenced_before = metric(live, "duomq_database_fenced_total");
    pg.kill9();
    let crashed = Instant::now();
    live.wait_for("fenced (the database gone past the lease)", |s| s["role"] != "live");
    let fenced_after = crashed.elapsed();
    assert!(fenced_after >= LEASE / 2, "{} stopped being live {fenced_after:?} after the crash, before its lease could run out", live.name);
    assert_ne!(role(backup), "live", "{} became live without the database", backup.name);
    let (code, reason) = live.readyz();
    println!("{} {} after {fenced_after:?}; /readyz {code} {reason}", live.name, role(live));
    assert_ne!(code, 200, "{} is ready without its database", live.name);
    live.wait_for("aware the database is gone", |s| s["ha"]["database"]["reachable"] == false && s["ha"]["database"]["lastError"].is_string());
    assert_eq!(metric(live, "duomq_database_reachable"), 0);
    assert!(metric(live, "duomq_database_fenced_total") > fenced_before, "duomq_database_fenced_total not counted");
    pg.start_again();
    let back = Instant::now();
    eventually("a live after the long outage", ROLE_TIMEOUT, || role(&a) == "live" || role(&b) == "live");
    println!("a live again {:?} after PostgreSQL came back", back.elapsed());
    let (ok, report) = finish(p);
    println!("long outage: producer {}: {}", if ok { "finished" } else { "failed" }, report.lines().last().unwrap_or_default());
    runs.push(("long".to_string(), receipted(ok, &report, COUNT)));
    assert!(live.log().to_lowercase().contains("fenced"), "{} does not log its fencing:\n{}", live.name, live.log());

    let delivered = drain(&url, "/queue/outage");
    let duplicates = assert_delivered(&delivered, &runs);
    println!("every receipted message delivered ({runs:?}); {duplicates} duplicates");
}

#[test]
fn given_url_file_when_the_password_is_rotated_and_sessions_cut_should_reconnect_with_the_new_url() {
    let pg = Postgres::start("rotate");
    let root = tempfile::Builder::new().prefix("duomq-db-rotate-").tempdir().unwrap();
    let url_file = root.path().join("uri");
    std::fs::write(&url_file, pg.url()).expect("write the URL file");
    let mut a = Member::new(root.path(), "node-a");
    // As with a CloudNativePG application Secret mounted as a file.
    a.start_shared_database(&pg.url(), &[], "primary", GROUP, &format!("storage:\n  database:\n    url: null\n    urlFile: {}\n", url_file.display()));
    a.wait_live();
    let url = url_of(&[&a]);
    let (ok, report) = finish(producer(&url, "/queue/rotate", 200, "before"));
    assert!(ok, "{report}");

    // Under load, the Secret is rotated: new password in the database and in the file,
    // then every session of the old login is cut.
    let mut p = producer(&url, "/queue/rotate", 1500, "after");
    wait_for_load(&pg, &mut p, stored(&pg), 300);
    pg.psql(&format!("ALTER ROLE {} PASSWORD 'rotated-password'", pg.user));
    std::fs::write(&url_file, pg.url_with_password("rotated-password")).expect("rewrite the URL file");
    let cut = pg.psql(&format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{}'", pg.user));
    println!("sessions cut: {cut}");
    let (ok, report) = finish(p);
    assert!(ok, "the producer failed across the rotation: {report}");
    eventually("live on the new password", ROLE_TIMEOUT, || role(&a) == "live" && metric(&a, "duomq_database_reachable") == 1);
    let sessions = count(&pg, &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{}'", pg.user));
    assert!(sessions >= 1, "no session of the member after the rotation");
    let delivered = drain(&url, "/queue/rotate");
    let duplicates = assert_delivered(&delivered, &[("before".into(), 200), ("after".into(), 1500)]);
    println!("after the rotation: role {}, reconnects {}, {duplicates} duplicates", role(&a), metric(&a, "duomq_database_reconnects_total"));
    assert!(!log_has_panic(&a.log()), "{}", a.log());
}

#[test]
fn given_database_down_at_start_should_wait_as_unready_backup_and_become_live_once_it_is_up() {
    let mut pg = Postgres::start("late");
    pg.stop();
    let root = tempfile::Builder::new().prefix("duomq-db-late-").tempdir().unwrap();
    let mut a = Member::new(root.path(), "node-a");
    a.start_shared_database(&pg.url(), &[], "primary", GROUP, "");
    a.wait_for("a backup without its database", |s| s["role"] == "backup" && s["ha"]["database"]["reachable"] == false);
    let (code, reason) = a.readyz();
    assert_ne!(code, 200, "ready without its database: {reason}");
    let status = a.status().expect("status");
    let last_error = status["ha"]["database"]["lastError"].as_str().unwrap_or_default().to_string();
    assert!(!last_error.is_empty(), "no lastError while unreachable: {status}");
    eventually("a log line naming the database problem", ROLE_TIMEOUT, || {
        a.log().lines().any(|l| l.contains("database") && (l.contains("WARN") || l.contains("ERROR")))
    });
    let line = a.log().lines().find(|l| l.contains("database") && l.contains("WARN")).unwrap_or_default().to_string();
    println!("unreachable: /readyz {code} {reason}; lastError {last_error}; log: {line}");

    pg.start_again();
    let up = Instant::now();
    a.wait_live();
    a.wait_ready();
    println!("live {:?} after PostgreSQL started", up.elapsed());
    assert!(!log_has_panic(&a.log()), "{}", a.log());
}

#[test]
fn given_wrong_password_or_malformed_url_should_say_so_in_one_line_without_a_panic() {
    let pg = Postgres::start("badurl");
    let root = tempfile::Builder::new().prefix("duomq-db-badurl-").tempdir().unwrap();

    let mut wrong = Member::new(root.path(), "wrong-password");
    wrong.start_shared_database(&pg.url_with_password("not-the-password"), &[], "primary", GROUP, "");
    eventually("the refused login reported", ROLE_TIMEOUT, || wrong.log().contains("password authentication failed") || wrong.exit_status().is_some());
    let log = wrong.log();
    assert!(log.contains("password authentication failed"), "the log does not name the refused login:\n{log}");
    assert!(!log_has_panic(&log), "{log}");
    match wrong.exit_status() {
        Some(status) => assert!(!status.success(), "exited successfully with a wrong password"),
        None => {
            assert_ne!(role(&wrong), "live");
            assert_ne!(wrong.readyz().0, 200, "ready with a refused login");
        }
    }
    assert!(!log.contains("not-the-password"), "the log shows the password:\n{log}");
    println!("wrong password: {}", log.lines().find(|l| l.contains("password authentication failed")).unwrap_or_default());

    let mut malformed = Member::new(root.path(), "malformed-url");
    malformed.start_shared_database("postgresql://duomq:pw@127.0.0.1:notaport/duomq", &[], "primary", GROUP, "");
    eventually("the malformed URL reported", ROLE_TIMEOUT, || {
        malformed.exit_status().is_some() || malformed.log().lines().any(|l| l.to_lowercase().contains("url"))
    });
    let log = malformed.log();
    assert!(!log_has_panic(&log), "{log}");
    assert!(log.lines().any(|l| l.to_lowercase().contains("url")), "the log does not name the URL:\n{log}");
    assert_ne!(role(&malformed), "live");
    println!(
        "malformed URL: {} ({})",
        log.lines().find(|l| l.to_lowercase().contains("url")).unwrap_or_default(),
        malformed.exit_status().map_or("still running".to_string(), |s| s.to_string())
    );
}
