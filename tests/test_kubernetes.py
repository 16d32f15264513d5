"""The Kubernetes manifests of deploy/kubernetes (docs/scaling.md, "d. Kubernetes").

No cluster runs here. Every core resource is checked against the Kubernetes API's own
schemas, bundled by `kubernetes-validate` (offline), in strict mode (an unknown field is an
error) for Kubernetes `KUBERNETES_VERSION`. The RayCluster is KubeRay's custom resource,
which those schemas do not know and no PyPI package ships: its pod templates are checked as
core `PodTemplate`s, and its own fields against `RAYCLUSTER_SCHEMA`, a subset of KubeRay's
CRD written out below. Then the manifests are checked against each other and against falrt:
the server's flags and variables against `falrt server`'s, the Secret keys they reference,
the Services' selectors and ports, the probes' ports, the Ray address, the DSN, and each Ray
worker group's `falrt-<machine type>` resource against falrt/machines.py.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from falrt.cli.main import main as falrt_cli

from falrt import machines
from tests.harness import REPO

pytestmark = pytest.mark.unit

MANIFESTS = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes these manifests promise to work on (README.md in that folder).
KUBERNETES_VERSION = "1.30.0"

# What the manifests use that issue 17 adds to `falrt server` and it does not have yet.
# When one of these lands, test_what_issue_17_adds_is_not_in_falrt_server_yet fails: take it
# off the list, and the other tests check it like any other flag. (Point 1 landed
# --ray-address, --advertise and --backend ray: the lists are empty.)
FLAGS_ADDED_BY_ISSUE_17: frozenset[str] = frozenset()
BACKENDS_ADDED_BY_ISSUE_17: frozenset[str] = frozenset()

# Variables the server reads that are not a flag's envvar (falrt/settings.py lists them).
OTHER_FALRT_VARIABLES = frozenset({"FALRT_SECRETS_KEY", "FALRT_CREDENTIALS"})

# Machine types the RayCluster must serve (docs/scaling.md, "d").
REQUIRED_MACHINE_TYPES = frozenset({"GPU-H100", "GPU-A100", "S"})
RESOURCE_PREFIX = "falrt-"

# The fields of KubeRay's RayCluster (ray.io/v1) the manifests may use, with their types,
# written out from the CRD ray-operator/config/crd/bases/ray.io_rayclusters.yaml of
# ray-project/kuberay (commit feeaf72f, v1.7.0-rc.0+5). Property lists are complete, so a
# misspelled field fails; pod templates are `object` here and checked as PodTemplates.
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT = {"type": "object"}
RAYCLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "additionalProperties": False,
            "properties": {
                "authOptions": _OBJECT,
                "autoscalerOptions": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                        "idleTimeoutSeconds": _INT32,
                        **{name: {} for name in ("args", "command", "env", "envFrom", "image",
                                                 "imagePullPolicy", "resources",
                                                 "securityContext", "version",
                                                 "volumeMounts")},
                    },
                },
                "enableInTreeAutoscaling": {"type": "boolean"},
                "gcsFaultToleranceOptions": _OBJECT, "headServiceAnnotations": _OBJECT,
                "historyServerOptions": _OBJECT, "managedBy": {"type": "string"},
                "networkPolicy": _OBJECT, "rayVersion": {"type": "string"},
                "suspend": {"type": "boolean"}, "tlsOptions": _OBJECT,
                "upgradeStrategy": _OBJECT,
                "headGroupSpec": {
                    "type": "object", "required": ["template"], "additionalProperties": False,
                    "properties": {
                        "enableIngress": {"type": "boolean"}, "headService": _OBJECT,
                        "ingressOptions": _OBJECT, "labels": _OBJECT,
                        "rayStartParams": _START_PARAMS, "resources": _OBJECT,
                        "serviceType": {"type": "string"}, "template": _OBJECT,
                    },
                },
                "workerGroupSpecs": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["groupName", "maxReplicas", "minReplicas", "template"],
                    "properties": {
                        "groupName": {"type": "string", "minLength": 1},
                        "idleTimeoutSeconds": _INT32, "labels": _OBJECT,
                        "maxReplicas": _INT32, "minReplicas": _INT32, "numOfHosts": _INT32,
                        "priority": {"type": "integer"}, "rayStartParams": _START_PARAMS,
                        "replicas": _INT32, "resources": _OBJECT, "scaleStrategy": _OBJECT,
                        "suspend": {"type": "boolean"}, "template": _OBJECT,
                    },
                }},
            },
        },
    },
}


# --- loading -------------------------------------------------------------------------------

@cache
def _files() -> dict[str, tuple[dict[str, Any], ...]]:
    """Each manifest file (by name) with its documents, in order."""
    return {path.name: tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
            for path in sorted(MANIFESTS.glob("*.yaml")) if path.name != "kustomization.yaml"}


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, documents in _files().items():
        for document in documents:
            yield name, document


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind
             and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _all(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _documents() if doc["kind"] == kind]


def _workloads() -> list[dict[str, Any]]:
    return _all("Deployment") + _all("StatefulSet")


def _server() -> dict[str, Any]:
    """The falrt server's container."""
    containers = _one("Deployment", "falrt-server")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def _server_args() -> dict[str, str]:
    """The server's `--flag=value` arguments (after the `server` subcommand)."""
    command, *flags = _server()["args"]
    assert command == "server"
    pairs = [flag.partition("=") for flag in flags]
    assert all(flag.startswith("--") and equals for flag, equals, _ in pairs), (
        "write every server argument as --flag=value")
    return {flag: value for flag, _, value in pairs}


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def _container_ports(container: dict[str, Any]) -> dict[str | int, int]:
    """Each port by name and by number."""
    ports: dict[str | int, int] = {}
    for port in container.get("ports", ()):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


