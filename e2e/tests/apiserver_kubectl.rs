//! The local API server through the real kubectl, with kubectl's defaults (aggregated
//! discovery, OpenAPI download for validation, `fieldValidation=Strict`, tables): apply and
//! re-apply, get in every output, label, the three patch types, delete, the BrokerGroup CRD
//! with printer columns, short name, `explain` and CEL rejections, `wait`, `get -w`, `describe` with
//! events, owner garbage collection, and `port-forward` (WebSocket-tunneled and plain SPDY). Each test starts its own server on 127.0.0.1:0 and
//! writes its kubeconfig and kubectl cache into a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use duomq_e2e::apiserver::{self, ApiServerHandle, ApiServerOptions};
use duomq_operator::api::BrokerGroup;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How long one kubectl command may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a running `kubectl get -w` may take to print a change.
const WATCH_OUTPUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the garbage collector may take to remove a dependent.
const GC_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A server and a kubectl configured for it.
struct Cluster {
    server: ApiServerHandle,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let found = std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "kubectl is needed for these tests and was not found on PATH (install kubectl 1.32 or newer): {found:?}"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = apiserver::start(ApiServerOptions {
            listen: vec!["127.0.0.1:0".parse().expect("literal address")],
            kubeconfig: Some(dir.path().join("kubeconfig")),
            watch_history: 1000,
        })
        .await
        .expect("api server starts");
        Self { server, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.server.kubeconfig_path().expect("kubeconfig written"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl with `stdin`; returns (success, stdout, stderr).
    async fn run(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = self.command(args).spawn().expect("kubectl starts");
        if let Some(mut input) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            input
                .write_all(stdin.as_bytes())
                .await
                .expect("write kubectl stdin");
        }
        let output = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!("kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}")
            })
            .expect("kubectl output");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "").await
    }

    async fn ok_with(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.run(args, stdin).await;
        assert!(ok, "kubectl {args:?} failed:\n{err}\n{out}");
        out
    }

    async fn fails(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.run(args, stdin).await;
        assert!(!ok, "kubectl {args:?} should have failed:\n{out}");
        err
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("kubectl printed JSON")
    }

    async fn install_brokergroups(&self) {
        let crd = repo_file("crds/brokergroups.duomq.io.yaml");
        let out = self
            .ok(&["apply", "-f", crd.to_str().expect("utf-8 path")])
            .await;
        assert!(
            out.contains(
                "customresourcedefinition.apiextensions.k8s.io/brokergroups.duomq.io created"
            ),
            "{out}"
        );
        let pair = repo_file("manifests/examples/pair.yaml");
        let out = self
            .ok(&["apply", "-f", pair.to_str().expect("utf-8 path")])
            .await;
        assert!(out.contains("brokergroup.duomq.io/pair created"), "{out}");
    }
}

/// Polls `probe` until it yields a value or `timeout` passes.
async fn until<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let found = duomq_testkit::eventually_ok_every(what, timeout, POLL_INTERVAL, || {
        let next = probe();
        async move { next.await.ok_or("not yet") }
    })
    .await;
    found.unwrap_or_else(|e| panic!("{e}"))
}

const CONFIGMAP_V1: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  keep: \"1\"
  drop: \"2\"
";

const CONFIGMAP_V2: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  keep: \"1\"
  added: \"3\"
";

