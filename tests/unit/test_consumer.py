"""The consumer's SQS scheduling: several receive loops, acks in parallel, idle exit.

The SQS here is an in-memory stand-in that records how many calls overlap; what it checks
is our scheduling, not SQS (the integration tests run the same consumer on LocalStack).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from common.jobs import CopyJob, DestinationRef, SourceRef, encode
from common.metrics import WorkerMetrics
from common.settings import WorkerSettings
from worker.consumer import Consumer
from worker.replicate import JobResult


class OverlapCounter:
    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


class MemorySqs:
    """Visible messages, in-flight receipts, deletions; every call takes one loop turn."""

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = {f"m{i}": body for i, body in enumerate(bodies)}
        self.visible = list(self.bodies.items())
        self.in_flight: dict[str, str] = {}
        self.deleted: Counter[str] = Counter()
        self.receives = OverlapCounter()
        self.deletes = OverlapCounter()
        self.receive_calls = 0
        self.emptied = asyncio.Event()  # every message deleted

    async def receive_message(self, *, MaxNumberOfMessages: int, **_: Any) -> dict[str, Any]:
        with self.receives:
            self.receive_calls += 1
            await asyncio.sleep(0.01)  # a round trip: the other loops run meanwhile
            taken, self.visible = (self.visible[:MaxNumberOfMessages],
                                   self.visible[MaxNumberOfMessages:])
            messages = []
            for message_id, body in taken:
                receipt = f"r-{message_id}"
                self.in_flight[receipt] = message_id
                messages.append({"MessageId": message_id, "ReceiptHandle": receipt, "Body": body,
                                 "Attributes": {"ApproximateReceiveCount": "1"}})
            return {"Messages": messages} if messages else {}

    async def delete_message_batch(self, *, Entries: list[dict[str, str]],
                                   **_: Any) -> dict[str, Any]:
        with self.deletes:
            await asyncio.sleep(0.01)
            for entry in Entries:
                self.deleted[self.in_flight.pop(entry["ReceiptHandle"])] += 1
            if not self.visible and not self.in_flight:
                self.emptied.set()
            return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    async def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        return {"Attributes": {"ApproximateNumberOfMessages": str(len(self.visible)),
                               "ApproximateNumberOfMessagesNotVisible": str(len(self.in_flight)),
                               "ApproximateNumberOfMessagesDelayed": "0"}}

    async def change_message_visibility(self, *, ReceiptHandle: str, **_: Any) -> None:
        message_id = self.in_flight.pop(ReceiptHandle)
        self.visible.append((message_id, self.bodies[message_id]))

    async def change_message_visibility_batch(self, **_: Any) -> dict[str, Any]:
        return {}


class Copies:
    """A replicator that only counts: each copy takes one loop turn."""

    def __init__(self) -> None:
        self.keys: Counter[str] = Counter()

    async def copy(self, job: CopyJob, **_: Any) -> JobResult:
        await asyncio.sleep(0)
        self.keys[job.source.key] += 1
        return JobResult(result="copied", bytes=1, strategy="test", verified="test")


def bodies(n: int) -> list[str]:
    return [encode(CopyJob(source=SourceRef(endpoint="a", bucket="src-bucket", key=f"k{i}"),
                           destination=DestinationRef(endpoint="c", bucket="dst-bucket",
                                                      key=f"k{i}")))
            for i in range(n)]


def consumer_for(sqs: MemorySqs, copies: Copies, **settings: Any) -> Consumer:
    return Consumer(sqs=sqs, queue_url="q", dlq_url="dlq", replicator=copies,  # type: ignore[arg-type]
                    settings=WorkerSettings(wait_time_seconds=0, **settings),
                    metrics=WorkerMetrics(CollectorRegistry()))


async def consume(sqs: MemorySqs, copies: Copies, **settings: Any) -> Consumer:
    consumer = consumer_for(sqs, copies, exit_when_idle=True, **settings)
    await asyncio.wait_for(consumer.run(), timeout=30)
    return consumer


@pytest.mark.parametrize(("max_jobs", "receivers", "loops"),
                         [(64, 0, 4), (40, 0, 4), (16, 0, 2), (8, 0, 1), (40, 3, 3), (64, 1, 1)])
async def test_receive_loops_overlap_and_every_message_is_done_once(
        max_jobs: int, receivers: int, loops: int) -> None:
    sqs, copies = MemorySqs(bodies(500)), Copies()

    consumer = await consume(sqs, copies, max_jobs=max_jobs, receivers=receivers)

    assert consumer.receivers == loops
    assert sqs.receives.most == loops  # that many ReceiveMessage calls were out at once
    assert copies.keys == Counter({f"k{i}": 1 for i in range(500)})
    assert sqs.deleted == Counter({f"m{i}": 1 for i in range(500)})
    assert sqs.visible == [] and sqs.in_flight == {}
    assert consumer.summary.results == {"copied": 500}
    assert sqs.deletes.most <= 4  # DeleteMessageBatch calls at once, at most
    if loops > 1:  # acks come faster than one DeleteMessageBatch at a time takes them
        assert sqs.deletes.most > 1


async def test_every_receive_loop_ends_when_the_queue_is_empty() -> None:
    sqs, copies = MemorySqs([]), Copies()

    consumer = await consume(sqs, copies, max_jobs=40, idle_polls=2)

    assert consumer.receivers == 4
    # each loop polled until its second empty answer, then one of them found the queue empty
    assert 4 <= sqs.receive_calls <= 8
    assert consumer.summary.results == {}


async def test_stop_ends_every_receive_loop_and_hands_back_nothing_twice() -> None:
    sqs, copies = MemorySqs(bodies(30)), Copies()
    consumer = consumer_for(sqs, copies, max_jobs=40)
    run = asyncio.create_task(consumer.run())
    await asyncio.wait_for(sqs.emptied.wait(), timeout=30)
    consumer.stop()

    await asyncio.wait_for(run, timeout=30)

    assert copies.keys == Counter({f"k{i}": 1 for i in range(30)})
    assert sqs.visible == [] and sqs.in_flight == {}


async def test_a_failing_receive_loop_stops_the_others_and_leaves_no_receive_behind() -> None:
    class Broken(MemorySqs):
        async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
            call = self.receive_calls + 1
            answer = await super().receive_message(**kwargs)
            if call == 3:  # an answer without a receipt handle: a bug of ours to meet
                del answer["Messages"][0]["ReceiptHandle"]
            return answer

    sqs, copies = Broken(bodies(200)), Copies()

    with pytest.raises(KeyError):
        await consume(sqs, copies, max_jobs=40)

    loops = [t for t in asyncio.all_tasks()
             if t.get_coro().__qualname__ == "Consumer._receive_loop"]  # type: ignore[union-attr]
    assert loops == []  # every receive loop ended, none left receiving on its own
    assert sqs.receives.now == 0
    assert sqs.receive_calls >= 4
