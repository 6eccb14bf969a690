//! The admin API over TLS and with credentials, against real broker processes on loopback:
//! https with the CA, plaintext and an untrusted CA refused on a TLS admin port, `/status`
//! closed to requests without a signature or an admin user's HTTP Basic, `/healthz` and
//! `/readyz` always open, `/metrics` open unless `admin.openMetrics: false`, writes that
//! take the signature only, and `duomq-broker switchover` over https against a pair.

mod common;

use common::cluster::{Member, ROLE_TIMEOUT};
use common::tls::Pki;
use common::{cli, http_post_at, metric_value, output_within, Broker};
use duomq_broker::admin::auth;
use duomq_broker::admin::client::{AdminClient, ClientError};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const PASSWORD: &str = "a-long-random-cluster-password";
/// `ops` holds the `admin` role; `app` holds none.
const USERS: &str = "auth:\n  users:\n    - name: ops\n      password: ops-pw\n    - name: app\n      password: app-pw\n  roles:\n    admin: [ops]\n    producers: [app]\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// A standalone broker with a cluster password (it opens its cluster port for bridges, on
/// a free port here) and [`USERS`], plus `extra` YAML.
fn guarded_broker(name: &str, extra: &str) -> Broker {
    let cluster = common::reserve_port();
    Broker::start(name, &format!("ha:\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    password: {PASSWORD}\n{USERS}{extra}"))
}

/// One plaintext HTTP/1.0 GET with `headers`: the status code, the head and the body.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_lowercase(), body.to_string())
}

fn signed(method: &str, path: &str, password: &str) -> String {
    auth::sign(password.as_bytes(), method, path, b"", auth::unix_now())
}

#[test]
fn given_credentials_configured_should_close_status_to_all_but_a_signature_or_an_admin_user() {
    let b = guarded_broker("admin-auth", "");
    let port = b.admin_port;

    let (code, head, body) = get(port, "/status", &[]);
    assert_eq!(code, 401, "{body}");
    assert!(head.contains("www-authenticate: basic realm=\"duomq\""), "{head}");
    assert!(body.contains("HTTP Basic") && body.contains(auth::SIGNATURE_HEADER) && body.trim().lines().count() == 1, "{body}");

    let good = signed("GET", "/status", PASSWORD);
    let (code, _, body) = get(port, "/status", &[(auth::SIGNATURE_HEADER, &good)]);
    assert_eq!(code, 200, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|s| s["role"] == "live"), "{body}");
    let wrong = signed("GET", "/status", "a-guess");
    assert_eq!(get(port, "/status", &[(auth::SIGNATURE_HEADER, &wrong)]).0, 401);

    let basic = |user: &str, password: &str| get(port, "/status", &[("Authorization", &auth::basic_header(user, password))]);
    assert_eq!(basic("ops", "ops-pw").0, 200, "an admin-role user");
    let (code, head, body) = basic("app", "app-pw");
    assert_eq!(code, 403, "a user with the right password and no admin role: {body}");
    assert!(head.contains("www-authenticate") && body.contains("app") && body.contains("auth.adminRoles"), "{body}");
    assert_eq!(basic("ops", "app-pw").0, 401, "wrong password");
    assert_eq!(basic("nobody", "ops-pw").0, 401, "unknown user");

    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(port, open, &[]).0, 200, "{open} answers without credentials");
    }
    assert_eq!(metric_value(port, "duomq_admin_refused_requests_total{path=\"/status\",result=\"unauthorized\"} "), 4);
    assert_eq!(metric_value(port, "duomq_admin_refused_requests_total{path=\"/status\",result=\"forbidden\"} "), 1);

    // Writes take the signature only: an admin user's Basic is refused, a signature is not.
    let basic_ops = auth::basic_header("ops", "ops-pw");
    let body = r#"{"fenced":true}"#;
    let (code, reply) = http_post_at("127.0.0.1", port, "/ha/fence", &[("Authorization", &basic_ops)], body).expect("POST /ha/fence");
    assert_eq!(code, 401, "{reply}");
    assert!(reply.contains(auth::SIGNATURE_HEADER), "{reply}");
    let (code, reply) = common::signed_post("127.0.0.1", port, "/ha/fence", body, Some(PASSWORD));
    assert_eq!(code, 409, "signed, and refused for what it asks (a standalone broker has no group): {reply}");
}