#[tokio::test]
async fn given_configmap_yaml_when_applied_labelled_patched_and_deleted_should_work_like_a_cluster()
{
    let k = Cluster::start().await;
    let out = k.ok_with(&["apply", "-f", "-"], CONFIGMAP_V1).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let out = k.ok_with(&["apply", "-f", "-"], CONFIGMAP_V2).await;
    assert!(out.contains("configmap/settings configured"), "{out}");
    let out = k.ok_with(&["apply", "-f", "-"], CONFIGMAP_V2).await;
    assert!(out.contains("configmap/settings unchanged"), "{out}");

    let yaml = k.ok(&["get", "configmap", "settings", "-o", "yaml"]).await;
    assert!(
        yaml.contains("added: \"3\"") && !yaml.contains("drop:"),
        "re-apply removes dropped keys:\n{yaml}"
    );
    assert!(
        yaml.contains("resourceVersion:")
            && yaml.contains("uid:")
            && yaml.contains("creationTimestamp:"),
        "{yaml}"
    );

    k.ok(&["label", "configmap", "settings", "tier=web"]).await;
    let shown = k
        .ok(&[
            "get",
            "configmaps",
            "--show-labels",
            "-l",
            "tier in (web),app",
        ])
        .await;
    assert!(
        shown.contains("settings") && shown.contains("app=demo,tier=web"),
        "{shown}"
    );
    assert!(k.ok(&["get", "cm", "-l", "tier!=web"]).await.is_empty());

    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"merge":"m"}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/json","value":"j"}]"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "strategic",
        "-p",
        r#"{"data":{"strategic":"s"}}"#,
    ])
    .await;
    let data = k.json(&["get", "configmap", "settings"]).await["data"].clone();
    assert_eq!(
        data,
        json!({"keep": "1", "added": "3", "merge": "m", "json": "j", "strategic": "s"})
    );

    let out = k.ok(&["delete", "configmap", "settings"]).await;
    assert!(out.contains("configmap \"settings\" deleted"), "{out}");
    let err = k.fails(&["get", "configmap", "settings"], "").await;
    assert!(err.contains("configmaps \"settings\" not found"), "{err}");
}

#[tokio::test]
async fn given_kubectl_create_generators_when_they_send_protobuf_should_create_the_objects() {
    let k = Cluster::start().await;
    k.ok(&["create", "namespace", "team-a"]).await;
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
        "-n",
        "team-a",
    ])
    .await;
    k.ok(&[
        "create",
        "secret",
        "generic",
        "credentials",
        "--from-literal=password=s3cret",
        "-n",
        "team-a",
    ])
    .await;
    k.ok(&["create", "serviceaccount", "bot", "-n", "team-a"])
        .await;
    let cm = k
        .json(&["get", "configmap", "settings", "-n", "team-a"])
        .await;
    assert_eq!(cm["data"], json!({"mode": "fast"}));
    let secret = k
        .json(&["get", "secret", "credentials", "-n", "team-a"])
        .await;
    assert_eq!(secret["data"]["password"], "czNjcmV0", "base64 of s3cret");
    assert_eq!(secret["type"], "Opaque");
    assert!(k
        .ok(&["get", "serviceaccounts", "-n", "team-a"])
        .await
        .contains("bot"));
    let out = k.ok(&["delete", "namespace", "team-a"]).await;
    assert!(out.contains("namespace \"team-a\" deleted"), "{out}");
    let err = k.fails(&["get", "namespace", "team-a"], "").await;
    assert!(err.contains("not found"), "{err}");
}

/// `kubectl patch` (strategic merge) of the image of the deployment's `app` container.
async fn set_app_image(k: &Cluster, image: &str) {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    k.ok(&["patch", "deployment", "web", "-p", &patch.to_string()])
        .await;
}

#[tokio::test]
async fn given_deployment_when_strategic_patched_should_merge_containers_by_name() {
    let k = Cluster::start().await;
    let deployment = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: 'app:1', env: [{name: A, value: '1'}]}
      - {name: sidecar, image: 'sidecar:1'}
";
    k.ok_with(&["apply", "-f", "-"], deployment).await;
    set_app_image(&k, "app:2").await;
    let d = k.json(&["get", "deployment", "web"]).await;
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "app:2");
    assert_eq!(
        containers[0]["env"][0]["name"], "A",
        "fields of the patched container are kept"
    );
    assert_eq!(
        containers[1]["name"], "sidecar",
        "other containers are kept"
    );
    assert_eq!(d["metadata"]["generation"], 2);

    let without_sidecar = deployment.replace("      - {name: sidecar, image: 'sidecar:1'}\n", "");
    k.ok_with(&["apply", "-f", "-"], &without_sidecar).await;
    let d = k.json(&["get", "deployment", "web"]).await;
    let names: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["app"], "re-applying without a container removes it");

    set_app_image(&k, "app:3").await;
    let conflict = k
        .fails(&["apply", "--server-side", "-f", "-"], deployment)
        .await;
    assert!(
        conflict.contains("conflict with \"kubectl-patch\"")
            && conflict.contains(".spec.template.spec.containers[name=\"app\"].image"),
        "the image kubectl patch set is owned by it:\n{conflict}"
    );
    let out = k
        .ok_with(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            deployment,
        )
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let before = k.json(&["get", "deployment", "web"]).await;
    k.ok_with(&["apply", "--server-side", "-f", "-"], deployment)
        .await;
    let after = k.json(&["get", "deployment", "web"]).await;
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "an unchanged server-side apply writes nothing"
    );
}

