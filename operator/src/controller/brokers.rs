//! Talking to a broker's admin endpoint: reading its `/status`, and asking a live for a
//! switchover, signed with the cluster password (paths, JSON types and the signature come
//! from the broker crate). Behind a trait so controller tests can answer for brokers that
//! do not run.

use std::time::Duration;

use duomq_broker::admin::api::{
    AdminError, BrokerStatus, DrainRequest, DrainStatus, FenceReply, FenceRequest, SwitchoverReply,
    SwitchoverRequest, DRAIN, FENCE, STATUS, SWITCHOVER,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use duomq_broker::admin::auth;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one broker has to answer before it counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A `/status` larger than this is not a status.
const MAX_STATUS_BYTES: usize = 4 << 20;
/// A live answers a switchover once it is done, after its clients drained.
const SWITCHOVER_TIMEOUT: Duration =
    Duration::from_secs(duomq_broker::ha::switchover::REPLY_TIMEOUT.as_secs() + 5);

/// The brokers' admin endpoints.
pub trait BrokerStatusSource: Send + Sync {
    /// The `/status` of the broker at `ip:port`, or why it could not be read.
    fn fetch<'a>(&'a self, ip: &'a str, port: u16) -> BoxFuture<'a, Result<BrokerStatus, String>>;
    /// Asks the live at `ip:port` to hand its role to `to`, signing with the cluster
    /// `password`; answers once the live handed over, or why it refused or failed. A
    /// source that only reads status refuses.
    fn switchover<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
        _to: &'a str,
        _password: &'a str,
    ) -> BoxFuture<'a, Result<SwitchoverReply, String>> {
        Box::pin(async move { Err(format!("cannot ask {ip}:{port} for a switchover")) })
    }
    /// Asks the live at `ip:port` to drain into the `targets` groups (`POST /ha/drain`);
    /// answers its progress.
    fn drain<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
        _targets: &'a [String],
        _password: &'a str,
    ) -> BoxFuture<'a, Result<DrainStatus, String>> {
        Box::pin(async move { Err(format!("cannot ask {ip}:{port} to drain")) })
    }
    /// Fences (`fenced`) or unfences the member at `ip:port` (`POST /ha/fence`); `force`
    /// fences even a live.
    fn fence<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
        _fenced: bool,
        _force: bool,
        _password: &'a str,
    ) -> BoxFuture<'a, Result<FenceReply, String>> {
        Box::pin(async move { Err(format!("cannot ask {ip}:{port} to fence")) })
    }
}

/// The real source: HTTP to the pod's IP.
pub struct HttpBrokerStatus {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Default for HttpBrokerStatus {
    fn default() -> Self {
        HttpBrokerStatus {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

fn uri(ip: &str, port: u16, path: &str) -> Result<hyper::Uri, String> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("http://{host}:{port}{path}")
        .parse()
        .map_err(|e| format!("bad address {ip}: {e}"))
}

impl HttpBrokerStatus {
    /// Sends `request`; the status and at most [`MAX_STATUS_BYTES`] of body.
    async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
        path: &str,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("failed to reach the admin endpoint: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("failed to read {path}: {e}"))?
            .to_bytes();
        if body.len() > MAX_STATUS_BYTES {
            return Err(format!("{path} answered {} bytes", body.len()));
        }
        Ok((status, body))
    }

    async fn get(&self, ip: &str, port: u16) -> Result<BrokerStatus, String> {
        let request = hyper::Request::get(uri(ip, port, STATUS)?)
            .body(Full::default())
            .map_err(|e| format!("failed to build the request: {e}"))?;
        let (status, body) = self.send(request, STATUS).await?;
        if !status.is_success() {
            return Err(format!("admin endpoint answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("failed to parse /status: {e}"))
    }

    /// `POST`s `request` as JSON to `path`, signed with the cluster `password`; the reply,
    /// or the status and the broker's one-line error.
    async fn post_signed<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        ip: &str,
        port: u16,
        path: &str,
        request: &Req,
        password: &str,
    ) -> Result<Rep, String> {
        let body = serde_json::to_vec(request)
            .map_err(|e| format!("failed to encode the request: {e}"))?;
        let signature = auth::sign(password.as_bytes(), "POST", path, &body, auth::unix_now());
        let request = hyper::Request::post(uri(ip, port, path)?)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(auth::SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("failed to build the request: {e}"))?;
        let (status, body) = self.send(request, path).await?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| format!("failed to parse the reply to {path}: {e}"));
        }
        let error = serde_json::from_slice::<AdminError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        Err(format!("{status}: {error}"))
    }
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
    fn fetch<'a>(&'a self, ip: &'a str, port: u16) -> BoxFuture<'a, Result<BrokerStatus, String>> {
        Box::pin(within(FETCH_TIMEOUT, self.get(ip, port)))
    }

    fn switchover<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
        to: &'a str,
        password: &'a str,
    ) -> BoxFuture<'a, Result<SwitchoverReply, String>> {
        let request = SwitchoverRequest { to: to.into() };
        Box::pin(async move {
            let call = self.post_signed(ip, port, SWITCHOVER, &request, password);
            within(SWITCHOVER_TIMEOUT, call).await
        })
    }

