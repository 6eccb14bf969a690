//! Admin message operations against the real broker process, driven through the
//! `duomq-broker queue` CLI as a process: list, browse (order, headers, text and binary
//! bodies), delete by id, move to another queue (consumed there in order), purge with a
//! message in flight left alone; then kill -9 and a restart: nothing purged, deleted or
//! moved comes back and the moved messages are in their new queue. Writes without the
//! cluster signature are refused, reads need an admin user or the signature, a queue the
//! broker does not hold is a 404, and a moved message keeps its dedup id and its group.
//! In a replicated pair the backup refuses the writes and, once it takes over, holds
//! exactly what the live's moves and purges left.

mod common;

use common::{body_text, cli, metric_value, output_within, signed_post, Broker, Conn};
use duomq_broker::stomp::{Command, Frame};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const PASSWORD: &str = "a-long-random-cluster-password";
/// `ops` holds the `admin` role; `app` holds none.
const USERS: &str = "auth:\n  users:\n    - name: ops\n      password: ops-pw\n    - name: app\n      password: app-pw\n  allowAnonymous: true\n  roles:\n    admin: [ops]\n    producers: [app]\n";
use duomq_testkit::timeouts::CLI as CLI_TIMEOUT;
/// How long a frame that must not come is waited for.
const QUIET: Duration = Duration::from_millis(800);

/// A standalone broker with a cluster password (its cluster port on a free port) and
/// [`USERS`]; the password also in a file, for the CLI's `--password-file`.
fn guarded_broker(name: &str) -> (Broker, PathBuf) {
    guarded_broker_with(name, "")
}

/// [`guarded_broker`] with `extra` config.
fn guarded_broker_with(name: &str, extra: &str) -> (Broker, PathBuf) {
    let cluster = common::reserve_port();
    let b = Broker::start(name, &format!("ha:\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    password: {PASSWORD}\n{USERS}{extra}"));
    let file = b.dir.join("cluster-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write the password file");
    (b, file)
}

