//! `sslmode` as libpq means it, on rustls (tokio-postgres itself knows only disable,
//! prefer and require, and leaves verification to the TLS connector).

use crate::config::SslMode;
use crate::tls::AnyServerCertificate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// Why TLS towards the database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read the database CA certificates {path} (sslrootcert)")]
    ReadRoots { path: String, source: rustls::pki_types::pem::Error },
    #[error("no CA certificate in {path} (sslrootcert)")]
    NoRoots { path: String },
    #[error("{mode} needs the CA certificates: set storage.database.sslRootCert or sslrootcert in the URL")]
    RootsMissing { mode: &'static str },
    #[error("invalid CA certificates for the database")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("failed to build the TLS settings for the database")]
    Config(#[source] rustls::Error),
}

use crate::tls::provider;

/// The rustls settings for `mode` (not for `disable`), roots from `root_cert`.
pub fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(AnyServerCertificate(Arc::clone(&provider))),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let name = if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" };
            let path = root_cert.ok_or(TlsError::RootsMissing { mode: name })?;
            let shown = path.display().to_string();
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|source| TlsError::ReadRoots { path: shown.clone(), source })? {
                let cert = cert.map_err(|source| TlsError::ReadRoots { path: shown.clone(), source })?;
                // A certificate rustls cannot use as a root is left out, as libpq does.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots { path: shown });
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(TlsError::Verifier)?;
            if mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
