"""``s3ferry serve``: the dispatcher as a service that runs backfills on request.

A deployed fleet's workers are already running; a backfill started as a new process first
spends about 0.6 s importing botocore and opening clients, which is most of what a small
backfill takes. The service keeps its modules loaded and its clients open, so a request starts
listing at once. It is also where jobs will come in from outside (the pull mode's intake).

The API (JSON; every ``/v1`` request needs ``Authorization: Bearer <token>``)::

    POST /v1/backfills            {"routes": ["name", ...] | null, "compare": "size",
                                   "delete": false, "dry_run": false, "shards": 1, "sample": 10}
                                  202 {"id": ..., "state": "running", ...} and Location;
                                  400 a bad request; 401 no or a wrong token;
                                  409 a backfill of one of these routes is running
    GET  /v1/backfills/{id}?wait=S  the run: "running" (with progress), "done" (with the
                                  summary ``s3ferry backfill`` prints), "failed" or
                                  "interrupted" (with the error); waits up to S s (at most 60)
                                  for a running one to end
    GET  /v1/backfills            the latest runs, newest first
    GET  /healthz                 200 once the clients are open (no token)

The token is compared in constant time and never logged; nor is any request header.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common import heap
from common.clients import ClientPool
from common.errors import ConfigError, FerryError
from common.logs import get_logger
from common.metrics import DispatcherMetrics, start_process
from common.settings import Settings
from dispatcher.args import common_options
from dispatcher.backfill import BackfillOptions, Progress
from dispatcher.cli import load_cli_settings, open_clients, run_backfill, select_routes
from dispatcher.diff import Mode, OrderError

log = get_logger(__name__)

MAX_WAIT_SECONDS = 60.0
KEPT_RUNS = 100  # finished runs remembered for GET, oldest forgotten first
PROGRESS_LOG_SECONDS = 30.0
MIN_TOKEN_CHARS = 16
MAX_BODY_BYTES = 64 * 1024


class BackfillRequest(BaseModel):
    """What a caller may ask for; the service's own config decides everything else."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    routes: list[str] | None = Field(default=None, min_length=1)
    compare: Mode = Mode.SIZE
    delete: bool = False
    dry_run: bool = False
    shards: int = Field(default=1, ge=1, le=64)
    sample: int = Field(default=10, ge=0, le=1000)


