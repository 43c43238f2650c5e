"""Every Prometheus metric s3ferry exports, defined once, in base units.

Labels stay low-cardinality: route, result, reason, operation, code, strategy. Never keys,
buckets' prefixes or upload ids.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from common.health import Health
from common.logs import configure_logging, get_logger
from common.settings import Settings

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_PART_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.bytes_copied = Counter(
            "s3ferry_bytes_copied_total", "Bytes written to destinations.",
            ["route"], registry=r)
        self.objects = Counter(
            "s3ferry_objects_total",
            "Jobs finished, by result (copied, skipped, deleted, failed, vanished, archived, "
            "retried).", ["route", "result"], registry=r)
        self.verified = Counter(
            "s3ferry_verified_total", "Copies verified, by method.",
            ["method"], registry=r)
        self.copy_duration = Histogram(
            "s3ferry_copy_duration_seconds", "Wall time of one object copy.",
            ["strategy"], buckets=_DURATION_BUCKETS, registry=r)
        self.part_duration = Histogram(
            "s3ferry_part_duration_seconds", "Wall time of one part (read and write).",
            ["operation"], buckets=_PART_BUCKETS, registry=r)
        self.jobs_in_flight = Gauge(
            "s3ferry_jobs_in_flight", "Jobs being worked on now.", registry=r)
        self.server_copy_bytes = Gauge(
            "s3ferry_server_copy_bytes", "Bytes the store is copying server-side for this "
            "worker now (CopyObject objects, UploadPartCopy parts); at most "
            "server_copy_budget when one is set.", registry=r)
        self.retries = Counter(
            "s3ferry_retries_total", "In-process retries, by reason.", ["reason"], registry=r)
        self.s3_requests = Counter(
            "s3ferry_s3_requests_total", "S3 requests made (what S3 bills), by operation and "
            "side (source or destination).", ["operation", "side"], registry=r)
        self.s3_errors = Counter(
            "s3ferry_s3_errors_total", "Errors answered by S3, by operation and code.",
            ["operation", "code"], registry=r)
        self.dead_letters = Counter(
            "s3ferry_dead_letters_total", "Messages sent to the dead-letter queue, by reason.",
            ["reason"], registry=r)
        self.messages_received = Counter(
            "s3ferry_messages_received_total", "SQS messages received.", registry=r)
        self.leases_lost = Counter(
            "s3ferry_leases_lost_total", "Messages given up because their lease could not be "
            "renewed in time (their jobs were stopped; SQS hands them out again).", registry=r)
        self.jobs_held = Gauge(
            "s3ferry_jobs_held", "Jobs this worker holds: received (a bundle's counted once "
            "read) and not finished. Above max_jobs while the rest of a bundle waits.",
            registry=r)
        self.jobs_requeued = Counter(
            "s3ferry_jobs_requeued_total",
            "Jobs of a bundle put back onto the queue for another attempt.", registry=r)
        self.uploads_resumed = Counter(
            "s3ferry_uploads_resumed_total", "Multipart uploads continued after a crash.",
            registry=r)
        self.parts_reused = Counter(
            "s3ferry_parts_reused_total", "Parts found already uploaded on resume.",
            registry=r)



_LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21_600, 86_400)


@dataclass
class DispatcherMetrics:
    """What ``s3ferry backfill`` and ``s3ferry events`` count."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.objects_listed = Counter(
            "s3ferry_dispatcher_objects_listed_total", "Objects listed, by side.",
            ["side"], registry=r)
        self.jobs_enqueued = Counter(
            "s3ferry_dispatcher_jobs_enqueued_total", "Jobs sent to the job queue, by kind.",
            ["route", "kind"], registry=r)
        self.bytes_enqueued = Counter(
            "s3ferry_dispatcher_bytes_enqueued_total", "Source bytes of the copy jobs sent.",
            ["route"], registry=r)
        self.messages_sent = Counter(
            "s3ferry_dispatcher_messages_sent_total",
            "Messages sent to the job queue (a bundle of small jobs is one).", registry=r)
        self.send_failures = Counter(
            "s3ferry_dispatcher_send_failures_total",
            "SendMessageBatch entries that failed (retried or given up), by code.",
            ["code"], registry=r)
        self.events_received = Counter(
            "s3ferry_dispatcher_events_received_total",
            "S3 events received, by type (created, removed, test, ignored).", ["type"],
            registry=r)
        self.stale_events = Counter(
            "s3ferry_dispatcher_stale_events_total",
            "Events dropped because a newer one for the same key was already applied.",
            registry=r)
        self.event_lag = Histogram(
            "s3ferry_dispatcher_event_lag_seconds", "From the event's time to its jobs sent.",
            buckets=_LAG_BUCKETS, registry=r)
        self.dead_letters = Counter(
            "s3ferry_dispatcher_dead_letters_total",
            "Event messages sent to the dead-letter queue, by reason.", ["reason"], registry=r)

def start_process(settings: Settings, registry: CollectorRegistry, *, serve: bool,
                  health: Health | None = None) -> None:
    """What every long-running s3ferry process does first: logging, then ``/metrics`` (and
    ``/healthz``, ``/readyz`` when it has a :class:`~common.health.Health`)."""
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    if serve:
        port = serve_metrics(registry, host=settings.metrics_host, port=settings.metrics_port,
                             health=health)
        get_logger(__name__).info("metrics_serving", port=port, path="/metrics")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""


def serve_metrics(registry: CollectorRegistry, *, host: str, port: int,
                  health: Health | None = None) -> int:
    """Serve ``/metrics`` (and the health probes) from a thread; port 0 picks a free port.
    Returns the port actually bound."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if health is None or path not in ("/healthz", "/readyz"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        ok, why = health.live() if path == "/healthz" else health.readiness()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{why}\n".encode()]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_address[1])
