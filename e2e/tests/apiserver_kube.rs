//! The local API server through kube-rs, as the operator and the cluster controllers use it:
//! CRUD with optimistic concurrency, watches (resume, 410 Gone and relist, streaming lists),
//! a `Controller`, server-side apply idempotency, finalizers, graceful pod deletion, the
//! status subresource, generations, garbage collection and discovery. Each test starts its
//! own server on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duomq_e2e::apiserver::{self, ApiServerHandle, ApiServerOptions};
use duomq_testkit::eventually_async as eventually;
use duomq_operator::api::{BrokerGroup, BrokerGroupSpec};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams,
    VersionMatch, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, Event};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::json;

/// How long a watch may take to deliver an event caused by a write.
const WATCH_EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the garbage collector, a controller or a relist may take to show its effect.
const EFFECT_TIMEOUT: Duration = Duration::from_secs(30);

async fn server(watch_history: usize) -> ApiServerHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    apiserver::start(ApiServerOptions {
        listen: vec!["127.0.0.1:0".parse().expect("literal address")],
        kubeconfig: None,
        watch_history,
    })
    .await
    .expect("api server starts")
}

async fn next_within<S: futures::Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(WATCH_EVENT_TIMEOUT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// The next event of a raw watch that is not a BOOKMARK.
async fn next_change<S>(stream: &mut S, what: &str) -> WatchEvent<ConfigMap>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    loop {
        match next_within(stream, what).await.expect("watch event") {
            WatchEvent::Bookmark(_) => continue,
            event => return event,
        }
    }
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn api_error(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(obj: &impl Resource) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("numeric resourceVersion")
}

async fn install_brokergroup_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &BrokerGroup::crd())
        .await
        .expect("crd created");
}

fn brokergroup(name: &str) -> BrokerGroup {
    let spec: BrokerGroupSpec =
        serde_json::from_value(json!({"groups": 1, "backupsPerGroup": 1})).expect("spec");
    BrokerGroup::new(name, spec)
}

#[tokio::test]
async fn given_configmap_when_created_read_replaced_patched_and_deleted_should_behave_like_kubernetes(
) {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());

    let created = cms
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));

    let exists = api_error(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect_err("duplicate"),
    );
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );

    let mut changed = cms.get("a").await.expect("get");
    changed.data = Some(BTreeMap::from([("k".to_string(), "2".to_string())]));
    let replaced = cms
        .replace("a", &PostParams::default(), &changed)
        .await
        .expect("replace");
    assert!(rv(&replaced) > rv(&created));
    assert_eq!(replaced.metadata.generation, Some(2));

    let stale = api_error(
        cms.replace("a", &PostParams::default(), &changed)
            .await
            .expect_err("stale"),
    );
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    let labelled = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "metadata changes keep the generation"
    );
    let stale_patch = cms
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"resourceVersion": created.resource_version()}, "data": {"k": "3"}})))
        .await
        .expect_err("stale patch");
    assert_eq!(api_error(stale_patch).code, 409);

    let listed = cms
        .list(&ListParams::default().labels("x=y"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    assert!(cms
        .list(&ListParams::default().labels("x!=y"))
        .await
        .expect("list")
        .items
        .is_empty());

    let deleted = cms
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        deleted.is_right(),
        "a ConfigMap delete answers with a Status, like Kubernetes"
    );
    let gone = api_error(cms.get("a").await.expect_err("gone"));
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    let missing = api_error(
        cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .expect_err("patch missing"),
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn given_missing_namespace_when_creating_should_answer_not_found() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "nowhere");
    let err = api_error(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .expect_err("no namespace"),
    );
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
}

#[tokio::test]
async fn given_generate_name_when_creating_should_pick_a_unique_name() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut template = cm("", &[]);
    template.metadata.name = None;
    template.metadata.generate_name = Some("gen-".into());
    let a = cms
        .create(&PostParams::default(), &template)
        .await
        .expect("create a");
    let b = cms
        .create(&PostParams::default(), &template)
        .await
        .expect("create b");
    assert!(a.name_any().starts_with("gen-") && a.name_any().len() == 9);
    assert_ne!(a.name_any(), b.name_any());
}

