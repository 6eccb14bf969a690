//! Small pure helpers about pods and owners that the controllers share: readiness as
//! Kubernetes' controllers judge it, controller owner references, template hashes. No I/O.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// Whether the pod has a deletion timestamp.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod's phase is Succeeded or Failed: it will not run again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The status of condition `type_` ("True", "False", "Unknown"), if present.
pub fn condition_status<'a>(pod: &'a Pod, type_: &str) -> Option<&'a str> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| c.status.as_str())
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    condition_status(pod, "Ready") == Some("True")
}

/// Running and Ready, what the StatefulSet controller waits for.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && is_ready(pod)
}

/// An owner reference marking `owner` as the controller of the object.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `pod` is controlled by the object with uid `owner_uid`.
pub fn is_controlled_by(pod: &Pod, owner_uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// A short, stable hash of a pod template in the alphabet Kubernetes uses for
/// `pod-template-hash` and `controller-revision-hash` (no vowels, no look-alikes).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    // k8s-openapi serialises fields in a fixed order and maps as BTreeMaps: stable bytes.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    safe_encode(fnv1a32(&bytes))
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Kubernetes' `rand.SafeEncodeString` of the decimal hash.
fn safe_encode(hash: u32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// `length` random characters of the same alphabet, for generated pod names.
pub fn random_suffix(length: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..length)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        crate::cluster::fixtures::template(&[], image)
    }

    #[test]
    fn given_same_template_when_hashing_should_be_stable_and_differ_on_change() {
        assert_eq!(
            template_hash(&template("a:1")),
            template_hash(&template("a:1"))
        );
        assert_ne!(
            template_hash(&template("a:1")),
            template_hash(&template("a:2"))
        );
        assert!(template_hash(&template("a:1"))
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
