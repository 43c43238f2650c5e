"""Per-call CPU cuts in the S3 clients: same requests on the wire, less work to build them.

- endpoint rules run once per bucket, not once per object key;
- a BufferBody upload is sent from its buffer, without aiohttp's thread pool;
- the User-Agent is built once per set of feature ids;
- ISO-8601 timestamps in answers are read by the standard library.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp
import aiohttp.payload
import pytest
from aiobotocore._endpoint_helpers import _IOBaseWrapper
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.context import start_as_current_context
from botocore.endpoint_provider import EndpointProvider, RuleSet
from botocore.useragent import UserAgentString, register_feature_id
from botocore.utils import parse_timestamp

from common import clients
from common.settings import Endpoint, StaticCredentials
from worker.source import BufferBody, BufferBodyPayload

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
KEYS = StaticCredentials(kind="static", access_key_id="AKIDTEST", secret_access_key="secret")
AWS_S3 = "https://s3.us-east-1.amazonaws.com"


def endpoint(url: str, style: Literal["path", "virtual"] = "path") -> Endpoint:
    return Endpoint(name="e", endpoint_url=url, addressing_style=style, credentials=KEYS)


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The parameters of every full endpoint-ruleset evaluation from now on."""
    seen: list[dict[str, Any]] = []
    evaluate = RuleSet.evaluate

    def counting(self: RuleSet, params: dict[str, Any]) -> Any:
        seen.append(dict(params))
        return evaluate(self, params)

    monkeypatch.setattr(RuleSet, "evaluate", counting)
    return seen


def short_circuit(client: Any) -> list[str]:
    """Answer every call with an empty 200 before it is sent; return the URLs it would use."""
    urls: list[str] = []

    def answer(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        urls.append(params["url"])
        return SimpleNamespace(status_code=200, headers={}), {}

    client.meta.events.register("before-call.s3", answer)
    return urls


# -- endpoint rules ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "style", "expected"), [
    ("http://127.0.0.1:9000", "path", "http://127.0.0.1:9000/bkt/"),
    (AWS_S3, "virtual", "https://bkt.s3.us-east-1.amazonaws.com/"),
])
async def test_new_keys_in_a_bucket_reuse_one_endpoint_resolution(
        evaluations: list[dict[str, Any]], url: str, style: Literal["path", "virtual"],
        expected: str) -> None:
    async with clients.ClientPool({"e": endpoint(url, style)}) as pool:
        client = await pool.get("e")
        urls = short_circuit(client)
        await client.put_object(Bucket="bkt", Key="a/1", Body=b"x")
        await client.put_object(Bucket="bkt", Key="a/2", Body=b"x")
        await client.get_object(Bucket="bkt", Key="b/3")
        await client.head_object(Bucket="bkt", Key="b/4")
        await client.copy_object(Bucket="bkt", Key="c/5", CopySource="src/k")
        await client.copy_object(Bucket="bkt", Key="c/6", CopySource="src/other")
    assert urls == [expected + k for k in ("a/1", "a/2", "b/3", "b/4", "c/5", "c/6")]
    # One evaluation for the object calls; CopyObject states a static parameter of its own.
    assert len(evaluations) == 2
    assert evaluations[1].get("DisableS3ExpressSessionAuth") is True
    assert not {"Key", "CopySource"} & {name for e in evaluations for name in e}


async def test_another_bucket_in_the_host_is_resolved_again(
        evaluations: list[dict[str, Any]]) -> None:
    async with clients.ClientPool({"e": endpoint(AWS_S3, "virtual")}) as pool:
        client = await pool.get("e")
        urls = short_circuit(client)
        for bucket in ("one", "two", "one"):
            await client.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert urls == ["https://one.s3.us-east-1.amazonaws.com/k",
                    "https://two.s3.us-east-1.amazonaws.com/k",
                    "https://one.s3.us-east-1.amazonaws.com/k"]
    assert [e["Bucket"] for e in evaluations] == ["one", "two"]


async def test_s3_clients_drop_exactly_the_parameters_no_rule_reads() -> None:
    """Installed with the pinned botocore: an upgrade that breaks it fails here."""
    async with clients.ClientPool({"e": endpoint(AWS_S3)}) as pool:
        provider = (await pool.get("e"))._ruleset_resolver._provider
    assert isinstance(provider, clients.UnreadParamsFilter)
    assert provider.unread == {"Key", "Prefix", "CopySource"}
    sync_provider = clients.sync_client(endpoint(AWS_S3))._ruleset_resolver._provider
    assert isinstance(sync_provider, clients.UnreadParamsFilter)
    assert sync_provider.unread == {"Key", "Prefix", "CopySource"}


