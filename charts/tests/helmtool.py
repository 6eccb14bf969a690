"""Renders and lints the duomq-operator chart offline, with the Helm SDK that the PyPI
package helm-python-sdk bundles (no helm binary, no cluster, no network).

`scripts/generate` writes manifests/install.yaml with `install_bundle()`; the tests in
this folder render and lint through the same functions, so what they check is what
users get. This module renders and reports; it does not validate against Kubernetes
schemas (kubecheck.py does that).

    python3 charts/tests/helmtool.py install-bundle --output manifests/install.yaml
    python3 charts/tests/helmtool.py render --set watchNamespace=team-a
    python3 charts/tests/helmtool.py lint
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "duomq-operator"
INSTALL_BUNDLE = REPO_ROOT / "manifests" / "install.yaml"

#: The release name the README's `helm install` uses; install.yaml is rendered with it.
RELEASE_NAME = "duomq-operator"
#: The namespace install.yaml installs into.
INSTALL_NAMESPACE = "duomq-system"
#: The Kubernetes version lint checks the chart against.
KUBE_VERSION = "v1.33.0"

PIP_INSTALL = (
    "python3 -m pip install 'helm-python-sdk>=0.2.2,<0.3' 'kubernetes-validate>=1.33,<2' "
    "'jsonschema>=4,<5' 'pytest>=7'"
)

try:
    import helm_python as helm
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError(
        f"the Python package helm-python-sdk (module helm_python) is missing ({e}); "
        f"install it with: {PIP_INSTALL}"
    ) from e

#: Helm's install order by kind (pkg/release/util/kind_sorter.go); kinds not listed go last.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]

# Helm's own document separator: a line that starts with "---".
_DOC_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)


class ChartError(Exception):
    """The chart cannot be rendered into what was asked for."""


def _documents(source: str, text: str) -> list[tuple[str, str, str]]:
    """Splits one rendered template into (source, kind, document) triples, leaving out
    documents that hold no object (only blank lines or comments)."""
    out = []
    for doc in _DOC_SEPARATOR.split(text):
        doc = doc.strip("\n")
        if not doc.strip():
            continue
        obj = yaml.safe_load(doc)
        if obj is None:
            continue
        if not isinstance(obj, dict) or "kind" not in obj:
            raise ChartError(f"{source} rendered a document that is not a Kubernetes object:\n{doc}")
        out.append((source, str(obj["kind"]), doc.strip() + "\n"))
    return out


def _kind_rank(kind: str) -> tuple[int, str]:
    if kind in INSTALL_ORDER:
        return (INSTALL_ORDER.index(kind), "")
    return (len(INSTALL_ORDER), kind)


def render(
    chart: str | Path = CHART_DIR,
    values: dict[str, Any] | None = None,
    namespace: str = INSTALL_NAMESPACE,
    *,
    release: str = RELEASE_NAME,
    include_crds: bool = True,
) -> str:
    """Renders the chart like `helm template RELEASE CHART -n NAMESPACE --include-crds`:
    one multi-document YAML string, CRDs first, then the templates' objects in Helm's
    install order, each document headed by `# Source: <file>`. NOTES.txt is left out.

    Raises helm_python.HelmValuesError when `values` break values.schema.json and
    helm_python.HelmRenderError when a template fails.
    """
    docs: list[tuple[str, str, str]] = []
    with helm.Chart.load(str(chart)) as loaded:
        if include_crds:
            for crd in sorted(loaded.crds, key=lambda c: c["filename"]):
                docs.extend(_documents(crd["filename"], crd["data"]))
        rendered = loaded.render(values or {}, name=release, namespace=namespace, is_install=True)
    templates = []
    for source in sorted(rendered):
        if source.endswith("NOTES.txt") or Path(source).name.startswith("_"):
            continue
        templates.extend(_documents(source, rendered[source]))
    # Stable: within one kind, file order and then document order are kept.
    docs.extend(sorted(templates, key=lambda d: _kind_rank(d[1])))
    return "".join(f"---\n# Source: {source}\n{doc}" for source, _, doc in docs)


def notes(chart: str | Path = CHART_DIR, values: dict[str, Any] | None = None,
          namespace: str = INSTALL_NAMESPACE, *, release: str = RELEASE_NAME) -> str:
    """NOTES.txt as `helm install` prints it with `values`."""
    with helm.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values or {}, name=release, namespace=namespace, is_install=True)
    found = [text for source, text in rendered.items() if source.endswith("NOTES.txt")]
    if len(found) != 1:
        raise ChartError(f"the chart rendered {len(found)} NOTES.txt")
    return found[0]


def lint(chart: str | Path = CHART_DIR, values: dict[str, Any] | None = None,
         namespace: str = INSTALL_NAMESPACE) -> list[str]:
    """`helm lint --strict` with `values` over the chart's defaults: the problems found,
    as "path: message" lines. Warnings count as problems (that is what --strict does);
    informational notes such as "icon is recommended" do not."""
    report = helm.lint(str(chart), values, strict=True, namespace=namespace,
                       kube_version=KUBE_VERSION)
    problems = [
        f"{m.get('path', '')}: {str(m.get('error', '')).strip()}"
        for m in report.get("messages", [])
        if int(m.get("severity", 0)) >= 2
    ]
    for error in report.get("errors", []):
        error = str(error).strip()
        if not any(error in p for p in problems):
            problems.append(error)
    return problems


def namespace_object(namespace: str) -> str:
    """The Namespace install.yaml creates first. Its pods must meet the "restricted" Pod
    Security Standard, which the chart's defaults do."""
    return (
        "apiVersion: v1\n"
        "kind: Namespace\n"
        "metadata:\n"
        f"  name: {namespace}\n"
        "  labels:\n"
        f"    app.kubernetes.io/name: {RELEASE_NAME}\n"
        "    pod-security.kubernetes.io/enforce: restricted\n"
    )


