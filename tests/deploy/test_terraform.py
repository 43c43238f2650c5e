"""The Terraform for ECS Fargate: it parses, keeps its promises, and passes checkov.

No terraform binary here, so nothing is planned: python-hcl2 parses the files and the tests
read the parsed blocks (expressions stay unevaluated strings such as ``"${var.x}"``).
checkov runs twice: with the variables' defaults, and with tests/deploy/fixtures/full.tfvars,
which switches every optional resource on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from common.settings import WorkerSettings

from ._support import FIXTURES, TERRAFORM_DIR, describe, require_tool, run

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (pip install python-hcl2)")

TF_FILES = ("versions.tf", "variables.tf", "main.tf", "iam.tf", "ecs.tf", "scaling.tf",
            "intake.tf", "outputs.tf")


def _unquote(value: Any) -> Any:
    """python-hcl2 8 keeps the quotes of labels and string literals; drop them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items()
                if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    return value


def _load(name: str) -> dict[str, Any]:
    with (TERRAFORM_DIR / name).open() as fh:
        return _unquote(hcl2.load(fh))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    """All files merged: {"resource": {type: {name: body}}, "data": ..., "variable": ...}."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "locals": {},
                              "output": {}}
    for name in TF_FILES:
        doc = _load(name)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, instances in block.items():
                    merged[kind].setdefault(rtype, {}).update(instances)
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
    return merged


def _statements(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Statements of a policy document, static and ``dynamic "statement"`` alike."""
    yield from doc.get("statement", [])
    for dyn in doc.get("dynamic", []):
        yield from dyn.get("statement", {}).get("content", [])


def _variable_default(tf: dict[str, Any], name: str) -> Any:
    return tf["variable"][name]["default"]


def test_every_file_parses() -> None:
    present = {p.name for p in TERRAFORM_DIR.glob("*.tf")}
    assert set(TF_FILES) <= present
    for name in sorted(present):
        _load(name)


def test_aws_provider_is_pinned(tf: dict[str, Any]) -> None:
    versions = _load("versions.tf")["terraform"][0]
    aws = versions["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.search(r">=\s*5", aws["version"]) and "<" in aws["version"]


def test_job_queue_redrives_to_its_dlq(tf: dict[str, Any]) -> None:
    queues = tf["resource"]["aws_sqs_queue"]
    redrive = queues["jobs"]["redrive_policy"]
    assert "deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn" in redrive
    assert "maxReceiveCount = var.max_receive_count" in redrive
    assert 1 <= _variable_default(tf, "max_receive_count") <= 10
    allow = tf["resource"]["aws_sqs_queue_redrive_allow_policy"]["jobs_dlq"]
    assert "aws_sqs_queue.jobs.arn" in allow["redrive_allow_policy"]


def test_dead_letter_queues_keep_messages_14_days(tf: dict[str, Any]) -> None:
    assert tf["locals"]["dlq_retention_seconds"] == 14 * 24 * 3600
    for name in ("jobs_dlq", "events_dlq"):
        queue = tf["resource"]["aws_sqs_queue"][name]
        assert queue["message_retention_seconds"] == "${local.dlq_retention_seconds}"


def test_events_queue_has_a_dlq_and_admits_only_s3_from_source_buckets(
        tf: dict[str, Any]) -> None:
    assert "aws_sqs_queue.events_dlq[0].arn" in tf["resource"]["aws_sqs_queue"]["events"][
        "redrive_policy"]
    (statement,) = list(_statements(tf["data"]["aws_iam_policy_document"]["events_queue"]))
    assert statement["actions"] == ["sqs:SendMessage"]
    assert statement["principals"][0] == {"type": "Service",
                                          "identifiers": ["s3.amazonaws.com"]}
    condition = statement["condition"][0]
    assert condition["variable"] == "aws:SourceArn"
    assert condition["values"] == "${var.events_source_bucket_arns}"


def test_every_queue_is_encrypted(tf: dict[str, Any]) -> None:
    for name, queue in tf["resource"]["aws_sqs_queue"].items():
        assert queue.get("sqs_managed_sse_enabled") or queue.get("kms_master_key_id"), name
        # Either SSE-SQS or the customer managed key, never neither.
        assert queue["sqs_managed_sse_enabled"] == "${local.sqs_sse_managed ? true : null}"
        assert queue["kms_master_key_id"] == "${var.sqs_kms_key_arn}"


def test_job_queue_visibility_is_the_worker_lease(tf: dict[str, Any]) -> None:
    jobs = tf["resource"]["aws_sqs_queue"]["jobs"]
    assert jobs["visibility_timeout_seconds"] == "${var.visibility_timeout_seconds}"
    assert _variable_default(tf, "visibility_timeout_seconds") == 60
    ecs = (TERRAFORM_DIR / "ecs.tf").read_text()
    assert "S3FERRY_WORKER__VISIBILITY_TIMEOUT = tostring(var.visibility_timeout_seconds)" in ecs


def test_stop_timeout_fits_fargate_and_exceeds_drain(tf: dict[str, Any]) -> None:
    stop = _variable_default(tf, "stop_timeout")
    drain = _variable_default(tf, "drain_seconds")
    assert stop <= 120, "Fargate caps stopTimeout at 120 s"
    assert stop > drain
    assert "var.stop_timeout <= 120" in tf["variable"]["stop_timeout"]["validation"][0][
        "condition"]
    task = tf["resource"]["aws_ecs_task_definition"]["worker"]
    conditions = [p["condition"] for p in task["lifecycle"][0]["precondition"]]
    assert "${var.drain_seconds < var.stop_timeout}" in conditions
    ecs = (TERRAFORM_DIR / "ecs.tf").read_text()
    assert re.search(r"stopTimeout\s*=\s*var\.stop_timeout", ecs)
    assert "S3FERRY_WORKER__DRAIN_SECONDS      = tostring(var.drain_seconds)" in ecs


def test_task_memory_covers_the_part_buffers(tf: dict[str, Any]) -> None:
    mib = 1024 * 1024
    buffers = _variable_default(tf, "worker_part_size") * _variable_default(tf, "worker_max_parts")
    assert _variable_default(tf, "task_memory") >= buffers / mib + 150
    task = tf["resource"]["aws_ecs_task_definition"]["worker"]
    conditions = " ".join(p["condition"] for p in task["lifecycle"][0]["precondition"])
    assert "var.worker_part_size * var.worker_max_parts" in conditions


def test_no_wildcard_actions_in_any_policy(tf: dict[str, Any]) -> None:
    for name, doc in tf["data"]["aws_iam_policy_document"].items():
        for statement in _statements(doc):
            for action in statement["actions"]:
                assert "*" not in action, f"{name}/{statement.get('sid')}: {action}"


def test_task_role_grants_exactly_the_listed_data_access(tf: dict[str, Any]) -> None:
    by_sid = {s["sid"]: s for s in _statements(tf["data"]["aws_iam_policy_document"]["task"])}
    assert set(by_sid) == {"ReadSourceObjects", "ListSourceBuckets", "WriteDestinationObjects",
                           "ListDestinationBuckets", "ConsumeQueues", "UseDataKeys"}
    source = set(by_sid["ReadSourceObjects"]["actions"])
    assert {"s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging"} <= source
    assert not any(a.startswith(("s3:Put", "s3:Delete")) for a in source), "sources are read-only"
    assert "var.source_bucket_arns" in by_sid["ReadSourceObjects"]["resources"]
    dest = set(by_sid["WriteDestinationObjects"]["actions"])
    assert {"s3:PutObject", "s3:PutObjectTagging", "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts"} <= dest
    assert not any(a.startswith("s3:Delete") for a in dest), "replication never deletes"
    assert "s3:ListBucketMultipartUploads" in by_sid["ListDestinationBuckets"]["actions"]
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
            "sqs:SendMessage"} <= set(by_sid["ConsumeQueues"]["actions"])
    assert by_sid["ConsumeQueues"]["resources"] == "${local.queue_arns}"
    assert set(by_sid["UseDataKeys"]["actions"]) == {"kms:Decrypt", "kms:GenerateDataKey"}


