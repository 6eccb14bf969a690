//! Test fixtures shared by the unit tests of the cluster's pure parts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::kubelet::ObjectLookup;

/// `key: value` pairs as labels or data.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A template with `labels` and one container `c` running `image`.
pub fn template(labels: &[(&str, &str)], image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(map(labels)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// Pod `web-0` in namespace `ns`, labelled `app=web`, with an empty spec.
pub fn web_pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some("ns".into()),
            uid: Some("u-1".into()),
            labels: Some(map(&[("app", "web")])),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: None,
    }
}

/// ConfigMaps `cm` (level=debug) and `config` (web-0.yaml, web-1.yaml); Secret `creds`
/// (password=s3cret).
pub struct Objects;

impl ObjectLookup for Objects {
    fn config_map(&self, _: &str, name: &str) -> Option<ConfigMap> {
        let data = match name {
            "cm" => map(&[("level", "debug")]),
            "config" => map(&[("web-0.yaml", "a: 1"), ("web-1.yaml", "a: 2")]),
            _ => return None,
        };
        Some(ConfigMap {
            data: Some(data),
            ..Default::default()
        })
    }

    fn secret(&self, _: &str, name: &str) -> Option<Secret> {
        (name == "creds").then(|| Secret {
            data: Some(BTreeMap::from([(
                "password".to_string(),
                ByteString(b"s3cret".to_vec()),
            )])),
            ..Default::default()
        })
    }
}
