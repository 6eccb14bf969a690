//! The client's side of `stomp+ssl://`: checking the TLS options before anything is
//! dialled, building the rustls settings from their files (with
//! [`crate::tls::client_config`]), the handshake, and turning what rustls reports into
//! one sentence saying what failed (the broker's certificate is from another CA, names
//! another host, has expired; the broker wants a client certificate; the port does not
//! speak TLS). It keeps no TLS state between connections (each one reads the files again)
//! and never falls back to plaintext or to the system's trust store.

use super::error::ClientError;
use super::options::TlsOptions;
use super::url::StompUrl;
use crate::config::TlsVersion;
use crate::tls::{self, Stream, TlsError};
use rustls::{AlertDescription, CertificateError};
use std::time::Duration;
use tokio::net::TcpStream;

/// Refuses options a TLS member cannot be reached with, before anything is dialled: no CA
/// file, or a client certificate without its key (or the other way round).
pub(super) fn check(members: &[StompUrl], options: &TlsOptions) -> Result<(), ClientError> {
    let Some(member) = members.iter().find(|m| m.tls) else { return Ok(()) };
    if options.ca_file.is_none() {
        return Err(ClientError::TlsUnconfigured {
            reason: format!(
                "{member} needs a CA file to check the broker's certificate against: set --ca-file \
                 (DUOMQ_CA_FILE) on the CLIs, TlsOptions::ca_file in the client"
            ),
        });
    }
    match (&options.cert_file, &options.key_file) {
        (Some(_), None) => Err(ClientError::TlsUnconfigured {
            reason: "a client certificate needs its private key: set --key-file (DUOMQ_KEY_FILE) too".into(),
        }),
        (None, Some(_)) => Err(ClientError::TlsUnconfigured {
            reason: "a private key without its certificate: set --cert-file (DUOMQ_CERT_FILE) too".into(),
        }),
        _ => Ok(()),
    }
}

/// TLS over `tcp` to `member` when it is a TLS member (plaintext otherwise). The files are
/// read now, so a rotated CA or client certificate is used by the next connection.
pub(super) async fn wrap(
    tcp: TcpStream,
    member: &StompUrl,
    options: &TlsOptions,
    timeout: Duration,
) -> Result<Stream, ClientError> {
    if !member.tls {
        return Ok(Stream::Plain(tcp));
    }
    check(std::slice::from_ref(member), options)?;
    let ca = options.ca_file.as_deref().unwrap_or_else(|| unreachable!("checked above"));
    let identity = options.cert_file.as_deref().zip(options.key_file.as_deref());
    let config = tls::client_config(ca, identity, TlsVersion::V1_2).map_err(ClientError::TlsSettings)?;
    let name = options.server_name.as_deref().unwrap_or(&member.host);
    let addr = member.address();
    match tls::connect(tcp, name, Some(tokio_rustls::TlsConnector::from(config)), timeout).await {
        Ok(stream) => Ok(stream),
        Err(TlsError::Handshake { source, .. }) => {
            let reason = match explain(&source, name, options) {
                Some(reason) => reason,
                // A plaintext STOMP broker reads the ClientHello as a bad frame and hangs up.
                None if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "the broker closed the connection during the TLS handshake; is this a plaintext STOMP port? \
                     use stomp:// for it"
                        .to_string()
                }
                None => source.to_string(),
            };
            Err(ClientError::Tls { addr, reason })
        }
        Err(TlsError::HandshakeTimeout { timeout, .. }) => Err(ClientError::Timeout {
            what: format!(
                "an answer to the TLS handshake from {addr} ({timeout:?}; a plaintext STOMP port never answers \
                 one: use stomp:// for it)"
            ),
        }),
        Err(TlsError::ServerName(name)) => Err(ClientError::TlsUnconfigured {
            reason: format!("{name:?} is not a host name or IP address a certificate can be checked against"),
        }),
        Err(other) => Err(ClientError::Tls { addr, reason: other.to_string() }),
    }
}

