"""Offline checks of the chart's monitoring bundle: the PodMonitor, the operator's
ServiceMonitor and the PrometheusRule against the Prometheus Operator's CRD schemas
(charts/tests/schemas), the alert expressions through `promtool check rules` and, with
made-up series, `promtool test rules`; every metric an alert or a dashboard panel uses
against what the broker serves (a real broker's /metrics) and the operator registers; the
Grafana dashboard's JSON and each of its queries through promtool.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import helmtool
import kubecheck
import promcheck
from helmtool import CHART_DIR, INSTALL_NAMESPACE, REPO_ROOT

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
MONITORING_GROUP = "monitoring.coreos.com"
DASHBOARD = CHART_DIR / "dashboards" / "duomq.json"

ALL_ON = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboard": {"enabled": True}},
}
#: The value sets every rendered object is validated with.
VALUE_SETS = {
    "monitoring off": {},
    "monitoring on": ALL_ON,
    "monitoring on, watchNamespace=team-a": {**ALL_ON, "watchNamespace": "team-a"},
    "monitoring on, one replica, every value set": {
        **ALL_ON, "replicaCount": 1,
        "monitoring": {
            "podMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}, "noLiveFor": "2m",
                               "backupOutOfSyncFor": "10m", "replicationLagBytes": 1048576,
                               "replicationLagFor": "1m", "connectorDownFor": "15m", "diskFreePercent": 7.5,
                               "fencedFor": "1h", "operatorNoLeaderFor": "5m", "reconcileErrorsFor": "30m"},
            "grafanaDashboard": {"enabled": True, "namespace": "grafana", "labels": {"grafana_dashboard": "1"},
                                 "annotations": {"grafana_folder": "duomq"}},
        },
    },
}

#: Labels Prometheus gives every series of a target the PodMonitor or ServiceMonitor finds
#: (the Prometheus Operator's own relabelings, and the PodMonitor's brokergroup and group).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service", "brokergroup", "group"}
#: Metrics from outside duomq that alerts and panels may use (served by Prometheus itself
#: for every target, by the kubelet's volume stats and by its cAdvisor), and their labels.
EXTERNAL_METRICS = {
    "up": TARGET_LABELS,
    "kubelet_volume_stats_available_bytes": {"namespace", "persistentvolumeclaim"},
    "kubelet_volume_stats_capacity_bytes": {"namespace", "persistentvolumeclaim"},
    "container_memory_working_set_bytes": {"namespace", "pod", "container"},
}
METRIC_PREFIXES = ("duomq_", "kubelet_", "container_", "up")


def objects_of(values: dict) -> list[dict]:
    return kubecheck.load_documents(helmtool.render(CHART_DIR, values, INSTALL_NAMESPACE, include_crds=False))


def only(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"want one {kind}, the chart rendered {len(found)}"
    return found[0]


def monitoring_crds() -> dict[str, dict]:
    """kind -> the vendored CRD of the Prometheus Operator."""
    crds = [kubecheck.load_crd(path) for path in sorted(SCHEMA_DIR.glob("*.yaml"))]
    return {crd["spec"]["names"]["kind"]: crd for crd in crds}


def validate(objects: list[dict], source: str) -> list[str]:
    """Kubernetes kinds against the Kubernetes 1.33 schemas; monitoring.coreos.com kinds
    against the Prometheus Operator's CRD schemas."""
    crds = monitoring_crds()
    problems = []
    for obj in objects:
        if obj["apiVersion"].startswith(MONITORING_GROUP + "/"):
            crd = crds.get(obj["kind"])
            if crd is None:
                problems.append(f"{source}: {kubecheck.describe(obj)}: no vendored schema for {obj['kind']}")
                continue
            problems.extend(kubecheck.validate_custom_resource(obj, crd, "v1", source))
        else:
            problems.extend(kubecheck.validate_objects([obj], source))
    return problems


def rule_groups(values: dict | None = None) -> list[dict]:
    return only(objects_of(values or ALL_ON), "PrometheusRule")["spec"]["groups"]


def alerts(groups: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' nested panels included."""
    out = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target.get("expr", "")))
    return out


