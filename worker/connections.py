"""Keep-alive HTTP/1.1 connections for the wire's requests: one request at a time per
connection, the answer's head parsed in one pass, its body handed over as it arrives.

Why not aiohttp: a server-side copy of a small object is one request, and aiohttp's client
spent about 140 us of CPU on each (request and response objects, header multidicts, URL
objects, a timer and several futures), a quarter of the worker's CPU per copied object
(py-spy on W4b, bench/README). Here a request is one write of its head (and body, when
small) and one future per wait for the answer.

What it does:

* at most ``limit`` connections at once for all of an endpoint's hosts, reused LIFO; a
  request waits for a free one;
* TLS with the caller's context (certificates checked as botocore checks them);
* answers framed by Content-Length, by chunked transfer coding, or by the end of the
  connection; 1xx answers skipped; a HEAD, 204 or 304 has no body;
* flow control both ways: reading pauses while ``HIGH_WATER`` body bytes wait unread, and a
  large body is written in ``SEND_CHUNK`` slices, each after the socket drained, so neither
  side ever holds a second copy of a part;
* a connection the server closed while it was idle, found when the next request on it gets
  no answer byte at all, is replaced and the request sent again once (S3's requests here are
  idempotent); every other failure is the caller's (:mod:`common.s3errors` reads
  :class:`ConnectionError` and :class:`TimeoutError` as network errors, retried);
* a wait of ``read_timeout`` seconds for the next byte of an answer (or for the socket to
  drain) fails with :class:`ReadTimeout`; connecting has ``connect_timeout``.

What it does not: proxies (an endpoint behind a proxy goes through botocore), redirects (the
wire hands those to botocore), content decoding (it asks for ``identity``), cookies,
pipelining, HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

HIGH_WATER = 256 * 1024  # unread body bytes at which reading pauses
LOW_WATER = 64 * 1024  # ... and resumes
SEND_CHUNK = 256 * 1024  # a large body goes out in slices of this, each after a drain
ONE_WRITE = 64 * 1024  # a body this small goes out with the head, in one write
MAX_HEAD_BYTES = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})

_IDLE, _HEAD, _BODY, _DONE = range(4)
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)  # chunked transfer coding


class ConnectionLostError(ConnectionError):
    """The server closed the connection before its answer was whole."""


class ProtocolError(ConnectionError):
    """The server's bytes are not an HTTP/1.1 answer."""


class ReadTimeout(TimeoutError):
    """No byte of the answer (or no room in the socket) for ``read_timeout`` seconds."""


class _Stale(Exception):
    """A reused connection was closed by the server before any byte of the answer."""