#[tokio::test]
async fn given_brokergroup_crd_when_used_with_kubectl_should_print_columns_and_reject_invalid_specs(
) {
    let k = Cluster::start().await;
    k.install_brokergroups().await;

    let table = k.ok(&["get", "brokergroups"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "GROUPS", "LIVE", "REPLICATED", "LINKED", "FAILOVERS", "SWITCHOVERS", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["pair", "1"], "{table}");
    assert!(k.ok(&["get", "bg"]).await.contains("pair"), "short name");
    assert!(k.ok(&["get", "duomq"]).await.contains("pair"), "category");
    let explained = k.ok(&["explain", "brokergroup.spec.ha"]).await;
    assert!(
        explained.contains("KIND:       BrokerGroup") && explained.contains("allowFailback"),
        "{explained}"
    );
    let applied = k.json(&["get", "bg", "pair"]).await;
    assert_eq!(
        applied["spec"]["ports"]["stomp"], 61613,
        "schema defaults applied"
    );

    let invalid = "apiVersion: duomq.io/v1alpha1
kind: BrokerGroup
metadata: {name: lonely}
spec: {backupsPerGroup: 0}
";
    let err = k.fails(&["apply", "-f", "-"], invalid).await;
    assert!(
        err.contains("The BrokerGroup \"lonely\" is invalid: spec: Invalid value: \"object\": replication needs a backup to replicate to: set backupsPerGroup to 1 or more"),
        "{err}"
    );
    // A size in the wrong units names the field and says what to write, not a raw
    // evaluation error; a root-level rule names the field it is about, not `<nil>`.
    let gigabytes = "apiVersion: duomq.io/v1alpha1
kind: BrokerGroup
metadata: {name: gigabytes}
spec: {storage: {size: 1GB}}
";
    let err = k.fails(&["apply", "-f", "-"], gigabytes).await;
    assert!(
        err.contains("spec.storage.size: Invalid value: \"string\": storage.size must be a positive Kubernetes quantity such as 10Gi")
            && err.contains("write 1G or 1Gi"),
        "{err}"
    );
    let itself = "apiVersion: duomq.io/v1alpha1
kind: BrokerGroup
metadata: {name: loop}
spec: {networkConnectors: [{name: back, brokerGroup: loop}]}
";
    let err = k.fails(&["apply", "-f", "-"], itself).await;
    assert!(
        err.contains("spec.networkConnectors: Invalid value: \"array\": a network connector cannot point at its own BrokerGroup")
            && !err.contains("<nil>"),
        "{err}"
    );
    let unknown = "apiVersion: duomq.io/v1alpha1
kind: BrokerGroup
metadata: {name: typo}
spec: {backupsPerGrop: 1}
";
    let err = k.fails(&["apply", "-f", "-"], unknown).await;
    assert!(
        err.contains("unknown field \"spec.backupsPerGrop\""),
        "strict field validation:\n{err}"
    );
}

#[tokio::test]
async fn given_wait_for_available_when_the_status_gets_the_condition_should_return() {
    let k = Cluster::start().await;
    k.install_brokergroups().await;
    let mut wait = k
        .command(&[
            "wait",
            "--for=condition=Available",
            "brokergroup/pair",
            "--timeout=60s",
        ])
        .spawn()
        .expect("kubectl wait starts");
    let groups: Api<BrokerGroup> = Api::default_namespaced(k.server.client());
    let status = json!({"apiVersion": "duomq.io/v1alpha1", "kind": "BrokerGroup", "status": {"conditions": [{
        "type": "Available", "status": "True", "reason": "LiveAndSynced", "message": "1/1 groups live",
        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}]}});
    groups
        .patch_status(
            "pair",
            &PatchParams::apply("duomq-operator").force(),
            &Patch::Apply(status),
        )
        .await
        .expect("status applied");
    let finished = tokio::time::timeout(KUBECTL_TIMEOUT, wait.wait())
        .await
        .expect("kubectl wait returns")
        .expect("exit status");
    let mut out = String::new();
    if let Some(mut stdout) = wait.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .await
            .expect("read wait output");
    }
    assert!(finished.success(), "kubectl wait failed: {out}");
    assert!(out.contains("condition met"), "{out}");
}

