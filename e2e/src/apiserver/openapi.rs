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
use super::registry::Registry;

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

/// A stable hash of what a group version serves, so clients' caches notice CRD changes.
fn hash_of(registry: &Registry, group: &str, version: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in registry.resources_in(group, version) {
        for b in r.plural.bytes().chain(r.kind.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

pub(crate) fn v3_index(registry: &Registry) -> Value {
    let paths: serde_json::Map<String, Value> = discovery::group_version_paths(registry)
        .into_iter()
        .map(|(path, group, version)| {
            let url = format!("/openapi/v3/{path}?hash={}", hash_of(registry, &group, &version));
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

pub(crate) fn v3_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    registry.is_served_group_version(group, version).then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": GIT_VERSION},
            "paths": {},
            "components": {"schemas": {}},
        })
    })
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
