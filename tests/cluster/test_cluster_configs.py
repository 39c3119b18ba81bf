"""cluster/: launcher configs, KubeRay manifests, MLflow wiring, security defaults, sizing.

Everything here is offline. Launcher YAMLs are validated against the schema inside the
installed `ray` package and Ray's own config preparation; Kubernetes manifests against the
KubeRay CRD schemas in cluster/schemas/ and the Kubernetes schemas of `kubernetes-validate`.
Each validator is also shown to reject broken copies, so a green run means something.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sweeps.config import load_preset

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
ENTRYPOINT = "python sweeps/size_sweep.py"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cc = _load_module("cluster_check_configs", CLUSTER / "check_configs.py")
sizing = _load_module("cluster_sizing", CLUSTER / "sizing.py")


def launcher(name: str) -> dict:
    return yaml.safe_load(LAUNCHERS[name].read_text())


def manifest_docs(name: str) -> list[dict]:
    return cc.load_yaml_docs(KUBERAY / name)


def all_manifest_docs() -> list[dict]:
    return [doc for path in MANIFESTS for doc in cc.load_yaml_docs(path)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pinned_ray_version() -> str:
    """The exact ray version pyproject.toml pins (``"ray[...]==X"`` in its dependencies)."""
    pin = r'^\s*"ray(?:\[[^\]]*\])?\s*==\s*([^"\s;]+)"'
    pins = re.findall(pin, (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert len(pins) == 1, f"expected one exact ray pin in pyproject.toml, found {pins}"
    return pins[0]


def gpu_node_types(config: dict) -> dict[str, dict]:
    return {k: v for k, v in config["available_node_types"].items() if v.get("resources", {}).get("GPU", 0) > 0}


def is_spot(provider: str, node_type: dict) -> bool:
    nc = node_type["node_config"]
    if provider == "aws":
        return nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = nc.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or bool(scheduling.get("preemptible"))


def ray_cluster_specs() -> dict[str, dict]:
    return {
        "raycluster.yaml": one(manifest_docs("raycluster.yaml"), "RayCluster")["spec"],
        "rayjob.yaml": one(manifest_docs("rayjob.yaml"), "RayJob")["spec"]["rayClusterSpec"],
    }


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ============================================================== Ray cluster launcher configs


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_validates_against_ray_package_schema(name):
    schema = cc.ray_schema()
    assert schema["title"] == "Ray AutoScaler"  # the file inside the installed ray package
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(launcher(name))]
    assert errors == []


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_passes_rays_own_prepare_and_validate(name):
    assert cc.launcher_errors(launcher(name)) == []


def _break_launcher(config: dict, how: str) -> dict:
    c = copy.deepcopy(config)
    if how == "misspelled top-level key":
        c["max_worker"] = c.pop("max_workers")
    elif how == "GPU count as string":
        next(iter(gpu_node_types(c).values()))["resources"]["GPU"] = "1"
    elif how == "unknown auth key":
        c["auth"]["ssh_usr"] = "ubuntu"
    elif how == "unknown docker key":
        c["docker"]["imag"] = c["docker"].pop("image")
    elif how == "head type not defined":
        c["head_node_type"] = "no-such-type"
    elif how == "min_workers above max_workers":
        next(iter(gpu_node_types(c).values()))["min_workers"] = c["max_workers"] + 1
    elif how == "node type without resources":
        del next(iter(gpu_node_types(c).values()))["resources"]
    return c


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("misspelled top-level key", "'max_worker' was unexpected"),
        ("GPU count as string", "resources.GPU: '1' is not of type 'integer'"),
        ("unknown auth key", "'ssh_usr' was unexpected"),
        ("unknown docker key", "'imag' was unexpected"),
        ("head type not defined", "`head_node_type` must be one of"),
        ("min_workers above max_workers", "`max_workers` is smaller than the sum of `min_workers`"),
        ("node type without resources", "'resources' is a required property"),
    ],
)
def test_broken_launcher_copies_fail_naming_what_is_wrong(name, how, named):
    errors = cc.launcher_errors(_break_launcher(launcher(name), how))
    assert len(errors) == 1 and named in errors[0], errors


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_gpu_workers_are_spot_with_on_demand_fallback(name):
    config = launcher(name)
    gpu = gpu_node_types(config)
    spot = {k: v for k, v in gpu.items() if is_spot(name, v)}
    on_demand = {k: v for k, v in gpu.items() if not is_spot(name, v)}
    assert spot and on_demand, "need a spot GPU type and an on-demand fallback"
    for node_type in gpu.values():
        assert node_type["resources"]["GPU"] == 1, "one 80 GB GPU per node, one gpt2-xl trial per node"
        assert node_type["max_workers"] >= 1
    # The fallback must be able to run the same trials, and be chosen only after spot fails.
    assert len({json.dumps(v["resources"], sort_keys=True) for v in gpu.values()}) == 1
    assert min(v.get("priority", 0) for v in spot.values()) > max(v.get("priority", 0) for v in on_demand.values())
    assert all(v.get("min_workers", 0) == 0 for v in gpu.values()), "no GPU bills while no trial runs"
    # Autoscaling bounds.
    assert 1 <= config["max_workers"] <= 16
    assert config["idle_timeout_minutes"] > 0
    # The head: a CPU node, on demand, not running trials.
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert not is_spot(name, head)


def test_launcher_instance_types_have_one_80gb_gpu():
    # Instance types with exactly one 80 GB GPU: p5.4xlarge (H100 80GB), a2-ultragpu-1g (A100 80GB).
    aws = {v["node_config"]["InstanceType"] for v in gpu_node_types(launcher("aws")).values()}
    gcp = {v["node_config"]["machineType"] for v in gpu_node_types(launcher("gcp")).values()}
    assert aws == {"p5.4xlarge"}
    assert gcp == {"a2-ultragpu-1g"}
    for v in gpu_node_types(launcher("gcp")).values():
        assert v["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"  # required with GPUs


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_image_is_ray_gpu_image_at_pinned_version(name):
    pin = pinned_ray_version()
    image = launcher(name)["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(pin)}-py3\d+-(gpu|cu\d+)", image), image


def test_images_and_ray_versions_follow_the_pyproject_pin():
    import ray

    pin = pinned_ray_version()
    assert ray.__version__ == pin, "the environment running these checks should have the pinned ray"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pin)}$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu$", dockerfile, re.MULTILINE)
    assert "pip install --no-cache-dir ." in dockerfile
    for spec in ray_cluster_specs().values():
        assert spec["rayVersion"] == pin


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_installs_the_project_on_every_node(name):
    config = launcher(name)
    remote = [r for r, local in config["file_mounts"].items() if local == "."]
    assert len(remote) == 1, "the repository (run `ray up` from its root) is mounted on every node"
    assert f"pip install --no-cache-dir {remote[0]}" in config["setup_commands"]
    assert any("cluster/mlflow/requirements.txt" in c for c in config["head_setup_commands"])


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_dashboard_and_mlflow_stay_private(name):
    config = launcher(name)
    commands = " ".join(
        config["head_start_ray_commands"]
        + config["worker_start_ray_commands"]
        + config["setup_commands"]
        + config["head_setup_commands"]
    )
    assert "0.0.0.0" not in commands
    head_start = " ".join(config["head_start_ray_commands"])
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start)
    assert "cluster/mlflow/start-mlflow.sh" in head_start
    assert not config["provider"].get("security_group", {}).get("IpPermissions"), "no extra inbound rules"


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_exports_tracking_uri_on_every_node_before_ray_start(name):
    config = launcher(name)
    hosts = (
        ("head_start_ray_commands", r"\$\(hostname -I \| awk '\{print \$1\}'\)"),
        ("worker_start_ray_commands", r"\$RAY_HEAD_IP"),
    )
    for key, host in hosts:
        start = [c for c in config[key] if "ray start" in c]
        assert len(start) == 1
        m = re.search(rf"export MLFLOW_TRACKING_URI=http://{host}:(\d+);", start[0])
        assert m, f"{key}: MLFLOW_TRACKING_URI must be exported before ray start"
        assert start[0].index("MLFLOW_TRACKING_URI") < start[0].index("ray start")
        assert m.group(1) == "5000"  # start-mlflow.sh's default port
    mlflow_cmd = next(c for c in config["head_start_ray_commands"] if "start-mlflow.sh" in c)
    assert re.search(r"MLFLOW_ARTIFACTS_DESTINATION=(s3|gs)://", mlflow_cmd), "artifacts proxied to S3/GCS"


def _run_start_mlflow(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER / "mlflow" / "start-mlflow.sh")],
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent-home-for-test", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_start_mlflow_refuses_all_interfaces(host):
    result = _run_start_mlflow({"MLFLOW_HOST": host, "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/prefix"})
    assert result.returncode == 2 and "refusing to bind" in result.stderr


def test_start_mlflow_refuses_placeholder_bucket_and_missing_destination():
    result = _run_start_mlflow(
        {"MLFLOW_HOST": "10.0.0.5", "MLFLOW_ARTIFACTS_DESTINATION": "s3://CHANGE-ME-circuits-bucket/x"}
    )
    assert result.returncode == 2 and "placeholder" in result.stderr
    result = _run_start_mlflow({"MLFLOW_HOST": "10.0.0.5"})
    assert result.returncode != 0 and "MLFLOW_ARTIFACTS_DESTINATION" in result.stderr


def test_tunnel_forwards_dashboard_and_mlflow_through_ray_ssh():
    script = (CLUSTER / "tunnel.sh").read_text()
    assert "ray exec" in script and "--port-forward 8265" in script and "--port-forward 5000" in script
    assert "loopback_relay.py" in script


def test_loopback_relay_forwards_to_the_private_address():
    relay = _load_module("cluster_loopback_relay", CLUSTER / "mlflow" / "loopback_relay.py")

    async def scenario() -> bytes:
        async def upstream(reader, writer):
            writer.write(b"mlflow:" + await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(upstream, "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        relay_server = await relay.serve(0, "127.0.0.2", port)
        assert relay_server.sockets[0].getsockname()[0] == "127.0.0.1"  # loopback only
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_server.sockets[0].getsockname()[1])
        writer.write(b"GET /health")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        relay_server.close()
        server.close()
        return answer

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == b"mlflow:GET /health"


# ============================================================== KubeRay and Kubernetes manifests


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path):
    docs = cc.load_yaml_docs(path)
    assert docs
    for doc in docs:
        label = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        assert cc.schema_errors(doc) == [], label
        assert cc.structure_errors(doc) == [], label


def test_ray_objects_are_checked_against_the_kept_crd_schemas():
    kinds = {(d["apiVersion"], d["kind"]) for d in all_manifest_docs()}
    assert {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")} <= kinds
    for kind in ("RayCluster", "RayJob"):
        schema = cc.crd_json_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        # every core-type reference resolves in the Kubernetes definitions
        refs = re.findall(r'"\$ref": "[^"#]*#/\$defs/([^"]+)"', json.dumps(schema))
        defs = cc._k8s_definitions(True)["$defs"]
        assert refs and all(r in defs for r in refs)
    provenance = (CLUSTER / "schemas" / "README.md").read_text()
    for path in cc.CRD_FILES.values():
        assert path.name in provenance
        commit = re.search(r"at commit\s+([0-9a-f]{40})", path.read_text().replace("\n#", " "))
        assert commit and commit.group(1) in provenance, f"{path.name}: source commit noted in the README"


def _mutate(doc: dict, path: str, value=None, delete: bool = False) -> dict:
    d = copy.deepcopy(doc)
    node = d
    keys = [k.replace("~1", "/") for k in path.split("/")]  # JSON-pointer escape for keys with "/"
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last: Any = int(keys[-1]) if isinstance(node, list) else keys[-1]  # an index or a key
    if delete:
        del node[last]
    else:
        node[last] = value
    return d


WORKER_GPUS = "spec/workerGroupSpecs/0/template/spec/containers/0/resources/limits/nvidia.com~1gpu"
BROKEN_RAY = [
    ("RayCluster", "spec/workerGroupSpecs/0/minReplica", 1, False, "minReplica"),
    ("RayCluster", "spec/workerGroupSpecs/0/groupName", None, True, "groupName"),
    ("RayCluster", "spec/headGroupSpec/template", None, True, "template"),
    ("RayCluster", "spec/workerGroupSpecs/0/template/spec/containers/0/resouces", {}, False, "resouces"),
    ("RayCluster", WORKER_GPUS, "one", False, "nvidia.com/gpu"),
    ("RayCluster", WORKER_GPUS, 1.5, False, "nvidia.com/gpu"),
    ("RayCluster", "spec/headGroupSpec/rayStartParams/num-cpus", 0, False, "num-cpus"),
    ("RayCluster", "spec/autoscalerOptions/version", "v3", False, "version"),
    ("RayCluster", "spec/managedBy", "someone-else", False, "managedBy"),
    ("RayCluster", "spec/workerGroupSpecs/0/priority", 10, False, "priority"),
    ("RayCluster", "metadata/labelz", {}, False, "labelz"),
    ("RayCluster", "apiVersion", "ray.io/v1alpha2", False, "no KubeRay schema"),
    ("RayJob", "spec/entrypiont", ENTRYPOINT, False, "entrypiont"),
    ("RayJob", "spec/backoffLimit", "2", False, "backoffLimit"),
    ("RayJob", "spec/rayClusterSpec/workerGroupSpecs/0/maxReplicas", None, True, "maxReplicas"),
    (
        "RayJob",
        "spec/rayClusterSpec/headGroupSpec/template/spec/containers/0/imagePullPolicy",
        3,
        False,
        "imagePullPolicy",
    ),
    ("RayJob", "spec/deletionStrategy", {"onSuccess": {"policy": "DeleteCluster"}}, False, "deletionStrategy"),
    (
        "RayJob",
        "spec/deletionStrategy",
        {"onSuccess": {"policy": "Delete"}, "onFailure": {"policy": "DeleteNone"}},
        False,
        "policy",
    ),
]


@pytest.mark.parametrize("kind,path,value,delete,expect", BROKEN_RAY, ids=[f"{b[0]}:{b[1]}" for b in BROKEN_RAY])
def test_broken_ray_manifest_copies_fail(kind, path, value, delete, expect):
    doc = one(manifest_docs("raycluster.yaml" if kind == "RayCluster" else "rayjob.yaml"), kind)
    broken = _mutate(doc, path, value, delete)
    errors = cc.schema_errors(broken)
    assert errors, f"{kind} with {path} broken still validates"
    assert any(expect in e for e in errors), errors


def test_valid_variants_still_pass():
    # The converter must not reject what the API server accepts.
    rj = one(manifest_docs("rayjob.yaml"), "RayJob")
    strategy = {"onSuccess": {"policy": "DeleteCluster"}, "onFailure": {"policy": "DeleteNone"}}
    ok = _mutate(rj, "spec/deletionStrategy", strategy)
    assert cc.schema_errors(ok) == []
    rc = one(manifest_docs("raycluster.yaml"), "RayCluster")
    ok = copy.deepcopy(rc)
    ok["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "96Gi"
    ok["spec"]["managedBy"] = "ray.io/kuberay-operator"
    assert cc.schema_errors(ok) == []


def only_error(errors: list[str]) -> str:
    """The one finding a broken copy must give (a copy broken in one place is wrong in one place)."""
    assert len(errors) == 1, errors
    return errors[0]


def test_broken_standard_objects_fail_naming_the_field():
    docs = manifest_docs("mlflow.yaml")
    deployment = one(docs, "Deployment", "mlflow")
    assert "'portz' was unexpected" in only_error(
        cc.schema_errors(_mutate(deployment, "spec/template/spec/containers/0/portz", []))
    )
    assert only_error(cc.schema_errors(_mutate(deployment, "spec/replicas", "one"))).startswith("spec.replicas:")
    service = one(docs, "Service", "mlflow")
    assert only_error(cc.schema_errors(_mutate(service, "spec/ports/0/port", "http"))).startswith("spec.ports.0.port:")
    assert "port 70000" in only_error(cc.structure_errors(_mutate(service, "spec/ports/0/port", 70000)))
    assert "'Http_Port'" in only_error(
        cc.structure_errors(_mutate(deployment, "spec/template/spec/containers/0/ports/0/name", "Http_Port"))
    )
    assert only_error(cc.structure_errors(_mutate(deployment, "metadata/name", None, delete=True))) == (
        "metadata.name is missing"
    )
    assert "NoSuchKind" in only_error(
        cc.schema_errors({"apiVersion": "v1", "kind": "NoSuchKind", "metadata": {"name": "x"}})
    )


def _is_mlflow(doc: dict, kind: str) -> bool:
    return doc["kind"] == kind and doc["metadata"]["name"] == "mlflow"


def test_services_select_pods_that_have_their_ports():
    docs = all_manifest_docs()
    assert cc.service_errors(docs) == []
    broken = [_mutate(d, "spec/ports/0/targetPort", "htp") if _is_mlflow(d, "Service") else d for d in docs]
    assert "targetPort 'htp' is not a port" in only_error(cc.service_errors(broken))
    broken = [_mutate(d, "spec/selector", {"app": "nothing"}) if _is_mlflow(d, "Service") else d for d in docs]
    assert "matches no pod template" in only_error(cc.service_errors(broken))


@pytest.mark.parametrize("which", ["raycluster.yaml", "rayjob.yaml"])
def test_gpu_worker_groups_request_one_nvidia_gpu(which):
    spec = ray_cluster_specs()[which]
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        (container,) = [c for c in containers(group["template"]) if c["name"].startswith("ray")]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources.get("requests", {}).get("nvidia.com/gpu", 1) == 1
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1
    head = containers(spec["headGroupSpec"]["template"])
    assert all("nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}) for c in head)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "trials stay off the head"
    assert spec["enableInTreeAutoscaling"] is True


def test_rayjob_runs_the_size_sweep():
    job = one(manifest_docs("rayjob.yaml"), "RayJob")
    entry = job["spec"]["entrypoint"]
    assert entry.startswith(ENTRYPOINT + " ")
    args = shlex.split(entry)[2:]
    opts = dict(zip(args[::2], args[1::2], strict=True))  # flag, value pairs
    assert set(opts) <= {"--preset", "--name", "--storage-path", "--tracking-uri"}
    assert opts["--preset"] in ("paper", "smollm2-cpu", "tiny")
    assert opts["--name"], "a fixed name is what makes a resubmitted job resume"
    assert re.match(r"(s3|gs)://", opts["--storage-path"]), "storage every node can reach"
    assert job["spec"]["backoffLimit"] >= 1, "a failed attempt is resubmitted (and resumes)"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    # The working_dir the submitter ships is where the image keeps the project.
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    workdir_line = re.search(r"^WORKDIR (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)
    assert workdir_line is not None, "the Dockerfile sets a WORKDIR"
    workdir = workdir_line.group(1)
    assert runtime_env["working_dir"] == workdir
    assert "COPY --chown=ray:users sweeps ./sweeps" in (CLUSTER / "Dockerfile").read_text()


def test_rayjob_cluster_is_the_raycluster_spec():
    specs = ray_cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"]


def test_every_ray_pod_gets_the_mlflow_service_uri():
    docs = all_manifest_docs()
    service = one(docs, "Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    uri = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port}"
    for which, spec in ray_cluster_specs().items():
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for template in templates:
            for c in containers(template):
                assert env_of(c).get("MLFLOW_TRACKING_URI") == uri, f"{which} {c['name']}"
    job = one(docs, "RayJob")
    assert f"--tracking-uri {uri}" in job["spec"]["entrypoint"]
    # The server accepts that Host header (DNS-rebinding protection is on).
    config = one(docs, "ConfigMap", "mlflow-config")["data"]
    allowed = config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert uri.removeprefix("http://") in allowed and "localhost:*" in allowed
    assert "*" not in allowed


def test_mlflow_server_backend_and_proxied_artifacts():
    docs = manifest_docs("mlflow.yaml")
    deployment = one(docs, "Deployment", "mlflow")
    (server,) = containers(deployment["spec"]["template"])
    args = server["args"]
    env = env_of(server)
    assert "--serve-artifacts" in args and "--no-serve-artifacts" not in args
    assert args[args.index("--artifacts-destination") + 1] == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert args[args.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert "--disable-security-middleware" not in args
    postgres_svc = one(docs, "Service", "mlflow-postgres")
    backend = env["MLFLOW_BACKEND_STORE_URI"]
    postgres_port = postgres_svc["spec"]["ports"][0]["port"]
    assert backend.startswith("postgresql://")
    assert f"@mlflow-postgres.circuits.svc.cluster.local:{postgres_port}/" in backend
    assert "$(POSTGRES_PASSWORD)" in backend  # from the Secret, never committed
    names = [e["name"] for e in server["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI"), (
        "k8s expands $(VAR) only from earlier entries"
    )
    assert not [d for d in docs if d["kind"] == "Secret"], "no secrets in the repository"
    postgres = one(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"]["spec"]["containers"][0]
    assert postgres["image"].startswith("postgres:")


def test_kubernetes_exposure_defaults():
    docs = all_manifest_docs()
    assert cc.exposure_findings(docs) == []
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    for spec in ray_cluster_specs().values():
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
        assert not spec["headGroupSpec"].get("enableIngress")
    assert not {d["kind"] for d in docs} & {"Ingress", "Gateway", "HTTPRoute"}


def test_exposure_findings_catch_public_services_and_undocumented_binds():
    docs = all_manifest_docs()
    public = [_mutate(d, "spec/type", "LoadBalancer") if _is_mlflow(d, "Service") else d for d in docs]
    assert any("LoadBalancer" in f for f in cc.exposure_findings(public))
    nodeport = [
        _mutate(d, "spec/rayClusterSpec/headGroupSpec/serviceType", "NodePort") if d["kind"] == "RayJob" else d
        for d in docs
    ]
    assert any("NodePort" in f for f in cc.exposure_findings(nodeport))
    undocumented = [_mutate(d, "metadata/annotations", {}) if _is_mlflow(d, "Deployment") else d for d in docs]
    assert any("binds all interfaces" in f for f in cc.exposure_findings(undocumented))
    undocumented = [
        _mutate(d, "spec/headGroupSpec/template/metadata/annotations", {}) if d["kind"] == "RayCluster" else d
        for d in docs
    ]
    assert any("binds all interfaces" in f for f in cc.exposure_findings(undocumented))
    ingress = docs + [{"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "x"}, "spec": {}}]
    assert any("Ingress" in f for f in cc.exposure_findings(ingress))


def test_check_configs_cli_passes_on_the_repository(capsys):
    assert cc.main([]) == 0
    out = capsys.readouterr().out
    for path in list(LAUNCHERS.values()) + MANIFESTS:
        assert f"ok   {path}" in out


# ============================================================== README and sizing


def test_readme_sizing_table_is_what_sizing_py_computes():
    readme = (CLUSTER / "README.md").read_text()
    block = re.search(r"<!-- sizing:begin[^>]*-->\n(.*?)\n<!-- sizing:end -->", readme, re.DOTALL)
    assert block, "README sizing block markers"
    assert block.group(1).strip() == sizing.table().strip(), "regenerate with `python cluster/sizing.py`"
    assert "computed, not measured" in block.group(1)


def test_sizing_parameter_counts_match_a_real_gpt2():
    transformers = pytest.importorskip("transformers")  # a tiny GPT-2 built from a config, no hub access
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    masked = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer.h."))
    total = sum(p.numel() for p in model.parameters())  # lm_head is tied to wte
    assert masked == 2 * sizing.gpt2_block_params(32)
    assert total == masked + 100 * 32 + 16 * 32 + 2 * 32
    assert sizing.TOTAL == 1_557_611_200  # gpt2-xl's published parameter count


def test_sizing_supports_one_gpt2xl_trial_per_80gb_gpu():
    for seq in sizing.SEQ_LENS:  # at the preset's batch (32): one 80 GB GPU is needed, and enough in either precision
        bf16, fp32 = sizing.discovery_memory_gib(2, seq)["peak"], sizing.discovery_memory_gib(4, seq)["peak"]
        assert 40 < bf16 < fp32 < sizing.A100.memory_gib
    assert sizing.edit_memory_gib() < sizing.A100.memory_gib / 2
    h = sizing.sweep_gpu_hours(sizing.A100, 32)
    assert h["total"] == pytest.approx(h["discovery"] + h["checkpoints"] + h["edits"] + h["edit setup"])
    frequent = sizing.sweep_gpu_hours(sizing.A100, 32, checkpoint_every=50, shard_size=25)
    preset = sizing.sweep_gpu_hours(sizing.A100, 32)
    assert preset["total"] < frequent["total"] / 2  # the paper preset's sparse checkpoints and big shards pay off
    paper = load_preset("paper")  # the sizing reads the preset, not copies of it
    circuits = len(paper.datasets) * len(paper.seeds) * len(paper.discovery.densities)
    assert sizing.edit_trials() == (circuits * 3 + 1) * paper.shards() == (60 * 3 + 1) * 1
    assert (sizing.DISCOVERY_STEPS, sizing.BATCH, sizing.EDIT_STEPS) == (
        paper.discovery.max_steps,
        paper.discovery.batch_size,
        paper.edit.max_steps,
    )
    assert sizing.edit_trials(25) == (circuits * 3 + 1) * 6  # or six shards of 25 (149 requests)


def test_the_paper_presets_edit_gpu_share_is_the_one_its_edit_memory_gives():
    """gpus_per_edit_trial is computed from the edit's memory (issue 10, item 4): as many trials as fit one GPU."""
    share = yaml.safe_load((REPO / "sweeps" / "presets" / "paper.yaml").read_text())["gpus_per_edit_trial"]
    assert share == sizing.edit_gpu_share() == sizing.edit_gpu_share(sizing.H100.memory_gib)
    trials = round(1 / share)
    assert trials >= 2 and trials * share <= 1
    assert trials * sizing.edit_memory_gib() <= sizing.A100.memory_gib < (trials + 1) * sizing.edit_memory_gib()


