"""``s3ferry worker``: wire settings, clients, metrics and the consumer; handle signals."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Sequence

from common import heap
from common.clients import ClientPool
from common.errors import ConfigError
from common.health import Health
from common.limits import MIB
from common.logs import get_logger, scrub_text
from common.metrics import WorkerMetrics, start_process
from common.retry import RetryPolicy
from common.settings import Settings, WorkerSettings, load_settings
from worker.budget import ByteBudget
from worker.consumer import Consumer
from worker.planner import Limits
from worker.replicate import Replicator
from worker.summary import Summary
from worker.transfer import Transfer
from worker.wire import WireClients

log = get_logger(__name__)


def limits_from(settings: Settings, budget: ByteBudget) -> Limits:
    w = settings.worker
    return Limits(part_size=w.part_size, part_budget=budget.units * budget.unit_bytes,
                  multipart_threshold=w.multipart_threshold,
                  server_copy_threshold=w.server_copy_threshold,
                  server_part_size=w.server_part_size)


def copy_budget_from(w: WorkerSettings) -> ByteBudget | None:
    """The bytes the store may copy server-side for this worker at once, in MiB units."""
    if not w.server_copy_budget:
        return None
    return ByteBudget(units=w.server_copy_budget // MIB, unit_bytes=MIB)


def copy_endpoints(settings: Settings) -> list[str]:
    """The endpoints this worker's jobs will name: those of the routes, or, when the worker's
    file has no routes, every endpoint but the queue's own."""
    if settings.routes:
        return settings.route_endpoints()
    return sorted(n for n in settings.endpoints if n != settings.queue_endpoint)


async def warm_up(s3: WireClients, names: Sequence[str]) -> None:
    """Open the S3 clients before the first receive. Opening one takes 25-60 ms of the event
    loop (service model, TLS context, credentials); paid at the first job, it delayed that
    job and every receive behind it. An endpoint that cannot open now is left to its first
    job, which then fails the way it always did (a dead letter with the reason)."""
    for name in names:
        try:
            await s3.get(name)
        except Exception as exc:
            log.warning("endpoint_not_opened", endpoint=name, error=scrub_text(str(exc)))


async def run_worker(settings: Settings, *, metrics: WorkerMetrics | None = None,
                     consumer_ready: asyncio.Future[Consumer] | None = None,
                     replicator_cls: type[Replicator] = Replicator,
                     on_started: Callable[[], object] | None = None,
                     health: Health | None = None) -> Summary:
    """Run until SIGTERM/SIGINT (or idle, with ``exit_when_idle``); return what was done.

    ``on_started`` runs once the clients are open, before the first receive (the command
    line freezes the start-up heap there: :mod:`common.heap`)."""
    if not settings.queue_url or not settings.dlq_url:
        raise ConfigError("S3FERRY_QUEUE_URL and S3FERRY_DLQ_URL must be set")
    metrics = metrics or WorkerMetrics()
    health = health or Health()
    beating = asyncio.create_task(health.keep_beating())
    try:
        return await _run(settings, metrics, health, consumer_ready, replicator_cls, on_started)
    finally:
        beating.cancel()


async def _run(settings: Settings, metrics: WorkerMetrics, health: Health,
               consumer_ready: asyncio.Future[Consumer] | None,
               replicator_cls: type[Replicator],
               on_started: Callable[[], object] | None) -> Summary:
    w = settings.worker
    retry = RetryPolicy(attempts=w.retry_attempts, max_seconds=w.retry_max_seconds)
    pool = w.max_parts + w.max_jobs
    async with (ClientPool(settings.endpoints, pool=pool) as clients,
                WireClients(clients, pool=pool) as s3):
        sqs = await clients.get(settings.queue_endpoint, "sqs")
        await warm_up(s3, copy_endpoints(settings))
        budget = ByteBudget(units=w.max_parts, unit_bytes=w.part_size)
        transfer = Transfer(budget=budget, metrics=metrics, retry=retry,
                            request_timeout=w.request_timeout,
                            copy_budget=copy_budget_from(w),
                            upload_quiet=w.upload_quiet_seconds)
        replicator = replicator_cls(clients=s3, transfer=transfer,
                                limits=limits_from(settings, budget), metrics=metrics, retry=retry)
        consumer = Consumer(sqs=sqs, queue_url=settings.queue_url, dlq_url=settings.dlq_url,
                            replicator=replicator, settings=w, metrics=metrics, health=health)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        if consumer_ready is not None:
            consumer_ready.set_result(consumer)
        if on_started is not None:
            on_started()
        try:
            log.info("worker_started", queue_endpoint=settings.queue_endpoint,
                     max_jobs=w.max_jobs, max_parts=w.max_parts, part_size=w.part_size,
                     server_copy_budget=w.server_copy_budget,
                     receivers=consumer.receivers)
            summary = await consumer.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("worker_stopped", **summary.as_dict())
    return summary


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="s3ferry worker")
    parser.description = ("Consume copy jobs from SQS and copy objects between endpoints, "
                          "verified by checksum. Settings come from S3FERRY_* variables and "
                          "the TOML file named by --config / S3FERRY_CONFIG.")
    parser.add_argument("--config", help="TOML file naming endpoints (S3FERRY_CONFIG)")
    parser.add_argument("--queue-url", help="job queue URL (S3FERRY_QUEUE_URL)")
    parser.add_argument("--dlq-url", help="dead-letter queue URL (S3FERRY_DLQ_URL)")
    parser.add_argument("--metrics-port", type=int,
                        help="port for /metrics; 0 picks a free one (S3FERRY_METRICS_PORT)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit 0 once the queue is empty and nothing is in flight")
    parser.add_argument("--summary-json", help="write the final summary to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {}
    if args.queue_url:
        overrides["queue_url"] = args.queue_url
    if args.dlq_url:
        overrides["dlq_url"] = args.dlq_url
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    try:
        settings = load_settings(args.config, **overrides)
        if args.exit_when_idle:
            settings = settings.model_copy(update={"worker": settings.worker.model_copy(
                update={"exit_when_idle": True})})
    except ConfigError as exc:
        print(f"s3ferry worker: {exc}", file=sys.stderr)
        return 2
    metrics = WorkerMetrics()
    health = Health()
    start_process(settings, metrics.registry, serve=not args.no_metrics, health=health)
    try:
        summary = asyncio.run(run_worker(settings, metrics=metrics, on_started=heap.freeze,
                                         health=health))
    except ConfigError as exc:
        print(f"s3ferry worker: {exc}", file=sys.stderr)
        return 2
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(summary.as_dict(), fh)
    return 0
