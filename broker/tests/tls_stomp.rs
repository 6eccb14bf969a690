//! STOMP over TLS (`stomp+ssl://`) against the real broker binary: the Rust client (alone
//! and with a failover URL across a kill -9 of the live), client certificates mapped to
//! users, what the client refuses (another CA, an expired certificate, another name) and
//! says why, no plaintext fallback on the TLS port, and Debian's `openssl s_client` for
//! the protocol versions and the checks an independent TLS stack makes.
//!
//! Certificates come from `common::tls::Pki` (a fresh CA per test). The `openssl` tests
//! skip with a message when the binary is absent (`scripts/test --install-only` installs
//! it).

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::tls::{LeafFiles, Pki, VALID_FOR};
use common::{Broker, Deadline};
use duomq_broker::client::{AckMode, Client, ClientError, ClientOptions, Heartbeat, SendOptions, TlsOptions};
use duomq_broker::tls::pki::Leaf;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use duomq_testkit::timeouts::MESSAGE as MESSAGE_TIMEOUT;
/// How long `openssl s_client` may take for one handshake and exchange.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);
/// Users and certificate users of the client-certificate tests (and `/metrics` open,
/// which they read).
const CERT_AUTH: &str = "auth:\n  users:\n    - name: app\n      password: app-pw\n    - name: other\n      password: other-pw\n  \
                         certificateUsers:\n    client-app: app\nadmin:\n  openMetrics: true\n";

/// Client options trusting `pki`'s CA.
fn trusting(pki: &Pki) -> ClientOptions {
    ClientOptions {
        tls: TlsOptions { ca_file: Some(pki.ca_file.clone()), ..TlsOptions::default() },
        heartbeat: Heartbeat::OFF,
        ..ClientOptions::default()
    }
}

/// [`trusting`] presenting `leaf` as the client certificate.
fn presenting(pki: &Pki, leaf: &LeafFiles) -> ClientOptions {
    let mut options = trusting(pki);
    options.tls.cert_file = Some(leaf.cert.clone());
    options.tls.key_file = Some(leaf.key.clone());
    options
}

/// `pki.config` for the STOMP listener, with `lines` added under `tls:` (indented two
/// spaces) and `clientAuth` set.
fn stomp_tls(pki: &Pki, leaf: &LeafFiles, client_auth: &str, lines: &str) -> String {
    let base = pki.config(leaf, &["stomp"]);
    let with_auth = base.replace(
        "  stomp:\n    enabled: true\n",
        &format!("  stomp:\n    enabled: true\n    clientAuth: {client_auth}\n"),
    );
    assert_ne!(base, with_auth, "the tls: section of the test kit changed shape");
    with_auth.replace("tls:\n", &format!("tls:\n{lines}"))
}

/// A broker whose STOMP listener checks client certificates (`clientAuth`), with the
/// users of [`CERT_AUTH`]; its CA is the returned one.
fn cert_auth_broker(name: &str, client_auth: &str) -> (Pki, Broker) {
    let pki = Pki::new(name);
    let config = format!("{}{CERT_AUTH}", stomp_tls(&pki, &pki.leaf("broker"), client_auth, ""));
    let broker = Broker::start(&format!("tls-{name}"), &config);
    (pki, broker)
}

/// A leaf valid for loopback but not now: expired a day ago.
fn expired(pki: &Pki, cn: &str) -> LeafFiles {
    let now = SystemTime::now();
    let leaf = Leaf {
        not_before: now - Duration::from_secs(3 * 86_400),
        not_after: now - Duration::from_secs(86_400),
        ..Leaf::new(cn, VALID_FOR).loopback()
    };
    pki.leaf_from(leaf, cn)
}

fn tls_url(port: u16) -> String {
    format!("stomp+ssl://127.0.0.1:{port}")
}

/// The reason of a TLS failure; panics on anything else.
fn tls_failure(result: Result<Client, ClientError>) -> String {
    match result {
        Err(ClientError::Tls { reason, .. }) => reason,
        Err(other) => panic!("expected a TLS error, got: {other} ({other:?})"),
        Ok(client) => panic!("expected a TLS error, connected to {}", client.connected_to()),
    }
}