def test_readme_walks_each_target_to_a_running_sweep_and_the_mlflow_ui():
    readme = (CLUSTER / "README.md").read_text()
    headings = (
        "## AWS",
        "## Google Cloud",
        "## Kubernetes",
        "## Sizing for gpt2-xl",
        "## When a spot node is taken away",
        "## Network exposure",
    )
    for heading in headings:
        assert heading in readme
    for target in ("aws", "gcp"):
        assert f"ray up -y cluster/{target}.yaml" in readme
        assert f"cluster/tunnel.sh cluster/{target}.yaml" in readme
        assert f"ray down -y cluster/{target}.yaml" in readme
    submits = readme.count(f"-- \\\n  {ENTRYPOINT} ")
    assert submits >= 3, "a `ray job submit ... -- python sweeps/size_sweep.py` per target"
    assert "kubectl -n circuits port-forward svc/mlflow 5000:5000" in readme
    assert "kubectl -n circuits port-forward svc/circuits-head-svc 8265:8265" in readme
    assert "kubectl apply -f cluster/kuberay/rayjob.yaml" in readme
    assert "same\n   `--name` and `--storage-path`" in readme or "same `--name` and `--storage-path`" in readme


# ============================================================== closed by default (issue 11 item 5)


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_starts_ray_with_token_auth_and_mlflow_credentials_on_every_node(name):
    config = launcher(name)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # Ray's default token path
    assert "~/.circuits/mlflow_password" in config["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in config[key] if "ray start" in c]
        for export in ("export RAY_AUTH_MODE=token;", "MLFLOW_TRACKING_PASSWORD=$(cat ~/.circuits/mlflow_password)"):
            assert export in start and start.index(export) < start.index("ray start"), (key, export)
    mlflow_cmd = next(c for c in config["head_start_ray_commands"] if "start-mlflow.sh" in c)
    assert "MLFLOW_TRACKING_PASSWORD=$(cat ~/.circuits/mlflow_password)" in mlflow_cmd


def test_start_mlflow_refuses_to_run_without_a_password_and_serves_basic_auth():
    result = _run_start_mlflow({"MLFLOW_HOST": "10.0.0.5", "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/prefix"})
    assert result.returncode == 2 and "set MLFLOW_TRACKING_PASSWORD" in result.stderr
    script = (CLUSTER / "mlflow" / "start-mlflow.sh").read_text()
    assert "--app-name basic-auth" in script and "admin_password" not in script


def test_kuberay_clusters_use_token_auth_and_a_network_policy():
    for spec in ray_cluster_specs().values():
        assert spec["authOptions"] == {"mode": "token"}
    policy = one(all_manifest_docs(), "NetworkPolicy", "circuits-ingress")
    assert policy["metadata"]["namespace"] == "circuits"
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert sources and all(peer.get("podSelector", {}).get("matchLabels") for peer in sources)  # never "anyone"


def test_kuberay_mlflow_requires_authentication_and_ray_pods_send_credentials():
    deployment = one(manifest_docs("mlflow.yaml"), "Deployment", "mlflow")
    (server,) = containers(deployment["spec"]["template"])
    assert server["args"][server["args"].index("--app-name") + 1] == "basic-auth"
    admin = next(e for e in server["env"] if e["name"] == "MLFLOW_AUTH_ADMIN_PASSWORD")
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "mlflow-admin"
    config = one(manifest_docs("mlflow.yaml"), "ConfigMap", "mlflow-config")["data"]["basic_auth.ini"]
    assert "admin_password" not in config and "default_permission = NO_PERMISSIONS" in config
    for spec in ray_cluster_specs().values():
        for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
            for container in containers(template):
                password = next(e for e in container["env"] if e["name"] == "MLFLOW_TRACKING_PASSWORD")
                assert password["valueFrom"]["secretKeyRef"]["name"] == "mlflow-admin"
