//! `duomq-bench test-certs`: a throwaway CA and one loopback certificate signed by it, for
//! benchmarking `stomp+ssl://` on this machine. The certificates come from
//! `duomq_broker::tls::pki`, the code the operator issues its members' certificates with,
//! so the benchmark measures the same kind of key (ECDSA P-256) a deployment gets.

use crate::cli::CertsArgs;
use anyhow::Context;
use duomq_broker::tls::pki::{Authority, Leaf};
use std::path::{Path, PathBuf};

/// What `test-certs` wrote.
#[derive(Debug, serde::Serialize)]
pub struct CertsReport {
    /// The CA certificate: what clients trust (`--ca-file`).
    pub ca_file: PathBuf,
    /// The broker's certificate (valid for localhost, 127.0.0.1 and ::1) and key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// A second loopback certificate and key for a client to present, with --client-cn.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl CertsReport {
    pub fn to_json_line(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn to_text(&self) -> String {
        let mut text = format!(
            "CA certificate      {}\nbroker certificate  {}\nbroker key          {}\n",
            self.ca_file.display(),
            self.cert_file.display(),
            self.key_file.display()
        );
        if let (Some(cert), Some(key)) = (&self.client_cert_file, &self.client_key_file) {
            text += &format!("client certificate  {}\nclient key          {}\n", cert.display(), key.display());
        }
        text
    }
}

/// Writes `ca.crt`, `broker.crt`, `broker.key` (and `client.crt`, `client.key` with a
/// client common name) into the directory. The CA's key is not kept: nothing else is
/// ever signed by it.
pub fn test_certs(args: &CertsArgs) -> anyhow::Result<CertsReport> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("failed to create {}", args.dir.display()))?;
    let ca = Authority::generate("duomq-bench test CA", args.valid_for).context("failed to generate the test CA")?;
    let ca_file = args.dir.join("ca.crt");
    write(&ca_file, &ca.pem().cert_pem, false)?;
    let leaf = |cn: &str| ca.issue(&Leaf::new(cn, args.valid_for).loopback());
    let broker = leaf(&args.cn).context("failed to issue the broker's certificate")?;
    let (cert_file, key_file) = (args.dir.join("broker.crt"), args.dir.join("broker.key"));
    write(&cert_file, &broker.cert_pem, false)?;
    write(&key_file, &broker.key_pem, true)?;
    let (mut client_cert_file, mut client_key_file) = (None, None);
    if let Some(cn) = &args.client_cn {
        let client = leaf(cn).context("failed to issue the client's certificate")?;
        let (cert, key) = (args.dir.join("client.crt"), args.dir.join("client.key"));
        write(&cert, &client.cert_pem, false)?;
        write(&key, &client.key_pem, true)?;
        (client_cert_file, client_key_file) = (Some(cert), Some(key));
    }
    Ok(CertsReport { ca_file, cert_file, key_file, client_cert_file, client_key_file })
}

/// Writes a PEM file; keys readable by the owner only.
fn write(path: &Path, pem: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(pem.as_bytes()).with_context(|| format!("failed to write {}", path.display()))
}
