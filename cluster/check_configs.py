"""Validate the cluster configs offline: Ray launcher YAMLs and Kubernetes manifests.

    python cluster/check_configs.py            # everything under cluster/
    python cluster/check_configs.py FILE...    # some files

Launcher YAMLs (a `provider:` at top level) are checked the way `ray up` checks them before
it talks to a cloud: against the cluster-config JSON schema shipped inside the installed
`ray` package (ray/autoscaler/ray-schema.json), then through Ray's own
prepare_config/validate_config (merge with the provider defaults, head/worker rules).

Kubernetes manifests: RayCluster and RayJob against the KubeRay CRD schemas kept in
cluster/schemas/ (see the README there), converted from OpenAPI v3 to JSON Schema the way
the API server treats them (unknown fields are errors, as with kubectl's default strict
field validation); the core Kubernetes types they embed (PodSpec, ServiceSpec, ...) and
every standard object (Deployment, Service, ...) against the Kubernetes v1.35 strict JSON
schemas of the `kubernetes-validate` package. On top: structural checks the schemas do not
make (names present, ports well formed, Services select a workload that has the port) and
the exposure findings (anything reachable from outside the cluster, or bound to all
interfaces without the documented annotation).

Needs: pyyaml, jsonschema, ray (the pinned version), kubernetes-validate.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CLUSTER_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = CLUSTER_DIR / "schemas"
CRD_FILES = {
    "RayCluster": SCHEMA_DIR / "ray.io_rayclusters.v1.trimmed.yaml",
    "RayJob": SCHEMA_DIR / "ray.io_rayjobs.v1.trimmed.yaml",
}
K8S_VERSION = "1.35.0"  # the k8s.io/api version the KubeRay CRD expansion matches
K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
# The API server's Quantity grammar, as controller-gen writes it into CRDs.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
EXPOSURE_ANNOTATION = "circuitlib.io/exposure"
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}

# CEL rules (x-kubernetes-validations) the CRDs carry, as JSON Schema. A rule not listed
# here makes conversion fail, so a refreshed CRD with new rules cannot be checked silently
# short. Transition rules (oldSelf) only apply to updates and cannot be checked on a file.
CEL_AS_JSON_SCHEMA: dict[str, dict | None] = {
    "self == oldSelf": None,
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']": {
        "enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]
    },
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))": {
        "not": {"required": ["jobStatus", "jobDeploymentStatus"]}
    },
    "has(self.jobStatus) || has(self.jobDeploymentStatus)": {
        "anyOf": [{"required": ["jobStatus"]}, {"required": ["jobDeploymentStatus"]}]
    },
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))": {
        "not": {
            "allOf": [
                {"anyOf": [{"required": ["onSuccess"]}, {"required": ["onFailure"]}]},
                {"required": ["deletionRules"]},
            ]
        }
    },
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))": {
        "anyOf": [{"required": ["onSuccess", "onFailure"]}, {"required": ["deletionRules"]}]
    },
}


# --------------------------------------------------------------------------- YAML


def load_yaml_docs(path: Path) -> list[dict]:
    """The non-empty documents of a YAML file."""
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def is_launcher_config(doc: Any) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


# --------------------------------------------------------------------------- Ray launcher


@cache
def ray_schema() -> dict:
    """The cluster-config schema that ships inside the installed ray package."""
    import ray.autoscaler

    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        return json.load(f)


def launcher_errors(config: dict) -> list[str]:
    """Problems `ray up` would report before touching a cloud; [] when there are none."""
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = [_format_error(e) for e in sorted(validator.iter_errors(config), key=str)]
    if errors:
        return errors
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # noqa: BLE001 - ray raises ValueError, RuntimeError, KeyError, jsonschema errors, ...
        return [f"ray prepare_config/validate_config: {type(e).__name__}: {e}"]
    return []


# --------------------------------------------------------------------------- Kubernetes schemas


@cache
def _k8s_schema_dir() -> Path:
    try:
        import kubernetes_validate
    except ImportError as e:  # pragma: no cover - the dependency is declared
        raise ImportError(
            "cluster/check_configs.py needs the kubernetes-validate package "
            "(pip install kubernetes-validate) for the Kubernetes JSON schemas"
        ) from e
    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    if not path.is_dir():
        raise FileNotFoundError(f"kubernetes-validate has no schemas for Kubernetes v{K8S_VERSION} at {path}")
    return path


@cache
def _k8s_definitions(crd_semantics: bool) -> dict:
    """The Kubernetes definitions; with `crd_semantics`, Quantity as a CRD's int-or-string."""
    with open(_k8s_schema_dir() / "_definitions.json") as f:
        defs = json.load(f)
    if crd_semantics:
        defs["$defs"]["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}]
        }
    return defs


