//! Drives the broker with stomp.py (the real third-party client): one `python3` process
//! per session (run by [`super::stomppy`]) does a list of steps (subscribe, send, receive,
//! unsubscribe, ...) and reports what it saw as JSON. Every frame that asks for one carries
//! a receipt and the step waits for it, so a session's steps are done in order when
//! [`session`] returns.
//!
//! A test that needs what steps do not offer (NACK, arrival times, any header) runs a
//! [`script`] of its own after [`PRELUDE`] instead.

use serde_json::{json, Value};
use std::ffi::OsStr;

/// The step interpreter. Steps (JSON objects, by `op`):
/// `subscribe {destination, id, ack?, headers?}`, `unsubscribe {id, headers?}`,
/// `send {destination, body, persistent?, size?, headers?}` (`body` repeated to `size` bytes), `receive {count, seconds}` (ACKs each message
/// unless its subscription is `auto`, with a receipt awaited before the next step),
/// `quiet {seconds}` (collects whatever arrives),
/// `disconnect`. The session stops at the first ERROR.
const DRIVER: &str = r#"
import json, os, queue, sys, time
import stomp

events = queue.Queue()

class Listener(stomp.ConnectionListener):
    def on_message(self, frame): events.put(("MESSAGE", dict(frame.headers), frame.body))
    def on_receipt(self, frame): events.put(("RECEIPT", dict(frame.headers), frame.body))
    def on_error(self, frame): events.put(("ERROR", dict(frame.headers), frame.body))
    def on_disconnected(self): events.put(("DISCONNECTED", {}, ""))

out = {"messages": [], "errors": [], "done": 0}
conn = stomp.Connection12([(os.environ["HOST"], int(os.environ["PORT"]))], heartbeats=(0, 0), reconnect_attempts_max=1)
conn.set_listener("l", Listener())
conn.connect(wait=True, headers=json.loads(os.environ["CONNECT_HEADERS"]))
acks = {}
ack_receipts = []

def handle(kind, headers, body):
    if kind == "MESSAGE":
        out["messages"].append({"body": body, "headers": headers})
        if acks.get(headers.get("subscription"), "auto") != "auto":
            ack_receipts.append("ack-" + headers["message-id"])
            conn.ack(headers["ack"], receipt=ack_receipts[-1])
    elif kind == "ERROR":
        out["errors"].append({"message": headers.get("message", ""), "body": body})
        raise StopIteration

def until(check, seconds):
    deadline = time.time() + seconds
    while not check():
        left = deadline - time.time()
        if left <= 0:
            return
        try:
            kind, headers, body = events.get(timeout=left)
        except queue.Empty:
            return
        if kind == "RECEIPT":
            receipts.add(headers.get("receipt-id"))
        else:
            handle(kind, headers, body)

receipts = set()
def receipted(receipt):
    until(lambda: receipt in receipts, 15)
    if receipt not in receipts:
        raise SystemExit("no RECEIPT " + receipt)

try:
    for n, step in enumerate(json.loads(os.environ["STEPS"])):
        op, r = step["op"], "r-%d" % n
        if op == "subscribe":
            acks[step["id"]] = step.get("ack", "client-individual")
            conn.subscribe(step["destination"], id=step["id"], ack=acks[step["id"]], headers=step.get("headers", {}), receipt=r)
            receipted(r)
        elif op == "unsubscribe":
            conn.unsubscribe(id=step["id"], headers=step.get("headers", {}), receipt=r)
            receipted(r)
        elif op == "send":
            body = (step["body"] * step.get("size", 1))[:step.get("size", len(step["body"]))]
            headers = dict(step.get("headers", {}), **({"persistent": "true"} if step.get("persistent") else {}))
            conn.send(step["destination"], body, headers=headers, receipt=r)
            receipted(r)
        elif op == "receive":
            want = len(out["messages"]) + step["count"]
            until(lambda: len(out["messages"]) >= want, step["seconds"])
        elif op == "quiet":
            until(lambda: False, step["seconds"])
        if op in ("receive", "quiet"):
            # What was acknowledged is durable before the next step.
            for a in ack_receipts:
                receipted(a)
            ack_receipts.clear()
        if op == "disconnect":
            conn.disconnect()
        out["done"] = n + 1
except StopIteration:
    pass
print(json.dumps(out))
"#;

/// What one session saw: message bodies in arrival order, ERROR `message` headers, and
/// how many steps completed.
#[derive(Debug, Clone)]
pub struct Seen {
    pub messages: Vec<String>,
    pub errors: Vec<String>,
    pub done: usize,
    pub raw: Value,
}

/// Runs one stomp.py session on `host:port` with CONNECT `headers`, doing `steps`.
pub fn session(host: &str, port: u16, headers: Value, steps: Value) -> Seen {
    let (headers, steps) = (headers.to_string(), steps.to_string());
    let env: [(&str, &OsStr); 3] = [("HOST", host.as_ref()), ("CONNECT_HEADERS", headers.as_ref()), ("STEPS", steps.as_ref())];
    let raw = super::stomppy(DRIVER, port, &env);
    let strings = |key: &str, field: &str| -> Vec<String> {
        raw[key].as_array().map(|a| a.iter().map(|m| m[field].as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
    };
    Seen { messages: strings("messages", "body"), errors: strings("errors", "message"), done: raw["done"].as_u64().unwrap_or(0) as usize, raw }
}

/// CONNECT headers naming the client (`client-id`).
pub fn client(id: &str) -> Value {
    json!({ "client-id": id })
}

/// What a [`script`] starts with: `port` from `PORT`, a listener putting each frame on
/// `events`, `next_event(timeout)` (a frame as `{"kind", "headers", "body", "at"}`, `at` in
/// seconds since the epoch when it arrived), `no_event(timeout)` (None when nothing came)
/// and `connect()`.
pub const PRELUDE: &str = r#"
import json, os, queue, sys, time
import stomp

port = int(os.environ["PORT"])
events = queue.Queue()

class Listener(stomp.ConnectionListener):
    def on_receipt(self, frame): events.put(("RECEIPT", frame.headers, frame.body, time.time()))
    def on_message(self, frame): events.put(("MESSAGE", frame.headers, frame.body, time.time()))
    def on_error(self, frame): events.put(("ERROR", frame.headers, frame.body, time.time()))

def next_event(timeout=20):
    kind, headers, body, at = events.get(timeout=timeout)
    return {"kind": kind, "headers": dict(headers), "body": body, "at": at}

def no_event(timeout):
    try:
        e = events.get(timeout=timeout)
        return {"kind": e[0], "headers": dict(e[1]), "body": e[2], "at": e[3]}
    except queue.Empty:
        return None

def connect():
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0), reconnect_attempts_max=1)
    conn.set_listener("l", Listener())
    conn.connect(wait=True)
    return conn
"#;

/// Runs [`PRELUDE`] then `code` against the broker on `port` with `env`; returns the JSON
/// it prints.
pub fn script(code: &str, port: u16, env: &[(&str, &OsStr)]) -> Value {
    super::stomppy(&format!("{PRELUDE}\n{code}"), port, env)
}
