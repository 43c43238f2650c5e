"""The worker's own S3 requests (worker.wire: aiohttp, awscrt's signer) against botocore's,
on a loopback HTTP server: the same requests on the wire, signatures botocore agrees with, the
same parsed answers and errors, a refusal answered before the body was read; and the calls it
does not know go through botocore.

Against real servers (LocalStack, rclone, which checks signatures) in
tests/integration/test_wire_servers.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ParamValidationError

from common import clients
from common.settings import Endpoint, StaticCredentials
from worker import wire
from worker.source import BufferBody

pytestmark = pytest.mark.timeout(60)

KEYS = StaticCredentials(kind="static", access_key_id="AKIDWIRE", secret_access_key="s3cr3t/+")
ODD_KEYS = ["plain.txt", "with space/and+plus", "100%/é/日本語", "a" * 1024, "/lead//double",
            "q?x=1&y=#frag", "tilde~star*paren()"]
# Headers that differ on purpose: who sent it (User-Agent), per-request ids and time, the
# signature itself (checked separately), Expect (botocore asks for 100-continue; the wire
# sends the body at once), and botocore's note of which checksum it would have computed.
NOT_COMPARED = frozenset({"user-agent", "authorization", "x-amz-date", "amz-sdk-invocation-id",
                          "amz-sdk-request", "expect", "x-amz-sdk-checksum-algorithm",
                          "accept", "accept-encoding"})


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class FakeS3:
    """Records every request and gives the same prepared answer to each."""

    url: str = ""
    answer: Answer = field(default_factory=Answer)
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.raw_path,
                              {k.lower(): v for k, v in request.headers.items()},
                              await request.read()))
        response = web.Response(status=self.answer.status, body=self.answer.body)
        for name, value in self.answer.headers.items():
            response.headers[name] = value
        return response


@asynccontextmanager
async def fake_s3() -> AsyncIterator[FakeS3]:
    fake = FakeS3()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        fake.url = str(server.make_url("")).rstrip("/")
        yield fake


def endpoint(url: str, **extra: Any) -> Endpoint:
    return Endpoint(**{"name": "e", "endpoint_url": url, "addressing_style": "path",
                       "credentials": KEYS, **extra})


@asynccontextmanager
async def both(ep: Endpoint) -> AsyncIterator[tuple[Any, Any]]:
    """(botocore client, the worker's wire client) for one endpoint."""
    async with clients.ClientPool({"e": ep}) as pool, wire.WireClients(pool, pool=8) as wires:
        yield await pool.get("e"), await wires.get("e")


def compared(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in NOT_COMPARED}


EXPIRES = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("get_object", {"IfMatch": '"e1"', "ChecksumMode": "ENABLED"}),
    ("get_object", {"VersionId": "v 1+/=", "Range": "bytes=0-9", "IfMatch": '"e1"'}),
    ("head_object", {"ChecksumMode": "ENABLED"}),
    ("head_object", {"PartNumber": 1, "IfMatch": '"e1"'}),
    ("put_object", {"Body": b"hello", "ChecksumCRC32": "NhCmhg==", "ContentType": "text/plain",
                    "CacheControl": "max-age=60", "Expires": EXPIRES,
                    "Metadata": {"Color": "blue", "s3ferry-etag": '"x"'},
                    "Tagging": "a=1&b=two%20words", "StorageClass": "STANDARD_IA",
                    "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key-1"}),
    ("upload_part", {"Body": b"part", "UploadId": "up/+id=", "PartNumber": 7,
                     "ChecksumCRC32": "AAAAAA=="}),
    ("copy_object", {"CopySource": {"Bucket": "src", "Key": "k é+%", "VersionId": "v2"},
                     "CopySourceIfMatch": '"e1"', "MetadataDirective": "COPY",
                     "TaggingDirective": "REPLACE", "StorageClass": "GLACIER_IR",
                     "ChecksumAlgorithm": "CRC32"}),
]