def _ray_cluster() -> dict[str, Any]:
    return _one("RayCluster")


def _ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """A group's custom resources: KubeRay passes rayStartParams.resources to `ray start
    --resources=...` through a shell, so the value is JSON inside double quotes with its
    quotes escaped: '"{\\"falrt-S\\": 4}"'."""
    text = group.get("rayStartParams", {}).get("resources")
    if text is None:
        return {}
    assert text.startswith('"') and text.endswith('"'), f"{text!r}: quote it as KubeRay needs"
    parsed = json.loads(text[1:-1].replace('\\"', '"'))
    assert isinstance(parsed, dict)
    return parsed


def _group_container(group: dict[str, Any]) -> dict[str, Any]:
    (container,) = group["template"]["spec"]["containers"]
    return container


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity (`4`, `500m`, `8Gi`) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"{value!r} is no quantity these tests read"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


def _server_command() -> click.Command:
    return falrt_cli.commands["server"]


def _server_options() -> dict[str, click.Parameter]:
    return {opt: param for param in _server_command().params
            if isinstance(param, click.Option) for opt in (*param.opts, *param.secondary_opts)}


# --- the schemas -----------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_in_the_folder() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == _one("Namespace")["metadata"]["name"]
    assert sorted(kustomization["resources"]) == sorted(_files())


def _core_documents() -> list[Any]:
    return [pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
            for name, doc in _documents() if doc["kind"] != "RayCluster"]


@pytest.mark.parametrize("document", _core_documents())
def test_each_core_resource_validates_against_the_kubernetes_schemas(
    document: dict[str, Any],
) -> None:
    _validate(document)


def _validate(document: dict[str, Any]) -> None:
    """Strict validation; a failure names the field and the path, not the whole schema."""
    problem = ""
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        problem = f"{document['kind']} {document['metadata']['name']}: at {where}: {error.message}"
    if problem:
        pytest.fail(problem, pytrace=False)