/// What a TLS failure means, in words, when `error` carries one from rustls: the
/// handshake's, or an alert the broker sent after it (with TLS 1.3 a refused client
/// certificate arrives with the first read). `name` is the name the broker's certificate
/// was checked against.
pub(super) fn explain(error: &std::io::Error, name: &str, options: &TlsOptions) -> Option<String> {
    let rustls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    let ca = options.ca_file.as_ref().map_or_else(|| "the CA file".to_string(), |p| p.display().to_string());
    let client_cert = match &options.cert_file {
        Some(cert) => format!("this client's certificate {}", cert.display()),
        None => "this client, which presented no certificate (set --cert-file and --key-file)".to_string(),
    };
    let said = match rustls {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the broker's certificate is not signed by a CA in {ca}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the broker's certificate is not valid for the name {name:?} ({e}); to check it under another \
                 name, set --tls-server-name"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the broker's certificate has expired ({e})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the broker's certificate is not valid yet ({e})")
            }
            CertificateError::Revoked => "the broker's certificate is revoked".to_string(),
            e => format!("the broker's certificate was refused: {e}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                format!("the broker requires a client certificate and refused {client_cert}")
            }
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
                format!("the broker refused {client_cert}: not signed by a CA it trusts ({alert:?})")
            }
            AlertDescription::CertificateExpired => format!("the broker refused {client_cert}: it has expired"),
            AlertDescription::CertificateRevoked => format!("the broker refused {client_cert}: it is revoked"),
            AlertDescription::HandshakeFailure if options.cert_file.is_none() => format!(
                "the broker ended the handshake (HandshakeFailure); it may require a client certificate, and \
                 refused {client_cert}"
            ),
            AlertDescription::ProtocolVersion => {
                "the broker speaks none of this client's TLS versions (1.2, 1.3)".to_string()
            }
            alert => format!("the broker ended the handshake with the alert {alert:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the broker's answer is not TLS ({rustls}); is this a plaintext STOMP port? use stomp:// for it"
        ),
        other => format!("{other}"),
    };
    Some(said)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tls_url() -> StompUrl {
        "stomp+ssl://broker:61614".parse().expect("a valid URL")
    }

    fn reason(result: Result<(), ClientError>) -> String {
        match result {
            Err(ClientError::TlsUnconfigured { reason }) => reason,
            other => panic!("expected TlsUnconfigured, got {other:?}"),
        }
    }

    #[test]
    fn given_tls_member_without_ca_file_when_checked_should_name_the_option_to_set() {
        let r = reason(check(&[tls_url()], &TlsOptions::default()));
        assert!(r.contains("stomp+ssl://broker:61614") && r.contains("--ca-file"), "{r}");
    }

    #[test]
    fn given_only_plaintext_members_when_checked_should_need_no_ca() {
        let plain: StompUrl = "stomp://broker".parse().expect("a valid URL");
        assert!(check(&[plain], &TlsOptions::default()).is_ok());
    }

    #[test]
    fn given_certificate_without_key_when_checked_should_ask_for_the_key() {
        let ca = Some(PathBuf::from("ca.pem"));
        let cert_only = TlsOptions { ca_file: ca.clone(), cert_file: Some("c.pem".into()), ..TlsOptions::default() };
        assert!(reason(check(&[tls_url()], &cert_only)).contains("--key-file"));
        let key_only = TlsOptions { ca_file: ca, key_file: Some("k.pem".into()), ..TlsOptions::default() };
        assert!(reason(check(&[tls_url()], &key_only)).contains("--cert-file"));
    }

    #[test]
    fn given_rustls_errors_when_explained_should_say_what_failed() {
        let options = TlsOptions { ca_file: Some("ca.pem".into()), ..TlsOptions::default() };
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = io(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(explain(&unknown, "b", &options).is_some_and(|s| s.contains("not signed by a CA in ca.pem")));
        let expired = io(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert!(explain(&expired, "b", &options).is_some_and(|s| s.contains("has expired")));
        let name = io(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        assert!(explain(&name, "b", &options).is_some_and(|s| s.contains("not valid for the name \"b\"")));
        let required = io(rustls::Error::AlertReceived(AlertDescription::CertificateRequired));
        assert!(explain(&required, "b", &options).is_some_and(|s| s.contains("presented no certificate")));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(explain(&plain, "b", &options), None);
    }
}