#[tokio::test]
async fn given_lease_when_two_holders_update_from_the_same_version_should_let_only_one_win() {
    let server = server(1000).await;
    let leases: Api<Lease> = Api::default_namespaced(server.client());
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "group-0"}, "spec": {"holderIdentity": "a"}}),
    )
    .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let mut first = created.clone();
    first.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let mut second = created.clone();
    second.spec.as_mut().expect("spec").holder_identity = Some("c".into());
    leases
        .replace("group-0", &PostParams::default(), &first)
        .await
        .expect("first wins");
    let lost = api_error(
        leases
            .replace("group-0", &PostParams::default(), &second)
            .await
            .expect_err("second loses"),
    );
    assert_eq!(lost.code, 409);
    let now = leases.get("group-0").await.expect("get");
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn given_raw_watch_when_objects_change_should_stream_added_modified_deleted_and_resume() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let start = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list rv");
    let mut stream = cms
        .watch(&WatchParams::default(), &start)
        .await
        .expect("watch")
        .boxed();

    cms.create(&PostParams::default(), &cm("w", &[("a", "1")]))
        .await
        .expect("create");
    let added = next_change(&mut stream, "ADDED").await;
    assert!(matches!(added, WatchEvent::Added(ref c) if c.name_any() == "w"));
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .expect("patch");
    let modified = next_change(&mut stream, "MODIFIED").await;
    let after_modify = match modified {
        WatchEvent::Modified(c) => c.resource_version().expect("rv"),
        other => panic!("expected MODIFIED, got {other:?}"),
    };
    cms.delete("w", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(matches!(
        next_change(&mut stream, "DELETED").await,
        WatchEvent::Deleted(_)
    ));
    drop(stream);

    let mut resumed = cms
        .watch(&WatchParams::default(), &after_modify)
        .await
        .expect("resume")
        .boxed();
    match next_change(&mut resumed, "DELETED after resume").await {
        WatchEvent::Deleted(c) => assert_eq!(c.name_any(), "w"),
        other => {
            panic!("a watch resumed after the modification should see the deletion, got {other:?}")
        }
    }
}

#[tokio::test]
async fn given_history_exceeded_when_watching_from_an_old_version_should_get_410_and_watcher_should_relist(
) {
    let server = server(5).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let old = cms
        .create(&PostParams::default(), &cm("first", &[]))
        .await
        .expect("create");
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("churn-{i}"), &[]))
            .await
            .expect("churn");
    }
    let mut raw = cms
        .watch(
            &WatchParams::default(),
            &old.resource_version().expect("rv"),
        )
        .await
        .expect("watch")
        .boxed();
    match next_within(&mut raw, "410").await {
        Ok(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected an ERROR event with 410, got {other:?}"),
    }

    let exact = ListParams::default()
        .at(&old.resource_version().expect("rv"))
        .matching(VersionMatch::Exact);
    let gone = api_error(
        cms.list(&exact)
            .await
            .expect_err("an exact list of a compacted version"),
    );
    assert_eq!(gone.code, 410);
    let not_older = ListParams::default()
        .at(&old.resource_version().expect("rv"))
        .matching(VersionMatch::NotOlderThan);
    assert_eq!(
        cms.list(&not_older)
            .await
            .expect("not older than an old version")
            .items
            .len(),
        11
    );

    // A watcher without bookmarks that sees none of the churn keeps an old version; when its
    // watch times out it resumes from there, gets 410 and must relist.
    let config = watcher::Config::default()
        .labels("app=watched")
        .timeout(1)
        .disable_bookmarks();
    let mut events = watcher::watcher(cms.clone(), config).boxed();
    let mut watched = cm("watched-0", &[]);
    watched.metadata.labels = Some(BTreeMap::from([("app".to_string(), "watched".to_string())]));
    cms.create(&PostParams::default(), &watched)
        .await
        .expect("create watched");
    let mut saw_initial = false;
    while !saw_initial {
        if let Ok(Event::InitDone) = next_within(&mut events, "initial list").await {
            saw_initial = true;
        }
    }
    for i in 10..20 {
        cms.create(&PostParams::default(), &cm(&format!("churn-{i}"), &[]))
            .await
            .expect("churn");
    }
    let mut saw_gone = false;
    let mut relisted = false;
    while !relisted {
        match next_within(&mut events, "410 then a relist").await {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => saw_gone = true,
            Ok(Event::InitDone) if saw_gone => relisted = true,
            _ => {}
        }
    }
    watched.metadata.name = Some("watched-1".into());
    cms.create(&PostParams::default(), &watched)
        .await
        .expect("create after relist");
    loop {
        if let Ok(Event::Apply(c)) =
            next_within(&mut events, "the object created after the relist").await
        {
            if c.name_any() == "watched-1" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn given_watcher_default_and_streaming_lists_when_objects_change_should_see_every_change() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &cm("before", &[]))
        .await
        .expect("create");
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut events = watcher::watcher(cms.clone(), config).boxed();
        let mut initial = Vec::new();
        loop {
            match next_within(&mut events, "initial events")
                .await
                .expect("watcher event")
            {
                Event::InitApply(c) => initial.push(c.name_any()),
                Event::InitDone => break,
                _ => {}
            }
        }
        assert!(
            initial.contains(&"before".to_string()),
            "initial events {initial:?}"
        );
        cms.create(&PostParams::default(), &cm("during", &[]))
            .await
            .expect("create");
        loop {
            if let Event::Apply(c) = next_within(&mut events, "apply")
                .await
                .expect("watcher event")
            {
                assert_eq!(c.name_any(), "during");
                break;
            }
        }
        cms.delete("during", &DeleteParams::default())
            .await
            .expect("delete");
        loop {
            if let Event::Delete(c) = next_within(&mut events, "delete")
                .await
                .expect("watcher event")
            {
                assert_eq!(c.name_any(), "during");
                break;
            }
        }
    }
}