#[test]
fn given_open_metrics_false_should_ask_credentials_for_metrics_as_for_status() {
    let b = guarded_broker("admin-metrics", "admin:\n  openMetrics: false\n");
    let port = b.admin_port;
    let (code, head, _) = get(port, "/metrics", &[]);
    assert_eq!(code, 401);
    assert!(head.contains("www-authenticate"), "{head}");
    let (code, _, page) = get(port, "/metrics", &[("Authorization", &auth::basic_header("ops", "ops-pw"))]);
    assert_eq!(code, 200);
    assert!(page.contains("duomq_admin_refused_requests_total{path=\"/metrics\",result=\"unauthorized\"} 1"), "{page}");
    assert_eq!(get(port, "/metrics", &[(auth::SIGNATURE_HEADER, &signed("GET", "/metrics", PASSWORD))]).0, 200);
    assert_eq!(get(port, "/metrics", &[(auth::SIGNATURE_HEADER, &signed("GET", "/status", PASSWORD))]).0, 401, "signed for another path");
    assert_eq!(get(port, "/healthz", &[]).0, 200);
    assert_eq!(get(port, "/readyz", &[]).0, 200);
}

#[test]
fn given_no_password_and_no_users_should_stay_open_and_say_so() {
    let b = Broker::start("admin-open", "");
    let (code, _, body) = get(b.admin_port, "/status", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(b.log_text().contains("admin API open"), "the startup log says so:\n{}", b.log_text());
}

#[test]
fn given_tls_on_the_admin_api_should_answer_https_with_the_ca_and_refuse_plaintext_and_other_cas() {
    let pki = Pki::new("admin");
    let leaf = pki.leaf("broker");
    let b = guarded_broker("admin-tls", &pki.config(&leaf, &["admin"]));
    let address = format!("https://127.0.0.1:{}", b.admin_port);
    let rt = runtime();

    // Clients that connect and never start a handshake hold up nobody.
    let silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(("127.0.0.1", b.admin_port)).expect("connect")).collect();
    let client = AdminClient::new(&address).and_then(|c| c.with_ca_file(&pki.ca_file, None)).expect("an https client");
    let started = std::time::Instant::now();
    let reply = rt.block_on(client.get("/healthz")).expect("https /healthz next to silent connections");
    assert_eq!(reply.code, 200);
    println!("https /healthz next to {} silent connections: {:?}", silent.len(), started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "served at once: {:?}", started.elapsed());
    let status = rt.block_on(client.clone().with_password(PASSWORD).status()).expect("https /status, signed");
    assert_eq!(status.role, duomq_broker::admin::api::Role::Live);
    let reply = rt.block_on(client.clone().with_basic("ops", "ops-pw").get("/status")).expect("https /status as ops");
    assert_eq!(reply.code, 200);
    let refused = rt.block_on(client.status()).expect_err("no credentials");
    assert!(matches!(refused, ClientError::Refused { code: 401, .. }), "{refused}");
    for open in ["/healthz", "/readyz", "/metrics"] {
        let reply = rt.block_on(client.get(open)).expect("an open view over https");
        assert_eq!(reply.code, 200, "{open}");
    }
    // The certificate names 127.0.0.1 and localhost; another name is refused.
    let misnamed = AdminClient::new(&address).and_then(|c| c.with_ca_file(&pki.ca_file, Some("broker.example"))).expect("client");
    assert!(matches!(rt.block_on(misnamed.get("/healthz")), Err(ClientError::Tls(_))));

    // Plaintext on the TLS port: the handshake fails, nothing is served.
    let mut plain = TcpStream::connect(("127.0.0.1", b.admin_port)).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    plain.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1."), "answered plaintext: {:?}", String::from_utf8_lossy(&answer));

    // A client trusting another CA refuses the broker's certificate.
    let other = Pki::new("other");
    let untrusted = AdminClient::new(&address).and_then(|c| c.with_ca_file(&other.ca_file, None)).expect("client");
    assert!(matches!(rt.block_on(untrusted.get("/healthz")), Err(ClientError::Tls(_))));

    // Both failures were counted (the second is the broker seeing the client give up).
    let metrics = rt.block_on(client.get("/metrics")).expect("metrics");
    let page = String::from_utf8_lossy(&metrics.body);
    let failures = page
        .lines()
        .find(|l| l.starts_with("duomq_tls_handshake_failures_total{listener=\"admin\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 2, "plaintext, misnamed and untrusted clients counted: {failures}\n{page}");
    assert!(b.log_text().contains("refused an admin connection"), "logged");
    drop(silent);
}

#[test]
fn given_openssl_on_a_tls_admin_port_should_negotiate_tls_1_2_or_1_3_only() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let pki = Pki::new("admin-openssl");
    let leaf = pki.leaf("broker");
    let b = guarded_broker("admin-openssl", &pki.config(&leaf, &["admin"]));
    let connect = format!("127.0.0.1:{}", b.admin_port);
    let ca = pki.ca_file.display().to_string();
    let s_client = |version: &str| {
        let child = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-CAfile", &ca, "-verify_return_error", version])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run openssl s_client");
        let out = output_within(child, Duration::from_secs(20)).expect("openssl s_client finished");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    // "New, TLSv1.3, Cipher is ..." once negotiated; "Cipher is (NONE)" when refused.
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let text = s_client(flag);
        assert!(text.contains(&format!("New, {version}, Cipher is")) && text.contains("Verify return code: 0 (ok)"), "{flag}: {text}");
    }
    for old in ["-tls1_1", "-tls1"] {
        let text = s_client(old);
        assert!(text.contains("Cipher is (NONE)") && !text.contains("New, TLSv1.1") && !text.contains("New, TLSv1,"), "{old} must be refused: {text}");
    }
}