#: Dashboard variables as a query sees them when "All" is picked, and Grafana's interval.
DASHBOARD_SUBSTITUTIONS = {"$__rate_interval": "5m", "$namespace": ".*", "$brokergroup": ".*"}


def as_prometheus_query(expr: str) -> str:
    for variable, value in DASHBOARD_SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


# --- schemas ---------------------------------------------------------------------------------

def test_given_vendored_prometheus_operator_schemas_when_read_should_be_valid_crds_for_each_kind():
    crds = monitoring_crds()
    assert set(crds) == {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    for path in SCHEMA_DIR.glob("*.yaml"):
        head = path.read_text().split("apiVersion:")[0]
        assert "prometheus-operator" in head and "Apache-2.0" in head, f"{path.name}: header must name origin and license"
    problems = kubecheck.validate_objects(list(crds.values()), "charts/tests/schemas")
    for crd in crds.values():
        problems.extend(kubecheck.check_json_schema(kubecheck.crd_json_schema(crd, "v1")))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_given_chart_when_rendered_should_validate_against_kubernetes_and_prometheus_operator_schemas(values):
    objects = objects_of(values)
    problems = validate(objects, "chart")
    assert not problems, "\n".join(problems)
    kinds = {o["kind"] for o in objects}
    monitoring = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    if values.get("monitoring"):
        assert monitoring <= kinds and "ConfigMap" in kinds, kinds
    else:
        assert not (monitoring & kinds) and "ConfigMap" not in kinds, "the monitoring bundle must be off by default"


BAD_MONITORING_OBJECTS = {
    "endpoint field misspelt": ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0].update(intreval="30s"),
                                "'intreval' was unexpected"),
    "scrape interval not a duration": ("PodMonitor",
                                       lambda o: o["spec"]["podMetricsEndpoints"][0].update(interval="half a minute"),
                                       "does not match"),
    "PodMonitor without selector": ("PodMonitor", lambda o: o["spec"].pop("selector"), "'selector' is a required"),
    "rule without expr": ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].pop("expr"),
                          "'expr' is a required"),
    "alert for not a duration": ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "1 min"}),
                                 "does not match"),
    "ServiceMonitor scheme unknown": ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(scheme="ftp"),
                                      "is not one of"),
}


@pytest.mark.parametrize("kind,change,expected", BAD_MONITORING_OBJECTS.values(), ids=BAD_MONITORING_OBJECTS.keys())
def test_given_broken_monitoring_object_when_validated_should_fail(kind, change, expected):
    obj = only(objects_of(ALL_ON), kind)
    change(obj)
    problems = validate([obj], "broken")
    assert problems and any(expected in p for p in problems), "\n".join(problems) or "no problem found"


# --- what the objects select -----------------------------------------------------------------

