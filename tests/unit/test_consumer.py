"""The consumer's SQS scheduling: several receive loops, acks in parallel, idle exit, and
bundles (many jobs in one message, each with its own outcome).

The SQS here is an in-memory stand-in that records how many calls overlap; what it checks
is our scheduling, not SQS (the integration tests run the same consumer on LocalStack).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from common.errors import GiveUp, RetryNow, UploadBusy
from common.jobs import CopyJob, DestinationRef, SourceRef, encode, encode_bundle, jobs_of
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
        self.most_in_flight = 0  # messages a worker held at once
        self.deleted: Counter[str] = Counter()
        self.receives = OverlapCounter()
        self.deletes = OverlapCounter()
        self.receive_calls = 0
        self.emptied = asyncio.Event()  # every message deleted
        self.sent: list[tuple[str, int]] = []  # (body, DelaySeconds) sent to the job queue
        self.dead: list[tuple[str, dict[str, str]]] = []  # (body, attributes) in the DLQ
        self.dlq_outages = 0  # DLQ sends that fail before it works again

    async def send_message(self, *, QueueUrl: str, MessageBody: str, DelaySeconds: int = 0,
                           MessageAttributes: dict[str, Any] | None = None) -> dict[str, Any]:
        await asyncio.sleep(0)
        if QueueUrl == "dlq":
            self._dead(MessageBody, MessageAttributes or {})
            return {}
        message_id = f"m{len(self.bodies)}"
        self.bodies[message_id] = MessageBody
        self.visible.append((message_id, MessageBody))
        self.sent.append((MessageBody, DelaySeconds))
        return {"MessageId": message_id}

    async def send_message_batch(self, *, QueueUrl: str,
                                 Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert QueueUrl == "dlq" and len(Entries) <= 10
        await asyncio.sleep(0)
        for entry in Entries:
            self._dead(entry["MessageBody"], entry["MessageAttributes"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    def _dead(self, body: str, attributes: dict[str, Any]) -> None:
        if self.dlq_outages:
            self.dlq_outages -= 1
            raise ConnectionError("dead-letter queue unreachable")
        self.dead.append((body, {k: v["StringValue"] for k, v in attributes.items()}))

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
                self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
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
    """A replicator that only counts: each copy takes one loop turn. Keys starting with
    ``bad`` fail for good; ``flaky`` ones fail their first ``flaky_attempts`` attempts."""

    def __init__(self, flaky_attempts: int = 1, uneven: bool = False) -> None:
        self.keys: Counter[str] = Counter()  # copies that succeeded
        self.attempts: Counter[str] = Counter()
        self.running = OverlapCounter()
        self.flaky_attempts = flaky_attempts
        self.uneven = uneven  # copies take 0 to 3 ms

    async def copy(self, job: CopyJob, **_: Any) -> JobResult:
        key = job.source.key
        self.attempts[key] += 1
        with self.running:
            await asyncio.sleep(0.0005 * (sum(key.encode()) % 7) if self.uneven else 0)
        if key.startswith("bad"):
            raise GiveUp("the destination refused it", reason="access_denied")
        if key.startswith("flaky") and self.attempts[key] <= self.flaky_attempts:
            raise RetryNow("timed out")
        self.keys[key] += 1
        return JobResult(result="copied", bytes=1, strategy="test", verified="test")


def job_body(key: str) -> str:
    return encode(CopyJob(id=f"job-{key}",
                          source=SourceRef(endpoint="a", bucket="src-bucket", key=key),
                          destination=DestinationRef(endpoint="c", bucket="dst-bucket", key=key)))


def bodies(n: int) -> list[str]:
    return [job_body(f"k{i}") for i in range(n)]


def bundles(n: int, size: int, limit: int | None = None) -> list[str]:
    return [encode_bundle([job_body(f"b{b}-k{i}") for i in range(size)], bundle_id=f"b{b}",
                          limit=limit)
            for b in range(n)]


def consumer_for(sqs: MemorySqs, copies: Copies, metrics: WorkerMetrics | None = None,
                 lease_seconds: int | None = None, **settings: Any) -> Consumer:
    """``lease_seconds``: a visibility timeout shorter than the settings allow (10 s at
    least); the rules that use it are the same."""
    worker = WorkerSettings(wait_time_seconds=0, **settings)
    if lease_seconds is not None:
        worker = worker.model_copy(update={"visibility_timeout": lease_seconds})
    return Consumer(sqs=sqs, queue_url="q", dlq_url="dlq", replicator=copies,  # type: ignore[arg-type]
                    settings=worker, metrics=metrics or WorkerMetrics(CollectorRegistry()))


async def consume(sqs: MemorySqs, copies: Copies, metrics: WorkerMetrics | None = None,
                  **settings: Any) -> Consumer:
    consumer = consumer_for(sqs, copies, metrics, exit_when_idle=True, **settings)
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


class BatchLog(MemorySqs):
    """Also records the message ids of every DeleteMessageBatch call."""

    def __init__(self, bodies: list[str]) -> None:
        super().__init__(bodies)
        self.batches: list[list[str]] = []

    async def delete_message_batch(self, *, Entries: list[dict[str, str]],
                                   **kwargs: Any) -> dict[str, Any]:
        self.batches.append(sorted(self.in_flight[e["ReceiptHandle"]] for e in Entries))
        return await super().delete_message_batch(Entries=Entries, **kwargs)


async def test_an_ack_is_sent_at_once_when_no_other_job_is_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the last job of a backfill, or a lone event: no other ack is coming to share a batch
    monkeypatch.setattr("worker.settling.ACK_LINGER_SECONDS", 3600)
    sqs, copies = BatchLog(bodies(1)), Copies()
    consumer = consumer_for(sqs, copies, max_jobs=8)
    run = asyncio.create_task(consumer.run())

    await asyncio.wait_for(sqs.emptied.wait(), timeout=30)  # not after the hour's linger
    consumer.stop()
    await asyncio.wait_for(run, timeout=30)

    assert sqs.batches == [["m0"]]


async def test_an_ack_waits_for_running_jobs_to_share_its_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.settling.ACK_LINGER_SECONDS", 3600)
    release, k1_running = asyncio.Event(), asyncio.Event()

    class OneSlow(Copies):
        async def copy(self, job: CopyJob, **kwargs: Any) -> JobResult:
            if job.source.key == "k1":
                k1_running.set()
                await release.wait()
            else:  # k0 finishes while k1 is still being copied
                await k1_running.wait()
            return await super().copy(job, **kwargs)

    sqs, copies = BatchLog(bodies(2)), OneSlow()
    consumer = consumer_for(sqs, copies, max_jobs=8)
    run = asyncio.create_task(consumer.run())
    for _ in range(100):  # until k0 is copied
        await asyncio.sleep(0.01)
        if copies.keys["k0"]:
            break
    await asyncio.sleep(0.1)  # room for an early DeleteMessageBatch, which must not come
    assert copies.keys == Counter({"k0": 1}) and sqs.batches == []

    release.set()
    await asyncio.wait_for(sqs.emptied.wait(), timeout=30)
    consumer.stop()
    await asyncio.wait_for(run, timeout=30)

    assert sqs.batches == [["m0", "m1"]]  # one call acknowledged both


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


async def test_bundles_and_single_jobs_are_each_done_once_within_max_jobs() -> None:
    sqs, copies = MemorySqs([*bodies(30), *bundles(20, 100), *bodies(30)[::-1]]), Copies()

    consumer = await consume(sqs, copies, max_jobs=16, receivers=4)

    every = {f"b{b}-k{i}" for b in range(20) for i in range(100)} | {f"k{i}" for i in range(30)}
    assert copies.keys == Counter({**dict.fromkeys(every, 1), **{f"k{i}": 2 for i in range(30)}})
    assert sqs.deleted == Counter(dict.fromkeys(sqs.bodies, 1))  # every message, once
    assert consumer.summary.results == {"copied": 2060}
    assert copies.running.most == 16  # max_jobs ran at once, never more


@pytest.mark.parametrize("growing", [False, True], ids=["full-bundles", "bundles-that-grow"])
async def test_a_worker_holding_a_bundle_leaves_the_next_ones_to_other_workers(
        growing: bool) -> None:
    copies = Copies(uneven=True)
    if growing:  # as the dispatcher sends them: bundles of 1, 2, 4, ... 100, naming 100
        sizes = [1, 2, 4, 8, 16, 32, 64] + [100] * 17
        messages = [encode_bundle([job_body(f"b{b}-k{i}") for i in range(size)], limit=100)
                    for b, size in enumerate(sizes)]
    else:
        messages = bundles(20, 100)

    class Watched(MemorySqs):
        """Notes, at every receive, how many held bundles still have jobs to copy."""

        most_unfinished = 0

        async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
            unfinished = [m for m in self.in_flight.values() if any(
                copies.keys[j.source.key] == 0 for j in jobs_of(self.bodies[m]))]  # type: ignore[union-attr]
            self.most_unfinished = max(self.most_unfinished, len(unfinished))
            return await super().receive_message(**kwargs)

    sqs = Watched(messages)

    await consume(sqs, copies, max_jobs=16, receivers=4)

    assert sum(copies.keys.values()) == (1827 if growing else 2000)
    assert sqs.receive_calls >= (10 if growing else 20)
    # it asks for another bundle only once fewer than max_jobs jobs of the one it holds are
    # left: never while two are unfinished, and one at a time (not 10 x 100 jobs at once)
    assert sqs.most_unfinished == 1
    assert sqs.most_in_flight < 10


async def test_a_bundles_failed_jobs_each_go_their_own_way() -> None:
    keys = ["ok-1", "bad-1", "flaky-1", "ok-2", "flaky-2", "bad-2"]
    garbage = json.dumps({"v": 1, "kind": "copy", "id": "broken"})
    body = encode_bundle([*(job_body(k) for k in keys), garbage], bundle_id="b1")
    sqs, copies, metrics = MemorySqs([body]), Copies(), WorkerMetrics(CollectorRegistry())

    consumer = await consume(sqs, copies, metrics, max_jobs=8)

    # the failures go to the dead-letter queue one job each, with their reason
    assert sorted((json.loads(b)["id"], a["reason"], a["bundle_id"]) for b, a in sqs.dead) == [
        ("broken", "invalid_job", "b1"), ("job-bad-1", "access_denied", "b1"),
        ("job-bad-2", "access_denied", "b1")]
    # the transient ones came back in one new delayed bundle carrying their first attempt...
    [(requeued, delay)] = sqs.sent
    again = json.loads(requeued)
    assert again["attempts"] == 1 and delay >= 1
    assert [j["source"]["key"] for j in again["jobs"]] == ["flaky-1", "flaky-2"]
    # ...and were copied on their second; nothing was copied twice or lost
    assert copies.keys == Counter({"ok-1": 1, "ok-2": 1, "flaky-1": 1, "flaky-2": 1})
    assert copies.attempts["ok-1"] == 1 and copies.attempts["flaky-1"] == 2
    assert sqs.deleted == Counter({"m0": 1, "m1": 1}) and sqs.in_flight == {}
    assert consumer.summary.dead_letters == {"access_denied": 2, "invalid_job": 1}
    assert consumer.summary.results == {"copied": 4, "failed": 2, "retried": 2}
    assert metrics.jobs_requeued._value.get() == 2
    assert metrics.messages_received._value.get() == 2
    assert metrics.jobs_held._value.get() == 0  # nothing left held once all is done


async def test_a_bundled_job_out_of_attempts_goes_to_the_dead_letter_queue() -> None:
    body = encode_bundle([job_body("flaky-1"), job_body("ok-1")], bundle_id="b1")
    sqs, copies = MemorySqs([body]), Copies(flaky_attempts=99)

    await consume(sqs, copies, max_jobs=8, max_attempts=3)

    assert copies.attempts == Counter({"flaky-1": 3, "ok-1": 1})
    assert [json.loads(b)["attempts"] for b, _ in sqs.sent] == [1, 2]
    [(dead, attributes)] = sqs.dead
    assert json.loads(dead)["id"] == "job-flaky-1"
    assert (attributes["reason"], attributes["receive_count"]) == ("retries_exhausted", "3")
    assert attributes["error"] == "timed_out: timed out" or "timed out" in attributes["error"]


async def test_bundled_jobs_the_dead_letter_queue_refused_are_not_lost() -> None:
    body = encode_bundle([job_body("bad-1"), job_body("ok-1")], bundle_id="b1")
    sqs, copies = MemorySqs([body]), Copies()
    sqs.dlq_outages = 1

    await consume(sqs, copies, max_jobs=8)

    # the refused job went back onto the queue and reached the dead-letter queue next time
    assert [json.loads(b)["id"] for b, _ in sqs.dead] == ["job-bad-1"]
    assert copies.attempts == Counter({"bad-1": 2, "ok-1": 1})
    assert sqs.visible == [] and sqs.in_flight == {}


class LostHeartbeats(MemorySqs):
    """A queue whose ChangeMessageVisibility calls all fail; releases are recorded."""

    def __init__(self, bodies: list[str]) -> None:
        super().__init__(bodies)
        self.released: list[tuple[str, int]] = []
        self.a_release = asyncio.Event()

    async def change_message_visibility_batch(self, **_: Any) -> dict[str, Any]:
        raise ConnectionError("heartbeat lost")

    async def change_message_visibility(self, *, ReceiptHandle: str,
                                        VisibilityTimeout: int = 0, **_: Any) -> None:
        self.released.append((self.in_flight[ReceiptHandle], VisibilityTimeout))
        self.a_release.set()
        await super().change_message_visibility(ReceiptHandle=ReceiptHandle)


class Stuck(Copies):
    """Copies ``stuck`` forever (until cancelled); the others at once."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[str] = []
        self.given_up = asyncio.Event()
        self.another_copied = asyncio.Event()

    async def copy(self, job: CopyJob, **kwargs: Any) -> JobResult:
        if job.source.key == "stuck":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(job.source.key)
                self.given_up.set()
                raise
        result = await super().copy(job, **kwargs)
        self.another_copied.set()
        return result