@pytest.mark.parametrize("key", ODD_KEYS)
@pytest.mark.parametrize(("method", "kwargs"), CALLS, ids=[c[0] for c in CALLS])
async def test_requests_match_botocores(method: str, kwargs: dict[str, Any], key: str) -> None:
    async with fake_s3() as s3, both(endpoint(s3.url)) as (boto, fast):
        s3.answer = Answer(headers={"ETag": '"e1"', "Content-Length": "0"})
        args = dict(kwargs, Bucket="bkt", Key=key)
        await getattr(boto, method)(**_fresh(args))
        await getattr(fast, method)(**_fresh(args))
    slow, quick = s3.seen
    assert quick.headers["user-agent"] == wire.USER_AGENT  # it really went the wire's way
    assert (quick.method, quick.body) == (slow.method, slow.body)
    assert _sorted_query(quick.raw_path) == _sorted_query(slow.raw_path)  # order is free
    assert compared(quick.headers) == compared(slow.headers)


def _sorted_query(raw_path: str) -> tuple[str, list[str]]:
    path, _, query = raw_path.partition("?")
    return path, sorted(query.split("&"))


def _fresh(args: dict[str, Any]) -> dict[str, Any]:
    """Bodies as the worker sends them (a BufferBody is consumed by a send)."""
    body = args.get("Body")
    return dict(args, Body=BufferBody(body)) if isinstance(body, bytes) else dict(args)


@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize("sign_payload", [None, True, False])
@pytest.mark.parametrize("key", ODD_KEYS[:4])
async def test_botocore_computes_the_same_signature(
        monkeypatch: pytest.MonkeyPatch, token: str | None, sign_payload: bool | None,
        key: str) -> None:
    keys = KEYS.model_copy(update={"session_token": token and _secret(token)})
    async with fake_s3() as s3, both(endpoint(s3.url, credentials=keys,
                                              sign_payload=sign_payload)) as (_, fast):
        s3.answer = Answer(headers={"ETag": '"e1"'})
        await fast.put_object(Bucket="bkt", Key=key, Body=BufferBody(b"payload"),
                              ChecksumCRC32="AAAAAA==", Metadata={"m": "v  with   spaces"})
        await fast.get_object(Bucket="bkt", Key=key, VersionId="v/1")
    for seen in s3.seen:
        assert seen.headers["authorization"] == _botocore_signature(
            monkeypatch, s3.url, seen, token, sign_payload)
    put = s3.seen[0]
    assert put.headers["x-amz-content-sha256"] == (
        "UNSIGNED-PAYLOAD" if sign_payload is False else hashlib.sha256(b"payload").hexdigest())


def _secret(value: str) -> Any:
    from pydantic import SecretStr
    return SecretStr(value)


def _botocore_signature(monkeypatch: pytest.MonkeyPatch, url: str, seen: Seen,
                        token: str | None, sign_payload: bool | None) -> str:
    """What botocore's S3 signer says for the headers the wire signed, at the same time."""
    signed = seen.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    when = datetime.strptime(seen.headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: when)
    headers = {k: v for k, v in seen.headers.items()
               if k in signed and k not in {"host", "x-amz-date", "x-amz-content-sha256",
                                            "x-amz-security-token"}}
    request = AWSRequest(method=seen.method, url=url + seen.raw_path, headers=headers,
                         data=seen.body)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": sign_payload}
                                              if sign_payload is not None else None)
    creds = Credentials(KEYS.access_key_id, KEYS.secret_access_key.get_secret_value(), token)
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    return str(request.headers["Authorization"])


class Rotating:
    """Credentials a provider refreshed between two calls."""

    def __init__(self) -> None:
        self.keys = [Credentials("AKIDFIRST", "s1"), Credentials("AKIDSECOND", "s2", "tok")]

    async def get_frozen_credentials(self) -> Any:
        return self.keys[0] if len(self.keys) == 1 else self.keys.pop(0)


