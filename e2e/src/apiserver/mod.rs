//! The local API server: an in-memory Kubernetes API that kubectl, kube-rs and the operator
//! talk to over plain HTTP, faithful where those clients depend on it (discovery, CRUD with
//! optimistic concurrency, watches with resume and 410 Gone, patches including server-side
//! apply, status subresources, finalizers, graceful pod deletion, owner garbage collection,
//! CRD validation with CEL, tables for `kubectl get`).
//!
//! It must not run workloads: scheduling, controllers and the kubelet live in
//! [`crate::cluster`] and reach this server only over HTTP, like real controllers do. It keeps
//! no data on disk and checks no credentials: any or no bearer token is accepted. Tests can
//! cut clients off it by address ([`Faults`]).
//!
//! Where it knowingly differs from Kubernetes 1.33:
//! - Field ownership follows Kubernetes' rules at field granularity, with simplified list
//!   and defaulting details; the server's own writes (garbage collection, bindings,
//!   finalizer release) are not attributed to any manager.
//! - Lists return everything in one page (no `continue`); an `Exact` list of any version
//!   but the current one answers 410, as only the current state is kept.
//! - Watch history is one bounded log for all resources (`watch_history` events), not a
//!   cache per resource; a resume from before it answers 410 Expired.
//! - Garbage collection runs inside the write that deleted the owner, not in the background.
//! - Every resource has `metadata.generation`, ConfigMaps and Pods included.
//! - Built-in types are validated only where a renderer or controller could plausibly get
//!   them wrong (see `validation`); custom resources get schema, default, prune and CEL.
//! - Protobuf request bodies are understood for Namespace, ConfigMap, Secret and
//!   ServiceAccount only (what `kubectl create` generators send); responses are JSON.
//! - A pod's `spec.nodeName` may be set by a patch as well as by a Binding.
//! - Port forwarding connects to the pod's IP itself, with no kubelet in between (see
//!   `portforward`).
//! - Pod logs are read from Docker by the API server itself, with no kubelet in between, and
//!   only of the running container (no `--previous`; see `logs`).
//! - Not served: exec, eviction, TokenRequest, authorization reviews, EndpointSlices, and
//!   any group not listed in `registry`.

mod admission;
mod apply;
mod crd_validation;
mod defaults;
mod delete;
mod discovery;
mod error;
mod events;
mod faults;
mod fieldsets;
mod gc;
mod handlers;
mod jsonpath;
mod logs;
mod managed;
mod meta;
mod openapi;
mod patch;
mod path;
mod portforward;
mod protobuf;
mod registry;
mod selectors;
mod store;
#[cfg(test)]
mod storage_tests;
mod subresources;
mod table;
mod validation;
mod watch;
mod write;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::faults::Faults;
use self::store::Store;

/// Name of the cluster, user and context in the kubeconfig the server writes.
pub const KUBECONFIG_CONTEXT: &str = "duomq-e2e";

/// The bearer token written into kubeconfigs; the server accepts any token, or none.
const KUBECONFIG_TOKEN: &str = "duomq-e2e";

/// How the API server listens and how much watch history it keeps.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Addresses to listen on, e.g. `127.0.0.1:0` plus a Docker bridge gateway address so
    /// containers can reach the server. Port 0 picks a free port per address.
    pub listen: Vec<SocketAddr>,
    /// Where to write a kubeconfig pointing at the first address once the server listens.
    pub kubeconfig: Option<PathBuf>,
    /// Watch events kept so that watches can resume; a watch or exact list from an older
    /// resourceVersion gets 410 Gone, like a compacted etcd.
    pub watch_history: usize,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            kubeconfig: None,
            watch_history: 1000,
        }
    }
}

/// Why the API server could not start or write a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("no listen address given")]
    NoListenAddress,
    #[error("failed to listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to read the bound address of a listener")]
    LocalAddr { source: std::io::Error },
    #[error("failed to write the kubeconfig {path}")]
    WriteKubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to render the kubeconfig")]
    RenderKubeconfig { source: serde_yaml::Error },
    #[error("failed to parse the server url {url}")]
    ServerUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("failed to build a kube client")]
    Client { source: kube::Error },
}