#[tokio::test]
async fn given_controller_on_configmaps_when_one_changes_should_reconcile_it() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let reconciled = Arc::new(AtomicUsize::new(0));
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .run(
            |obj: Arc<ConfigMap>, count: Arc<AtomicUsize>| async move {
                if obj
                    .data
                    .as_ref()
                    .and_then(|d| d.get("k"))
                    .map(String::as_str)
                    == Some("changed")
                {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            reconciled.clone(),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);
    cms.create(&PostParams::default(), &cm("c", &[("k", "initial")]))
        .await
        .expect("create");
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .expect("patch");
    eventually(
        "the controller to reconcile the change",
        EFFECT_TIMEOUT,
        || {
            let n = reconciled.load(Ordering::SeqCst);
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    task.abort();
}

fn statefulset(image: &str, with_extra_label: bool) -> serde_json::Value {
    let mut labels = json!({"app": "b"});
    if with_extra_label {
        labels["extra"] = json!("1");
    }
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "b", "labels": labels},
        "spec": {
            "serviceName": "b", "replicas": 2,
            "selector": {"matchLabels": {"app": "b"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [
                {"name": "broker", "image": image, "ports": [{"name": "stomp", "containerPort": 61613}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "journal"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        }
    })
}

#[tokio::test]
async fn given_server_side_apply_when_applied_twice_unchanged_should_keep_version_and_generation() {
    let server = server(1000).await;
    let sets: Api<StatefulSet> = Api::default_namespaced(server.client());
    let params = PatchParams::apply("duomq-operator").force();
    let first = sets
        .patch(
            "b",
            &params,
            &Patch::Apply(statefulset("duomq/broker:1", true)),
        )
        .await
        .expect("apply creates");
    assert_eq!(first.metadata.generation, Some(1));
    let managers: Vec<_> = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert_eq!(
        managers,
        vec![(Some("duomq-operator".into()), Some("Apply".into()))]
    );

    let second = sets
        .patch(
            "b",
            &params,
            &Patch::Apply(statefulset("duomq/broker:1", true)),
        )
        .await
        .expect("apply again");
    assert_eq!(
        second.metadata.generation,
        Some(1),
        "an unchanged apply must not bump the generation"
    );
    assert_eq!(
        second.resource_version(),
        first.resource_version(),
        "an unchanged apply must not write"
    );

    let third = sets
        .patch(
            "b",
            &params,
            &Patch::Apply(statefulset("duomq/broker:2", false)),
        )
        .await
        .expect("apply change");
    assert_eq!(third.metadata.generation, Some(2));
    assert!(
        !third.labels().contains_key("extra"),
        "a label the applier dropped is removed"
    );
    let image = third
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].image.clone());
    assert_eq!(image, Some(Some("duomq/broker:2".into())));

    let mut bigger = statefulset("duomq/broker:2", false);
    bigger["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] =
        json!("2Gi");
    let refused = api_error(
        sets.patch("b", &params, &Patch::Apply(bigger))
            .await
            .expect_err("immutable field"),
    );
    assert_eq!(refused.code, 422);
    assert!(
        refused
            .message
            .contains("spec: Forbidden: updates to statefulset spec for fields other than"),
        "{}",
        refused.message
    );
}

#[tokio::test]
async fn given_finalizer_when_deleted_should_wait_for_the_finalizer_to_be_removed() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["duomq.io/cleanup".into()]);
    cms.create(&PostParams::default(), &held)
        .await
        .expect("create");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let deleting = cms.get("held").await.expect("still there");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let added = cms
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["duomq.io/cleanup", "x/y"]}})),
        )
        .await
        .expect_err("no new finalizers while deleting");
    assert_eq!(api_error(added).code, 422);
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    assert_eq!(
        api_error(cms.get("held").await.expect_err("gone")).code,
        404
    );
}