async def test_each_request_is_signed_with_the_keys_the_provider_holds_now(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with fake_s3() as s3, both(endpoint(s3.url)) as (_, fast):
        s3.answer = Answer(headers={"ETag": '"e1"'})
        fast._credentials = Rotating()
        await fast.get_object(Bucket="bkt", Key="k")
        await fast.get_object(Bucket="bkt", Key="k")
    first, second = (seen.headers["authorization"] for seen in s3.seen)
    assert "Credential=AKIDFIRST/" in first and "Credential=AKIDSECOND/" in second
    assert s3.seen[1].headers["x-amz-security-token"] == "tok"


async def test_a_refusal_answered_before_the_body_was_read_is_that_refusal() -> None:
    """S3 refuses an upload from its headers (403) and closes without reading the body."""
    error = (b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>"
             b"<Message>Access Denied</Message></Error>")
    refusal = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(error), error))

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(refusal)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # closed with the body unread

    seen: list[bytes] = []
    listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener, both(endpoint(url)) as (_, fast):
        with pytest.raises(ClientError) as refused:
            await fast.put_object(Bucket="bkt", Key="k", Body=BufferBody(bytes(32 * 1024 * 1024)),
                                  ChecksumCRC32="AAAAAA==")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert b"expect: 100-continue" in seen[-1].lower()  # asked, as botocore asks


HEAD_ANSWER = {
    "ETag": '"e1"', "Content-Length": "11", "Last-Modified": "Sun, 22 Nov 2026 01:02:03 GMT",
    "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
    "Content-Disposition": 'attachment; filename="a b.txt"', "Content-Encoding": "gzip",
    "Content-Language": "de", "x-amz-meta-Color": "blue", "x-amz-meta-s3ferry-etag": '"x"',
    "x-amz-checksum-crc32": "NhCmhg==", "x-amz-checksum-type": "FULL_OBJECT",
    "x-amz-storage-class": "STANDARD_IA", "x-amz-tagging-count": "2",
    "x-amz-version-id": "v1", "x-amz-mp-parts-count": "3", "x-amz-restore":
        'ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"',
    "x-amz-server-side-encryption": "aws:kms", "Accept-Ranges": "bytes",
    "x-amz-server-side-encryption-bucket-key-enabled": "true", "x-amz-missing-meta": "1",
    "x-amz-object-lock-retain-until-date": "2030-01-02T03:04:05.678Z",
    "x-amz-expiration": 'expiry-date="Fri, 23 Dec 2012 00:00:00 GMT", rule-id="r1"',
    "x-amz-request-id": "req-1", "x-amz-id-2": "host-1",
}


@pytest.mark.parametrize("expires", ["Wed, 21 Oct 2015 07:28:00 GMT", "0", None])
@pytest.mark.parametrize("method", ["head_object", "get_object"])
async def test_answers_parse_as_botocore_parses_them(method: str, expires: str | None) -> None:
    headers = dict(HEAD_ANSWER, **({"Expires": expires} if expires is not None else {}))
    async with fake_s3() as s3, both(endpoint(s3.url)) as (boto, fast):
        s3.answer = Answer(headers=headers, body=b"hello world" if method == "get_object"
                           else b"")
        answers = []
        for client in (boto, fast):
            answer = await getattr(client, method)(Bucket="bkt", Key="k")
            if "Body" in answer:
                async with answer.pop("Body") as body:
                    answer["body"] = await body.read()
            answer.pop("ResponseMetadata")
            answers.append(answer)
    slow, quick = answers
    assert quick == slow
    assert quick["Metadata"] == {"color": "blue", "s3ferry-etag": '"x"'}
    assert method == "head_object" or quick["body"] == b"hello world"


COPY_RESULT = (b'<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult xmlns="http://s3.'
               b'amazonaws.com/doc/2006-03-01/"><LastModified>2026-11-22T01:02:03.000Z'
               b'</LastModified><ETag>"e1"</ETag><ChecksumCRC32>NhCmhg==</ChecksumCRC32>'
               b'</CopyObjectResult>')