/// A running API server. Dropping it stops the listeners and ends open watches;
/// [`ApiServerHandle::shutdown`] also waits for the listeners to finish.
pub struct ApiServerHandle {
    addrs: Vec<SocketAddr>,
    kubeconfig: Option<PathBuf>,
    client: kube::Client,
    cancel: CancellationToken,
    servers: JoinSet<()>,
    store: Arc<Store>,
    faults: Faults,
}

impl std::fmt::Debug for ApiServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerHandle")
            .field("urls", &self.urls())
            .field("kubeconfig", &self.kubeconfig)
            .finish()
    }
}

/// Starts the API server on every address of `opts.listen` and, when asked, writes a
/// kubeconfig for it. The `default` and `kube-system` namespaces exist from the start.
pub async fn start(opts: ApiServerOptions) -> Result<ApiServerHandle, ApiServerError> {
    if opts.listen.is_empty() {
        return Err(ApiServerError::NoListenAddress);
    }
    let store = Arc::new(Store::new(opts.watch_history.max(1)));
    store.write(write::bootstrap);
    let cancel = CancellationToken::new();
    let faults = Faults::default();
    let mut servers = JoinSet::new();
    let mut addrs = Vec::with_capacity(opts.listen.len());
    for addr in &opts.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiServerError::Bind {
                addr: *addr,
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ApiServerError::LocalAddr { source })?;
        addrs.push(local);
        let app = handlers::router(handlers::AppState {
            store: store.clone(),
            cancel: cancel.clone(),
            faults: faults.clone(),
        });
        let shutdown = cancel.clone();
        servers.spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::warn!(%local, %error, "api server listener stopped");
            }
        });
        tracing::info!(addr = %local, "api server listening");
    }
    let url = format!("http://{}", addrs[0]);
    let client = build_client(&url)?;
    let handle = ApiServerHandle {
        addrs,
        kubeconfig: opts.kubeconfig.clone(),
        client,
        cancel,
        servers,
        store,
        faults,
    };
    if let Some(path) = &opts.kubeconfig {
        handle.write_kubeconfig(path, &url)?;
    }
    Ok(handle)
}

fn build_client(url: &str) -> Result<kube::Client, ApiServerError> {
    let uri: http::Uri = url.parse().map_err(|source| ApiServerError::ServerUrl {
        url: url.to_string(),
        source,
    })?;
    let config = kube::Config::new(uri);
    kube::Client::try_from(config).map_err(|source| ApiServerError::Client { source })
}

impl ApiServerHandle {
    /// The URL of the first listen address, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs[0])
    }

    /// The URLs of every listen address, in the order they were given.
    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    /// The kubeconfig written at start, if one was asked for.
    pub fn kubeconfig_path(&self) -> Option<&Path> {
        self.kubeconfig.as_deref()
    }

    /// A kube client for this server (namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Writes a kubeconfig (cluster, user and context `duomq-e2e`) whose server is
    /// `server_url`, e.g. a URL on the Docker bridge for pods that call the API.
    pub fn write_kubeconfig(&self, path: &Path, server_url: &str) -> Result<(), ApiServerError> {
        write_kubeconfig_file(path, server_url)
    }

    /// Fault injection: cut clients off this server by address (see [`Faults`]).
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Stops accepting requests, ends open watches and waits for the listeners to stop.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.servers.join_next().await.is_some() {}
        tracing::info!(objects = self.store.object_count(), "api server stopped");
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn write_kubeconfig_file(path: &Path, server_url: &str) -> Result<(), ApiServerError> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": KUBECONFIG_CONTEXT, "cluster": {"server": server_url}}],
        "users": [{"name": KUBECONFIG_CONTEXT, "user": {"token": KUBECONFIG_TOKEN}}],
        "contexts": [{
            "name": KUBECONFIG_CONTEXT,
            "context": {"cluster": KUBECONFIG_CONTEXT, "user": KUBECONFIG_CONTEXT, "namespace": "default"},
        }],
        "current-context": KUBECONFIG_CONTEXT,
        "preferences": {},
    });
    let text = serde_yaml::to_string(&config)
        .map_err(|source| ApiServerError::RenderKubeconfig { source })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| ApiServerError::WriteKubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| ApiServerError::WriteKubeconfig {
        path: path.to_path_buf(),
        source,
    })
}
