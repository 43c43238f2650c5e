"""The worker's hot-path S3 calls as plain signed HTTP requests; botocore for everything else.

botocore spends about 0.6 ms of CPU on each call (event hooks, parameter validation, a layered
signer) before a byte moves; a 16 KiB object costs a GET and a PUT. :class:`WireS3` sends
GetObject, HeadObject, PutObject, UploadPart and CopyObject itself:

- the request is built from botocore's own service model (which header, query parameter or
  URI part each argument is), so arguments mean exactly what they mean to botocore;
- the bucket's base URL, signing region and service come from one request per bucket that
  botocore builds and signs but never sends, so endpoint rules, addressing style, regions and
  auth scheme stay botocore's;
- it is signed by awscrt's SigV4 signer with credentials from botocore's provider (refresh
  keeps working), payload signing decided as botocore decides it (``Endpoint.sign_payload``);
- it is sent by aiohttp on the endpoint's own keep-alive connections, as many as its pool
  size, with its timeouts and botocore's certificate checks; an upload asks
  ``Expect: 100-continue`` as botocore's do, and an answer that comes before the body was
  sent (S3 refusing an upload from its headers) is that answer;
- the answer goes through botocore's response parser and error classes, so callers get the
  same dicts and the same ``ClientError`` codes as from the botocore client.

An argument or value the wire does not know (SSE-C keys, non-ASCII metadata, a streaming body,
a checksum botocore would compute itself), a bucket botocore does not sign with plain SigV4,
a bucket reached through a proxy (from the environment, as botocore reads it) and a redirect
to another region all go through the botocore client instead. Every other
method is the botocore client's own. One difference: a whole-object GET with
``ChecksumMode=ENABLED`` is not checked against its checksum here; the worker computes the
checksum of what it read and compares it with the source's before anything is written.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import ssl
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from functools import partial
from hashlib import sha256
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree

import aiohttp
from awscrt import auth as crt_auth
from awscrt import http as crt_http
from botocore.awsrequest import HeadersDict
from botocore.httpsession import create_urllib3_context, get_cert_path
from botocore.parsers import create_parser
from botocore.utils import get_environ_proxies
from yarl import URL

from common import checksums
from common.clients import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS, ClientPool
from common.settings import Endpoint
from worker.answers import AnswerReader
from worker.source import BufferBody

OPERATIONS = {"get_object": "GetObject", "head_object": "HeadObject",
              "put_object": "PutObject", "upload_part": "UploadPart",
              "copy_object": "CopyObject"}
_UNSUPPORTED = frozenset({"SSECustomerKey", "SSECustomerKeyMD5", "SSECustomerAlgorithm",
                          "CopySourceSSECustomerKey", "CopySourceSSECustomerKeyMD5",
                          "CopySourceSSECustomerAlgorithm"})
_CHECKSUM_MEMBERS = frozenset(f"Checksum{a}" for a in checksums.ALL_ALGORITHMS)
_REDIRECT_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed",
                             "IllegalLocationConstraintException", "301", "307"})
USER_AGENT = "s3ferry-wire"
EMPTY_SHA256 = sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_UPLOADS = frozenset({"PutObject", "UploadPart"})


class LeaveToBotocore(Exception):
    """This call is botocore's to make (an argument the wire does not serialise)."""


@dataclass(frozen=True)
class Target:
    """Where one bucket's objects live and how requests to them are signed."""

    base: str  # scheme://host[:port]/path-prefix/ ; the quoted key follows
    host: str
    path_prefix: str
    region: str  # the signing scope's
    tls: bool


PROBE_KEY = "s3ferry-wire-probe-7c1e"


class _Probed(Exception):
    """Carries a probe request out of botocore just before it would have been sent."""

    def __init__(self, url: str, headers: Mapping[str, Any]) -> None:
        super().__init__("probe")
        self.url = url
        self.headers = headers


def _stop_probe(request: Any, **_: Any) -> None:
    """botocore's ``before-send`` hook: the probe goes no further; other requests pass."""
    if request.url.endswith("/" + PROBE_KEY):
        raise _Probed(request.url, request.headers)


def target_from_probe(url: str, headers: Mapping[str, Any]) -> Target | None:
    """Read a bucket's base URL and signing scope from botocore's own request for the key
    :data:`PROBE_KEY`: endpoint rules, addressing style and auth scheme stay botocore's.

    None when that request is not plain SigV4 for ``s3`` (SigV4a, S3 Express sessions), or
    when it would go through a proxy.
    """
    parts = urlsplit(url)
    auth = headers.get("Authorization") or b""
    auth = auth.decode("ascii") if isinstance(auth, bytes) else str(auth)
    if (not auth.startswith("AWS4-HMAC-SHA256 Credential=") or parts.query
            or not parts.path.endswith("/" + PROBE_KEY)):
        return None
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
    if len(scope) != 5 or scope[3] != "s3" or scope[4] != "aws4_request":
        return None
    prefix = parts.path[:-len(PROBE_KEY)]
    base = f"{parts.scheme}://{parts.netloc}{prefix}"
    if get_environ_proxies(base).get(parts.scheme):
        return None
    return Target(base=base, host=parts.netloc, path_prefix=prefix, region=scope[2],
                  tls=parts.scheme == "https")


