//! Shared informers: one reflector (list + watch, with kube-runtime's back-off) per kind,
//! read by every controller from an in-memory store, and a wake-up for each controller
//! that subscribed. Controllers level-trigger on these wake-ups; nothing here decides.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RESYNC_PERIOD;

/// A cluster-wide cache of one kind, kept current by a watch.
pub struct Informer<K>
where
    K: Resource + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<Arc<Notify>>>>,
}

impl<K> Clone for Informer<K>
where
    K: Resource + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            subscribers: self.subscribers.clone(),
        }
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching every object of kind `K` in all namespaces; the watch task ends with
    /// `cancel`.
    pub fn start(client: Client, cancel: CancellationToken) -> (Self, JoinHandle<()>) {
        let api: Api<K> = Api::all(client);
        let (store, writer) = reflector::store();
        let subscribers: Arc<Mutex<Vec<Arc<Notify>>>> = Arc::default();
        let notify = subscribers.clone();
        let kind = K::kind(&()).to_string();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(_) => {
                        for n in notify.lock().iter() {
                            n.notify_one();
                        }
                    }
                    Err(error) => warn!(kind = %kind, %error, "watch failed; retrying"),
                }
                futures::future::ready(())
            });
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = stream => {}
            }
        });
        (Self { store, subscribers }, task)
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    /// Wakes `notify` (one stored permit, so no change is lost) after every watch event.
    pub fn notify_on(&self, notify: Arc<Notify>) {
        self.subscribers.lock().push(notify);
    }

    /// Every object currently known.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// Waits until the first list has been received.
    pub async fn ready(&self) {
        // Only fails when the writer is gone, i.e. on shutdown; nothing to wait for then.
        let _ = self.store.wait_until_ready().await;
    }
}

/// Waits for the next round of a level-triggered loop: a watch wake-up or the resync
/// period. False once `cancel` fired: the loop should end.
pub async fn next_round(wake: &Notify, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = wake.notified() => true,
        _ = tokio::time::sleep(RESYNC_PERIOD) => true,
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The object `namespace/name` (namespace None for cluster-scoped kinds).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut key = reflector::ObjectRef::<K>::new(name);
        if let Some(ns) = namespace {
            key = key.within(ns);
        }
        self.store.get(&key)
    }
}
