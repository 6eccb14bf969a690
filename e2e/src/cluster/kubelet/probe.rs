//! Probes: where a probe points (`resolve_target`, pure: named or numbered ports, host
//! override, the pod IP) and running it from the host (HTTP GET, TCP connect, `docker
//! exec`), within its timeout. Schedules and thresholds live in the pod worker.

use std::net::SocketAddr;
use std::time::Duration;

use bollard::Docker;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::docker;
use crate::cluster::error_chain;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    Http {
        addr: SocketAddr,
        path: String,
        host_header: String,
        headers: Vec<(String, String)>,
        https: bool,
    },
    Tcp(SocketAddr),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeTargetError {
    #[error("port {port} not found in container {container}")]
    UnknownPort { port: String, container: String },
    #[error("invalid probe address {addr}")]
    BadAddress { addr: String },
    #[error("the pod has no IP yet")]
    NoPodIp,
    #[error("probe has no handler this kubelet supports (httpGet, tcpSocket, exec)")]
    NoHandler,
}

/// Resolves a port given by number or by the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, ProbeTargetError> {
    let unknown = || ProbeTargetError::UnknownPort {
        port: match port {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => s.clone(),
        },
        container: container.name.clone(),
    };
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| unknown()),
        IntOrString::String(s) => match s.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(unknown),
        },
    }
}

/// Where `probe` of `container` points, for a pod at `pod_ip`.
pub fn resolve_target(
    probe: &Probe,
    container: &Container,
    pod_ip: Option<&str>,
) -> Result<ProbeTarget, ProbeTargetError> {
    let address = |host: Option<&str>, port: u16| {
        let host = match host.filter(|h| !h.is_empty()) {
            Some(h) => h,
            None => pod_ip.ok_or(ProbeTargetError::NoPodIp)?,
        };
        let text = format!("{host}:{port}");
        text.parse::<SocketAddr>()
            .map_err(|_| ProbeTargetError::BadAddress { addr: text })
    };
    if let Some(http) = &probe.http_get {
        let port = resolve_port(&http.port, container)?;
        let addr = address(http.host.as_deref(), port)?;
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let host_header = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| addr.to_string());
        return Ok(ProbeTarget::Http {
            addr,
            path: if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            },
            host_header,
            headers: headers
                .into_iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
                .collect(),
            https: http.scheme.as_deref() == Some("HTTPS"),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, container)?;
        return Ok(ProbeTarget::Tcp(address(tcp.host.as_deref(), port)?));
    }
    if let Some(exec) = &probe.exec {
        return Ok(ProbeTarget::Exec(exec.command.clone().unwrap_or_default()));
    }
    Err(ProbeTargetError::NoHandler)
}

/// Runs the probe once; Err carries the failure as the kubelet would report it.
pub async fn run(
    target: &ProbeTarget,
    docker_client: &Docker,
    container: &str,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        match target {
            ProbeTarget::Http {
                addr,
                path,
                host_header,
                headers,
                https,
            } => {
                http_get(*addr, path, host_header, headers, *https).await
            }
            ProbeTarget::Tcp(addr) => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {addr}: {e}")),
            ProbeTarget::Exec(cmd) => {
                match docker::exec(docker_client, container, cmd.clone()).await {
                    Ok(Some(0)) => Ok(()),
                    Ok(code) => Err(format!(
                        "command {cmd:?} exited with {}",
                        code.unwrap_or(-1)
                    )),
                    Err(e) => Err(error_chain(&e)),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs_f32())),
    }
}

async fn http_get(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    https: bool,
) -> Result<(), String> {
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{addr}{path}");
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
    if !https {
        return http_exchange(tcp, &url, path, host, headers).await;
    }
    // As the kubelet: TLS without checking the certificate (InsecureSkipVerify).
    let connector = tokio_rustls::TlsConnector::from(insecure_tls().map_err(|e| format!("Get \"{url}\": {e}"))?);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    http_exchange(tls, &url, path, host, headers).await
}