@dataclass(frozen=True)
class Origin:
    """Where a connection goes: scheme, host and port (the pool's key)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return cls(parts.scheme, parts.hostname,
                   parts.port or (443 if parts.scheme == "https" else 80))


class Response:
    """One answer: ``status``, ``headers`` (lower-cased names; repeated ones joined with
    ", ") and the body, read whole or in pieces. The connection goes back to its pool once
    the body was read to its end, or is closed by :meth:`release` before that."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.headers = headers

    async def read(self, amt: int = -1) -> bytes:
        """Up to ``amt`` bytes as soon as some arrived (all of them when ``amt`` < 0);
        b"" at the end."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            data = await (conn.read_all() if amt < 0 else conn.read_some(amt))
        except BaseException:
            self.release()
            raise
        if conn.finished():
            self.release()
        return data

    def release(self) -> None:
        """Give the connection back (reusable only when the whole answer was read)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool_release(conn)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the answer to its current request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float,
                 pool_release: Callable[[_Connection], None]) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.pool_release = pool_release
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.requests = 0
        self._state = _IDLE
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._got_bytes = False
        self._head = bytearray()
        self._answer: tuple[int, dict[str, str]] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._remaining = -1  # Content-Length left; -1: chunked or until the end
        self._chunked = False
        self._cstate = _SIZE
        self._cleft = 0
        self._cbuf = bytearray()
        self._head_only = False
        self._whole = False  # the body is being read whole: no flow control

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self._state == _BODY and self._remaining < 0 and not self._chunked:
            self._state = _DONE  # the body ran to the end of the connection, as announced
        elif self._state in (_HEAD, _BODY) and self._error is None:
            what = "before its answer" if self._state == _HEAD else "in the middle of an answer"
            self._error = ConnectionLostError(f"the server closed the connection {what}")
            if exc is not None:
                self._error.__cause__ = exc
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            if self._state == _HEAD:
                self._head_received(data)
            elif self._state == _BODY:
                self._body_received(data)
            else:  # bytes nobody asked for: this connection cannot be trusted again
                self.keep_alive = False
        except ProtocolError as exc:
            self._fail(exc)
        self._wake()

    def eof_received(self) -> bool:
        return False  # close; connection_lost says what that means

    # -- the answer's head ----------------------------------------------------------------

    def _head_received(self, data: bytes) -> None:
        self._head += data
        while self._state == _HEAD:
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"an answer's head is over {MAX_HEAD_BYTES} bytes")
                return
            status, headers = _parse_head(bytes(self._head[:end]))
            rest = bytes(self._head[end + 4:])
            self._head.clear()
            if 100 <= status < 200:  # 100 Continue and friends: the answer follows
                self._head += rest
                continue
            self._answer = (status, headers)
            self._frame(status, headers)
            if rest:
                self._body_received(rest)

    def _frame(self, status: int, headers: Mapping[str, str]) -> None:
        """How the body ends: not at all, at a length, at the last chunk, or at the close."""
        connection = headers.get("connection", "").lower()
        if "close" in connection:
            self.keep_alive = False
        if self._head_only or status in _NO_BODY_STATUS:
            self._state = _DONE
            return
        self._state = _BODY
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif (length := headers.get("content-length")) is not None:
            try:
                self._remaining = int(length)
            except ValueError:
                raise ProtocolError(f"Content-Length {length!r} is not a number") from None
            if self._remaining == 0:
                self._state = _DONE
        else:
            self.keep_alive = False  # the body ends when the connection does

    # -- the body -------------------------------------------------------------------------

    def _body_received(self, data: bytes) -> None:
        if self._chunked:
            self._cbuf += data
            self._dechunk()
        elif self._remaining < 0:
            self._push(data)
        else:
            if len(data) > self._remaining:
                self.keep_alive = False  # more than announced: not ours to read
                data = data[:self._remaining]
            self._remaining -= len(data)
            self._push(data)
            if self._remaining == 0:
                self._state = _DONE

    def _dechunk(self) -> None:
        while self._state == _BODY and _CHUNK_STEPS[self._cstate](self):
            pass

    def _line(self) -> bytes | None:
        """The next CRLF-ended line of the chunk framing, None until it is whole."""
        end = self._cbuf.find(b"\r\n")
        if end < 0:
            if len(self._cbuf) > MAX_HEAD_BYTES:
                raise ProtocolError("a chunk size line or trailer is too long")
            return None
        line = bytes(self._cbuf[:end])
        del self._cbuf[:end + 2]
        return line

    def _chunk_size(self) -> bool:
        line = self._line()
        if line is None:
            return False
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
        self._cleft = size
        self._cstate = _DATA if size else _TRAILER
        return True

    def _chunk_data(self) -> bool:
        buf = self._cbuf
        if not buf:
            return False
        n = min(self._cleft, len(buf))
        self._push(bytes(buf[:n]))
        del buf[:n]
        self._cleft -= n
        if self._cleft == 0:
            self._cstate = _DATA_END
        return True

    def _chunk_end(self) -> bool:
        if len(self._cbuf) < 2:
            return False
        if self._cbuf[:2] != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
        del self._cbuf[:2]
        self._cstate = _SIZE
        return True

    def _trailer(self) -> bool:
        line = self._line()
        if line is None:
            return False
        if not line:  # the empty line after the trailers: the body is whole
            self._state = _DONE
            if self._cbuf:
                self.keep_alive = False
        return True

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if (self._buffered > HIGH_WATER and not self._reading_paused and not self._whole
                and self.transport):
            self._reading_paused = True
            self.transport.pause_reading()

    def _taken(self, n: int) -> None:
        self._buffered -= n
        if self._reading_paused and self._buffered <= LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- waiting --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout(
                f"no answer from the server for {self._read_timeout:g} s"))

    async def _wait(self) -> None:
        """Until something happens: bytes, the end, room to write, or the read timeout."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(self._read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    # -- one request ----------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes | memoryview | None, *,
                       head_only: bool) -> Response:
        """Send one request and wait for its answer's head."""
        reused = self.requests > 0
        self.requests += 1
        self._begin(head_only)
        try:
            await self._send(head, body)
            while self._answer is None:
                self._check()
                await self._wait()
        except ConnectionLostError:
            if reused and not self._got_bytes:
                raise _Stale() from None
            raise
        status, headers = self._answer
        return Response(self, status, headers)

    def _begin(self, head_only: bool) -> None:
        self._state = _HEAD
        self._head_only = head_only
        self._answer = None
        self._got_bytes = False
        self._remaining = -1
        self._chunked = False
        self._cstate = _SIZE
        self._cbuf.clear()
        self._whole = False

    async def _send(self, head: bytes, body: bytes | memoryview | None) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionLostError("the server closed the connection before the request")
        if body is None or len(body) <= ONE_WRITE:
            transport.write(head + bytes(body) if body else head)
            return
        transport.write(head)
        view = memoryview(body)
        for offset in range(0, len(view), SEND_CHUNK):
            while self._writing_paused and not self._answered_early():
                self._check()
                if self.closed:
                    raise ConnectionLostError("the server closed the connection mid-request")
                await self._wait()
            if self._answered_early():
                return
            if transport.is_closing():
                self._check()
                raise ConnectionLostError("the server closed the connection mid-request")
            transport.write(view[offset:offset + SEND_CHUNK])

    def _answered_early(self) -> bool:
        """The server answered before reading the whole body, as S3 refuses an upload from
        its headers: that answer stands, the rest of the body is not sent, and the
        connection is not used again (the server may still be reading, or gone)."""
        if self._answer is None:
            return False
        self.keep_alive = False
        return True

    async def read_some(self, amt: int) -> bytes:
        while not self._chunks:
            if self._state == _DONE:
                return b""
            self._check()
            await self._wait()
        first = self._chunks[0]
        if len(first) <= amt:
            self._chunks.popleft()
            self._taken(len(first))
            return first
        self._chunks[0] = first[amt:]
        self._taken(amt)
        return first[:amt]

    async def read_all(self) -> bytes:
        self._whole = True  # everything is wanted at once: no pause
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        while self._state != _DONE:
            self._check()
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._taken(len(data))
        return data

    def finished(self) -> bool:
        """The whole answer arrived and was read."""
        return self._state == _DONE and not self._chunks

    def alive(self) -> bool:
        """Open, and its last answer said nothing against another request on it."""
        return (self.keep_alive and not self.closed and self.transport is not None
                and not self.transport.is_closing())

    def reusable(self) -> bool:
        return self.finished() and self.alive()

    def idle(self) -> None:
        self._state = _IDLE
        self._answer = None

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():  # a body the server will never read
            self.transport.abort()
        else:
            self.transport.close()


