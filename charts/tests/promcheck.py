"""Offline checks of the chart's monitoring bundle against Prometheus itself and the code.

- `check_rules` / `test_rules`: `promtool check rules` and `promtool test rules` (the
  promtool of Debian's `prometheus` package; scripts/test installs it) on rule groups.
- `broker_metrics_page`: what a real `duomq-broker` serves at /metrics, scraped from the
  binary started on loopback ports (`parse_exposition_types`, `parse_sample_names` read it).
- `source_metric_types`: the metric families registered in Rust sources (for the operator,
  whose /metrics needs a cluster), read from the `register("name", ..., field)` calls and
  the declared types of those fields.
- `series_names` / `metric_names_in`: the series names a family stands for, and the metric
  names a PromQL expression selects.

Each check returns problems or raises PromCheckError saying how to get what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from helmtool import REPO_ROOT

#: How long a broker may take to answer /metrics after it starts.
BROKER_START_TIMEOUT = 30.0
#: How long one promtool run may take.
PROMTOOL_TIMEOUT = 120

PROMTOOL_HINT = (
    "promtool is missing: scripts/test installs it (from Debian's prometheus package: "
    "apt-get download prometheus, then dpkg-deb -x and copy usr/bin/promtool onto the PATH)"
)


class PromCheckError(Exception):
    """A tool the checks need is missing or failed to run."""


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise PromCheckError(PROMTOOL_HINT)
    return path


def _run_promtool(args: list[str], files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="duomq-promtool-") as tmp:
        for name, text in files.items():
            Path(tmp, name).write_text(text)
        return subprocess.run([promtool(), *args], cwd=tmp, capture_output=True, text=True,
                              timeout=PROMTOOL_TIMEOUT, check=False)


def rule_file(groups: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000)


def check_rules(groups: list[dict[str, Any]]) -> list[str]:
    """`promtool check rules` (expressions, durations, annotation templates) on the groups:
    its complaints, or [] when it reports success."""
    done = _run_promtool(["check", "rules", "rules.yaml"], {"rules.yaml": rule_file(groups)})
    if done.returncode != 0:
        return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return []


def run_rule_tests(groups: list[dict[str, Any]], tests: list[dict[str, Any]]) -> list[str]:
    """`promtool test rules` with `tests` (each with input_series and alert_rule_test) over
    the groups: the failures it reports, or []."""
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    done = _run_promtool(["test", "rules", "tests.yaml"],
                         {"rules.yaml": rule_file(groups), "tests.yaml": yaml.safe_dump(spec, sort_keys=False)})
    if done.returncode != 0:
        return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return []


# --- which metrics exist --------------------------------------------------------------------

_TYPE_LINE = re.compile(r"^# TYPE (\S+) (counter|gauge|histogram|summary|unknown|info|stateset|gaugehistogram)$")


def parse_exposition_types(text: str) -> dict[str, str]:
    """Metric family name -> type, from the `# TYPE` lines of a text exposition."""
    return {m.group(1): m.group(2) for m in map(_TYPE_LINE.match, text.splitlines()) if m}


def broker_binary() -> Path:
    """The duomq-broker binary: $DUOMQ_BROKER_BIN, or target/debug/duomq-broker (under
    $CARGO_TARGET_DIR when that is set)."""
    if os.environ.get("DUOMQ_BROKER_BIN"):
        return Path(os.environ["DUOMQ_BROKER_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    return target / "debug" / "duomq-broker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_sample_names(text: str) -> set[str]:
    """The series names of the samples of a text exposition."""
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def broker_metrics_page(binary: Path | None = None) -> str:
    """Starts the real broker (standalone, loopback ports, a temporary data directory),
    scrapes its /metrics once and stops it: the page. Every registered family is on it,
    with `# TYPE`, even before it has a sample."""
    binary = binary or broker_binary()
    if not binary.is_file():
        raise PromCheckError(f"{binary} is missing: build it with `cargo build -p duomq-broker` "
                             "(cargo test --workspace builds it too)")
    with tempfile.TemporaryDirectory(prefix="duomq-metrics-") as tmp:
        config = Path(tmp, "broker.yaml")
        config.write_text("{}\n")
        admin = _free_port()
        log = Path(tmp, "broker.log")
        with log.open("wb") as out:
            broker = subprocess.Popen(
                [str(binary), "run", "--config", str(config), "--data-dir", str(Path(tmp, "data")),
                 "--stomp-listen", f"127.0.0.1:{_free_port()}", "--admin-listen", f"127.0.0.1:{admin}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            try:
                deadline = time.monotonic() + BROKER_START_TIMEOUT
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
                            return page.read().decode()
                    except OSError as e:
                        if broker.poll() is not None or time.monotonic() > deadline:
                            raise PromCheckError(f"the broker did not serve /metrics ({e}); its log:\n"
                                                 f"{log.read_text(errors='replace')}") from e
                        time.sleep(0.2)
            finally:
                broker.kill()
                broker.wait(timeout=30)


_REGISTER = re.compile(r'\.register\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*,.*?,\s*([^,()]*?)\.clone\(\)\s*,?\s*\)',
                       re.DOTALL)
_PREFIX = re.compile(r'sub_registry_with_prefix\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*\)')
_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}


def _declaration(source: str, field: str) -> tuple[str, str] | None:
    """The metric type of `field` and the text of its declaration (`field: Family<L,
    Counter>`, `field: Gauge`, `let field = Histogram::new(..)`), or None when it cannot be
    told."""
    for m in re.finditer(rf"\b{re.escape(field)}\s*(?::|=)\s*([^;{{\n]*)", source):
        found = [kind for name, kind in _KINDS.items() if re.search(rf"\b{name}\b", m.group(1))]
        if found:
            return found[-1], m.group(1)  # Family<Labels, Counter>: the metric is the last type named
    return None


def _label_struct_fields(sources: dict[Path, str], path: Path, struct: str) -> set[str] | None:
    """The fields of `struct` (a prometheus-client label set: each field is a label), looked
    up in `path` first, then in the other sources."""
    pattern = re.compile(rf"\bstruct\s+{re.escape(struct)}\s*\{{([^}}]*)\}}")
    for candidate in [path, *sources]:
        m = pattern.search(sources[candidate])
        if m:
            body = re.sub(r"//[^\n]*", "", m.group(1))
            return set(re.findall(r"(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:", body))
    return None


def source_metrics(root: Path) -> tuple[dict[str, tuple[str, set[str]]], list[str]]:
    """Metric families registered in the .rs files under `root`: name -> (type, label
    names), and the registrations whose type or labels could not be read (a problem for
    the caller)."""
    sources = {path: path.read_text() for path in sorted(root.rglob("*.rs"))}
    families: dict[str, tuple[str, set[str]]] = {}
    unread: list[str] = []
    for path, source in sources.items():
        prefix = _PREFIX.search(source)
        for m in _REGISTER.finditer(source):
            name, value = m.group(1), m.group(2).strip()
            if prefix and not name.startswith(prefix.group(1)):
                name = f"{prefix.group(1)}_{name}"
            # The field is declared in the struct whose impl registers it (two structs of a
            # file may both have a field of that name); else anywhere in the file.
            owner = [o.group(1) for o in re.finditer(r"\bimpl(?:<[^>]*>)?\s+(\w+)", source[:m.start()])]
            body = re.search(rf"\bstruct\s+{owner[-1]}\s*\{{([^}}]*)\}}", source) if owner else None
            field = value.split(".")[-1]
            declared = (body and _declaration(body.group(1), field)) or _declaration(source, field)
            if declared is None:
                unread.append(f"{path.relative_to(REPO_ROOT)}: type of {name} ({value}) not found")
                continue
            kind, text = declared
            labels: set[str] | None = set()
            family = re.search(r"\bFamily\s*<\s*(\w+)\s*,", text)
            if family:
                labels = _label_struct_fields(sources, path, family.group(1))
                if labels is None:
                    unread.append(f"{path.relative_to(REPO_ROOT)}: label set {family.group(1)} of {name} not found")
                    continue
            families[name] = (kind, labels)
    return families, unread


def source_metric_types(root: Path) -> tuple[dict[str, str], list[str]]:
    """Like `source_metrics`, the types only."""
    families, unread = source_metrics(root)
    return {name: kind for name, (kind, _) in families.items()}, unread


def series_labels(families: dict[str, tuple[str, set[str]]]) -> dict[str, set[str]]:
    """Series name -> the label names the code gives it (a histogram's buckets add `le`)."""
    out: dict[str, set[str]] = {}
    for name, (kind, labels) in families.items():
        for series in series_names({name: kind}):
            out[series] = labels | ({"le"} if series.endswith("_bucket") else set())
    return out


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def label_names_in(expr: str) -> set[str]:
    """The label names a PromQL expression groups, matches or selects on: those of `by`,
    `without`, `on`, `ignoring`, `group_left/right` and of every `{...}` matcher."""
    bare = _STRING.sub('""', expr)
    names = {label.strip() for m in _GROUPING.finditer(bare) for label in m.group(1).split(",") if label.strip()}
    for selector in re.findall(r"\{([^}]*)\}", bare):
        names.update(_MATCHER.findall(selector))
    return names


def series_names(families: dict[str, str]) -> set[str]:
    """The series names Prometheus stores for these families (a counter `x` is scraped as
    `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`)."""
    names = set()
    for name, kind in families.items():
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind in ("histogram", "gaugehistogram"):
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])")


def metric_names_in(expr: str, prefixes: tuple[str, ...]) -> set[str]:
    """The identifiers of a PromQL expression that start with one of `prefixes`, outside
    string literals: the metric names it selects (no label of ours has such a prefix)."""
    bare = _STRING.sub('""', expr)
    return {m.group(1) for m in _IDENT.finditer(bare) if m.group(1).startswith(prefixes)}