def _param(required: bool = False) -> dict[str, Any]:
    return {"type": "String", "required": required, **({"default": "d"} if required else {})}


# Every place a rule can read a parameter: a condition's ref, a template in a URL, a nested
# tree rule's error template, a header value, a property template.
RULESET: dict[str, Any] = {
    "version": "1.0",
    "parameters": {name: _param() for name in (
        "InCondition", "InUrl", "InNestedError", "InHeader", "InProperty", "Unread")}
    | {"UnreadRequired": _param(required=True)},
    "rules": [{
        "type": "tree",
        "conditions": [{"fn": "isSet", "argv": [{"ref": "InCondition"}]}],
        "rules": [
            {"type": "error", "conditions": [{"fn": "not", "argv": [
                {"fn": "isSet", "argv": [{"ref": "InUrl"}]}]}],
             "error": "no host for {InNestedError}"},
            {"type": "endpoint", "conditions": [], "endpoint": {
                "url": "https://{InUrl}.example.com",
                "properties": {"p": "{InProperty}"},
                "headers": {"x-h": [{"ref": "InHeader"}]}}},
        ],
    }, {"type": "error", "conditions": [], "error": "InCondition is required"}],
}


def test_only_optional_parameters_no_rule_reads_are_dropped(
        evaluations: list[dict[str, Any]]) -> None:
    client = SimpleNamespace(_ruleset_resolver=SimpleNamespace(
        _provider=EndpointProvider(ruleset_data=RULESET, partition_data={"partitions": []})))
    clients.filter_unread_endpoint_params(client)
    provider = client._ruleset_resolver._provider
    assert isinstance(provider, clients.UnreadParamsFilter)
    assert provider.unread == {"Unread"}

    base = {"InCondition": "c", "InUrl": "h", "InHeader": "v", "InProperty": "p",
            "UnreadRequired": "r"}
    first = provider.resolve_endpoint(**base, Unread="1")
    assert provider.resolve_endpoint(**base, Unread="2") == first
    assert len(evaluations) == 1
    assert first.url == "https://h.example.com"
    for name, value in [("InUrl", "h2"), ("InHeader", "v2"), ("InProperty", "p2"),
                        ("UnreadRequired", "r2")]:
        provider.resolve_endpoint(**{**base, name: value})
    assert len(evaluations) == 5


def test_unknown_rule_shapes_leave_the_provider_alone() -> None:
    provider = EndpointProvider(ruleset_data=RULESET, partition_data={"partitions": []})
    rules: list[Any] = provider.ruleset.rules
    rules.append(object())  # something a future botocore might hold
    client = SimpleNamespace(_ruleset_resolver=SimpleNamespace(_provider=provider))
    clients.filter_unread_endpoint_params(client)
    assert client._ruleset_resolver._provider is provider
    clients.speed_up(object())  # a client without the private attributes: unchanged


# -- upload bodies -----------------------------------------------------------------------------

@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeS3:
    """Records every request; answers 500 to the first ``fail`` PUTs, then 200."""

    url: str = ""
    fail: int = 0
    requests: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.method, request.path, dict(request.headers),
                                      body))
        if request.method == "PUT" and self.fail:
            self.fail -= 1
            return web.Response(status=500, content_type="application/xml", text=(
                "<Error><Code>InternalError</Code><Message>try again</Message></Error>"))
        return web.Response(headers={"ETag": '"etag"'})


@asynccontextmanager
async def fake_s3() -> AsyncIterator[FakeS3]:
    fake = FakeS3()
    app = web.Application(client_max_size=64 * MIB)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        fake.url = str(server.make_url("")).rstrip("/")
        yield fake


async def upload(method: str, url: str, body: Any, headers: dict[str, str] | None = None) -> None:
    """Send ``body`` with plain aiohttp, as aiobotocore does."""
    async with aiohttp.ClientSession() as session, session.request(
            method, url, data=body, headers=headers) as response:
        assert response.status == 200