_CHUNK_STEPS: tuple[Callable[[_Connection], bool], ...] = (
    _Connection._chunk_size, _Connection._chunk_data, _Connection._chunk_end,
    _Connection._trailer)  # by _SIZE, _DATA, _DATA_END, _TRAILER


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # as http.client reads it
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"a header line without a colon: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers.setdefault("connection", "close")
    return int(parts[1]), headers


class Connections:
    """An endpoint's connections: at most ``limit`` at once over all its hosts."""

    def __init__(self, *, limit: int, connect_timeout: float, read_timeout: float,
                 ssl_context: Callable[[], ssl.SSLContext]) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl_context = ssl_context
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def request(self, origin: Origin, method: str, target: str,
                      headers: Mapping[str, str],
                      body: bytes | memoryview | None = None) -> Response:
        """Send ``method target`` with ``headers`` (Host, Content-Length and the rest: the
        caller's) and return the answer once its head arrived."""
        lines = [f"{method} {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        await self._slots.acquire()
        try:
            conn = self._idle_connection(origin)
            try:
                return await self._exchange(conn or await self._connect(origin), head, body,
                                            method)
            except _Stale:  # closed by the server while it sat idle: once more, afresh
                return await self._exchange(await self._connect(origin), head, body, method)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes | memoryview | None,
                        method: str) -> Response:
        try:
            return await conn.exchange(head, body, head_only=method == "HEAD")
        except BaseException:
            self._forget(conn)
            raise

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.alive():
                return conn
            self._forget(conn)
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closed:
            raise ConnectionError("the connections were closed")
        loop = asyncio.get_running_loop()
        context: Any = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = self._ssl_context()
            context = self._ssl
        conn = _Connection(loop, self._read_timeout, self._give_back(origin))
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None)
        except TimeoutError:
            conn.close()
            raise ConnectionError(f"could not connect to {origin.host}:{origin.port} within "
                                  f"{self._connect_timeout:g} s") from None
        self._open.add(conn)
        return conn

    def _give_back(self, origin: Origin) -> Callable[[_Connection], None]:
        def release(conn: _Connection) -> None:
            if conn.reusable() and not self._closed:
                conn.idle()
                self._idle.setdefault(origin, []).append(conn)
            else:
                self._forget(conn)
            self._slots.release()
        return release

    def _forget(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def close(self) -> None:
        """Close every connection (answers still being read fail)."""
        self._closed = True
        for conn in list(self._open):
            self._forget(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
