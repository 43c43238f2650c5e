"""The Helm chart, checked without helm.

helm cannot be installed on the machines this project is built and tested on, so nothing
here runs `helm lint` or `helm template`. What is checked instead:

- yamllint on the chart's plain YAML (Chart.yaml, values.yaml, ci/*.yaml); templates/ are Go
  templates, not YAML, and are left to test_helm_render.py;
- invariants read from values.yaml and from the template text: the grace period outlasts the
  drain, KEDA scales on the SQS queue, keys come only from Secrets, every ``.Values`` path a
  template uses exists, nothing secret sits in values.yaml.

test_helm_render.py goes further where Go is installed: it renders the templates with Go's
text/template and sprig (an approximation of helm, not helm) and validates the manifests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ._support import CHART_DIR, DOCKER_DIR, HELM_DIR, describe, require_tool, run

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install yamllint)")

TEMPLATES = CHART_DIR / "templates"
MIB = 1024 * 1024


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())  # type: ignore[no-any-return]


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def _all_templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "K": 1000, "M": 1000**2, "G": 1000**3}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert match, f"unsupported quantity {quantity!r}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


@pytest.mark.timeout(60)
def test_yamllint_chart_yaml_files() -> None:
    yamllint = require_tool("yamllint")
    proc = run([yamllint, "--strict", "-c", str(HELM_DIR / ".yamllint"), str(CHART_DIR)],
               timeout=50)
    assert proc.returncode == 0, describe(proc)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "s3ferry"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["type"] == "application"


def test_grace_period_outlasts_the_drain() -> None:
    values = _values()
    worker = values["worker"]
    assert worker["terminationGracePeriodSeconds"] > worker["drainSeconds"]
    # Kubernetes' default of 30 s would be too close to a 25 s drain: set it explicitly.
    assert worker["terminationGracePeriodSeconds"] >= worker["drainSeconds"] + 10
    helpers = _template("_helpers.tpl")
    assert "terminationGracePeriodSeconds: {{ $cfg.terminationGracePeriodSeconds }}" in helpers
    assert "value: {{ .Values.worker.drainSeconds | quote }}" in helpers
    # The chart refuses to render a grace period that does not outlast the drain.
    assert re.search(r"le \(int \$cfg\.terminationGracePeriodSeconds\) \(int \(ceil "
                     r"\$cfg\.drainSeconds\)\)", helpers)
    assert 'fail "worker.terminationGracePeriodSeconds must be larger' in helpers


def test_worker_env_follows_the_settings_contract() -> None:
    helpers = _template("_helpers.tpl")
    for name in ("S3FERRY_CONFIG", "S3FERRY_QUEUE_URL", "S3FERRY_DLQ_URL", "S3FERRY_QUEUE_ENDPOINT",
                 "S3FERRY_METRICS_PORT", "S3FERRY_LOG_FORMAT", "S3FERRY_WORKER__MAX_JOBS",
                 "S3FERRY_WORKER__MAX_PARTS", "S3FERRY_WORKER__PART_SIZE",
                 "S3FERRY_WORKER__SERVER_COPY_BUDGET",
                 "S3FERRY_WORKER__VISIBILITY_TIMEOUT", "S3FERRY_WORKER__DRAIN_SECONDS"):
        assert f"- name: {name}\n" in helpers, name
    # helm reads numbers as float64: a large one needs int64 or it renders as 8.388608e+06.
    assert "{{ .Values.worker.partSize | int64 | quote }}" in helpers
    assert "{{ .Values.worker.serverCopyBudget | int64 | quote }}" in helpers
    values = _values()
    assert values["worker"]["maxJobs"] == 8
    assert values["worker"]["maxParts"] == 16
    assert values["worker"]["partSize"] == 8 * MIB
    assert values["worker"]["serverCopyBudget"] == 0  # AWS copies on its own fleet
    assert values["worker"]["visibilityTimeout"] == 60
    assert values["logFormat"] == "json"


def test_memory_request_covers_the_part_buffers() -> None:
    worker = _values()["worker"]
    needed = worker["partSize"] * worker["maxParts"] + 150 * MIB
    assert _quantity_bytes(worker["resources"]["requests"]["memory"]) >= needed
    assert _quantity_bytes(worker["resources"]["limits"]["memory"]) >= needed


def test_scaledobject_scales_workers_on_sqs_depth() -> None:
    text = _template("scaledobject.yaml")
    assert "apiVersion: keda.sh/v1alpha1" in text
    assert "kind: ScaledObject" in text
    assert "- type: aws-sqs-queue" in text
    assert re.search(r"queueURL: \{\{ required .*\.Values\.queue\.url \| quote \}\}", text)
    assert "queueLength: {{ .Values.autoscaling.queueLength | quote }}" in text
    assert 'name: {{ include "s3ferry.fullname" . }}-worker' in text
    assert 'name: {{ include "s3ferry.fullname" . }}-worker' in _template("deployment-worker.yaml")
    auth = _template("triggerauthentication.yaml")
    assert "kind: TriggerAuthentication" in auth and "provider: aws" in auth
    scaling = _values()["autoscaling"]
    assert scaling["enabled"] is True
    assert 0 <= scaling["minReplicas"] <= scaling["maxReplicas"]
    assert scaling["queueLength"] == _values()["worker"]["maxJobs"]


def test_worker_replicas_left_to_keda_when_autoscaling() -> None:
    text = _template("deployment-worker.yaml")
    assert re.search(r"\{\{- if not \.Values\.autoscaling\.enabled \}\}\n\s+replicas:", text)


def test_pods_run_non_root_with_read_only_root() -> None:
    values = _values()
    pod = values["podSecurityContext"]
    container = values["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    assert f"USER {pod['runAsUser']}:{pod['runAsGroup']}" in dockerfile
    helpers = _template("_helpers.tpl")
    assert "mountPath: /tmp" in helpers and "emptyDir:" in helpers


def test_metrics_port_scraped_and_exposed() -> None:
    values = _values()
    assert values["metrics"]["port"] == 9400
    assert "EXPOSE 9400" in (DOCKER_DIR / "Dockerfile").read_text()
    helpers = _template("_helpers.tpl")
    assert 'prometheus.io/scrape: "true"' in helpers
    assert "containerPort: {{ $root.Values.metrics.port }}" in helpers
    assert "kind: Service" in _template("service.yaml")
    assert "kind: ServiceMonitor" in _template("servicemonitor.yaml")
    assert values["metrics"]["serviceMonitor"]["enabled"] is False


def test_dispatcher_is_optional_and_off() -> None:
    assert _values()["dispatcher"]["enabled"] is False
    assert _values()["dispatcher"]["args"] == ["events"]
    dispatcher = _template("deployment-dispatcher.yaml")
    assert dispatcher.count("{{- if .Values.dispatcher.enabled }}") == 1


def test_intake_is_optional_and_its_token_comes_from_a_secret() -> None:
    intake = _values()["intake"]
    assert intake["enabled"] is False and intake["args"] == ["serve"]
    assert intake["tokenFrom"] == {"secretName": "", "key": "token"}
    assert intake["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "intake"}
    block = re.search(r"- name: S3FERRY_DISPATCHER__INTAKE_TOKEN\n(.*?)\n\{\{- end",
                      _template("_helpers.tpl"), re.S)
    assert block and "secretKeyRef:" in block.group(1) and "value:" not in block.group(1)
    assert "required" in _template("deployment-intake.yaml")


def test_partition_keys_only_from_secret_refs() -> None:
    helpers = _template("_helpers.tpl")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        block = re.search(rf'- name: \{{\{{ printf "%s{var}" \$cred\.envPrefix \}}\}}\n(.*?)\n- ',
                          helpers, re.S)
        assert block, var
        assert "secretKeyRef:" in block.group(1) and "value:" not in block.group(1)
    assert _values()["partitionCredentials"] == []


def test_values_hold_no_secrets() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}", text)
    assert not re.search(r"(?i)(secret_access_key|access_key_id)\s*=", text), (
        "keys belong in a Secret, not in the endpoints TOML")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}"
                if re.search(r"(?i)(password|secret(?!Name|AccessKeyKey)|(?<!automount)token"
                             r"(?!Key|From)|accessKey(?!Key|IdKey))", key):
                    assert value in (None, "", [], {}), f"{here} looks like a secret"
                walk(value, here)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(_values(), "values")


def _values_paths(node: Any, prefix: str = "") -> set[str]:
    paths = set()
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{prefix}.{key}" if prefix else key
            paths.add(here)
            paths |= _values_paths(value, here)
    return paths


def test_every_values_path_in_templates_exists() -> None:
    """A typo such as .Values.worker.drainSecond renders empty in helm: catch it here."""
    known = _values_paths(_values())
    missing: dict[str, set[str]] = {}
    for name, text in _all_templates().items():
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            path = path.rstrip(".")
            if path not in known:
                missing.setdefault(name, set()).add(path)
    assert not missing, missing


def test_templates_reference_defined_helpers() -> None:
    texts = _all_templates()
    defined = set(re.findall(r'\{\{-? define "([^"]+)"', texts["_helpers.tpl"]))
    for name, text in texts.items():
        for used in re.findall(r'include "([^"]+)"', text):
            assert used in defined, f"{name} includes undefined {used}"


def test_ci_values_exist_for_helm_lint() -> None:
    ci_values = yaml.safe_load((CHART_DIR / "ci" / "example-values.yaml").read_text())
    assert ci_values["queue"]["url"].startswith("https://sqs.")
    assert Path(CHART_DIR / "templates" / "NOTES.txt").is_file()