/// The kubelet's probe TLS settings: any certificate is accepted (the handshake's
/// signatures are still checked). ring, as the rest of the workspace (rustls deprecates
/// it for lacking post-quantum key exchange; aws-lc-rs needs a C build).
#[allow(deprecated)]
fn insecure_tls() -> Result<std::sync::Arc<rustls::ClientConfig>, rustls::Error> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    url: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
    };
    use rstest::rstest;

    fn container() -> Container {
        Container {
            name: "broker".into(),
            ports: Some(vec![ContainerPort {
                name: Some("admin".into()),
                container_port: 8161,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn http(port: IntOrString, path: Option<&str>, host: Option<&str>) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: path.map(Into::into),
                host: host.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn http_target(addr: &str, path: &str) -> ProbeTarget {
        ProbeTarget::Http {
            addr: addr.parse().unwrap(),
            path: path.into(),
            host_header: addr.into(),
            headers: vec![],
            https: false,
        }
    }

    #[rstest]
    #[case::named_port(http(IntOrString::String("admin".into()), Some("/healthz"), None), Ok(http_target("10.213.0.10:8161", "/healthz")))]
    #[case::numbered_port(
        http(IntOrString::Int(9000), None, None),
        Ok(http_target("10.213.0.10:9000", "/"))
    )]
    #[case::numeric_string(http(IntOrString::String("9000".into()), Some("x"), None), Ok(http_target("10.213.0.10:9000", "/x")))]
    #[case::host_override(
        http(IntOrString::Int(80), Some("/"), Some("127.0.0.1")),
        Ok(http_target("127.0.0.1:80", "/"))
    )]
    #[case::unknown_name(http(IntOrString::String("stomp".into()), None, None), Err(ProbeTargetError::UnknownPort { port: "stomp".into(), container: "broker".into() }))]
    #[case::tcp(Probe { tcp_socket: Some(TCPSocketAction { port: IntOrString::String("admin".into()), host: None }), ..Default::default() }, Ok(ProbeTarget::Tcp("10.213.0.10:8161".parse().unwrap())))]
    #[case::exec(Probe { exec: Some(ExecAction { command: Some(vec!["true".into()]) }), ..Default::default() }, Ok(ProbeTarget::Exec(vec!["true".into()])))]
    #[case::none(Probe::default(), Err(ProbeTargetError::NoHandler))]
    fn given_probe_when_resolving_target_should_point_at_pod_port(
        #[case] probe: Probe,
        #[case] expected: Result<ProbeTarget, ProbeTargetError>,
    ) {
        assert_eq!(
            resolve_target(&probe, &container(), Some("10.213.0.10")),
            expected
        );
    }

    #[test]
    fn given_no_pod_ip_when_resolving_should_say_so() {
        let probe = http(IntOrString::Int(80), None, None);
        assert_eq!(
            resolve_target(&probe, &container(), None),
            Err(ProbeTargetError::NoPodIp)
        );
    }

    #[test]
    fn given_host_header_when_resolving_should_use_it() {
        let mut probe = http(IntOrString::Int(80), None, None);
        probe.http_get.as_mut().unwrap().http_headers = Some(vec![
            HTTPHeader {
                name: "Host".into(),
                value: "example".into(),
            },
            HTTPHeader {
                name: "X-A".into(),
                value: "1".into(),
            },
        ]);
        let Ok(ProbeTarget::Http {
            host_header,
            headers,
            ..
        }) = resolve_target(&probe, &container(), Some("10.0.0.1"))
        else {
            panic!("http target expected")
        };
        assert_eq!(host_header, "example");
        assert_eq!(headers, vec![("X-A".to_string(), "1".to_string())]);
    }

    #[tokio::test]
    async fn given_http_server_when_probing_should_judge_by_status_code() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let docker_client = Docker::connect_with_local_defaults().unwrap();
        let target = http_target(&addr.to_string(), "/readyz");
        assert_eq!(
            run(&target, &docker_client, "unused", Duration::from_secs(5)).await,
            Ok(())
        );
        assert_eq!(
            run(&target, &docker_client, "unused", Duration::from_secs(5)).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }

    #[tokio::test]
    #[allow(deprecated)]
    async fn given_https_server_when_probing_should_speak_tls_without_checking_the_certificate() {
        use duomq_broker::tls::pki::{Authority, Leaf};
        use rustls::pki_types::pem::PemObject;
        let day = Duration::from_secs(86_400);
        // A CA nobody trusts and a certificate naming another host: the kubelet does not care.
        let ca = Authority::generate("probe CA", day).expect("CA");
        let leaf = ca.issue(&Leaf::new("broker", day).dns("elsewhere.example")).expect("leaf");
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
        let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut s = acceptor.accept(tcp).await.expect("TLS handshake");
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /readyz HTTP/1.1"));
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = s.shutdown().await;
            }
        });
        let docker_client = Docker::connect_with_local_defaults().unwrap();
        let target = match http_target(&addr.to_string(), "/readyz") {
            ProbeTarget::Http { addr, path, host_header, headers, .. } => ProbeTarget::Http { addr, path, host_header, headers, https: true },
            other => other,
        };
        assert_eq!(
            run(&target, &docker_client, "unused", Duration::from_secs(5)).await,
            Ok(())
        );
        assert_eq!(
            run(&target, &docker_client, "unused", Duration::from_secs(5)).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }
}
