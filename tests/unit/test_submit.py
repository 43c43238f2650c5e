"""``s3ferry backfill --server``'s calls to the service (urllib.request).

What the service receives (method, target, token, JSON body), what the command makes of the
answers (JSON, the service's reason on a refusal, answers cut short), and that with a proxy
configured the calls go through it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dispatcher import submit
from dispatcher.args import backfill_parser

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 32


@dataclass
class OneShot:
    """A TCP server on loopback that reads each request whole and sends a canned answer."""

    answer: bytes
    port: int = 0
    requests: list[bytes] = field(default_factory=list)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def serving(answer: bytes) -> Iterator[OneShot]:
    server = OneShot(answer)
    listener = socket.create_server(("127.0.0.1", 0))
    server.port = listener.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                server.requests.append(_read_request(conn))
                conn.sendall(server.answer)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = "\r\n".join([f"HTTP/1.1 {status}", *headers, "Connection: close"])
    return head.encode() + b"\r\n\r\n" + body


def json_answer(status: str, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    return answer(status, body, "Content-Type: application/json",
                  f"Content-Length: {len(body)}")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_a_call_sends_the_token_and_the_json_and_reads_the_answer() -> None:
    with serving(json_answer("202 Accepted", {"id": "r1", "state": "running"})) as server:
        got = submit.call("POST", f"http://127.0.0.1:{server.port}/v1/backfills", TOKEN,
                          {"routes": ["a b"], "dry_run": True})
    assert got == {"id": "r1", "state": "running"}
    (request,) = server.requests
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/backfills HTTP/1.1"
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert fields["host"] == f"127.0.0.1:{server.port}"
    assert fields["authorization"] == f"Bearer {TOKEN}"
    assert fields["content-type"] == "application/json"
    assert int(fields["content-length"]) == len(body)
    assert json.loads(body) == {"routes": ["a b"], "dry_run": True}


def test_a_get_keeps_its_query_and_sends_no_body() -> None:
    with serving(json_answer("200 OK", {"state": "done"})) as server:
        got = submit.call("GET", f"http://127.0.0.1:{server.port}/v1/backfills/r1?wait=50",
                          TOKEN)
    assert got == {"state": "done"}
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"GET /v1/backfills/r1?wait=50 HTTP/1.1\r\n")
    assert body == b""


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (json_answer("409 Conflict", {"error": "a backfill of route(s) a is running"}), 409,
     "a backfill of route(s) a is running"),
    (answer("401 Unauthorized", b"not json", "Content-Length: 8"), 401, "Unauthorized"),
    (answer("502 Bad Gateway", b""), 502, "Bad Gateway"),
    (answer("308 Permanent Redirect", b"", "Location: https://x/", "Content-Length: 0"), 308,
     "Permanent Redirect"),
])
def test_a_refusal_carries_the_services_reason(raw: bytes, status: int, reason: str) -> None:
    with serving(raw) as server, pytest.raises(submit.Refused) as refused:
        submit.call("POST", f"http://127.0.0.1:{server.port}/v1/backfills", TOKEN, {})
    assert refused.value.status == status
    assert str(refused.value) == f"{status} {reason}"


def test_the_command_says_what_went_wrong_when_the_answer_is_cut(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("S3FERRY_INTAKE_TOKEN", TOKEN)
    with serving(answer("202 Accepted", b'{"id"', "Content-Length: 40")) as server:
        args = submit_args(f"http://127.0.0.1:{server.port}")
        assert submit.submit_backfill(args) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "IncompleteRead" in err and TOKEN not in err


def test_a_token_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    with serving(json_answer("200 OK", {})) as server, pytest.raises(ValueError,
                                                                   match="line break"):
        submit.call("GET", f"http://127.0.0.1:{server.port}/v1/backfills",
                    "t0ken\r\nX-Injected: 1")
    assert server.requests == []


def test_an_unreachable_service_is_exit_code_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("S3FERRY_INTAKE_TOKEN", TOKEN)
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert submit.submit_backfill(submit_args(f"http://127.0.0.1:{port}")) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_with_a_proxy_configured_the_call_goes_through_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(json_answer("200 OK", {"state": "done"})) as proxy:
        # urlopen's shared opener, once built without a proxy, keeps none: not used here
        urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/earlier", timeout=10).close()
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("no_proxy", "")
        got = submit.call("GET", "http://intake.internal:9410/v1/backfills/r1", TOKEN)
    assert got == {"state": "done"}
    _, request = proxy.requests
    assert request.startswith(b"GET http://intake.internal:9410/v1/backfills/r1 HTTP/1.1")
    assert f"Bearer {TOKEN}".encode() in request


def test_the_command_imports_no_botocore() -> None:
    """``s3ferry backfill --server`` only sends a request: it loads none of the backfill's
    own machinery (botocore alone takes about 0.6 s to import)."""
    done = {"id": "r1", "state": "done", "summary": {"enqueued": {"jobs": {"copy": 1}}}}
    with serving(json_answer("201 Created", done)) as server:
        code = ("import sys; from s3ferry.cli import main; "
                f"code = main(['backfill', '--server', 'http://127.0.0.1:{server.port}']); "
                "heavy = [m for m in ('botocore', 'aiobotocore', 'aiohttp', 'pydantic', "
                "'common.settings') if m in sys.modules]; print(code, heavy)")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True,
                             env={**os.environ, "S3FERRY_INTAKE_TOKEN": TOKEN})
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert len(server.requests) == 1


def submit_args(server: str) -> argparse.Namespace:
    return backfill_parser().parse_args(["--server", server])