@dataclass(kw_only=True)
class Run:
    id: str
    request: BackfillRequest
    routes: list[str]
    created: float = field(default_factory=time.time)
    progress: Progress = field(default_factory=Progress)
    state: str = "running"  # running, done, failed, interrupted
    summary: dict[str, Any] | None = None
    error: str | None = None
    finished: float | None = None
    task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "state": self.state, "routes": self.routes,
                               "request": self.request.model_dump(mode="json"),
                               "created": round(self.created, 3)}
        if self.finished is not None:
            out["finished"] = round(self.finished, 3)
        if self.state == "running":
            out["progress"] = self.progress.as_dict()
        if self.summary is not None:
            out["summary"] = self.summary
        if self.error is not None:
            out["error"] = self.error
        return out


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class Intake:
    """The request handlers, over one settings object and one open client pool."""

    def __init__(self, settings: Settings, *, clients: ClientPool, metrics: DispatcherMetrics,
                 token: str) -> None:
        self._settings = settings
        self._clients = clients
        self._metrics = metrics
        self._token = token.encode()
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._health)
        app.router.add_post("/v1/backfills", self._create)
        app.router.add_get("/v1/backfills", self._list)
        app.router.add_get("/v1/backfills/{id}", self._get)
        return app

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if (request.path == "/v1" or request.path.startswith("/v1/")) and not self._authorised(
                request.headers.get("Authorization", "")):
            log.warning("intake_refused", method=request.method, path=request.path,
                        remote=request.remote, reason="bad_token")
            response: web.StreamResponse = _error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="s3ferry"'
            return response
        return await handler(request)

    def _authorised(self, header: str) -> bool:
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self._token)

    async def _health(self, request: web.Request) -> web.Response:
        running = sum(1 for r in self._runs.values() if r.state == "running")
        return web.json_response({"ok": True, "running": running})

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}  # none: defaults
            wanted = BackfillRequest.model_validate(body)
        except ValueError as exc:  # bad JSON, or ValidationError (a ValueError)
            return _error(400, _explain(exc))
        try:
            routes = select_routes(self._settings, wanted.routes)
            if not wanted.dry_run and not self._settings.queue_url:
                raise ConfigError("the service has no job queue (S3FERRY_QUEUE_URL): only "
                                  "dry runs are possible")
        except ConfigError as exc:
            return _error(400, str(exc))
        names = [r.name for r in routes]
        busy = next((r for r in self._runs.values()
                     if r.state == "running" and set(r.routes) & set(names)), None)
        if busy is not None:
            return _error(409, f"a backfill of route(s) "
                               f"{', '.join(sorted(set(busy.routes) & set(names)))} is running",
                          running=busy.id)
        run = Run(id=uuid.uuid4().hex, request=wanted, routes=names)
        self._remember(run)
        run.task = asyncio.create_task(self._run(run, routes), name=f"backfill-{run.id}")
        log.info("intake_backfill_accepted", id=run.id, routes=names,
                 **wanted.model_dump(mode="json", exclude={"routes"}))
        return web.json_response(run.as_dict(), status=202,
                                 headers={"Location": f"/v1/backfills/{run.id}"})

    async def _get(self, request: web.Request) -> web.Response:
        run = self._runs.get(request.match_info["id"])
        if run is None:
            return _error(404, "no such backfill (or forgotten: the service keeps the latest "
                               f"{KEPT_RUNS})")
        try:
            wait = min(max(float(request.query.get("wait", "0")), 0.0), MAX_WAIT_SECONDS)
        except ValueError:
            return _error(400, "wait must be a number of seconds")
        if wait and run.task is not None and not run.task.done():
            await asyncio.wait({run.task}, timeout=wait)
        return web.json_response(run.as_dict())

    async def _list(self, request: web.Request) -> web.Response:
        runs = [r.as_dict() for r in reversed(self._runs.values())]
        return web.json_response({"backfills": runs})

    def _remember(self, run: Run) -> None:
        self._runs[run.id] = run
        finished = [k for k, r in self._runs.items() if r.state != "running"]
        for key in finished[:max(0, len(self._runs) - KEPT_RUNS)]:
            del self._runs[key]

    async def _run(self, run: Run, routes: list[Any]) -> None:
        wanted = run.request
        options = BackfillOptions(mode=wanted.compare, delete=wanted.delete,
                                  shards=wanted.shards)
        try:
            run.summary = await run_backfill(
                self._settings, routes, options, dry_run=wanted.dry_run, metrics=self._metrics,
                progress_seconds=PROGRESS_LOG_SECONDS, sample=wanted.sample,
                clients=self._clients, progress=run.progress)
            run.state = "done"
        except asyncio.CancelledError:
            run.state, run.error = "interrupted", "the service stopped during the backfill"
            raise
        except (ConfigError, FerryError, OrderError) as exc:
            run.state, run.error = "failed", str(exc)
        except Exception as exc:  # a bug or an unclassified failure: keep serving
            log.exception("intake_backfill_crashed", id=run.id)
            run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            run.finished = time.time()
            log.info("intake_backfill_ended", id=run.id, state=run.state, error=run.error)

    async def close(self) -> None:
        """Cancel running backfills (they are safe to run again) and wait for them."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _explain(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                         for e in exc.errors())
    return f"the body is not JSON: {exc}"


def intake_token(settings: Settings) -> str:
    secret = settings.dispatcher.intake_token
    token = secret.get_secret_value() if secret is not None else ""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"s3ferry serve needs a bearer token of at least {MIN_TOKEN_CHARS} "
                          "characters in S3FERRY_DISPATCHER__INTAKE_TOKEN (or "
                          "[dispatcher] intake_token)")
    return token


async def serve(settings: Settings, *, metrics: DispatcherMetrics | None = None,
                ready: asyncio.Future[int] | None = None,
                stop: asyncio.Event | None = None,
                on_started: Callable[[], object] | None = None) -> None:
    """Serve the intake API until SIGTERM/SIGINT (or ``stop``); ``ready`` gets the port.
    ``on_started`` runs once the clients are open and the port is bound (the command line
    freezes the start-up heap there: :mod:`common.heap`)."""
    token = intake_token(settings)
    if not settings.routes:
        raise ConfigError("no routes configured: add [routes.NAME] tables to the config file")
    metrics = metrics or DispatcherMetrics()
    stop = stop or asyncio.Event()
    d = settings.dispatcher
    async with ClientPool(settings.endpoints,
                          pool=BackfillOptions().head_concurrency + 8) as clients:
        await open_clients(clients, settings)
        intake = Intake(settings, clients=clients, metrics=metrics, token=token)
        runner = web.AppRunner(intake.app(), access_log=None, handle_signals=False)
        await runner.setup()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            site = web.TCPSite(runner, d.intake_host, d.intake_port)
            await site.start()
            port = int(runner.addresses[0][1])  # the one bound, when intake_port is 0
            if on_started is not None:
                on_started()
            log.info("serve_started", host=d.intake_host, port=port,
                     routes=sorted(settings.routes), queue=bool(settings.queue_url))
            if ready is not None and not ready.done():
                ready.set_result(port)
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await runner.cleanup()  # no new requests
            await intake.close()
    log.info("serve_stopped")


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ferry serve",
        description="Run the dispatcher as a service: backfills start on request through an "
                    "authenticated HTTP API (s3ferry backfill --server URL), with modules "
                    "loaded and clients open. Needs S3FERRY_DISPATCHER__INTAKE_TOKEN.")
    common_options(parser)
    parser.add_argument("--host", help="address to listen on (default: [dispatcher] "
                                       "intake_host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: [dispatcher] intake_port, "
                                                 "9410; 0 picks a free one)")
    parser.add_argument("--metrics-port", type=int,
                        help="port for /metrics; 0 picks a free one (S3FERRY_METRICS_PORT)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    return parser


def serve_main(argv: Sequence[str] | None = None) -> int:
    args = serve_parser().parse_args(argv)
    try:
        extra: dict[str, Any] = {}
        if args.metrics_port is not None:
            extra["metrics_port"] = args.metrics_port
        settings = load_cli_settings(args, **extra)
        intake = {k: v for k, v in (("intake_host", args.host), ("intake_port", args.port))
                  if v is not None}
        if intake:
            settings = settings.model_copy(update={
                "dispatcher": settings.dispatcher.model_copy(update=intake)})
        intake_token(settings)
    except ConfigError as exc:
        print(f"s3ferry serve: {exc}", file=sys.stderr)
        return 2
    metrics = DispatcherMetrics()
    start_process(settings, metrics.registry, serve=not args.no_metrics)
    try:
        asyncio.run(serve(settings, metrics=metrics, on_started=heap.freeze))
    except ConfigError as exc:
        print(f"s3ferry serve: {exc}", file=sys.stderr)
        return 2
    return 0
