//! Test harness: runs the real `duomq-broker` binary as a process on free loopback ports
//! in a temp dir, with a per-test log file, and speaks raw STOMP to it. Waits poll with
//! named timeouts; nothing sleeps for synchronisation.
#![allow(dead_code, unused_imports)] // each test binary uses its own part of the kit

pub mod amqp;
pub mod cluster;
pub mod kube_api;
pub mod postgres;
pub mod stomppy;
pub mod tls;

use bytes::BytesMut;
use duomq_broker::stomp::{Command, Frame, Inbound, Limits, StompCodec, Version};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

pub use duomq_testkit::process::{output_within, proc_memory as proc_memory_of};
pub use duomq_testkit::timeouts::{BROKER_READY as READY_TIMEOUT, FRAME as FRAME_TIMEOUT};
pub use duomq_testkit::timeouts::STOP as STOP_TIMEOUT;
pub use duomq_testkit::{eventually, reserve_port, Deadline};

pub struct Broker {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub stomp_port: u16,
    pub admin_port: u16,
    /// Where `amqp.listen` points (the listener runs only with `amqp.enabled`).
    pub amqp_port: u16,
    pub log: PathBuf,
    pub extra_config: String,
    _temp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker with `extra_config` YAML appended to a generated config file.
    pub fn start(name: &str, extra_config: &str) -> Broker {
        let temp = tempfile::Builder::new().prefix(&format!("duomq-{name}-")).tempdir().expect("tempdir");
        let dir = temp.path().to_path_buf();
        let mut b = Broker {
            child: None,
            data_dir: dir.join("data"),
            dir,
            stomp_port: 0,
            admin_port: 0,
            amqp_port: 0,
            log: PathBuf::new(),
            extra_config: extra_config.to_string(),
            _temp: Some(temp),
        };
        b.spawn();
        b
    }

    /// Starts a broker on an existing data dir (for example a small tmpfs).
    pub fn start_in(dir: &Path, data_dir: &Path, extra_config: &str) -> Broker {
        let mut b = Broker {
            child: None,
            data_dir: data_dir.to_path_buf(),
            dir: dir.to_path_buf(),
            stomp_port: 0,
            admin_port: 0,
            amqp_port: 0,
            log: PathBuf::new(),
            extra_config: extra_config.to_string(),
            _temp: None,
        };
        b.spawn();
        b
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("broker.yaml")
    }

    fn spawn(&mut self) {
        // A fresh pair of ports each start: a killed broker's ports may linger in TIME_WAIT.
        for _attempt in 0..5 {
            self.stomp_port = reserve_port();
            self.admin_port = reserve_port();
            self.amqp_port = reserve_port();
            if self.launch() {
                return;
            }
            let _ = self.kill9();
            if !self.log_text().contains("Address already in use") {
                break;
            }
        }
        panic!("broker did not become ready within {READY_TIMEOUT:?}; log:\n{}", self.log_text());
    }

    /// Starts the binary on the current ports and data dir; true once `/readyz` answers.
    fn launch(&mut self) -> bool {
        std::fs::write(self.config_path(), &self.extra_config).expect("write config");
        self.log = self.dir.join("broker.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open broker log");
        let child = Process::new(env!("CARGO_BIN_EXE_duomq-broker"))
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--stomp-listen")
            .arg(format!("127.0.0.1:{}", self.stomp_port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .arg("--amqp-listen")
            .arg(format!("127.0.0.1:{}", self.amqp_port))
            .env("RUST_LOG", "duomq_broker=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn duomq-broker");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Kills (if running) and starts again on the same ports and data dir, for clients
    /// that must reconnect to the same address.
    pub fn restart_in_place(&mut self) {
        self.kill9();
        if !self.launch() {
            panic!("broker did not come back within {READY_TIMEOUT:?}; log:\n{}", self.log_text());
        }
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Deadline::after("the broker answering /readyz", READY_TIMEOUT);
        while !deadline.passed() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if http_get_admin("127.0.0.1", self.admin_port, "/readyz", &self.config_path()).map(|(s, _)| s == 200).unwrap_or(false) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The broker's resident memory now (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        proc_memory(self.pid(), "VmRSS:")
    }

    /// The broker's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_memory(self.pid(), "VmHWM:")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("broker running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        duomq_testkit::process::wait_within(&mut child, STOP_TIMEOUT).unwrap_or_else(|e| panic!("broker after SIGTERM: {e}; log:\n{}", self.log_text()))
    }

    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn();
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.stomp_port, &[("accept-version", "1.2"), ("host", "/")])
    }