fn pod(name: &str, node: Option<&str>, grace: Option<i64>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": grace, "containers": [{"name": "c", "image": "busybox:1"}]},
    }))
    .expect("pod")
}

#[tokio::test]
async fn given_scheduled_pod_when_deleted_should_terminate_gracefully_until_the_kubelet_deletes_it()
{
    let server = server(1000).await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    pods.create(
        &PostParams::default(),
        &pod("scheduled", Some("node-1"), Some(45)),
    )
    .await
    .expect("create");
    pods.create(&PostParams::default(), &pod("pending", None, None))
        .await
        .expect("create");
    pods.create(
        &PostParams::default(),
        &pod("shortened", Some("node-1"), None),
    )
    .await
    .expect("create");

    pods.delete("scheduled", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = pods.get("scheduled").await.expect("kept for the kubelet");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(45));

    pods.delete(
        "shortened",
        &DeleteParams {
            grace_period_seconds: Some(7),
            ..Default::default()
        },
    )
    .await
    .expect("delete");
    assert_eq!(
        pods.get("shortened")
            .await
            .expect("kept")
            .metadata
            .deletion_grace_period_seconds,
        Some(7)
    );

    let deleted = pods
        .delete("pending", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        deleted.is_left(),
        "a pod delete answers with the pod, like Kubernetes"
    );
    assert_eq!(
        api_error(
            pods.get("pending")
                .await
                .expect_err("unscheduled pods go at once")
        )
        .code,
        404
    );

    let uid = terminating.uid().expect("uid");
    pods.delete(
        "scheduled",
        &DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        },
    )
    .await
    .expect("kubelet's final delete");
    assert_eq!(
        api_error(pods.get("scheduled").await.expect_err("gone")).code,
        404
    );
}

#[tokio::test]
async fn given_status_subresource_when_writing_main_and_status_should_keep_them_apart() {
    let server = server(1000).await;
    let client = server.client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut with_status = pod("p", None, None);
    with_status.status = Some(serde_json::from_value(json!({"phase": "Running"})).expect("status"));
    let created = pods
        .create(&PostParams::default(), &with_status)
        .await
        .expect("create");
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "create resets the status"
    );

    let patched = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running"}, "metadata": {"labels": {"ignored": "yes"}}}),
            ),
        )
        .await
        .expect("status patch");
    assert_eq!(
        patched.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert!(
        !patched.labels().contains_key("ignored"),
        "a status write changes only status"
    );

    let main = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"kept": "yes"}}}),
            ),
        )
        .await
        .expect("main patch");
    assert_eq!(
        main.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "a main write ignores status"
    );
    assert!(main.labels().contains_key("kept"));

    install_brokergroup_crd(&client).await;
    let groups: Api<BrokerGroup> = Api::default_namespaced(client);
    let bg = eventually(
        "the BrokerGroup resource to be served",
        EFFECT_TIMEOUT,
        || {
            let groups = groups.clone();
            async move {
                groups
                    .create(&PostParams::default(), &brokergroup("pair"))
                    .await
                    .ok()
            }
        },
    )
    .await;
    assert_eq!(bg.metadata.generation, Some(1));
    assert_eq!(bg.spec.ports.stomp, 61613, "schema defaults are applied");
    let status = groups
        .patch_status("pair", &PatchParams::apply("duomq-operator").force(), &Patch::Apply(json!({
            "apiVersion": "duomq.io/v1alpha1", "kind": "BrokerGroup", "status": {"live": "1/1", "failovers": 2}})))
        .await
        .expect("apply status");
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "status changes never bump the generation"
    );
    assert_eq!(status.status.as_ref().map(|s| s.failovers), Some(2));
    let spec = groups
        .patch(
            "pair",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"groups": 2}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(spec.metadata.generation, Some(2));
}

