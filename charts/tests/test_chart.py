"""Offline checks of what duomq installs: the Helm chart, manifests/install.yaml, the CRDs,
the operator's rendered objects (operator/tests/snapshots) and the example BrokerGroups
(manifests/examples). Run by `cargo test -p duomq-operator --test chart`, or directly
with `python3 -m pytest charts/tests -q` from the repository root.

Nothing here is skipped: a missing generated file fails with the command that makes it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
import yaml

import helmtool
import kubecheck
from helmtool import CHART_DIR, INSTALL_BUNDLE, INSTALL_NAMESPACE, REPO_ROOT

CRD_DIR = REPO_ROOT / "crds"
CHART_CRD_DIR = CHART_DIR / "crds"
BROKERGROUP_CRD = CRD_DIR / "brokergroups.duomq.io.yaml"
BROKERGROUP_VERSION = "v1alpha1"
SNAPSHOT_DIR = REPO_ROOT / "operator" / "tests" / "snapshots"
EXAMPLE_DIR = REPO_ROOT / "manifests" / "examples"
GENERATE = "run scripts/generate"

#: The value sets the chart is checked with: its defaults, and one watched namespace.
VALUE_SETS = {
    "default": {},
    "watchNamespace=team-a": {"watchNamespace": "team-a"},
}


def relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def show(problems: list[str]) -> str:
    return "\n".join(["", *problems])


def objects_of(values: dict, crds: bool = False) -> list[dict]:
    """The objects the chart renders with `values`; the CRDs only when `crds` is true."""
    return kubecheck.load_documents(helmtool.render(CHART_DIR, values, INSTALL_NAMESPACE, include_crds=crds))


def only(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"want one {kind}, the chart rendered {len(found)}"
    return found[0]


def operator_container(objects: list[dict]) -> dict:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def operator_rbac(objects: list[dict], kind: str) -> dict:
    """The operator's main Role/RoleBinding (or Cluster ones), not the leader-election pair."""
    found = [o for o in objects if o["kind"] == kind and not o["metadata"]["name"].endswith("-leader-election")]
    assert len(found) == 1, f"want one {kind} of the operator, the chart rendered {len(found)}"
    return found[0]


def require_brokergroup_crd() -> dict:
    assert BROKERGROUP_CRD.is_file(), (
        f"{relative(BROKERGROUP_CRD)} is missing: it is generated from the operator's Rust types "
        f"by `cargo run -p duomq-operator -- generate`; {GENERATE}"
    )
    return kubecheck.load_crd(BROKERGROUP_CRD)


# --- the chart ------------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_given_chart_when_linted_strictly_should_find_no_problem(values):
    problems = helmtool.lint(CHART_DIR, values)
    assert not problems, f"helm lint --strict found problems:{show(problems)}"


SCHEMA_VIOLATIONS = {
    "unknown top-level key (replicas is now replicaCount)": {"replicas": 1},
    "replicaCount not an integer": {"replicaCount": "two"},
    "replicaCount negative": {"replicaCount": -1},
    "logFormat not text or json": {"logFormat": "xml"},
    "watchNamespace not a DNS label": {"watchNamespace": "Team_A"},
    "metrics port below 1024": {"metrics": {"port": 80}},
    "unknown image key": {"image": {"digest": "sha256:00"}},
    "pullPolicy not a Kubernetes one": {"image": {"pullPolicy": "Sometimes"}},
    "imagePullSecrets as strings": {"imagePullSecrets": ["regcred"]},
    "podLabels value not a string": {"podLabels": {"team": 7}},
    "unknown monitoring key": {"monitoring": {"serviceMonitor": {"enabled": True}}},
    "scrape interval not a duration": {"monitoring": {"podMonitor": {"interval": "30 seconds"}}},
    "disk threshold of 100 percent": {"monitoring": {"prometheusRule": {"diskFreePercent": 100}}},
    "replication lag threshold not a number": {"monitoring": {"prometheusRule": {"replicationLagBytes": "64Mi"}}},
    "lease duration not whole seconds": {"leaderElection": {"leaseDuration": "1500ms"}},
    "renew interval not a duration": {"leaderElection": {"renewInterval": "often"}},
    "dashboard namespace not a DNS label": {"monitoring": {"grafanaDashboard": {"namespace": "Grafana"}}},
}


