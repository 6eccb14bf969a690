//! Request paths: which endpoint a URL path names (discovery, OpenAPI, health, or a
//! resource with its namespace, name and subresource), as the Kubernetes API lays them out.
//!
//! It must not look at the registry: whether the resource exists is the handler's question.

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    GroupVersion {
        group: String,
        version: String,
    },
    OpenApiV2,
    OpenApiV3Index,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`
    OpenApiV3 {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
    Unknown,
}

/// `/api/v1/namespaces/{ns}/{plural}/{name}/{subresource}` and its shorter forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` prefix.
    pub watch: bool,
}

pub(crate) fn parse(path: &str) -> Route {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["api", version] => Route::GroupVersion {
            group: String::new(),
            version: version.to_string(),
        },
        ["apis", group, version] => Route::GroupVersion {
            group: group.to_string(),
            version: version.to_string(),
        },
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Index,
        ["openapi", "v3", "api", version] => Route::OpenApiV3 {
            group: String::new(),
            version: version.to_string(),
        },
        ["openapi", "v3", "apis", group, version] => Route::OpenApiV3 {
            group: group.to_string(),
            version: version.to_string(),
        },
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::Unknown,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let (watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let own = |s: &&str| s.to_string();
    let namespace_subresource = group.is_empty()
        && rest.len() == 3
        && rest[0] == "namespaces"
        && matches!(rest[2], "status" | "finalize");
    let (namespace, tail) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !namespace_subresource => {
            (Some(ns.to_string()), tail)
        }
        _ => (None, rest),
    };
    if tail.is_empty() || tail.len() > 3 {
        return Route::Unknown;
    }
    Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        plural: tail[0].to_string(),
        namespace,
        name: tail.get(1).map(own),
        subresource: tail.get(2).map(own),
        watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(route: Route) -> ResourcePath {
        match route {
            Route::Resource(r) => r,
            other => panic!("not a resource: {other:?}"),
        }
    }

    #[test]
    fn given_namespace_paths_when_parsed_should_tell_namespace_objects_from_namespaced_resources() {
        let ns = res(parse("/api/v1/namespaces/default"));
        assert_eq!(
            (ns.plural.as_str(), ns.name.as_deref(), ns.namespace),
            ("namespaces", Some("default"), None)
        );
        let status = res(parse("/api/v1/namespaces/default/status"));
        assert_eq!(status.subresource.as_deref(), Some("status"));
        assert_eq!(status.namespace, None);
        let cms = res(parse("/api/v1/namespaces/default/configmaps"));
        assert_eq!(
            (cms.plural.as_str(), cms.namespace.as_deref()),
            ("configmaps", Some("default"))
        );
        let sts = res(parse("/apis/apps/v1/namespaces/a/statefulsets/b/status"));
        assert_eq!(
            (
                sts.group.as_str(),
                sts.name.as_deref(),
                sts.subresource.as_deref()
            ),
            ("apps", Some("b"), Some("status"))
        );
    }

    #[test]
    fn given_watch_prefix_when_parsed_should_mark_watch() {
        let w = res(parse("/api/v1/watch/namespaces/default/pods/p"));
        assert!(w.watch);
        assert_eq!(w.name.as_deref(), Some("p"));
    }
}
