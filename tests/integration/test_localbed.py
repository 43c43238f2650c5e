"""The local bed gives us what the worker's tests rely on: three independent S3 stores,
SQS on the global partition, full-object CRC64NVME on LocalStack, presigned URLs checked."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from awscrt import checksums
from botocore.exceptions import ClientError

from common.settings import StaticCredentials, load_settings
from s3ferry.localbed import LocalBed, LocalBedError, LocalServer, free_port, write_private

MIB = 1024 * 1024
SERVERS = ["global", "china", "rclone"]
LOCALSTACKS = ["global", "china"]


def crc64nvme_b64(data: bytes) -> str:
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


@pytest.mark.integration
@pytest.mark.parametrize("server", SERVERS)
def test_put_then_get_returns_the_same_bytes(
    server: str, s3_clients: dict[str, Any], make_bucket: Callable[[str], str]
) -> None:
    client = s3_clients[server]
    bucket = make_bucket(server)
    body = os.urandom(256 * 1024)

    client.put_object(Bucket=bucket, Key="dir/some key.bin", Body=body)
    got = client.get_object(Bucket=bucket, Key="dir/some key.bin")["Body"].read()

    assert got == body


@pytest.mark.integration
def test_partitions_are_independent(
    s3_clients: dict[str, Any], make_bucket: Callable[[str], str]
) -> None:
    bucket = make_bucket("global")

    names_on_china = {b["Name"] for b in s3_clients["china"].list_buckets()["Buckets"]}
    assert bucket not in names_on_china
    with pytest.raises(ClientError) as info:
        s3_clients["china"].head_bucket(Bucket=bucket)
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchBucket")


@pytest.mark.integration
def test_china_bucket_lives_in_cn_north_1(
    s3_clients: dict[str, Any], make_bucket: Callable[[str], str]
) -> None:
    bucket = make_bucket("china")

    location = s3_clients["china"].get_bucket_location(Bucket=bucket)["LocationConstraint"]

    assert location == "cn-north-1"


@pytest.mark.integration
def test_sqs_send_then_receive_on_global(sqs_global: Any, queues: Any) -> None:
    sqs_global.send_message(QueueUrl=queues.queue_url, MessageBody='{"job": 1}')

    got = sqs_global.receive_message(
        QueueUrl=queues.queue_url, WaitTimeSeconds=5, MaxNumberOfMessages=1)["Messages"]

    assert [m["Body"] for m in got] == ['{"job": 1}']
    attrs = sqs_global.get_queue_attributes(
        QueueUrl=queues.queue_url, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "30"
    assert queues.dlq_url != queues.queue_url
    assert queues.dlq_arn.endswith(f"{queues.name}-dlq")


@pytest.mark.integration
@pytest.mark.parametrize("server", LOCALSTACKS)
def test_multipart_crc64nvme_full_object_checksum_is_kept(
    server: str, s3_clients: dict[str, Any], make_bucket: Callable[[str], str]
) -> None:
    client = s3_clients[server]
    bucket = make_bucket(server)
    parts_data = [os.urandom(5 * MIB), os.urandom(123_457)]
    upload = client.create_multipart_upload(
        Bucket=bucket, Key="big", ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT")
    parts = []
    for number, data in enumerate(parts_data, start=1):
        answer = client.upload_part(
            Bucket=bucket, Key="big", UploadId=upload["UploadId"], PartNumber=number,
            Body=data, ChecksumAlgorithm="CRC64NVME")
        parts.append({"PartNumber": number, "ETag": answer["ETag"],
                      "ChecksumCRC64NVME": answer["ChecksumCRC64NVME"]})
    whole = b"".join(parts_data)

    client.complete_multipart_upload(
        Bucket=bucket, Key="big", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts}, ChecksumCRC64NVME=crc64nvme_b64(whole),
        ChecksumType="FULL_OBJECT")
    head = client.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")

    assert head["ChecksumCRC64NVME"] == crc64nvme_b64(whole)
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert head["ContentLength"] == len(whole)
    assert head["ETag"].endswith('-2"')


@pytest.mark.integration
def test_presigned_urls_are_checked_like_aws(
    s3_clients: dict[str, Any], make_bucket: Callable[[str], str]
) -> None:
    client = s3_clients["global"]
    bucket = make_bucket("global")
    client.put_object(Bucket=bucket, Key="k", Body=b"secret")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)

    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"secret"
    signature = url.rsplit("X-Amz-Signature=", 1)[1][:64]
    forged = f"{int(signature, 16) ^ 1:064x}"  # one bit off
    tampered = url.replace(signature, forged)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(tampered, timeout=10).close()
    info.value.close()
    assert info.value.code == 403


@pytest.mark.integration
def test_generated_config_names_every_server(bed: LocalBed, config_path: Path) -> None:
    settings = load_settings(config_path)

    assert set(settings.endpoints) == {"global", "china", "rclone", "queue"}
    assert settings.endpoint("queue").endpoint_url == bed.servers["global"].endpoint_url
    china = settings.endpoint("china")
    assert china.region == "cn-north-1"
    assert isinstance(china.credentials, StaticCredentials)
    assert china.credentials.access_key_id == "CHINAKEY"
    assert settings.endpoint("rclone").server_side_copy is False
    assert settings.endpoint("rclone").checksums == "when_required"
    assert china.identity() != settings.endpoint("global").identity()


# -- without servers: how the bed fails ----------------------------------------------------

def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    bed = LocalBed(tmp_path, partitions=(), rclone_bin=Path("/bin/false"))

    with pytest.raises(LocalBedError, match=r"rclone \(rclone\) exited with code 1"):
        bed.start(timeout=20)

    assert bed.servers == {}
    bed.stop()  # idempotent after a failed start


def test_a_missing_binary_is_named(tmp_path: Path) -> None:
    bed = LocalBed(tmp_path, partitions=(), rclone_bin=tmp_path / "no-rclone")

    with pytest.raises(LocalBedError, match="rclone not found"):
        bed.start()


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(("partitions", "home"), [(("global", "china", "queues"), "queues"),
                                                  (("global", "china"), "global")])
def test_the_queue_lives_in_the_queues_partition_when_it_runs(
        tmp_path: Path, partitions: tuple[str, ...], home: str) -> None:
    bed = LocalBed(tmp_path, partitions=partitions, rclone=False)
    bed.servers = {name: LocalServer(name=name, kind="localstack",
                                     endpoint_url=f"http://127.0.0.1:{4000 + i}",
                                     region="us-east-1", access_key=name.upper(),
                                     secret_key="test", has_sqs=True)
                   for i, name in enumerate(partitions)}
    path = tmp_path / "s3ferry.toml"
    write_private(path, bed.config_toml())
    settings = load_settings(path)
    assert settings.endpoint("queue").endpoint_url == bed.servers[home].endpoint_url