def install_bundle(chart: str | Path = CHART_DIR, namespace: str = INSTALL_NAMESPACE) -> str:
    """manifests/install.yaml: a Namespace, then the chart rendered with its default values
    into it, CRDs included, for `kubectl apply -f`."""
    with helm.Chart.load(str(chart)) as loaded:
        version = loaded.version
        if not loaded.crds:
            raise ChartError(
                f"{Path(chart).name}/crds/ holds no CRD, so the bundle would install an operator "
                "without its BrokerGroup API: run scripts/generate (its first step, "
                "`cargo run -p duomq-operator -- generate`, writes the CRD)"
            )
    header = (
        f"# duomq-operator {version}: the chart charts/duomq-operator rendered with its default\n"
        f"# values into namespace {namespace}, CRDs included. Install: kubectl apply -f manifests/install.yaml\n"
        "# Generated by scripts/generate; do not edit.\n"
    )
    return (
        header
        + f"---\n# Namespace of the operator\n{namespace_object(namespace)}"
        + render(chart, None, namespace)
    )


def _set_values(expressions: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for expression in expressions:
        _merge(values, helm.parse_set_string(expression))
    return values


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="helmtool.py", description="Render and lint the duomq-operator chart offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    bundle = sub.add_parser("install-bundle", help="write manifests/install.yaml")
    bundle.add_argument("--output", type=Path, default=INSTALL_BUNDLE,
                        help="where to write it (default: manifests/install.yaml); - for stdout")
    for name, text in (("render", "print the rendered chart"), ("lint", "helm lint --strict")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a value over the chart's defaults, as helm --set takes it")
        p.add_argument("--namespace", "-n", default=INSTALL_NAMESPACE)
    args = parser.parse_args(argv)

    try:
        if args.command == "install-bundle":
            text = install_bundle()
            if str(args.output) == "-":
                sys.stdout.write(text)
            else:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(text)
                print(f"wrote {args.output}")
        elif args.command == "render":
            sys.stdout.write(render(CHART_DIR, _set_values(args.set), args.namespace))
        else:
            problems = lint(CHART_DIR, _set_values(args.set), args.namespace)
            for problem in problems:
                print(problem)
            print(f"lint: {len(problems)} problem(s)")
            return 1 if problems else 0
    except (ChartError, helm.HelmError) as e:
        print(f"helmtool: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
