//! TLS for the broker's four listeners (STOMP, AMQP, cluster, admin) and its outgoing cluster connections, on rustls
//! (TLS 1.2 and 1.3 only, the ring provider the rest of the workspace uses).
//!
//! [`TlsContext`] holds the rustls settings built from `tls:`'s files. [`TlsContext::watch`]
//! reads the files again every `tls.reloadInterval`; when their bytes changed it builds
//! new settings, which every connection accepted or opened from then on uses. Open
//! connections keep theirs, so a rotation moves nothing and loses no role. Files that do
//! not load (a key that does not match, a half-written file) leave the old settings in
//! place and are logged, then tried again next interval.
//!
//! [`Stream`] is one byte stream, plain or TLS, so the STOMP and AMQP servers, the cluster port
//! and the admin API serve both the same way.

pub mod pki;
mod stream;

pub use stream::{accept, connect, Stream};

use crate::config::{ClientAuth, TlsConfig, TlsVersion};
use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("failed to read {what} {path}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("{what} {path} is not valid PEM: {message}")]
    Pem { what: &'static str, path: PathBuf, message: String },
    #[error("CA file {path}: certificate {index} cannot be a trust anchor")]
    Root { path: PathBuf, index: usize, source: rustls::Error },
    #[error("certificate {cert} and key {key} do not go together")]
    KeyMismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("invalid TLS settings")]
    Config(#[source] rustls::Error),
    #[error("invalid client-certificate settings: {0}")]
    Verifier(String),
    #[error("TLS handshake with {peer} failed")]
    Handshake { peer: String, source: std::io::Error },
    #[error("TLS handshake with {peer} did not finish within {timeout:?}")]
    HandshakeTimeout { peer: String, timeout: Duration },
    #[error("{0:?} is not a name a certificate can be checked against")]
    ServerName(String),
}

/// The crypto provider of every TLS setting in the broker (listeners, cluster, the
/// database client): ring, as kube uses. aws-lc-rs, which rustls now prefers for its
/// post-quantum key exchange, needs cmake and a C build this project avoids.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions from `min` up: never below TLS 1.2.
pub fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static FROM_1_2: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
    static FROM_1_3: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::V1_2 => &FROM_1_2,
        TlsVersion::V1_3 => &FROM_1_3,
    }
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    certs_from_pem(&bytes, path, what)
}

fn certs_from_pem(bytes: &[u8], path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, path: path.to_path_buf(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "CERTIFICATE" });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "key file")?;
    key_from_pem(&bytes, path)
}

fn key_from_pem(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what: "key file", path: path.to_path_buf(), expected: "PRIVATE KEY" }
        }
        e => TlsError::Pem { what: "key file", path: path.to_path_buf(), message: e.to_string() },
    })
}

/// Reads the CA certificates of a PEM file into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bytes = read(path, "CA file")?;
    roots_from_pem(&bytes, path)
}

fn roots_from_pem(bytes: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs_from_pem(bytes, path, "CA file")?.into_iter().enumerate() {
        roots.add(cert).map_err(|source| TlsError::Root { path: path.to_path_buf(), index, source })?;
    }
    Ok(roots)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Settings for a client of a duomq listener (the Rust client, the CLIs, the bench):
/// servers are checked against `ca_file`'s roots and the name dialled; `identity` is
/// a client certificate chain and key to present when the server asks.
pub fn client_config(
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
    min: TlsVersion,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert, "certificate file")?, load_key(key)?)
            .map_err(|source| TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf(), source })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The end of a DER certificate's validity, unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Accepts any server certificate; the handshake's signatures are still verified. For
