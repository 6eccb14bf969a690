//! Kubernetes protobuf request bodies for the kinds kubectl's typed generators send that
//! way (`kubectl create namespace|configmap|secret|serviceaccount`): the `k8s\0` envelope
//! around a `runtime.Unknown`, decoded into JSON with the field numbers of k8s.io/api's
//! generated.proto for those kinds.
//!
//! Only these kinds are known; any other protobuf body is refused with 415, which kubectl
//! reports. Responses are always JSON, which every client accepts.

use base64::Engine;
use serde_json::{json, Map, Value};

/// How a protobuf field becomes JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// Bytes, as base64 (Secret data).
    Bytes,
    Int,
    Bool,
    /// `metav1.Time` (seconds, nanos) as RFC 3339.
    Time,
    /// map<string, string>
    MapStr,
    /// map<string, bytes>, values as base64
    MapBytes,
    Msg(&'static [Field]),
}

struct Field {
    number: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn one(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: false,
    }
}

const fn many(number: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        number,
        name,
        ty,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[Field] = &[
    one(1, "kind", Ty::Str),
    one(3, "name", Ty::Str),
    one(4, "uid", Ty::Str),
    one(5, "apiVersion", Ty::Str),
    one(6, "controller", Ty::Bool),
    one(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[Field] = &[
    one(1, "name", Ty::Str),
    one(2, "generateName", Ty::Str),
    one(3, "namespace", Ty::Str),
    one(5, "uid", Ty::Str),
    one(6, "resourceVersion", Ty::Str),
    one(7, "generation", Ty::Int),
    one(8, "creationTimestamp", Ty::Time),
    one(9, "deletionTimestamp", Ty::Time),
    one(10, "deletionGracePeriodSeconds", Ty::Int),
    one(11, "labels", Ty::MapStr),
    one(12, "annotations", Ty::MapStr),
    many(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    many(14, "finalizers", Ty::Str),
];

const OBJECT_REFERENCE: &[Field] = &[
    one(1, "kind", Ty::Str),
    one(2, "namespace", Ty::Str),
    one(3, "name", Ty::Str),
    one(4, "uid", Ty::Str),
    one(5, "apiVersion", Ty::Str),
    one(6, "resourceVersion", Ty::Str),
    one(7, "fieldPath", Ty::Str),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[one(1, "name", Ty::Str)];

const CONFIG_MAP: &[Field] = &[
    one(1, "metadata", Ty::Msg(OBJECT_META)),
    one(2, "data", Ty::MapStr),
    one(3, "binaryData", Ty::MapBytes),
    one(4, "immutable", Ty::Bool),
];

const SECRET: &[Field] = &[
    one(1, "metadata", Ty::Msg(OBJECT_META)),
    one(2, "data", Ty::MapBytes),
    one(3, "type", Ty::Str),
    one(4, "stringData", Ty::MapStr),
    one(5, "immutable", Ty::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[many(1, "finalizers", Ty::Str)];

const NAMESPACE: &[Field] = &[
    one(1, "metadata", Ty::Msg(OBJECT_META)),
    one(2, "spec", Ty::Msg(NAMESPACE_SPEC)),
];

const SERVICE_ACCOUNT: &[Field] = &[
    one(1, "metadata", Ty::Msg(OBJECT_META)),
    many(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    many(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    one(4, "automountServiceAccountToken", Ty::Bool),
];

const TYPE_META: &[Field] = &[one(1, "apiVersion", Ty::Str), one(2, "kind", Ty::Str)];

/// Why a protobuf body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtobufError {
    #[error("the body does not start with the Kubernetes protobuf envelope")]
    Envelope,
    #[error("the protobuf body is truncated or malformed")]
    Malformed,
    #[error("protobuf bodies of kind {kind} are not supported by this server; send JSON")]
    UnsupportedKind { kind: String },
}

/// Decodes a `k8s\0`-enveloped protobuf object into its JSON form.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let inner = body.strip_prefix(b"k8s\0").ok_or(ProtobufError::Envelope)?;
    let mut type_meta = json!({});
    let mut raw: &[u8] = &[];
    for (number, wire) in fields(inner)? {
        match (number, wire) {
            (1, Wire::Bytes(b)) => type_meta = message(b, TYPE_META)?,
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let api_version = type_meta["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = type_meta["kind"].as_str().unwrap_or_default().to_string();
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        _ => {
            return Err(ProtobufError::UnsupportedKind {
                kind: format!("{api_version}/{kind}"),
            })
        }
    };
    let mut object = message(raw, schema)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

/// Reads a varint at `*pos`.
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ProtobufError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or(ProtobufError::Malformed)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtobufError::Malformed)
}

/// The raw fields of a message: (number, wire value).
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ProtobufError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)
                    .map_err(|_| ProtobufError::Malformed)?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or(ProtobufError::Malformed)?;
                let bytes = &buf[pos..end];
                pos = end;
                Wire::Bytes(bytes)
            }
            1 => {
                pos += 8;
                continue;
            }
            5 => {
                pos += 4;
                continue;
            }
            _ => return Err(ProtobufError::Malformed),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn scalar(ty: Ty, wire: &Wire) -> Result<Value, ProtobufError> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => text(b),
        (Ty::Bytes, Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (Ty::Int, Wire::Varint(v)) => json!(*v as i64),
        (Ty::Bool, Wire::Varint(v)) => json!(*v != 0),
        (Ty::Time, Wire::Bytes(b)) => {
            let seconds = message(b, &[one(1, "seconds", Ty::Int)])?["seconds"]
                .as_i64()
                .unwrap_or(0);
            let ts = jiff::Timestamp::from_second(seconds).map_err(|_| ProtobufError::Malformed)?;
            json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
        (Ty::Msg(schema), Wire::Bytes(b)) => message(b, schema)?,
        _ => return Err(ProtobufError::Malformed),
    })
}

fn message(buf: &[u8], schema: &[Field]) -> Result<Value, ProtobufError> {
    let mut out = Map::new();
    for (number, wire) in fields(buf)? {
        let Some(field) = schema.iter().find(|f| f.number == number) else {
            continue;
        };
        match field.ty {
            Ty::MapStr | Ty::MapBytes => {
                let Wire::Bytes(entry) = wire else {
                    return Err(ProtobufError::Malformed);
                };
                let value_ty = if matches!(field.ty, Ty::MapStr) {
                    Ty::Str
                } else {
                    Ty::Bytes
                };
                let kv = message(entry, &[one(1, "key", Ty::Str), one(2, "value", value_ty)])?;
                let key = kv["key"].as_str().unwrap_or_default().to_string();
                let value = kv.get("value").cloned().unwrap_or_else(|| json!(""));
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
            }
            ty if field.repeated => {
                let value = scalar(ty, &wire)?;
                let list = out.entry(field.name).or_insert_with(|| json!([]));
                if let Some(items) = list.as_array_mut() {
                    items.push(value);
                }
            }
            ty => {
                out.insert(field.name.into(), scalar(ty, &wire)?);
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn given_enveloped_configmap_when_decoded_should_give_its_json() {
        let meta = [
            len_field(1, b"demo"),
            len_field(11, &[len_field(1, b"app"), len_field(2, b"x")].concat()),
        ]
        .concat();
        let cm = [
            len_field(1, &meta),
            len_field(2, &[len_field(1, b"k"), len_field(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [len_field(1, b"v1"), len_field(2, b"ConfigMap")].concat();
        let unknown = [len_field(1, &type_meta), len_field(2, &cm)].concat();
        let body = [b"k8s\0".as_slice(), &unknown].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo", "labels": {"app": "x"}}, "data": {"k": "v"}})
        );
    }
}