#[tokio::test]
async fn given_kubectl_get_watch_when_an_object_changes_should_print_the_change() {
    let k = Cluster::start().await;
    k.ok_with(&["apply", "-f", "-"], CONFIGMAP_V1).await;
    let mut watch = k
        .command(&["get", "configmaps", "-w", "--show-labels"])
        .spawn()
        .expect("kubectl get -w starts");
    let mut stdout = watch.stdout.take().expect("stdout piped");
    let printed = std::sync::Arc::new(tokio::sync::Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                printed
                    .lock()
                    .await
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    until(
        "kubectl get -w to print the initial list",
        WATCH_OUTPUT_TIMEOUT,
        || {
            let printed = printed.clone();
            async move { printed.lock().await.contains("settings").then_some(()) }
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::default_namespaced(k.server.client());
    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"changed": "now"}}})),
    )
    .await
    .expect("label while watching");
    until(
        "kubectl get -w to print the change",
        WATCH_OUTPUT_TIMEOUT,
        || {
            let printed = printed.clone();
            async move { printed.lock().await.contains("changed=now").then_some(()) }
        },
    )
    .await;
    watch.kill().await.expect("stop kubectl get -w");
    reader.abort();
}

#[tokio::test]
async fn given_events_for_a_brokergroup_when_described_should_show_them() {
    let k = Cluster::start().await;
    k.install_brokergroups().await;
    let groups: Api<BrokerGroup> = Api::default_namespaced(k.server.client());
    let pair = groups.get("pair").await.expect("pair");
    let recorder = Recorder::new(
        k.server.client(),
        Reporter {
            controller: "duomq-operator".into(),
            instance: None,
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "FailedOver".into(),
        note: Some("group 0: pair-0-1 took over from pair-0-0".into()),
        action: "Failover".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &pair.object_ref(&()))
        .await
        .expect("event published");
    recorder
        .publish(&event, &pair.object_ref(&()))
        .await
        .expect("event published again");
    let described = k.ok(&["describe", "brokergroup", "pair"]).await;
    let events = described.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("FailedOver") && events.contains("pair-0-1 took over from pair-0-0"),
        "{described}"
    );
    let listed = k.ok(&["get", "events"]).await;
    assert!(listed.contains("brokergroup/pair"), "{listed}");
}

#[tokio::test]
async fn given_owned_configmap_when_the_owner_is_deleted_should_be_garbage_collected() {
    let k = Cluster::start().await;
    k.ok_with(&["apply", "-f", "-"], CONFIGMAP_V1).await;
    let owner_uid = k.json(&["get", "configmap", "settings"]).await["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let owned = format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: owned
  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: settings, uid: {owner_uid}, controller: true}}]
