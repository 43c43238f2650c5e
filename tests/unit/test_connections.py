"""The wire's HTTP/1.1 client (worker.connections) against loopback servers that script each
byte: connections reused, answers framed every way HTTP frames them, large bodies whole and
bounded in memory, a connection the server dropped replaced, timeouts and garbage as errors
the worker retries, TLS checked."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.errors import RetryNow
from common.s3errors import classify
from worker import connections
from worker.connections import (
    ConnectionLostError,
    Connections,
    Origin,
    ProtocolError,
    ReadTimeout,
)

pytestmark = pytest.mark.timeout(60)



class Last(bytes):
    """An answer after which the server closes the connection."""


Reply = bytes | None


@dataclass
class Server:
    origin: Origin
    connections: int = 0
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # conn, head, body


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body (by Content-Length); None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def serve(answer: Callable[[Server, int, int, bytes], Awaitable[Reply]],
                *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A server that reads requests and writes ``answer(server, conn, n, head)`` for each
    (n counts the connection's requests); None closes the connection without answering, a
    :class:`Last` answer closes it after the answer."""
    server = Server(Origin("https" if ssl_context else "http", "127.0.0.1", 0))

    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        conn = server.connections
        server.connections += 1
        n = 0
        try:
            while (request := await read_request(reader)) is not None:
                server.requests.append((conn, *request))
                reply = await answer(server, conn, n, request[0])
                n += 1
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if isinstance(reply, Last):
                    break
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # the client went away, or the test ended
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    port = listener.sockets[0].getsockname()[1]
    server.origin = Origin(server.origin.scheme, "127.0.0.1", port)
    async with listener:
        yield server
    for task in handlers:  # nothing of this server outlives the test
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


def ok(body: bytes = b"", *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def no_tls() -> ssl.SSLContext:
    raise AssertionError("no TLS was asked for")


def pool(limit: int = 4, *, read_timeout: float = 30.0,
         ssl_context: Callable[[], ssl.SSLContext] = no_tls) -> Connections:
    return Connections(limit=limit, connect_timeout=5.0, read_timeout=read_timeout,
                       ssl_context=ssl_context)


async def get(http: Connections, server: Server, path: str = "/k",
              method: str = "GET", body: bytes | memoryview | None = None) -> tuple[int, bytes]:
    headers = {"host": f"127.0.0.1:{server.origin.port}"}
    if body is not None:
        headers["Content-Length"] = str(len(body))
    response = await http.request(server.origin, method, path, headers, body)
    return response.status, await response.read()


async def test_requests_reuse_one_connection_and_never_exceed_the_limit() -> None:
    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        await asyncio.sleep(0.01)  # long enough for requests to overlap
        return ok(head.split(b" ")[1])

    async with serve(answer) as server:
        http = pool(limit=3)
        for i in range(5):
            assert await get(http, server, f"/one/{i}") == (200, f"/one/{i}".encode())
        assert server.connections == 1
        answers = await asyncio.gather(*(get(http, server, f"/many/{i}") for i in range(30)))
        assert answers == [(200, f"/many/{i}".encode()) for i in range(30)]
        assert server.connections == 3
        await http.close()


async def test_chunked_answers_are_read_whole_and_the_connection_stays_usable() -> None:
    data = os.urandom(70_000)
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x;ext=1\r\n" % 5 + data[:5] + b"\r\n"
               + b"%X\r\n" % (len(data) - 5) + data[5:] + b"\r\n"
               + b"0\r\nx-trailer: 1\r\n\r\n")

    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        return chunked if n == 0 else ok(b"after")

    async with serve(answer) as server:
        http = pool()
        assert await get(http, server) == (200, data)
        assert await get(http, server) == (200, b"after")
        assert server.connections == 1
        await http.close()


