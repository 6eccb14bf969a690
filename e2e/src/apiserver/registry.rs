//! Which resources the server serves: the built-in table (core, apps, policy, rbac,
//! coordination, events, apiextensions) and the resources of established CRDs, with what
//! discovery says about each (kind, scope, short names, categories, subresources).
//!
//! It must not hold objects: the store does; a CRD's entry appears and disappears with the
//! CRD object.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Where a resource's objects are kept: core v1 and events.k8s.io/v1 events share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StorageKey {
    pub group: String,
    pub plural: String,
}

/// How stored objects are shown through a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// As stored (apiVersion rewritten to the served version).
    Plain,
    /// events.k8s.io/v1 Events over core v1 storage.
    EventsV1,
}

/// Subresources a resource serves besides its main endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Subresources {
    pub status: bool,
    pub scale: bool,
    pub binding: bool,
}

/// A CRD's printer column.
#[derive(Debug, Clone)]
pub(crate) struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// What a served CRD version adds: its schema and printer columns.
#[derive(Debug, Clone)]
pub(crate) struct CustomInfo {
    pub crd_name: String,
    pub schema: Option<Value>,
    pub printer_columns: Vec<PrinterColumn>,
}

/// One served resource (group, version, plural).
#[derive(Debug, Clone)]
pub(crate) struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Subresources,
    pub storage: StorageKey,
    pub view: View,
    pub custom: Option<Arc<CustomInfo>>,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub(crate) fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    pub(crate) fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub(crate) fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// A stored object as this resource serves it.
    pub(crate) fn present(&self, stored: &Value) -> Value {
        let mut v = match self.view {
            View::EventsV1 => super::events::to_events_v1(stored),
            View::Plain => stored.clone(),
        };
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(self.api_version()));
            map.insert("kind".into(), Value::String(self.kind.clone()));
        }
        v
    }

    /// An object sent to this resource in its stored form.
    pub(crate) fn to_storage(&self, sent: Value) -> Value {
        let mut v = match self.view {
            View::EventsV1 => super::events::to_core(&sent),
            View::Plain => sent,
        };
        if let Some(map) = v.as_object_mut() {
            let (api_version, kind) = match self.view {
                View::EventsV1 => ("v1".to_string(), "Event".to_string()),
                View::Plain => (self.api_version(), self.kind.clone()),
            };
            map.insert("apiVersion".into(), Value::String(api_version));
            map.insert("kind".into(), Value::String(kind));
        }
        v
    }
}

pub(crate) fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

const NONE: &[&str] = &[];
const ALL: &[&str] = &["all"];
const STATUS: Subresources = Subresources {
    status: true,
    scale: false,
    binding: false,
};
const PLAIN: Subresources = Subresources {
    status: false,
    scale: false,
    binding: false,
};
const SCALED: Subresources = Subresources {
    status: true,
    scale: true,
    binding: false,
};
const POD: Subresources = Subresources {
    status: true,
    scale: false,
    binding: true,
};

/// (group, version, plural, singular, kind, namespaced, short names, categories, subresources)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    &'static [&'static str],
    Subresources,
);

