//! Drives the broker's AMQP 1.0 listener with python-qpid-proton (the independent
//! third-party client, its blocking API): one `python3` process per [`proton`] call runs
//! [`PRELUDE`] then the test's code, which fills `out` and has it printed as JSON.

use serde_json::Value;
use std::ffi::OsStr;

/// `url` (the broker's AMQP address, `amqps://` with `AMQP_SCHEME=amqps`; with
/// `AMQP_USER`/`AMQP_PASSWORD` when set), `ssl_domain(cert, key)` (trusts `AMQP_CA`),
/// `connect(**kw)` (a `BlockingConnection`, 15 s timeouts), `body(m)` (a received body as
/// text), `condition(e)` (an exception's AMQP error condition name, if any), and `out`,
/// the dict printed as JSON at the end.
pub const PRELUDE: &str = r#"
import json, os, sys, time
from proton import Message, Condition, ConnectionException
from proton.reactor import AtMostOnce, AtLeastOnce
from proton.utils import BlockingConnection, LinkDetached, SendException

url = "%s://127.0.0.1:%s" % (os.environ.get("AMQP_SCHEME", "amqp"), os.environ["PORT"])
out = {}

def ssl_domain(cert=None, key=None):
    """A client SSL domain trusting AMQP_CA, checking the server's name; with a
    client certificate when given."""
    from proton import SSLDomain
    d = SSLDomain(SSLDomain.MODE_CLIENT)
    d.set_trusted_ca_db(os.environ["AMQP_CA"])
    d.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    if cert:
        d.set_credentials(cert, key, None)
    return d

def connect(**kw):
    if os.environ.get("AMQP_USER"):
        kw.setdefault("user", os.environ["AMQP_USER"])
        kw.setdefault("password", os.environ.get("AMQP_PASSWORD", ""))
        kw.setdefault("allowed_mechs", "PLAIN")
    return BlockingConnection(url, timeout=15, **kw)

def body(m):
    b = m.body
    if isinstance(b, (bytes, memoryview)):
        return bytes(b).decode("utf-8", "replace")
    return b

def condition(e):
    for attr in ("condition", "remote_condition"):
        c = getattr(e, attr, None)
        if c is not None:
            return c if isinstance(c, str) else c.name
    text = str(e)
    for word in text.replace("(", " ").replace(")", " ").replace(",", " ").split():
        if word.startswith("amqp:"):
            return word
    return text
"#;

/// Runs [`PRELUDE`] then `code` against the AMQP listener on `port`; returns `out`.
pub fn proton(code: &str, port: u16, env: &[(&str, &OsStr)]) -> Value {
    let script = format!("{PRELUDE}\ntry:\n{}\nfinally:\n    print(json.dumps(out))\n", indent(code));
    super::python_json(&script, port, env, "python-qpid-proton")
}

fn indent(code: &str) -> String {
    let lines: Vec<&str> = code.lines().filter(|l| !l.trim().is_empty()).collect();
    let margin = lines.iter().map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    lines.iter().map(|l| format!("    {}", &l[margin..])).collect::<Vec<_>>().join("\n")
}

/// The broker config that turns the AMQP listener on (the harness points it at
/// `Broker::amqp_port`).
pub const ENABLED: &str = "amqp:\n  enabled: true\n";
