//! The admin API's client: `duomq-broker switchover|fence|drain`, the bench's failover run
//! and the tests use it. Plaintext, or TLS checked against a CA file (`https://`); requests
//! signed with the cluster password when one is given (reads as writes: see
//! [`super::access`]). One HTTP/1.0 request per connection, so every answer ends with its
//! connection and is never chunked.
//!
//! ```no_run
//! # async fn example() -> Result<(), duomq_broker::admin::client::ClientError> {
//! use duomq_broker::admin::client::AdminClient;
//! let client = AdminClient::new("https://127.0.0.1:8161")?
//!     .with_ca_file(std::path::Path::new("ca.crt"), None)?
//!     .with_password_file(std::path::Path::new("cluster-password"))?;
//! let status = client.status().await?;
//! println!("{} is {:?}", status.node_id, status.role);
//! # Ok(()) }
//! ```

use super::api::{AdminError, BrokerStatus, FaultRules, FaultsStatus, DEBUG_FAULTS, STATUS};
use super::auth;
use crate::config::TlsVersion;
use crate::tls::{self, TlsError};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a TCP connect and a TLS handshake may take each.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read (`GET`) may take from connect to the end of the answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{0:?} is not an admin address: expected HOST:PORT, http://HOST:PORT or https://HOST:PORT")]
    Address(String),
    #[error("{address} is https: give the CA file that signed the broker's certificate (--ca-file)")]
    NeedsCa { address: String },
    #[error("{address} is http, but a CA file was given: use https://, or leave the CA file out")]
    PlainWithCa { address: String },
    #[error("failed to read the cluster password from {path}")]
    Password { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("failed to connect to the admin endpoint {address}")]
    Connect { address: String, source: std::io::Error },
    #[error("the admin endpoint {address} did not answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("failed to talk to the admin endpoint {address}")]
    Io { address: String, source: std::io::Error },
    #[error("the admin endpoint {address} did not answer HTTP")]
    NotHttp { address: String },
    #[error("{path} of {address} answered HTTP {code}: {message}")]
    Refused { address: String, path: String, code: u16, message: String },
    #[error("{path} of {address} is not the JSON expected")]
    Json { address: String, path: String, source: serde_json::Error },
}

/// One answer: the status code and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The error an answer other than 200 gave: [`AdminError`]'s text, else the body.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<AdminError>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).trim().to_string())
    }
}

/// How the address was written: a bare `HOST:PORT` is TLS once a CA file is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bare,
    Http,
    Https,
}