/// libpq's `sslmode=prefer`/`require` without a root certificate, and the local
/// kubelet's HTTPS probes (a kubelet does not check the certificate either). Never for a
/// client of duomq's own listeners: those always check the chain and the name.
#[derive(Debug)]
pub struct AnyServerCertificate(pub Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Which listener a handshake was for (metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Stomp,
    Amqp,
    Cluster,
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Stomp => "stomp",
            Listener::Amqp => "amqp",
            Listener::Cluster => "cluster",
            Listener::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `stomp`, `amqp`, `cluster` (incoming and outgoing) or `admin`.
    pub listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` (changed files now in use) or `failed` (the old ones stay in use).
    pub result: &'static str,
}

/// `duomq_tls_*`. Clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    pub handshake_failures: Family<ListenerLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub certificate_not_after: Gauge,
}

impl TlsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "duomq_tls_handshake_failures",
            "TLS handshakes that failed (wrong CA, expired or missing certificate, plaintext on a TLS port), by listener",
            self.handshake_failures.clone(),
        );
        registry.register("duomq_tls_reloads", "Changed certificate files read again, by result", self.reloads.clone());
        registry.register(
            "duomq_tls_certificate_not_after_seconds",
            "When this broker's certificate in use expires, unix seconds (0: no TLS)",
            self.certificate_not_after.clone(),
        );
    }
}

/// The rustls settings built from one reading of the files.
struct Loaded {
    stomp: Option<tokio_rustls::TlsAcceptor>,
    amqp: Option<tokio_rustls::TlsAcceptor>,
    cluster: Option<tokio_rustls::TlsAcceptor>,
    admin: Option<tokio_rustls::TlsAcceptor>,
    cluster_client: Option<tokio_rustls::TlsConnector>,
}

/// The broker's TLS settings, read again from the files as they change. Methods give
/// the settings in use now, `None` for a listener without TLS.
pub struct TlsContext {
    config: TlsConfig,
    current: RwLock<Arc<Loaded>>,
    digest: Mutex<[u8; 32]>,
    pub metrics: TlsMetrics,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext").field("config", &self.config).finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Reads the files and builds the settings; with no listener on TLS, reads nothing.
    pub fn new(config: &TlsConfig, metrics: TlsMetrics) -> Result<Arc<TlsContext>, TlsError> {
        let (files, digest) = Files::read(config)?;
        let loaded = build(config, &files)?;
        metrics.certificate_not_after.set(files.not_after().unwrap_or(0));
        Ok(Arc::new(TlsContext { config: config.clone(), current: RwLock::new(Arc::new(loaded)), digest: Mutex::new(digest), metrics }))
    }

    /// A context with every listener in plaintext.
    pub fn disabled() -> Arc<TlsContext> {
        TlsContext::new(&TlsConfig::default(), TlsMetrics::default()).unwrap_or_else(|_| unreachable!("nothing to read"))
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// The acceptor for new connections to `listener`; `None` when it is plaintext.
    pub fn acceptor(&self, listener: Listener) -> Option<tokio_rustls::TlsAcceptor> {
        let loaded = self.current.read();
        match listener {
            Listener::Stomp => loaded.stomp.clone(),
            Listener::Amqp => loaded.amqp.clone(),
            Listener::Cluster => loaded.cluster.clone(),
            Listener::Admin => loaded.admin.clone(),
        }
    }

    /// The connector for new outgoing cluster connections (replication, votes, bridges,
    /// grouping): presents this broker's certificate and checks the peer's against the
    /// CA. `None` when the cluster port is plaintext.
    pub fn cluster_connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.current.read().cluster_client.clone()
    }

    /// Reads the files again; builds and installs new settings if their bytes changed.
    /// `Ok(true)`: new settings in use. An error leaves the old ones in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if !self.config.any_enabled() {
            return Ok(false);
        }
        let (files, digest) = Files::read(&self.config)?;
        if *self.digest.lock() == digest {
            return Ok(false);
        }
        let loaded = build(&self.config, &files)?;
        *self.current.write() = Arc::new(loaded);
        *self.digest.lock() = digest;
        self.metrics.certificate_not_after.set(files.not_after().unwrap_or(0));
        Ok(true)
    }

    /// Reloads every `tls.reloadInterval` until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.config.any_enabled() {
            return;
        }
        let mut every = tokio::time::interval(self.config.reload_interval.get());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let this = Arc::clone(&self);
            let result = tokio::task::spawn_blocking(move || this.reload()).await;
            match result {
                Ok(Ok(true)) => {
                    self.metrics.reloads.get_or_create(&ReloadLabels { result: "ok" }).inc();
                    tracing::info!(cert = ?self.config.cert_file, "certificate files changed: new connections use the new ones");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    self.metrics.reloads.get_or_create(&ReloadLabels { result: "failed" }).inc();
                    tracing::warn!(error = %e, "changed certificate files do not load; the ones loaded before stay in use");
                }
                Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
            }
        }
    }
}

/// The bytes of the configured files, read once.
struct Files {
    certs: Vec<CertificateDer<'static>>,
    key: Option<PrivateKeyDer<'static>>,
    roots: Option<RootCertStore>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<(Files, [u8; 32]), TlsError> {
        let mut digest = Sha256::new();
        let mut files = Files { certs: Vec::new(), key: None, roots: None };
        if !config.any_enabled() {
            return Ok((files, digest.finalize().into()));
        }
        if let Some(path) = &config.cert_file {
            let bytes = read(path, "certificate file")?;
            digest.update(&bytes);
            files.certs = certs_from_pem(&bytes, path, "certificate file")?;
        }
        if let Some(path) = &config.key_file {
            let bytes = read(path, "key file")?;
            digest.update(&bytes);
            files.key = Some(key_from_pem(&bytes, path)?);
        }
        if let Some(path) = &config.ca_file {
            let bytes = read(path, "CA file")?;
            digest.update(&bytes);
            files.roots = Some(roots_from_pem(&bytes, path)?);
        }
        Ok((files, digest.finalize().into()))
    }

    fn not_after(&self) -> Option<i64> {
        self.certs.first().and_then(not_after)
    }
}

fn build(config: &TlsConfig, files: &Files) -> Result<Loaded, TlsError> {
    let mut loaded = Loaded { stomp: None, amqp: None, cluster: None, admin: None, cluster_client: None };
    if !config.any_enabled() {
        return Ok(loaded);
    }
    let cert_path = config.cert_file.clone().unwrap_or_default();
    let key_path = config.key_file.clone().unwrap_or_default();
    let key = files.key.as_ref().ok_or_else(|| TlsError::Empty { what: "key file", path: key_path.clone(), expected: "PRIVATE KEY" })?;
    let server = |auth: ClientAuth| -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(config.min_version))
            .map_err(TlsError::Config)?;
        let builder = match (auth, &files.roots) {
            (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
            (auth, Some(roots)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider());
                let verifier = if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Verifier(e.to_string()))?)
            }
        };
        let mut server = builder
            .with_single_cert(files.certs.clone(), key.clone_key())
            .map_err(|source| TlsError::KeyMismatch { cert: cert_path.clone(), key: key_path.clone(), source })?;
        server.alpn_protocols = Vec::new();
        // No TLS 1.3 session tickets. They reach the client right after its handshake,
        // while it sends its first frame; stomp.py reads on one thread and writes on
        // another over one OpenSSL object, and a ticket processed mid-write there lost
        // the CONNECT now and then (the broker saw no frame and closed after
        // stomp.connectTimeout). Resumption is worth little here anyway: connections live
        // long, and after a failover they reconnect to another broker, whose session
        // cache never held them.
        server.send_tls13_tickets = 0;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
    };
    if config.stomp.enabled {
        loaded.stomp = Some(server(config.stomp.client_auth)?);
    }
    if config.amqp.enabled {
        loaded.amqp = Some(server(config.amqp.client_auth)?);
    }
    if config.admin.enabled {
        loaded.admin = Some(server(ClientAuth::None)?);
    }
    if config.cluster.enabled {
        loaded.cluster = Some(server(ClientAuth::Required)?);
        let roots = files.roots.clone().ok_or_else(|| TlsError::Empty {
            what: "CA file",
            path: config.ca_file.clone().unwrap_or_default(),
            expected: "CERTIFICATE",
        })?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(config.min_version))
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(files.certs.clone(), key.clone_key())
            .map_err(|source| TlsError::KeyMismatch { cert: cert_path.clone(), key: key_path.clone(), source })?;
        loaded.cluster_client = Some(tokio_rustls::TlsConnector::from(Arc::new(client)));
    }
    Ok(loaded)
}