def test_given_pod_monitor_when_rendered_should_scrape_the_admin_port_of_the_operators_broker_pods():
    snapshot = kubecheck.load_file(REPO_ROOT / "operator" / "tests" / "snapshots" / "pair.yaml")
    statefulset = next(o for o in snapshot if o["kind"] == "StatefulSet")
    pod = statefulset["spec"]["template"]
    monitor = only(objects_of(ALL_ON), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    labels = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert labels == {"brokergroup": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                      "group": ["__meta_kubernetes_pod_label_duomq_io_group"]}
    for key in ("app.kubernetes.io/instance", "duomq.io/group"):
        assert key in pod["metadata"]["labels"], f"the broker pods lack {key}, which the relabelings read"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    scoped = only(objects_of({**ALL_ON, "watchNamespace": "team-a"}), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_given_prometheus_rule_when_rendered_should_hold_every_alert_the_on_call_needs():
    names = set(alerts(rule_groups()))
    assert names == {
        "DuomqGroupNoLive", "DuomqGroupNotReplicated", "DuomqBackupOutOfSync", "DuomqReplicationLagHigh",
        "DuomqConnectorDown", "DuomqJournalVolumeFilling", "DuomqMemberFenced", "DuomqOperatorNoLeader",
        "DuomqOperatorReconcileErrors",
    }
    for name, rule in alerts(rule_groups()).items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    paused = rule_groups({**ALL_ON, "replicaCount": 0})
    assert "DuomqOperatorNoLeader" not in alerts(paused), "a paused operator (0 replicas) has no leader by design"


def test_given_rule_values_when_rendered_should_reach_the_alerts():
    values = VALUE_SETS["monitoring on, one replica, every value set"]
    rules = alerts(rule_groups(values))
    r = values["monitoring"]["prometheusRule"]
    assert rules["DuomqGroupNoLive"]["for"] == r["noLiveFor"]
    assert rules["DuomqGroupNotReplicated"]["for"] == rules["DuomqBackupOutOfSync"]["for"] == r["backupOutOfSyncFor"]
    assert rules["DuomqReplicationLagHigh"]["for"] == r["replicationLagFor"]
    assert rules["DuomqReplicationLagHigh"]["expr"].strip().endswith("> 1048576")
    assert rules["DuomqConnectorDown"]["for"] == r["connectorDownFor"]
    assert rules["DuomqJournalVolumeFilling"]["expr"].strip().endswith("< 7.5")
    assert rules["DuomqMemberFenced"]["for"] == r["fencedFor"]
    assert rules["DuomqOperatorNoLeader"]["for"] == r["operatorNoLeaderFor"]
    assert rules["DuomqOperatorReconcileErrors"]["for"] == r["reconcileErrorsFor"]
    objects = objects_of(values)
    assert only(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "prometheus"
    monitor = only(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    configmap = only(objects, "ConfigMap")
    assert configmap["metadata"]["namespace"] == "grafana"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "duomq"}


# --- promtool --------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [ALL_ON, {**ALL_ON, "watchNamespace": "team-a"}], ids=["every namespace", "team-a"])
def test_given_prometheus_rule_when_checked_by_promtool_should_pass(values):
    problems = promcheck.check_rules(rule_groups(values))
    assert not problems, "promtool check rules:\n" + "\n".join(problems)


def test_given_broken_rule_when_checked_by_promtool_should_fail():
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = "max by (namespace (duomq_ha_live)"
    assert promcheck.check_rules(groups), "promtool accepted a broken expression"


JOB = f'job="{INSTALL_NAMESPACE}/duomq-operator-brokers"'


def member(metric: str, pod: str, values: str, group: str = "orders-g0", namespace: str = "shop",
           extra: str = "") -> dict:
    """An input series of a broker member as the PodMonitor labels it."""
    brokergroup = group.rsplit("-g", 1)[0]
    return {"series": f'{metric}{{{JOB}, namespace="{namespace}", pod="{pod}", brokergroup="{brokergroup}", '
                      f'group="{group}"{extra}}}', "values": values}


def group_labels(group: str = "orders-g0", namespace: str = "shop", **more: str) -> dict:
    return {"namespace": namespace, "brokergroup": group.rsplit("-g", 1)[0], "group": group, **more}


def alert_case(name: str, series: list[dict], at: str, expected: list[dict], severity: str = "warning") -> dict:
    return {"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": at, "alertname": name,
         "exp_alerts": [{"exp_labels": {**labels, "severity": severity}} for labels in expected]}]}


def healthy_pair(group: str = "orders-g0", minutes: int = 20) -> list[dict]:
    """A replicated pair: member 0 live with its backup in sync, member 1 a backup."""
    n = f"x{minutes}"
    live, backup = f"{group}-0", f"{group}-1"
    return [
        member("up", live, f"1{n}", group), member("up", backup, f"1{n}", group),
        member("duomq_ha_live", live, f"1{n}", group), member("duomq_ha_live", backup, f"0{n}", group),
        member("duomq_ha_alone", live, f"0{n}", group), member("duomq_ha_alone", backup, f"0{n}", group),
        member("duomq_ha_backups_synced", live, f"1{n}", group), member("duomq_ha_backups_synced", backup, f"0{n}", group),
        member("duomq_ha_fenced", live, f"0{n}", group), member("duomq_ha_fenced", backup, f"0{n}", group),
        member("duomq_ha_replication_lag_bytes", live, f"0{n}", group),
        member("duomq_ha_replication_lag_bytes", backup, f"0{n}", group),
    ]


def replace(series: list[dict], metric: str, pod: str, values: str) -> list[dict]:
    """`series` with the values of one member's metric changed."""
    out = []
    for s in series:
        if s["series"].startswith(metric + "{") and f'pod="{pod}"' in s["series"]:
            s = {**s, "values": values}
        out.append(s)
    return out


def without(series: list[dict], pod: str) -> list[dict]:
    """`series` without any of one member's, as when its pod is gone or not scraped."""
    return [s for s in series if f'pod="{pod}"' not in s["series"] or s["series"].startswith("up{")]


#: Each alert fed series where it must fire (at the time given, with those labels) and
#: where it must not; promtool fails on any alert missing, extra or labelled otherwise.
ALERT_CASES = {
    "no live: both members backups": alert_case(
        "DuomqGroupNoLive", healthy_pair() + replace(healthy_pair("orders-g1"), "duomq_ha_live", "orders-g1-0", "1x2 0x18"),
        "10m", [group_labels("orders-g1")], "critical"),
    "no live: every member down (no series but up)": alert_case(
        "DuomqGroupNoLive", without(without(replace(replace(healthy_pair(), "up", "orders-g0-0", "0x20"),
                                                    "up", "orders-g0-1", "0x20"), "orders-g0-0"), "orders-g0-1"),
        "5m", [group_labels()], "critical"),
    "no live: a failover of seconds does not page": alert_case(
        "DuomqGroupNoLive", replace(healthy_pair(), "duomq_ha_live", "orders-g0-0", "1x5 0 1x14"), "10m", []),
    "not replicated: live alone": alert_case(
        "DuomqGroupNotReplicated", replace(healthy_pair(), "duomq_ha_alone", "orders-g0-0", "0x5 1x15"),
        "15m", [group_labels()]),
    "backup out of sync: one of two backups down": alert_case(
        "DuomqBackupOutOfSync", healthy_pair() + [member("up", "orders-g0-2", "0x20")], "10m", [group_labels()]),
    "backup out of sync: a fenced backup is not expected in sync": alert_case(
        "DuomqBackupOutOfSync", healthy_pair() + [member("up", "orders-g0-2", "1x20"),
                                                  member("duomq_ha_fenced", "orders-g0-2", "1x20"),
                                                  member("duomq_ha_live", "orders-g0-2", "0x20")], "10m", []),
    "backup out of sync: a shared store has no sync": alert_case(
        "DuomqBackupOutOfSync", replace(healthy_pair(), "duomq_ha_backups_synced", "orders-g0-0", "0x20"), "10m", []),
    "replication lag above the threshold": alert_case(
        "DuomqReplicationLagHigh", replace(healthy_pair(), "duomq_ha_replication_lag_bytes", "orders-g0-1", "100000000x20"),
        "10m", [group_labels(pod="orders-g0-1")]),
    "connector down": alert_case(
        "DuomqConnectorDown", [member("duomq_bridge_linked", "orders-g0-0", "0x20", extra=', connector="to-eu"'),
                               member("duomq_bridge_linked", "orders-g0-0", "1x20", extra=', connector="to-us"')],
        "10m", [group_labels(pod="orders-g0-0", connector="to-eu")]),
    "journal volume nearly full": alert_case(
        "DuomqJournalVolumeFilling", [
            {"series": 'kubelet_volume_stats_available_bytes{namespace="shop", persistentvolumeclaim="data-orders-g0-0"}',
             "values": "5x20"},
            {"series": 'kubelet_volume_stats_capacity_bytes{namespace="shop", persistentvolumeclaim="data-orders-g0-0"}',
             "values": "100x20"},
            {"series": 'kubelet_volume_stats_available_bytes{namespace="shop", persistentvolumeclaim="data-postgres-0"}',
             "values": "1x20"},
            {"series": 'kubelet_volume_stats_capacity_bytes{namespace="shop", persistentvolumeclaim="data-postgres-0"}',
             "values": "100x20"}],
        "10m", [{"namespace": "shop", "persistentvolumeclaim": "data-orders-g0-0"}]),
    "member fenced": alert_case(
        "DuomqMemberFenced", replace(healthy_pair(), "duomq_ha_fenced", "orders-g0-1", "1x20"),
        "10m", [group_labels(pod="orders-g0-1")]),
    "operator: no pod leads": alert_case(
        "DuomqOperatorNoLeader", [
            {"series": f'duomq_operator_leader{{namespace="{INSTALL_NAMESPACE}", pod="duomq-operator-a"}}', "values": "1x3 0x17"},
            {"series": f'duomq_operator_leader{{namespace="{INSTALL_NAMESPACE}", pod="duomq-operator-b"}}', "values": "0x20"}],
        "10m", [{}], "critical"),
    "operator: not scraped at all": alert_case("DuomqOperatorNoLeader", [], "10m", [{}], "critical"),
    "operator: a leader hand-over does not page": alert_case(
        "DuomqOperatorNoLeader", [
            {"series": f'duomq_operator_leader{{namespace="{INSTALL_NAMESPACE}", pod="duomq-operator-a"}}', "values": "1x5 0x15"},
            {"series": f'duomq_operator_leader{{namespace="{INSTALL_NAMESPACE}", pod="duomq-operator-b"}}', "values": "0x5 1x15"}],
        "10m", []),
    "operator: reconciles keep failing": alert_case(
        "DuomqOperatorReconcileErrors", [
            {"series": f'duomq_operator_reconciliations_total{{namespace="{INSTALL_NAMESPACE}", pod="duomq-operator-a", '
                       'result="error"}', "values": "0+2x40"},
            {"series": f'duomq_operator_reconciliations_total{{namespace="{INSTALL_NAMESPACE}", pod="duomq-operator-a", '
                       'result="ok"}', "values": "0+5x40"}],
        "30m", [{"namespace": INSTALL_NAMESPACE, "pod": "duomq-operator-a"}]),
}


def rules_without_annotations(groups: list[dict]) -> list[dict]:
    return [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in groups]


def test_given_made_up_series_when_alerts_evaluated_by_promtool_should_fire_exactly_as_meant():
    problems = promcheck.run_rule_tests(rules_without_annotations(rule_groups()), list(ALERT_CASES.values()))
    assert not problems, "promtool test rules (cases in order: " + ", ".join(ALERT_CASES) + "):\n" + "\n".join(problems)


def test_given_no_live_alert_when_it_fires_should_say_which_group_and_what_to_run():
    rule = alerts(rule_groups())["DuomqGroupNoLive"]
    groups = [{"name": "one", "rules": [rule]}]
    case = ALERT_CASES["no live: both members backups"]
    expected = case["alert_rule_test"][0]["exp_alerts"][0]
    expected["exp_annotations"] = {
        "summary": "Broker group shop/orders-g1 has no live broker",
        "description": "No member of group orders-g1 (BrokerGroup orders) has been live for 1m: clients of the "
                       "group cannot connect. See kubectl duomq status orders -n shop.",
    }
    problems = promcheck.run_rule_tests(groups, [case])
    assert not problems, "\n".join(problems)


# --- metrics that exist ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def broker_page() -> str:
    return promcheck.broker_metrics_page()


@pytest.fixture(scope="module")
def broker_families(broker_page) -> dict[str, str]:
    return promcheck.parse_exposition_types(broker_page)


@pytest.fixture(scope="module")
def known_series(broker_families) -> set[str]:
    operator, unread = promcheck.source_metric_types(REPO_ROOT / "operator" / "src")
    assert not unread, "\n".join(unread)
    assert "duomq_operator_leader" in operator and "duomq_operator_reconciliations" in operator, operator
    return promcheck.series_names(broker_families) | promcheck.series_names(operator) | set(EXTERNAL_METRICS)


@pytest.fixture(scope="module")
def series_labels() -> dict[str, set[str]]:
    """Series name -> the labels it carries once scraped: its own (from the code) and the
    target's."""
    labels = {name: set(names) for name, names in EXTERNAL_METRICS.items()}
    for crate in ("broker", "operator"):
        families, unread = promcheck.source_metrics(REPO_ROOT / crate / "src")
        assert not unread, "\n".join(unread)
        for series, own in promcheck.series_labels(families).items():
            labels[series] = own | TARGET_LABELS
    assert labels["duomq_bridge_linked"] >= {"connector"} and labels["duomq_operator_switchovers_total"] >= {"reason"}
    return labels


def test_given_broker_sources_when_read_should_register_what_a_real_broker_serves(broker_families):
    from_source, unread = promcheck.source_metric_types(REPO_ROOT / "broker" / "src")
    assert not unread, "\n".join(unread)
    assert from_source == broker_families, (
        "the registrations read from broker/src differ from the broker's /metrics page (rebuild the broker "
        "with cargo build -p duomq-broker if it is stale): "
        f"{sorted(set(from_source.items()) ^ set(broker_families.items()))}"
    )
    assert broker_families["duomq_ha_live"] == "gauge" and broker_families["duomq_messages_in"] == "counter"


def test_given_a_real_broker_page_when_read_should_name_its_samples_as_the_checks_expect(broker_page, broker_families):
    samples = promcheck.parse_sample_names(broker_page)
    expected = promcheck.series_names(broker_families)
    assert samples <= expected, f"samples named otherwise than series_names() says: {sorted(samples - expected)}"
    families, _ = promcheck.source_metrics(REPO_ROOT / "broker" / "src")
    unlabelled = promcheck.series_names({name: kind for name, (kind, labels) in families.items() if not labels})
    assert unlabelled <= samples, f"unlabelled series missing from the page: {sorted(unlabelled - samples)}"
    assert {"duomq_messages_in_total", "duomq_journal_fsync_seconds_bucket", "duomq_ha_live"} <= samples


def used_metrics() -> list[tuple[str, str]]:
    """(where, metric name) of every metric an alert or a dashboard panel selects."""
    used = []
    for name, rule in alerts(rule_groups()).items():
        used.extend((f"alert {name}", m) for m in promcheck.metric_names_in(rule["expr"], METRIC_PREFIXES))
    for title, expr in panel_queries(dashboard()):
        used.extend((f"panel {title!r}", m) for m in promcheck.metric_names_in(expr, METRIC_PREFIXES))
    return used


def test_given_alerts_and_panels_when_read_should_use_only_metrics_that_exist(known_series):
    used = used_metrics()
    assert len({m for _, m in used}) > 25, f"the metric name extraction found too little: {used}"
    missing = sorted({f"{where}: {metric}" for where, metric in used if metric not in known_series})
    assert not missing, "metrics no code serves:\n" + "\n".join(missing)


def unknown_labels(expr: str, legend: str, series_labels: dict[str, set[str]]) -> set[str]:
    """Labels an expression (or its legend) names that none of the series it selects has."""
    metrics = promcheck.metric_names_in(expr, METRIC_PREFIXES)
    allowed = set().union(*(series_labels.get(m, set()) for m in metrics)) if metrics else set()
    named = promcheck.label_names_in(expr) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    return named - allowed


def test_given_alerts_and_panels_when_read_should_group_and_match_only_on_labels_the_series_have(series_labels):
    unknown = []
    for name, rule in alerts(rule_groups()).items():
        unknown.extend(f"alert {name}: {label}" for label in unknown_labels(rule["expr"], "", series_labels))
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            unknown.extend(f"panel {panel['title']!r}: {label}"
                           for label in unknown_labels(target["expr"], target.get("legendFormat", ""), series_labels))
    assert not unknown, "labels no selected series carries:\n" + "\n".join(sorted(unknown))
    assert unknown_labels('sum by (queue) (duomq_bridge_linked{connector="a"})', "{{direction}}", series_labels) == {
        "queue", "direction"}, "the label check must catch a label of another metric"


def test_given_a_misspelt_metric_when_checked_should_be_reported(known_series):
    used = promcheck.metric_names_in('sum(rate(duomq_messages_in{group="x"}[5m])) / duomq_ha_lve', METRIC_PREFIXES)
    assert used == {"duomq_messages_in", "duomq_ha_lve"}
    assert not used & known_series, "a counter without _total and a misspelt gauge must both be unknown"


# --- the Grafana dashboard -------------------------------------------------------------------

def test_given_dashboard_when_read_should_be_grafana_json_with_a_panel_for_each_on_call_question():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        for other, other_pos in boxes:
            overlap = (pos["x"] < other_pos["x"] + other_pos["w"] and other_pos["x"] < pos["x"] + pos["w"]
                       and pos["y"] < other_pos["y"] + other_pos["h"] and other_pos["y"] < pos["y"] + pos["h"])
            assert not overlap, f"panels {other!r} and {panel['title']!r} overlap"
        boxes.append((panel["title"], pos))
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    needs = {
        "roles per group": "duomq_ha_live", "failovers": "duomq_operator_failovers_total",
        "throughput": "duomq_messages_in_total", "latency": "duomq_journal_fsync_seconds_bucket",
        "replication lag": "duomq_ha_replication_lag_bytes", "connectors": "duomq_bridge_linked",
        "disk": "kubelet_volume_stats_available_bytes", "memory": "duomq_memory_bytes",
        "operator's reconciles": "duomq_operator_reconciliations_total", "operator's leader": "duomq_operator_leader",
    }
    dashboard_metrics = {m for _, expr in panel_queries(board) for m in promcheck.metric_names_in(expr, METRIC_PREFIXES)}
    missing = [need for need, metric in needs.items() if metric not in dashboard_metrics]
    assert not missing, f"no panel for: {missing}"


def test_given_dashboard_queries_when_checked_by_promtool_should_pass():
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]}
    rules = []
    for i, (title, expr) in enumerate(panel_queries(board)):
        for variable in re.findall(r"\$(\w+)", expr):
            assert variable.startswith("__") or variable in defined, f"{title}: ${variable} is not a dashboard variable"
        rules.append({"record": f"dashboard:panel_{i}", "expr": as_prometheus_query(expr)})
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            match = re.fullmatch(r"label_values\((.*), *(\w+)\)", query["query"])
            assert match, f"variable {variable['name']}: {query['query']}"
            rules.append({"record": f"dashboard:variable_{variable['name']}", "expr": as_prometheus_query(match.group(1))})
    problems = promcheck.check_rules([{"name": "dashboard", "rules": rules}])
    assert not problems, "promtool check rules on the dashboard's queries:\n" + "\n".join(problems)


