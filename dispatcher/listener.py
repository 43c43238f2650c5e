"""The events queue consumer behind ``s3ferry events``: receive, plan, send, then acknowledge.

One receive batch (<= 10 messages) at a time: every event of the batch is planned in
sequencer order, all jobs are sent and flushed, and only then are the event messages deleted
and the sequencers recorded as applied. If sending fails, nothing is acknowledged: the
messages come back after their visibility timeout (duplicate jobs are harmless). Unparseable
messages go to the dead-letter queue with ``reason`` and ``error`` attributes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.errors import FerryError
from common.logs import get_logger, scrub_text
from common.metrics import DispatcherMetrics
from common.retry import RetryPolicy, retrying
from common.routes import Route
from common.s3errors import classify, error_code
from common.settings import DispatcherSettings
from dispatcher.events import (
    BadEvent,
    Kind,
    S3Event,
    SequencerBook,
    in_sequencer_order,
    matching_routes,
    parse,
    plan_event,
)
from dispatcher.sender import JobSender

log = get_logger(__name__)
# The jobs of one receive batch (10 events x destinations) go in bundles of at most this many,
# and the bundles name it: a worker then expects bundles this small, not the backfill's 100.
EVENT_BUNDLE_JOBS = 8


@dataclass(frozen=True, kw_only=True)
class ListenerSettings:
    events_queue_url: str
    dlq_url: str
    job_queue_url: str
    wait_time_seconds: int = 20
    visibility_timeout: int = 60
    exit_when_idle: bool = False
    idle_polls: int = 2
    source_endpoints: frozenset[str] | None = None
    bundling: DispatcherSettings = field(default_factory=DispatcherSettings)


@dataclass
class ListenerSummary:
    events: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"events": dict(self.events), "jobs": dict(self.jobs),
                "dropped": dict(self.dropped), "dead_letters": dict(self.dead_letters)}


class Listener:
    def __init__(self, *, sqs: Any, clients: Any, routes: list[Route],
                 settings: ListenerSettings, metrics: DispatcherMetrics,
                 book: SequencerBook | None = None,
                 send_policy: RetryPolicy | None = None) -> None:
        self._sqs = sqs
        self._clients = clients
        self._routes = routes
        self._settings = settings
        self._metrics = metrics
        self._book = book or SequencerBook()
        self._policy = RetryPolicy(attempts=5, max_seconds=30)
        self._send_policy = send_policy
        # one receive batch makes a few jobs: its bundles are small and say so
        self._bundling = settings.bundling.model_copy(update={"jobs_per_message": min(
            settings.bundling.jobs_per_message, EVENT_BUNDLE_JOBS)})
        self._stopping = asyncio.Event()
        self.summary = ListenerSummary()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> ListenerSummary:
        idle = 0
        while not self._stopping.is_set():
            messages = await self._receive()
            if not messages:
                idle += 1
                if self._settings.exit_when_idle and idle >= self._settings.idle_polls:
                    break
                continue
            idle = 0
            await self.handle_batch(messages)
        return self.summary

    async def _receive(self) -> list[dict[str, Any]]:
        s = self._settings
        try:
            answer = await self._sqs.receive_message(
                QueueUrl=s.events_queue_url, MaxNumberOfMessages=10,
                WaitTimeSeconds=s.wait_time_seconds, VisibilityTimeout=s.visibility_timeout)
        except Exception as exc:
            log.warning("events_receive_failed", error=scrub_text(str(exc)))
            await asyncio.sleep(1)
            return []
        messages: list[dict[str, Any]] = answer.get("Messages", [])
        return messages

    async def handle_batch(self, messages: list[dict[str, Any]]) -> None:
        """Plan, send and acknowledge one receive batch (see the module docstring)."""
        parsed: list[tuple[dict[str, Any], S3Event]] = []
        done: list[dict[str, Any]] = []
        for message in messages:
            try:
                events = parse(message.get("Body", ""))
            except BadEvent as exc:
                await self._dead_letter(message, exc.reason, str(exc))
                continue
            done.append(message)
            parsed.extend((message, e) for e in events)
        sender = JobSender(self._sqs, self._settings.job_queue_url, metrics=self._metrics,
                           policy=self._send_policy, bundling=self._bundling)
        applied: list[S3Event] = []
        batch = SequencerBook()  # committed to self._book only once the jobs are sent
        for event in in_sequencer_order(e for _, e in parsed):
            if await self._apply(event, sender, batch):
                applied.append(event)
        try:
            await sender.flush()
        except FerryError as exc:
            log.warning("events_send_failed", error=str(exc), messages=len(done))
            return  # nothing acknowledged: the messages come back
        self._settled(applied, sender)
        await self._delete(done)

    def _settled(self, applied: list[S3Event], sender: JobSender) -> None:
        now = datetime.now(UTC)
        for event in applied:
            self._book.applied(event.bucket, event.key, event.sequencer, event.identity)
            if event.time is not None:
                self._metrics.event_lag.observe(max(0.0, (now - event.time).total_seconds()))
        self.summary.jobs.update(sender.sent.jobs)

    async def _apply(self, event: S3Event, sender: JobSender, batch: SequencerBook) -> bool:
        """Send the jobs of one event; True when it counts as applied for ordering."""
        self._metrics.events_received.labels(event.kind.value).inc()
        self.summary.events[event.kind.value] += 1
        if event.kind in (Kind.TEST, Kind.IGNORED):
            return False
        identity = event.identity
        if (self._book.is_stale(event.bucket, event.key, event.sequencer, identity)
                or batch.is_stale(event.bucket, event.key, event.sequencer, identity)):
            self._metrics.stale_events.inc()
            self.summary.dropped["stale"] += 1
            log.info("event_dropped_stale", bucket=event.bucket, event_name=event.name)
            return False
        routes = matching_routes(self._routes, event, self._settings.source_endpoints)
        if not routes:
            self.summary.dropped["no_route"] += 1
        for route in routes:
            planned = await plan_event(route, event, self._head)
            if planned.reason:
                self.summary.dropped[planned.reason] += 1
            for job in planned.jobs:
                await sender.put(job)
        batch.applied(event.bucket, event.key, event.sequencer, identity)
        return True

    async def _head(self, route: Route, key: str) -> dict[str, Any] | None:
        client = await self._clients.get(route.source.endpoint)

        async def call() -> dict[str, Any] | None:
            try:
                answer: dict[str, Any] = await client.head_object(
                    Bucket=route.source.bucket, Key=key)
                return answer
            except Exception as exc:
                if error_code(exc) in {"404", "NoSuchKey", "NotFound", "405",
                                       "MethodNotAllowed"}:
                    return None  # absent, or its current version is a delete marker
                raise classify(exc, operation="HeadObject", context="source") from exc
        return await retrying(call, self._policy)

    async def _dead_letter(self, message: dict[str, Any], reason: str, error: str) -> None:
        attributes = {
            "reason": {"DataType": "String", "StringValue": reason},
            "error": {"DataType": "String", "StringValue": scrub_text(error)[:1000] or reason},
            "source_message_id": {"DataType": "String",
                                  "StringValue": str(message.get("MessageId", "unknown"))},
        }
        try:
            await self._sqs.send_message(QueueUrl=self._settings.dlq_url,
                                         MessageBody=message.get("Body") or "<empty>",
                                         MessageAttributes=attributes)
        except Exception as exc:
            log.error("dead_letter_failed", reason=reason, error=scrub_text(str(exc)))
            return  # leave it: it comes back
        self._metrics.dead_letters.labels(reason).inc()
        self.summary.dead_letters[reason] += 1
        log.warning("event_dead_lettered", reason=reason, error=scrub_text(error)[:200])
        await self._delete([message])

    async def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                       for i, m in enumerate(chunk)]
            try:
                answer = await self._sqs.delete_message_batch(
                    QueueUrl=self._settings.events_queue_url, Entries=entries)
            except Exception as exc:
                log.warning("events_ack_failed", error=scrub_text(str(exc)))
                continue
            if answer.get("Failed"):
                log.warning("events_ack_failed", failed=len(answer["Failed"]))
