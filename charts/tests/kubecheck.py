"""Offline checks of Kubernetes manifests, with no cluster.

- `validate_objects`: every object against the Kubernetes 1.33 OpenAPI schemas that the
  PyPI package kubernetes-validate ships, in strict mode (an unknown field is an error),
  plus the name and label rules the API server enforces but those schemas do not carry.
  An object whose kind has no schema (a WARN in kubernetes-validate's CLI) is a problem
  too: a manifest this project ships must be checkable.
- `crd_json_schema` / `validate_custom_resource`: a custom resource (a BrokerGroup)
  against its CRD's `openAPIV3Schema`, with the PyPI package jsonschema. The
  `x-kubernetes-*` extensions are dropped; CEL rules (`x-kubernetes-validations`) are
  checked on the Rust side, not here.

Each function returns a list of problems (empty when all is well) so that a test can
show every problem at once; none of them prints or exits.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from helmtool import PIP_INSTALL

try:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import (
        InvalidSchemaError,
        SchemaNotFoundError,
        VersionNotSupportedError,
    )
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError(
        f"a Python package for the manifest checks is missing ({e}); install them with: {PIP_INSTALL}"
    ) from e

#: The Kubernetes version manifests are checked against.
KUBERNETES_VERSION = "1.33.0"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

#: Kinds whose name the API server checks as a DNS-1035 label (Services become DNS names).
_DNS1035_NAMED = {"Service"}
#: Kinds whose name the API server checks as a DNS-1123 label.
_DNS1123_LABEL_NAMED = {"Namespace"}
#: Cluster-scoped kinds among those this project ships.
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "PersistentVolume",
}


def load_documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text; empty documents are left out."""
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def load_file(path: str | Path) -> list[dict[str, Any]]:
    return load_documents(Path(path).read_text())


def describe(obj: Any) -> str:
    """`Kind/namespace/name` of an object, for messages."""
    if not isinstance(obj, dict):
        return repr(obj)[:60]
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if isinstance(meta, dict) and meta.get("namespace") else ""
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    return f"{obj.get('kind', '?')}/{where}{name}"


