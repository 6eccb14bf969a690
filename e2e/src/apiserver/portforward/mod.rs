//! The `portforward` subresource of pods, as `kubectl port-forward` (client-go 1.32) uses
//! it: SPDY/3.1 streams of the `portforward.k8s.io` protocol, either tunneled in the binary
//! messages of a WebSocket (what kubectl tries first: a GET asking for the subprotocol
//! `SPDY/3.1+portforward.k8s.io`) or over a plain HTTP upgrade to `SPDY/3.1` (its fallback,
//! a POST). Each forwarded connection is a pair of streams the client opens with the headers
//! `streamType` (`error` or `data`), `port` and `requestID`; once both are open the server
//! connects to the pod's IP on that port and copies bytes between the data stream and the
//! socket. A failure is written to the error stream, which kubectl prints and then stops
//! forwarding, like a real kubelet's.
//!
//! Where it differs from Kubernetes: the API server itself connects to the pod's IP (pods of
//! the local cluster are reachable from this machine) instead of proxying to a kubelet; a
//! session stays bound to the pod's UID it was opened for, so a recreated pod of the same
//! name fails new connections, as a real kubelet's session would.
//!
//! It must not hold API rules: it only reads the pod.

mod spdy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use http::{header, HeaderValue, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{BytesCodec, FramedRead};
use tokio_util::sync::CancellationToken;

use self::spdy::{Decoder, Encoder, Frame, SpdyError};
use super::error::ApiError;
use super::store::Store;

/// The stream protocol of port forwarding, as the `X-Stream-Protocol-Version` header and
/// the tunneled WebSocket subprotocol name it.
const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol for SPDY tunneled in WebSocket messages.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
const SPDY_UPGRADE: &str = "SPDY/3.1";
/// How long connecting to a pod's port may take; a dead pod's IP answers nothing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the pod per data frame.
const CHUNK: usize = 32 * 1024;
/// Frames waiting to be written to the client, and bytes waiting for the pod's socket.
const QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("failed to read the client's connection")]
    Read(#[source] std::io::Error),
    #[error("failed to decode a frame")]
    Decode(#[source] SpdyError),
    #[error("failed to encode a reply")]
    Encode(#[source] SpdyError),
}

/// The pod a session forwards to: connections go to its current IP while its UID is the same.
#[derive(Clone)]
struct Target {
    store: Arc<Store>,
    namespace: String,
    name: String,
    uid: String,
}

impl Target {
    fn pod(&self) -> Option<Arc<Value>> {
        self.store.read(|s| {
            let pods = s.registry.lookup("", "v1", "pods")?;
            s.get(&pods.storage, &self.namespace, &self.name)
        })
    }

    /// Connects to `port` of the pod, or says why not as kubectl will print it.
    async fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let fail = |why: String| format!("error forwarding port {port} to pod {}/{}, uid {}: {why}", self.namespace, self.name, self.uid);
        let pod = self.pod().filter(|p| p.pointer("/metadata/uid").and_then(Value::as_str) == Some(self.uid.as_str()));
        let Some(pod) = pod else {
            return Err(fail("pod not found".into()));
        };
        let Some(ip) = pod.pointer("/status/podIP").and_then(Value::as_str).and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            return Err(fail("the pod has no IP".into()));
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(SocketAddr::new(ip, port))).await {
            Ok(Ok(socket)) => Ok(socket),
            Ok(Err(e)) => Err(fail(format!("dial tcp {ip}:{port}: {e}"))),
            Err(_) => Err(fail(format!("dial tcp {ip}:{port}: timed out after {CONNECT_TIMEOUT:?}"))),
        }
    }
}

/// Answers `pods/{name}/portforward` of `namespace`: upgrades to a tunneled or plain SPDY
/// session, or answers why not.
pub(crate) async fn serve(store: Arc<Store>, cancel: CancellationToken, request: Request, namespace: &str, name: &str) -> Response {
    let pod = Target { store, namespace: namespace.to_string(), name: name.to_string(), uid: String::new() };
    let Some(obj) = pod.pod() else {
        return ApiError::not_found_in("", "pods", name).into_response();
    };
    if obj.pointer("/status/podIP").and_then(Value::as_str).is_none_or(str::is_empty) {
        return ApiError::bad_request(format!("pod {name} has no IP yet: it cannot be forwarded to")).into_response();
    }
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let target = Target { uid, ..pod };
    let upgrade = request.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if upgrade == "websocket" {
        websocket(target, cancel, request).await
    } else if upgrade.contains(&SPDY_UPGRADE.to_ascii_lowercase()) {
        spdy_upgrade(target, cancel, request)
    } else {
        ApiError::bad_request("port forwarding needs an upgrade to WebSocket or SPDY/3.1").into_response()
    }
}

