//! Reading a broker's `/status` from its admin endpoint (paths and JSON types come from the
//! broker crate). Behind a trait so controller tests can answer for brokers that do not run.

use std::time::Duration;

use duomq_broker::admin::api::{BrokerStatus, STATUS};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one broker has to answer before it counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A `/status` larger than this is not a status.
const MAX_STATUS_BYTES: usize = 4 << 20;

pub trait BrokerStatusSource: Send + Sync {
    /// The `/status` of the broker at `ip:port`, or why it could not be read.
    fn fetch<'a>(&'a self, ip: &'a str, port: u16) -> BoxFuture<'a, Result<BrokerStatus, String>>;
}

/// The real source: HTTP to the pod's IP.
pub struct HttpBrokerStatus {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Default for HttpBrokerStatus {
    fn default() -> Self {
        HttpBrokerStatus {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl HttpBrokerStatus {
    async fn get(&self, ip: &str, port: u16) -> Result<BrokerStatus, String> {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let uri: hyper::Uri = format!("http://{host}:{port}{STATUS}")
            .parse()
            .map_err(|e| format!("bad address {ip}: {e}"))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|e| format!("failed to reach the admin endpoint: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("admin endpoint answered {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("failed to read /status: {e}"))?
            .to_bytes();
        if body.len() > MAX_STATUS_BYTES {
            return Err(format!("/status is {} bytes", body.len()));
        }
        serde_json::from_slice(&body).map_err(|e| format!("failed to parse /status: {e}"))
    }
}

impl BrokerStatusSource for HttpBrokerStatus {
    fn fetch<'a>(&'a self, ip: &'a str, port: u16) -> BoxFuture<'a, Result<BrokerStatus, String>> {
        Box::pin(async move {
            match tokio::time::timeout(FETCH_TIMEOUT, self.get(ip, port)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
            }
        })
    }
}