def _metadata_problems(obj: dict[str, Any]) -> list[str]:
    """Rules of ObjectMeta that the API server enforces and the OpenAPI schemas do not."""
    problems = []
    kind = obj.get("kind", "")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata is missing"]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problems.append("metadata.name is missing")
    elif kind in _DNS1035_NAMED:
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            problems.append(f"metadata.name {name!r} is not a DNS-1035 label (a-z first, a-z0-9-, at most 63)")
    elif kind in _DNS1123_LABEL_NAMED:
        if len(name) > 63 or not _DNS1123_LABEL.match(name):
            problems.append(f"metadata.name {name!r} is not a DNS-1123 label (a-z0-9-, at most 63)")
    elif kind in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}:
        if "/" in name or "%" in name or name in {".", ".."}:
            problems.append(f"metadata.name {name!r} is not a valid RBAC object name")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    namespace = meta.get("namespace")
    if namespace is not None:
        if kind in CLUSTER_SCOPED:
            problems.append(f"metadata.namespace is set on a cluster-scoped {kind}")
        elif not isinstance(namespace, str) or len(namespace) > 63 or not _DNS1123_LABEL.match(namespace):
            problems.append(f"metadata.namespace {namespace!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            problems.extend(f"metadata.{field}: {p}" for p in _key_problems(str(key)))
            if not isinstance(value, str):
                problems.append(f"metadata.{field}[{key}]: value {value!r} is not a string")
            elif field == "labels" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                problems.append(f"metadata.labels[{key}]: value {value!r} is not a valid label value")
    return problems


def _key_problems(key: str) -> list[str]:
    """A label or annotation key: an optional DNS subdomain prefix, `/`, a name."""
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(f"key {key!r}: prefix is not a DNS-1123 subdomain")
    if len(name) > 63 or not _LABEL_NAME.match(name):
        problems.append(f"key {key!r}: name part is not a valid qualified name")
    return problems


def validate_objects(objects: Iterable[Any], source: str,
                     version: str = KUBERNETES_VERSION) -> list[str]:
    """Checks each object like `kubernetes-validate --strict -k VERSION`, a WARN counting as a
    problem, and the API server's name and label rules. Returns "source: Kind/ns/name: ..." lines."""
    wanted = ".".join(version.split(".")[:2])
    problems = []
    for obj in objects:
        if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
            problems.append(f"{source}: {describe(obj)}: not a Kubernetes object (needs apiVersion and kind)")
            continue
        what = f"{source}: {describe(obj)}"
        try:
            used = kubernetes_validate.validate(obj, version, strict=True)
            if used != wanted:
                problems.append(f"{what}: validated against Kubernetes {used}, not {wanted}: "
                                f"install a kubernetes-validate that ships {wanted} schemas")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(the object)"
            problems.append(f"{what}: {path}: {e.message}")
        except SchemaNotFoundError as e:
            problems.append(f"{what}: WARN {e.message} (an object that cannot be checked is a failure here)")
        except InvalidSchemaError as e:
            problems.append(f"{what}: WARN {e.message}")
        except VersionNotSupportedError as e:
            problems.append(f"{what}: {e.message}: {PIP_INSTALL}")
        problems.extend(f"{what}: {p}" for p in _metadata_problems(obj))
    return problems


def validate_file(path: str | Path, version: str = KUBERNETES_VERSION) -> list[str]:
    """`validate_objects` over every document of a YAML file; an unreadable file is a problem."""
    try:
        objects = load_file(path)
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: cannot be read as YAML: {e}"]
    if not objects:
        return [f"{path}: holds no object"]
    return validate_objects(objects, str(path), version)


# --- custom resources against their CRD ------------------------------------------------

def crd_version(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The entry of `spec.versions` named `version`; KeyError names the versions there are."""
    versions = crd.get("spec", {}).get("versions", [])
    for entry in versions:
        if entry.get("name") == version:
            return entry
    raise KeyError(f"CRD {describe(crd)} has no version {version!r} "
                   f"(it has {[v.get('name') for v in versions]})")


def crd_json_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The CRD version's `openAPIV3Schema` as a JSON schema (draft 4, which OpenAPI 3.0's
    schema object follows) that behaves like the API server with strict field validation:
    `nullable: true` admits null, an object schema with `properties` rejects unknown fields
    unless it says `x-kubernetes-preserve-unknown-fields`, and the `x-kubernetes-*`
    extensions, which jsonschema does not know, are dropped."""
    entry = crd_version(crd, version)
    schema = (entry.get("schema") or {}).get("openAPIV3Schema")
    if not isinstance(schema, dict):
        raise KeyError(f"CRD {describe(crd)} version {version} has no schema.openAPIV3Schema")
    return _to_json_schema(copy.deepcopy(schema), root=True)


def _to_json_schema(node: Any, root: bool = False) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    preserve_unknown = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = _to_json_schema(value)
        else:
            # default, example, enum and the like hold data, not schemas.
            out[key] = value
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = list(out["enum"]) + [None]
    if "properties" in out and "additionalProperties" not in out and not preserve_unknown:
        out["additionalProperties"] = False
    if root:
        # Every object has these, whether or not the CRD's schema lists them; the API server
        # checks metadata itself (ObjectMeta).
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    return out


def load_crd(path: str | Path) -> dict[str, Any]:
    """The one CustomResourceDefinition in a YAML file."""
    objects = [o for o in load_file(path) if isinstance(o, dict)]
    crds = [o for o in objects if o.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise ValueError(f"{path} should hold exactly one CustomResourceDefinition, it holds {len(crds)}")
    return crds[0]


def validate_custom_resource(obj: Any, crd: dict[str, Any], version: str, source: str) -> list[str]:
    """One custom resource against its CRD: apiVersion, kind, metadata (name, namespace by
    scope, labels), no status (examples and fixtures describe desired state), then the spec
    against the version's schema. Returns "source: Kind/name: ..." lines."""
    what = f"{source}: {describe(obj)}"
    if not isinstance(obj, dict):
        return [f"{what}: not a mapping"]
    spec = crd.get("spec", {})
    group = spec.get("group")
    names = spec.get("names", {})
    problems = []
    entry = crd_version(crd, version)
    if not entry.get("served", False):
        problems.append(f"{what}: CRD version {version} is not served")
    if obj.get("apiVersion") != f"{group}/{version}":
        problems.append(f"{what}: apiVersion is {obj.get('apiVersion')!r}, want {group}/{version!r}")
    if obj.get("kind") != names.get("kind"):
        problems.append(f"{what}: kind is {obj.get('kind')!r}, want {names.get('kind')!r}")
    problems.extend(f"{what}: {p}" for p in _metadata_problems(obj))
    meta = obj.get("metadata") or {}
    if spec.get("scope") == "Cluster" and isinstance(meta, dict) and "namespace" in meta:
        problems.append(f"{what}: metadata.namespace is set but {names.get('kind')} is cluster-scoped")
    if "status" in obj:
        problems.append(f"{what}: carries a status; the operator writes status, manifests must not")
    schema = crd_json_schema(crd, version)
    validator = jsonschema.Draft4Validator(schema)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in error.absolute_path) or "(the object)"
        problems.append(f"{what}: {path}: {error.message}")
    return problems


def check_json_schema(schema: dict[str, Any]) -> list[str]:
    """Problems of a schema itself against the draft 4 meta-schema."""
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft4Validator(jsonschema.Draft4Validator.META_SCHEMA).iter_errors(schema)]