@pytest.mark.parametrize("values", SCHEMA_VIOLATIONS.values(), ids=SCHEMA_VIOLATIONS.keys())
def test_given_values_breaking_the_schema_when_installed_should_be_rejected(values):
    assert helmtool.lint(CHART_DIR, values), f"helm lint accepted {values}"
    with pytest.raises(helmtool.helm.HelmValuesError):
        helmtool.render(CHART_DIR, values)


def test_given_every_value_documented_when_schema_read_should_list_each_top_level_value():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema.get("additionalProperties") is False
    assert set(values) == set(schema["properties"]), (
        "values.yaml and values.schema.json list different top-level values"
    )
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")):
            assert i > 0 and lines[i - 1].startswith("#"), f"values.yaml: {line!r} has no comment above it"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_given_rendered_chart_when_validated_strictly_should_be_valid_kubernetes_1_33(values):
    objects = objects_of(values, crds=True)
    assert "CustomResourceDefinition" in [o["kind"] for o in objects], f"the chart holds no CRD: {GENERATE}"
    problems = kubecheck.validate_objects(objects, f"chart with {values or 'default values'}")
    assert not problems, f"kubernetes-validate --strict {kubecheck.KUBERNETES_VERSION}:{show(problems)}"


def test_given_default_values_when_rendered_should_watch_every_namespace_with_a_cluster_role():
    objects = objects_of({})
    kinds = [o["kind"] for o in objects]
    assert kinds == ["PodDisruptionBudget", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                     "RoleBinding", "Service", "Deployment"], kinds
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": only(objects, "ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "duomq-operator",
                                    "namespace": INSTALL_NAMESPACE}]
    assert "--namespace" not in operator_container(objects)["args"]


def test_given_watch_namespace_when_rendered_should_grant_nothing_cluster_wide():
    objects = objects_of({"watchNamespace": "team-a"})
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role, binding = operator_rbac(objects, "Role"), operator_rbac(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == "team-a"
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "duomq-operator",
                                    "namespace": INSTALL_NAMESPACE}]
    args = operator_container(objects)["args"]
    assert args[-2:] == ["--namespace", "team-a"], args
    for obj in objects:
        if obj["kind"] not in ("Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == INSTALL_NAMESPACE, kubecheck.describe(obj)


#: Exactly what the operator needs (resource, verbs); anything more or less is a failure.
LEAST_PRIVILEGE = {
    ("duomq.io", "brokergroups"): {"get", "list", "watch", "patch", "update"},
    ("duomq.io", "brokergroups/status"): {"get", "patch", "update"},
    ("duomq.io", "brokergroups/finalizers"): {"update"},
    **{("", r): {"get", "list", "watch", "create", "patch", "update", "delete"}
       for r in ("configmaps", "secrets", "services", "serviceaccounts", "persistentvolumeclaims")},
    ("", "pods"): {"get", "list", "watch", "patch", "delete"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "list", "watch", "create", "patch", "update",
                                                    "delete"},
    ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "events"): {"create", "patch"},
}

#: What the operator's per-BrokerGroup Roles grant broker pods; RBAC lets it grant only what it holds.
BROKER_POD_LEASE_VERBS = {"get", "list", "watch", "create", "update", "patch"}


@pytest.mark.parametrize("values,kind", [({}, "ClusterRole"), ({"watchNamespace": "team-a"}, "Role")],
                         ids=["ClusterRole", "Role"])
def test_given_rbac_when_rendered_should_grant_exactly_the_least_privilege(values, kind):
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in operator_rbac(objects_of(values), kind)["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], f"wildcard in {rule}"
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == LEAST_PRIVILEGE
    assert BROKER_POD_LEASE_VERBS <= granted[("coordination.k8s.io", "leases")]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_given_leader_election_when_rendered_should_grant_leases_in_the_release_namespace_only(values):
    objects = objects_of(values)
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader-election"))
    binding = next(o for o in objects
                   if o["kind"] == "RoleBinding" and o["metadata"]["name"] == role["metadata"]["name"])
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == INSTALL_NAMESPACE
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "watch", "create", "update", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "duomq-operator",
                                    "namespace": INSTALL_NAMESPACE}]