def panel_query(board: dict, title: str, ref: str = "A") -> str:
    (expr,) = [t["expr"] for p in board["panels"] if p["title"] == title for t in p["targets"] if t["refId"] == ref]
    return as_prometheus_query(expr)


def test_given_a_pair_with_a_fenced_third_member_when_panels_queried_should_show_roles_and_sync():
    board = dashboard()
    series = healthy_pair() + [member("duomq_ha_live", "orders-g0-2", "0x20"),
                               member("duomq_ha_fenced", "orders-g0-2", "1x20"),
                               member("duomq_ha_alone", "orders-g0-2", "0x20")]
    series += replace(healthy_pair("orders-g1"), "duomq_ha_live", "orders-g1-0", "0x20")
    case = {"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": panel_query(board, "Role of each member"), "eval_time": "5m", "exp_samples": [
            {"labels": f'{{namespace="shop", brokergroup="orders", group="orders-g{g}", pod="orders-g{g}-{i}"}}',
             "value": v} for g, i, v in [(0, 0, 1), (0, 1, 0), (0, 2, 2), (1, 0, 0), (1, 1, 0)]]},
        {"expr": panel_query(board, "Groups without a live"), "eval_time": "5m",
         "exp_samples": [{"labels": "{}", "value": 1}]},
        {"expr": panel_query(board, "Fenced members"), "eval_time": "5m",
         "exp_samples": [{"labels": "{}", "value": 1}]},
        {"expr": panel_query(board, "Backups in sync"), "eval_time": "5m",
         "exp_samples": [{"labels": '{group="orders-g0"}', "value": 1}]},
    ]}
    problems = promcheck.run_rule_tests([], [case])
    assert not problems, "promtool test rules on the dashboard's queries:\n" + "\n".join(problems)


def test_given_monitoring_on_when_linted_strictly_should_find_no_problem():
    for values in (ALL_ON, {**ALL_ON, "watchNamespace": "team-a"}):
        problems = helmtool.lint(CHART_DIR, values)
        assert not problems, "\n".join(problems)


def test_given_dashboard_enabled_when_rendered_should_carry_the_json_and_the_sidecar_label():
    configmap = only(objects_of(ALL_ON), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == INSTALL_NAMESPACE
    assert json.loads(configmap["data"]["duomq.json"]) == dashboard()