def _registry(crd_semantics: bool) -> Registry:
    defs = _k8s_definitions(crd_semantics)
    return Registry().with_resource(K8S_DEFS_ID, Resource.from_contents(defs, default_specification=DRAFT202012))


def crd_openapi_schema(kind: str, version: str = "v1") -> dict:
    """The openAPIV3Schema of `kind` as stored in cluster/schemas/."""
    (crd,) = load_yaml_docs(CRD_FILES[kind])
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind} CRD has no version {version}")


def openapi_to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 (structural CRD) schema as JSON Schema 2020-12, with API-server semantics.

    - objects with `properties` reject unknown fields (kubectl's default strict validation;
      without it the API server silently prunes them), unless x-kubernetes-preserve-unknown-fields;
    - `nullable: true` admits null;
    - x-kubernetes-validations (CEL) become their JSON Schema equivalents (CEL_AS_JSON_SCHEMA);
    - `x-circuitlib-k8s-ref: NAME` becomes a $ref to the Kubernetes definition NAME;
    - `x-circuitlib-crd-ref: Kind.path` becomes the converted subtree of another CRD.
    """
    if isinstance(node, list):
        return [openapi_to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    if "x-circuitlib-k8s-ref" in node:
        return {"$ref": f"{K8S_DEFS_ID}#/$defs/{node['x-circuitlib-k8s-ref']}"}
    if "x-circuitlib-crd-ref" in node:
        kind, _, path = node["x-circuitlib-crd-ref"].partition(".")
        sub = crd_openapi_schema(kind)
        for key in path.split("."):
            sub = sub["properties"][key]
        return openapi_to_json_schema(sub)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: openapi_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = openapi_to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [openapi_to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    rules = []
    for validation in node.get("x-kubernetes-validations", []):
        rule = validation["rule"]
        if rule not in CEL_AS_JSON_SCHEMA:
            raise NotImplementedError(f"CEL rule without a JSON Schema equivalent in CEL_AS_JSON_SCHEMA: {rule!r}")
        if CEL_AS_JSON_SCHEMA[rule] is not None:
            rules.append(CEL_AS_JSON_SCHEMA[rule])
    if rules:
        out["allOf"] = [*out.get("allOf", []), *rules]
    return out


@cache
def crd_json_schema(kind: str) -> dict:
    """JSON Schema for a whole `kind` object; metadata checked as Kubernetes ObjectMeta."""
    schema = openapi_to_json_schema(crd_openapi_schema(kind))
    schema["properties"]["metadata"] = {"$ref": f"{K8S_DEFS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = crd_json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_registry(crd_semantics=True))


def _k8s_schema_file(doc: dict) -> Path:
    # apps/v1 -> apps-v1, rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (kubernetes-validate's layout)
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    return _k8s_schema_dir() / f"{doc['kind'].lower()}-{api_version}.json"


def k8s_validator(doc: dict) -> jsonschema.protocols.Validator:
    path = _k8s_schema_file(doc)
    if not path.exists():
        raise KeyError(f"no Kubernetes v{K8S_VERSION} schema for {doc.get('apiVersion')} {doc.get('kind')}")
    with open(path) as f:
        schema = json.load(f)
    registry = _registry(crd_semantics=False).with_resource(
        schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict) -> list[str]:
    """Schema violations of one Kubernetes object (KubeRay CRDs or core Kubernetes)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object: apiVersion and kind are required"]
    if doc["apiVersion"].startswith("ray.io/"):
        if doc["apiVersion"] != "ray.io/v1" or doc["kind"] not in CRD_FILES:
            return [
                f"no KubeRay schema kept for {doc['apiVersion']} {doc['kind']} (have ray.io/v1 {sorted(CRD_FILES)})"
            ]
        validator = crd_validator(doc["kind"])
    else:
        try:
            validator = k8s_validator(doc)
        except KeyError as e:
            return [str(e)]
    return [_format_error(e) for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]