data: {{x: \"1\"}}
"
    );
    k.ok_with(&["apply", "-f", "-"], &owned).await;
    k.ok(&["delete", "configmap", "settings"]).await;
    until(
        "the owned ConfigMap to be collected",
        GC_TIMEOUT,
        || async {
            let (ok, _, err) = k.run(&["get", "configmap", "owned"], "").await;
            (!ok && err.contains("not found")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn given_finalizer_when_waiting_for_delete_should_return_once_it_is_removed() {
    let k = Cluster::start().await;
    let held = "apiVersion: v1
kind: ConfigMap
metadata: {name: held, finalizers: [duomq.io/test]}
";
    k.ok_with(&["apply", "-f", "-"], held).await;
    k.ok(&["delete", "configmap", "held", "--wait=false"]).await;
    assert!(
        k.json(&["get", "configmap", "held"]).await["metadata"]["deletionTimestamp"].is_string()
    );
    let mut wait = k
        .command(&["wait", "--for=delete", "configmap/held", "--timeout=60s"])
        .spawn()
        .expect("kubectl wait starts");
    k.ok(&[
        "patch",
        "configmap",
        "held",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let finished = tokio::time::timeout(KUBECTL_TIMEOUT, wait.wait())
        .await
        .expect("kubectl wait returns")
        .expect("exit status");
    assert!(finished.success(), "kubectl wait --for=delete failed");
}

/// Applies a pod of one container on node-1 and sets its `status` as a kubelet would.
async fn scheduled_pod(k: &Cluster, name: &str, image: &str, status: Value) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": image}]}});
    k.ok_with(&["apply", "-f", "-"], &pod.to_string()).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(k.server.client());
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.expect("status");
}

#[tokio::test]
async fn given_running_pod_when_listed_and_deleted_should_show_ready_status_then_terminating() {
    let k = Cluster::start().await;
    let status = json!({"status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{
        "name": "main", "ready": true, "restartCount": 2, "image": "duomq/broker:1", "imageID": "",
        "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}});
    scheduled_pod(&k, "broker-0", "duomq/broker:1", status).await;
    let wide = k.ok(&["get", "pods", "-o", "wide"]).await;
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["broker-0", "1/1", "Running", "2"], "{wide}");
    assert!(
        row.contains(&"10.0.0.5") && row.contains(&"node-1"),
        "{wide}"
    );
    k.ok(&["delete", "pod", "broker-0", "--wait=false"]).await;
    let listed = k.ok(&["get", "pods"]).await;
    assert!(
        listed.contains("Terminating"),
        "a scheduled pod waits for its kubelet:\n{listed}"
    );
    k.ok(&["delete", "pod", "broker-0", "--grace-period=0", "--force"])
        .await;
    let err = k.fails(&["get", "pod", "broker-0"], "").await;
    assert!(err.contains("not found"), "{err}");
}

/// A TCP echo server on a loopback port, standing in for a pod's container.
async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.into_split();
                tokio::io::copy(&mut read, &mut write).await.ok();
            });
        }
    });
    port
}

/// Writes `text` through `address` and reads it back.
async fn echoes(address: std::net::SocketAddr, text: &str) -> std::io::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(address).await?;
    socket.write_all(text.as_bytes()).await?;
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(KUBECTL_TIMEOUT, socket.read_exact(&mut got)).await??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[rstest::rstest]
#[case::websocket_tunnel("true")]
#[case::spdy_upgrade("false")]
#[tokio::test]
async fn given_a_running_pod_when_kubectl_port_forwards_to_it_should_carry_bytes_both_ways_until_the_pod_is_gone(
    #[case] websockets: &str,
) {
    use duomq_e2e::forward::PortForward;
    let k = Cluster::start().await;
    // The pod's IP is this machine's loopback, where the echo server listens.
    scheduled_pod(&k, "echo-0", "echo:1", json!({"status": {"phase": "Running", "podIP": "127.0.0.1"}})).await;
    let port = echo_server().await;
    let kubeconfig = k.server.kubeconfig_path().expect("kubeconfig written");
    let start = |port: u16| {
        let mut command = PortForward::command(kubeconfig, "default", "pod/echo-0", port);
        // kubectl tries WebSocket first; "false" makes it use the SPDY upgrade directly.
        command.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets);
        PortForward::spawn(command, "pod/echo-0")
    };

    let mut forward = start(port).await.expect("kubectl port-forward starts");
    let address = forward.local_addr();
    let large = "x".repeat(200_000);
    let (one, two) = tokio::join!(echoes(address, "first connection"), echoes(address, &large));
    assert_eq!(one.expect("first echo"), "first connection");
    assert_eq!(two.expect("second echo").len(), 200_000);
    assert_eq!(echoes(address, "again").await.expect("a later connection"), "again");
    assert!(!forward.stopped(), "kubectl keeps forwarding after connections closed");

    // Nothing listens on the port: kubectl prints the error and stops forwarding.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        l.local_addr().expect("address").port()
    };
    let mut refused = start(closed).await.expect("kubectl port-forward starts");
    assert!(echoes(refused.local_addr(), "x").await.is_err(), "a refused connection is closed");
    until("kubectl to stop after the refused connection", KUBECTL_TIMEOUT, || std::future::ready(refused.stopped().then_some(()))).await;

    // A force-deleted pod: the next connection fails and kubectl stops.
    k.ok(&["delete", "pod", "echo-0", "--grace-period=0", "--force"]).await;
    assert!(echoes(address, "gone").await.is_err(), "no echo from a deleted pod");
    until("kubectl to stop after the pod was deleted", KUBECTL_TIMEOUT, || std::future::ready(forward.stopped().then_some(()))).await;
}
