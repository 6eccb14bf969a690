//! A minimal Kubernetes API server for Leases, in the test process: it speaks the real
//! HTTP API (`/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]`, GET, POST
//! and PUT, `resourceVersion` conflicts answered with a 409 `Status`), so brokers reach it
//! through kube-rs with a kubeconfig like any cluster. Tests read and edit Leases as the
//! operator would, and cut single members off the API by their bearer token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}";

/// What the API does to one member's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 Internal Server Error.
    ServerError,
    /// Never answers.
    Silence,
}

#[derive(Default)]
struct Store {
    leases: BTreeMap<(String, String), Value>,
    version: u64,
    faults: BTreeMap<String, Fault>,
    /// Every write that succeeded: (token, method, holder written).
    writes: Vec<(String, &'static str, Option<String>)>,
    /// Set when the server stops, so silenced requests end and shutdown can finish.
    closing: bool,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }
}

type Shared = Arc<Mutex<Store>>;

pub struct KubeApi {
    pub port: u16,
    store: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeApi {
    pub fn start() -> KubeApi {
        let port = super::reserve_port();
        let store: Shared = Arc::default();
        let app = Router::new()
            .route(LEASES, axum::routing::post(create))
            .route(LEASE, get(read).put(replace))
            .fallback(|| async { Failure(StatusCode::NOT_FOUND, "NotFound", "the fake API serves only Leases".into()) })
            .with_state(Arc::clone(&store));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the fake Kubernetes API");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        KubeApi { port, store, stop: Some(stop), thread: Some(thread) }
    }

    /// Writes a kubeconfig whose user authenticates with `token` (the member's name, so
    /// faults can single it out) and returns its path.
    pub fn kubeconfig(&self, dir: &std::path::Path, token: &str) -> PathBuf {
        let path = dir.join(format!("{token}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: {token}\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {token}\n\
             current-context: fake\n",
            port = self.port
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.store.lock().leases.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Changes a stored Lease as another client would (a new `resourceVersion`).
    pub fn edit(&self, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut store = self.store.lock();
        let version = store.next_version();
        let lease = store.leases.get_mut(&(namespace.to_string(), name.to_string())).expect("lease to edit");
        change(lease);
        lease["metadata"]["resourceVersion"] = json!(version);
    }

    pub fn fail(&self, token: &str, fault: Fault) {
        self.store.lock().faults.insert(token.to_string(), fault);
    }

    pub fn heal(&self, token: &str) {
        self.store.lock().faults.remove(token);
    }

    /// The holders written by successful writes, in order, with who wrote them.
    pub fn writes(&self) -> Vec<(String, &'static str, Option<String>)> {
        self.store.lock().writes.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.store.lock().closing = true;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Kubernetes `Status` failure: HTTP code, reason, message.
struct Failure(StatusCode, &'static str, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(code, reason, message) = self;
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        });
        (code, [("content-type", "application/json")], body.to_string()).into_response()
    }
}

fn not_found(name: &str) -> Failure {
    Failure(StatusCode::NOT_FOUND, "NotFound", format!("leases.coordination.k8s.io \"{name}\" not found"))
}

fn ok(code: StatusCode, lease: &Value) -> Response {
    (code, [("content-type", "application/json")], lease.to_string()).into_response()
}

/// The caller's token, after applying its fault.
async fn admit(store: &Shared, headers: &HeaderMap) -> Result<String, Failure> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let fault = {
        store.lock().faults.get(&token).copied()
    };
    match fault {
        None => Ok(token),
        Some(Fault::ServerError) => Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "injected failure".into())),
        Some(Fault::Silence) => {
            // Held while the member is cut off: the client must time out on its own. A
            // request that outlives the cut is dropped, as a partition would drop it.
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let s = store.lock();
                if s.closing || s.faults.get(&token) != Some(&Fault::Silence) {
                    break;
                }
            }
            Err(Failure(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "unreachable".into()))
        }
    }
}

async fn read(State(store): State<Shared>, Path((ns, name)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, Failure> {
    admit(&store, &headers).await?;
    let s = store.lock();
    let lease = s.leases.get(&(ns, name.clone())).ok_or_else(|| not_found(&name))?;
    Ok(ok(StatusCode::OK, lease))
}

fn parse(body: &Bytes) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))
}

fn holder(lease: &Value) -> Option<String> {
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

async fn create(State(store): State<Shared>, Path(ns): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, Failure> {
    let token = admit(&store, &headers).await?;
    let mut lease = parse(&body)?;
    let name = lease["metadata"]["name"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required".into()))?;
    let mut s = store.lock();
    let key = (ns.clone(), name.clone());
    if s.leases.contains_key(&key) {
        return Err(Failure(StatusCode::CONFLICT, "AlreadyExists", format!("leases.coordination.k8s.io \"{name}\" already exists")));
    }
    let version = s.next_version();
    lease["metadata"]["namespace"] = json!(ns);
    lease["metadata"]["resourceVersion"] = json!(version);
    lease["metadata"]["uid"] = json!(format!("uid-{version}"));
    lease["kind"] = json!("Lease");
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    s.writes.push((token, "create", holder(&lease)));
    s.leases.insert(key, lease.clone());
    Ok(ok(StatusCode::CREATED, &lease))
}

async fn replace(
    State(store): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let token = admit(&store, &headers).await?;
    let mut lease = parse(&body)?;
    let mut s = store.lock();
    let key = (ns.clone(), name.clone());
    let stored = s.leases.get(&key).ok_or_else(|| not_found(&name))?;
    let stored_version = stored["metadata"]["resourceVersion"].clone();
    // An update names the version it read; without one it is unconditional.
    if let Some(sent) = lease["metadata"]["resourceVersion"].as_str() {
        if Some(sent) != stored_version.as_str() {
            return Err(Failure(
                StatusCode::CONFLICT,
                "Conflict",
                format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            ));
        }
    }
    let version = s.next_version();
    lease["metadata"]["resourceVersion"] = json!(version);
    s.writes.push((token, "replace", holder(&lease)));
    s.leases.insert(key, lease.clone());
    Ok(ok(StatusCode::OK, &lease))
}