    /// `/status`, with the credentials its config gives (see [`http_get_admin`]).
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http_get_admin("127.0.0.1", self.admin_port, "/status", &self.config_path()).expect("GET /status");
        assert_eq!(code, 200, "GET /status: {body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Replaces the broker's fault rules (it runs with `debug.faultInjection: true`).
    pub fn set_faults(&self, rules: &duomq_broker::faults::FaultRules) {
        set_faults("127.0.0.1", self.admin_port, &self.config_path(), rules);
    }

    /// Removes the broker's fault rules.
    pub fn clear_faults(&self) {
        clear_faults("127.0.0.1", self.admin_port, &self.config_path());
    }

    /// Depth (pending + in flight) of a queue from /status.
    pub fn queue_depth(&self, name: &str) -> u64 {
        let s = self.status();
        s["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == name))
            .map(|q| q["depth"].as_u64().unwrap_or(0) + q["inFlight"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- broker log ({}) ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A minimal HTTP/1.0 GET for the admin endpoint on loopback.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_at("127.0.0.1", port, path)
}

/// A minimal HTTP/1.0 GET for an admin endpoint at `ip`.
pub fn http_get_at(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(ip, port, &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"), Duration::from_secs(5))
}

/// How a test reads a broker's closed admin views (`/status`): what its config gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCredentials {
    /// Requests signed with the cluster password.
    Signed(String),
    /// HTTP Basic of a user holding a role in `auth.adminRoles`.
    Basic(String, String),
    /// Neither: the broker is open.
    None,
}

impl AdminCredentials {
    /// The cluster password when the config has one, else its first user holding a role in
    /// `auth.adminRoles`, else none.
    pub fn of(config: &duomq_broker::config::BrokerConfig) -> AdminCredentials {
        if let Some(password) = config.ha.load_password().ok().filter(|p| !p.is_empty()) {
            return AdminCredentials::Signed(password);
        }
        let holds_admin_role = |name: &str| {
            config.auth.admin_roles.iter().any(|role| config.auth.roles.get(role).is_some_and(|holders| holders.iter().any(|h| h == name)))
        };
        let users = config.load_users().unwrap_or_default();
        match users.into_iter().find(|u| holds_admin_role(&u.name)) {
            Some(u) => AdminCredentials::Basic(u.name, u.password),
            None => AdminCredentials::None,
        }
    }

    /// The header of a bodiless request.
    pub fn header(&self, method: &str, path: &str) -> Option<(&'static str, String)> {
        use duomq_broker::admin::auth;
        match self {
            AdminCredentials::Signed(p) => Some((auth::SIGNATURE_HEADER, auth::sign(p.as_bytes(), method, path, b"", auth::unix_now()))),
            AdminCredentials::Basic(user, password) => Some(("authorization", auth::basic_header(user, password))),
            AdminCredentials::None => None,
        }
    }
}

/// A broker's config as it reads it (the file alone: no environment, no flags).
pub fn load_config(config_file: &Path) -> Option<duomq_broker::config::BrokerConfig> {
    duomq_broker::config::BrokerConfig::load(Some(config_file), std::iter::empty(), &[]).ok()
}

/// A GET of an admin view of the broker configured by `config_file`, as the tests read
/// `/status`: over TLS (checked against its `tls.caFile`) when it has `tls.admin.enabled`,
/// with the [`AdminCredentials`] its config gives.
pub fn http_get_admin(ip: &str, port: u16, path: &str, config_file: &Path) -> std::io::Result<(u16, String)> {
    let config = load_config(config_file);
    let credentials = config.as_ref().map_or(AdminCredentials::None, AdminCredentials::of);
    if let Some(tls) = config.as_ref().map(|c| &c.tls).filter(|t| t.admin.enabled) {
        let ca = tls.ca_file.clone().ok_or_else(|| std::io::Error::other("tls.admin.enabled without tls.caFile: the test cannot check the certificate"))?;
        let client = duomq_broker::admin::client::AdminClient::new(&format!("https://{ip}:{port}"))
            .and_then(|c| c.with_ca_file(&ca, None))
            .map_err(std::io::Error::other)?;
        let client = match credentials {
            AdminCredentials::Signed(password) => client.with_password(&password),
            AdminCredentials::Basic(user, password) => client.with_basic(&user, &password),
            AdminCredentials::None => client,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let reply = runtime.block_on(client.get(path)).map_err(std::io::Error::other)?;
        return Ok((reply.code, String::from_utf8_lossy(&reply.body).into_owned()));
    }
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some((name, value)) = credentials.header("GET", path) {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    http_request(ip, port, &request, Duration::from_secs(5))
}

/// A minimal HTTP/1.0 POST of a JSON body with extra headers, for admin writes (which may
/// take a while: a switchover answers once it is done).
pub fn http_post_at(ip: &str, port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, String)> {
    http_send_at(ip, port, "POST", path, headers, body)
}

/// [`http_post_at`] with another method (`PUT`, `DELETE`).
pub fn http_send_at(ip: &str, port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    http_request(ip, port, &request, Duration::from_secs(60))
}

/// A `POST` of `body` to an admin write (`/ha/fence`, `/ha/drain`, ...) signed with
/// `password` as the operator signs it; `None` sends it unsigned.
pub fn signed_post(ip: &str, port: u16, path: &str, body: &str, password: Option<&str>) -> (u16, String) {
    signed_request(ip, port, "POST", path, body, password)
}

/// [`signed_post`] with another method (`PUT`, `DELETE`), which the signature covers.
pub fn signed_request(ip: &str, port: u16, method: &str, path: &str, body: &str, password: Option<&str>) -> (u16, String) {
    use duomq_broker::admin::auth;
    let signature = password.map(|p| auth::sign(p.as_bytes(), method, path, body.as_bytes(), auth::unix_now()));
    let headers: Vec<(&str, &str)> = signature.iter().map(|s| (auth::SIGNATURE_HEADER, s.as_str())).collect();
    http_send_at(ip, port, method, path, &headers, body).unwrap_or_else(|e| panic!("{method} {path} to {ip}:{port}: {e}"))
}

/// Sets the fault rules of the broker configured by `config_file` (started with
/// `debug.faultInjection: true`), replacing those in force, signed with its cluster password.
pub fn set_faults(ip: &str, port: u16, config_file: &Path, rules: &duomq_broker::faults::FaultRules) {
    let body = serde_json::to_string(rules).expect("rules to JSON");
    let (code, answer) = signed_request(ip, port, "PUT", duomq_broker::admin::api::DEBUG_FAULTS, &body, Some(&cluster_password(config_file)));
    assert_eq!(code, 200, "PUT {body}: {answer}");
}

/// Removes every fault rule of the broker configured by `config_file`: the network heals.
pub fn clear_faults(ip: &str, port: u16, config_file: &Path) {
    let (code, answer) = signed_request(ip, port, "DELETE", duomq_broker::admin::api::DEBUG_FAULTS, "", Some(&cluster_password(config_file)));
    assert_eq!(code, 200, "DELETE: {answer}");
}

/// The fault rules in force and what each did.
pub fn fault_status(ip: &str, port: u16, config_file: &Path) -> duomq_broker::faults::FaultsStatus {
    let (code, body) = http_get_admin(ip, port, duomq_broker::admin::api::DEBUG_FAULTS, config_file).expect("GET the fault rules");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("fault status JSON")
}

fn cluster_password(config_file: &Path) -> String {
    load_config(config_file).and_then(|c| c.ha.load_password().ok()).filter(|p| !p.is_empty()).expect("a cluster password in the config")
}

fn http_request(ip: &str, port: u16, request: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(request.as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// A raw STOMP connection: frames are written and read exactly as given.
pub struct Conn {
    pub stream: TcpStream,
    codec: StompCodec,
    buf: BytesMut,
    pub heartbeats_seen: usize,
}

impl Conn {
    pub fn raw(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to broker");
        stream.set_nodelay(true).expect("nodelay");
        Conn::from_stream(stream)
    }

    /// Wraps a socket the test drove by hand so far.
    pub fn from_stream(stream: TcpStream) -> Conn {
        Conn { stream, codec: StompCodec::new(Limits::default()), buf: BytesMut::new(), heartbeats_seen: 0 }
    }

    /// Connects and expects CONNECTED.
    /// Connects unless the broker is gone (for crash tests).
    pub fn try_connect(port: u16) -> Option<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        let _ = stream.set_nodelay(true);
        let mut c =
            Conn { stream, codec: StompCodec::new(Limits::default()), buf: BytesMut::new(), heartbeats_seen: 0 };
        c.try_send(&Frame::new(Command::Connect).header("accept-version", "1.2")).ok()?;
        let reply = c.read_frame(FRAME_TIMEOUT)?;
        (reply.command == Command::Connected).then_some(c)
    }

    pub fn connect(port: u16, headers: &[(&str, &str)]) -> Conn {
        let mut c = Conn::raw(port);
        let mut f = Frame::new(Command::Connect);
        for (k, v) in headers {
            f = f.header(*k, *v);
        }
        c.send(&f);
        let reply = c.expect_frame();
        assert_eq!(reply.command, Command::Connected, "CONNECT refused: {reply:?}");
        if let Some(v) = reply.get("version").and_then(Version::parse) {
            c.codec.set_version(v);
        }
        c
    }

    pub fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out);
        self.stream.write_all(&out).expect("write frame");
    }

    /// Like [`Conn::send`], but a dead socket is an error, not a panic.
    pub fn try_send(&mut self, frame: &Frame) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out);
        self.stream.write_all(&out)
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame (heart-beats are counted and skipped), or None on timeout/close.
    pub fn read_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Deadline::after("a frame", timeout);
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Inbound::Frame(f))) => return Some(f),
                Ok(Some(Inbound::Heartbeat)) => {
                    self.heartbeats_seen += 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("broker sent a malformed frame: {e}"),
            }
            if deadline.passed() {
                return None;
            }
            self.stream.set_read_timeout(Some(deadline.left_at_least(Duration::from_millis(1)))).ok()?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    pub fn expect_frame(&mut self) -> Frame {
        self.read_frame(FRAME_TIMEOUT).unwrap_or_else(|| panic!("no frame within {FRAME_TIMEOUT:?}"))
    }

    pub fn expect(&mut self, command: Command) -> Frame {
        let f = self.expect_frame();
        assert_eq!(f.command, command, "unexpected frame {} {:?} ({} body bytes)", f.command, f.headers, f.body.len());
        f
    }

    /// True once the broker has closed the socket (reads EOF within the timeout).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Deadline::after("the socket to close", timeout);
        loop {
            if deadline.passed() {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(deadline.left_at_least(Duration::from_millis(1))));
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    pub fn subscribe(&mut self, id: &str, dest: &str, ack: &str, extra: &[(&str, &str)]) {
        let mut f = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("ack", ack)
            .header("receipt", format!("sub-{id}"));
        for (k, v) in extra {
            f = f.header(*k, *v);
        }
        self.send(&f);
        self.expect(Command::Receipt);
    }

    /// SEND with a receipt, waits for the RECEIPT.
    pub fn send_receipted(&mut self, dest: &str, body: &str, persistent: bool) {
        let receipt = format!("r-{}", rand_u64());
        let mut f = Frame::new(Command::Send)
            .header("destination", dest)
            .header("receipt", receipt.clone())
            .with_body(body.to_string());
        if persistent {
            f = f.header("persistent", "true");
        }
        self.send(&f);
        let r = self.expect(Command::Receipt);
        assert_eq!(r.get("receipt-id"), Some(receipt.as_str()));
    }

    /// ACKs a message; with `receipt`, waits for the RECEIPT and returns the MESSAGEs
    /// that arrived meanwhile (an ack frees prefetch room, so more may come first).
    pub fn ack(&mut self, msg: &Frame, receipt: bool) -> Vec<Frame> {
        let mut f = Frame::new(Command::Ack).header("id", msg.get("ack").expect("ack header"));
        let mut arrived = Vec::new();
        if receipt {
            f = f.header("receipt", "ack");
        }
        self.send(&f);
        if !receipt {
            return arrived;
        }
        loop {
            let f = self.expect_frame();
            match f.command {
                Command::Receipt => break,
                Command::Message => arrived.push(f),
                _ => panic!("unexpected frame {} {:?}", f.command, f.headers),
            }
        }
        arrived
    }

    pub fn disconnect(mut self) {
        self.send(&Frame::new(Command::Disconnect).header("receipt", "bye"));
        let _ = self.read_frame(FRAME_TIMEOUT);
    }
}

/// The broker binary's command line (`send`, `receive`, ...), quiet about backtraces.
pub fn cli(args: &[&str]) -> Process {
    let mut c = Process::new(env!("CARGO_BIN_EXE_duomq-broker"));
    c.args(args).env_remove("RUST_BACKTRACE");
    c
}

/// Starts the broker on `yaml` (a config file in `dir`) and expects it to refuse to start;
/// returns what it printed. Panics when it started after all.
pub fn refused_config(dir: &std::path::Path, yaml: &str) -> String {
    let config = dir.join("broker.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let data = dir.join("data");
    let child = cli(&["run", "--config", config.to_str().expect("utf-8 path"), "--data-dir", data.to_str().expect("utf-8 path")])
        .args(["--stomp-listen", &format!("127.0.0.1:{}", reserve_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", reserve_port())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the broker");
    let out = output_within(child, Duration::from_secs(30)).expect("the broker refuses to start");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{yaml} was accepted: {text}");
    text
}

/// Receives exactly `count` messages with the CLI and returns its summary line.
pub fn receive_all(url: &str, queue: &str, count: usize) -> String {
    let out = cli(&["receive", "--url", url, "--destination", queue, "--count", &count.to_string(), "--timeout", "10s"])
        .output()
        .expect("run consumer");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "consumer did not get every receipted message from {queue}: {summary}");
    assert!(summary.contains(&format!("received {count} messages")), "{summary}");
    summary
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in bytes.
pub fn proc_memory(pid: i32, field: &str) -> u64 {
    let pid = u32::try_from(pid).unwrap_or_else(|_| panic!("no process {pid}"));
    proc_memory_of(pid, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The value of the first `/metrics` line starting with `line_start` (a series name with
/// its labels, and a space to exclude longer names), 0 if none.
pub fn metric_value(admin_port: u16, line_start: &str) -> u64 {
    let (_, page) = http_get(admin_port, "/metrics").expect("GET /metrics");
    page.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn body_text(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

/// Runs a stomp.py 8 script (`python3 -c`) with `PORT` and `env` set, and returns what
/// it prints on stdout as JSON; panics with its output if it fails or takes past a minute.
pub fn stomppy(script: &str, port: u16, env: &[(&str, &std::ffi::OsStr)]) -> serde_json::Value {
    // No slow hostname lookups at stomp.py import.
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().copied().chain([("STOMP_SKIP_HOSTNAME_SCAN", "1".as_ref())]).collect();
    python_json(script, port, &env, "stomp.py 8")
}

/// Runs a Python script of a third-party client (`python3 -c`, `client` names it in
/// failures) with `PORT` and `env` set, and returns what it prints on stdout as JSON;
/// panics with its output if it fails or takes past a minute.
pub fn python_json(script: &str, port: u16, env: &[(&str, &std::ffi::OsStr)], client: &str) -> serde_json::Value {
    let child = Process::new("python3")
        .args(["-c", script])
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run python3 ({e}); install {client} with scripts/test --install-only"));
    let out = output_within(child, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{client} client did not finish: {e}"));
    let (text, err) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{client} client failed: {err}\n{text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{client} output {text:?}: {e}\n{err}"))
}
