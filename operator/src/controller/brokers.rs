//! Talking to a broker's admin endpoint: reading its `/status`, and asking a live for a
//! switchover, a fence or a drain. Every request, reads too, is signed with the cluster
//! password (paths, JSON types and the signature come from the broker crate); with
//! `spec.tls` it goes over HTTPS, trusting the group's CA and checking the pod's DNS name
//! while dialling its IP. Behind a trait so controller tests can answer for brokers that
//! do not run.

use std::sync::Arc;
use std::time::Duration;

use duomq_broker::admin::api::{
    AdminError, BrokerStatus, DrainRequest, DrainStatus, FenceReply, FenceRequest, SwitchoverReply,
    SwitchoverRequest, DRAIN, FENCE, STATUS, SWITCHOVER,
};
use duomq_broker::admin::auth;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long one broker has to answer before it counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A `/status` larger than this is not a status.
const MAX_STATUS_BYTES: usize = 4 << 20;
/// A live answers a switchover once it is done, after its clients drained.
const SWITCHOVER_TIMEOUT: Duration =
    Duration::from_secs(duomq_broker::ha::switchover::REPLY_TIMEOUT.as_secs() + 5);

/// One broker's admin endpoint and how to talk to it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
    /// The cluster password every request is signed with; `None` while the cluster
    /// Secret has none (the request goes unsigned, and a broker refuses it).
    pub password: Option<String>,
    /// HTTPS: whom to trust and which name the broker's certificate must carry.
    pub tls: Option<EndpointTls>,
}

/// HTTPS to one broker: the group's trust (its CA) and the pod's DNS name, checked against
/// the certificate while the connection goes to the pod's IP.
#[derive(Clone)]
pub struct EndpointTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `ip:port`, for messages.
    pub fn address(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }

    fn password(&self) -> Result<&str, String> {
        self.password.as_deref().ok_or_else(|| {
            "the cluster credentials Secret has no password to sign the request with".into()
        })
    }
}

/// How the operator reaches one BrokerGroup's brokers: the admin port, the cluster password,
/// and with `spec.tls` the settings that trust the group's CA.
#[derive(Clone, Default)]
pub struct Access {
    pub namespace: String,
    pub port: u16,
    pub password: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Access {
    /// Member `pod` of `group`, at `ip`; over HTTPS (`tls`: the pod was made with
    /// `spec.tls`) its certificate must name the pod's DNS name.
    pub fn endpoint(&self, group: &str, pod: &str, ip: &str, tls: bool) -> Endpoint {
        Endpoint {
            ip: ip.to_string(),
            port: self.port,
            password: self.password.clone(),
            tls: self.tls.as_ref().filter(|_| tls).map(|config| EndpointTls {
                config: Arc::clone(config),
                server_name: crate::names::member_host(group, pod, &self.namespace),
            }),
        }
    }
}

/// The brokers' admin endpoints.
pub trait BrokerStatusSource: Send + Sync {
    /// The `/status` of the broker at `at`, or why it could not be read.
    fn status<'a>(&'a self, at: &'a Endpoint) -> BoxFuture<'a, Result<BrokerStatus, String>>;
    /// Asks the live at `at` to hand its role to `to`; answers once the live handed over,
    /// or why it refused or failed. A source that only reads status refuses.
    fn switchover<'a>(
        &'a self,
        at: &'a Endpoint,
        _to: &'a str,
    ) -> BoxFuture<'a, Result<SwitchoverReply, String>> {
        Box::pin(async move { Err(format!("cannot ask {} for a switchover", at.address())) })
    }
    /// Asks the live at `at` to drain into the `targets` groups (`POST /ha/drain`);
    /// answers its progress.
    fn drain<'a>(
        &'a self,
        at: &'a Endpoint,
        _targets: &'a [String],
    ) -> BoxFuture<'a, Result<DrainStatus, String>> {
        Box::pin(async move { Err(format!("cannot ask {} to drain", at.address())) })
    }
    /// Fences (`fenced`) or unfences the member at `at` (`POST /ha/fence`); `force`
    /// fences even a live.
    fn fence<'a>(
        &'a self,
        at: &'a Endpoint,
        _fenced: bool,
        _force: bool,
    ) -> BoxFuture<'a, Result<FenceReply, String>> {
        Box::pin(async move { Err(format!("cannot ask {} to fence", at.address())) })
    }
}