async def test_a_lease_that_cannot_be_renewed_is_given_up_and_its_message_left_alone() -> None:
    sqs, copies = LostHeartbeats([job_body("stuck")]), Stuck()
    metrics = WorkerMetrics(CollectorRegistry())
    consumer = consumer_for(sqs, copies, metrics, lease_seconds=1, max_jobs=2)
    run = asyncio.create_task(consumer.run())
    await asyncio.wait_for(copies.given_up.wait(), 10)
    sqs.visible.append(("m1", job_body("k1")))  # the worker still serves other jobs
    await asyncio.wait_for(copies.another_copied.wait(), 10)
    consumer.stop()
    await asyncio.wait_for(run, timeout=10)

    assert copies.cancelled == ["stuck"] and copies.keys == Counter({"k1": 1})
    assert metrics.leases_lost._value.get() == 1
    # neither deleted nor released: SQS hands it to another worker when the lease ends
    assert "m0" not in sqs.deleted and ("m0", 0) not in sqs.released
    assert list(sqs.in_flight.values()) == ["m0"]
    assert consumer.summary.results == {"copied": 1}


class Waits(Copies):
    async def copy(self, job: CopyJob, **kwargs: Any) -> JobResult:
        self.attempts[job.source.key] += 1
        raise RetryNow("kept an upload for the next attempt", retry_after=30.0)


