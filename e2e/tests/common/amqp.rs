//! AMQP 1.0 clients for the scenarios: python-qpid-proton (the independent third-party
//! client the broker's own AMQP tests use), one `python3` process per call, through the
//! addresses [`super::Env::amqp_address`] and [`super::Env::member_amqp_address`] give.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

/// The AMQP port of a BrokerGroup that leaves `spec.ports.amqp` at its default.
pub const PORT: u16 = 5672;

/// Longest a client process may take: proton's own timeouts are 15 s per step.
const CLIENT_DONE: Duration = Duration::from_secs(90);

/// Defines `url` (from `ADDRESS`), `connect()` (a `BlockingConnection`, SASL ANONYMOUS as a
/// BrokerGroup without `usersSecret` offers) and `out`, the dict printed as JSON at the end
/// whatever happens; an exception is recorded in `out["error"]`.
const PRELUDE: &str = r#"
import json, os
from proton import Message
from proton.utils import BlockingConnection

url = "amqp://%s" % os.environ["ADDRESS"]
out = {}

def connect():
    return BlockingConnection(url, timeout=15)
"#;

/// Runs [`PRELUDE`] then `code` (indented by four spaces, inside a `try`) against `address`;
/// returns `out`.
async fn proton<T: for<'de> Deserialize<'de>>(code: &str, address: SocketAddr) -> Result<T> {
    let script = format!("{PRELUDE}\ntry:\n{code}\nexcept Exception as e:\n    out[\"error\"] = \"%s: %s\" % (type(e).__name__, e)\nfinally:\n    print(json.dumps(out))\n");
    let child = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .env("ADDRESS", address.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("failed to run python3: install python-qpid-proton with scripts/test --install-only")?;
    let output = tokio::time::timeout(CLIENT_DONE, child.wait_with_output()).await.with_context(|| format!("the proton client took over {CLIENT_DONE:?}"))??;
    let (text, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "the proton client failed: {err}\n{text}");
    serde_json::from_str(text.trim()).with_context(|| format!("the proton client printed {text:?}\n{err}"))
}

#[derive(Deserialize)]
struct Sent {
    #[serde(default)]
    accepted: Vec<String>,
    error: Option<String>,
}

/// Sends the bodies `<prefix>-<i>` for `i` in `range`, durable, each waiting for the broker
/// to settle it `accepted` (journaled and held by the in-sync backup). Returns the bodies
/// accepted, and the error that ended the connection early, if one did.
pub async fn send_durable(address: SocketAddr, queue: &str, prefix: &str, range: std::ops::Range<usize>) -> Result<(Vec<String>, Option<String>)> {
    let code = format!(
        r#"    out["accepted"] = []
    c = connect()
    s = c.create_sender("{queue}", name="e2e-sender")
    for i in range({start}, {end}):
        body = "{prefix}-%d" % i
        s.send(Message(body=body, durable=True))
        out["accepted"].append(body)
    c.close()"#,
        start = range.start,
        end = range.end
    );
    let sent: Sent = proton(&code, address).await?;
    Ok((sent.accepted, sent.error))
}

#[derive(Deserialize)]
struct Received {
    #[serde(default)]
    got: Vec<String>,
    error: Option<String>,
}

/// Receives from `queue` until nothing comes for 5 s, accepting each message; returns the
/// bodies, and the error that ended the connection early, if one did.
pub async fn receive_all(address: SocketAddr, queue: &str) -> Result<(BTreeSet<String>, Option<String>)> {
    let code = format!(
        r#"    from proton import Timeout
    out["got"] = []
    c = connect()
    r = c.create_receiver("{queue}", credit=100, name="e2e-receiver")
    while True:
        try:
            m = r.receive(timeout=5)
        except Timeout:
            break
        out["got"].append(m.body if isinstance(m.body, str) else bytes(m.body).decode())
        r.accept()
    c.close()"#
    );
    let received: Received = proton(&code, address).await?;
    Ok((received.got.into_iter().collect(), received.error))
}

/// How a broker closed a connection: its error condition and the redirect's `info`.
#[derive(Debug, Deserialize)]
pub struct Closed {
    pub condition: Option<String>,
    pub description: Option<String>,
    #[serde(rename = "network-host")]
    pub network_host: Option<String>,
    pub port: Option<u16>,
    pub error: Option<String>,
}

/// Opens a connection to `address` and reports how the broker closed it, without following
/// a redirect (its target is a cluster DNS name, which this machine need not resolve). A
/// broker that keeps the connection open for 5 s is left with no condition.
pub async fn close_of(address: SocketAddr) -> Result<Closed> {
    let code = r#"    from proton.handlers import MessagingHandler
    from proton.reactor import Container
    class GiveUp:
        def __init__(self, connection):
            self.connection = connection
        def on_timer_task(self, event):
            self.connection.close()
    class Closed(MessagingHandler):
        def on_start(self, event):
            event.container.connect(url, reconnect=False)
        def on_connection_opened(self, event):
            self.give_up = event.container.schedule(5, GiveUp(event.connection))
        def on_connection_error(self, event):
            if getattr(self, "give_up", None) is not None:
                self.give_up.cancel()
            c = event.connection.remote_condition
            out["condition"] = c.name
            out["description"] = c.description
            info = c.info or {}
            out["network-host"] = str(info.get("network-host"))
            out["port"] = int(info.get("port", 0))
        def on_transport_error(self, event):
            out.setdefault("error", str(event.transport.condition))
    Container(Closed()).run()"#;
    proton(code, address).await
}
