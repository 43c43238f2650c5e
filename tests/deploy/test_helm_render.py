"""Render the Helm chart and check the manifests, where Go is installed.

helm itself cannot be installed here. tests/deploy/helmrender is a ~150-line Go program that
renders the chart with Go's text/template and sprig, the engine helm uses, plus helm's
include/required/fail/toYaml/tpl; it builds offline from Debian packages:

    apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev

It approximates `helm template` for what this chart uses (no .Capabilities, lookup, .Files,
subcharts, hooks). The rendered manifests are then checked against the Kubernetes API
schemas with kubernetes-validate, and the objects are checked against each other (selectors,
names, grace period vs drain). Without Go these tests skip; test_helm.py still runs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ._support import CHART_DIR, INSTALL_HINTS, describe, find_tool, require_tool, run

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install yamllint)")

RENDERER_SRC = Path(__file__).resolve().parent / "helmrender"
GOPATH = os.environ.get("S3FERRY_GOPATH", "/usr/share/gocode")
EXAMPLE_VALUES = CHART_DIR / "ci" / "example-values.yaml"

Render = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    go = find_tool("go")
    if go is None:
        pytest.skip(f"go is not installed ({INSTALL_HINTS['go']})")
    if not (Path(GOPATH) / "src/github.com/Masterminds/sprig").is_dir():
        pytest.skip(f"sprig sources not found under {GOPATH} ({INSTALL_HINTS['go']})")
    out = tmp_path_factory.mktemp("helmrender")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "",
           "GOCACHE": str(out / "gocache")}
    built = run([go, "build", "-o", str(out / "helmrender"), "."], cwd=RENDERER_SRC,
                env=env, timeout=240)
    assert built.returncode == 0, describe(built)

    counter = itertools.count()

    def _render(*values: dict[str, Any] | Path) -> subprocess.CompletedProcess[str]:
        """Render with values.yaml, then each file or dict merged over it in order."""
        files = []
        for item in values:
            if isinstance(item, Path):
                files.append(str(item))
            else:
                path = out / f"values-{next(counter)}.yaml"
                path.write_text(yaml.safe_dump(item))
                files.append(str(path))
        return run([str(out / "helmrender"), str(CHART_DIR), *files], timeout=30)

    return _render


def _objects(proc: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], dict[str, Any]]:
    assert proc.returncode == 0, describe(proc)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(objects) == len(docs), "two objects share a kind and name"
    return objects


def _one(objects: dict[tuple[str, str], dict[str, Any]], kind: str,
         suffix: str = "") -> dict[str, Any]:
    found = [o for (k, n), o in objects.items() if k == kind and n.endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {len(found)} found"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.timeout(300)
def test_example_values_render_every_object(render: Render) -> None:
    objects = _objects(render(EXAMPLE_VALUES))
    kinds = sorted(kind for kind, _ in objects)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "ScaledObject",
                     "Service", "Service", "ServiceAccount", "ServiceMonitor",
                     "TriggerAuthentication"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kube_version", ["1.25.0", "1.37.0"])
def test_rendered_manifests_match_the_kubernetes_schemas(
        render: Render, tmp_path: Path, kube_version: str) -> None:
    validator = require_tool("kubernetes-validate")
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(render(EXAMPLE_VALUES).stdout)
    proc = run([validator, "--strict", "-k", kube_version, str(manifest)], timeout=120)
    assert proc.returncode == 0, describe(proc)
    # KEDA and Prometheus Operator kinds have no schema in kubernetes-validate.
    passed = proc.stdout.count(" passed for resource ")
    assert passed == 7, describe(proc)


@pytest.mark.timeout(300)
def test_workers_drain_within_the_grace_period(render: Render) -> None:
    worker = _one(_objects(render(EXAMPLE_VALUES)), "Deployment", "-worker")
    pod = worker["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])
    drain = float(env["S3FERRY_WORKER__DRAIN_SECONDS"]["value"])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert env["S3FERRY_WORKER__PART_SIZE"]["value"] == "8388608"
    assert env["S3FERRY_WORKER__MAX_JOBS"]["value"] == "8"
    assert env["S3FERRY_WORKER__SERVER_COPY_BUDGET"]["value"] == "0"
    assert pod["containers"][0]["args"] == ["worker"]
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"


@pytest.mark.timeout(300)
def test_refuses_a_grace_period_shorter_than_the_drain(render: Render) -> None:
    proc = render(EXAMPLE_VALUES, {"worker": {"terminationGracePeriodSeconds": 20}})
    assert proc.returncode != 0
    assert "terminationGracePeriodSeconds must be larger than worker.drainSeconds" in proc.stderr


@pytest.mark.timeout(300)
def test_defaults_require_the_queue_url(render: Render) -> None:
    proc = render()
    assert proc.returncode != 0
    assert "queue.url is required" in proc.stderr


@pytest.mark.timeout(300)
def test_objects_reference_each_other(render: Render) -> None:
    objects = _objects(render(EXAMPLE_VALUES))
    worker = _one(objects, "Deployment", "-worker")
    dispatcher = _one(objects, "Deployment", "-dispatcher")
    scaled = _one(objects, "ScaledObject")
    auth = _one(objects, "TriggerAuthentication")
    service = _one(objects, "Service", "-metrics")
    monitor = _one(objects, "ServiceMonitor")
    account = _one(objects, "ServiceAccount")
    config = _one(objects, "ConfigMap")

    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert trigger["metadata"]["queueURL"].endswith("/s3ferry-jobs")
    assert trigger["metadata"]["queueLength"] == "8"
    assert auth["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "workload"}

    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::")
    for deployment in (worker, dispatcher, _one(objects, "Deployment", "-intake")):
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items(), "Service misses pods"
        pod = template["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
        assert volume["configMap"]["name"] == config["metadata"]["name"]
        container = pod["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        port = container["ports"][0]
        assert (port["name"], port["containerPort"]) == ("metrics", 9400)
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    assert "s3ferry.toml" in config["data"]


@pytest.mark.timeout(300)
def test_the_intake_listens_on_its_service_with_the_token_from_its_secret(
        render: Render) -> None:
    objects = _objects(render(EXAMPLE_VALUES))
    intake = _one(objects, "Deployment", "-intake")
    service = _one(objects, "Service", "-intake")
    template = intake["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = _env(container)

    assert container["args"] == ["serve"]
    assert intake["spec"]["replicas"] == 1
    assert intake["spec"]["strategy"] == {"type": "Recreate"}  # never two with their own runs
    assert env["S3FERRY_DISPATCHER__INTAKE_HOST"]["value"] == "0.0.0.0"
    assert env["S3FERRY_DISPATCHER__INTAKE_PORT"]["value"] == "9410"
    token = env["S3FERRY_DISPATCHER__INTAKE_TOKEN"]
    assert "value" not in token
    assert token["valueFrom"]["secretKeyRef"] == {"name": "s3ferry-intake-token",
                                                  "key": "token", "optional": False}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9400, "intake": 9410}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "intake"}
    assert service["spec"]["ports"] == [{"name": "intake", "port": 9410,
                                         "targetPort": "intake", "protocol": "TCP"}]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "intake"
    for other in ("-worker", "-dispatcher"):  # the intake Service reaches no other pod
        pod_labels = _one(objects, "Deployment", other)["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= pod_labels.items()
        assert "S3FERRY_DISPATCHER__INTAKE_TOKEN" not in _env(
            _one(objects, "Deployment", other)["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.timeout(300)
def test_the_intake_needs_a_token_secret(render: Render) -> None:
    proc = render(EXAMPLE_VALUES, {"intake": {"tokenFrom": {"secretName": ""}}})
    assert proc.returncode != 0
    assert "intake.tokenFrom.secretName is required" in proc.stderr
    off = _objects(render(EXAMPLE_VALUES, {"intake": {"enabled": False}}))
    assert not [n for _, n in off if n.endswith("-intake")]


@pytest.mark.timeout(300)
def test_partition_keys_come_from_the_secret(render: Render) -> None:
    worker = _one(_objects(render(EXAMPLE_VALUES)), "Deployment", "-worker")
    env = _env(worker["spec"]["template"]["spec"]["containers"][0])
    for name in ("CHINA_AWS_ACCESS_KEY_ID", "CHINA_AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "s3ferry-china-keys"
        assert ref["optional"] is False


@pytest.mark.timeout(300)
def test_fixed_replicas_without_autoscaling(render: Render) -> None:
    objects = _objects(render(EXAMPLE_VALUES, {"autoscaling": {"enabled": False},
                                               "worker": {"replicas": 3}}))
    assert _one(objects, "Deployment", "-worker")["spec"]["replicas"] == 3
    assert not [k for k, _ in objects if k in {"ScaledObject", "TriggerAuthentication"}]


@pytest.mark.timeout(300)
def test_keda_can_assume_a_named_role(render: Render) -> None:
    role = "arn:aws:iam::111122223333:role/keda-sqs-reader"
    objects = _objects(render(EXAMPLE_VALUES,
                              {"autoscaling": {"authentication": {"roleArn": role}}}))
    assert _one(objects, "TriggerAuthentication")["spec"]["podIdentity"] == {
        "provider": "aws", "roleArn": role}


# checkov's Kubernetes checks that do not apply, each with the reason.
CHECKOV_K8S_SKIPS = {
    "CKV_K8S_21": "no namespace in rendered output: helm sets it at install (--namespace)",
    "CKV_K8S_11": "no CPU limit on purpose: CFS throttling stalls copies; requests are set",
    "CKV_K8S_15": "IfNotPresent with immutable tags or image.digest is the chart's choice",
    "CKV_K8S_35": "the app reads other partitions' keys from env by contract (kind = env)",
    "CKV2_K8S_6": "egress goes to arbitrary S3 endpoints; a NetworkPolicy is site-specific",
}


@pytest.mark.timeout(180)
def test_checkov_kubernetes_checks_pass(render: Render, tmp_path: Path) -> None:
    checkov = require_tool("checkov")
    manifest = tmp_path / "rendered.yaml"
    # Rendered with image.digest set, as a production install should be (CKV_K8S_43).
    pinned = {"image": {"digest": "sha256:" + "0" * 64}}
    manifest.write_text(render(EXAMPLE_VALUES, pinned).stdout)
    proc = run([checkov, "-f", str(manifest), "--framework", "kubernetes", "--quiet", "--compact",
                "--skip-download", "--skip-check", ",".join(sorted(CHECKOV_K8S_SKIPS))],
               timeout=170)
    assert proc.returncode == 0, describe(proc)