/// The real source: HTTP or HTTPS to the pod's IP, one connection per request (a status
/// poll every few seconds per pod needs no pool, and each BrokerGroup has its own trust).
#[derive(Default)]
pub struct HttpBrokerStatus;

impl HttpBrokerStatus {
    /// Sends `request` (its URI a path) to `at`; the status and at most
    /// [`MAX_STATUS_BYTES`] of body.
    async fn send(
        &self,
        at: &Endpoint,
        mut request: hyper::Request<Full<Bytes>>,
        path: &str,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let unreachable =
            |e: &dyn std::fmt::Display| format!("failed to reach the admin endpoint: {e}");
        let tcp = tokio::net::TcpStream::connect((at.ip.as_str(), at.port))
            .await
            .map_err(|e| unreachable(&e))?;
        let (host, connector) = match &at.tls {
            Some(tls) => (
                tls.server_name.clone(),
                Some(tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))),
            ),
            None => (at.address(), None),
        };
        let stream = duomq_broker::tls::connect(tcp, &host, connector, FETCH_TIMEOUT)
            .await
            .map_err(|e| unreachable(&chain(&e)))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        let driver = tokio::spawn(connection);
        let header = hyper::header::HeaderValue::from_str(&host)
            .map_err(|e| format!("bad host {host}: {e}"))?;
        request.headers_mut().insert(hyper::header::HOST, header);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e));
        let body = match response {
            Ok(response) => {
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| (status, b.to_bytes()))
                    .map_err(|e| format!("failed to read {path}: {e}"))
            }
            Err(e) => Err(e),
        };
        driver.abort();
        let (status, body) = body?;
        if body.len() > MAX_STATUS_BYTES {
            return Err(format!("{path} answered {} bytes", body.len()));
        }
        Ok((status, body))
    }

    /// `method path` with `body`, signed with the cluster password when there is one; the
    /// JSON reply, or the status and the broker's one-line error.
    async fn call<Rep: DeserializeOwned>(
        &self,
        at: &Endpoint,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Rep, String> {
        let mut request = hyper::Request::builder().method(method.clone()).uri(path);
        if let Some(password) = &at.password {
            let signature = auth::sign(
                password.as_bytes(),
                method.as_str(),
                path,
                &body,
                auth::unix_now(),
            );
            request = request.header(auth::SIGNATURE_HEADER, signature);
        }
        if !body.is_empty() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("failed to build the request: {e}"))?;
        let (status, body) = self.send(at, request, path).await?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| format!("failed to parse the reply to {path}: {e}"));
        }
        let error = serde_json::from_slice::<AdminError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        Err(format!("{status}: {error}"))
    }

    /// `POST`s `request` as JSON to `path`; writes are never sent unsigned.
    async fn post<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        at: &Endpoint,
        path: &str,
        request: &Req,
    ) -> Result<Rep, String> {
        at.password()?;
        let body = serde_json::to_vec(request)
            .map_err(|e| format!("failed to encode the request: {e}"))?;
        self.call(at, hyper::Method::POST, path, body).await
    }
}

/// An error and its sources, `: `-separated (why a handshake failed is in a source).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// `call`, or an error once `limit` has passed without an answer.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

impl BrokerStatusSource for HttpBrokerStatus {
    fn status<'a>(&'a self, at: &'a Endpoint) -> BoxFuture<'a, Result<BrokerStatus, String>> {
        Box::pin(within(
            FETCH_TIMEOUT,
            self.call(at, hyper::Method::GET, STATUS, Vec::new()),
        ))
    }

