"""A fault-injecting reverse proxy for S3 and SQS, for the fault tests and ``make soak``.

It sits on a loopback port in front of one local endpoint (LocalStack or ``rclone serve s3``)
and forwards every request as it came (Host header included, so signatures still check),
except where a :class:`Rule` draws a fault for it. Rules name the operations they apply to
(``PutObject``, ``CompleteMultipartUpload``, ``ChangeMessageVisibilityBatch``...) and a rate;
draws come from one seeded generator. At most one fault per request, the first rule that
draws one.

The faults are the ones S3 clients meet (:class:`Fault`): throttling and server errors with a
proper S3 XML body, connections reset mid-answer, bodies shorter than their Content-Length,
requests cut while their body is read, an error answered before the body is read (as S3
answers a PUT it refuses), latency, a copy answered ``200`` with an ``<Error>`` document, an
answer lost after the store acted, and a request dropped on the floor.

Everything runs on the proxy's own thread and event loop, so synchronous tests and worker
processes alike can use it; :attr:`FaultProxy.injected` counts what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL


class Fault(StrEnum):
    SLOWDOWN = "slowdown"  # 503 SlowDown, nothing forwarded
    INTERNAL = "internal"  # 500 InternalError, nothing forwarded
    RESET = "reset"  # forwarded; the answer's head and part of its body, then a reset
    TRUNCATE = "truncate"  # forwarded; fewer bytes than its Content-Length, then closed
    ABORT_REQUEST = "abort_request"  # part of the request body read, then closed
    EARLY_ERROR = "early_error"  # an error answered before the body is read, then closed
    LATENCY = "latency"  # forwarded after ``Rule.seconds``
    ERROR_200 = "error_200"  # 200 with an <Error> document (copies, Complete); not forwarded
    LOST_ANSWER = "lost_answer"  # forwarded (the store acted), closed before the answer
    DROP = "drop"  # closed without forwarding: the request never arrives


@dataclass(frozen=True)
class Rule:
    """``fault`` for a share ``rate`` of the requests of ``operations`` (every one when
    empty) whose path contains ``match``, once ``after`` of them went through untouched."""

    fault: Fault
    rate: float
    operations: frozenset[str] = frozenset()
    match: str = ""
    seconds: float = 0.0  # LATENCY
    status: int = 403  # EARLY_ERROR
    code: str = "AccessDenied"  # EARLY_ERROR
    # The error's message quotes the request's Authorization and security-token headers and
    # a presigned URL made of them, as a careless store might: nothing of it may reach a log.
    echo: bool = False
    after: int = 0

    def applies(self, operation: str, path: str) -> bool:
        return (not self.operations or operation in self.operations) and self.match in path


def rules(fault: Fault, rate: float, *operations: str, **options: Any) -> Rule:
    """A rule in one line: ``rules(Fault.RESET, 0.03, "GetObject")``."""
    return Rule(fault, rate, frozenset(operations), **options)


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-connection",
                         "proxy-authorization", "te", "trailer", "transfer-encoding",
                         "upgrade", "expect"})


# (method, query parameter that names the operation, operation); the first match wins
_BY_QUERY = (
    ("POST", "uploads", "CreateMultipartUpload"),
    ("POST", "uploadId", "CompleteMultipartUpload"),
    ("POST", "delete", "DeleteObjects"),
    ("PUT", "partNumber", "UploadPart"),
    ("PUT", "tagging", "PutObjectTagging"),
    ("DELETE", "uploadId", "AbortMultipartUpload"),
    ("GET", "uploadId", "ListParts"),
    ("GET", "uploads", "ListMultipartUploads"),
    ("GET", "tagging", "GetObjectTagging"),
)
# (method, names a key) -> operation, for requests without such a parameter
_BY_PATH = {("PUT", True): "PutObject", ("PUT", False): "CreateBucket",
            ("DELETE", True): "DeleteObject", ("DELETE", False): "DeleteBucket",
            ("HEAD", True): "HeadObject", ("HEAD", False): "HeadBucket",
            ("GET", True): "GetObject", ("GET", False): "ListObjects"}
_WITH_COPY_SOURCE = {"UploadPart": "UploadPartCopy", "PutObject": "CopyObject"}


def s3_operation(method: str, path: str, query: Mapping[str, str],
                 headers: Mapping[str, str]) -> str:
    """The S3 operation of a path-style request (or SQS's, from its target header)."""
    target = headers.get("X-Amz-Target", "")
    if target.startswith("AmazonSQS."):
        return target.removeprefix("AmazonSQS.")
    if "Action" in query:
        return query["Action"]
    operation = next((op for m, name, op in _BY_QUERY if m == method and name in query),
                     None) or _BY_PATH.get((method, path.strip("/").count("/") >= 1), method)
    if "x-amz-copy-source" in {h.lower() for h in headers}:
        return _WITH_COPY_SOURCE.get(operation, operation)
    return operation


def error_document(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>faultproxy</RequestId></Error>"
            ).encode()


def echoed(request: web.Request, message: str) -> str:
    """``message`` followed by the request's credentials, as a careless store might say."""
    auth = request.headers.get("Authorization", "")
    token = request.headers.get("X-Amz-Security-Token", "")
    signature = auth.rpartition("Signature=")[2]
    credential = auth.partition("Credential=")[2].partition(",")[0]
    presigned = (f"{request.url}?X-Amz-Credential={credential}&X-Amz-Signature={signature}"
                 f"&X-Amz-Security-Token={token}")
    return (f"{message}; Authorization: {auth}; x-amz-security-token: {token}; "
            f"retry at {presigned}")


class FaultProxy:
    """``with FaultProxy(upstream, seed=1) as proxy: proxy.set_rules([...]); proxy.url``."""

    def __init__(self, upstream: str, *, seed: int = 0, host: str = "127.0.0.1") -> None:
        self.upstream = URL(upstream)
        self._host = host
        self._random = random.Random(seed)
        self._rules: tuple[Rule, ...] = ()
        self._lock = threading.Lock()
        self.injected: Counter[tuple[str, str]] = Counter()
        self._matched: Counter[Rule] = Counter()
        self.seen: Counter[str] = Counter()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    # -- control (any thread) ---------------------------------------------------------------

    def set_rules(self, new: Iterable[Rule]) -> None:
        with self._lock:
            self._rules = tuple(new)
            self._matched.clear()

    def clear(self) -> None:
        self.set_rules(())

    def injected_total(self, fault: Fault | None = None) -> int:
        with self._lock:
            return sum(n for (_, f), n in self.injected.items() if fault is None or f == fault)

    def _draw(self, operation: str, path: str) -> Rule | None:
        with self._lock:
            self.seen[operation] += 1
            for rule in self._rules:
                if not rule.applies(operation, path):
                    continue
                self._matched[rule] += 1
                if self._matched[rule] > rule.after and self._random.random() < rule.rate:
                    self.injected[(operation, rule.fault.value)] += 1
                    return rule
        return None

    # -- life -------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # a client that went away cancels its request (a held one too); stopping waits for no one
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        server: Any = site._server
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self._host}:{port}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         auto_decompress=False) as session:
            self._session = session
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    # -- one request ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except (ConnectionResetError, aiohttp.ClientError):  # a side went away mid-request
            self._cut(request)
            raise  # not reached: _cut raises

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        operation = s3_operation(request.method, request.path, request.query, request.headers)
        rule = self._draw(operation, request.path)
        fault = rule.fault if rule is not None else None
        if rule is not None and fault is not Fault.LATENCY:
            early = await self._before_forwarding(request, rule)
            if early is not None:
                return early
        elif rule is not None:
            await asyncio.sleep(rule.seconds)
        return await self._forward(request, fault)

    async def _before_forwarding(self, request: web.Request,
                                 rule: Rule) -> web.StreamResponse | None:
        """The faults that never reach the store; None for those that do."""
        fault = rule.fault
        say = partial(echoed, request) if rule.echo else str
        if fault in (Fault.SLOWDOWN, Fault.INTERNAL):
            await request.read()
            status, code = (503, "SlowDown") if fault is Fault.SLOWDOWN else (
                500, "InternalError")
            return web.Response(status=status, body=error_document(code, say("injected")),
                                content_type="application/xml")
        if fault is Fault.EARLY_ERROR:
            response = web.Response(status=rule.status, body=error_document(
                rule.code, say("injected, body unread")), content_type="application/xml")
            response.force_close()
            return response
        if fault is Fault.ERROR_200:
            await request.read()
            return web.Response(status=200, content_type="application/xml",
                                body=error_document("InternalError", "injected after 200"))
        if fault is Fault.ABORT_REQUEST:
            with contextlib.suppress(Exception):
                await request.content.read(64 * 1024)
            self._cut(request)
        if fault is Fault.DROP:
            self._cut(request)
        return None

    @staticmethod
    def _cut(request: web.Request) -> None:
        """Close the client's connection now, with no answer."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()

    async def _forward(self, request: web.Request,
                       fault: Fault | None) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        url = self.upstream.join(URL(request.raw_path, encoded=True))
        body: Any = request.content if request.body_exists else None
        async with self._session.request(request.method, url, headers=headers, data=body,
                                         allow_redirects=False,
                                         skip_auto_headers=("User-Agent", "Content-Type",
                                                            "Accept", "Accept-Encoding")
                                         ) as upstream:
            if fault is Fault.LOST_ANSWER:
                await upstream.read()  # the store finished its work
                self._cut(request)
            answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    answer.headers.add(name, value)
            return await self._relay(request, upstream, answer, fault)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     answer: web.StreamResponse, fault: Fault | None) -> web.StreamResponse:
        """Stream the store's answer back, cut short for RESET and TRUNCATE."""
        length = upstream.content_length
        if request.method == "HEAD" or length == 0:
            if fault in (Fault.RESET, Fault.TRUNCATE):
                self._cut(request)
            await answer.prepare(request)
            return answer
        await answer.prepare(request)
        limit = None
        if fault in (Fault.RESET, Fault.TRUNCATE):
            limit = (length or 2) // 2
        sent = 0
        async for chunk in upstream.content.iter_chunked(256 * 1024):
            if limit is not None and sent + len(chunk) > limit:
                await answer.write(chunk[:limit - sent])
                if fault is Fault.RESET:
                    self._cut(request)
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError()
            await answer.write(chunk)
            sent += len(chunk)
        await answer.write_eof()
        return answer


@contextlib.contextmanager
def proxied(upstream: str, *, seed: int = 0) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, seed=seed) as proxy:
        yield proxy
