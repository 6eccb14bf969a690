//! Per-destination authorization against the real broker process: every client frame
//! kind allowed and denied (SEND, SEND in a transaction then COMMIT, SUBSCRIBE to consume,
//! SUBSCRIBE to browse, create by SEND and by SUBSCRIBE, ACK/NACK, UNSUBSCRIBE,
//! BEGIN/COMMIT/ABORT), wildcards and the most specific entry deciding, users from
//! `auth.users` and `auth.usersFile`, anonymous roles, and a client-certificate user
//! driven by stomp.py over TLS, which also checks the ERROR a third-party client gets.
//!
//! A denied frame must leave nothing behind: the tests look for it with a consumer that
//! may read the queue and in `/metrics`.

mod common;

use common::tls::Pki;
use common::{body_text, eventually, http_get, metric_value, Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::{Command, Frame};
use std::time::Duration;

/// How long a frame that must not come is waited for.
const QUIET: Duration = Duration::from_millis(800);

/// The roles and permissions every test here runs with. `auth.usersFile` (the user
/// `filer`) is appended by [`AuthBroker::start`].
const AUTH: &str = "\
auth:
  users:
    - name: app
      password: app-pw
    - name: reader
      password: reader-pw
    - name: ops
      password: ops-pw
  allowAnonymous: true
  roles:
    producers: [app]
    consumers: [reader]
    admins: [ops]
    filers: [filer]
    certs: [certuser]
  anonymousRoles: [guest]
  certificateUsers:
    client-cert: certuser
  permissions:
    - match: '>'
      send: [admins]
      consume: [admins]
      browse: [admins]
      create: [admins]
    - match: /queue/orders.>
      send: [producers]
      consume: [consumers]
      browse: [consumers]
      create: [producers]
    - match: /queue/orders.audit
      send: [admins]
      consume: [admins]
      create: [admins]
    - match: /topic/prices.*
      send: [producers]
      consume: [consumers, guest]
      create: [producers]
    - match: /queue/files
      send: [filers]
      consume: [filers, admins]
      create: [admins]
    - match: /queue/certs.>
      send: [certs]
      consume: [certs]
      create: [certs]
";

/// A broker with [`AUTH`] and a users file holding `filer`.
struct AuthBroker {
    broker: Broker,
    _users: tempfile::TempDir,
}

impl AuthBroker {
    fn start(name: &str, extra: &str) -> AuthBroker {
        let users = tempfile::Builder::new().prefix("duomq-authz-users-").tempdir().expect("tempdir");
        let file = users.path().join("users");
        std::fs::write(&file, "# from a mounted Secret\nfiler:filer-pw\n").expect("write the users file");
        let config = format!("{AUTH}  usersFile: {}\n{extra}", file.display());
        AuthBroker { broker: Broker::start(name, &config), _users: users }
    }

    fn login(&self, user: &str) -> Conn {
        let passcode = format!("{user}-pw");
        Conn::connect(self.broker.stomp_port, &[("accept-version", "1.2"), ("host", "/"), ("login", user), ("passcode", &passcode)])
    }

    fn anonymous(&self) -> Conn {
        self.broker.connect()
    }

    fn denied(&self, permission: &str) -> u64 {
        metric_value(self.broker.admin_port, &format!("duomq_authorization_denied_total{{permission=\"{permission}\"}} "))
    }

    /// Whether `/metrics` has a series for `destination`, i.e. the broker holds it.
    fn holds(&self, destination: &str) -> bool {
        let (_, page) = http_get(self.broker.admin_port, "/metrics").expect("GET /metrics");
        page.contains(&format!("queue=\"{destination}\""))
    }

    fn depth(&self, destination: &str) -> u64 {
        metric_value(self.broker.admin_port, &format!("duomq_queue_depth{{queue=\"{destination}\"}} "))
    }
}

/// Sends `frame` with receipt `receipt` and expects the RECEIPT.
fn receipted(c: &mut Conn, frame: Frame, receipt: &str) {
    c.send(&frame.header("receipt", receipt));
    let r = c.expect(Command::Receipt);
    assert_eq!(r.get("receipt-id"), Some(receipt));
}

fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send).header("destination", destination).with_body(body.to_string())
}

fn subscribe(id: &str, destination: &str, ack: &str) -> Frame {
    Frame::new(Command::Subscribe).header("id", id).header("destination", destination).header("ack", ack)
}