    fn switchover<'a>(
        &'a self,
        at: &'a Endpoint,
        to: &'a str,
    ) -> BoxFuture<'a, Result<SwitchoverReply, String>> {
        let request = SwitchoverRequest { to: to.into() };
        Box::pin(
            async move { within(SWITCHOVER_TIMEOUT, self.post(at, SWITCHOVER, &request)).await },
        )
    }

    fn drain<'a>(
        &'a self,
        at: &'a Endpoint,
        targets: &'a [String],
    ) -> BoxFuture<'a, Result<DrainStatus, String>> {
        let request = DrainRequest {
            targets: targets.to_vec(),
        };
        Box::pin(async move { within(FETCH_TIMEOUT, self.post(at, DRAIN, &request)).await })
    }

    fn fence<'a>(
        &'a self,
        at: &'a Endpoint,
        fenced: bool,
        force: bool,
    ) -> BoxFuture<'a, Result<FenceReply, String>> {
        let request = FenceRequest { fenced, force };
        Box::pin(async move { within(SWITCHOVER_TIMEOUT, self.post(at, FENCE, &request)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    use axum::{Json, Router};
    use duomq_broker::tls::pki::{Authority, Leaf};
    use duomq_broker::tls::{Listener, Stream, TlsMetrics};

    const DAY: Duration = Duration::from_secs(86_400);

    /// Checks a request's signature as the broker does (GETs too): the 401 to answer, or
    /// `None` when it is signed with the cluster password.
    fn refused(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<axum::response::Response> {
        let signature = headers
            .get(auth::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let checked = auth::verify(
            b"pw",
            method.as_str(),
            uri.path(),
            body,
            signature,
            auth::unix_now(),
        );
        checked.err().map(|e| {
            let error = AdminError {
                error: e.to_string(),
            };
            (StatusCode::UNAUTHORIZED, Json(error)).into_response()
        })
    }

    /// A live's admin endpoint that checks signatures as the broker does, hands over to
    /// `b` and refuses anyone else.
    fn fake_live(status: BrokerStatus) -> Router {
        let switchover = |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
            if let Some(refusal) = refused(&method, &uri, &headers, &body) {
                return refusal;
            }
            match serde_json::from_slice::<SwitchoverRequest>(&body) {
                Ok(r) if r.to == "b" => Json(SwitchoverReply {
                    from: "a".into(),
                    to: r.to,
                    epoch: 4,
                })
                .into_response(),
                Ok(r) => {
                    let error = format!("{} is not an in-sync backup of this live", r.to);
                    (StatusCode::CONFLICT, Json(AdminError { error })).into_response()
                }
                Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
            }
        };
        let get_status = move |method: Method, uri: Uri, headers: HeaderMap| async move {
            match refused(&method, &uri, &headers, b"") {
                None => Json(status).into_response(),
                Some(refusal) => refusal,
            }
        };
        Router::new()
            .route(SWITCHOVER, axum::routing::post(switchover))
            .route(STATUS, axum::routing::get(get_status))
    }

    fn at(port: u16, password: Option<&str>, tls: Option<EndpointTls>) -> Endpoint {
        Endpoint {
            ip: "127.0.0.1".into(),
            port,
            password: password.map(String::from),
            tls,
        }
    }

    #[tokio::test]
    async fn given_a_live_should_serve_signed_status_and_take_a_signed_switchover_or_refuse_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let status = BrokerStatus::bare("a", duomq_broker::admin::api::Role::Live);
        let app = fake_live(status.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let brokers = HttpBrokerStatus;
        assert_eq!(
            brokers.status(&at(port, Some("pw"), None)).await,
            Ok(status)
        );
        let unsigned = brokers.status(&at(port, None, None)).await;
        assert!(
            unsigned
                .as_ref()
                .is_err_and(|e| e.starts_with("401") && e.contains("missing")),
            "{unsigned:?}"
        );
        let wrong = brokers.status(&at(port, Some("guess"), None)).await;
        assert!(
            wrong.as_ref().is_err_and(|e| e.starts_with("401")),
            "{wrong:?}"
        );

        let done = brokers.switchover(&at(port, Some("pw"), None), "b").await;
        let expected = SwitchoverReply {
            from: "a".into(),
            to: "b".into(),
            epoch: 4,
        };
        assert_eq!(done, Ok(expected));
        let refused = brokers.switchover(&at(port, Some("pw"), None), "c").await;
        assert_eq!(
            refused,
            Err("409 Conflict: c is not an in-sync backup of this live".to_string())
        );
        let unsigned = brokers
            .switchover(&at(port, Some("guess"), None), "b")
            .await;
        assert!(
            unsigned.as_ref().is_err_and(|e| e.starts_with("401")),
            "{unsigned:?}"
        );
        let no_password = brokers.switchover(&at(port, None, None), "b").await;
        assert!(
            no_password
                .as_ref()
                .is_err_and(|e| e.contains("no password")),
            "a write is never sent unsigned: {no_password:?}"
        );
        server.abort();
    }

    /// TLS connections accepted with one acceptor, for `axum::serve`.
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = Stream;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Stream, std::net::SocketAddr) {
            loop {
                let Ok((tcp, peer)) = self.tcp.accept().await else {
                    continue;
                };
                let acceptor = Some(self.acceptor.clone());
                let metrics = TlsMetrics::default();
                let accepted = duomq_broker::tls::accept(
                    tcp,
                    acceptor,
                    FETCH_TIMEOUT,
                    Listener::Admin,
                    &metrics,
                );
                if let Ok(stream) = accepted.await {
                    return (stream, peer);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
            self.tcp.local_addr()
        }
    }

    /// The settings the controller dials a group's brokers with.
    fn trusting(ca: &Authority) -> Arc<rustls::ClientConfig> {
        crate::controller::admin_trust(&ca.pem().cert_pem).expect("the CA loads")
    }

    use rustls::pki_types::pem::PemObject;

    #[tokio::test]
    async fn given_https_should_check_the_pod_name_and_the_ca_while_dialling_the_ip() {
        let ca = Authority::generate("pair CA", DAY).expect("CA");
        let pod = "pair-g0-0.pair-g0-members.ns.svc";
        // Names the pod only: no IP address, so only the server name makes it pass.
        let leaf = ca.issue(&Leaf::new("pair", DAY).dns(pod)).expect("issue");
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
            .expect("key PEM");
        let server = rustls::ServerConfig::builder_with_provider(duomq_broker::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = tcp.local_addr().expect("address").port();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        };
        let status = BrokerStatus::bare("a", duomq_broker::admin::api::Role::Live);
        let app = fake_live(status.clone());
        let serving = tokio::spawn(async move { axum::serve(listener, app).await });
        let brokers = HttpBrokerStatus;

        let tls = |config: Arc<rustls::ClientConfig>, name: &str| EndpointTls {
            config,
            server_name: name.into(),
        };
        let good = at(port, Some("pw"), Some(tls(trusting(&ca), pod)));
        assert_eq!(brokers.status(&good).await, Ok(status));
        assert!(
            brokers.switchover(&good, "b").await.is_ok(),
            "a signed write over HTTPS"
        );

        let other = Authority::generate("another CA", DAY).expect("CA");
        let other_ca = at(port, Some("pw"), Some(tls(trusting(&other), pod)));
        let untrusted = brokers.status(&other_ca).await;
        assert!(
            untrusted
                .as_ref()
                .is_err_and(|e| e.contains("UnknownIssuer")),
            "a certificate from another CA is refused: {untrusted:?}"
        );
        let other_pod = at(
            port,
            Some("pw"),
            Some(tls(trusting(&ca), "pair-g0-1.pair-g0-members.ns.svc")),
        );
        let misnamed = brokers.status(&other_pod).await;
        assert!(
            misnamed
                .as_ref()
                .is_err_and(|e| e.contains("not valid for name")),
            "a certificate for another pod is refused: {misnamed:?}"
        );
        let plain = at(port, Some("pw"), None);
        let plaintext = brokers.status(&plain).await;
        assert!(
            plaintext.is_err(),
            "plain HTTP to a TLS port fails: {plaintext:?}"
        );
        serving.abort();
    }
}