def test_execution_and_task_roles_are_separate(tf: dict[str, Any]) -> None:
    task = tf["resource"]["aws_ecs_task_definition"]["worker"]
    assert task["execution_role_arn"] == "${aws_iam_role.execution.arn}"
    assert task["task_role_arn"] == "${aws_iam_role.task.arn}"
    execution = {s["sid"]: s for s in _statements(
        tf["data"]["aws_iam_policy_document"]["execution"])}
    assert execution["ReadPartitionCredentials"]["actions"] == ["secretsmanager:GetSecretValue"]


def test_partition_keys_come_from_secrets_never_plain_environment(tf: dict[str, Any]) -> None:
    ecs = (TERRAFORM_DIR / "ecs.tf").read_text()
    environment = re.search(r"worker_environment = merge\(var\.extra_environment, \{(.*?)\n  \}\)",
                            ecs, re.S)
    assert environment is not None
    env_keys = re.findall(r"^\s+([A-Z0-9_]+)\s+=", environment.group(1), re.M)
    assert "S3FERRY_QUEUE_URL" in env_keys
    assert not [k for k in env_keys if re.search("SECRET|ACCESS_KEY|TOKEN|PASSWORD", k)]
    # The keys are container secrets, read by ECS from Secrets Manager at start.
    assert re.search(r'name = "\$\{c\.env_prefix\}AWS_SECRET_ACCESS_KEY", '
                     r'valueFrom = "\$\{c\.secret_arn\}:AWS_SECRET_ACCESS_KEY::"', ecs)
    assert "secrets     = local.worker_secrets" in ecs
    validation = tf["variable"]["extra_environment"]["validation"][0]["condition"]
    assert "secret|access_key" in validation