async fn websocket(target: Target, cancel: CancellationToken, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u.protocols([TUNNEL_PROTOCOL]),
        Err(rejection) => return rejection.into_response(),
    };
    // A client that offers no protocol we speak gets a failed handshake: client-go then
    // falls back to plain SPDY.
    if upgrade.selected_protocol().is_none() {
        return ApiError::bad_request(format!("the WebSocket subprotocol {TUNNEL_PROTOCOL} is required")).into_response();
    }
    upgrade.on_upgrade(move |socket| tunnel(target, cancel, socket))
}

/// SPDY in WebSocket binary messages: a byte stream either way; each frame the server
/// writes is one message, so a frame always arrives whole.
async fn tunnel(target: Target, cancel: CancellationToken, socket: WebSocket) {
    let (mut sink, stream) = socket.split();
    let input = stream.take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_))))).filter_map(|m| {
        std::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Ok(b)),
            Ok(_) => None,
            Err(e) => Some(Err(std::io::Error::other(e))),
        })
    });
    let (frames, mut outgoing) = mpsc::channel::<Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if sink.send(Message::Binary(frame)).await.is_err() {
                return;
            }
        }
        sink.send(Message::Close(None)).await.ok();
    });
    run(target, cancel, Box::pin(input), frames).await;
    writer.await.ok();
}

fn spdy_upgrade(target: Target, cancel: CancellationToken, mut request: Request) -> Response {
    let offered = request.headers().get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|p| p.trim() == PROTOCOL);
    if !offered {
        return ApiError::bad_request(format!("the stream protocol {PROTOCOL} is required")).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(error) => {
                tracing::debug!(%error, "port-forward upgrade failed");
                return;
            }
        };
        let (read, mut write) = tokio::io::split(upgraded);
        let input = FramedRead::new(read, BytesCodec::new()).map(|chunk| chunk.map(BytesMut::freeze));
        let (frames, mut outgoing) = mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
            write.shutdown().await.ok();
        });
        run(target, cancel, Box::pin(input), frames).await;
        writer.await.ok();
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    headers.insert("x-stream-protocol-version", HeaderValue::from_static(PROTOCOL));
    response
}

/// What the session passes to a forwarded connection: bytes from the client, its FIN, or
/// its reset (the channel closing).
enum Inbound {
    Data(Bytes),
    Fin,
}

/// The streams of one forwarded connection, as they open.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

async fn run(target: Target, cancel: CancellationToken, input: impl Stream<Item = std::io::Result<Bytes>> + Unpin, frames: mpsc::Sender<Bytes>) {
    tracing::debug!(namespace = %target.namespace, pod = %target.name, "port-forward session started");
    let mut connections = tokio::task::JoinSet::new();
    let result = tokio::select! {
        r = session(&target, input, &frames, &mut connections) => r,
        _ = cancel.cancelled() => Ok(()),
    };
    if let Err(error) = result {
        tracing::debug!(pod = %target.name, error = %crate::cluster::error_chain(&error), "port-forward session failed");
    }
    connections.shutdown().await;
    tracing::debug!(namespace = %target.namespace, pod = %target.name, "port-forward session ended");
}

