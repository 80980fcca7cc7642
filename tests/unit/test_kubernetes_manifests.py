"""deploy/kubernetes/: the manifests are valid Kubernetes objects and fit together.

No Kubernetes cluster is available here, so they are validated, not run:
kubernetes-validate checks the core objects against the schemas it ships (nothing is
downloaded); it has no schema for KEDA's custom resources, whose references are
checked by hand below.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from asyncinvoke import topology
from asyncinvoke.nodes import parse_nodes

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
KEDA = "keda.sh/v1alpha1"


def _objects() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(DEPLOY.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container["env"]}


@pytest.mark.parametrize(
    "manifest",
    [o for o in _objects() if o["apiVersion"] != KEDA],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_each_core_object_is_valid_against_the_kubernetes_schema(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_an_invalid_object_is_refused_by_the_validator() -> None:
    worker = _one("Deployment", "asyncinvoke-worker")
    broken = {**worker, "spec": {**worker["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_worker_is_ready_on_readyz_and_outlives_its_shutdown_grace() -> None:
    pod = _one("Deployment", "asyncinvoke-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    grace = float(_env(container)["ASYNCINVOKE_SHUTDOWN_GRACE"]["value"])
    assert pod["terminationGracePeriodSeconds"] > grace
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "0.0.0.0" in container["args"]  # the kubelet probes from outside the pod


def test_the_broker_url_list_comes_from_the_secret_and_names_three_nodes() -> None:
    secret = _one("Secret", "asyncinvoke")
    for name in ("asyncinvoke-worker", "asyncinvoke-gateway"):
        (container,) = _one("Deployment", name)["spec"]["template"]["spec"]["containers"]
        reference = _env(container)["ASYNCINVOKE_AMQP_URL"]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "asyncinvoke"
        assert len(parse_nodes(secret["stringData"][reference["key"]])) == 3


def test_the_gateway_service_selects_the_gateway_pods() -> None:
    service = _one("Service", "asyncinvoke-gateway")
    labels = _one("Deployment", "asyncinvoke-gateway")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_keda_scales_the_workers_on_a_function_queue_that_exists() -> None:
    scaled = _one("ScaledObject", "asyncinvoke-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "asyncinvoke-worker"
    (trigger,) = scaled["spec"]["triggers"]
    functions_toml = _one("ConfigMap", "asyncinvoke-functions")["data"]["functions.toml"]
    names = topology.Names("asyncinvoke")
    queues = {names.function_queue(name) for name in tomllib.loads(functions_toml)["functions"]}
    assert trigger["metadata"]["queueName"] in queues
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = _one("Secret", "asyncinvoke")
    for target in auth["spec"]["secretTargetRef"]:
        assert target["name"] == "asyncinvoke" and target["key"] in secret["stringData"]
