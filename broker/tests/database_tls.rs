//! TLS towards the shared database, with a real PostgreSQL serving a certificate from a
//! test CA: every `sslmode` does what libpq's does. verify-full checks the chain and the
//! host name, verify-ca only the chain, require encrypts without checking; a certificate
//! from another CA is refused with a log line that says so, and the member waits as a
//! backup that is not ready instead of going live.

mod common;

use common::cluster::Member;
use common::postgres::Postgres;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs openssl; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A self-signed CA, `<name>-ca.crt` and its key.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let key = format!("{name}-ca.key");
    let crt = format!("{name}-ca.crt");
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &format!("/CN={name} test CA")]);
    dir.join(crt)
}

/// `server.crt` (and `server.key`) for the DNS name `db.example` only, signed by `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=db.example"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:db.example\n").expect("write san.ext");
    openssl(
        dir,
        &[
            "x509", "-req", "-in", "server.csr", "-CA", &format!("{ca}-ca.crt"), "-CAkey", &format!("{ca}-ca.key"),
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
        ],
    );
}

/// Turns TLS on in the running server with the certificate in `dir`.
fn enable_ssl(pg: &Postgres, dir: &Path) {
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("chown").args(["-R", "postgres:"]).arg(dir).output().expect("chown");
        assert!(out.status.success());
    }
    let out = Command::new("chmod").arg("600").arg(dir.join("server.key")).output().expect("chmod");
    assert!(out.status.success());
    pg.psql(&format!("ALTER SYSTEM SET ssl_cert_file = '{}'", dir.join("server.crt").display()));
    pg.psql(&format!("ALTER SYSTEM SET ssl_key_file = '{}'", dir.join("server.key").display()));
    pg.psql("ALTER SYSTEM SET ssl = on");
    pg.psql("SELECT pg_reload_conf()");
    common::eventually("PostgreSQL serving TLS", Duration::from_secs(20), || pg.psql("SHOW ssl") == "on");
}

/// Whether duomq's connections (by application name) to `pg` use TLS.
fn duomq_connections_use_tls(pg: &Postgres, node: &str) -> Vec<String> {
    let out = pg.psql(&format!(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'duomq {node} %'"
    ));
    out.lines().map(str::to_string).collect()
}

fn url(pg: &Postgres, query: &str) -> String {
    format!("postgresql://{}:{}@127.0.0.1:{}/{}?{query}", pg.user, pg.password, pg.port, pg.database)
}

#[test]
fn given_tls_settings_should_connect_as_libpq_would_and_refuse_an_unknown_ca() {
    let root = tempfile::Builder::new().prefix("duomq-dbtls-").tempdir().unwrap();
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let good_ca = make_ca(&certs, "good");
    let other_ca = make_ca(&certs, "other");
    make_server_cert(&certs, "good");
    let pg = Postgres::start("tls");
    enable_ssl(&pg, &certs);
    let (good, other) = (good_ca.display().to_string(), other_ca.display().to_string());

    // verify-ca: the chain leads to the CA; the name (db.example, not 127.0.0.1) is not checked.
    let mut ca_member = Member::new(root.path(), "verify-ca");
    ca_member.start_shared_database(&url(&pg, &format!("sslmode=verify-ca&sslrootcert={good}")), &[], "primary", "tls-ca", "");
    ca_member.wait_live();
    assert_eq!(duomq_connections_use_tls(&pg, "verify-ca").first().map(String::as_str), Some("t"), "verify-ca connected in plaintext");

    // require: encrypted, nothing checked.
    let mut required = Member::new(root.path(), "require");
    required.start_shared_database(&url(&pg, "sslmode=require"), &[], "primary", "tls-require", "");
    required.wait_live();
    assert!(duomq_connections_use_tls(&pg, "require").iter().all(|s| s == "t"));

    // verify-full: the certificate names db.example, the URL 127.0.0.1: refused, said why.
    let mut full = Member::new(root.path(), "verify-full");
    full.start_shared_database(&url(&pg, &format!("sslmode=verify-full&sslrootcert={good}")), &[], "primary", "tls-full", "");
    full.wait_for("a refused verify-full connection", |s| {
        s["ha"]["database"]["lastError"].as_str().is_some_and(|e| e.to_lowercase().contains("certificate"))
    });
    assert_eq!(full.readyz().0, 503);
    println!("verify-full against 127.0.0.1: {}", full.status().expect("status")["ha"]["database"]["lastError"]);

    // An unknown CA is refused in verify-ca too; the config's sslRootCert overrides the URL's.
    let mut wrong = Member::new(root.path(), "wrong-ca");
    wrong.start_shared_database(
        &url(&pg, &format!("sslmode=verify-ca&sslrootcert={good}")),
        &[],
        "primary",
        "tls-wrong",
        &format!("storage:\n  database:\n    sslRootCert: {other}\n"),
    );
    wrong.wait_for("a refused connection to a server of another CA", |s| {
        s["ha"]["database"]["lastError"].as_str().is_some_and(|e| e.to_lowercase().contains("certificate"))
    });
    let status = wrong.status().expect("status");
    println!("another CA: {}", status["ha"]["database"]["lastError"]);
    assert_eq!(status["role"], "backup", "{status}");
    assert!(wrong.log().contains("cannot use the shared database"), "{}", wrong.log());
    assert!(!wrong.log().contains("panicked"), "{}", wrong.log());
}