@pytest.fixture
async def executor_calls(
        monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Callable[..., Any]]]:
    """Every function the running loop hands to its thread pool from now on."""
    loop = asyncio.get_running_loop()
    calls: list[Callable[..., Any]] = []
    run_in_executor = loop.run_in_executor

    def recording(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        calls.append(func)
        return run_in_executor(executor, func, *args)

    monkeypatch.setattr(loop, "run_in_executor", recording)
    yield calls


@pytest.mark.parametrize("size", [3 * MIB + 17, 0])
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("declared", [False, True])
async def test_buffer_body_is_sent_whole_from_memory(
        executor_calls: list[Callable[..., Any]], size: int, wrapped: bool,
        declared: bool) -> None:
    data = os.urandom(size)
    body: Any = _IOBaseWrapper(BufferBody(data)) if wrapped else BufferBody(data)
    headers = {"Content-Length": str(size)} if declared else {}  # botocore always declares
    async with fake_s3() as s3:
        await upload("PUT", f"{s3.url}/b/k", body, headers)
    (got,) = s3.requests
    assert got.body == data
    assert got.headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in got.headers
    assert executor_calls == []
    assert type(aiohttp.payload.get_payload(body)) is BufferBodyPayload


async def test_buffer_body_is_sent_from_its_position_at_send_time() -> None:
    data = os.urandom(1000)
    body = BufferBody(data)
    body.seek(100)
    async with fake_s3() as s3:
        await upload("POST", f"{s3.url}/b/k", _IOBaseWrapper(body))
    (got,) = s3.requests
    assert got.body == data[100:]
    assert got.headers["Content-Length"] == "900"


async def test_a_put_retried_by_botocore_sends_the_whole_body_again(
        executor_calls: list[Callable[..., Any]]) -> None:
    data = os.urandom(MIB + 5)
    body: Any = BufferBody(data)
    async with fake_s3() as s3:
        s3.fail = 1
        async with AioSession().create_client(
                "s3", endpoint_url=s3.url, region_name="us-east-1",
                aws_access_key_id="AKIDTEST", aws_secret_access_key="secret",
                config=AioConfig(s3={"addressing_style": "path"},
                                 retries={"max_attempts": 2, "mode": "standard"})) as client:
            answer = await client.put_object(Bucket="b", Key="k", Body=body)
    assert answer["ETag"] == '"etag"'
    assert [r.method for r in s3.requests] == ["PUT", "PUT"]
    for got in s3.requests:
        assert got.body == data
        assert got.headers["Content-Length"] == str(len(data))
    assert executor_calls == []


# -- User-Agent --------------------------------------------------------------------------------

async def test_user_agent_is_built_once_per_feature_set() -> None:
    async with clients.ClientPool({"e": endpoint(AWS_S3)}) as pool:
        creator = (await pool.get("e"))._user_agent_creator
    strings = []
    for features in ([], ["PAGINATOR"], ["PAGINATOR", "WAITER"], []):
        with start_as_current_context():
            for feature in features:
                register_feature_id(feature)
            first = creator.to_string()
            assert creator.to_string() is first  # remembered, not rebuilt
            assert first == UserAgentString.to_string(creator)  # what botocore would build
            strings.append(first)
    assert len(set(strings)) == 3
    assert strings[0] is strings[3]


async def test_requests_are_the_same_with_and_without_the_speedups() -> None:
    async with fake_s3() as s3:
        ep = endpoint(s3.url)
        async with clients.ClientPool({"e": ep}) as pool:
            fast = await pool.get("e")
            await fast.put_object(Bucket="b", Key="k/1", Body=BufferBody(b"abc"))
        plain_session: Any = clients.async_session(ep)
        async with plain_session.client(
                "s3", endpoint_url=ep.endpoint_url,
                config=clients.botocore_config(ep, config_cls=AioConfig)) as plain:
            assert not isinstance(plain._ruleset_resolver._provider, clients.UnreadParamsFilter)
            await plain.put_object(Bucket="b", Key="k/1", Body=BufferBody(b"abc"))
    sped, slow = s3.requests
    for name in ("User-Agent", "Host", "Content-Length", "x-amz-checksum-crc32",
                 "x-amz-content-sha256"):
        assert sped.headers[name] == slow.headers[name], name
    assert (sped.path, sped.body) == (slow.path, slow.body) == ("/b/k/1", b"abc")


SHA256_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(("sign", "expected"), [
    (None, SHA256_OF_ABC),  # botocore's default over http: every byte signed
    (True, SHA256_OF_ABC),
    (False, "UNSIGNED-PAYLOAD"),
])
async def test_payload_signing_over_http_follows_the_endpoint_setting(
        sign: bool | None, expected: str) -> None:
    async with fake_s3() as s3:
        ep = endpoint(s3.url).model_copy(update={"sign_payload": sign})
        async with clients.ClientPool({"e": ep}) as pool:
            client = await pool.get("e")
            await client.put_object(Bucket="b", Key="k", Body=BufferBody(b"abc"))
    (put,) = s3.requests
    assert put.body == b"abc"
    assert put.headers["x-amz-content-sha256"] == expected


LISTED = ["2026-11-22T11:45:01.000Z", "2026-11-22T11:45:01Z", "2026-02-28T23:59:59.123456Z",
          "2026-11-22T11:45:01.5+08:00"]  # the last is not S3's form: botocore parses it


async def test_listed_timestamps_are_the_instants_botocore_would_parse() -> None:
    contents = "".join(f"<Contents><Key>k{i}</Key><LastModified>{stamp}</LastModified>"
                       f"<ETag>&quot;e&quot;</ETag><Size>1</Size></Contents>"
                       for i, stamp in enumerate(LISTED))
    listing = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>'
               f"<KeyCount>{len(LISTED)}</KeyCount><IsTruncated>false</IsTruncated>{contents}"
               "</ListBucketResult>")

    async def answer(request: web.Request) -> web.Response:
        if request.method == "HEAD":
            return web.Response(headers={"Last-Modified": "Sun, 22 Nov 2026 11:45:01 GMT",
                                         "ETag": '"e"', "Content-Length": "1"})
        return web.Response(content_type="application/xml", text=listing)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        ep = endpoint(str(server.make_url("")).rstrip("/"))
        async with clients.ClientPool({"e": ep}) as pool:
            fast = await pool.get("e")
            assert fast._endpoint._response_parser_factory._defaults[
                "timestamp_parser"] is clients.parse_answer_timestamp  # the speed-up is on
            sped = [o["LastModified"] for o in (await fast.list_objects_v2(Bucket="b"))[
                "Contents"]] + [(await fast.head_object(Bucket="b", Key="k"))["LastModified"]]
        plain_session: Any = clients.async_session(ep)
        async with plain_session.client(
                "s3", endpoint_url=ep.endpoint_url,
                config=clients.botocore_config(ep, config_cls=AioConfig)) as plain:
            slow = [o["LastModified"] for o in (await plain.list_objects_v2(Bucket="b"))[
                "Contents"]] + [(await plain.head_object(Bucket="b", Key="k"))["LastModified"]]

    assert sped == slow and len(sped) == 5  # the same instants, to the microsecond
    assert [s.utcoffset() for s in sped] == [timedelta(0)] * 3 + [timedelta(hours=8),
                                                                  timedelta(0)]
    assert sped[2].microsecond == 123456