async def test_a_body_that_ends_with_the_connection_and_connection_close() -> None:
    async def answer(server: Server, conn: int, n: int, head: bytes) -> Reply:
        if conn == 0:
            return Last(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")  # no length: ends at the close
        if conn == 1:
            return ok(b"closing", "Connection: close")
        return ok(b"fresh")

    async with serve(answer) as server:
        http = pool()
        assert await get(http, server) == (200, b"until the end")
        assert await get(http, server) == (200, b"closing")
        assert await get(http, server) == (200, b"fresh")
        assert server.connections == 3
        await http.close()


async def test_head_and_no_content_answers_have_no_body_and_interim_answers_are_skipped(
        ) -> None:
    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nETag: \"e\"\r\n\r\n"
        if n == 1:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final", "X-A: 1", "x-a: 2")

    async with serve(answer) as server:
        http = pool()
        response = await http.request(server.origin, "HEAD", "/k", {"host": "h"})
        assert (response.status, response.headers["etag"]) == (200, '"e"')
        assert await response.read() == b""
        assert await get(http, server) == (204, b"")
        response = await http.request(server.origin, "GET", "/k", {"host": "h"})
        assert (response.status, response.headers["x-a"]) == (200, "1, 2")
        assert await response.read() == b"final"
        assert server.connections == 1
        await http.close()


async def test_large_bodies_arrive_whole_and_unread_answers_stay_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    upload = os.urandom(9 * 1024 * 1024 + 7)
    download = os.urandom(12 * 1024 * 1024 + 3)

    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        return ok(download)

    most = 0
    real_push = connections._Connection._push

    def push(self: connections._Connection, data: bytes) -> None:
        nonlocal most
        real_push(self, data)
        most = max(most, self._buffered)

    monkeypatch.setattr(connections._Connection, "_push", push)
    async with serve(answer) as server:
        http = pool()
        response = await http.request(server.origin, "PUT", "/k", {
            "host": "h", "Content-Length": str(len(upload))}, memoryview(upload))
        pieces = []
        while piece := await response.read(1024 * 1024):
            pieces.append(piece)
            await asyncio.sleep(0.001)  # a slow reader: the server must wait for it
        assert b"".join(pieces) == download
        assert server.requests[0][2] == upload
        # never more than the high-water mark and one read of the socket unread
        assert most <= connections.HIGH_WATER + 256 * 1024
        assert await get(http, server) == (200, download)
        assert server.connections == 1
        await http.close()


async def test_a_connection_the_server_dropped_while_idle_is_replaced_once() -> None:
    async def answer(server: Server, conn: int, n: int, head: bytes) -> Reply:
        if conn == 0 and n == 1:
            return None  # read the second request, then hang up without a word
        return ok(b"%d" % conn)

    async with serve(answer) as server:
        http = pool()
        assert await get(http, server) == (200, b"0")
        assert await get(http, server, body=b"x" * 10) == (200, b"1")
        assert [(c, h.split(b"\r\n")[0]) for c, h, _ in server.requests] == [
            (0, b"GET /k HTTP/1.1"), (0, b"GET /k HTTP/1.1"), (1, b"GET /k HTTP/1.1")]
        await http.close()


async def test_a_fresh_connection_dropped_or_garbled_is_a_network_error_the_worker_retries(
        ) -> None:
    async def hang_up(server: Server, conn: int, n: int, head: bytes) -> Reply:
        return None

    async def garble(server: Server, conn: int, n: int, head: bytes) -> bytes:
        return b"SMTP ready\r\n\r\n"

    async def cut_short(server: Server, conn: int, n: int, head: bytes) -> Reply:
        return Last(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    for script, error in ((hang_up, ConnectionLostError), (garble, ProtocolError),
                          (cut_short, ConnectionLostError)):
        async with serve(script) as server:
            http = pool()
            with pytest.raises(error) as caught:
                await get(http, server)
            assert isinstance(classify(caught.value, operation="GetObject"), RetryNow)
            assert server.connections == 1  # not sent again on a connection of its own
            await http.close()


async def test_a_silent_server_is_a_read_timeout_and_its_connection_is_not_reused() -> None:
    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        if conn == 0:
            await asyncio.sleep(30)
        return ok(b"late")

    async with serve(answer) as server:
        http = pool(limit=1, read_timeout=0.2)
        with pytest.raises(ReadTimeout) as caught:
            await get(http, server)
        assert isinstance(classify(caught.value, operation="CopyObject"), RetryNow)
        assert await get(http, server) == (200, b"late")  # the slot came back
        assert server.connections == 2
        await http.close()


async def test_a_cancelled_request_gives_its_slot_back() -> None:
    arrived = asyncio.Event()

    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        if conn == 0:
            arrived.set()
            await asyncio.sleep(30)
        return ok(b"next")

    async with serve(answer) as server:
        http = pool(limit=1)
        task = asyncio.create_task(get(http, server))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await get(http, server) == (200, b"next")
        await http.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_is_checked_against_the_trusted_certificates(
        certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    async def answer(server: Server, conn: int, n: int, head: bytes) -> bytes:
        return ok(b"secret")

    def trusting() -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cert))

    async with serve(answer, ssl_context=server_side) as server:
        http = pool(ssl_context=trusting)
        assert await get(http, server) == (200, b"secret")
        assert await get(http, server) == (200, b"secret")
        assert server.connections == 1
        await http.close()
        stranger = pool(ssl_context=ssl.create_default_context)
        with pytest.raises(ssl.SSLCertVerificationError):
            await get(stranger, server)
        await stranger.close()
        assert [b for _, _, b in server.requests] == [b"", b""]


async def test_an_answer_sent_before_the_body_was_read_is_the_answer() -> None:
    """S3 refuses an upload from its headers (403 AccessDenied) and closes the connection
    without reading the body: that answer is what the caller gets, not a lost connection."""
    error = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    refusal = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(error), error))

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(refusal)
        await writer.drain()
        await asyncio.sleep(0.2)  # the answer reaches the client, still sending its body
        writer.transport.abort()  # closed with the body unread: the client sees a reset

    listener = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server = Server(Origin("http", "127.0.0.1", port))
    http = pool()
    async with listener:
        status, body = await get(http, server, method="PUT", body=bytes(32 * 1024 * 1024))
        assert (status, body) == (403, error)
        # the connection is not reused: the server had not read the request
        status, _ = await asyncio.wait_for(get(http, server, method="PUT", body=b"x"), 10)
        assert status == 403
    await http.close()
