"""``s3ferry backfill --server URL``: ask a running ``s3ferry serve`` to run the backfill.

Standard library only, so the command starts in tens of milliseconds: the request goes in,
then the run is followed with long polls (``?wait=``, each at most a minute, so proxies with
idle timeouts do not cut it) until it ends, and its summary is printed as ``s3ferry backfill``
prints its own. Exit codes as there: 0 done, 1 failed or unreachable, 2 refused (bad request,
bad token, a backfill of the same route already running).

The token comes from the environment only (``S3FERRY_INTAKE_TOKEN``, or the service's own
``S3FERRY_DISPATCHER__INTAKE_TOKEN``): a command line is visible to every user of the host.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from urllib.parse import urlsplit

from dispatcher.args import backfill_request

TYPE_CHECKING = False  # as in dispatcher.args: no typing import at run time
if TYPE_CHECKING:
    from typing import Any

POLL_SECONDS = 50  # below MAX_WAIT_SECONDS of the service and common proxy idle timeouts
CALL_TIMEOUT_SECONDS = POLL_SECONDS + 30
TOKEN_VARIABLES = ("S3FERRY_INTAKE_TOKEN", "S3FERRY_DISPATCHER__INTAKE_TOKEN")


class Refused(Exception):
    """The service answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status


def call(method: str, url: str, token: str, body: dict[str, Any] | None = None,
         timeout: float = CALL_TIMEOUT_SECONDS) -> dict[str, Any]:
    """One API call: the answer's JSON, or :class:`Refused` with the service's reason."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json"}
    if proxied():
        return _call_through_urllib(method, url, headers, data, timeout)
    status, reason, payload = exchange(method, url, headers, data, timeout)
    if status >= 300:
        raise Refused(status, _reason(payload, reason))
    out: dict[str, Any] = json.loads(payload or b"{}")
    return out


def proxied() -> bool:
    """A proxy is configured (``http_proxy``, ``HTTPS_PROXY``, ...): then urllib sends the
    calls, as it always did, with its handling of the proxy and ``no_proxy``."""
    return any(name.lower().endswith("_proxy") and name.lower() != "no_proxy" and value
               for name, value in os.environ.items())


def exchange(method: str, url: str, headers: dict[str, str], data: bytes | None,
             timeout: float) -> tuple[int, str, bytes]:
    """One HTTP/1.1 request on its own connection; (status, reason phrase, body).

    A socket and a few lines instead of ``urllib.request``, whose imports (``http.client``,
    ``email``, ``ssl``, ``tempfile``) take 45-50 ms: most of this command's start. TLS
    (``ssl``, imported only then) for https URLs, verified with the system's CA bundle.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    authority = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in value for value in headers.values() for c in "\r\n"):
        raise ValueError("a header value (the token?) holds a line break")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}", "Connection: close",
             "User-Agent: s3ferry", f"Content-Length: {len(data or b'')}",
             *(f"{name}: {value}" for name, value in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b"")
    with socket.create_connection((host, port), timeout=timeout) as plain:
        sock = plain
        if parts.scheme == "https":
            import ssl  # only for https: a tenth of the imports saved
            sock = ssl.create_default_context().wrap_socket(plain, server_hostname=host)
        with sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return parse_answer(b"".join(chunks))


def parse_answer(raw: bytes) -> tuple[int, str, bytes]:
    """(status, reason phrase, body) of a whole HTTP/1.1 answer read until the server closed
    the connection; ValueError when it is not one or was cut short."""
    head, blank, rest = raw.partition(b"\r\n\r\n")
    if not blank:
        raise ValueError("the service's answer was cut short")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    version, _, after = status_line.partition(" ")
    status, _, reason = after.partition(" ")
    if not version.startswith("HTTP/1.") or not (status.isdigit() and len(status) == 3):
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    named = {}
    for field in fields:
        name, _, value = field.partition(":")
        named[name.strip().lower()] = value.strip()
    if "chunked" in named.get("transfer-encoding", "").lower():
        return int(status), reason, _dechunk(rest)
    if "content-length" in named:
        length = int(named["content-length"])
        if len(rest) < length:
            raise ValueError("the service's answer was cut short")
        return int(status), reason, rest[:length]
    return int(status), reason, rest


def _dechunk(rest: bytes) -> bytes:
    body = bytearray()
    while True:
        size_line, crlf, rest = rest.partition(b"\r\n")
        if not crlf:
            raise ValueError("the service's answer was cut short")
        size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            return bytes(body)
        if len(rest) < size + 2:
            raise ValueError("the service's answer was cut short")
        body += rest[:size]
        rest = rest[size + 2:]


def _reason(payload: bytes, reason: str) -> str:
    """The service's ``error``, else the status line's reason phrase."""
    try:
        return str(json.loads(payload or b"{}").get("error") or reason)
    except (ValueError, AttributeError):
        return reason


def _call_through_urllib(method: str, url: str, headers: dict[str, str], data: bytes | None,
                         timeout: float) -> dict[str, Any]:
    import urllib.error  # only behind a proxy: urllib knows how to go through one
    import urllib.request

    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener()  # reads the proxy variables now (urlopen's
    try:                                    # shared opener keeps those of its first use)
        with opener.open(request, timeout=timeout) as answer:
            out: dict[str, Any] = json.loads(answer.read() or b"{}")
            return out
    except urllib.error.HTTPError as exc:
        raise Refused(exc.code, _reason(exc.read(), str(exc.reason))) from None


def submit_backfill(args: argparse.Namespace) -> int:
    token = next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), "")
    if not token:
        print(f"s3ferry backfill: --server needs the service's token in {TOKEN_VARIABLES[0]}",
              file=sys.stderr)
        return 2
    base = args.server.rstrip("/")
    try:
        run = call("POST", f"{base}/v1/backfills", token, backfill_request(args))
        if not args.no_wait:
            while run.get("state") == "running":
                run = call("GET", f"{base}/v1/backfills/{run['id']}?wait={POLL_SECONDS}",
                           token)
    except Refused as exc:
        print(f"s3ferry backfill: {base} refused: {exc}", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except (OSError, ValueError) as exc:  # urllib's URLError is an OSError
        reason = getattr(exc, "reason", exc)
        print(f"s3ferry backfill: cannot reach {base}: {reason}", file=sys.stderr)
        return 1
    if args.no_wait:
        json.dump({"id": run.get("id"), "state": run.get("state"),
                   "url": f"{base}/v1/backfills/{run.get('id')}"}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if run.get("state") != "done":
        print(f"s3ferry backfill: {run.get('state')} in {base}: {run.get('error')}",
              file=sys.stderr)
        return 1
    json.dump(run.get("summary"), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0