/// Expects the ERROR of a denied frame: `message: not authorized`, the frame's receipt,
/// a body naming every one of `says`, and then the socket closed.
fn expect_denied(c: &mut Conn, receipt: &str, says: &[&str]) -> String {
    let e = c.expect(Command::Error);
    assert_eq!(e.get("message"), Some("not authorized"), "{e:?}");
    assert_eq!(e.get("receipt-id"), Some(receipt), "{e:?}");
    let body = body_text(&e);
    for s in says {
        assert!(body.contains(s), "ERROR body {body:?} does not say {s:?}");
    }
    assert!(c.closed_within(FRAME_TIMEOUT), "the connection stays open after a denied frame");
    body
}

/// ACKs or NACKs delivery `id` with a receipt; returns the one MESSAGE the freed prefetch
/// room brings (before or after the RECEIPT).
fn settle(c: &mut Conn, command: Command, id: &str) -> Frame {
    c.send(&Frame::new(command).header("id", id).header("receipt", "settle"));
    let (mut receipt, mut message) = (false, None);
    while !receipt || message.is_none() {
        let f = c.expect_frame();
        match f.command {
            Command::Receipt => receipt = true,
            Command::Message if message.is_none() => message = Some(f),
            _ => panic!("unexpected {} {:?}", f.command, f.headers),
        }
    }
    message.expect("a MESSAGE")
}

/// Reads MESSAGE frames until none comes within [`QUIET`]; returns their bodies.
fn bodies_until_quiet(c: &mut Conn) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(f) = c.read_frame(QUIET) {
        assert_eq!(f.command, Command::Message, "unexpected {} {:?}", f.command, f.headers);
        out.push(body_text(&f));
    }
    out
}

#[test]
fn given_send_without_permission_should_refuse_it_naming_destination_and_permission_and_store_nothing() {
    let b = AuthBroker::start("authz-send", "");
    // Allowed: producers send under orders.> (creating the queue: they hold create).
    let mut app = b.login("app");
    receipted(&mut app, send("/queue/orders.eu", "eu-1").header("persistent", "true"), "s1");
    let mut ops = b.login("ops");
    receipted(&mut ops, send("/queue/orders.audit", "audit-by-ops"), "s2");

    // Denied: the exact entry /queue/orders.audit gives producers nothing, though
    // /queue/orders.> would let them send.
    app.send(&send("/queue/orders.audit", "audit-by-app").header("persistent", "true").header("receipt", "denied-1"));
    let body = expect_denied(
        &mut app,
        "denied-1",
        &["user \"app\" may not send to /queue/orders.audit", "needs the send permission", "\"/queue/orders.audit\"", "roles: producers"],
    );
    println!("denied SEND: {body}");
    assert_eq!(b.denied("send"), 1);
    assert_eq!(b.depth("/queue/orders.audit"), 1, "only ops' message is queued");

    // A consumer with rights sees ops' message and nothing of app's.
    receipted(&mut ops, subscribe("audit", "/queue/orders.audit", "auto"), "sub");
    assert_eq!(bodies_until_quiet(&mut ops), ["audit-by-ops"]);
    let mut reader = b.login("reader");
    receipted(&mut reader, subscribe("eu", "/queue/orders.eu", "auto"), "sub");
    assert_eq!(bodies_until_quiet(&mut reader), ["eu-1"]);

    // A denied SEND to a destination the broker does not hold creates nothing.
    let mut app = b.login("app");
    app.send(&send("/queue/elsewhere", "x").header("receipt", "denied-2"));
    expect_denied(&mut app, "denied-2", &["may not send to /queue/elsewhere", "\">\" does not give", "roles: producers"]);
    assert!(!b.holds("/queue/elsewhere"), "a denied SEND created its destination");
    assert_eq!(b.denied("send"), 2);
}