/// Runs `duomq-broker queue ARGS --admin <the broker's>`: (success, stdout, stderr).
fn queue_cli(b: &Broker, args: &[&str]) -> (bool, String, String) {
    let admin = format!("127.0.0.1:{}", b.admin_port);
    let child = cli(&[&["queue"], args, &["--admin", &admin]].concat())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run duomq-broker queue");
    let out = output_within(child, CLI_TIMEOUT).unwrap_or_else(|e| panic!("queue {args:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `queue ARGS --json` signed with the password file; the JSON it printed.
fn queue_json(b: &Broker, password_file: &std::path::Path, args: &[&str]) -> Value {
    let file = password_file.to_str().expect("a UTF-8 path");
    let (ok, stdout, stderr) = queue_cli(b, &[args, &["--json", "--password-file", file]].concat());
    assert!(ok, "queue {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("queue {args:?} printed no JSON ({e}): {stdout}"))
}

fn send(c: &mut Conn, dest: &str, body: impl Into<bytes::Bytes>, headers: &[(&str, &str)]) {
    let mut f = Frame::new(Command::Send).header("destination", dest).header("persistent", "true").header("receipt", "r");
    for (k, v) in headers {
        f = f.header(*k, *v);
    }
    c.send(&f.with_body(body));
    c.expect(Command::Receipt);
}

fn ids_of(browse: &Value) -> Vec<u64> {
    browse["messages"].as_array().expect("messages").iter().map(|m| m["id"].as_u64().expect("id")).collect()
}

fn bodies_of(browse: &Value) -> Vec<String> {
    browse["messages"].as_array().expect("messages").iter().map(|m| m["body"].as_str().expect("body").to_string()).collect()
}

fn depth_of(list: &Value, name: &str) -> Option<u64> {
    list["destinations"].as_array().expect("destinations").iter().find(|d| d["name"] == name).map(|d| d["depth"].as_u64().expect("depth"))
}

/// Receives `n` messages on a client-ack subscription to `dest`, acking each; their frames.
fn consume(b: &Broker, dest: &str, n: usize) -> Vec<Frame> {
    let mut c = b.connect();
    c.subscribe("take", dest, "client-individual", &[]);
    let frames: Vec<Frame> = (0..n).map(|_| c.expect(Command::Message)).collect();
    for f in &frames {
        c.ack(f, true);
    }
    assert!(c.read_frame(QUIET).is_none(), "more than {n} messages in {dest}");
    c.disconnect();
    frames
}

#[test]
fn given_a_queue_when_browsed_deleted_moved_and_purged_should_stay_so_after_kill9() {
    let (mut b, password) = guarded_broker("admin-messages");
    let mut producer = b.connect();
    for i in 0..6 {
        send(&mut producer, "/queue/orders", format!("order-{i}"), &[("n", &i.to_string()), ("kind", "order")]);
    }
    send(&mut producer, "/queue/orders", vec![0xff_u8, 0x00, 0xfe], &[("n", "6")]);

    // list, as an admin user: a table for people, JSON for scripts.
    let (ok, table, stderr) = queue_cli(&b, &["list", "--user", "ops", "--password", "ops-pw"]);
    assert!(ok, "{stderr}");
    let row = table.lines().find(|l| l.starts_with("/queue/orders ")).unwrap_or_else(|| panic!("no row for /queue/orders:\n{table}"));
    assert_eq!(row.split_whitespace().take(5).collect::<Vec<_>>(), ["/queue/orders", "queue", "7", "0", "0"], "{table}");
    let list = queue_json(&b, &password, &["list"]);
    assert_eq!(depth_of(&list, "/queue/orders"), Some(7));

    // browse: in order, with headers and bodies; the binary one in base64.
    let browse = queue_json(&b, &password, &["browse", "--queue", "/queue/orders"]);
    assert_eq!(browse["depth"], 7);
    let bodies = bodies_of(&browse);
    assert_eq!(bodies[..6], ["order-0", "order-1", "order-2", "order-3", "order-4", "order-5"]);
    assert_eq!(bodies[6], "/wD+", "base64 of ff 00 fe");
    assert_eq!(browse["messages"][6]["bodyEncoding"], "base64");
    assert_eq!(browse["messages"][6]["size"], 3);
    assert_eq!(browse["messages"][0]["bodyEncoding"], "utf8");
    assert_eq!(browse["messages"][2]["headers"], serde_json::json!([["persistent", "true"], ["n", "2"], ["kind", "order"]]));
    assert_eq!(browse["messages"][0]["redelivered"], false);
    let ids = ids_of(&browse);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order: {ids:?}");
    let first_two = queue_json(&b, &password, &["browse", "--queue", "/queue/orders", "--limit", "2"]);
    assert_eq!(ids_of(&first_two), ids[..2]);
    let (ok, table, _) = queue_cli(&b, &["browse", "--queue", "/queue/orders", "--user", "ops", "--password", "ops-pw"]);
    assert!(ok && table.lines().nth(1).is_some_and(|l| l.contains("order-0") && l.contains("n=0 kind=order")), "{table}");

    // delete two by id (one of them twice, and one id that is not there).
    let (one, three) = (ids[1].to_string(), ids[3].to_string());
    let deleted = queue_json(&b, &password, &["delete", "--queue", "/queue/orders", "--id", &one, "--id", &three, "--id", &one, "--id", "999999"]);
    assert_eq!(deleted["removed"], 2, "{deleted}");
    assert_eq!(deleted["missing"], serde_json::json!([999999]));

    // move the rest to another queue, in one go; the CLI says what it did.
    let file = password.to_str().expect("a UTF-8 path");
    let (ok, said, stderr) = queue_cli(&b, &["move", "--from", "/queue/orders", "--to", "/queue/orders.retry", "--password-file", file]);
    assert!(ok, "{stderr}");
    assert_eq!(said.trim(), "moved 5 messages from /queue/orders to /queue/orders.retry");
    let moved = queue_json(&b, &password, &["browse", "--queue", "/queue/orders.retry"]);
    assert_eq!(bodies_of(&moved), ["order-0", "order-2", "order-4", "order-5", "/wD+"]);
    assert_eq!(moved["messages"][1]["headers"], serde_json::json!([["persistent", "true"], ["n", "2"], ["kind", "order"]]));

    // purge: the waiting ones go, the one a consumer holds stays with it.
    for i in 0..3 {
        send(&mut producer, "/queue/orders", format!("late-{i}"), &[]);
    }
    let mut holder = b.connect();
    holder.subscribe("hold", "/queue/orders", "client-individual", &[("activemq.prefetchSize", "1")]);
    let held = holder.expect(Command::Message);
    assert_eq!(body_text(&held), "late-0");
    let purged = queue_json(&b, &password, &["purge", "--queue", "/queue/orders"]);
    assert_eq!(purged["removed"], 2, "{purged}");
    holder.ack(&held, true);
    assert!(holder.read_frame(QUIET).is_none(), "a purged message was delivered");
    assert_eq!(metric_value(b.admin_port, "duomq_admin_messages_total{action=\"purged\"} "), 2);
    assert_eq!(metric_value(b.admin_port, "duomq_admin_messages_total{action=\"deleted\"} "), 2);
    assert_eq!(metric_value(b.admin_port, "duomq_admin_messages_total{action=\"moved\"} "), 5);

    // kill -9: nothing removed comes back; the moved ones are in their new queue.
    b.kill9();
    b.restart();
    let list = queue_json(&b, &password, &["list"]);
    assert_eq!(depth_of(&list, "/queue/orders").unwrap_or(0), 0, "{list}");
    assert_eq!(depth_of(&list, "/queue/orders.retry"), Some(5), "{list}");
    let frames = consume(&b, "/queue/orders.retry", 5);
    let bodies: Vec<String> = frames.iter().take(4).map(body_text).collect();
    assert_eq!(bodies, ["order-0", "order-2", "order-4", "order-5"]);
    assert_eq!(frames[4].body.as_ref(), [0xff_u8, 0x00, 0xfe]);
    assert_eq!(frames[1].get("n"), Some("2"));
    assert_eq!(frames[1].get("kind"), Some("order"));
    let consumed: Vec<u64> = frames.iter().map(|f| f.get("message-id").and_then(|v| v.parse().ok()).expect("message-id")).collect();
    assert!(consumed.iter().all(|id| !ids.contains(id)), "moved messages get new ids in their new queue");
}

#[test]
fn given_no_cluster_signature_should_refuse_every_write_and_leave_the_queue_alone() {
    let (b, password) = guarded_broker("admin-messages-auth");
    let mut producer = b.connect();
    for i in 0..3 {
        send(&mut producer, "/queue/kept", format!("k{i}"), &[]);
    }
    let purge = r#"{"queue":"/queue/kept"}"#;
    let (code, body) = signed_post("127.0.0.1", b.admin_port, "/queues/purge", purge, None);
    assert_eq!(code, 401, "unsigned: {body}");
    let (code, body) = signed_post("127.0.0.1", b.admin_port, "/queues/purge", purge, Some("a-guessed-password"));
    assert_eq!(code, 401, "wrongly signed: {body}");
    let moving = r#"{"from":"/queue/kept","to":"/queue/elsewhere"}"#;
    let (code, _) = signed_post("127.0.0.1", b.admin_port, "/queues/move", moving, None);
    assert_eq!(code, 401);
    let (code, _) = signed_post("127.0.0.1", b.admin_port, "/queues/delete", r#"{"queue":"/queue/kept","ids":[1]}"#, None);
    assert_eq!(code, 401);
    // An admin user may read but not write: writes take the signature only.
    let basic = duomq_broker::admin::auth::basic_header("ops", "ops-pw");
    let (code, body) = common::http_post_at("127.0.0.1", b.admin_port, "/queues/purge", &[("authorization", &basic)], purge).expect("POST");
    assert_eq!(code, 401, "{body}");
    let (ok, _, stderr) = queue_cli(&b, &["purge", "--queue", "/queue/kept", "--user", "ops", "--password", "ops-pw"]);
    assert!(!ok);
    assert!(stderr.contains("purge needs --password-file") && stderr.trim().lines().count() == 1, "{stderr}");
    let (ok, _, stderr) = queue_cli(&b, &["purge", "--queue", "/queue/kept", "--password-file", b.config_path().to_str().expect("path")]);
    assert!(!ok && stderr.contains("purge not authorized"), "{stderr}");

    // Reads: no credentials and a user without an admin role are refused.
    let browse = r#"{"queue":"/queue/kept"}"#;
    let (code, _) = common::http_post_at("127.0.0.1", b.admin_port, "/queues/browse", &[], browse).expect("POST");
    assert_eq!(code, 401);
    let app = duomq_broker::admin::auth::basic_header("app", "app-pw");
    let (code, _) = common::http_post_at("127.0.0.1", b.admin_port, "/queues/browse", &[("authorization", &app)], browse).expect("POST");
    assert_eq!(code, 403);
    let (code, _) = common::http_get(b.admin_port, "/queues").expect("GET /queues");
    assert_eq!(code, 401);
    let (ok, _, stderr) = queue_cli(&b, &["list", "--user", "app", "--password", "app-pw"]);
    assert!(!ok && stderr.contains("list not authorized"), "{stderr}");

    let browse = queue_json(&b, &password, &["browse", "--queue", "/queue/kept"]);
    assert_eq!(bodies_of(&browse), ["k0", "k1", "k2"], "nothing was removed");

    // A queue the broker does not hold is a 404; topics and reserved names are refused.
    let (code, body) = signed_post("127.0.0.1", b.admin_port, "/queues/purge", r#"{"queue":"/queue/nope"}"#, Some(PASSWORD));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no queue /queue/nope"), "{body}");
    let (ok, _, stderr) = queue_cli(&b, &["browse", "--queue", "/queue/nope", "--password-file", password.to_str().expect("path")]);
    assert!(!ok && stderr.contains("no queue /queue/nope"), "{stderr}");
    for to in ["/topic/kept", "/queue/$duomq.grouping", "/queue/kept", "nowhere"] {
        let request = format!(r#"{{"from":"/queue/kept","to":"{to}"}}"#);
        let (code, body) = signed_post("127.0.0.1", b.admin_port, "/queues/move", &request, Some(PASSWORD));
        assert_eq!(code, 400, "move to {to}: {body}");
    }
    let (code, body) = signed_post("127.0.0.1", b.admin_port, "/queues/browse", r#"{"queue":"/queue/kept","limit":10001}"#, Some(PASSWORD));
    assert_eq!(code, 400, "{body}");
    assert_eq!(queue_json(&b, &password, &["list"])["destinations"].as_array().map(Vec::len), Some(1), "no destination was created");
}

#[test]
fn given_moved_messages_should_keep_their_dedup_id_and_their_message_group() {
    let (mut b, password) = guarded_broker("admin-messages-groups");
    let mut producer = b.connect();
    send(&mut producer, "/queue/DLQ.work", "dup-me", &[("message-id", "producer-id-1")]);
    for i in 0..6 {
        let group = if i % 2 == 0 { "g-even" } else { "g-odd" };
        send(&mut producer, "/queue/DLQ.work", format!("w{i}"), &[("JMSXGroupID", group)]);
    }
    // Two consumers wait on the target: each group must go to one of them, in order.
    let mut one = b.connect();
    one.subscribe("one", "/queue/work", "auto", &[]);
    let mut two = b.connect();
    two.subscribe("two", "/queue/work", "auto", &[]);
    let moved = queue_json(&b, &password, &["move", "--from", "/queue/DLQ.work", "--to", "/queue/work"]);
    assert_eq!(moved["moved"], 7, "{moved}");
    let mut got: Vec<(&str, String, String)> = Vec::new();
    for (name, c) in [("one", &mut one), ("two", &mut two)] {
        while let Some(f) = c.read_frame(QUIET) {
            assert_eq!(f.command, Command::Message, "{:?}", f.headers);
            got.push((name, f.get("JMSXGroupID").unwrap_or("-").to_string(), body_text(&f)));
        }
    }
    assert_eq!(got.len(), 7, "every moved message once: {got:?}");
    for (group, bodies) in [("g-even", ["w0", "w2", "w4"]), ("g-odd", ["w1", "w3", "w5"])] {
        let of: Vec<&(&str, String, String)> = got.iter().filter(|(_, g, _)| g == group).collect();
        assert!(of.iter().all(|(c, _, _)| *c == of[0].0), "group {group} went to one consumer: {got:?}");
        assert_eq!(of.iter().map(|(_, _, b)| b.as_str()).collect::<Vec<_>>(), bodies, "group {group} in order");
    }
    let dup = got.iter().find(|(_, _, b)| b == "dup-me").expect("dup-me moved");
    assert_eq!(dup.1, "-");

    // A resend of the first message (its producer failed over) is still a duplicate, also
    // after a restart: the moved copy carries its dedup id in the journal.
    send(&mut producer, "/queue/work", "dup-me", &[("message-id", "producer-id-1")]);
    for c in [&mut one, &mut two] {
        assert!(c.read_frame(QUIET).is_none(), "the resend was stored again");
    }
    drop((one, two, producer));
    b.kill9();
    b.restart();
    let before = queue_json(&b, &password, &["list"]);
    assert_eq!(depth_of(&before, "/queue/DLQ.work").unwrap_or(0), 0, "moved messages came back: {before}");
    let mut producer = b.connect();
    send(&mut producer, "/queue/work", "dup-me", &[("message-id", "producer-id-1")]);
    let after = queue_json(&b, &password, &["list"]);
    // Auto acks are journaled lazily, so some deliveries may be back after kill -9; the
    // resend must add nothing to them.
    assert_eq!(depth_of(&after, "/queue/work").unwrap_or(0), depth_of(&before, "/queue/work").unwrap_or(0), "the resend was stored again after the restart: {after}");
}

#[test]
fn given_a_replicated_pair_should_carry_moves_and_purges_to_the_backup_and_refuse_them_there() {
    let (_root, mut live, backup) = common::cluster::synced_pair("duomq-admin-pair-", PASSWORD);
    let url = format!("stomp://{}", live.stomp_addr());
    let out = cli(&["send", "--url", &url, "--destination", "/queue/DLQ.jobs", "--count", "10", "--persistent", "--receipts"]).output().expect("run producer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (code, body) = backup.admin_post("/queues/purge", r#"{"queue":"/queue/DLQ.jobs"}"#, Some(PASSWORD));
    assert_eq!(code, 409, "a backup refuses writes: {body}");
    assert!(body.contains("not live"), "{body}");
    let (code, body) = live.admin_post("/queues/move", r#"{"from":"/queue/DLQ.jobs","to":"/queue/jobs","limit":6}"#, Some(PASSWORD));
    assert_eq!((code, serde_json::from_str::<Value>(&body).map(|v| v["moved"].clone()).ok()), (200, Some(6.into())), "{body}");
    let (code, body) = live.admin_post("/queues/purge", r#"{"queue":"/queue/DLQ.jobs"}"#, Some(PASSWORD));
    assert_eq!((code, serde_json::from_str::<Value>(&body).map(|v| v["removed"].clone()).ok()), (200, Some(4.into())), "{body}");

    // The live dies: its backup holds exactly what the admin requests left.
    live.kill9();
    backup.wait_live();
    let (code, body) = backup.admin_post("/queues/browse", r#"{"queue":"/queue/DLQ.jobs"}"#, Some(PASSWORD));
    assert_eq!(code, 404, "nothing purged or moved came back on the backup: {body}");
    let (code, body) = backup.admin_post("/queues/browse", r#"{"queue":"/queue/jobs"}"#, Some(PASSWORD));
    assert_eq!(code, 200, "{body}");
    let browse: Value = serde_json::from_str(&body).expect("browse JSON");
    let seqs: Vec<String> = browse["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["headers"].as_array().and_then(|h| h.iter().find(|kv| kv[0] == "duomq-seq")).and_then(|kv| kv[1].as_str()).unwrap_or("?").to_string())
        .collect();
    assert_eq!(seqs, ["0", "1", "2", "3", "4", "5"], "the first six, in order: {body}");
    common::receive_all(&format!("stomp://{}", backup.stomp_addr()), "/queue/jobs", 6);
}

/// Depth and paged count of `name` in `/status`.
fn depth_and_paged(b: &Broker, name: &str) -> (u64, u64) {
    let status = b.status();
    let q = status["queues"].as_array().and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned()).unwrap_or_default();
    (q["depth"].as_u64().unwrap_or(0), q["paged"].as_u64().unwrap_or(0))
}

#[test]
fn given_a_paging_queue_when_deleted_from_and_purged_should_remove_the_paged_messages_too_for_good() {
    const COUNT: usize = 3000;
    let paging = "addressSettings:\n  - match: /queue/big\n    maxSizeBytes: 1MiB\n    addressFullPolicy: page\n";
    let (mut b, password) = guarded_broker_with("admin-paged", paging);
    let mut producer = b.connect();
    let body = "x".repeat(1024);
    for n in 0..COUNT {
        let mut f = Frame::new(Command::Send).header("destination", "/queue/big").header("persistent", "true").with_body(body.clone());
        if n == COUNT - 1 {
            f = f.header("receipt", "last");
        }
        producer.send(&f);
    }
    producer.expect(Command::Receipt);
    let (depth, paged) = depth_and_paged(&b, "/queue/big");
    assert_eq!(depth + paged, COUNT as u64);
    assert!(paged > 1000, "most of the backlog is paged: depth {depth}, paged {paged}");

    // The last message is paged: its id is the highest of the queue's (one producer,
    // nothing else stored), one past the first's plus the count.
    let browse = queue_json(&b, &password, &["browse", "--queue", "/queue/big", "--limit", "1"]);
    let first = browse["messages"][0]["id"].as_u64().expect("first id");
    let last = (first + COUNT as u64 - 1).to_string();
    let deleted = queue_json(&b, &password, &["delete", "--queue", "/queue/big", "--id", &last]);
    assert_eq!(deleted["removed"], 1, "{deleted}");
    assert_eq!(depth_and_paged(&b, "/queue/big").1, paged - 1);

    let purged = queue_json(&b, &password, &["purge", "--queue", "/queue/big"]);
    assert_eq!(purged["removed"], COUNT as u64 - 1, "{purged}");
    assert_eq!(depth_and_paged(&b, "/queue/big"), (0, 0));
    let mut c = b.connect();
    c.subscribe("s", "/queue/big", "auto", &[]);
    assert!(c.read_frame(QUIET).is_none(), "a purged paged message was delivered");

    b.kill9();
    b.restart();
    assert_eq!(depth_and_paged(&b, "/queue/big"), (0, 0), "purged messages came back after kill -9");
}

#[test]
fn given_a_paging_queue_should_browse_and_move_its_paged_messages_through_the_cli() {
    const COUNT: usize = 3000;
    let paging = "addressSettings:\n  - match: /queue/big\n    maxSizeBytes: 1MiB\n    addressFullPolicy: page\n";
    let (b, password) = guarded_broker_with("admin-paged-move", paging);
    let mut producer = b.connect();
    for n in 0..COUNT {
        let mut f = Frame::new(Command::Send).header("destination", "/queue/big").header("persistent", "true").header("n", n.to_string()).with_body("x".repeat(1024));
        if n == COUNT - 1 {
            f = f.header("receipt", "last");
        }
        producer.send(&f);
    }
    producer.expect(Command::Receipt);
    let (depth, paged) = depth_and_paged(&b, "/queue/big");
    assert!(paged > 1000 && depth + paged == COUNT as u64, "depth {depth}, paged {paged}");

    let browse = queue_json(&b, &password, &["browse", "--queue", "/queue/big", "--limit", &COUNT.to_string()]);
    assert_eq!(browse["depth"], COUNT as u64, "paged messages count as waiting");
    let numbers: Vec<usize> = browse["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["headers"].as_array().and_then(|hs| hs.iter().find(|h| h[0] == "n")).and_then(|h| h[1].as_str()).and_then(|n| n.parse().ok()).expect("n header"))
        .collect();
    assert_eq!(numbers, (0..COUNT).collect::<Vec<_>>(), "in memory, then paged, in order");

    let moved = queue_json(&b, &password, &["move", "--from", "/queue/big", "--to", "/queue/elsewhere"]);
    assert_eq!(moved["moved"], COUNT as u64, "{moved}");
    assert_eq!(depth_and_paged(&b, "/queue/big"), (0, 0));
    let mut c = b.connect();
    c.subscribe("s", "/queue/elsewhere", "auto", &[]);
    for n in 0..COUNT {
        let m = c.expect(Command::Message);
        assert_eq!(m.get("n"), Some(n.to_string().as_str()), "moved out of order or lost");
    }
}
