//! The OpenAPI documents kubectl fetches before `apply`, `create` and `edit`: a minimal valid
//! `/openapi/v2` (protobuf, as kubectl asks for it, or JSON) and the `/openapi/v3` index with
//! one minimal document per group version.
//!
//! The documents hold no schemas on purpose: kubectl then finds no `fieldValidation` support
//! advertised, validates client-side against nothing (so every object passes), still sends
//! `fieldValidation=Strict`, and builds strategic merge patches from its compiled-in types.
//! Field validation itself happens in this server ([`super::crd_validation`]).

use serde_json::{json, Value};

use super::discovery::{self, GIT_VERSION};
use super::registry::{Registry, ResourceInfo};

/// The media type Kubernetes answers with (clients ask for the `@v1.0` form).
pub(crate) const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Appends a length-delimited protobuf field.
fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push((number << 3) | 2);
    let mut len = bytes.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// gnostic `openapi_v2.Document{swagger: "2.0", info: {title, version}, paths: {}}`.
pub(crate) fn v2_protobuf() -> Vec<u8> {
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, GIT_VERSION.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    field(&mut doc, 8, &[]);
    doc
}

pub(crate) fn v2_json() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": {},
        "definitions": {},
    })
}

/// A stable hash of what a group version serves (names and CRD schemas), so clients'
/// caches notice CRD changes.
fn hash_of(registry: &Registry, group: &str, version: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in registry.resources_in(group, version) {
        let schema = r
            .custom
            .as_ref()
            .and_then(|c| c.schema.as_ref())
            .map(Value::to_string)
            .unwrap_or_default();
        for b in r.plural.bytes().chain(r.kind.bytes()).chain(schema.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

/// A custom resource's schema as the apiextensions server publishes it: with apiVersion,
/// kind and metadata, tagged with its group, version and kind.
fn custom_schema(r: &ResourceInfo, schema: &Value) -> Value {
    let mut published = schema.clone();
    if let Some(props) = published
        .as_object_mut()
        .map(|m| m.entry("properties").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        props.insert(
            "metadata".into(),
            json!({"type": "object", "description": "Standard object's metadata."}),
        );
    }
    published["x-kubernetes-group-version-kind"] =
        json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    published
}

/// The schema name Kubernetes gives a custom resource: the group reversed, then the
/// version and kind (`io.duomq.v1alpha1.BrokerGroup`).
fn schema_name(r: &ResourceInfo) -> String {
    let reversed: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

pub(crate) fn v3_index(registry: &Registry) -> Value {
    let paths: serde_json::Map<String, Value> = discovery::group_version_paths(registry)
        .into_iter()
        .map(|(path, group, version)| {
            let url = format!(
                "/openapi/v3/{path}?hash={}",
                hash_of(registry, &group, &version)
            );
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// The document of one group version. Custom resources get their schema and a GET path
/// naming their kind, which is what `kubectl explain` reads. No PATCH operations are
/// described, so kubectl finds no server-side field validation advertised (it validates
/// client-side against nothing and still sends `fieldValidation`) and builds patches from
/// its compiled-in types, or merge patches for custom resources.
pub(crate) fn v3_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    if !registry.is_served_group_version(group, version) {
        return None;
    }
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for r in registry.resources_in(group, version) {
        let Some(schema) = r.custom.as_ref().and_then(|c| c.schema.as_ref()) else {
            continue;
        };
        let name = schema_name(&r);
        schemas.insert(name.clone(), custom_schema(&r, schema));
        let scope = if r.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let path = format!("/apis/{group}/{version}/{scope}{}/{{name}}", r.plural);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        paths.insert(path, json!({"get": {
            "x-kubernetes-action": "get",
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
        }}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_minimal_document_when_encoded_should_be_valid_protobuf_fields() {
        let doc = v2_protobuf();
        assert_eq!(&doc[..5], &[0x0a, 3, b'2', b'.', b'0']);
        assert_eq!(&doc[doc.len() - 2..], &[0x42, 0]);
    }
}