async def test_a_retry_waits_at_least_as_long_as_the_failure_asked() -> None:
    sqs, copies = LostHeartbeats([job_body("k")]), Waits()
    consumer = consumer_for(sqs, copies, max_jobs=1)
    run = asyncio.create_task(consumer.run())
    await asyncio.wait_for(sqs.a_release.wait(), 10)
    consumer.stop()
    await asyncio.wait_for(run, timeout=10)
    assert sqs.released[0] == ("m0", 30)  # (this stand-in shows it again at once)


class BusyOnce(Copies):
    """The first attempt finds another attempt driving the key's upload."""

    async def copy(self, job: CopyJob, **kwargs: Any) -> JobResult:
        self.attempts[job.source.key] += 1
        if self.attempts[job.source.key] == 1:
            raise UploadBusy("another attempt may be writing this key", retry_after=0)
        self.keys[job.source.key] += 1
        return JobResult(result="skipped", reason="already_copied:fingerprint")


async def test_a_job_stepping_back_for_another_attempt_is_not_dead_lettered_even_at_the_last(
        ) -> None:
    sqs, copies = MemorySqs([job_body("k")]), BusyOnce()

    consumer = await consume(sqs, copies, max_jobs=1, max_attempts=1)

    assert sqs.dead == [] and copies.attempts["k"] == 2
    assert consumer.summary.results == {"retried": 1, "skipped": 1}