def test_given_default_values_when_rendered_should_run_two_operators_spread_and_guarded():
    objects = objects_of({})
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]
    budget = only(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1 and "maxUnavailable" not in budget["spec"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    single = objects_of({"replicaCount": 1})
    assert only(single, "Deployment")["spec"]["replicas"] == 1
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"], (
        "minAvailable 1 over one pod would block every node drain")


def test_given_default_values_when_rendered_should_run_the_operator_binary_contract():
    objects = objects_of({})
    container = operator_container(objects)
    assert container["image"] == "duomq/operator:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container, "the image's entrypoint is duomq-operator"
    assert container["args"] == ["run", "--listen", "0.0.0.0:8080"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RUST_LOG"]["value"] == "info,kube=warn"
    assert env["DUOMQ_OPERATOR_LOG_FORMAT"]["value"] == "text"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {k: env[k]["value"] for k in env if k.startswith("DUOMQ_OPERATOR_") and "LOG" not in k} == {
        "DUOMQ_OPERATOR_LEASE_DURATION": "15s", "DUOMQ_OPERATOR_RENEW_DEADLINE": "10s",
        "DUOMQ_OPERATOR_RENEW_INTERVAL": "5s", "DUOMQ_OPERATOR_RETRY_INTERVAL": "2s"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                      "limits": {"memory": "256Mi"}}
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 8080, "targetPort": "http",
                                         "protocol": "TCP"}]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pod_spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]


def test_given_values_when_rendered_should_reach_the_pod():
    values = {
        "image": {"repository": "acme/duomq-operator", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "logLevel": "debug,kube=info", "logFormat": "json",
        "metrics": {"port": 9090},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "podLabels": {"team": "messaging"}, "podAnnotations": {"example.com/scrape": "true"},
        "replicaCount": 0,
        "leaderElection": {"leaseDuration": "30s", "renewDeadline": "20s", "renewInterval": "3s",
                           "retryInterval": "500ms"},
    }
    objects = objects_of(values)
    assert not kubecheck.validate_objects(objects, "chart with every value set")
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]
    container = operator_container(objects)
    assert deployment["spec"]["replicas"] == 0
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"], "no budget for a paused operator"
    assert container["image"] == "acme/duomq-operator:dev"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == ["run", "--listen", "0.0.0.0:9090"]
    assert {e["name"]: e.get("value") for e in container["env"]}["RUST_LOG"] == "debug,kube=info"
    assert {e["name"]: e.get("value") for e in container["env"]}["DUOMQ_OPERATOR_LOG_FORMAT"] == "json"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["DUOMQ_OPERATOR_LEASE_DURATION"], env["DUOMQ_OPERATOR_RENEW_DEADLINE"],
            env["DUOMQ_OPERATOR_RENEW_INTERVAL"], env["DUOMQ_OPERATOR_RETRY_INTERVAL"]) == ("30s", "20s", "3s", "500ms")
    assert container["ports"][0]["containerPort"] == 9090
    assert only(objects, "Service")["spec"]["ports"][0]["port"] == 9090
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod["spec"][key] == values[key]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["labels"]["team"] == "messaging"
    assert pod["metadata"]["annotations"] == {"example.com/scrape": "true"}


def test_given_default_values_when_rendered_should_meet_the_restricted_pod_security_standard():
    objects = objects_of({})
    pod_spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not pod_spec.get("hostNetwork") and not pod_spec.get("volumes")


def test_given_service_monitor_enabled_when_rendered_should_scrape_the_metrics_port():
    objects = objects_of({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                         "labels": {"release": "prometheus"}}}})
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": service["spec"]["ports"][0]["name"],
                                             "path": "/metrics", "interval": "15s"}]
    assert not [o for o in objects_of({}) if o["kind"] == "ServiceMonitor"]


