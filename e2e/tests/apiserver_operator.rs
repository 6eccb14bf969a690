//! The real operator's reconcile against the local API server (no cluster controllers, so no
//! pods): it must create everything a BrokerGroup renders through server-side apply, and a
//! second reconcile of an unchanged BrokerGroup must write nothing — StatefulSets keep
//! `generation: 1` and every applied object keeps its resourceVersion.

use std::collections::BTreeMap;
use std::sync::Arc;

use duomq_e2e::apiserver::{self, ApiServerOptions};
use duomq_operator::api::{BrokerGroup, BrokerGroupSpec};
use duomq_operator::controller::{self, metrics::Metrics, BrokerStatusSource, Context};
use duomq_operator::names;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;

/// No broker answers: there are no pods without the cluster controllers.
struct NoBrokers;

impl BrokerStatusSource for NoBrokers {
    fn status<'a>(
        &'a self,
        at: &'a controller::Endpoint,
    ) -> BoxFuture<'a, Result<duomq_broker::admin::api::BrokerStatus, String>> {
        Box::pin(async move { Err(format!("no broker at {} in this test", at.address())) })
    }
}

/// (kind/name → resourceVersion, generation) of everything the operator manages.
async fn managed_versions(client: &Client) -> BTreeMap<String, (String, Option<i64>)> {
    let selector = ListParams::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::FIELD_MANAGER
    ));
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($kind:ty, $label:literal) => {
            for o in Api::<$kind>::default_namespaced(client.clone())
                .list(&selector)
                .await
                .expect("list")
                .items
            {
                out.insert(
                    format!("{}/{}", $label, o.name_any()),
                    (
                        o.resource_version().unwrap_or_default(),
                        o.metadata.generation,
                    ),
                );
            }
        };
    }
    collect!(StatefulSet, "statefulset");
    collect!(Service, "service");
    collect!(ConfigMap, "configmap");
    collect!(Secret, "secret");
    collect!(PodDisruptionBudget, "poddisruptionbudget");
    collect!(Lease, "lease");
    out
}

#[tokio::test]
async fn given_an_unchanged_brokergroup_when_the_operator_reconciles_twice_should_write_nothing_the_second_time(
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let server = apiserver::start(ApiServerOptions::default())
        .await
        .expect("api server starts");
    let client = server.client();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &BrokerGroup::crd())
        .await
        .expect("crd");
    let spec: BrokerGroupSpec =
        serde_json::from_value(json!({"groups": 2, "backupsPerGroup": 1})).expect("spec");
    let groups: Api<BrokerGroup> = Api::default_namespaced(client.clone());
    groups
        .create(&PostParams::default(), &BrokerGroup::new("pair", spec))
        .await
        .expect("brokergroup");

    let metrics = Arc::new(Metrics::new(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let ctx = Arc::new(Context::new(client.clone(), metrics, Arc::new(NoBrokers)));
    let bg = groups.get("pair").await.expect("get");
    controller::reconcile(Arc::new(bg), ctx.clone())
        .await
        .expect("first reconcile");
    let first = managed_versions(&client).await;
    let sets: Vec<_> = first
        .iter()
        .filter(|(k, _)| k.starts_with("statefulset/"))
        .collect();
    assert_eq!(sets.len(), 2, "one StatefulSet per group: {first:?}");
    assert!(
        sets.iter()
            .all(|(_, (_, generation))| *generation == Some(1)),
        "{sets:?}"
    );

    let bg = groups.get("pair").await.expect("get after status");
    controller::reconcile(Arc::new(bg), ctx)
        .await
        .expect("second reconcile");
    let second = managed_versions(&client).await;
    for kind in ["configmap/", "service/", "secret/", "poddisruptionbudget/"] {
        assert!(
            first.keys().any(|k| k.starts_with(kind)),
            "the operator applied no {kind}: {first:?}"
        );
    }
    assert_eq!(
        first, second,
        "a reconcile of an unchanged BrokerGroup must not change what it applied"
    );
}
