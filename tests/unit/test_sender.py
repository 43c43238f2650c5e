"""The job sender packs small jobs into bundles: fewer messages, every job exactly once.

The SQS here only records SendMessageBatch calls (what it checks is our packing; the
integration tests send bundles through LocalStack and copy them)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from common.jobs import (
    MAX_BUNDLE_BYTES,
    Bundle,
    CopyJob,
    DeleteJob,
    DestinationRef,
    SourceRef,
    decode,
    jobs_of,
)
from common.limits import MIB, SQS_MAX_BATCH, SQS_MAX_MESSAGE_BYTES
from common.metrics import DispatcherMetrics
from common.settings import DispatcherSettings
from dispatcher.sender import JobSender


class RecordingSqs:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, str]]
                                 ) -> dict[str, Any]:
        assert len(Entries) <= SQS_MAX_BATCH
        assert sum(len(e["MessageBody"].encode()) for e in Entries) <= SQS_MAX_MESSAGE_BYTES
        self.batches.append([e["MessageBody"] for e in Entries])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    @property
    def messages(self) -> list[str]:
        return [body for batch in self.batches for body in batch]


def copy(key: str, size: int) -> CopyJob:
    return CopyJob(source=SourceRef(endpoint="g", bucket="src-bucket", key=key, size=size,
                                    etag='"e"'),
                   destination=DestinationRef(endpoint="c", bucket="dst-bucket", key=key))


def delete(key: str) -> DeleteJob:
    return DeleteJob(destination=DestinationRef(endpoint="c", bucket="dst-bucket", key=key))


async def send(jobs: list[CopyJob | DeleteJob], streaming: bool = False,
               **settings: Any) -> tuple[RecordingSqs, DispatcherMetrics]:
    sqs, metrics = RecordingSqs(), DispatcherMetrics(CollectorRegistry())
    sender = JobSender(sqs, "q", metrics=metrics, bundling=DispatcherSettings(**settings),
                       streaming=streaming)
    for job in jobs:
        await sender.put(job)
    await sender.flush()
    assert sum(sender.sent.jobs.values()) == len(jobs)
    return sqs, metrics


def sent_jobs(sqs: RecordingSqs) -> list[CopyJob | DeleteJob]:
    return [job for body in sqs.messages for job in jobs_of(body)]


def by_key(jobs: list[CopyJob | DeleteJob]) -> dict[tuple[str, str], CopyJob | DeleteJob]:
    return {(j.kind, j.destination.key): j for j in jobs}


async def test_small_jobs_share_messages_and_large_ones_travel_alone() -> None:
    jobs: list[CopyJob | DeleteJob] = [copy(f"small/{i}", i % 5000) for i in range(250)]
    jobs += [delete(f"gone/{i}") for i in range(5)]
    jobs += [copy(f"large/{i}", MIB + 1) for i in range(3)]
    jobs += [copy("edge", MIB)]  # exactly the limit: small

    sqs, metrics = await send(jobs)

    messages = [decode(body) for body in sqs.messages]
    # bundles double from one job, so a small backfill still spreads over several workers
    assert [len(m.jobs) for m in messages if isinstance(m, Bundle)] == [
        1, 2, 4, 8, 16, 32, 64, 100, 29]
    assert {m.limit for m in messages if isinstance(m, Bundle)} == {100}  # for the workers
    assert sorted(m.source.key for m in messages if isinstance(m, CopyJob)) == [
        "large/0", "large/1", "large/2"]
    assert by_key(sent_jobs(sqs)) == by_key(jobs)  # each job exactly once, unchanged
    assert len(sent_jobs(sqs)) == len(jobs)
    assert metrics.messages_sent._value.get() == 12


async def test_one_job_per_message_when_bundles_are_off() -> None:
    jobs: list[CopyJob | DeleteJob] = [copy(f"k{i}", 10) for i in range(25)]

    sqs, metrics = await send(jobs, jobs_per_message=1)

    assert all(isinstance(decode(body), CopyJob) for body in sqs.messages)
    assert sent_jobs(sqs) == jobs
    assert metrics.messages_sent._value.get() == 25


async def test_a_streaming_sender_sends_the_first_job_alone_then_batches_grow_to_ten(
        ) -> None:
    jobs: list[CopyJob | DeleteJob] = [copy(f"k{i:03d}", 10) for i in range(40)]

    sqs, _ = await send(jobs, streaming=True, jobs_per_message=1)

    # a backfill's first job is on the queue before the next ones are even listed
    assert [len(b) for b in sqs.batches] == [1, 2, 4, 8, 10, 10, 5]
    assert sent_jobs(sqs) == jobs


async def test_a_sender_given_all_its_jobs_at_once_fills_every_batch() -> None:
    jobs: list[CopyJob | DeleteJob] = [copy(f"k{i:03d}", 10) for i in range(25)]

    sqs, _ = await send(jobs, jobs_per_message=1)  # the events of one receive

    assert [len(b) for b in sqs.batches] == [10, 10, 5]
    assert sent_jobs(sqs) == jobs


async def test_bundles_of_long_keys_stay_within_their_byte_limit() -> None:
    jobs: list[CopyJob | DeleteJob] = [copy(f"{i:04d}" + "k" * 1020, 1) for i in range(600)]

    sqs, _ = await send(jobs, jobs_per_message=500)

    sizes = [len(body.encode()) for body in sqs.messages]
    assert max(sizes) <= MAX_BUNDLE_BYTES
    assert len(sqs.messages) >= 600 * 2048 // MAX_BUNDLE_BYTES  # split by bytes, not count
    assert max(len(jobs_of(body)) for body in sqs.messages) < 64  # ~25 jobs of 2.5 KiB
    assert sent_jobs(sqs) == jobs


async def test_a_lone_small_job_travels_in_a_bundle_that_names_the_limit() -> None:
    job = copy("only", 1)

    sqs, _ = await send([job], jobs_per_message=50)

    [message] = [decode(body) for body in sqs.messages]
    assert isinstance(message, Bundle) and message.limit == 50
    assert jobs_of(sqs.messages[0]) == [job]