/// A client of one admin endpoint.
#[derive(Clone)]
pub struct AdminClient {
    /// `host:port`, as given.
    address: String,
    /// The name the server's certificate must carry (the host, unless overridden).
    server_name: String,
    scheme: Scheme,
    connector: Option<tokio_rustls::TlsConnector>,
    password: Option<String>,
    /// `Authorization` header value (HTTP Basic), for reads as an admin user.
    basic: Option<String>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("address", &self.address)
            .field("tls", &self.connector.is_some())
            .field("signed", &self.password.is_some())
            .field("basic", &self.basic.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client of `address`: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`
    /// (a trailing `/` is ignored). An `https://` address needs [`AdminClient::with_ca_file`].
    pub fn new(address: &str) -> Result<AdminClient, ClientError> {
        let bad = || ClientError::Address(address.to_string());
        let (scheme, rest) = match address.split_once("://") {
            Some(("https", rest)) => (Scheme::Https, rest),
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(_) => return Err(bad()),
            None => (Scheme::Bare, address),
        };
        let host_port = rest.trim_end_matches('/');
        let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || host_port.contains('/') || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        let server_name = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(AdminClient { address: host_port.to_string(), server_name, scheme, connector: None, password: None, basic: None })
    }

    /// TLS, the broker's certificate checked against the CA certificates in `ca_file` and the
    /// name `server_name` (by default the host of the address).
    pub fn with_ca_file(mut self, ca_file: &Path, server_name: Option<&str>) -> Result<AdminClient, ClientError> {
        if self.scheme == Scheme::Http {
            return Err(ClientError::PlainWithCa { address: self.address });
        }
        let config = tls::client_config(ca_file, None, TlsVersion::V1_2)?;
        self.connector = Some(tokio_rustls::TlsConnector::from(config));
        if let Some(name) = server_name {
            self.server_name = name.to_string();
        }
        Ok(self)
    }

    /// Signs every request with the cluster password.
    pub fn with_password(mut self, password: &str) -> AdminClient {
        self.password = Some(password.to_string());
        self
    }

    /// Signs every request with the cluster password in `path` (the members'
    /// `ha.cluster.passwordFile`; a trailing newline is not part of it).
    pub fn with_password_file(self, path: &Path) -> Result<AdminClient, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Password { path: path.to_path_buf(), source })?;
        Ok(self.with_password(text.trim_end_matches(['\n', '\r'])))
    }

    /// Reads (`/status`, a closed `/metrics`) as `user`, who holds a role in `auth.adminRoles`,
    /// with HTTP Basic: for people without the cluster password. Writes do not take it.
    pub fn with_basic(mut self, user: &str, password: &str) -> AdminClient {
        self.basic = Some(auth::basic_header(user, password));
        self
    }

    /// `host:port` of the endpoint.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `GET /status`, signed when a password is set.
    pub async fn status(&self) -> Result<BrokerStatus, ClientError> {
        let reply = self.get(STATUS).await?;
        self.json(STATUS, reply)
    }

    /// `GET /status` as untyped JSON (for callers that read a few fields).
    pub async fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        let reply = self.get(STATUS).await?;
        self.json(STATUS, reply)
    }

    /// A `GET` of `path` (signed when a password is set), whatever its answer.
    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.request("GET", path, b"", READ_TIMEOUT).await
    }

    /// A `POST` of the JSON `body` to `path`, signed with the password (an admin write),
    /// waiting up to `timeout` for the answer, whatever it is.
    pub async fn post_signed(&self, path: &str, body: &[u8], timeout: Duration) -> Result<Reply, ClientError> {
        self.request("POST", path, body, timeout).await
    }

    /// `PUT /debug/faults`, signed: replaces the fault rules of a broker started with fault
    /// injection (tests only) and answers what is in force now. Refused (404) by a broker
    /// without the opt-in, 400 for rules that cannot work.
    pub async fn set_faults(&self, rules: &FaultRules) -> Result<FaultsStatus, ClientError> {
        let body = serde_json::to_vec(rules)
            .map_err(|source| ClientError::Json { address: self.address.clone(), path: DEBUG_FAULTS.into(), source })?;
        let reply = self.request("PUT", DEBUG_FAULTS, &body, READ_TIMEOUT).await?;
        self.json(DEBUG_FAULTS, reply)
    }

    /// `DELETE /debug/faults`, signed: removes every fault rule (the network heals, the disk
    /// recovers) and answers what is in force now: nothing.
    pub async fn clear_faults(&self) -> Result<FaultsStatus, ClientError> {
        let reply = self.request("DELETE", DEBUG_FAULTS, b"", READ_TIMEOUT).await?;
        self.json(DEBUG_FAULTS, reply)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &str, reply: Reply) -> Result<T, ClientError> {
        if reply.code != 200 {
            return Err(ClientError::Refused { address: self.address.clone(), path: path.into(), code: reply.code, message: reply.error_text() });
        }
        serde_json::from_slice(&reply.body).map_err(|source| ClientError::Json { address: self.address.clone(), path: path.into(), source })
    }

    async fn request(&self, method: &str, path: &str, body: &[u8], timeout: Duration) -> Result<Reply, ClientError> {
        if self.scheme == Scheme::Https && self.connector.is_none() {
            return Err(ClientError::NeedsCa { address: self.address.clone() });
        }
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.address);
        if method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        if let Some(password) = &self.password {
            let signature = auth::sign(password.as_bytes(), method, path, body, auth::unix_now());
            head.push_str(&format!("{}: {signature}\r\n", auth::SIGNATURE_HEADER));
        }
        if let Some(basic) = &self.basic {
            head.push_str(&format!("Authorization: {basic}\r\n"));
        }
        head.push_str("\r\n");
        let exchange = async {
            let mut stream = self.connect().await?;
            let io = |source| ClientError::Io { address: self.address.clone(), source };
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            stream.write_all(body).await.map_err(io)?;
            stream.flush().await.map_err(io)?;
            let mut response = Vec::new();
            match stream.read_to_end(&mut response).await {
                Ok(_) => {}
                // A TLS peer that closes without close_notify after a whole answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
                Err(e) => return Err(io(e)),
            }
            parse_response(&response).ok_or_else(|| ClientError::NotHttp { address: self.address.clone() })
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| ClientError::Timeout { address: self.address.clone(), timeout })?
    }

    async fn connect(&self) -> Result<tls::Stream, ClientError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| ClientError::Timeout { address: self.address.clone(), timeout: CONNECT_TIMEOUT })?
            .map_err(|source| ClientError::Connect { address: self.address.clone(), source })?;
        Ok(tls::connect(tcp, &self.server_name, self.connector.clone(), CONNECT_TIMEOUT).await?)
    }
}

/// The status code and body of an HTTP/1.x answer delimited by the end of the connection.
pub fn parse_response(response: &[u8]) -> Option<Reply> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok())?;
    Some(Reply { code, body: response[split + 4..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_http_answer_should_split_status_and_body() {
        let answer = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"error\":1}";
        let reply = parse_response(answer).expect("an HTTP answer");
        assert_eq!((reply.code, reply.body.as_slice()), (409, &b"{\"error\":1}"[..]));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn given_admin_addresses_should_take_host_port_http_and_https_only() {
        for ok in ["127.0.0.1:8161", "http://127.0.0.1:8161/", "https://broker-0.members:8161", "[::1]:8161"] {
            assert!(AdminClient::new(ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", "ftp://h:1", "http://h:1/status", ":8161", "h:port"] {
            assert!(matches!(AdminClient::new(bad), Err(ClientError::Address(_))), "{bad}");
        }
        assert_eq!(AdminClient::new("https://h:8161").expect("address").address(), "h:8161");
    }

    #[tokio::test]
    async fn given_https_without_a_ca_file_or_http_with_one_should_refuse_before_connecting() {
        let https = AdminClient::new("https://127.0.0.1:1").expect("address");
        assert!(matches!(https.status().await, Err(ClientError::NeedsCa { .. })));
        let plain = AdminClient::new("http://127.0.0.1:1").expect("address");
        assert!(matches!(plain.with_ca_file(Path::new("ca.crt"), None), Err(ClientError::PlainWithCa { .. })));
    }
}
