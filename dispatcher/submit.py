"""``s3ferry backfill --server URL``: ask a running ``s3ferry serve`` to run the backfill.

The request goes in, then the run is followed with long polls (``?wait=``, each at most a
minute, so proxies with idle timeouts do not cut it) until it ends, and its summary is printed
as ``s3ferry backfill`` prints its own. Exit codes as there: 0 done, 1 failed or unreachable,
2 refused (bad request, bad token, a backfill of the same route already running). The calls
are ``urllib.request``'s: proxies (``HTTPS_PROXY``, ``no_proxy``) and TLS as it handles them.
This module imports no botocore: the command starts in a fraction of the in-process
backfill's time.

The token comes from the environment only (``S3FERRY_INTAKE_TOKEN``, or the service's own
``S3FERRY_DISPATCHER__INTAKE_TOKEN``): a command line is visible to every user of the host.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from dispatcher.args import backfill_request

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
    if "\r" in token or "\n" in token:
        raise ValueError("the token holds a line break")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        "Accept": "application/json"})
    opener = urllib.request.build_opener()  # reads the proxy variables now (urlopen's
    try:                                    # shared opener keeps those of its first use)
        with opener.open(request, timeout=timeout) as answer:
            out: dict[str, Any] = json.loads(answer.read() or b"{}")
            return out
    except urllib.error.HTTPError as exc:
        raise Refused(exc.code, _reason(exc.read(), str(exc.reason))) from None


def _reason(payload: bytes, reason: str) -> str:
    """The service's ``error``, else the status line's reason phrase."""
    try:
        return str(json.loads(payload or b"{}").get("error") or reason)
    except (ValueError, AttributeError):
        return reason


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
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError: an OSError
        reason = getattr(exc, "reason", None) or exc
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