#[test]
fn given_denied_send_in_transaction_should_commit_nothing_and_allowed_transactions_should_work() {
    let b = AuthBroker::start("authz-tx", "");
    let mut app = b.login("app");
    receipted(&mut app, Frame::new(Command::Begin).header("transaction", "t1"), "b1");
    receipted(&mut app, send("/queue/orders.tx", "t1-allowed").header("transaction", "t1"), "t1-s1");
    // The second SEND of the transaction is denied: ERROR at SEND time, the connection
    // and its transaction end, so the COMMIT after it is never applied.
    app.send(&send("/queue/orders.audit", "t1-denied").header("transaction", "t1").header("receipt", "t1-s2"));
    app.send(&Frame::new(Command::Commit).header("transaction", "t1").header("receipt", "c1"));
    expect_denied(&mut app, "t1-s2", &["may not send to /queue/orders.audit", "needs the send permission"]);

    // Allowed: BEGIN, SEND, COMMIT stores; BEGIN, SEND, ABORT stores nothing.
    let mut app = b.login("app");
    receipted(&mut app, Frame::new(Command::Begin).header("transaction", "t2"), "b2");
    receipted(&mut app, send("/queue/orders.tx", "t2-committed").header("transaction", "t2"), "t2-s1");
    receipted(&mut app, Frame::new(Command::Commit).header("transaction", "t2"), "c2");
    receipted(&mut app, Frame::new(Command::Begin).header("transaction", "t3"), "b3");
    receipted(&mut app, send("/queue/orders.tx", "t3-aborted").header("transaction", "t3"), "t3-s1");
    receipted(&mut app, Frame::new(Command::Abort).header("transaction", "t3"), "a3");

    let mut reader = b.login("reader");
    receipted(&mut reader, subscribe("tx", "/queue/orders.tx", "auto"), "sub");
    assert_eq!(bodies_until_quiet(&mut reader), ["t2-committed"]);
    let mut ops = b.login("ops");
    receipted(&mut ops, subscribe("audit", "/queue/orders.audit", "auto"), "sub");
    assert_eq!(bodies_until_quiet(&mut ops), Vec::<String>::new());
}

#[test]
fn given_subscribe_should_need_consume_and_acks_should_stay_with_the_authorized_subscription() {
    let b = AuthBroker::start("authz-consume", "");
    let mut app = b.login("app");
    receipted(&mut app, send("/queue/orders.eu", "m1"), "s1");
    receipted(&mut app, send("/queue/orders.eu", "m2"), "s2");

    // Denied: producers may not consume.
    app.send(&subscribe("mine", "/queue/orders.eu", "auto").header("receipt", "sub-denied"));
    expect_denied(&mut app, "sub-denied", &["user \"app\" may not consume from /queue/orders.eu", "needs the consume permission"]);
    assert_eq!(b.denied("consume"), 1);
    assert_eq!(b.depth("/queue/orders.eu"), 2, "a denied SUBSCRIBE took messages");

    // Allowed: consumers subscribe, NACK, ACK and UNSUBSCRIBE.
    let mut reader = b.login("reader");
    receipted(&mut reader, subscribe("eu", "/queue/orders.eu", "client-individual").header("activemq.prefetchSize", "1"), "sub");
    let first = reader.expect(Command::Message);
    assert_eq!(body_text(&first), "m1");
    let ack_id = first.get("ack").expect("ack header").to_string();

    // Another client cannot settle the reader's delivery: ACK/NACK only go through a
    // subscription of one's own.
    let mut ops = b.login("ops");
    ops.send(&Frame::new(Command::Ack).header("id", ack_id.as_str()).header("receipt", "steal"));
    let e = ops.expect(Command::Error);
    assert!(e.get("message").is_some_and(|m| m.contains("invalid acknowledgement")), "{e:?}");

    let again = settle(&mut reader, Command::Nack, &ack_id);
    assert_eq!(body_text(&again), "m1");
    assert_eq!(again.get("redelivered"), Some("true"));
    let second = settle(&mut reader, Command::Ack, again.get("ack").expect("ack header"));
    assert_eq!(body_text(&second), "m2");
    receipted(&mut reader, Frame::new(Command::Ack).header("id", second.get("ack").expect("ack header")), "ack2");
    receipted(&mut reader, Frame::new(Command::Unsubscribe).header("id", "eu"), "unsub");
    eventually("both messages acknowledged", FRAME_TIMEOUT, || b.depth("/queue/orders.eu") == 0);
    assert_eq!(b.denied("consume"), 1, "ACK, NACK and UNSUBSCRIBE are not checked again");
}

#[test]
fn given_browse_subscription_should_need_browse_permission() {
    let b = AuthBroker::start("authz-browse", "");
    let mut app = b.login("app");
    receipted(&mut app, send("/queue/orders.eu", "b1"), "s1");

    // Denied: producers may not browse.
    app.send(&subscribe("peek", "/queue/orders.eu", "auto").header("browser", "true").header("receipt", "browse-denied"));
    expect_denied(&mut app, "browse-denied", &["user \"app\" may not browse /queue/orders.eu", "needs the browse permission"]);
    assert_eq!(b.denied("browse"), 1);

    // Allowed: consumers browse (their consume permission alone would not do for the
    // audit queue, where they have neither).
    let mut reader = b.login("reader");
    receipted(&mut reader, subscribe("peek", "/queue/orders.eu", "auto").header("browser", "true"), "sub");
    let seen = reader.expect(Command::Message);
    assert_eq!(body_text(&seen), "b1");
    let end = reader.expect(Command::Message);
    assert_eq!(end.get("browser"), Some("end"));
    assert_eq!(b.depth("/queue/orders.eu"), 1, "browsing consumed");
    let mut ops = b.login("ops");
    receipted(&mut ops, send("/queue/orders.audit", "a"), "s2");
    reader.send(&subscribe("audit", "/queue/orders.audit", "auto").header("browser", "true").header("receipt", "audit"));
    expect_denied(&mut reader, "audit", &["may not browse /queue/orders.audit", "roles: consumers"]);
}