# --------------------------------------------------------------------------- structure and exposure


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, PodTemplateSpec) for every pod template inside a workload or KubeRay object."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield "spec.template", spec.get("template") or {}
    elif kind == "RayCluster":
        yield from _ray_cluster_templates(spec, "spec")
    elif kind == "RayJob":
        yield from _ray_cluster_templates(spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec")
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]


def _ray_cluster_templates(spec: dict, where: str) -> Iterator[tuple[str, dict]]:
    yield f"{where}.headGroupSpec.template", (spec.get("headGroupSpec") or {}).get("template") or {}
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"{where}.workerGroupSpecs[{i}]({group.get('groupName')}).template", group.get("template") or {}


def _containers(template: dict) -> list[dict]:
    pod = template.get("spec") or {}
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def structure_errors(doc: dict) -> list[str]:
    """Checks the schemas leave out: names present, ports well formed and unique."""
    errors = []
    name = (doc.get("metadata") or {}).get("name")
    if not name:
        errors.append("metadata.name is missing")
    if "spec" not in doc and doc.get("kind") not in ("Namespace", "ConfigMap", "Secret", "ServiceAccount"):
        errors.append("spec is missing")
    for where, template in pod_templates(doc):
        for c in _containers(template):
            seen_names, seen_numbers = set(), set()
            for p in c.get("ports") or []:
                number, pname = p.get("containerPort"), p.get("name")
                if not isinstance(number, int) or not 1 <= number <= 65535:
                    errors.append(
                        f"{where} container {c.get('name')}: containerPort {number!r} is not an integer in 1..65535"
                    )
                if pname is not None and (
                    len(pname) > 15 or not re.fullmatch(r"(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?", pname)
                ):
                    errors.append(
                        f"{where} container {c.get('name')}: port name {pname!r} is not an IANA service name "
                        "(<=15 chars, a-z0-9-)"
                    )
                if pname in seen_names or number in seen_numbers:
                    errors.append(f"{where} container {c.get('name')}: port {pname or number} declared twice")
                seen_names.add(pname)
                seen_numbers.add(number)
    if doc.get("kind") == "Service":
        for p in (doc.get("spec") or {}).get("ports") or []:
            if not isinstance(p.get("port"), int) or not 1 <= p["port"] <= 65535:
                errors.append(f"Service {name}: port {p.get('port')!r} is not an integer in 1..65535")
    return errors


def service_errors(docs: list[dict]) -> list[str]:
    """Every Service selects some pod template in `docs` whose containers have its targetPorts."""
    errors = []
    templates = [(d, t) for d in docs for _, t in pod_templates(d) if d.get("kind") not in ("RayCluster", "RayJob")]
    for svc in (d for d in docs if d.get("kind") == "Service"):
        selector = (svc.get("spec") or {}).get("selector") or {}
        name = svc["metadata"]["name"]
        matches = [
            t
            for d, t in templates
            if d["metadata"].get("namespace") == svc["metadata"].get("namespace")
            and selector
            and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())
        ]
        if not matches:
            errors.append(f"Service {name}: selector {selector} matches no pod template in these manifests")
            continue
        for p in svc["spec"].get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            for t in matches:
                ports = [cp for c in _containers(t) for cp in c.get("ports") or []]
                if not any(target in (cp.get("name"), cp.get("containerPort")) for cp in ports):
                    errors.append(f"Service {name}: targetPort {target!r} is not a port of the pods it selects")
    return errors


def _bind_values(template: dict) -> list[str]:
    """Addresses a pod's containers are told to bind (--host X, --host=X, host: X args)."""
    found = []
    for c in _containers(template):
        args = [str(a) for a in [*(c.get("command") or []), *(c.get("args") or [])]]
        for i, a in enumerate(args):
            if a in ("--host", "-h", "--dashboard-host", "--bind") and i + 1 < len(args):
                found.append(args[i + 1])
            elif re.match(r"^--(host|dashboard-host|bind)=", a):
                found.append(a.split("=", 1)[1])
    return found


