//! The object store: every object as JSON under its storage bucket, one global
//! resourceVersion counter, and the bounded history of changes that watches resume from
//! (older positions are "compacted", as etcd compacts, and answer 410 Gone).
//!
//! It must not know API semantics (validation, status, finalizers): callers hand it the
//! final object; it only stamps the resourceVersion and records the change.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use super::meta;
use super::registry::{Registry, StorageKey};

/// (namespace, name); the namespace is empty for cluster-scoped objects.
pub(crate) type ObjectKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it; `prev` lets a filtered watch turn a change that leaves
/// or enters its selector into DELETED or ADDED.
#[derive(Debug, Clone)]
pub(crate) struct HistoryEvent {
    pub rv: u64,
    pub storage: StorageKey,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// Why a watch or list cannot start at the resourceVersion it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

/// Everything behind the lock: the registry (CRDs change it together with their objects),
/// the objects and the history.
#[derive(Debug)]
pub(crate) struct State {
    pub registry: Registry,
    objects: HashMap<StorageKey, BTreeMap<ObjectKey, Arc<Value>>>,
    rv: u64,
    history: VecDeque<HistoryEvent>,
    history_limit: usize,
    /// The newest resourceVersion whose event was dropped from the history.
    compacted: u64,
    next_service_ip: u32,
    /// The uids of stored objects, to spot owner references to nothing.
    uids: HashSet<String>,
    /// Set when a change may give the garbage collector work.
    gc_pending: bool,
}

impl State {
    fn new(history_limit: usize) -> Self {
        Self {
            registry: Registry::new(),
            objects: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            next_service_ip: 10,
            uids: HashSet::new(),
            gc_pending: false,
        }
    }

    /// The current (newest) resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn get(&self, key: &StorageKey, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(key)
            .and_then(|b| b.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Objects of a bucket, in one namespace or all, ordered by namespace and name.
    pub(crate) fn list(&self, key: &StorageKey, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let Some(bucket) = self.objects.get(key) else {
            return Vec::new();
        };
        match namespace {
            Some(ns) => bucket
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => bucket.values().cloned().collect(),
        }
    }

    /// Every object of every bucket, with its bucket.
    pub(crate) fn all_objects(&self) -> Vec<(StorageKey, Arc<Value>)> {
        let mut out = Vec::new();
        for (key, bucket) in &self.objects {
            for obj in bucket.values() {
                out.push((key.clone(), obj.clone()));
            }
        }
        out
    }

    pub(crate) fn object_count(&self) -> usize {
        self.objects.values().map(BTreeMap::len).sum()
    }

    /// Stores `object` (created or replaced) with the next resourceVersion and records the
    /// change. Returns the stored object.
    pub(crate) fn put(&mut self, key: &StorageKey, mut object: Value) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        meta::set_resource_version(&mut object, rv);
        let object = Arc::new(object);
        let okey = (
            meta::namespace(&object).to_string(),
            meta::name(&object).to_string(),
        );
        let uid = meta::uid(&object).to_string();
        if !uid.is_empty() {
            self.uids.insert(uid);
        }
        let dangling = meta::owner_references(&object)
            .iter()
            .any(|o| o["uid"].as_str().is_none_or(|u| !self.uids.contains(u)));
        if dangling || meta::is_deleting(&object) {
            self.gc_pending = true;
        }
        let prev = self
            .objects
            .entry(key.clone())
            .or_default()
            .insert(okey, object.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(HistoryEvent {
            rv,
            storage: key.clone(),
            kind,
            object: object.clone(),
            prev,
        });
        object
    }

    /// Removes an object; the DELETED event carries its last state with a new
    /// resourceVersion, as Kubernetes does.
    pub(crate) fn remove(
        &mut self,
        key: &StorageKey,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Value>> {
        let prev = self
            .objects
            .get_mut(key)?
            .remove(&(namespace.to_string(), name.to_string()))?;
        self.uids.remove(meta::uid(&prev));
        self.gc_pending = true;
        self.rv += 1;
        let rv = self.rv;
        let mut last = (*prev).clone();
        meta::set_resource_version(&mut last, rv);
        let last = Arc::new(last);
        self.record(HistoryEvent {
            rv,
            storage: key.clone(),
            kind: EventType::Deleted,
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    /// Whether the garbage collector may have work; clears the mark.
    pub(crate) fn take_gc_pending(&mut self) -> bool {
        std::mem::take(&mut self.gc_pending)
    }

    /// Forgets a bucket that no resource serves any more (its objects must be gone).
    pub(crate) fn drop_bucket(&mut self, key: &StorageKey) {
        if self.objects.get(key).is_some_and(BTreeMap::is_empty) {
            self.objects.remove(key);
        }
    }

    fn record(&mut self, event: HistoryEvent) {
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
    }

    /// The changes after `rv`, oldest first, or why they are no longer known.
    pub(crate) fn events_after(&self, rv: u64) -> Result<Vec<HistoryEvent>, Compacted> {
        if rv < self.compacted {
            return Err(Compacted {
                requested: rv,
                oldest: self.compacted,
            });
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..).cloned().collect())
    }

    /// The next free cluster IP of the service range 10.96.0.0/16.
    pub(crate) fn allocate_service_ip(&mut self) -> String {
        let n = self.next_service_ip;
        self.next_service_ip += 1;
        format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
    }
}

/// The shared store: a lock around [`State`] and a channel that wakes watches on change.
#[derive(Debug)]
pub(crate) struct Store {
    state: Mutex<State>,
    notify: watch::Sender<u64>,
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        let (notify, _) = watch::channel(0);
        Self {
            state: Mutex::new(State::new(history_limit)),
            notify,
        }
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock())
    }

    /// Runs `f` under the lock and wakes watches when it changed anything.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, before, after) = {
            let mut state = self.state.lock();
            let before = state.rv;
            let result = f(&mut state);
            (result, before, state.rv)
        };
        if after != before {
            self.notify.send_replace(after);
        }
        result
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    pub(crate) fn object_count(&self) -> usize {
        self.read(State::object_count)
    }
}
