"""Entry points of ``s3ferry backfill``, ``s3ferry events`` and ``s3ferry status``.

Settings are read once here (``--config`` / ``S3FERRY_CONFIG`` and ``S3FERRY_*``) and passed
down; each ``main`` returns the process exit code: 0 done, 1 failed while running, 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from common import heap
from common.clients import ClientPool
from common.errors import ConfigError, FerryError
from common.logs import configure_logging, get_logger
from common.metrics import DispatcherMetrics, start_process
from common.routes import Route
from common.settings import Settings, load_settings
from dispatcher.args import common_options
from dispatcher.backfill import Backfill, BackfillOptions, Progress, reporting
from dispatcher.diff import Mode, OrderError
from dispatcher.listener import Listener, ListenerSettings, ListenerSummary
from dispatcher.sender import DryRun, JobSender

log = get_logger(__name__)


def select_routes(settings: Settings, names: Sequence[str] | None) -> list[Route]:
    if not settings.routes:
        raise ConfigError("no routes configured: add [routes.NAME] tables to the config file")
    if not names:
        return list(settings.routes.values())
    unknown = [n for n in names if n not in settings.routes]
    if unknown:
        raise ConfigError(f"unknown route(s) {', '.join(unknown)} (configured: "
                          f"{', '.join(sorted(settings.routes))})")
    return [settings.routes[n] for n in names]


def load_cli_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "queue_url", None):
        overrides["queue_url"] = args.queue_url
    return load_settings(args.config, **overrides)


# -- backfill ------------------------------------------------------------------------------

async def open_clients(clients: ClientPool, settings: Settings) -> None:
    """Open every client a backfill will need now, not on the first request."""
    for name in settings.route_endpoints():
        await clients.get(name)
    if settings.queue_url:
        await clients.get(settings.queue_endpoint, "sqs")


async def run_backfill(settings: Settings, routes: list[Route], options: BackfillOptions, *,
                       dry_run: bool = False, metrics: DispatcherMetrics | None = None,
                       progress_seconds: float = 5.0, tty: bool = False,
                       sample: int = 10, clients: ClientPool | None = None,
                       progress: Progress | None = None,
                       on_started: Callable[[], object] | None = None) -> dict[str, Any]:
    """Run a backfill; return the summary printed by the CLI.

    ``clients``: an open pool to use (``s3ferry serve`` keeps one for all its backfills);
    without it one is opened here, every client of the routes at once, and closed at the
    end. ``on_started`` runs once the clients are open, before the first listing (the
    command line freezes the start-up heap there: :mod:`common.heap`).
    """
    metrics = metrics or DispatcherMetrics()
    if not dry_run and not settings.queue_url:
        raise ConfigError("S3FERRY_QUEUE_URL (or --queue-url) must be set, or use --dry-run")
    started = time.monotonic()
    progress = progress or Progress()
    async with AsyncExitStack() as stack:
        if clients is None:
            clients = await stack.enter_async_context(
                ClientPool(settings.endpoints, pool=options.head_concurrency + 8))
            await open_clients(clients, settings)
        if on_started is not None:
            on_started()
        sink: DryRun | JobSender
        if dry_run:
            sink = DryRun(sample_size=sample)
        else:
            sqs = await clients.get(settings.queue_endpoint, "sqs")
            sink = JobSender(sqs, settings.queue_url, metrics=metrics, sample_size=sample,
                             bundling=settings.dispatcher, streaming=True)
        job = Backfill(clients=clients, sink=sink, options=options, metrics=metrics,
                       progress=progress)

        def sent() -> dict[str, Any]:
            return {"jobs": dict(sink.sent.jobs), "bytes": sink.sent.bytes}

        async with reporting(progress, sent, interval=progress_seconds,
                             tty=_tty_line if tty else None):
            await job.run(routes)
    if tty:
        sys.stderr.write("\n")
    summary = {"dry_run": dry_run, "routes": [r.name for r in routes],
               "compare": options.mode.value, "delete": options.delete,
               "seconds": round(time.monotonic() - started, 3), **progress.as_dict(),
               "enqueued" if not dry_run else "would_enqueue": {
                   "jobs": dict(sink.sent.jobs), "bytes": sink.sent.bytes},
               "sample": sink.sent.sample}
    log.info("backfill_finished", **{k: v for k, v in summary.items() if k != "sample"})
    return summary


async def _tty_line(text: str) -> None:
    sys.stderr.write("\r\x1b[2K" + text)
    sys.stderr.flush()


def backfill_local(args: argparse.Namespace) -> int:
    """Run the backfill in this process (no ``--server``)."""
    try:
        settings = load_cli_settings(args)
        routes = select_routes(settings, args.routes)
        if args.shards < 1:
            raise ConfigError("--shards must be at least 1")
    except ConfigError as exc:
        print(f"s3ferry backfill: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    options = BackfillOptions(mode=Mode(args.compare), delete=args.delete, shards=args.shards)
    try:
        summary = asyncio.run(run_backfill(
            settings, routes, options, dry_run=args.dry_run, sample=args.sample,
            progress_seconds=args.progress_seconds, tty=sys.stderr.isatty(),
            on_started=heap.freeze))
    except ConfigError as exc:
        print(f"s3ferry backfill: {exc}", file=sys.stderr)
        return 2
    except (FerryError, OrderError) as exc:
        print(f"s3ferry backfill: {exc}", file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def env(name: str) -> str | None:
    return os.environ.get(name) or None


# -- events --------------------------------------------------------------------------------

def events_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ferry events",
        description="Consume S3 event notifications (S3->SQS, SNS->SQS or EventBridge->SQS) "
                    "and enqueue copy jobs (and delete jobs for routes with sync_deletes) for "
                    "every destination of the matching routes. Stale events (older sequencer "
                    "than one applied for the key) are dropped; unparseable ones go to the "
                    "dead-letter queue with a reason.")
    common_options(parser)
    parser.add_argument("--events-queue-url", default=env("S3FERRY_EVENTS_QUEUE_URL"),
                        help="queue receiving the S3 events (S3FERRY_EVENTS_QUEUE_URL)")
    parser.add_argument("--events-dlq-url", default=env("S3FERRY_EVENTS_DLQ_URL"),
                        help="dead-letter queue for unparseable events "
                             "(S3FERRY_EVENTS_DLQ_URL; default: S3FERRY_DLQ_URL)")
    parser.add_argument("--route", action="append", dest="routes", metavar="NAME",
                        help="only this route (repeatable; default: every route)")
    parser.add_argument("--source-endpoint", action="append", metavar="NAME",
                        help="events come from this endpoint (when bucket names repeat across "
                             "endpoints; repeatable)")
    parser.add_argument("--metrics-port", type=int,
                        help="port for /metrics; 0 picks a free one (S3FERRY_METRICS_PORT)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit once the events queue has been empty for two polls")
    parser.add_argument("--wait-seconds", type=int, default=20,
                        help="long-poll wait (0-20, default 20)")
    return parser


def listener_settings(args: argparse.Namespace, settings: Settings) -> ListenerSettings:
    dlq = args.events_dlq_url or settings.dlq_url
    if not args.events_queue_url or not dlq or not settings.queue_url:
        raise ConfigError("--events-queue-url, a dead-letter queue (--events-dlq-url or "
                          "S3FERRY_DLQ_URL) and the job queue (S3FERRY_QUEUE_URL) are needed")
    return ListenerSettings(
        events_queue_url=args.events_queue_url, dlq_url=dlq, job_queue_url=settings.queue_url,
        wait_time_seconds=max(0, min(20, args.wait_seconds)),
        exit_when_idle=args.exit_when_idle,
        source_endpoints=frozenset(args.source_endpoint) if args.source_endpoint else None,
        bundling=settings.dispatcher)


async def run_listener(settings: Settings, routes: list[Route], options: ListenerSettings, *,
                       metrics: DispatcherMetrics | None = None) -> ListenerSummary:
    """Run until SIGTERM/SIGINT (or idle, with ``exit_when_idle``)."""
    metrics = metrics or DispatcherMetrics()
    async with ClientPool(settings.endpoints) as clients:
        sqs = await clients.get(settings.queue_endpoint, "sqs")
        listener = Listener(sqs=sqs, clients=clients, routes=routes, settings=options,
                            metrics=metrics)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, listener.stop)
        try:
            log.info("events_started", routes=[r.name for r in routes])
            summary = await listener.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("events_stopped", **summary.as_dict())
    return summary


def events_main(argv: Sequence[str] | None = None) -> int:
    args = events_parser().parse_args(argv)
    try:
        extra = {"metrics_port": args.metrics_port} if args.metrics_port is not None else {}
        settings = load_cli_settings(args, **extra)
        routes = select_routes(settings, args.routes)
        options = listener_settings(args, settings)
    except ConfigError as exc:
        print(f"s3ferry events: {exc}", file=sys.stderr)
        return 2
    metrics = DispatcherMetrics()
    start_process(settings, metrics.registry, serve=not args.no_metrics)
    summary = asyncio.run(run_listener(settings, routes, options, metrics=metrics))
    json.dump(summary.as_dict(), sys.stdout)
    sys.stdout.write("\n")
    return 0


# -- status --------------------------------------------------------------------------------

def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3ferry status",
        description="Show the job queue's depth in messages (a bundle carries many small jobs), "
                    "messages in flight and the dead-letter count.")
    common_options(parser)
    parser.add_argument("--dlq-url", help="dead-letter queue URL (S3FERRY_DLQ_URL)")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="refresh every SECONDS and show the drain rate")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


async def queue_status(sqs: Any, queue_url: str, dlq_url: str) -> dict[str, int]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    main_q = (await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names))[
        "Attributes"]
    out = {"queued": int(main_q.get(names[0], 0)), "in_flight": int(main_q.get(names[1], 0)),
           "delayed": int(main_q.get(names[2], 0))}
    if dlq_url:
        dead = (await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=names[:2]))[
            "Attributes"]
        out["dead_letters"] = int(dead.get(names[0], 0)) + int(dead.get(names[1], 0))
    return out


async def _status_loop(settings: Settings, *, watch: float | None, as_json: bool) -> None:
    async with ClientPool(settings.endpoints) as clients:
        sqs = await clients.get(settings.queue_endpoint, "sqs")
        previous: tuple[float, int] | None = None
        while True:
            state: dict[str, Any] = await queue_status(sqs, settings.queue_url,
                                                       settings.dlq_url)
            now, pending = time.monotonic(), state["queued"] + state["in_flight"]
            if previous is not None:
                state["messages_per_second"] = round(
                    max(0, previous[1] - pending) / max(now - previous[0], 1e-9), 1)
            previous = (now, pending)
            print(json.dumps(state) if as_json else "  ".join(
                f"{k.replace('_', ' ')}: {v}" for k, v in state.items()), flush=True)
            if watch is None:
                return
            await asyncio.sleep(watch)


def status_main(argv: Sequence[str] | None = None) -> int:
    args = status_parser().parse_args(argv)
    try:
        settings = load_cli_settings(args, **({"dlq_url": args.dlq_url} if args.dlq_url else {}))
        if not settings.queue_url:
            raise ConfigError("S3FERRY_QUEUE_URL (or --queue-url) must be set")
    except ConfigError as exc:
        print(f"s3ferry status: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    try:
        asyncio.run(_status_loop(settings, watch=args.watch, as_json=args.json))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        print(f"s3ferry status: {exc}", file=sys.stderr)
        return 1
    return 0