#[test]
fn given_a_pair_with_tls_admin_should_switch_over_with_the_cli_over_https() {
    let root = tempfile::Builder::new().prefix("duomq-admin-tls-pair-").tempdir().expect("tempdir");
    std::fs::write(root.path().join("password"), format!("{PASSWORD}\n")).expect("write the password file");
    let pki = Pki::in_dir(root.path(), "pair");
    let mut a = Member::new(root.path(), "node-a");
    let mut b = Member::new(root.path(), "node-b");
    a.start(&[b.peer()], "primary", &pki.config(&pki.leaf("node-a"), &["admin"]), root.path(), "g1", "password");
    a.wait_live();
    b.start(&[a.peer()], "backup", &pki.config(&pki.leaf("node-b"), &["admin"]), root.path(), "g1", "password");
    b.wait_synced_backup();

    let https = format!("https://127.0.0.1:{}", a.admin);
    let password_file = root.path().join("password").display().to_string();
    let ca = pki.ca_file.display().to_string();
    let run = |args: &[&str]| output_within(cli(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run the CLI"), ROLE_TIMEOUT + Duration::from_secs(30)).expect("the CLI finished");

    let without_ca = run(&["switchover", "--admin", &https, "--to", "node-b", "--password-file", &password_file]);
    assert!(!without_ca.status.success());
    assert!(String::from_utf8_lossy(&without_ca.stderr).contains("--ca-file"), "{}", String::from_utf8_lossy(&without_ca.stderr));
    let plain = run(&["switchover", "--admin", &format!("127.0.0.1:{}", a.admin), "--to", "node-b", "--password-file", &password_file]);
    assert!(!plain.status.success(), "plaintext to a TLS admin port fails");
    assert_eq!(a.status().expect("status")["role"], "live", "nothing changed");

    let misnamed = run(&["switchover", "--admin", &https, "--ca-file", &ca, "--tls-server-name", "node-a.example", "--to", "node-b", "--password-file", &password_file]);
    assert!(!misnamed.status.success(), "the certificate does not name node-a.example");
    assert!(String::from_utf8_lossy(&misnamed.stderr).contains("TLS handshake"), "{}", String::from_utf8_lossy(&misnamed.stderr));
    assert_eq!(a.status().expect("status")["role"], "live", "nothing changed");

    // The certificate names localhost too: the name checked is --tls-server-name's.
    let done = run(&["switchover", "--admin", &https, "--ca-file", &ca, "--tls-server-name", "localhost", "--to", "node-b", "--password-file", &password_file]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("handed the live role to node-b"), "{}", String::from_utf8_lossy(&done.stdout));
    b.wait_live();
    a.wait_synced_backup();
}
