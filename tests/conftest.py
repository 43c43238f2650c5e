"""Shared fixtures: one local bed (two LocalStack partitions + rclone) per test run.

The bed starts only when a test asks for it (directly or through a fixture below), so unit
tests never pay for it. Tests that use it are marked ``integration`` automatically, so
``pytest -m "not integration"`` runs without any server.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from s3ferry.localbed import LocalBed, LocalServer, write_private

# Fixtures that start (or need) the bed; a test using any of them is an integration test.
_BED_FIXTURES = {"bed", "config_path", "s3_clients", "sqs_global", "queues", "buckets",
                 "make_bucket"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _BED_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBed]:
    """Global (us-east-1) and china (cn-north-1) LocalStacks plus ``rclone serve s3``."""
    local = LocalBed(tmp_path_factory.mktemp("localbed"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def config_path(bed: LocalBed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An s3ferry TOML config naming every server, plus ``queue`` (the global partition)."""
    path = tmp_path_factory.mktemp("config") / "s3ferry.toml"
    write_private(path, bed.config_toml())
    return path


def s3_client(server: LocalServer) -> Any:
    """A sync boto3 S3 client for one local server (path style, its keys and region)."""
    return boto3.client("s3", config=server.boto_config(), **server.client_kwargs())


@pytest.fixture(scope="session")
def s3_clients(bed: LocalBed) -> Iterator[dict[str, Any]]:
    clients = {name: s3_client(server) for name, server in bed.servers.items()}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="session")
def sqs_global(bed: LocalBed) -> Iterator[Any]:
    server = bed.servers["global"]
    client = boto3.client("sqs", config=server.boto_config(), **server.client_kwargs())
    yield client
    client.close()


@dataclass(frozen=True)
class Queues:
    """A job queue and its dead-letter queue, fresh for one test (no redrive policy:
    moving a message to the DLQ is the worker's decision)."""

    queue_url: str
    dlq_url: str
    dlq_arn: str
    name: str


@pytest.fixture
def queues(sqs_global: Any) -> Iterator[Queues]:
    name = f"s3ferry-jobs-{uuid.uuid4().hex[:12]}"
    attributes = {"VisibilityTimeout": "30"}
    queue_url = sqs_global.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    dlq_url = sqs_global.create_queue(QueueName=f"{name}-dlq", Attributes=attributes)["QueueUrl"]
    dlq_arn = sqs_global.get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    try:
        yield Queues(queue_url=queue_url, dlq_url=dlq_url, dlq_arn=dlq_arn, name=name)
    finally:
        for url in (queue_url, dlq_url):
            with contextlib.suppress(Exception):
                sqs_global.delete_queue(QueueUrl=url)


@pytest.fixture
def make_bucket(bed: LocalBed, s3_clients: dict[str, Any]) -> Iterator[Callable[[str], str]]:
    """``make_bucket(server_name) -> bucket``: a unique empty bucket, emptied and deleted
    (incomplete multipart uploads aborted) after the test, whatever it left behind."""
    made: list[tuple[str, str]] = []

    def make(server_name: str) -> str:
        server = bed.servers[server_name]
        bucket = f"s3ferry-{uuid.uuid4().hex[:16]}"
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if server.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": server.region}
        s3_clients[server_name].create_bucket(**kwargs)
        made.append((server_name, bucket))
        return bucket

    yield make
    for server_name, bucket in reversed(made):
        _destroy_bucket(s3_clients[server_name], bucket)


@pytest.fixture
def buckets(make_bucket: Callable[[str], str]) -> Callable[[str], str]:
    """Same as ``make_bucket``."""
    return make_bucket


def _destroy_bucket(client: Any, bucket: str) -> None:
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                with contextlib.suppress(Exception):
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
            _delete_keys(client, bucket, [
                {"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries])
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            _delete_keys(client, bucket, [{"Key": o["Key"]} for o in page.get("Contents", [])])
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=bucket)


def _delete_keys(client: Any, bucket: str, objects: list[dict[str, str]]) -> None:
    for start in range(0, len(objects), 1000):
        batch = objects[start:start + 1000]
        try:
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception:  # some S3-compatible stores lack DeleteObjects
            for obj in batch:
                with contextlib.suppress(Exception):
                    client.delete_object(Bucket=bucket, **obj)