#[tokio::test]
async fn given_brokergroup_crd_when_writing_invalid_objects_should_answer_422_with_the_cel_messages(
) {
    let server = server(1000).await;
    let client = server.client();
    install_brokergroup_crd(&client).await;
    let groups: Api<BrokerGroup> = Api::default_namespaced(client);
    let mut lonely = brokergroup("lonely");
    lonely.spec.backups_per_group = 0;
    let err = eventually(
        "the BrokerGroup resource to be served",
        EFFECT_TIMEOUT,
        || {
            let (groups, lonely) = (groups.clone(), lonely.clone());
            async move {
                match groups.create(&PostParams::default(), &lonely).await {
                    Err(kube::Error::Api(s)) if s.code == 422 => Some(s),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert_eq!(
        err.message,
        "BrokerGroup.duomq.io \"lonely\" is invalid: spec: Invalid value: \"object\": replication needs a backup to replicate to: set backupsPerGroup to 1 or more"
    );

    groups
        .create(&PostParams::default(), &brokergroup("pair"))
        .await
        .expect("valid");
    let change = groups
        .patch("pair", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ha": {"mode": "sharedStore"}, "storage": {"storageClassName": "nfs"}}})))
        .await
        .expect_err("transition rule");
    let status = api_error(change);
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("ha.mode cannot change on an existing BrokerGroup"),
        "{}",
        status.message
    );
    let tls_on = groups
        .patch("pair", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tls": {"mode": "OperatorManaged"}}})))
        .await
        .expect_err("tls cannot be turned on later");
    let status = api_error(tls_on);
    assert_eq!(status.code, 422);
    assert!(status.message.contains("tls cannot be added to or removed from an existing BrokerGroup"), "{}", status.message);

    let unknown = groups
        .patch(
            "pair",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"noSuchField": 1}})),
        )
        .await
        .expect("unknown fields are pruned without fieldValidation=Strict");
    assert!(serde_json::to_value(&unknown).expect("json")["spec"]
        .get("noSuchField")
        .is_none());
}

#[tokio::test]
async fn given_owner_when_deleted_should_collect_dependents_by_propagation_policy() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let owned_by = |owner: &ConfigMap, name: &str| {
        let mut c = cm(name, &[]);
        c.metadata.owner_references =
            Some(vec![owner.controller_owner_ref(&()).expect("owner ref")]);
        c
    };
    for (policy, dependent_survives) in [
        ("Background", false),
        ("Foreground", false),
        ("Orphan", true),
    ] {
        let owner = cms
            .create(
                &PostParams::default(),
                &cm(&format!("owner-{}", policy.to_lowercase()), &[]),
            )
            .await
            .expect("owner");
        let dependent_name = format!("dependent-{}", policy.to_lowercase());
        cms.create(&PostParams::default(), &owned_by(&owner, &dependent_name))
            .await
            .expect("dependent");
        let dp = match policy {
            "Background" => DeleteParams::background(),
            "Foreground" => DeleteParams::foreground(),
            _ => DeleteParams::orphan(),
        };
        cms.delete(&owner.name_any(), &dp)
            .await
            .expect("delete owner");
        eventually("the owner to be gone", EFFECT_TIMEOUT, || {
            let cms = cms.clone();
            let name = owner.name_any();
            async move {
                cms.get_opt(&name)
                    .await
                    .expect("get")
                    .is_none()
                    .then_some(())
            }
        })
        .await;
        let dependent = cms.get_opt(&dependent_name).await.expect("get dependent");
        assert_eq!(dependent.is_some(), dependent_survives, "{policy}");
        if let Some(d) = dependent {
            assert!(
                d.metadata.owner_references.unwrap_or_default().is_empty(),
                "orphans lose the owner reference"
            );
        }
    }
}