/// Sends `count` persistent messages with receipts to `destination`, then reads them back.
async fn round_trip(client: &Client, destination: &str, count: u64) {
    let durable = SendOptions { persistent: true, receipt: true, ..SendOptions::default() };
    for seq in 0..count {
        client.send(destination, format!("tls {seq}"), durable.clone()).await.expect("a receipted send over TLS");
    }
    let mut sub = client.subscribe(destination, AckMode::ClientIndividual, Some(32)).await.expect("subscribe over TLS");
    for seq in 0..count {
        let message = tokio::time::timeout(MESSAGE_TIMEOUT, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("message {seq} did not arrive within {MESSAGE_TIMEOUT:?}"))
            .expect("the subscription ended early");
        assert_eq!(&message.body[..], format!("tls {seq}").as_bytes(), "messages arrive in order");
        client.ack(&message).await.expect("ack over TLS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_listener_when_client_uses_stomp_ssl_or_ssl_scheme_should_send_and_receive() {
    let pki = Pki::new("roundtrip");
    let broker = Broker::start("tls-roundtrip", &pki.config(&pki.leaf("broker"), &["stomp"]));
    for scheme in ["stomp+ssl", "ssl"] {
        let url = format!("{scheme}://127.0.0.1:{}", broker.stomp_port);
        let client = Client::connect(&url, trusting(&pki)).await.unwrap_or_else(|e| panic!("connect to {url}: {e:#?}"));
        let connected = client.connected_to();
        assert!(connected.tls, "{url} connected without TLS");
        assert_eq!(connected.to_string(), tls_url(broker.stomp_port));
        round_trip(&client, &format!("/queue/tls-{}", scheme.replace('+', "-")), 50).await;
        client.disconnect().await.expect("disconnect over TLS");
    }

    // A failover list may mix schemes: a dead plaintext member, then the TLS one.
    let dead = common::reserve_port();
    let mixed = format!("failover:(stomp://127.0.0.1:{dead},stomp+ssl://127.0.0.1:{})?randomize=false", broker.stomp_port);
    let client = Client::connect(&mixed, trusting(&pki)).await.expect("the TLS member of a mixed list");
    assert!(client.connected_to().tls);
    round_trip(&client, "/queue/tls-mixed", 5).await;
    client.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_url_without_usable_ca_file_should_refuse_and_name_the_option_or_the_file() {
    let pki = Pki::new("no-ca");
    let broker = Broker::start("tls-no-ca", &pki.config(&pki.leaf("broker"), &["stomp"]));
    let url = tls_url(broker.stomp_port);

    let unconfigured = Client::connect(&url, ClientOptions::default()).await;
    let Err(ClientError::TlsUnconfigured { reason }) = unconfigured else {
        panic!("expected TlsUnconfigured, got {unconfigured:?}")
    };
    assert!(reason.contains("--ca-file") && reason.contains(&url), "{reason}");

    let missing = pki.dir.join("no-such-ca.crt");
    let options = ClientOptions { tls: TlsOptions { ca_file: Some(missing.clone()), ..TlsOptions::default() }, ..trusting(&pki) };
    let error = Client::connect(&url, options).await.expect_err("a missing CA file");
    assert!(matches!(error, ClientError::TlsSettings(_)), "{error:?}");
    let line = format!("{:#}", anyhow::Error::from(error));
    assert!(line.contains(&missing.display().to_string()) && !line.contains('\n'), "{line}");

    let not_pem = pki.dir.join("not-pem.crt");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write a file");
    let options = ClientOptions { tls: TlsOptions { ca_file: Some(not_pem.clone()), ..TlsOptions::default() }, ..trusting(&pki) };
    let line = format!("{:#}", anyhow::Error::from(Client::connect(&url, options).await.expect_err("a CA file without PEM")));
    assert!(line.contains(&not_pem.display().to_string()), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_broker_certificate_from_another_ca_expired_or_for_another_name_should_refuse_and_say_why() {
    let pki = Pki::new("server-checks");
    let other = Pki::new("other");

    let broker = Broker::start("tls-wrong-ca", &pki.config(&pki.leaf("broker"), &["stomp"]));
    let reason = tls_failure(Client::connect(&tls_url(broker.stomp_port), trusting(&other)).await);
    assert!(reason.contains("not signed by a CA in") && reason.contains(&other.ca_file.display().to_string()), "{reason}");
    drop(broker);

    let stale = Broker::start("tls-expired", &pki.config(&expired(&pki, "stale-broker"), &["stomp"]));
    let reason = tls_failure(Client::connect(&tls_url(stale.stomp_port), trusting(&pki)).await);
    assert!(reason.contains("has expired"), "{reason}");
    drop(stale);

    let named = pki.leaf_from(Leaf::new("named", VALID_FOR).dns("broker.example.test"), "named");
    let broker = Broker::start("tls-name", &pki.config(&named, &["stomp"]));
    let url = tls_url(broker.stomp_port);
    let reason = tls_failure(Client::connect(&url, trusting(&pki)).await);
    assert!(reason.contains("not valid for the name \"127.0.0.1\"") && reason.contains("--tls-server-name"), "{reason}");
    // The same address, checked under the name the certificate carries.
    let mut options = trusting(&pki);
    options.tls.server_name = Some("broker.example.test".into());
    let client = Client::connect(&url, options).await.expect("connect with the server-name override");
    round_trip(&client, "/queue/tls-named", 3).await;
    client.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_client_certificates_mapped_to_users_should_log_in_by_certificate_and_refuse_mismatches() {
    let (pki, broker) = cert_auth_broker("client-auth", "required");
    let url = tls_url(broker.stomp_port);
    let app = pki.leaf("client-app");

    // The certificate logs in as app: no login, no passcode.
    let client = Client::connect(&url, presenting(&pki, &app)).await.expect("log in by certificate");
    round_trip(&client, "/queue/tls-cert-user", 5).await;
    client.disconnect().await.expect("disconnect");

    // Naming the same user is fine; naming another is refused with the broker's ERROR.
    let same = ClientOptions { login: Some("app".into()), ..presenting(&pki, &app) };
    Client::connect(&url, same).await.expect("a login naming the certificate's user").disconnect().await.expect("disconnect");
    let another = ClientOptions { login: Some("other".into()), passcode: Some("other-pw".into()), ..presenting(&pki, &app) };
    match Client::connect(&url, another).await {
        Err(ClientError::Refused { message }) => {
            assert!(message.contains("logs in as \"app\"") && message.contains("\"other\""), "{message}")
        }
        other => panic!("expected the broker to refuse the login, got {other:?}"),
    }

    // clientAuth: required refuses a client without a certificate in the handshake, even
    // with a good password; the client says it needs one.
    let password = ClientOptions { login: Some("app".into()), passcode: Some("app-pw".into()), ..trusting(&pki) };
    let reason = tls_failure(Client::connect(&url, password).await);
    assert!(reason.contains("requires a client certificate") && reason.contains("--cert-file"), "{reason}");

    // A certificate from another CA is refused too.
    let stranger_ca = Pki::new("stranger");
    let stranger = stranger_ca.leaf("client-app");
    let reason = tls_failure(Client::connect(&url, presenting(&pki, &stranger)).await);
    assert!(reason.contains("refused this client's certificate"), "{reason}");

    // An expired one as well.
    let stale = expired(&pki, "stale-client");
    let reason = tls_failure(Client::connect(&url, presenting(&pki, &stale)).await);
    assert!(reason.contains("refused this client's certificate") && reason.contains("expired"), "{reason}");

    // The broker counted the refused handshakes and is still serving.
    let client = Client::connect(&url, presenting(&pki, &app)).await.expect("the broker still serves");
    client.disconnect().await.expect("disconnect");
    let (code, metrics) = common::http_get(broker.admin_port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{metrics}");
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("duomq_tls_handshake_failures_total{") && l.contains("stomp"))
        .unwrap_or_else(|| panic!("no duomq_tls_handshake_failures_total for stomp in /metrics"));
    let counted: f64 = failures.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a counter value");
    assert!(counted >= 3.0, "{failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_optional_client_auth_should_log_in_by_certificate_or_by_password() {
    let (pki, broker) = cert_auth_broker("optional", "optional");
    let url = tls_url(broker.stomp_port);
    let by_cert = Client::connect(&url, presenting(&pki, &pki.leaf("client-app"))).await.expect("by certificate");
    by_cert.disconnect().await.expect("disconnect");
    let password = ClientOptions { login: Some("other".into()), passcode: Some("other-pw".into()), ..trusting(&pki) };
    Client::connect(&url, password).await.expect("by password").disconnect().await.expect("disconnect");
    // Without either, the users configured refuse an anonymous client.
    match Client::connect(&url, trusting(&pki)).await {
        Err(ClientError::Refused { message }) => assert!(message.contains("authentication failed"), "{message}"),
        other => panic!("expected an anonymous client to be refused, got {other:?}"),
    }
}

/// Reads what a peer sends until it closes or `timeout` passes; `true` if it closed.
fn read_until_closed(stream: &mut std::net::TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Deadline::after("the peer closing the socket", timeout);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !deadline.passed() {
        stream.set_read_timeout(Some(Duration::from_millis(200))).expect("set a read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_plaintext_stomp_on_the_tls_port_should_get_no_connected_and_the_broker_stays_up() {
    let pki = Pki::new("plaintext");
    let broker = Broker::start("tls-plaintext", &pki.config(&pki.leaf("broker"), &["stomp"]));
    let port = broker.stomp_port;

    let (got, closed) = tokio::task::spawn_blocking(move || {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("TCP to the TLS port");
        raw.write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0").expect("write a plaintext CONNECT");
        read_until_closed(&mut raw, Duration::from_secs(15))
    })
    .await
    .expect("the raw client");
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("CONNECTED") && !text.contains("MESSAGE"), "plaintext got STOMP back: {text:?}");
    assert!(closed, "the broker kept a plaintext connection open on its TLS port; got {text:?}");

    // The Rust client with stomp:// fails rather than hangs.
    let plain = ClientOptions { connect_timeout: Duration::from_secs(10), ..trusting(&pki) };
    let error = Client::connect(&format!("stomp://127.0.0.1:{port}"), plain).await.expect_err("plaintext to a TLS port");
    assert!(!matches!(error, ClientError::Timeout { .. }), "{error:?}");

    let client = Client::connect(&tls_url(port), trusting(&pki)).await.expect("TLS still works after plaintext");
    round_trip(&client, "/queue/tls-after-plaintext", 3).await;
    client.disconnect().await.expect("disconnect");

    // The other way round: stomp+ssl:// to a plaintext port says it is not TLS.
    let plain_broker = Broker::start("tls-to-plaintext", "stomp:\n  connectTimeout: 60s\n");
    // It tells a ClientHello from STOMP by its first byte and hangs up at once: the
    // client hears it long before its own connect timeout (a minute here).
    let patient = ClientOptions { connect_timeout: Duration::from_secs(60), ..trusting(&pki) };
    let started = std::time::Instant::now();
    let error = Client::connect(&tls_url(plain_broker.stomp_port), patient).await.expect_err("TLS to a plaintext port");
    assert!(started.elapsed() < Duration::from_secs(30), "the plaintext port kept a TLS client waiting {:?}", started.elapsed());
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    let said = error.to_string();
    assert!(said.contains("plaintext STOMP port") && said.contains("use stomp://"), "{said}");
}

/// A replicated pair (cluster port plaintext) with STOMP on TLS.
struct TlsPair {
    // Dropped in this order: the members (killed) before their directory.
    a: Member,
    b: Member,
    pki: Pki,
    _root: tempfile::TempDir,
}

impl TlsPair {
    fn start() -> TlsPair {
        let root = tempfile::Builder::new().prefix("duomq-tls-pair-").tempdir().expect("tempdir");
        std::fs::write(root.path().join("password"), "a-long-random-cluster-password\n").expect("password file");
        let pki = Pki::in_dir(root.path(), "pair");
        let mut a = Member::new(root.path(), "node-a");
        let mut b = Member::new(root.path(), "node-b");
        a.start(&[b.peer()], "primary", &pki.config(&pki.leaf("node-a"), &["stomp"]), root.path(), "g1", "password");
        a.wait_live();
        b.start(&[a.peer()], "backup", &pki.config(&pki.leaf("node-b"), &["stomp"]), root.path(), "g1", "password");
        b.wait_synced_backup();
        TlsPair { a, b, pki, _root: root }
    }

    fn failover_url(&self) -> String {
        format!(
            "failover:(stomp+ssl://{},stomp+ssl://{})?randomize=false&initialReconnectDelay=10ms&maxReconnectDelay=200ms",
            self.a.stomp_addr(),
            self.b.stomp_addr()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tls_pair_when_live_killed_under_load_should_fail_over_over_tls_and_lose_nothing() {
    const COUNT: u64 = 1000;
    const WINDOW: usize = 16;
    const DEST: &str = "/queue/tls-failover";
    let mut pair = tokio::task::spawn_blocking(TlsPair::start).await.expect("start the pair");
    let url = pair.failover_url();
    let options = ClientOptions { receipt_timeout: ROLE_TIMEOUT * 2, ..trusting(&pair.pki) };
    let producer = Client::connect(&url, options.clone()).await.expect("connect the producer");
    assert_eq!(producer.connected_to().to_string(), format!("stomp+ssl://{}", pair.a.stomp_addr()));

    let mut pending = std::collections::VecDeque::new();
    let mut receipted = 0u64;
    let mut killed_at = None;
    let started = Instant::now();
    for seq in 0..COUNT {
        if pending.len() == WINDOW {
            let (n, receipt): (u64, duomq_broker::client::ReceiptFuture) = pending.pop_front().expect("a pending receipt");
            receipt.await.unwrap_or_else(|e| panic!("receipt of message {n}: {e}"));
            receipted += 1;
        }
        if receipted == COUNT / 3 && killed_at.is_none() {
            pair.a.kill9();
            killed_at = Some(Instant::now());
        }
        let options = SendOptions { persistent: true, ..SendOptions::default() };
        pending.push_back((seq, producer.send_with_receipt(DEST, seq.to_string(), options).await.expect("queue a send")));
    }
    for (n, receipt) in pending {
        receipt.await.unwrap_or_else(|e| panic!("receipt of message {n}: {e}"));
    }
    let killed_at = killed_at.expect("the live was killed midway");
    println!(
        "tls failover: {COUNT} receipted in {:?}, the last {:?} after the kill; {} failover(s)",
        started.elapsed(),
        killed_at.elapsed(),
        producer.failovers()
    );
    assert!(producer.failovers() >= 1, "the producer never failed over");
    let now = producer.connected_to();
    assert!(now.tls && now.address() == pair.b.stomp_addr(), "the producer is on {now}, not the backup over TLS");
    producer.disconnect().await.expect("disconnect the producer");

    let consumer = Client::connect(&url, options).await.expect("connect the consumer");
    assert_eq!(consumer.connected_to().address(), pair.b.stomp_addr(), "the consumer skipped the dead member");
    let mut sub = consumer.subscribe(DEST, AckMode::ClientIndividual, Some(100)).await.expect("subscribe");
    let mut seen = BTreeSet::new();
    let mut duplicates = 0u64;
    while (seen.len() as u64) < COUNT {
        let message = tokio::time::timeout(MESSAGE_TIMEOUT, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {COUNT} arrived, then nothing for {MESSAGE_TIMEOUT:?}", seen.len()))
            .expect("the subscription ended early");
        let seq: u64 = std::str::from_utf8(&message.body).expect("UTF-8").parse().expect("a sequence number");
        if !seen.insert(seq) {
            duplicates += 1;
        }
        consumer.ack(&message).await.expect("ack");
    }
    println!("tls failover: every one of {COUNT} receipted messages received, {duplicates} duplicate(s)");
    consumer.disconnect().await.expect("disconnect the consumer");
}

// --- openssl s_client ------------------------------------------------------------------

/// Whether Debian's `openssl` runs; prints why the test skips when it does not.
fn openssl_available(test: &str) -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            println!("skipping {test}: no `openssl` binary (apt-get install openssl; scripts/test --install-only installs it)");
            false
        }
    }
}

/// What one `openssl s_client` run printed, and whether the broker said CONNECTED.
struct SClient {
    output: String,
    connected: bool,
}

/// Runs `openssl s_client` against `port` with `args`, writes a CONNECT and a receipted
/// DISCONNECT, and collects everything it prints until the broker closes.
fn s_client(port: u16, args: &[&str]) -> SClient {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-ign_eof", "-verify_return_error"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A write to an s_client that already gave up fails; its output says why.
    let _ = stdin.write_all(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0DISCONNECT\nreceipt:bye\n\n\0");
    drop(stdin);
    let out = common::output_within(child, OPENSSL_TIMEOUT).unwrap_or_else(|e| panic!("openssl s_client: {e}"));
    let output = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let connected = output.contains("CONNECTED\n") && output.contains("receipt-id:bye");
    SClient { output, connected }
}

#[test]
fn given_openssl_s_client_should_be_refused_below_tls_1_2_and_accepted_on_1_2_and_1_3() {
    if !openssl_available("the openssl protocol-version test") {
        return;
    }
    let pki = Pki::new("openssl-versions");
    let broker = Broker::start("tls-openssl-versions", &pki.config(&pki.leaf("broker"), &["stomp"]));
    let ca = pki.ca_file.display().to_string();
    for version in ["-tls1_2", "-tls1_3"] {
        let run = s_client(broker.stomp_port, &[version, "-CAfile", &ca]);
        assert!(run.connected, "openssl {version} got no CONNECTED:\n{}", run.output);
        assert!(run.output.contains("Verify return code: 0 (ok)"), "openssl {version}:\n{}", run.output);
        let protocol = if version == "-tls1_2" { "TLSv1.2" } else { "TLSv1.3" };
        assert!(run.output.contains(protocol), "openssl {version} did not negotiate {protocol}:\n{}", run.output);
    }
    // SECLEVEL=0 lets this openssl offer TLS 1.0/1.1 at all, so it is the broker that
    // refuses: with an alert (rustls answers a 1.0/1.1 hello with protocol_version or
    // handshake_failure), not openssl giving up before sending anything.
    for version in ["-tls1", "-tls1_1"] {
        let run = s_client(broker.stomp_port, &[version, "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", &ca]);
        assert!(!run.connected, "openssl {version} got CONNECTED:\n{}", run.output);
        assert!(
            run.output.contains("SSL alert number") && !run.output.contains("no protocols available"),
            "openssl {version} was not refused by the broker:\n{}",
            run.output
        );
    }
}

#[test]
fn given_min_version_1_3_should_refuse_openssl_on_tls_1_2() {
    if !openssl_available("the openssl minVersion test") {
        return;
    }
    let pki = Pki::new("openssl-min13");
    let config = stomp_tls(&pki, &pki.leaf("broker"), "none", "  minVersion: \"1.3\"\n");
    let broker = Broker::start("tls-openssl-min13", &config);
    let ca = pki.ca_file.display().to_string();
    let refused = s_client(broker.stomp_port, &["-tls1_2", "-CAfile", &ca]);
    assert!(!refused.connected && refused.output.contains("alert protocol version"), "-tls1_2 on 1.3 only:\n{}", refused.output);
    let accepted = s_client(broker.stomp_port, &["-tls1_3", "-CAfile", &ca]);
    assert!(accepted.connected, "-tls1_3 on 1.3 only:\n{}", accepted.output);
}

#[test]
fn given_openssl_with_another_ca_or_an_expired_client_certificate_should_fail_the_handshake() {
    if !openssl_available("the openssl certificate test") {
        return;
    }
    let (pki, broker) = cert_auth_broker("openssl-certs", "required");
    let ca = pki.ca_file.display().to_string();

    let other = Pki::new("openssl-other");
    let app = pki.leaf("client-app");
    let (cert, key) = (app.cert.display().to_string(), app.key.display().to_string());
    let wrong_ca = s_client(broker.stomp_port, &["-CAfile", &other.ca_file.display().to_string(), "-cert", &cert, "-key", &key]);
    assert!(!wrong_ca.connected, "a client trusting another CA got CONNECTED:\n{}", wrong_ca.output);
    assert!(wrong_ca.output.contains("verify error"), "no verify error with another CA:\n{}", wrong_ca.output);

    let stale = expired(&pki, "client-stale");
    let (cert, key) = (stale.cert.display().to_string(), stale.key.display().to_string());
    for version in ["-tls1_2", "-tls1_3"] {
        let run = s_client(broker.stomp_port, &[version, "-CAfile", &ca, "-cert", &cert, "-key", &key]);
        assert!(!run.connected, "an expired client certificate got CONNECTED ({version}):\n{}", run.output);
        assert!(run.output.contains("alert certificate expired"), "{version}: no certificate-expired alert:\n{}", run.output);
    }

    // The good certificate logs in as app without a login, over openssl too.
    let (cert, key) = (app.cert.display().to_string(), app.key.display().to_string());
    let good = s_client(broker.stomp_port, &["-CAfile", &ca, "-cert", &cert, "-key", &key]);
    assert!(good.connected, "the mapped certificate got no CONNECTED:\n{}", good.output);
}