#[test]
fn given_destination_not_held_should_need_create_by_send_and_by_subscribe() {
    let b = AuthBroker::start("authz-create", "");
    // Denied: consumers may consume under orders.> but not create.
    let mut reader = b.login("reader");
    reader.send(&subscribe("fresh", "/queue/orders.fresh", "auto").header("receipt", "create-denied"));
    expect_denied(
        &mut reader,
        "create-denied",
        &["user \"reader\" may not create /queue/orders.fresh", "needs the create permission", "roles: consumers"],
    );
    assert!(!b.holds("/queue/orders.fresh"));
    assert_eq!(b.denied("create"), 1);

    // Allowed by SEND: producers create it; then consumers may subscribe, as it is held.
    let mut app = b.login("app");
    receipted(&mut app, send("/queue/orders.fresh", "f1"), "s1");
    let mut reader = b.login("reader");
    receipted(&mut reader, subscribe("fresh", "/queue/orders.fresh", "auto"), "sub");
    assert_eq!(bodies_until_quiet(&mut reader), ["f1"]);

    // Denied by SEND: `filer` (from auth.usersFile) may send to /queue/files, not create it.
    let mut filer = b.login("filer");
    filer.send(&send("/queue/files", "too early").header("receipt", "file-denied"));
    expect_denied(&mut filer, "file-denied", &["user \"filer\" may not create /queue/files", "roles: filers"]);
    // Allowed by SUBSCRIBE: admins create /queue/files by subscribing; then filer sends.
    let mut ops = b.login("ops");
    receipted(&mut ops, subscribe("files", "/queue/files", "auto"), "sub");
    let mut filer = b.login("filer");
    receipted(&mut filer, send("/queue/files", "file-1"), "s2");
    assert_eq!(bodies_until_quiet(&mut ops), ["file-1"]);
    assert_eq!(b.denied("create"), 2);
}

#[test]
fn given_wildcards_should_let_the_most_specific_entry_decide_and_anonymous_clients_get_their_roles() {
    let b = AuthBroker::start("authz-wildcards", "");
    // /topic/prices.* gives producers send and create, consumers and guests consume.
    let mut app = b.login("app");
    receipted(&mut app, send("/topic/prices.x", "created"), "s1");
    let mut guest = b.anonymous();
    receipted(&mut guest, subscribe("px", "/topic/prices.x", "auto"), "sub");
    receipted(&mut app, send("/topic/prices.x", "tick"), "s2");
    let tick = guest.expect(Command::Message);
    assert_eq!(body_text(&tick), "tick");
    // `*` is one word: /topic/prices.x.y falls to `>`, which guests hold nothing of.
    guest.send(&subscribe("pxy", "/topic/prices.x.y", "auto").header("receipt", "deep"));
    expect_denied(
        &mut guest,
        "deep",
        &["an anonymous client may not consume from /topic/prices.x.y", "the auth.permissions entry \">\" does not give", "roles: guest"],
    );
    // Guests may not send where they may consume.
    let mut guest = b.anonymous();
    guest.send(&send("/topic/prices.x", "spoof").header("receipt", "guest-send"));
    expect_denied(&mut guest, "guest-send", &["an anonymous client may not send to /topic/prices.x", "roles: guest"]);
    // `>` gives admins everything, anywhere, the exact /queue/orders.audit too.
    let mut ops = b.login("ops");
    receipted(&mut ops, send("/queue/anything.at.all", "o1"), "s3");
    receipted(&mut ops, subscribe("any", "/queue/anything.at.all", "auto"), "sub");
    assert_eq!(bodies_until_quiet(&mut ops), ["o1"]);
    // Exact beats `>` for a role the exact entry does not list: ops may not browse audit.
    receipted(&mut ops, send("/queue/orders.audit", "a"), "s4");
    ops.send(&subscribe("peek", "/queue/orders.audit", "auto").header("browser", "true").header("receipt", "peek"));
    expect_denied(&mut ops, "peek", &["user \"ops\" may not browse /queue/orders.audit", "\"/queue/orders.audit\" does not give"]);
}