def test_given_install_notes_when_rendered_should_tell_how_to_find_the_leader_and_get_the_plugin():
    text = helmtool.notes(CHART_DIR, {})
    assert f"kubectl -n {INSTALL_NAMESPACE} get lease duomq-operator-leader" in text
    assert "2 operator pods elect a leader" in text
    assert "cargo install --locked --path plugin" in text and "kubectl-duomq on your PATH" in text
    for command in ("status", "switchover", "fence", "unfence", "hibernate", "resume", "logs"):
        assert f"kubectl duomq {command} NAME" in text, command
    assert "Monitoring:" not in text
    scoped = helmtool.notes(CHART_DIR, {"watchNamespace": "team-a", "replicaCount": 1,
                                        "monitoring": {"prometheusRule": {"enabled": True}}})
    assert "kubectl duomq status NAME -n team-a" in scoped and "no standby" in scoped
    assert "PrometheusRule duomq-operator" in scoped and "enable\n  monitoring.podMonitor" in scoped


# --- generated files and drift ---------------------------------------------------------------

def test_given_generated_crds_when_copied_into_the_chart_should_be_identical():
    generated = sorted(p.name for p in CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []
    assert generated, f"no CRD under {relative(CRD_DIR)}/: {GENERATE}"
    copied = sorted(p.name for p in CHART_CRD_DIR.glob("*.yaml")) if CHART_CRD_DIR.is_dir() else []
    assert copied == generated, (
        f"{relative(CHART_CRD_DIR)}/ holds {copied}, {relative(CRD_DIR)}/ holds {generated}: {GENERATE}"
    )
    stale = [name for name in generated if (CRD_DIR / name).read_bytes() != (CHART_CRD_DIR / name).read_bytes()]
    assert not stale, f"the chart's copies of {stale} differ from {relative(CRD_DIR)}/: {GENERATE}"


def test_given_chart_when_rendered_now_should_equal_manifests_install_yaml():
    assert INSTALL_BUNDLE.is_file(), f"{relative(INSTALL_BUNDLE)} is missing: {GENERATE}"
    expected = helmtool.install_bundle(CHART_DIR, INSTALL_NAMESPACE)
    actual = INSTALL_BUNDLE.read_text()
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(
            actual.splitlines(keepends=True), expected.splitlines(keepends=True),
            fromfile=relative(INSTALL_BUNDLE), tofile="chart rendered now"))[:60])
        pytest.fail(f"{relative(INSTALL_BUNDLE)} is out of date: {GENERATE}\n{diff}")


def test_given_install_yaml_when_validated_should_be_valid_kubernetes_with_namespace_first():
    assert INSTALL_BUNDLE.is_file(), f"{relative(INSTALL_BUNDLE)} is missing: {GENERATE}"
    objects = kubecheck.load_file(INSTALL_BUNDLE)
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == INSTALL_NAMESPACE
    assert "CustomResourceDefinition" in [o["kind"] for o in objects], f"no CRD in it: {GENERATE}"
    problems = kubecheck.validate_objects(objects, relative(INSTALL_BUNDLE))
    assert not problems, show(problems)