class LatePoll(LostHeartbeats):
    """A long poll that answers late: SQS starts the lease when it answers."""

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        await asyncio.sleep(1.5 if self.visible else 0.05)
        return await super().receive_message(**kwargs)


class TakesHalfASecond(Copies):
    async def copy(self, job: CopyJob, **kwargs: Any) -> JobResult:
        await asyncio.sleep(0.5)
        return await super().copy(job, **kwargs)


async def test_a_lease_counts_from_the_answer_not_from_a_long_poll_sent_earlier() -> None:
    """A 2 s lease, not renewed, is given up 1 s after the message arrived: a job of 0.5 s
    received at the end of a 1.5 s poll finishes (counted from the poll, it would not)."""
    sqs, copies = LatePoll([job_body("k")]), TakesHalfASecond()
    metrics = WorkerMetrics(CollectorRegistry())
    consumer = consumer_for(sqs, copies, metrics, lease_seconds=2, max_jobs=1,
                            exit_when_idle=True)

    await asyncio.wait_for(consumer.run(), timeout=30)

    assert copies.keys == Counter({"k": 1}) and sqs.deleted == Counter({"m0": 1})
    assert metrics.leases_lost._value.get() == 0


class SlowDeadLetters(MemorySqs):
    """DLQ batches take a while: a drain deadline falls in the middle of one."""

    def __init__(self, bodies: list[str]) -> None:
        super().__init__(bodies)
        self.dead_lettering = asyncio.Event()
        self.released: list[str] = []

    async def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.dead_lettering.set()
        await asyncio.sleep(0.3)
        return await super().send_message_batch(**kwargs)

    async def change_message_visibility(self, *, ReceiptHandle: str, **_: Any) -> None:
        self.released.append(self.in_flight[ReceiptHandle])
        await super().change_message_visibility(ReceiptHandle=ReceiptHandle)


async def test_a_drain_deadline_never_cuts_a_bundles_outcome_in_half() -> None:
    body = encode_bundle([job_body("bad-1"), job_body("flaky-1"), job_body("ok-1")],
                         bundle_id="b1")
    sqs, copies = SlowDeadLetters([body]), Copies(flaky_attempts=99)
    consumer = consumer_for(sqs, copies, max_jobs=8, drain_seconds=0)
    run = asyncio.create_task(consumer.run())
    await asyncio.wait_for(sqs.dead_lettering.wait(), 10)

    consumer.stop()  # the deadline passes while the bundle's dead letter is being sent
    await asyncio.wait_for(run, timeout=10)

    # written whole: the dead letter, the job to retry in a new bundle, the bundle deleted;
    # never also released (which would run its jobs twice)
    assert [json.loads(b)["id"] for b, _ in sqs.dead] == ["job-bad-1"]
    assert [[j["id"] for j in json.loads(b)["jobs"]] for b, _ in sqs.sent] == [["job-flaky-1"]]
    assert sqs.deleted == Counter({"m0": 1}) and sqs.released == []
