"""``s3ferry backfill``: list source and destinations, diff, enqueue what is missing or differs.

    for each route, for each destination (concurrently):
        ListObjectsV2(source) ─┐
                               ├─ merge diff ─> copy / delete / check(HEAD both) ─> SQS batches
        ListObjectsV2(dest)  ──┘

Streaming throughout: two pages per listing, bounded HEADs and bounded batches in flight.
With ``shards > 1`` each side's first-level "directories" are listed with a delimiter and the
key space is diffed shard by shard in parallel; shards partition the keys, so the result is the
same as one pass. Deletes need ``--delete``; they only ever name keys listed under the
destination prefix and inside the route's globs. Safe to re-run at any time: the worker skips
objects it already copied, whatever the queue holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.clients import ClientPool
from common.jobs import CopyJob, DeleteJob
from common.logs import get_logger
from common.metrics import DispatcherMetrics
from common.retry import RetryPolicy, retrying
from common.routes import DestinationSpec, Route
from common.s3errors import head_or_none, translated
from dispatcher.diff import Action, Decision, Entry, Mode, adiff, same_content
from dispatcher.fanout import Unmappable, copy_job, delete_job
from dispatcher.listing import FIRST_PAGE_KEYS, common_prefixes, list_entries

log = get_logger(__name__)


class Sink(Protocol):
    async def put(self, job: CopyJob | DeleteJob) -> None: ...
    async def flush(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class BackfillOptions:
    mode: Mode = Mode.SIZE
    delete: bool = False
    shards: int = 1
    head_concurrency: int = 16
    page_size: int = 1000


@dataclass
class Progress:
    """Counters shown while running and returned at the end."""

    listed: Counter[str] = field(default_factory=Counter)  # source, destination
    decisions: Counter[str] = field(default_factory=Counter)  # action:reason
    unmappable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"listed": dict(self.listed), "decisions": dict(sorted(self.decisions.items())),
                "unmappable": self.unmappable}


@dataclass(frozen=True, kw_only=True)
class _Pair:
    """One source and one destination of a route, with their clients."""

    route: Route
    dest: DestinationSpec
    src_client: Any
    dst_client: Any
    same_store: bool = False


class Backfill:
    def __init__(self, *, clients: ClientPool, sink: Sink, options: BackfillOptions,
                 metrics: DispatcherMetrics, progress: Progress | None = None) -> None:
        self._clients = clients
        self._sink = sink
        self._options = options
        self._metrics = metrics
        self._policy = RetryPolicy(attempts=8, max_seconds=120)
        self._heads = asyncio.Semaphore(options.head_concurrency)
        self.progress = progress or Progress()

    async def run(self, routes: list[Route]) -> Progress:
        """Diff every destination of every route; raise the first failure (not a group)."""
        try:
            async with asyncio.TaskGroup() as tg:
                for route in routes:
                    for dest in route.destinations:
                        pair = _Pair(route=route, dest=dest,
                                     src_client=await self._clients.get(route.source.endpoint),
                                     dst_client=await self._clients.get(dest.endpoint),
                                     same_store=self._clients.endpoint(
                                         route.source.endpoint).same_store(
                                         self._clients.endpoint(dest.endpoint)))
                        tg.create_task(self._pair(pair))
        except BaseExceptionGroup as group:
            raise first_error(group) from group
        await self._sink.flush()
        return self.progress

    async def _pair(self, pair: _Pair) -> None:
        log.info("backfill_destination_started", route=pair.route.name,
                 destination=pair.dest.endpoint, mode=self._options.mode.value)
        if self._options.shards <= 1:  # one listing a side: its first page a quick one
            await self._diff(pair, shard="", delimiter=None, first_page=FIRST_PAGE_KEYS)
            return
        shards = await self._shards(pair)
        limit = asyncio.Semaphore(self._options.shards)

        async def one(shard: str, delimiter: str | None) -> None:
            async with limit:
                await self._diff(pair, shard=shard, delimiter=delimiter)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(one("", "/"))  # objects directly below the prefix
            for shard in shards:
                tg.create_task(one(shard, None))

    async def _shards(self, pair: _Pair) -> list[str]:
        """First-level directories on either side (held in memory: one name per directory)."""
        found: set[str] = set()
        for client, bucket, prefix in ((pair.src_client, pair.route.source.bucket,
                                        pair.route.source.prefix),
                                       (pair.dst_client, pair.dest.bucket, pair.dest.prefix)):
            async for name in common_prefixes(client, bucket=bucket, prefix=prefix,
                                              policy=self._policy):
                found.add(name)
        return sorted(found, key=lambda n: n.encode())

    def _listing(self, client: Any, bucket: str, base: str, shard: str,
                 delimiter: str | None, side: str,
                 first_page: int | None) -> AsyncIterator[Entry]:
        async def counted() -> AsyncIterator[Entry]:
            async for entry in list_entries(client, bucket=bucket, prefix=base + shard,
                                            base=base, delimiter=delimiter,
                                            page_size=self._options.page_size,
                                            first_page=first_page, policy=self._policy):
                self.progress.listed[side] += 1
                self._metrics.objects_listed.labels(side).inc()
                yield entry
        return counted()

    async def _diff(self, pair: _Pair, *, shard: str, delimiter: str | None,
                    first_page: int | None = None) -> None:
        route = pair.route
        source = self._listing(pair.src_client, route.source.bucket, route.source.prefix,
                               shard, delimiter, "source", first_page)
        destination = self._listing(pair.dst_client, pair.dest.bucket, pair.dest.prefix,
                                    shard, delimiter, "destination", first_page)

        def wanted(entry: Entry) -> bool:
            return route.key_in_scope(entry.key) and route.object_wanted(
                size=entry.size, last_modified=entry.last_modified)

        async with asyncio.TaskGroup() as checks:
            async for decision in adiff(source, destination, self._options.mode, wanted):
                if decision.action is Action.CHECK:
                    await self._heads.acquire()
                    checks.create_task(self._check(pair, decision))
                else:
                    await self._decide(pair, decision)

    async def _decide(self, pair: _Pair, decision: Decision) -> None:
        route, dest = pair.route, pair.dest
        action = decision.action
        if action is Action.DELETE and not (self._options.delete
                                            and route.key_in_scope(decision.key)):
            action, reason = Action.SKIP, "delete_disabled" if not self._options.delete \
                else "out_of_scope"
            decision = Decision(action, decision.key, reason, None, decision.destination)
        self.progress.decisions[f"{decision.action.value}:{decision.reason}"] += 1
        try:
            if decision.action is Action.COPY:
                src = decision.source
                assert src is not None
                await self._sink.put(copy_job(
                    route, dest, relative_key=src.key, size=src.size, etag=src.etag,
                    storage_class=src.storage_class,
                    destination_absent=decision.reason == "missing",
                    verify_content=decision.reason == "verify"))
            elif decision.action is Action.DELETE:
                await self._sink.put(delete_job(route, dest, relative_key=decision.key))
        except Unmappable as exc:
            self.progress.unmappable += 1
            log.warning("backfill_key_unmappable", route=route.name, error=str(exc))

    async def _check(self, pair: _Pair, decision: Decision) -> None:
        """Checksum mode, equal sizes: HEAD both sides and copy unless the content is shown
        equal (fingerprint, full-object checksum, or within one store the ETag)."""
        try:
            route = pair.route
            src_head = await self._head(pair.src_client, route.source.bucket,
                                        route.source.prefix + decision.key)
            dst_head = await self._head(pair.dst_client, pair.dest.bucket,
                                        pair.dest.prefix + decision.key)
        finally:
            self._heads.release()
        if src_head is None:
            outcome = Decision(Action.SKIP, decision.key, "source_vanished", decision.source)
        elif dst_head is None:
            outcome = Decision(Action.COPY, decision.key, "missing", decision.source)
        elif why := same_content(src_head, dst_head, same_store=pair.same_store):
            outcome = Decision(Action.SKIP, decision.key, f"same_{why}", decision.source)
        else:
            outcome = Decision(Action.COPY, decision.key, "content_unproven", decision.source)
        await self._decide(pair, outcome)

    async def _head(self, client: Any, bucket: str, key: str) -> dict[str, Any] | None:
        async def call() -> dict[str, Any] | None:
            with translated("HeadObject", bucket):
                return await head_or_none(client, bucket=bucket, key=key)
        return await retrying(call, self._policy)


def first_error(error: BaseException) -> BaseException:
    """The first real exception inside (nested) task-group exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@contextlib.asynccontextmanager
async def reporting(progress: Progress, sent: Callable[[], dict[str, Any]], *,
                    interval: float, tty: Callable[[str], Awaitable[None]] | None = None
                    ) -> AsyncIterator[None]:
    """Report progress every ``interval`` seconds while the body runs: one rewritten line on
    a terminal (``tty``), a ``backfill_progress`` log event otherwise."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            state = {"listed": dict(progress.listed), **sent()}
            if tty is not None:
                await tty(_line(state))
            else:
                log.info("backfill_progress", **state)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _line(state: dict[str, Any]) -> str:
    listed = state.get("listed", {})
    jobs = state.get("jobs", {})
    return (f"listed {listed.get('source', 0):,} source / {listed.get('destination', 0):,} "
            f"destination  enqueued {jobs.get('copy', 0):,} copies "
            f"({state.get('bytes', 0):,} bytes), {jobs.get('delete', 0):,} deletes")