def copy_answer(body: bytes) -> ElementTree.Element | None:
    """A copy's 200 answer, parsed; None when it is S3's report of a copy that failed after
    it started (a 200 whose body is an <Error>) or a body cut short: botocore treats both as
    a 500. An empty body is an empty answer."""
    try:
        root = ElementTree.fromstring(body or b"<CopyObjectResult/>")
    except ElementTree.ParseError:
        return None
    return None if root.tag == "Error" else root


def _http_date(value: datetime) -> str:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return formatdate(calendar.timegm(aware.utctimetuple()), usegmt=True)


def _copy_source(value: object) -> str:
    """CopySource as botocore writes it: ``bucket/key`` percent-encoded, then the version."""
    if not isinstance(value, Mapping) or set(value) - {"Bucket", "Key", "VersionId"}:
        raise LeaveToBotocore("CopySource")
    encoded = quote(f"{value['Bucket']}/{value['Key']}", safe="-._~/")
    version = value.get("VersionId")
    return encoded if version is None else f"{encoded}?versionId={version}"


@dataclass(frozen=True)
class _Member:
    location: str  # header | headers | querystring | uri | body
    name: str
    kind: str
    timestamp_format: str | None


class Request:
    """One call's HTTP request, serialised from botocore-style keyword arguments."""

    def __init__(self, members: Mapping[str, _Member], kwargs: Mapping[str, Any]) -> None:
        self.headers: dict[str, str] = {}
        self.query: list[tuple[str, str]] = []
        self.body: BufferBody | bytes | None = None
        self.bucket = self.key = ""
        for name, value in kwargs.items():
            member = members.get(name)
            if member is None or name in _UNSUPPORTED:
                raise LeaveToBotocore(name)
            self._add(name, member, value)

    def _add(self, name: str, member: _Member, value: Any) -> None:
        if name == "CopySource":
            self.headers[member.name] = _copy_source(value)
        elif member.location == "uri":
            self._uri(name, value)
        elif member.location == "body":
            if not isinstance(value, BufferBody | bytes):
                raise LeaveToBotocore(name)
            self.body = value
        elif member.location == "headers":
            self._metadata(member.name, value)
        elif member.location == "header":
            self.headers[member.name] = _scalar(member, value)
        elif member.location == "querystring":
            self.query.append((member.name, _scalar(member, value)))
        else:
            raise LeaveToBotocore(name)

    def _uri(self, name: str, value: Any) -> None:
        if name == "Bucket" and isinstance(value, str):
            self.bucket = value
        elif name == "Key" and isinstance(value, str) and value:
            self.key = value
        else:
            raise LeaveToBotocore(name)

    def _metadata(self, prefix: str, value: Any) -> None:
        if not isinstance(value, Mapping):
            raise LeaveToBotocore(prefix)
        for key, item in value.items():
            if not (isinstance(key, str) and isinstance(item, str) and key.isascii()
                    and item.isascii() and "\n" not in item and "\r" not in item):
                raise LeaveToBotocore(prefix)  # botocore's own checks and errors apply
            self.headers[prefix + key] = item


def _scalar(member: _Member, value: Any) -> str:
    if member.kind == "string" and isinstance(value, str):
        if "\n" in value or "\r" in value or not value.isascii():
            raise LeaveToBotocore(member.name)
        return value
    if member.kind in {"integer", "long"} and isinstance(value, int) and not isinstance(
            value, bool):
        return str(value)
    if member.kind == "boolean" and isinstance(value, bool):
        return "true" if value else "false"
    if (member.kind == "timestamp" and isinstance(value, datetime)
            and member.timestamp_format in {None, "rfc822"}):
        return _http_date(value)
    raise LeaveToBotocore(member.name)


def _members(operation_model: Any) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    for name, shape in operation_model.input_shape.members.items():
        ser = shape.serialization
        location = ser.get("location") or ("body" if name == "Body" else "")
        members[name] = _Member(location=location, name=ser.get("name", name),
                                kind=shape.type_name,
                                timestamp_format=ser.get("timestampFormat"))
    return members


