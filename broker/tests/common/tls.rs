//! Certificates for tests: a CA in a temp dir, loopback leaves from it, and the `tls:`
//! YAML a broker needs to use them. Everything goes through `duomq_broker::tls::pki`,
//! the same code the operator issues certificates with.

use duomq_broker::tls::pki::{Authority, Issued, Leaf};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long test certificates are valid.
pub const VALID_FOR: Duration = Duration::from_secs(86_400);

/// A test CA writing its files under one directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Authority,
    /// `ca.crt` (or `<name>-ca.crt`): what members and clients trust.
    pub ca_file: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// A leaf's files.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub issued: Issued,
}

impl Pki {
    /// A new CA named `name` in its own temp dir.
    pub fn new(name: &str) -> Pki {
        let temp = tempfile::Builder::new().prefix(&format!("duomq-pki-{name}-")).tempdir().expect("tempdir");
        let mut pki = Pki::in_dir(temp.path(), name);
        pki._temp = Some(temp);
        pki
    }

    /// A new CA named `name` writing into `dir` (kept by the caller).
    pub fn in_dir(dir: &Path, name: &str) -> Pki {
        let ca = Authority::generate(&format!("duomq test CA {name}"), VALID_FOR).expect("generate a test CA");
        let ca_file = dir.join(format!("{name}-ca.crt"));
        std::fs::write(&ca_file, &ca.pem().cert_pem).expect("write the CA file");
        Pki { dir: dir.to_path_buf(), ca, ca_file, _temp: None }
    }

    /// A loopback leaf (`localhost`, 127.0.0.1, ::1) with common name `cn`.
    pub fn leaf(&self, cn: &str) -> LeafFiles {
        self.leaf_from(Leaf::new(cn, VALID_FOR).loopback(), cn)
    }

    /// Any leaf, written as `<file>.crt` and `<file>.key`.
    pub fn leaf_from(&self, leaf: Leaf, file: &str) -> LeafFiles {
        let issued = self.ca.issue(&leaf).expect("issue a test certificate");
        let cert = self.dir.join(format!("{file}.crt"));
        let key = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write a certificate");
        std::fs::write(&key, &issued.key_pem).expect("write a key");
        LeafFiles { cert, key, issued }
    }

    /// The `tls:` section for a broker using `leaf`, with the listeners named on:
    /// any of `stomp`, `amqp` (also needs `amqp.enabled`), `cluster`, `admin`.
    pub fn config(&self, leaf: &LeafFiles, listeners: &[&str]) -> String {
        let on = |l: &str| listeners.contains(&l);
        format!(
            "tls:\n  certFile: {}\n  keyFile: {}\n  caFile: {}\n  reloadInterval: 1s\n  stomp:\n    enabled: {}\n  amqp:\n    enabled: {}\n  cluster:\n    enabled: {}\n  admin:\n    enabled: {}\n",
            leaf.cert.display(),
            leaf.key.display(),
            self.ca_file.display(),
            on("stomp"),
            on("amqp"),
            on("cluster"),
            on("admin"),
        )
    }

    /// [`Pki::config`] with `clientAuth: auth` (`optional`, `required`) on `listener`
    /// (`stomp` or `amqp`, which must be among those turned on).
    pub fn config_with_client_auth(&self, leaf: &LeafFiles, listeners: &[&str], listener: &str, auth: &str) -> String {
        let on = format!("  {listener}:\n    enabled: true\n");
        let config = self.config(leaf, listeners);
        assert!(config.contains(&on), "{listener} is not among the TLS listeners {listeners:?}");
        config.replace(&on, &format!("{on}    clientAuth: {auth}\n"))
    }
}