async fn session(
    target: &Target,
    mut input: impl Stream<Item = std::io::Result<Bytes>> + Unpin,
    frames: &mpsc::Sender<Bytes>,
    connections: &mut tokio::task::JoinSet<()>,
) -> Result<(), SessionError> {
    let mut decoder = Decoder::default();
    let mut encoder = Encoder::new().map_err(SessionError::Encode)?;
    let mut buf = BytesMut::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Open data streams: where their bytes go.
    let mut data_streams: HashMap<u32, mpsc::Sender<Inbound>> = HashMap::new();
    while let Some(chunk) = input.next().await {
        buf.extend_from_slice(&chunk.map_err(SessionError::Read)?);
        while let Some(frame) = decoder.decode(&mut buf).map_err(SessionError::Decode)? {
            let reply = match frame {
                Frame::SynStream { stream, headers, .. } => {
                    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
                    let (kind, port, request) = (header("streamtype"), header("port").and_then(|p| p.parse::<u16>().ok()), header("requestid"));
                    let (Some(kind @ ("error" | "data")), Some(port), Some(request)) = (kind, port, request) else {
                        send(frames, spdy::rst_stream(stream, spdy::PROTOCOL_ERROR)).await;
                        continue;
                    };
                    send(frames, encoder.syn_reply(stream).map_err(SessionError::Encode)?).await;
                    let pair = pairs.entry(request.to_string()).or_default();
                    pair.port = port;
                    if kind == "error" {
                        pair.error = Some(stream);
                    } else {
                        pair.data = Some(stream);
                    }
                    if let Pair { port, error: Some(error), data: Some(data) } = *pair {
                        pairs.remove(request);
                        let (to_pod, from_client) = mpsc::channel(QUEUE);
                        data_streams.insert(data, to_pod);
                        connections.spawn(forward(target.clone(), port, error, data, from_client, frames.clone()));
                    }
                    None
                }
                Frame::Data { stream, fin, data } => {
                    if let Some(to_pod) = data_streams.get(&stream) {
                        if !data.is_empty() {
                            to_pod.send(Inbound::Data(data)).await.ok();
                        }
                        if fin {
                            to_pod.send(Inbound::Fin).await.ok();
                        }
                    }
                    None
                }
                Frame::RstStream { stream, .. } => {
                    // Dropping the sender ends the connection's copy to the pod.
                    data_streams.remove(&stream);
                    None
                }
                Frame::Ping { id } => Some(spdy::ping(id)),
                Frame::GoAway => return Ok(()),
                Frame::Ignored { .. } => None,
            };
            if let Some(reply) = reply {
                send(frames, reply).await;
            }
        }
        data_streams.retain(|_, to_pod| !to_pod.is_closed());
        while connections.try_join_next().is_some() {}
    }
    Ok(())
}

async fn send(frames: &mpsc::Sender<Bytes>, frame: Bytes) {
    // A closed channel means the client is gone; the input ends next.
    frames.send(frame).await.ok();
}

/// One forwarded connection: connects to the pod, copies both ways until the pod closes or
/// the client resets the data stream, then closes both streams (the error stream carries
/// the failure, if any).
async fn forward(target: Target, port: u16, error: u32, data: u32, mut from_client: mpsc::Receiver<Inbound>, frames: mpsc::Sender<Bytes>) {
    let socket = match target.connect(port).await {
        Ok(s) => s,
        Err(message) => {
            tracing::debug!(pod = %target.name, port, %message, "port-forward connection failed");
            send(&frames, spdy::data(error, message.as_bytes(), true)).await;
            send(&frames, spdy::data(data, &[], true)).await;
            return;
        }
    };
    let (mut read, mut write) = socket.into_split();
    let to_pod = async move {
        while let Some(inbound) = from_client.recv().await {
            match inbound {
                Inbound::Data(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Inbound::Fin => {
                    write.shutdown().await.ok();
                    // Keep the channel open until a reset, so the read side goes on.
                    while from_client.recv().await.is_some() {}
                    return;
                }
            }
        }
    };
    let from_pod = {
        let frames = frames.clone();
        async move {
            let mut chunk = vec![0u8; CHUNK];
            loop {
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => send(&frames, spdy::data(data, &chunk[..n], false)).await,
                }
            }
            send(&frames, spdy::data(data, &[], true)).await;
        }
    };
    // The pod closing or the client resetting ends the connection.
    let pod_closed = tokio::select! {
        _ = from_pod => true,
        _ = to_pod => false,
    };
    if !pod_closed {
        // After a reset the client ignores it; after a failed write it ends the copy.
        send(&frames, spdy::data(data, &[], true)).await;
    }
    send(&frames, spdy::data(error, &[], true)).await;
}