#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    ("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], NONE, STATUS),
    ("", "v1", "nodes", "node", "Node", false, &["no"], NONE, STATUS),
    ("", "v1", "pods", "pod", "Pod", true, &["po"], ALL, POD),
    ("", "v1", "services", "service", "Service", true, &["svc"], ALL, STATUS),
    ("", "v1", "endpoints", "endpoints", "Endpoints", true, &["ep"], NONE, PLAIN),
    ("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], NONE, PLAIN),
    ("", "v1", "secrets", "secret", "Secret", true, NONE, NONE, PLAIN),
    ("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], NONE, PLAIN),
    ("", "v1", "persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", true, &["pvc"], NONE, STATUS),
    ("", "v1", "persistentvolumes", "persistentvolume", "PersistentVolume", false, &["pv"], NONE, STATUS),
    ("", "v1", "events", "event", "Event", true, &["ev"], NONE, PLAIN),
    ("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true, &["sts"], ALL, SCALED),
    ("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], ALL, SCALED),
    ("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], ALL, SCALED),
    ("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", true, &["pdb"], NONE, STATUS),
    ("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, NONE, NONE, PLAIN),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, NONE, NONE, PLAIN),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, NONE, NONE, PLAIN),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, NONE, NONE, PLAIN),
    ("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, NONE, NONE, PLAIN),
    ("storage.k8s.io", "v1", "storageclasses", "storageclass", "StorageClass", false, &["sc"], NONE, PLAIN),
    ("events.k8s.io", "v1", "events", "event", "Event", true, &["ev"], NONE, PLAIN),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition", "CustomResourceDefinition", false, &["crd", "crds"], &["api-extensions"], STATUS),
];

/// The served resources: built-ins and those of established CRDs.
#[derive(Debug)]
pub(crate) struct Registry {
    builtin: Vec<Arc<ResourceInfo>>,
    /// CRD name → one entry per served version.
    custom: BTreeMap<String, Vec<Arc<ResourceInfo>>>,
}

/// A group with its versions, preferred first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupInfo {
    pub name: String,
    pub versions: Vec<String>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        let builtin = BUILTINS
            .iter()
            .map(
                |&(group, version, plural, singular, kind, namespaced, short, cats, subs)| {
                    let view = if group == "events.k8s.io" {
                        View::EventsV1
                    } else {
                        View::Plain
                    };
                    let storage_group = if view == View::EventsV1 { "" } else { group };
                    Arc::new(ResourceInfo {
                        group: group.to_string(),
                        version: version.to_string(),
                        plural: plural.to_string(),
                        singular: singular.to_string(),
                        kind: kind.to_string(),
                        namespaced,
                        short_names: short.iter().map(|s| s.to_string()).collect(),
                        categories: cats.iter().map(|s| s.to_string()).collect(),
                        subresources: subs,
                        storage: StorageKey {
                            group: storage_group.to_string(),
                            plural: plural.to_string(),
                        },
                        view,
                        custom: None,
                    })
                },
            )
            .collect();
        Self {
            builtin,
            custom: BTreeMap::new(),
        }
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<ResourceInfo>> {
        self.builtin
            .iter()
            .chain(self.custom.values().flat_map(|v| v.iter()))
    }

    pub(crate) fn lookup(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceInfo>> {
        self.all()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The resource through which a storage bucket is primarily served.
    pub(crate) fn by_storage(&self, key: &StorageKey) -> Option<Arc<ResourceInfo>> {
        self.all()
            .find(|r| &r.storage == key && r.view == View::Plain)
            .cloned()
    }

    pub(crate) fn resources_in(&self, group: &str, version: &str) -> Vec<Arc<ResourceInfo>> {
        self.all()
            .filter(|r| r.group == group && r.version == version)
            .cloned()
            .collect()
    }

    /// API groups other than core, built-ins first, each with its served versions.
    pub(crate) fn groups(&self) -> Vec<GroupInfo> {
        let mut groups: Vec<GroupInfo> = Vec::new();
        for r in self.all().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|g| g.name == r.group) {
                Some(g) => {
                    if !g.versions.contains(&r.version) {
                        g.versions.push(r.version.clone());
                    }
                }
                None => groups.push(GroupInfo {
                    name: r.group.clone(),
                    versions: vec![r.version.clone()],
                }),
            }
        }
        groups
    }

    pub(crate) fn is_served_group_version(&self, group: &str, version: &str) -> bool {
        self.all().any(|r| r.group == group && r.version == version)
    }

    /// Serves the versions of `crd` (a CustomResourceDefinition object); replaces what an
    /// earlier version of the same CRD served.
    pub(crate) fn register_crd(&mut self, crd: &Value) {
        let Some(name) = crd.pointer("/metadata/name").and_then(Value::as_str) else {
            return;
        };
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_string();
        let names = &spec["names"];
        let plural = names["plural"].as_str().unwrap_or_default().to_string();
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let short_names = strings(&names["shortNames"]);
        let categories = strings(&names["categories"]);
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let top_subresources = &spec["subresources"];
        let mut entries = Vec::new();
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"].as_bool() == Some(false) {
                continue;
            }
            let Some(vname) = version["name"].as_str() else {
                continue;
            };
            let subs_json = if version["subresources"].is_object() {
                &version["subresources"]
            } else {
                top_subresources
            };
            let schema = version
                .pointer("/schema/openAPIV3Schema")
                .or_else(|| spec.pointer("/validation/openAPIV3Schema"))
                .cloned();
            let printer_columns = version["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    format: c["format"].as_str().unwrap_or_default().to_string(),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
            entries.push(Arc::new(ResourceInfo {
                group: group.clone(),
                version: vname.to_string(),
                plural: plural.clone(),
                singular: singular.clone(),
                kind: kind.clone(),
                namespaced,
                short_names: short_names.clone(),
                categories: categories.clone(),
                subresources: Subresources {
                    status: subs_json.get("status").is_some(),
                    scale: false,
                    binding: false,
                },
                storage: StorageKey {
                    group: group.clone(),
                    plural: plural.clone(),
                },
                view: View::Plain,
                custom: Some(Arc::new(CustomInfo {
                    crd_name: name.to_string(),
                    schema,
                    printer_columns,
                })),
            }));
        }
        self.custom.insert(name.to_string(), entries);
    }

    pub(crate) fn unregister_crd(&mut self, name: &str) {
        self.custom.remove(name);
    }
}
