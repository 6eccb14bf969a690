//! Watches: chunked newline-delimited `{"type": …, "object": …}` events. A watch starts with
//! synthetic ADDED events for the current state (no resourceVersion, or `0`), or resumes
//! after a resourceVersion; one older than the kept history gets an ERROR event carrying a
//! 410 Expired Status, as a compacted etcd does. `sendInitialEvents=true` ends the initial
//! events with a BOOKMARK annotated `k8s.io/initial-events-end`; `allowWatchBookmarks` adds
//! periodic BOOKMARKs with the current resourceVersion; `timeoutSeconds` ends the stream.
//! Objects that enter or leave a selector arrive as ADDED or DELETED, like Kubernetes.
//!
//! It must not block writers: it reads the store's history under the lock and writes to the
//! client outside it, one task per watch, ending with the client or the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::meta;
use super::registry::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{EventType, HistoryEvent, Store};
use super::table::{self, IncludeObject};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// A watch without `timeoutSeconds` ends after this long, as Kubernetes' minimum request
/// timeout does.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Synthetic ADDED events for the current state, then changes.
    Current,
    /// Like `Current`, then a BOOKMARK marking the end of the initial events.
    InitialEvents,
    /// Changes after this resourceVersion.
    After(u64),
}

/// How objects are rendered (the Accept header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Object,
    Metadata,
    Table(IncludeObject),
}

/// Everything a watch needs to know.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpec {
    pub resource: Arc<ResourceInfo>,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: Start,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub output: Output,
}

impl WatchSpec {
    fn visible(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta::namespace(obj) == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    fn render(&self, obj: &Arc<Value>, rv: u64) -> Value {
        match self.output {
            Output::Object => self.resource.present(obj),
            Output::Metadata => table::partial_metadata(&self.resource.present(obj)),
            Output::Table(include) => {
                table::table(&self.resource, std::slice::from_ref(obj), include, rv)
            }
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let (kind, api_version) = match self.output {
            Output::Object => (self.resource.kind.clone(), self.resource.api_version()),
            Output::Metadata => (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            ),
            Output::Table(_) => ("Table".to_string(), "meta.k8s.io/v1".to_string()),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": kind, "apiVersion": api_version, "metadata": metadata})
    }

    /// The event a change is for this watch, if any.
    fn translate(&self, event: &HistoryEvent) -> Option<(EventType, Arc<Value>)> {
        if event.storage != self.resource.storage {
            return None;
        }
        let now = self.visible(&event.object);
        let before = event.prev.as_deref().is_some_and(|p| self.visible(p));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Deleted, _, true) => EventType::Deleted,
            _ => return None,
        };
        Some((kind, event.object.clone()))
    }
}

type Sender = mpsc::Sender<Result<Bytes, Infallible>>;

fn line(kind: &str, object: Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Starts a watch and returns its streaming response.
pub(crate) fn serve(store: Arc<Store>, cancel: CancellationToken, spec: WatchSpec) -> Response {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let resource = spec.resource.plural.clone();
        run(store, cancel, spec, tx).await;
        tracing::debug!(%resource, "watch ended");
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn send(tx: &Sender, bytes: Bytes) -> bool {
    tx.send(Ok(bytes)).await.is_ok()
}

async fn run(store: Arc<Store>, cancel: CancellationToken, spec: WatchSpec, tx: Sender) {
    let mut notify = store.subscribe();
    notify.borrow_and_update();
    let deadline = Instant::now() + spec.timeout;
    let mut cursor = match spec.start {
        Start::After(rv) => rv,
        Start::Current | Start::InitialEvents => {
            let (objects, rv) = store.read(|s| {
                (
                    s.list(&spec.resource.storage, spec.namespace.as_deref()),
                    s.rv(),
                )
            });
            for obj in objects.iter().filter(|o| spec.visible(o)) {
                if !send(&tx, line("ADDED", spec.render(obj, rv))).await {
                    return;
                }
            }
            if spec.start == Start::InitialEvents
                && !send(&tx, line("BOOKMARK", spec.bookmark(rv, true))).await
            {
                return;
            }
            rv
        }
    };
    let mut bookmarks =
        tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        notify.borrow_and_update();
        let batch = store.read(|s| s.events_after(cursor).map(|events| (events, s.rv())));
        match batch {
            Err(compacted) => {
                let status = ApiError::expired(format!(
                    "too old resource version: {} ({})",
                    compacted.requested, compacted.oldest
                ))
                .status_body();
                send(&tx, line("ERROR", status)).await;
                return;
            }
            Ok((events, rv)) => {
                for event in &events {
                    if let Some((kind, obj)) = spec.translate(event) {
                        if !send(&tx, line(kind.as_str(), spec.render(&obj, event.rv))).await {
                            return;
                        }
                    }
                }
                cursor = cursor.max(rv);
            }
        }
        tokio::select! {
            changed = notify.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = bookmarks.tick(), if spec.bookmarks => {
                if !send(&tx, line("BOOKMARK", spec.bookmark(cursor, false))).await {
                    return;
                }
            }
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
        }
    }
}