def exposure_findings(docs: list[dict]) -> list[str]:
    """What would make a service reachable from outside the cluster, or an undocumented all-interfaces bind."""
    findings = []
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if kind in ("Ingress", "Gateway", "HTTPRoute"):
            findings.append(f"{kind} {name}: routes traffic from outside the cluster")
        if kind == "Service" and (doc.get("spec") or {}).get("type", "ClusterIP") != "ClusterIP":
            findings.append(f"Service {name}: type {doc['spec']['type']} is reachable from outside the cluster")
        if kind == "Service" and (doc.get("spec") or {}).get("externalIPs"):
            findings.append(f"Service {name}: externalIPs set")
        cluster_specs = []
        if kind == "RayCluster":
            cluster_specs.append(doc.get("spec") or {})
        elif kind == "RayJob":
            cluster_specs.append((doc.get("spec") or {}).get("rayClusterSpec") or {})
        for spec in cluster_specs:
            head = spec.get("headGroupSpec") or {}
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                findings.append(
                    f"{kind} {name}: head serviceType {head['serviceType']} is reachable from outside the cluster"
                )
            if head.get("enableIngress"):
                findings.append(f"{kind} {name}: enableIngress exposes the dashboard")
            if ((head.get("headService") or {}).get("spec") or {}).get("type", "ClusterIP") != "ClusterIP":
                findings.append(f"{kind} {name}: headService type is not ClusterIP")
        for where, template in pod_templates(doc):
            pod = template.get("spec") or {}
            if pod.get("hostNetwork"):
                findings.append(f"{kind} {name} {where}: hostNetwork puts the pod on the node's interfaces")
            for c in _containers(template):
                for p in c.get("ports") or []:
                    if "hostPort" in p:
                        findings.append(f"{kind} {name} {where}: hostPort {p['hostPort']} opens a port on the node")
            binds = _bind_values(template)
            if kind in ("RayCluster", "RayJob") and "headGroupSpec.template" in where:
                spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
                # KubeRay's default dashboard-host is 0.0.0.0 when the param is absent.
                binds.append(str((spec["headGroupSpec"].get("rayStartParams") or {}).get("dashboard-host", "0.0.0.0")))
            if any(b in ALL_INTERFACES for b in binds):
                annotated = EXPOSURE_ANNOTATION in ((doc.get("metadata") or {}).get("annotations") or {}) or (
                    EXPOSURE_ANNOTATION in ((template.get("metadata") or {}).get("annotations") or {})
                )
                if not annotated:
                    findings.append(
                        f"{kind} {name} {where}: binds all interfaces without the {EXPOSURE_ANNOTATION} "
                        "annotation saying how it stays private"
                    )
    return findings


# --------------------------------------------------------------------------- files


def manifest_file_errors(path: Path) -> list[str]:
    docs = load_yaml_docs(path)
    errors = []
    for doc in docs:
        label = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
        errors += [f"{label}: {e}" for e in schema_errors(doc) + structure_errors(doc)]
    return errors


def check_paths(paths: Iterable[Path]) -> dict[Path, list[str]]:
    """Errors per file: launcher configs and Kubernetes manifests (Services checked across all files)."""
    results: dict[Path, list[str]] = {}
    k8s_docs: list[dict] = []
    for path in paths:
        docs = load_yaml_docs(path)
        if len(docs) == 1 and is_launcher_config(docs[0]):
            results[path] = launcher_errors(docs[0])
        else:
            results[path] = manifest_file_errors(path)
            k8s_docs += docs
    if k8s_docs:
        cross = service_errors(k8s_docs) + exposure_findings(k8s_docs)
        results[Path("<across manifests>")] = cross
    return results


def default_paths() -> list[Path]:
    return sorted(CLUSTER_DIR.glob("*.yaml")) + sorted((CLUSTER_DIR / "kuberay").glob("*.yaml"))


def _format_error(e: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in e.absolute_path) or "<root>"
    return f"{where}: {e.message}"


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or default_paths()
    results = check_paths(paths)
    bad = 0
    for path, errors in results.items():
        if errors:
            bad += 1
            print(f"FAIL {path}")
            for e in errors:
                print(f"     {e}")
        else:
            print(f"ok   {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