#[tokio::test]
async fn given_namespace_when_deleted_should_empty_it_and_then_remove_it() {
    let server = server(1000).await;
    let client = server.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let refused = api_error(
        namespaces
            .delete("default", &DeleteParams::default())
            .await
            .expect_err("default stays"),
    );
    assert_eq!(refused.code, 403);
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "doomed"}})).expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client, "doomed");
    cms.create(&PostParams::default(), &cm("inside", &[]))
        .await
        .expect("create inside");
    let dropped = namespaces
        .patch(
            "doomed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"finalizers": null}})),
        )
        .await
        .expect("patch namespace");
    assert_eq!(
        dropped.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()]),
        "only the namespace's cleanup removes its finalizer"
    );
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete namespace");
    eventually("the namespace to be gone", EFFECT_TIMEOUT, || {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .get_opt("doomed")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert!(cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
}

#[tokio::test]
async fn given_crd_when_created_and_deleted_should_appear_in_and_leave_discovery() {
    let server = server(1000).await;
    let client = server.client();
    install_brokergroup_crd(&client).await;
    for aggregated in [false, true] {
        let discovery = kube::Discovery::new(client.clone());
        let discovery = if aggregated {
            discovery.run_aggregated().await
        } else {
            discovery.run().await
        }
        .expect("discovery");
        let group = discovery.get("duomq.io").expect("duomq.io is discovered");
        let (resource, caps) = group
            .recommended_kind("BrokerGroup")
            .expect("BrokerGroup is discovered");
        assert_eq!(resource.plural, "brokergroups");
        assert!(
            caps.subresources.iter().any(|(s, _)| s.plural == "status"),
            "aggregated={aggregated}"
        );
        assert!(discovery
            .get("apps")
            .is_some_and(|g| g.recommended_kind("StatefulSet").is_some()));
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("brokergroups.duomq.io", &DeleteParams::default())
        .await
        .expect("delete crd");
    eventually("duomq.io to leave discovery", EFFECT_TIMEOUT, || {
        let client = client.clone();
        async move {
            let discovery = kube::Discovery::new(client).run().await.expect("discovery");
            (!discovery.has_group("duomq.io")).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn given_metadata_watcher_when_objects_change_should_see_partial_metadata() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &cm("m", &[("k", "v")]))
        .await
        .expect("create");
    let meta = cms.get_metadata("m").await.expect("metadata");
    assert_eq!(meta.name_any(), "m");
    let listed = cms
        .list_metadata(&ListParams::default())
        .await
        .expect("list metadata");
    assert_eq!(listed.items.len(), 1);
    let metadata_only: Api<PartialObjectMeta<ConfigMap>> = Api::default_namespaced(server.client());
    let mut events = watcher::watcher(metadata_only, watcher::Config::default()).boxed();
    loop {
        if let Event::InitDone = next_within(&mut events, "metadata init")
            .await
            .expect("event")
        {
            break;
        }
    }
    cms.delete("m", &DeleteParams::default())
        .await
        .expect("delete");
    loop {
        if let Event::Delete(m) = next_within(&mut events, "metadata delete")
            .await
            .expect("event")
        {
            assert_eq!(m.name_any(), "m");
            break;
        }
    }
}

#[tokio::test]
async fn given_quiet_watch_with_bookmarks_when_waiting_past_its_timeout_should_get_bookmarks_and_then_end(
) {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let current = cms
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .expect("create")
        .resource_version()
        .expect("rv");
    let params = WatchParams::default().timeout(8);
    let mut stream = cms.watch(&params, &current).await.expect("watch").boxed();
    match next_within(&mut stream, "a bookmark").await.expect("event") {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, current),
        other => panic!("a quiet watch with bookmarks should get a BOOKMARK, got {other:?}"),
    }
    loop {
        match tokio::time::timeout(WATCH_EVENT_TIMEOUT, stream.next())
            .await
            .expect("the watch ends after timeoutSeconds")
        {
            None => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(other) => panic!("unexpected event on a quiet watch: {other:?}"),
        }
    }
}

#[tokio::test]
async fn given_two_listen_addresses_when_started_should_serve_on_both_and_write_kubeconfigs() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = dir.path().join("nested").join("kubeconfig");
    let server = apiserver::start(ApiServerOptions {
        listen: vec![
            "127.0.0.1:0".parse().expect("address"),
            "127.0.0.2:0".parse().expect("address"),
        ],
        kubeconfig: Some(kubeconfig.clone()),
        watch_history: 100,
    })
    .await
    .expect("api server starts");
    let urls = server.urls();
    assert_eq!(urls.len(), 2);
    assert_eq!(urls[0], server.url());
    assert!(urls[1].starts_with("http://127.0.0.2:"), "{urls:?}");
    assert_eq!(server.kubeconfig_path(), Some(kubeconfig.as_path()));
    let other = dir.path().join("second-kubeconfig");
    server
        .write_kubeconfig(&other, &urls[1])
        .expect("second kubeconfig");
    for path in [&kubeconfig, &other] {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(path).expect("kubeconfig parses"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig loads");
        let client = Client::try_from(config).expect("client");
        let namespaces: Api<Namespace> = Api::all(client);
        let names: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        assert!(
            names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()),
            "{names:?}"
        );
    }
}

#[tokio::test]
async fn given_open_watch_when_the_server_shuts_down_should_end_the_watch_and_return() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    tokio::time::timeout(EFFECT_TIMEOUT, server.shutdown())
        .await
        .expect("shutdown returns with a watch open");
    loop {
        match tokio::time::timeout(WATCH_EVENT_TIMEOUT, stream.next())
            .await
            .expect("the watch ends")
        {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn given_labelled_configmaps_when_deleting_a_collection_should_delete_only_the_selected() {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db")] {
        let mut c = cm(name, &[]);
        c.metadata.labels = Some(BTreeMap::from([("tier".to_string(), tier.to_string())]));
        cms.create(&PostParams::default(), &c)
            .await
            .expect("create");
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=web"),
    )
    .await
    .expect("deletecollection");
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left, ["c"]);
}

#[tokio::test]
async fn given_kubelet_style_watch_on_a_node_when_a_pod_is_bound_should_see_it_arrive() {
    let server = server(1000).await;
    let client = server.client();
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=node-1");
    let mut events = watcher::watcher(pods.clone(), config).boxed();
    loop {
        if let Event::InitDone = next_within(&mut events, "initial list")
            .await
            .expect("event")
        {
            break;
        }
    }
    let namespaced: Api<Pod> = Api::default_namespaced(client.clone());
    namespaced
        .create(&PostParams::default(), &pod("bound", None, None))
        .await
        .expect("create");
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}});
    let request = http::Request::post("/api/v1/namespaces/default/pods/bound/binding")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding).expect("json"))
        .expect("request");
    client
        .request_text(request)
        .await
        .expect("binding accepted");
    loop {
        if let Event::Apply(p) = next_within(&mut events, "the bound pod on node-1")
            .await
            .expect("event")
        {
            assert_eq!(p.name_any(), "bound");
            let scheduled = p.status.and_then(|s| s.conditions).unwrap_or_default();
            assert!(scheduled
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "True"));
            break;
        }
    }
    let again = namespaced.get("bound").await.expect("get");
    assert_eq!(
        again.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-1")
    );
    let moved = namespaced
        .patch(
            "bound",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "node-2"}})),
        )
        .await
        .expect_err("a bound pod cannot move");
    assert_eq!(api_error(moved).code, 422);
}

