//! Claim expansion as the API server admits it (`PersistentVolumeClaimResize` admission and
//! claim validation, against StorageClasses), and a uid in a patch as a precondition (how a
//! controller adopts an orphan), through kube-rs against a server on 127.0.0.1:0.

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use super::{start, ApiServerHandle, ApiServerOptions};

async fn server() -> ApiServerHandle {
    start(ApiServerOptions {
        listen: vec!["127.0.0.1:0".parse().expect("literal address")],
        kubeconfig: None,
        watch_history: 100,
    })
    .await
    .expect("api server starts")
}

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn claim(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": size}}},
    }))
    .expect("claim")
}

fn resize(size: &str) -> serde_json::Value {
    json!({"spec": {"resources": {"requests": {"storage": size}}}})
}

#[tokio::test]
async fn given_claims_of_storage_classes_when_resized_should_grow_only_bound_claims_of_an_expandable_class_and_never_shrink(
) {
    let server = server().await;
    let classes: Api<StorageClass> = Api::all(server.client());
    for (name, expandable) in [("expandable", Some(true)), ("fixed", None)] {
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": "e2e.duomq.io/hostpath",
            "allowVolumeExpansion": expandable,
        }))
        .expect("class");
        classes
            .create(&PostParams::default(), &class)
            .await
            .expect("class created");
    }
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(server.client());
    let params = PatchParams::default();
    for (name, class) in [
        ("grows", "expandable"),
        ("stays", "fixed"),
        ("unbound", "expandable"),
        ("classless", ""),
    ] {
        claims
            .create(&PostParams::default(), &claim(name, class, "1Gi"))
            .await
            .expect("claim created");
        if name != "unbound" {
            let bound = json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}});
            claims
                .patch_status(name, &params, &Patch::Merge(&bound))
                .await
                .expect("bound");
        }
    }

    let grown = claims
        .patch("grows", &params, &Patch::Merge(&resize("2Gi")))
        .await
        .expect("an expandable class lets a bound claim grow");
    assert_eq!(
        grown.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );
    for (name, why) in [
        ("stays", "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"),
        ("classless", "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"),
        ("unbound", "Only bound persistent volume claims can be expanded"),
    ] {
        let refused = api_error(claims.patch(name, &params, &Patch::Merge(&resize("2Gi"))).await.expect_err("refused"));
        assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"), "{name}");
        assert_eq!(refused.message, format!("persistentvolumeclaims \"{name}\" is forbidden: {why}"));
    }
    // The capacity is still 1Gi: back down to 1Gi is no shrink below it, 512Mi is.
    let shrunk = api_error(
        claims
            .patch("grows", &params, &Patch::Merge(&resize("512Mi")))
            .await
            .expect_err("refused"),
    );
    assert_eq!(shrunk.code, 422);
    assert!(shrunk.message.contains("spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"), "{}", shrunk.message);
    let unchanged = claims
        .patch("stays", &params, &Patch::Merge(&resize("1024Mi")))
        .await;
    assert!(
        unchanged.is_ok(),
        "the same size in other units is no growth: {unchanged:?}"
    );
}

#[tokio::test]
async fn given_uid_in_a_patch_when_it_is_not_the_objects_should_refuse_it_as_a_failed_precondition()
{
    let server = server().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let adoptee: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "adoptee"}})).expect("cm");
    let created = cms
        .create(&PostParams::default(), &adoptee)
        .await
        .expect("created");
    let params = PatchParams::default();
    let with_uid = |uid: &str| json!({"metadata": {"labels": {"adopted": "yes"}, "uid": uid}});
    let refused = api_error(
        cms.patch(
            "adoptee",
            &params,
            &Patch::Strategic(&with_uid("someone-else")),
        )
        .await
        .expect_err("refused"),
    );
    assert_eq!(refused.code, 409);
    assert!(
        refused
            .message
            .contains("Precondition failed: UID in precondition: someone-else"),
        "{}",
        refused.message
    );
    let uid = created.uid().expect("uid");
    let patched = cms
        .patch("adoptee", &params, &Patch::Strategic(&with_uid(&uid)))
        .await
        .expect("its own uid");
    assert_eq!(
        patched.labels().get("adopted").map(String::as_str),
        Some("yes")
    );
}
