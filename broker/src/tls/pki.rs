//! A small certificate authority on rcgen: the operator's per-BrokerGroup CA
//! (`spec.tls.mode: operatorManaged`) and every test that needs certificates use it,
//! so there is one way certificates are made. Keys are ECDSA P-256; certificates are PEM.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("failed to {what}: {source}")]
    Rcgen { what: &'static str, source: rcgen::Error },
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// What a leaf certificate says: the subject common name, the names and addresses it is
/// valid for, and when. Leaves are good for both server and client authentication, as a
/// member is both on the cluster port.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    /// Valid from an hour ago (clock skew) for `valid_for`.
    pub fn new(common_name: &str, valid_for: Duration) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            common_name: common_name.to_string(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + valid_for,
        }
    }

    pub fn dns(mut self, name: impl Into<String>) -> Leaf {
        self.dns_names.push(name.into());
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Leaf {
        self.ip_addresses.push(ip);
        self
    }

    /// `localhost`, 127.0.0.1 and ::1: a certificate for loopback tests.
    pub fn loopback(self) -> Leaf {
        self.dns("localhost").ip(IpAddr::from([127, 0, 0, 1])).ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
    }
}

/// A CA that signs leaves.
pub struct Authority {
    issued: Issued,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("issued", &self.issued).finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA valid from an hour ago for `valid_for`.
    pub fn generate(common_name: &str, valid_for: Duration) -> Result<Authority, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(rcgen("generate a CA key"))?;
        let now = SystemTime::now();
        let cert = ca_params(common_name, now - Duration::from_secs(3600), now + valid_for)?
            .self_signed(&key)
            .map_err(rcgen("self-sign the CA"))?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Authority { issued, cert, key })
    }

    /// The CA kept in a Secret: its certificate and key as PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(rcgen("read the CA key"))?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem).map_err(rcgen("read the CA certificate"))?;
        // Signing needs an rcgen certificate of the CA: the same subject and key signed
        // again; leaves name the subject and key, so they verify against the original.
        let cert = params.self_signed(&key).map_err(rcgen("load the CA"))?;
        Ok(Authority { issued: Issued { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() }, cert, key })
    }

    /// The CA's certificate (what clients and members trust) and key.
    pub fn pem(&self) -> &Issued {
        &self.issued
    }

    /// Signs a new leaf with a new key.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(rcgen("generate a key"))?;
        let mut names: Vec<String> = leaf.dns_names.clone();
        names.extend(leaf.ip_addresses.iter().map(IpAddr::to_string));
        let mut params = rcgen::CertificateParams::new(names).map_err(rcgen("set the certificate's names"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, leaf.common_name.as_str());
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(rcgen("sign the certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn ca_params(common_name: &str, not_before: SystemTime, not_after: SystemTime) -> Result<rcgen::CertificateParams, PkiError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen("make CA parameters"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuth, TlsConfig};
    use crate::report::error_chain;
    use crate::tls::{accept, connect, Listener, TlsContext, TlsMetrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DAY: Duration = Duration::from_secs(86_400);

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        }
        fn member(&self, ca: &Authority, cn: &str) -> TlsConfig {
            let leaf = ca.issue(&Leaf::new(cn, DAY).loopback()).expect("issue");
            let mut c = TlsConfig {
                cert_file: Some(self.write(&format!("{cn}.crt"), &leaf.cert_pem)),
                key_file: Some(self.write(&format!("{cn}.key"), &leaf.key_pem)),
                ca_file: Some(self.write(&format!("{cn}-ca.crt"), &ca.pem().cert_pem)),
                ..TlsConfig::default()
            };
            c.cluster.enabled = true;
            c.stomp.enabled = true;
            c.stomp.client_auth = ClientAuth::Optional;
            c
        }
    }

    async fn round_trip(server: &TlsContext, client: &TlsContext) -> Result<String, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let acceptor = server.acceptor(Listener::Cluster);
        let metrics = server.metrics.clone();
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut s = accept(tcp, acceptor, Duration::from_secs(5), Listener::Cluster, &metrics).await.map_err(|e| error_chain(&e))?;
            let cn = s.peer_common_name().unwrap_or_default();
            s.write_all(cn.as_bytes()).await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut s = connect(tcp, "127.0.0.1", client.cluster_connector(), Duration::from_secs(5)).await.map_err(|e| error_chain(&e))?;
        let mut got = String::new();
        let read = s.read_to_string(&mut got).await.map_err(|e| e.to_string());
        let served = serving.await.map_err(|e| e.to_string())?;
        served?;
        read?;
        Ok(got)
    }

    #[tokio::test]
    async fn given_members_of_one_ca_should_connect_and_see_each_others_name() {
        let dir = Dir { dir: tempfile::tempdir().expect("tempdir") };
        let ca = Authority::generate("duomq test CA", DAY).expect("CA");
        let a = TlsContext::new(&dir.member(&ca, "member-a"), TlsMetrics::default()).expect("a");
        let b = TlsContext::new(&dir.member(&ca, "member-b"), TlsMetrics::default()).expect("b");
        assert_eq!(round_trip(&a, &b).await.expect("handshake"), "member-b");
    }

    #[tokio::test]
    async fn given_members_of_different_cas_should_refuse_the_handshake() {
        let dir = Dir { dir: tempfile::tempdir().expect("tempdir") };
        let ca = Authority::generate("duomq test CA", DAY).expect("CA");
        let other = Authority::generate("another CA", DAY).expect("CA");
        let a = TlsContext::new(&dir.member(&ca, "member-a"), TlsMetrics::default()).expect("a");
        let b = TlsContext::new(&dir.member(&other, "member-b"), TlsMetrics::default()).expect("b");
        let error = round_trip(&a, &b).await.expect_err("different CAs");
        assert!(error.contains("UnknownIssuer") || error.contains("unknown") || error.contains("Unknown"), "{error}");
    }

    #[tokio::test]
    async fn given_a_ca_read_back_from_pem_should_issue_certificates_the_original_trusts() {
        let dir = Dir { dir: tempfile::tempdir().expect("tempdir") };
        let ca = Authority::generate("duomq test CA", DAY).expect("CA");
        let again = Authority::from_pem(&ca.pem().cert_pem, &ca.pem().key_pem).expect("from PEM");
        let a = TlsContext::new(&dir.member(&ca, "member-a"), TlsMetrics::default()).expect("a");
        let b = TlsContext::new(&dir.member(&again, "member-b"), TlsMetrics::default()).expect("b");
        assert_eq!(round_trip(&a, &b).await.expect("handshake"), "member-b");
    }

    #[tokio::test]
    async fn given_changed_files_reload_should_serve_new_connections_with_them() {
        let dir = Dir { dir: tempfile::tempdir().expect("tempdir") };
        let old = Authority::generate("old CA", DAY).expect("CA");
        let new = Authority::generate("new CA", DAY).expect("CA");
        let config = dir.member(&old, "member-a");
        let a = TlsContext::new(&config, TlsMetrics::default()).expect("a");
        let b_new = TlsContext::new(&dir.member(&new, "member-b"), TlsMetrics::default()).expect("b");
        assert!(round_trip(&a, &b_new).await.is_err(), "a trusts only the old CA yet");
        assert!(!a.reload().expect("unchanged files"), "nothing changed");
        let leaf = new.issue(&Leaf::new("member-a", DAY).loopback()).expect("issue");
        std::fs::write(config.cert_file.as_ref().expect("cert"), &leaf.cert_pem).expect("write");
        std::fs::write(config.key_file.as_ref().expect("key"), &leaf.key_pem).expect("write");
        std::fs::write(config.ca_file.as_ref().expect("ca"), &new.pem().cert_pem).expect("write");
        assert!(a.reload().expect("reload"), "changed files are used");
        assert_eq!(round_trip(&a, &b_new).await.expect("handshake after rotation"), "member-b");
    }

    #[tokio::test]
    async fn given_a_key_that_does_not_match_reload_should_keep_the_old_settings() {
        let dir = Dir { dir: tempfile::tempdir().expect("tempdir") };
        let ca = Authority::generate("duomq test CA", DAY).expect("CA");
        let config = dir.member(&ca, "member-a");
        let a = TlsContext::new(&config, TlsMetrics::default()).expect("a");
        let stray = ca.issue(&Leaf::new("stray", DAY)).expect("issue");
        std::fs::write(config.key_file.as_ref().expect("key"), &stray.key_pem).expect("write");
        let error = crate::report::error_chain(&a.reload().expect_err("mismatched key"));
        assert!(error.contains("do not go together"), "{error}");
        let b = TlsContext::new(&dir.member(&ca, "member-b"), TlsMetrics::default()).expect("b");
        assert_eq!(round_trip(&a, &b).await.expect("old settings still serve"), "member-b");
    }

    #[tokio::test]
    async fn given_an_expired_certificate_should_refuse_it() {
        let dir = Dir { dir: tempfile::tempdir().expect("tempdir") };
        let ca = Authority::generate("duomq test CA", DAY).expect("CA");
        let a = TlsContext::new(&dir.member(&ca, "member-a"), TlsMetrics::default()).expect("a");
        let mut expired = Leaf::new("member-b", DAY).loopback();
        expired.not_before = SystemTime::now() - 2 * DAY;
        expired.not_after = SystemTime::now() - DAY;
        let leaf = ca.issue(&expired).expect("issue");
        let mut config = dir.member(&ca, "member-b");
        config.cert_file = Some(dir.write("expired.crt", &leaf.cert_pem));
        config.key_file = Some(dir.write("expired.key", &leaf.key_pem));
        let b = TlsContext::new(&config, TlsMetrics::default()).expect("b");
        let error = round_trip(&a, &b).await.expect_err("expired");
        assert!(error.to_lowercase().contains("expired"), "{error}");
    }
}