class _Body:
    """A GET's streaming body: ``read(n)`` and ``async with`` like botocore's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def read(self, amt: int = -1) -> bytes:
        return await self._response.content.read(amt)

    async def __aenter__(self) -> _Body:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.release()


@dataclass(frozen=True, kw_only=True)
class _Operation:
    name: str
    model: Any
    members: Mapping[str, _Member]
    method: str
    answers: AnswerReader
    may_error_in_200: bool


class WireS3:
    """A botocore S3 client whose hot-path calls go straight over HTTP (see module doc)."""

    def __init__(self, client: Any, *, endpoint: Endpoint, credentials: Any,
                 http: aiohttp.ClientSession) -> None:
        self._client = client
        self._endpoint = endpoint
        self._credentials = credentials
        self._http = http
        self._signing: dict[tuple[Any, ...], crt_auth.AwsSigningConfig] = {}
        self._parser = create_parser("rest-xml")
        self._targets: dict[str, Target | None] = {}
        model = client.meta.service_model
        self._ops = {}
        for method, name in OPERATIONS.items():
            op = model.operation_model(name)
            self._ops[method] = _Operation(
                name=name, model=op, members=_members(op), method=op.http["method"],
                answers=AnswerReader(op.output_shape),
                may_error_in_200=name == "CopyObject")
        self.meta = client.meta
        self.exceptions = client.exceptions
        client.meta.events.register("before-send.s3.HeadObject", _stop_probe)

    def __getattr__(self, name: str) -> Any:
        if name in OPERATIONS:
            return partial(self._call, name)
        return getattr(self._client, name)

    async def _target(self, bucket: str) -> Target | None:
        if bucket in self._targets:
            return self._targets[bucket]
        target: Target | None = None
        try:
            await self._client.head_object(Bucket=bucket, Key=PROBE_KEY)
        except _Probed as probe:
            target = target_from_probe(probe.url, probe.headers)
        except Exception:
            return None  # botocore could not build it (no credentials?): botocore's call, now
        self._targets[bucket] = target
        return target

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        op = self._ops[method]
        try:
            request = self._request(op, kwargs)
        except LeaveToBotocore:
            request = None
        target = await self._target(request.bucket) if request is not None else None
        if request is None or target is None:
            result: dict[str, Any] = await getattr(self._client, method)(**kwargs)
            return result
        status, parsed = await self._send(op, request, target)
        if status >= 300:
            code = str(parsed.get("Error", {}).get("Code"))
            region = parsed["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
            if code in _REDIRECT_CODES or (region and region != target.region):
                # the bucket lives in another region: botocore knows how to follow
                self._targets[request.bucket] = None
                redirected: dict[str, Any] = await getattr(self._client, method)(**kwargs)
                return redirected
            raise self._client.exceptions.from_code(code)(parsed, op.name)
        return parsed

    def _request(self, op: _Operation, kwargs: Mapping[str, Any]) -> Request:
        request = Request(op.members, kwargs)
        if not request.bucket or not request.key:
            raise LeaveToBotocore("Bucket/Key")
        if op.name in {"PutObject", "UploadPart"} and (
                "ChecksumAlgorithm" in kwargs or (self._endpoint.checksums == "when_supported"
                                                  and not _CHECKSUM_MEMBERS & kwargs.keys())):
            raise LeaveToBotocore("checksum")  # botocore would compute one itself
        if op.name == "GetObject" and self._endpoint.checksums == "when_supported":
            request.headers.setdefault("x-amz-checksum-mode", "ENABLED")  # as botocore asks
        return request

    def _payload_hash(self, request: Request, body: bytes | memoryview | None, *,
                      tls: bool) -> str:
        """As botocore decides: the endpoint's setting; unset, every byte is signed except
        over TLS with a checksum header sent along."""
        sign = self._endpoint.sign_payload
        if sign is None:
            has_checksum = any(h.startswith("x-amz-checksum-") or h == "Content-MD5"
                               for h in request.headers)
            sign = not (tls and has_checksum)
        if not sign:
            return UNSIGNED_PAYLOAD
        if body is None:
            return EMPTY_SHA256
        return sha256(body).hexdigest()

    async def _signing_config(self, target: Target) -> crt_auth.AwsSigningConfig:
        """SigV4 for S3 (no double encoding, no path normalising) with the credentials
        botocore's provider holds now (a refresh makes a new config)."""
        frozen = await self._credentials.get_frozen_credentials()
        key = (frozen.access_key, frozen.secret_key, frozen.token, target.region)
        config = self._signing.get(key)
        if config is None:
            if len(self._signing) >= 16:
                self._signing.clear()
            config = self._signing[key] = crt_auth.AwsSigningConfig(
                algorithm=crt_auth.AwsSigningAlgorithm.V4,
                signature_type=crt_auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
                credentials_provider=crt_auth.AwsCredentialsProvider.new_static(
                    frozen.access_key, frozen.secret_key, frozen.token),
                region=target.region, service="s3", use_double_uri_encode=False,
                should_normalize_uri_path=False,
                signed_body_header_type=crt_auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256)
        return config

    async def _sign(self, method: str, path: str, headers: Mapping[str, str], *,
                    payload_hash: str, target: Target) -> list[tuple[str, str]]:
        """The headers to send, signed (X-Amz-Date, payload hash, token, Authorization)."""
        config = (await self._signing_config(target)).replace(signed_body_value=payload_hash)
        request = crt_http.HttpRequest(method, path, crt_http.HttpHeaders(list(headers.items())))
        signing = crt_auth.aws_sign_request(request, config)
        if not signing.done():  # with static credentials it is, at once
            await asyncio.wrap_future(signing)
        signing.result()
        return list(request.headers)

    async def _send(self, op: _Operation, request: Request,
                    target: Target) -> tuple[int, dict[str, Any]]:
        query = urlencode(sorted(request.query), quote_via=quote, safe="-_.~")
        path = target.path_prefix + quote(request.key, safe="/~") + (f"?{query}" if query
                                                                       else "")
        headers = {"host": target.host, **request.headers}
        data = request.body
        body = data.view() if isinstance(data, BufferBody) else data
        if isinstance(data, BufferBody):
            data.seek(0)  # all of it, whatever an earlier attempt read (BufferBodyPayload)
        signed = await self._sign(op.method, path, headers, target=target, payload_hash=(
            self._payload_hash(request, body, tls=target.tls)))
        response = await self._http.request(
            op.method, URL(target.base.removesuffix(target.path_prefix) + path, encoded=True),
            headers=[*signed, ("Accept-Encoding", "identity")], data=data,
            expect100=op.name in _UPLOADS and data is not None, allow_redirects=False)
        try:
            return await self._parse(op, response)
        except BaseException:
            response.release()
            raise

    async def _parse(self, op: _Operation,
                     response: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
        headers = {name.lower(): ", ".join(response.headers.getall(name))
                   for name in response.headers}
        status = response.status
        if status < 300 and op.answers.streaming:
            return status, op.answers.read(status, headers, _Body(response))
        body = await response.read()
        response.release()
        if op.may_error_in_200 and status == 200:
            answer = copy_answer(body)  # parsed once: for the check and for the answer
            if answer is not None:
                return status, op.answers.read(status, headers, answer)
            status = 500  # S3 reports some copy failures inside a 200 (botocore does too)
        if status < 300:
            return status, op.answers.read(status, headers, body)
        parsed: dict[str, Any] = self._parser.parse(
            {"headers": HeadersDict(headers), "status_code": status, "body": body,
             "context": {"operation_name": op.name}}, op.model.output_shape)
        return status, parsed


def ssl_context() -> ssl.SSLContext:
    """Certificates checked as botocore checks them: its CA bundle, or AWS_CA_BUNDLE."""
    context: ssl.SSLContext = create_urllib3_context()
    bundle: Any = os.environ.get("AWS_CA_BUNDLE") or True
    context.load_verify_locations(get_cert_path(bundle))
    return context


class WireClients:
    """The worker's S3 clients: each endpoint's botocore client, behind a :class:`WireS3`
    unless the endpoint says ``direct_requests = false``."""

    def __init__(self, clients: ClientPool, *, pool: int,
                 read_timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self._clients = clients
        self._pool = pool
        self._read_timeout = read_timeout
        self._wired: dict[str, Any] = {}
        self._stack = AsyncExitStack()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> WireClients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._wired.clear()
        await self._stack.__aexit__(None, None, None)

    def endpoint(self, name: str) -> Endpoint:
        return self._clients.endpoint(name)

    async def get(self, name: str) -> Any:
        wired = self._wired.get(name)
        if wired is not None:
            return wired
        async with self._lock:
            if name not in self._wired:
                self._wired[name] = await self._open(name)
        return self._wired[name]

    async def _open(self, name: str) -> Any:
        ep = self.endpoint(name)
        client = await self._clients.get(name)
        credentials = await self._clients.credentials(name)
        if not ep.direct_requests or credentials is None:  # no keys: botocore says so
            return client
        plain = (ep.endpoint_url or "").lower().startswith("http://")
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._pool,
                                           ssl=False if plain else ssl_context()),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS,
                                          sock_read=self._read_timeout),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Content-Type"),
            headers={"User-Agent": USER_AGENT})
        self._stack.push_async_callback(http.close)
        return WireS3(client, endpoint=ep, http=http, credentials=credentials)