#[test]
fn given_invalid_pattern_should_refuse_to_start_naming_the_field() {
    let dir = tempfile::Builder::new().prefix("duomq-authz-invalid-").tempdir().expect("tempdir");
    let cases = [
        ("auth:\n  permissions:\n    - match: /queue/orders.>.eu\n      send: []\n", "> must be the last word"),
        ("auth:\n  permissions:\n    - match: /queues/orders\n", "/queue/ or /topic/"),
        ("auth:\n  permissions:\n    - match: /queue/ord*\n", "stand alone between dots"),
        ("auth:\n  permissions:\n    - match: '>'\n      send: [nobody]\n", "role \"nobody\""),
    ];
    for (yaml, says) in cases {
        let text = common::refused_config(dir.path(), yaml);
        assert!(text.contains("auth.permissions") && text.contains(says), "{yaml}: {text}");
    }
}

/// stomp.py over TLS with a client certificate whose CN maps to `certuser` (role `certs`):
/// allowed on /queue/certs.>, refused elsewhere with the ERROR a third-party client sees.
const CERT_CLIENT: &str = r#"
import json, os, queue, ssl, sys
import stomp

port = int(os.environ["PORT"])
events = queue.Queue()

class Listener(stomp.ConnectionListener):
    def on_connected(self, frame): events.put(("CONNECTED", frame.headers, frame.body))
    def on_receipt(self, frame): events.put(("RECEIPT", frame.headers, frame.body))
    def on_message(self, frame): events.put(("MESSAGE", frame.headers, frame.body))
    def on_error(self, frame): events.put(("ERROR", frame.headers, frame.body))
    def on_disconnected(self): events.put(("DISCONNECTED", {}, ""))

def next_event():
    kind, headers, body = events.get(timeout=10)
    return {"kind": kind, "headers": dict(headers), "body": body}

conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0), reconnect_attempts_max=1)
conn.set_ssl(for_hosts=[("127.0.0.1", port)], key_file=os.environ["KEY"], cert_file=os.environ["CERT"],
             ca_certs=os.environ["CA"], ssl_version=ssl.PROTOCOL_TLS_CLIENT)
conn.set_listener("l", Listener())
conn.connect(wait=True)
out = [next_event()]
conn.subscribe("/queue/certs.in", id="c1", ack="auto", receipt="sub")
out.append(next_event())
conn.send("/queue/certs.in", "hello over tls", receipt="allowed")
out += [next_event(), next_event()]
conn.send("/queue/orders.eu", "not mine", receipt="denied")
out += [next_event(), next_event()]
print(json.dumps(out))
"#;

#[test]
fn given_certificate_user_should_get_its_roles_and_stomppy_should_get_the_error() {
    let pki = Pki::new("authz");
    let server = pki.leaf("broker");
    let client = pki.leaf("client-cert");
    let tls = pki.config_with_client_auth(&server, &["stomp"], "stomp", "required");
    let b = AuthBroker::start("authz-cert", &tls);

    let env = [("CERT", client.cert.as_os_str()), ("KEY", client.key.as_os_str()), ("CA", pki.ca_file.as_os_str())];
    let events = common::stomppy(CERT_CLIENT, b.broker.stomp_port, &env);
    let events = events.as_array().cloned().unwrap_or_default();
    println!("stomp.py saw: {events:#?}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap_or("?")).collect();
    let message = events.iter().find(|e| e["kind"] == "MESSAGE").expect("a MESSAGE");
    assert_eq!(message["body"], "hello over tls");
    assert_eq!(&kinds[..2], ["CONNECTED", "RECEIPT"]);
    assert!(kinds[2..4].contains(&"RECEIPT") && kinds[2..4].contains(&"MESSAGE"), "{kinds:?}");
    assert_eq!(&kinds[4..], ["ERROR", "DISCONNECTED"]);
    let error = &events[4];
    assert_eq!(error["headers"]["message"], "not authorized");
    assert_eq!(error["headers"]["receipt-id"], "denied");
    let body = error["body"].as_str().unwrap_or("");
    assert!(
        body.contains("user \"certuser\" may not send to /queue/orders.eu (needs the send permission") && body.contains("roles: certs"),
        "{body}"
    );
    assert_eq!(b.denied("send"), 1);
    assert!(!b.holds("/queue/orders.eu"));
}