#[tokio::test]
async fn given_fields_written_by_one_manager_when_another_applies_other_values_should_conflict_unless_forced(
) {
    let server = server(1000).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let created = PostParams {
        field_manager: Some("creator".into()),
        ..Default::default()
    };
    cms.create(&created, &cm("shared", &[("a", "1"), ("b", "2")]))
        .await
        .expect("create");
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"a": "changed"}});
    let conflict = api_error(
        cms.patch(
            "shared",
            &PatchParams::apply("applier"),
            &Patch::Apply(&applied),
        )
        .await
        .expect_err("conflict"),
    );
    assert_eq!(conflict.code, 409);
    assert_eq!(
        conflict.message,
        "Apply failed with 1 conflict: conflict with \"creator\" using v1: .data.a"
    );
    let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"b": "2"}});
    cms.patch(
        "shared",
        &PatchParams::apply("co-owner"),
        &Patch::Apply(&same),
    )
    .await
    .expect("applying the value a field already has is no conflict");
    let forced = cms
        .patch(
            "shared",
            &PatchParams::apply("applier").force(),
            &Patch::Apply(&applied),
        )
        .await
        .expect("forced apply");
    let owners: Vec<(String, String)> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        owners,
        [
            ("creator".to_string(), "Update".to_string()),
            ("co-owner".to_string(), "Apply".to_string()),
            ("applier".to_string(), "Apply".to_string())
        ],
        "the creator keeps data.b, which the forced apply did not touch"
    );
}