def test_given_crds_when_validated_should_be_valid_apiextensions_v1_objects():
    files = sorted(CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []
    assert files, f"no CRD under {relative(CRD_DIR)}/: {GENERATE}"
    problems = []
    for path in files:
        objects = kubecheck.load_file(path)
        for crd in objects:
            if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
                problems.append(f"{relative(path)}: {kubecheck.describe(crd)} is not an apiextensions.k8s.io/v1 CRD")
                continue
            spec = crd["spec"]
            if crd["metadata"]["name"] != f"{spec['names']['plural']}.{spec['group']}":
                problems.append(f"{relative(path)}: name must be <plural>.<group>")
            if path.name != f"{crd['metadata']['name']}.yaml":
                problems.append(f"{relative(path)}: file name should be {crd['metadata']['name']}.yaml")
            if len([v for v in spec["versions"] if v.get("storage")]) != 1:
                problems.append(f"{relative(path)}: exactly one version must be the storage version")
            for version in spec["versions"]:
                schema = kubecheck.crd_json_schema(crd, version["name"])
                problems.extend(f"{relative(path)}: {version['name']} schema: {p}"
                                for p in kubecheck.check_json_schema(schema))
        problems.extend(kubecheck.validate_objects(objects, relative(path)))
    assert not problems, show(problems)


def test_given_brokergroup_crd_when_read_should_serve_v1alpha1_with_status():
    crd = require_brokergroup_crd()
    assert crd["spec"]["group"] == "duomq.io"
    assert crd["spec"]["names"]["kind"] == "BrokerGroup"
    assert crd["spec"]["scope"] == "Namespaced"
    version = kubecheck.crd_version(crd, BROKERGROUP_VERSION)
    assert version["served"] and version["storage"]
    assert "status" in version.get("subresources", {}), "the operator patches brokergroups/status"


# --- the operator's rendered objects ---------------------------------------------------------

def test_given_operator_snapshots_when_validated_strictly_should_be_valid_kubernetes_1_33():
    files = sorted(SNAPSHOT_DIR.glob("*.yaml")) if SNAPSHOT_DIR.is_dir() else []
    assert files, (
        f"the operator's snapshots are missing: no {relative(SNAPSHOT_DIR)}/*.yaml (the objects the "
        "operator renders for each example BrokerGroup; the operator's snapshot tests write them)"
    )
    problems = [p for path in files for p in kubecheck.validate_file(path)]
    assert not problems, f"kubernetes-validate --strict {kubecheck.KUBERNETES_VERSION}:{show(problems)}"


#: Hand-made objects of the kinds the operator renders, to show that the validator passes
#: good objects and catches bad ones before any snapshot exists.
BROKER_OBJECTS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: demo-config
  namespace: team-a
  labels: {app.kubernetes.io/name: duomq-broker, app.kubernetes.io/instance: demo, duomq.io/group: "0"}
data:
  broker.yaml: |
    group: demo-0
---
apiVersion: v1
kind: Service
metadata: {name: demo-0, namespace: team-a}
spec:
  selector: {app.kubernetes.io/instance: demo, duomq.io/group: "0", duomq.io/role: live}
  ports:
    - {name: stomp, port: 61613, targetPort: stomp}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: demo-0, namespace: team-a}
spec:
  serviceName: demo-0-members
  replicas: 2
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app.kubernetes.io/instance: demo, duomq.io/group: "0"}
  template:
    metadata:
      labels: {app.kubernetes.io/instance: demo, duomq.io/group: "0"}
    spec:
      serviceAccountName: demo-broker
      containers:
        - name: broker
          image: duomq/broker:0.1.0
          args: [run, --config, /etc/duomq/broker.yaml]
          ports:
            - {name: stomp, containerPort: 61613}
            - {name: cluster, containerPort: 61616}
            - {name: admin, containerPort: 8161}
          readinessProbe:
            httpGet: {path: /readyz, port: admin}
          volumeMounts:
            - {name: config, mountPath: /etc/duomq}
            - {name: data, mountPath: /var/lib/duomq}
      volumes:
        - name: config
          configMap: {name: demo-config}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 10Gi}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: demo-0, namespace: team-a}
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {app.kubernetes.io/instance: demo, duomq.io/group: "0"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: demo-broker, namespace: team-a}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    resourceNames: [demo-0]
    verbs: [get, list, watch, create, update, patch]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: demo-0, namespace: team-a}
spec:
  leaseDurationSeconds: 10