def test_fargate_task_definition_shape(tf: dict[str, Any]) -> None:
    task = tf["resource"]["aws_ecs_task_definition"]["worker"]
    assert task["requires_compatibilities"] == ["FARGATE"]
    assert task["network_mode"] == "awsvpc"
    ecs = (TERRAFORM_DIR / "ecs.tf").read_text()
    assert "containerPort = var.metrics_port" in ecs
    assert _variable_default(tf, "metrics_port") == 9400
    assert ecs.count("readonlyRootFilesystem = true") == 2
    assert 'dependsOn   = [{ containerName = "config", condition = "SUCCESS" }]' in ecs
    assert ('worker_container = merge(local.app_container, {\n    name    = "worker"\n'
            '    command = ["worker"]') in ecs


def test_intake_is_one_optional_task_with_its_token_from_secrets_manager(
        tf: dict[str, Any]) -> None:
    assert _variable_default(tf, "intake_enabled") is False
    assert _variable_default(tf, "intake_port") == 9410
    for rtype in ("aws_ecs_service", "aws_ecs_task_definition", "aws_security_group"):
        assert tf["resource"][rtype]["intake"]["count"] == "${local.intake_count}"
    service = tf["resource"]["aws_ecs_service"]["intake"]
    assert service["desired_count"] == 1  # never scaled: each task keeps its own runs
    assert service["deployment_maximum_percent"] == 100  # the old task stops first
    assert service["deployment_minimum_healthy_percent"] == 0
    task = tf["resource"]["aws_ecs_task_definition"]["intake"]
    assert "var.intake_token_secret_arn != null" in task["lifecycle"][0]["precondition"][0][
        "condition"]
    intake = (TERRAFORM_DIR / "intake.tf").read_text()
    assert ('intake_container = merge(local.app_container, {\n    name    = "intake"\n'
            '    command = ["serve"]') in intake
    assert ('{ name = "S3FERRY_DISPATCHER__INTAKE_TOKEN", valueFrom = '
            'var.intake_token_secret_arn }') in intake
    assert "/healthz" in intake
    environment = re.search(r"intake_environment = merge\((.*?)\n  \)", intake, re.S)
    assert environment is not None and "TOKEN" not in environment.group(1)
    execution = {s["sid"]: s for s in _statements(
        tf["data"]["aws_iam_policy_document"]["execution"])}
    assert execution["ReadIntakeToken"]["resources"] == ["${var.intake_token_secret_arn}"]


def test_service_scales_on_sqs_backlog(tf: dict[str, Any]) -> None:
    target = tf["resource"]["aws_appautoscaling_target"]["worker"]
    assert target["min_capacity"] == "${var.min_capacity}"
    assert target["max_capacity"] == "${var.max_capacity}"
    assert target["scalable_dimension"] == "ecs:service:DesiredCount"
    alarms = tf["resource"]["aws_cloudwatch_metric_alarm"]
    for name, policy in (("backlog", "scale_out"), ("idle", "scale_in")):
        alarm = alarms[name]
        assert alarm["namespace"] == "AWS/SQS"
        assert alarm["metric_name"] == "ApproximateNumberOfMessagesVisible"
        assert alarm["alarm_actions"] == [f"${{aws_appautoscaling_policy.{policy}.arn}}"]
    policies = tf["resource"]["aws_appautoscaling_policy"]
    assert all(p["policy_type"] == "StepScaling" for p in policies.values())
    service = tf["resource"]["aws_ecs_service"]["worker"]
    assert "desired_count" in service["lifecycle"][0]["ignore_changes"][0]


def test_every_checkov_skip_gives_a_reason() -> None:
    skips = []
    for path in TERRAFORM_DIR.glob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = re.search(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.+)$", line.strip())
                assert match, f"{path.name}: malformed skip: {line.strip()}"
                assert len(match.group(2).split()) >= 5, f"{path.name}: skip without a reason"
                skips.append(match.group(1))
    assert skips, "ecs.tf has skips; finding none means the test reads the wrong files"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("var_file", [None, "full.tfvars"], ids=["defaults", "all-features"])
def test_checkov_passes(var_file: str | None) -> None:
    checkov = require_tool("checkov")
    # --skip-download: no calls to the vendor's platform (there is no network here anyway).
    args = [checkov, "-d", str(TERRAFORM_DIR), "--framework", "terraform", "--quiet",
            "--compact", "--skip-download"]
    if var_file:
        args += ["--var-file", str(FIXTURES / var_file)]
    proc = run(args, timeout=170)
    assert proc.returncode == 0, describe(proc)
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", proc.stdout), describe(proc)


def test_task_worker_settings_exist_and_default_as_the_worker_does(tf: dict[str, Any]) -> None:
    """Each S3FERRY_WORKER__* the task sets names a worker setting, and its variable's default
    is the worker's own default (a new setting left at 0 stays off, e.g. the copy budget)."""
    ecs = (TERRAFORM_DIR / "ecs.tf").read_text()
    pairs = re.findall(r"S3FERRY_WORKER__([A-Z_]+)\s*=\s*tostring\(var\.(\w+)\)", ecs)
    assert ("SERVER_COPY_BUDGET", "worker_server_copy_budget") in pairs
    defaults = WorkerSettings()
    for setting, variable in pairs:
        assert setting.lower() in WorkerSettings.model_fields, setting
        assert _variable_default(tf, variable) == getattr(defaults, setting.lower()), variable