async def test_copy_object_answer_parses_as_botocore_parses_it() -> None:
    async with fake_s3() as s3, both(endpoint(s3.url)) as (boto, fast):
        s3.answer = Answer(headers={"x-amz-version-id": "v9"}, body=COPY_RESULT)
        args = {"Bucket": "bkt", "Key": "k", "CopySource": {"Bucket": "s", "Key": "k"}}
        slow, quick = [await c.copy_object(**args) for c in (boto, fast)]
    for answer in (slow, quick):
        answer.pop("ResponseMetadata")
    assert quick == slow
    assert quick["CopyObjectResult"]["ETag"] == '"e1"'


ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
         b'<Message>it went wrong</Message><RequestId>r1</RequestId></Error>')


@pytest.mark.parametrize(("method", "status", "body", "code"), [
    ("get_object", 412, ERROR.replace(b"{code}", b"PreconditionFailed"), "PreconditionFailed"),
    ("get_object", 404, ERROR.replace(b"{code}", b"NoSuchKey"), "NoSuchKey"),
    ("head_object", 404, b"", "404"),
    ("head_object", 403, b"", "403"),
    ("put_object", 503, ERROR.replace(b"{code}", b"SlowDown"), "SlowDown"),
    ("copy_object", 200, ERROR.replace(b"{code}", b"InternalError"), "InternalError"),
    ("copy_object", 200, COPY_RESULT[:60], "500"),  # cut short: botocore calls it a 500
])
async def test_errors_are_botocores_errors(method: str, status: int, body: bytes,
                                           code: str) -> None:
    args: dict[str, Any] = {"Bucket": "bkt", "Key": "k"}
    if method == "put_object":
        args.update(Body=b"x", ChecksumCRC32="jNsMkg==")
    if method == "copy_object":
        args["CopySource"] = {"Bucket": "s", "Key": "k"}
    async with fake_s3() as s3, both(endpoint(s3.url)) as (boto, fast):
        s3.answer = Answer(status=status, body=body)
        errors = []
        for client in (boto, fast):
            with pytest.raises(ClientError) as caught:
                await getattr(client, method)(**_fresh(args))
            errors.append(caught.value)
    slow, quick = errors
    assert type(quick) is type(slow)
    assert quick.response["Error"] == slow.response["Error"]
    assert quick.response["Error"]["Code"] == code
    assert quick.response["ResponseMetadata"]["HTTPStatusCode"] == (
        slow.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"Metadata": {"name": "café"}}, "non-ASCII metadata: botocore refuses it"),
    ({"SSECustomerKey": "k" * 32, "SSECustomerAlgorithm": "AES256"}, "SSE-C"),
    ({"ChecksumAlgorithm": "SHA256"}, "botocore computes that checksum"),
    ({}, "no checksum given: botocore adds its CRC32"),
])
async def test_calls_the_wire_does_not_know_go_through_botocore(
        kwargs: dict[str, Any], why: str) -> None:
    async with fake_s3() as s3, both(endpoint(s3.url)) as (_, fast):
        s3.answer = Answer(headers={"ETag": '"e1"'})
        try:
            await fast.put_object(Bucket="bkt", Key="k", Body=BufferBody(b"abc"), **kwargs)
        except ParamValidationError:
            assert not s3.seen, why  # botocore's own refusal, nothing sent
            return
    (seen,) = s3.seen
    assert seen.headers["user-agent"] != wire.USER_AGENT, why
    assert seen.body == b"abc"


async def test_endpoints_can_turn_the_wire_off() -> None:
    async with fake_s3() as s3, both(endpoint(s3.url, direct_requests=False)) as (boto, fast):
        s3.answer = Answer(headers={"ETag": '"e1"', "Content-Length": "0"})
        assert fast is boto
        await fast.head_object(Bucket="bkt", Key="k")
    assert s3.seen[0].headers["user-agent"] != wire.USER_AGENT