def test_the_kubernetes_schemas_are_bundled_and_refuse_a_broken_manifest() -> None:
    """The schemas come with the package (the check needs no network), and the strict check
    has teeth: a misspelled field, a string where a number goes, a missing required field."""
    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (bundled / f"v{KUBERNETES_VERSION}-local-strict").is_dir()
    deployment = _one("Deployment", "falrt-server")
    for break_it in (_misspell_image, _replicas_as_words, _drop_selector):
        broken = copy.deepcopy(deployment)
        break_it(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _misspell_image(deployment: dict[str, Any]) -> None:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagee"] = container.pop("image")


def _replicas_as_words(deployment: dict[str, Any]) -> None:
    deployment["spec"]["replicas"] = "two"


def _drop_selector(deployment: dict[str, Any]) -> None:
    del deployment["spec"]["selector"]


def test_the_kubernetes_schemas_do_not_know_the_raycluster() -> None:
    """Why the RayCluster is checked below instead: a CRD has no schema in the bundle."""
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(_ray_cluster(), KUBERNETES_VERSION, strict=True)


def test_the_raycluster_uses_only_fields_of_kuberays_crd() -> None:
    jsonschema.validate(_ray_cluster(), RAYCLUSTER_SCHEMA)
    broken = copy.deepcopy(_ray_cluster())
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4  # the check has teeth
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAYCLUSTER_SCHEMA)


def _ray_templates() -> list[Any]:
    spec = _ray_cluster()["spec"]
    groups = [("head", spec["headGroupSpec"])]
    groups += [(group["groupName"], group) for group in spec["workerGroupSpecs"]]
    return [pytest.param(group["template"], id=name) for name, group in groups]


@pytest.mark.parametrize("template", _ray_templates())
def test_each_raycluster_pod_template_validates_as_a_kubernetes_pod_template(
    template: dict[str, Any],
) -> None:
    assert template["spec"]["containers"], "a group's pod needs a container"
    assert all(container.get("image") for container in template["spec"]["containers"])
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
               "metadata": {"name": "ray-group"}, "template": template}
    _validate(wrapped)


# --- the Ray cluster and falrt's machine types --------------------------------------------

def test_each_worker_group_serves_exactly_one_falrt_machine_type() -> None:
    served = []
    for group in _ray_cluster()["spec"]["workerGroupSpecs"]:
        ours = {name: amount for name, amount in _ray_resources(group).items()
                if name.startswith(RESOURCE_PREFIX)}
        assert len(ours) == 1, f"{group['groupName']}: one falrt-<machine type>, got {ours}"
        ((name, amount),) = ours.items()
        machine_type = name.removeprefix(RESOURCE_PREFIX)
        machines.check(machine_type)  # a machine type falrt knows
        assert amount >= 1 and amount == int(amount), f"{name}: a whole number of runners"
        served.append(machine_type)
    assert len(served) == len(set(served)), "one worker group per machine type"
    assert set(served) >= REQUIRED_MACHINE_TYPES


def test_the_replica_bounds_of_each_worker_group_hold() -> None:
    for group in _ray_cluster()["spec"]["workerGroupSpecs"]:
        low, high = group["minReplicas"], group["maxReplicas"]
        assert 0 <= low <= group.get("replicas", low) <= high, group["groupName"]
        assert high >= 1, f"{group['groupName']} can never run a runner"


def test_gpu_groups_have_a_gpu_for_every_runner_and_land_on_gpu_nodes() -> None:
    for group in _ray_cluster()["spec"]["workerGroupSpecs"]:
        ((name, amount),) = _ray_resources(group).items()
        if not machines.is_gpu(name.removeprefix(RESOURCE_PREFIX)):
            continue
        pod = group["template"]["spec"]
        resources = _group_container(group)["resources"]
        # KubeRay passes the limit as --num-gpus; each runner takes at least one GPU.
        # Kubernetes wants an extended resource's request, if given, equal to its limit.
        assert int(resources["limits"]["nvidia.com/gpu"]) == amount, group["groupName"]
        requested = resources.get("requests", {}).get("nvidia.com/gpu", amount)
        assert int(requested) == amount, group["groupName"]
        assert pod.get("nodeSelector"), f"{group['groupName']}: pin it to its GPU's nodes"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", ())), (
            f"{group['groupName']}: tolerate the GPU nodes' taint")