@pytest.mark.parametrize("value", ["2026-11-22T11:45:01.000Z", "2026-13-01T00:00:00Z",
                                   "Sun, 22 Nov 2026 11:45:01 GMT", 1_795_000_000])
def test_the_timestamp_parser_agrees_with_botocores_or_fails_like_it(value: Any) -> None:
    try:
        expected = parse_timestamp(value)
    except ValueError:
        with pytest.raises(ValueError):
            clients.parse_answer_timestamp(value)
        return
    assert clients.parse_answer_timestamp(value) == expected


# -- plain http: no CA bundle to load -----------------------------------------------------------

async def test_a_plain_http_endpoint_answers_without_loading_a_ca_bundle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append(args or kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    async with fake_s3() as s3, clients.ClientPool({"e": endpoint(s3.url)}) as pool:
        client = await pool.get("e")
        await client.put_object(Bucket="bkt", Key="k", Body=b"x")
    assert [r.path for r in s3.requests] == ["/bkt/k"]
    assert loaded == []


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:4566", {"verify": False}),
    ("HTTP://minio.internal:9000", {"verify": False}),
    ("https://s3.us-east-1.amazonaws.com", {}),
    (None, {}),  # the partition's default endpoint: https
])
def test_only_plain_http_endpoints_skip_verification(url: str | None,
                                                     expected: dict[str, Any]) -> None:
    assert clients.plain_http(url) == expected