"""


def test_given_hand_made_broker_objects_when_validated_should_pass(tmp_path):
    path = tmp_path / "broker-objects.yaml"
    path.write_text(BROKER_OBJECTS)
    problems = kubecheck.validate_file(path)
    assert not problems, show(problems)
    assert [o["kind"] for o in kubecheck.load_file(path)] == [
        "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "Role", "Lease"]


BROKEN_OBJECTS = {
    "unknown field (strict)": ("  serviceName: demo-0-members\n", "  serviceName: demo-0-members\n  replica: 2\n",
                               "replica"),
    "wrong type": ("  replicas: 2\n", "  replicas: two\n", "'two' is not of type 'integer'"),
    "kind without a schema (WARN)": ("kind: Lease\n", "kind: Leese\n", "WARN"),
    "bad label value": ('duomq.io/group: "0"}\ndata', 'duomq.io/group: "group 0"}\ndata', "label value"),
    "bad Service name": ("metadata: {name: demo-0, namespace: team-a}\nspec:\n  selector",
                         "metadata: {name: 0-demo, namespace: team-a}\nspec:\n  selector", "DNS-1035"),
}


@pytest.mark.parametrize("old,new,expected", BROKEN_OBJECTS.values(), ids=BROKEN_OBJECTS.keys())
def test_given_broken_broker_objects_when_validated_should_fail(tmp_path, old, new, expected):
    assert BROKER_OBJECTS.count(old) == 1, old
    path = tmp_path / "broken.yaml"
    path.write_text(BROKER_OBJECTS.replace(old, new))
    problems = kubecheck.validate_file(path)
    assert len(problems) == 1 and expected in problems[0], show(problems)


# --- example BrokerGroups against the CRD ----------------------------------------------------

def test_given_example_brokergroups_when_checked_against_the_crd_should_be_valid():
    crd = require_brokergroup_crd()
    files = sorted(EXAMPLE_DIR.glob("*.yaml")) if EXAMPLE_DIR.is_dir() else []
    assert files, f"no example BrokerGroup: {relative(EXAMPLE_DIR)}/*.yaml is missing"
    problems = []
    for path in files:
        objects = kubecheck.load_file(path)
        if not objects:
            problems.append(f"{relative(path)}: holds no object")
        for obj in objects:
            problems.extend(kubecheck.validate_custom_resource(obj, crd, BROKERGROUP_VERSION, relative(path)))
    assert not problems, show(problems)


#: A small CRD in the shape kube-rs generates, to show how the CRD check behaves.
MINI_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object", "required": ["spec"],
                "properties": {
                    "spec": {
                        "type": "object",
                        "x-kubernetes-validations": [{"rule": "self.size >= 1", "message": "size"}],
                        "properties": {
                            "size": {"type": "integer", "format": "int32", "minimum": 1, "default": 1},
                            "mode": {"type": "string", "enum": ["a", "b"]},
                            "class": {"type": "string", "nullable": True},
                            "port": {"x-kubernetes-int-or-string": True,
                                     "anyOf": [{"type": "integer"}, {"type": "string"}]},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    },
                    "status": {"type": "object", "nullable": True, "properties": {"ok": {"type": "boolean"}}},
                },
            }},
        }],
    },
}

GOOD_WIDGET = {
    "apiVersion": "example.com/v1alpha1", "kind": "Widget",
    "metadata": {"name": "w", "namespace": "team-a", "labels": {"app": "w"}},
    "spec": {"size": 2, "mode": "a", "class": None, "port": "http", "labels": {"a": "b"},
             "extra": {"anything": [1, 2]}},
}

BAD_WIDGETS = {
    "unknown spec field": ({"spec": {"size": 2, "sise": 3}}, "'sise' was unexpected"),
    "below minimum": ({"spec": {"size": 0}}, "less than the minimum"),
    "not in enum": ({"spec": {"mode": "c"}}, "is not one of"),
    "missing spec": ({"spec": None}, "spec"),
    "wrong apiVersion": ({"apiVersion": "example.com/v1"}, "apiVersion"),
    "wrong kind": ({"kind": "Gadget"}, "kind"),
    "status in a manifest": ({"status": {"ok": True}}, "status"),
    "bad name": ({"metadata": {"name": "W_1"}}, "metadata.name"),
}


def test_given_mini_crd_when_converted_should_be_a_valid_json_schema():
    assert not kubecheck.check_json_schema(kubecheck.crd_json_schema(MINI_CRD, "v1alpha1"))
    assert not kubecheck.validate_objects([MINI_CRD], "MINI_CRD")
    assert not kubecheck.validate_custom_resource(GOOD_WIDGET, MINI_CRD, "v1alpha1", "GOOD_WIDGET")


@pytest.mark.parametrize("change,expected", BAD_WIDGETS.values(), ids=BAD_WIDGETS.keys())
def test_given_bad_custom_resource_when_checked_against_its_crd_should_fail(change, expected):
    widget = {**GOOD_WIDGET, **change}
    widget = {k: v for k, v in widget.items() if v is not None}
    problems = kubecheck.validate_custom_resource(widget, MINI_CRD, "v1alpha1", "widget")
    assert problems and any(expected in p for p in problems), show(problems)