def test_cpu_groups_fit_their_runners_in_the_pods_limits() -> None:
    for group in _ray_cluster()["spec"]["workerGroupSpecs"]:
        ((name, amount),) = _ray_resources(group).items()
        tier = machines.CPU_TIERS.get(name.removeprefix(RESOURCE_PREFIX))
        if tier is None:
            continue
        limits = _group_container(group)["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits, group["groupName"]
        assert _quantity(limits["cpu"]) >= amount * tier.cpus, group["groupName"]
        assert _quantity(limits["memory"]) >= amount * tier.memory_bytes, group["groupName"]


def test_no_runner_can_land_on_the_ray_head() -> None:
    head = _ray_cluster()["spec"]["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    assert not any(name.startswith(RESOURCE_PREFIX) for name in _ray_resources(head))


def test_the_node_images_carry_the_clusters_ray_version() -> None:
    spec = _ray_cluster()["spec"]
    templates = [spec["headGroupSpec"]["template"]]
    templates += [group["template"] for group in spec["workerGroupSpecs"]]
    for template in templates:
        for container in template["spec"]["containers"]:
            tag = container["image"].rpartition(":")[2]
            assert tag.startswith(spec["rayVersion"] + "-"), container["image"]


# --- the server against falrt ------------------------------------------------------------

def test_what_issue_17_adds_is_not_in_falrt_server_yet() -> None:
    """The list shrinks as issue 17 lands: a flag or backend it names that `falrt server`
    now has must leave FLAGS_ADDED_BY_ISSUE_17 / BACKENDS_ADDED_BY_ISSUE_17."""
    options = _server_options()
    landed = sorted(FLAGS_ADDED_BY_ISSUE_17 & set(options))
    backend = options["--backend"].type
    assert isinstance(backend, click.Choice)
    landed += sorted(f"--backend {value}" for value in BACKENDS_ADDED_BY_ISSUE_17
                     if value in backend.choices)
    assert not landed, f"issue 17 landed {landed}: take them off the lists in this test"


def test_every_server_flag_exists_in_falrt_server_help() -> None:
    options = _server_options()
    help_text = _server_command().get_help(click.Context(_server_command(),
                                                         info_name="server"))
    for flag, value in _server_args().items():
        if flag in FLAGS_ADDED_BY_ISSUE_17:
            continue
        assert flag in options and flag in help_text, f"falrt server has no {flag}"
        param = options[flag]
        assert not param.is_flag, f"{flag} takes no value"
        if isinstance(param.type, click.Choice):
            allowed = {*param.type.choices, *BACKENDS_ADDED_BY_ISSUE_17}
            assert value in allowed, f"{flag}={value}: not one of {sorted(allowed)}"


def test_the_servers_falrt_variables_are_ones_falrt_reads() -> None:
    envvars = {param.envvar for param in _server_command().params if param.envvar}
    settings_doc = (REPO / "falrt" / "settings.py").read_text()
    for variable in _server().get("env", ()):
        name = variable["name"]
        if not name.startswith("FALRT_"):
            continue
        assert name in envvars or (name in OTHER_FALRT_VARIABLES and name in settings_doc), (
            f"falrt reads no {name}")
    flags = _server_args()
    store = next(p for p in _server_command().params if p.name == "store")
    assert "--store" not in flags and store.envvar == "FALRT_STORE", (
        "the DSN comes from the Secret through FALRT_STORE")


def test_every_variable_the_server_args_expand_is_defined() -> None:
    """Kubernetes expands $(NAME) in args only for a variable of the container's env."""
    defined = {variable["name"] for variable in _server().get("env", ())}
    for value in _server_args().values():
        for name in re.findall(r"\$\((\w+)\)", value):
            assert name in defined, f"$({name}) is not in the container's env"


def test_the_server_listens_on_the_ports_its_container_exposes() -> None:
    args, ports = _server_args(), _container_ports(_server())
    assert _port_of(args["--listen"]) == ports["grpc"]
    assert _port_of(args["--http-listen"]) == ports["http"]
    assert _port_of(args["--metrics-listen"]) == ports["metrics"]
    # runners dial the pod itself, on the gRPC port
    assert args["--advertise"] == f"$(POD_IP):{ports['grpc']}"
    pod_ip = next(v for v in _server()["env"] if v["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_the_ray_address_is_the_head_services_ray_client_port() -> None:
    address = urlsplit(_server_args()["--ray-address"])
    head = _ray_cluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert address.scheme == "ray"
    assert address.hostname == f"{_ray_cluster()['metadata']['name']}-head-svc"
    assert address.port == _container_ports(head)["client"]


def test_the_tls_files_and_server_name_match_the_secret_and_the_service() -> None:
    args = _server_args()
    mounts = {m["name"]: m["mountPath"] for m in _server()["volumeMounts"]}
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    tls_keys = _secret_keys(volumes["tls"]["secret"]["secretName"])
    for flag in ("--tls-cert", "--tls-key", "--tls-runner-ca"):
        folder, _, key = args[flag].rpartition("/")
        assert folder == mounts["tls"] and key in tls_keys, f"{flag}={args[flag]}"
    namespace = _one("Namespace")["metadata"]["name"]
    assert args["--tls-server-name"] == f"{_one('Service', 'falrt-server')['metadata']['name']}" \
        f".{namespace}.svc"


# --- the manifests against each other ------------------------------------------------------

def _secret_keys(name: str) -> set[str]:
    secret = _one("Secret", name)
    return {*secret.get("stringData", {}), *secret.get("data", {})}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in _workloads():
        yield workload["metadata"]["name"], workload["spec"]["template"]["spec"]


def test_every_secret_key_the_pods_reference_exists() -> None:
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            for variable in container.get("env", ()):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in _secret_keys(ref["name"]), f"{name}: {ref}"
        for volume in pod.get("volumes", ()):
            if "secret" in volume:
                keys = _secret_keys(volume["secret"]["secretName"])
                for item in volume["secret"].get("items", ()):
                    assert item["key"] in keys, f"{name}: {volume['name']} {item['key']}"


def test_every_service_selects_pods_and_targets_their_ports() -> None:
    for service in _all("Service"):
        selector = service["spec"]["selector"]
        matching = [w for w in _workloads()
                    if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        for workload in matching:
            ports: dict[str | int, int] = {}
            for container in workload["spec"]["template"]["spec"]["containers"]:
                ports |= _container_ports(container)
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert target in ports, f"{service['metadata']['name']}: no port {target}"


def test_every_workload_selects_its_own_pods() -> None:
    for workload in _workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    server_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget.items() <= server_labels.items()


def test_every_probe_points_at_a_port_its_container_exposes() -> None:
    for name, pod in _pod_specs():
        for container in pod["containers"]:
            ports = _container_ports(container)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind, {})
                handler = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
                if handler:
                    assert handler["port"] in ports, f"{name}/{container['name']} {kind}"


def test_the_servers_probe_health_over_https_because_they_have_a_certificate() -> None:
    assert "--tls-cert" in _server_args()  # so --metrics-listen serves HTTPS
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = _server()[kind]["httpGet"]
        assert (probe["path"], probe["scheme"]) == ("/healthz", "HTTPS"), kind


def test_the_database_url_names_the_postgres_of_the_manifests() -> None:
    dsn = urlsplit(_one("Secret", "falrt-secrets")["stringData"]["database-url"])
    service = _one("Service", "falrt-postgres")
    container = _one("StatefulSet", "falrt-postgres")["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v for v in container["env"]}
    password_ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    password = _one("Secret", password_ref["name"])["stringData"][password_ref["key"]]
    assert dsn.scheme == "postgresql"
    assert (dsn.hostname, dsn.port) == (service["metadata"]["name"],
                                        service["spec"]["ports"][0]["port"])
    assert (dsn.username, dsn.password) == (env["POSTGRES_USER"]["value"], password)
    assert dsn.path == "/" + env["POSTGRES_DB"]["value"]