@pytest.mark.parametrize(("method", "answer"), [
    ("get_object", Answer(status=400, body=ERROR.replace(b"{code}",
                                                         b"AuthorizationHeaderMalformed"))),
    ("head_object", Answer(status=400, headers={"x-amz-bucket-region": "eu-west-1"})),
])
async def test_a_redirect_to_another_region_is_followed_by_botocore(method: str,
                                                                   answer: Answer) -> None:
    async with fake_s3() as s3, both(endpoint(s3.url)) as (_, fast):
        s3.answer = answer
        with pytest.raises(ClientError):
            await getattr(fast, method)(Bucket="bkt", Key="k")
        agents = [seen.headers["user-agent"] for seen in s3.seen]
    assert agents[0] == wire.USER_AGENT
    assert agents[1:] and all(agent != wire.USER_AGENT for agent in agents[1:])


P = wire.PROBE_KEY
V4 = "AWS4-HMAC-SHA256 Credential=AK/20261122/{region}/{service}/aws4_request, Signature=a"


@pytest.mark.parametrize(("url", "auth", "expected"), [
    (f"http://127.0.0.1:9000/bkt/{P}", V4.format(region="cn-north-1", service="s3"),
     ("http://127.0.0.1:9000/bkt/", "127.0.0.1:9000", "/bkt/", "cn-north-1")),
    (f"https://bkt.s3.us-east-1.amazonaws.com/{P}", V4.format(region="us-east-1", service="s3"),
     ("https://bkt.s3.us-east-1.amazonaws.com/", "bkt.s3.us-east-1.amazonaws.com", "/",
      "us-east-1")),
    (f"https://b.s3.amazonaws.com/{P}", "AWS4-ECDSA-P256-SHA256 Credential=AK/20261122/s3/"
     "aws4_request", None),
    (f"https://b.s3.amazonaws.com/{P}", "AWS AK:signature", None),
    (f"https://b--x-s3.s3express-use1-az4.us-east-1.amazonaws.com/{P}",
     V4.format(region="us-east-1", service="s3express"), None),
    (f"https://b.s3.amazonaws.com/{P}?versionId=1", V4.format(region="us-east-1", service="s3"),
     None),
    (f"https://b.s3.amazonaws.com/{P}", None, None),
])
def test_bucket_targets_come_from_botocores_own_request(url: str, auth: str | None,
                                                       expected: Any) -> None:
    target = wire.target_from_probe(url, {"Authorization": auth.encode()} if auth else {})
    if expected is None:
        assert target is None
        return
    assert target is not None
    assert (target.base, target.host, target.path_prefix, target.region) == expected


async def test_the_probe_never_leaves_the_process_and_other_heads_still_do() -> None:
    async with fake_s3() as s3:
        s3.answer = Answer(headers={"ETag": '"e1"', "Content-Length": "0"})
        async with clients.ClientPool({"e": endpoint(s3.url)}) as pool, wire.WireClients(
                pool, pool=4) as wires:
            fast = await wires.get("e")
            await fast.head_object(Bucket="bkt", Key="k")
            await (await pool.get("e")).head_object(Bucket="bkt", Key="k")
    assert [seen.raw_path for seen in s3.seen] == ["/bkt/k", "/bkt/k"]
    assert s3.seen[0].headers["user-agent"] == wire.USER_AGENT
    assert s3.seen[1].headers["user-agent"] != wire.USER_AGENT


async def test_a_bucket_botocore_refuses_gets_botocores_error_and_nothing_is_sent() -> None:
    async with fake_s3() as s3, both(endpoint(s3.url)) as (_, fast):
        with pytest.raises(ParamValidationError, match="Invalid bucket name"):
            await fast.head_object(Bucket="not/a bucket", Key="k")
    assert s3.seen == []
