//! Discovery documents: `/version`, `/api` (APIVersions), `/apis` (APIGroupList),
//! `/apis/{group}` (APIGroup), `/api/v1` and `/apis/{group}/{version}` (APIResourceList with
//! verbs, scope, kind, short names, categories and subresources), and aggregated discovery
//! (`apidiscovery.k8s.io/v2` APIGroupDiscoveryList) for clients that ask for it, as kubectl
//! 1.32 and kube-rs's aggregated discovery do.
//!
//! It must not cache: documents are built from the registry on each request, so a CRD shows
//! up (and goes away) at once.

use serde_json::{json, Value};

use super::registry::{api_version, Registry, ResourceInfo};

/// The Kubernetes version the server reports.
pub(crate) const GIT_VERSION: &str = "v1.33.0";

/// The media type of aggregated discovery responses.
pub(crate) const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// Whether an Accept header asks for aggregated discovery.
pub(crate) fn wants_aggregated(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList") && first.contains("v=v2"))
}

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "duomq-e2e",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": api_version(name, v), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub(crate) fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .map(|g| group_json(&g.name, &g.versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn group(registry: &Registry, name: &str) -> Option<Value> {
    let g = registry.groups().into_iter().find(|g| g.name == name)?;
    let mut doc = group_json(&g.name, &g.versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn strings(items: &[String]) -> Value {
    json!(items)
}

/// The subresources of a resource: (name, kind, group, version, verbs).
fn subresources(
    r: &ResourceInfo,
) -> Vec<(&'static str, String, String, String, Vec<&'static str>)> {
    let mut subs = Vec::new();
    if r.subresources.status {
        subs.push((
            "status",
            r.kind.clone(),
            r.group.clone(),
            r.version.clone(),
            SUBRESOURCE_VERBS.to_vec(),
        ));
    }
    if r.subresources.scale {
        subs.push((
            "scale",
            "Scale".into(),
            "autoscaling".into(),
            "v1".into(),
            SUBRESOURCE_VERBS.to_vec(),
        ));
    }
    if r.subresources.binding {
        subs.push((
            "binding",
            "Binding".into(),
            String::new(),
            "v1".into(),
            vec!["create"],
        ));
    }
    subs
}

pub(crate) fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = registry.resources_in(group, version);
    if resources.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in &resources {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = strings(&r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = strings(&r.categories);
        }
        list.push(entry);
        for (sub, kind, sgroup, sversion, verbs) in subresources(r) {
            let mut e = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if sgroup != r.group || sversion != r.version {
                e["group"] = json!(sgroup);
                e["version"] = json!(sversion);
            }
            list.push(e);
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": api_version(group, version),
        "resources": list,
    }))
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let subs: Vec<Value> = subresources(r)
        .into_iter()
        .map(|(sub, kind, group, version, verbs)| {
            json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
        })
        .collect();
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": VERBS,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = strings(&r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = strings(&r.categories);
    }
    if !subs.is_empty() {
        entry["subresources"] = json!(subs);
    }
    entry
}

fn aggregated_group(registry: &Registry, name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = registry
                .resources_in(name, v)
                .iter()
                .map(|r| aggregated_resource(r))
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let metadata = if name.is_empty() {
        json!({})
    } else {
        json!({"name": name})
    };
    json!({"metadata": metadata, "versions": versions})
}

/// Aggregated discovery of `/api` (core) or `/apis` (every other group).
pub(crate) fn aggregated(registry: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(registry, "", &["v1".to_string()])]
    } else {
        registry
            .groups()
            .iter()
            .map(|g| aggregated_group(registry, &g.name, &g.versions))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// Every served group version as `api/v1` or `apis/{group}/{version}`, for the OpenAPI index.
pub(crate) fn group_version_paths(registry: &Registry) -> Vec<(String, String, String)> {
    let mut out = vec![("api/v1".to_string(), String::new(), "v1".to_string())];
    for g in registry.groups() {
        for v in &g.versions {
            out.push((format!("apis/{}/{v}", g.name), g.name.clone(), v.clone()));
        }
    }
    out
}