    fn drain<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
        targets: &'a [String],
        password: &'a str,
    ) -> BoxFuture<'a, Result<DrainStatus, String>> {
        let request = DrainRequest {
            targets: targets.to_vec(),
        };
        Box::pin(async move {
            let call = self.post_signed(ip, port, DRAIN, &request, password);
            within(FETCH_TIMEOUT, call).await
        })
    }

    fn fence<'a>(
        &'a self,
        ip: &'a str,
        port: u16,
        fenced: bool,
        force: bool,
        password: &'a str,
    ) -> BoxFuture<'a, Result<FenceReply, String>> {
        let request = FenceRequest { fenced, force };
        Box::pin(async move {
            let call = self.post_signed(ip, port, FENCE, &request, password);
            within(SWITCHOVER_TIMEOUT, call).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::{Json, Router};

    /// A live's admin endpoint that checks the signature as the broker does, hands over
    /// to `b` and refuses anyone else.
    async fn fake_live(headers: HeaderMap, body: Bytes) -> axum::response::Response {
        let signature = headers
            .get(auth::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Err(e) = auth::verify(
            b"pw",
            "POST",
            SWITCHOVER,
            &body,
            signature,
            auth::unix_now(),
        ) {
            let error = AdminError {
                error: e.to_string(),
            };
            return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
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
    }

    #[tokio::test]
    async fn given_a_live_should_serve_status_and_take_a_signed_switchover_or_refuse_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = BrokerStatus::bare("a", duomq_broker::admin::api::Role::Live);
        let served = status.clone();
        let app = Router::new()
            .route(SWITCHOVER, axum::routing::post(fake_live))
            .route(
                STATUS,
                axum::routing::get(move || async move { Json(served) }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let brokers = HttpBrokerStatus::default();
        assert_eq!(brokers.fetch("127.0.0.1", port).await, Ok(status));

        let done = brokers.switchover("127.0.0.1", port, "b", "pw").await;
        let expected = SwitchoverReply {
            from: "a".into(),
            to: "b".into(),
            epoch: 4,
        };
        assert_eq!(done, Ok(expected));
        let refused = brokers.switchover("127.0.0.1", port, "c", "pw").await;
        assert_eq!(
            refused,
            Err("409 Conflict: c is not an in-sync backup of this live".to_string())
        );
        let unsigned = brokers.switchover("127.0.0.1", port, "b", "guess").await;
        assert!(
            unsigned.as_ref().is_err_and(|e| e.starts_with("401")),
            "{unsigned:?}"
        );
        server.abort();
    }
}
