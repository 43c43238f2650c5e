"""The worker's own S3 requests (worker.wire) against real servers.

rclone's ``serve s3`` checks every SigV4 signature (a wrong secret is refused, asserted
below), so an accepted request proves the signing; LocalStack checks preconditions and keeps
metadata, tags and checksums, so answers can be compared with botocore's field by field.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from common.clients import ClientPool
from common.s3errors import classify
from common.settings import Endpoint, load_settings
from worker.source import BufferBody
from worker.wire import WireClients, WireS3

pytestmark = pytest.mark.timeout(180)

KEYS = ["plain.txt", "with space/and+plus", "100%/é/日本語", "a/" + "b" * 250 + "/c",
        "tilde~star*(paren)", "q?x=1&y=#frag"]
LONG_KEY = "k" * 1024  # S3's limit; rclone's file system allows 255 bytes per segment


@asynccontextmanager
async def clients_for(config_path: Path, name: str,
                      **changes: Any) -> AsyncIterator[tuple[Any, WireS3, Endpoint]]:
    ep = load_settings(config_path).endpoints[name]
    if changes:
        ep = ep.model_copy(update=changes)
    async with ClientPool({name: ep}) as pool, WireClients(pool, pool=8) as wires:
        fast = await wires.get(name)
        assert isinstance(fast, WireS3)
        yield await pool.get(name), fast, ep


def checksum_args(ep: Endpoint, data: bytes) -> dict[str, str]:
    if ep.checksums == "when_supported":
        return {"ChecksumCRC32": base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()}
    return {"ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode()}


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in {"ResponseMetadata", "Body"}}


@pytest.mark.parametrize("server", ["global", "rclone"])
async def test_objects_written_and_read_by_the_wire_are_botocores_objects(
        config_path: Path, make_bucket: Callable[[str], str], server: str) -> None:
    bucket = make_bucket(server)
    keys = KEYS + ([LONG_KEY] if server == "global" else [])
    async with clients_for(config_path, server) as (boto, fast, ep):
        for n, key in enumerate(keys):
            data = os.urandom(n * 1000 + 1)
            put = await fast.put_object(
                Bucket=bucket, Key=key, Body=BufferBody(data), ContentType="text/plain",
                CacheControl="max-age=60", Metadata={"color": "blue", "n": str(n)},
                **checksum_args(ep, data))
            assert put["ETag"].strip('"') == hashlib.md5(data).hexdigest()
            got = await fast.get_object(Bucket=bucket, Key=key, IfMatch=put["ETag"])
            async with got["Body"] as body:
                assert await body.read() == data, key
            ranged = await fast.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")
            async with ranged["Body"] as body:
                assert await body.read() == data[:1]
            assert without_metadata(await fast.head_object(Bucket=bucket, Key=key)) == (
                without_metadata(await boto.head_object(Bucket=bucket, Key=key))), key
            assert (await fast.head_object(Bucket=bucket, Key=key))["Metadata"] == (
                {"color": "blue", "n": str(n)})


async def test_a_wrong_secret_is_refused_so_accepted_signatures_were_checked(
        config_path: Path, make_bucket: Callable[[str], str]) -> None:
    bucket = make_bucket("rclone")
    settings = load_settings(config_path)
    creds = settings.endpoints["rclone"].credentials.model_copy(
        update={"secret_access_key": SecretStr("not-the-secret")})
    async with clients_for(config_path, "rclone", credentials=creds) as (_, fast, ep):
        with pytest.raises(ClientError) as caught:
            await fast.put_object(Bucket=bucket, Key="k", Body=BufferBody(b"abc"),
                                  **checksum_args(ep, b"abc"))
    error = classify(caught.value, operation="PutObject", context="destination")
    assert error.reason.startswith(("credentials:", "access_denied")), error.reason


async def test_copy_object_is_pinned_and_keeps_metadata_and_tags(
        config_path: Path, make_bucket: Callable[[str], str]) -> None:
    bucket = make_bucket("global")
    async with clients_for(config_path, "global") as (boto, fast, _):
        source = await boto.put_object(Bucket=bucket, Key="src é+", Body=b"hello",
                                       Metadata={"color": "blue"}, Tagging="a=1",
                                       ContentType="text/plain")
        copy = {"Bucket": bucket, "CopySource": {"Bucket": bucket, "Key": "src é+"},
                "MetadataDirective": "COPY", "TaggingDirective": "COPY"}
        with pytest.raises(ClientError) as caught:
            await fast.copy_object(Key="stale", CopySourceIfMatch='"0123"', **copy)
        assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
        answer = await fast.copy_object(Key="dst %", CopySourceIfMatch=source["ETag"],
                                        StorageClass="STANDARD_IA", **copy)
        assert answer["CopyObjectResult"]["ETag"] == source["ETag"]
        head = await boto.head_object(Bucket=bucket, Key="dst %")
        tags = await boto.get_object_tagging(Bucket=bucket, Key="dst %")
    assert head["Metadata"] == {"color": "blue"}
    assert (head["ContentType"], head.get("StorageClass")) == ("text/plain", "STANDARD_IA")
    assert tags["TagSet"] == [{"Key": "a", "Value": "1"}]


async def test_a_changed_source_and_a_missing_key_are_the_usual_errors(
        config_path: Path, make_bucket: Callable[[str], str]) -> None:
    bucket = make_bucket("global")
    async with clients_for(config_path, "global") as (boto, fast, _):
        await boto.put_object(Bucket=bucket, Key="k", Body=b"v1")
        with pytest.raises(ClientError) as changed:
            await fast.get_object(Bucket=bucket, Key="k", IfMatch='"0123"')
        with pytest.raises(ClientError) as missing:
            await fast.head_object(Bucket=bucket, Key="nope")
        with pytest.raises(ClientError) as vanished:
            await fast.get_object(Bucket=bucket, Key="nope")
    assert classify(changed.value, operation="GetObject", context="source").reason == (
        "source_changed")
    assert missing.value.response["Error"]["Code"] == "404"
    assert vanished.value.response["Error"]["Code"] == "NoSuchKey"
