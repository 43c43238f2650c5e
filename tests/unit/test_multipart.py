"""Who owns a multipart upload (worker.multipart): the pure rule that settles the uploads open
on a key, and the upload's life against an in-memory store whose clock the test sets."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from common.errors import AnswerLost, RetryNow, SourceChanged, UploadBusy
from common.metrics import WorkerMetrics
from common.retry import RetryPolicy
from worker.budget import ByteBudget
from worker.multipart import MultipartUpload, OpenUpload, OpenUploads, clear_quiet, settle
from worker.transfer import Transfer

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def upload(name: str, *, idle: float, started: float = 0.0) -> OpenUpload:
    return OpenUpload(name, T0 + timedelta(seconds=started), idle)


def test_the_newest_quiet_provable_upload_is_adopted_and_every_other_one_aborted() -> None:
    old, new, unprovable = (upload("old", idle=40, started=1), upload("new", idle=31, started=2),
                            upload("x", idle=99, started=3))
    plan = settle([old, new, unprovable], quiet=30, last_attempt=False,
                  provable=lambda u: u.upload_id != "x")
    assert plan.adopt == new
    assert set(plan.abort) == {old, unprovable}
    assert plan.busy_for == 0


def test_an_upload_that_is_not_quiet_makes_the_attempt_step_back_until_it_would_be() -> None:
    live, stale = upload("live", idle=12), upload("stale", idle=50)
    adoptable = upload("mine", idle=45)
    plan = settle([live, stale, adoptable], quiet=30, last_attempt=False,
                  provable=lambda u: u.upload_id == "mine")
    assert plan.busy_for == pytest.approx(18)
    assert plan.adopt is None  # adopted next time, when nobody may be driving anything
    assert plan.abort == (stale,)  # never anyone's to continue: aborted at once


def test_the_last_attempt_aborts_even_a_live_upload_and_goes_on() -> None:
    live, mine = upload("live", idle=1), upload("mine", idle=45)
    plan = settle([live, mine], quiet=30, last_attempt=True, provable=lambda u: True)
    assert (plan.adopt, plan.abort, plan.busy_for) == (mine, (live,), 0)


def test_nothing_open_is_nothing_to_do() -> None:
    assert settle([], quiet=30, last_attempt=False, provable=lambda u: True).adopt is None


class Store:
    """Multipart uploads of one bucket, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = T0
        self.uploads: dict[str, dict[str, Any]] = {}
        self.completed: list[str] = []
        self.lose_create_answer: BaseException | None = None  # raised after creating
        self.created = 0

    def _answer(self, **fields: Any) -> dict[str, Any]:
        """An answer with the store's Date (callers yield first, as a round trip would)."""
        date = format_datetime(self.now, usegmt=True)
        return {**fields, "ResponseMetadata": {"HTTPHeaders": {"date": date}}}

    async def list_multipart_uploads(self, *, Prefix: str, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return self._answer(Uploads=[{"Key": u["key"], "UploadId": i, "Initiated": u["at"],
                                      **({"ChecksumAlgorithm": u["algorithm"]}
                                         if u.get("algorithm") else {})}
                                     for i, u in self.uploads.items()
                                     if u["key"].startswith(Prefix)])

    async def list_parts(self, *, UploadId: str, PartNumberMarker: int = 0,
                         **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        parts = self.uploads[UploadId]["parts"]
        return self._answer(Parts=[{"PartNumber": n, "Size": size, "ETag": etag,
                                    "LastModified": at}
                                   for n, (size, at, etag) in sorted(parts.items())
                                   if n > PartNumberMarker])

    async def upload_part(self, *, UploadId: str, PartNumber: int, Body: bytes,
                          **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        etag = f'"{hashlib.md5(Body).hexdigest()}"'
        self.uploads[UploadId]["parts"][PartNumber] = (len(Body), self.now, etag)
        return {"ETag": etag}

    async def create_multipart_upload(self, *, Key: str, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.created += 1
        upload_id = f"u{self.created}"
        self.uploads[upload_id] = {"key": Key, "at": self.now, "parts": {}}
        if self.lose_create_answer is not None:
            raise self.lose_create_answer
        return {"UploadId": upload_id}

    async def abort_multipart_upload(self, *, UploadId: str, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.uploads.pop(UploadId)
        return {}

    async def complete_multipart_upload(self, *, UploadId: str, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.uploads.pop(UploadId)
        self.completed.append(UploadId)
        return {}

    def put_part(self, upload_id: str, number: int, size: int) -> None:
        self.uploads[upload_id]["parts"][number] = (size, self.now, f'"e{number}"')


def transfer() -> Transfer:
    return Transfer(budget=ByteBudget(units=4, unit_bytes=1), metrics=WorkerMetrics(),
                    retry=RetryPolicy(attempts=2, base_delay=0), upload_quiet=30)


def multipart(store: Store, *, last_attempt: bool = False,
              algorithm: str | None = None) -> MultipartUpload:
    t = transfer()
    return MultipartUpload(OpenUploads(store, t.call, bucket="b", key="k"), create_args={},
                           algorithm=algorithm, expected_sizes={1: 5, 2: 5, 3: 2}, quiet=30,
                           may_resume=lambda _: True, last_attempt=last_attempt)


async def test_a_failed_attempt_keeps_its_upload_and_asks_the_next_to_wait_until_quiet() -> None:
    store = Store()
    with pytest.raises(RetryNow) as failed:
        async with multipart(store) as up:
            store.put_part(up.upload_id, 1, 5)
            raise RetryNow("the destination went away")
    assert failed.value.retry_after == 30
    assert list(store.uploads) == ["u1"]

    store.now += timedelta(seconds=31)
    async with multipart(store) as up:  # the next attempt continues it
        assert (up.upload_id, up.resumed, sorted(up.existing)) == ("u1", True, [1])
        await up.complete([], extra={})
    assert store.completed == ["u1"] and store.uploads == {}


async def test_a_final_failure_or_the_last_attempt_aborts_the_upload() -> None:
    store = Store()
    with pytest.raises(SourceChanged):
        async with multipart(store):
            raise SourceChanged("moved")
    with pytest.raises(RetryNow):
        async with multipart(store, last_attempt=True):
            raise RetryNow("again")
    assert store.uploads == {}


async def test_a_live_upload_of_the_key_is_left_alone_and_the_attempt_steps_back() -> None:
    store = Store()
    store.uploads["theirs"] = {"key": "k", "at": store.now, "parts": {}}
    store.now += timedelta(seconds=10)
    store.put_part("theirs", 1, 5)  # someone is uploading parts right now
    with pytest.raises(UploadBusy) as busy:
        async with multipart(store):
            pytest.fail("must not start while another attempt may drive this key")
    assert busy.value.retry_after == pytest.approx(30)
    assert list(store.uploads) == ["theirs"] and store.created == 0


# a reset after sending, and a 500 that may come after the store acted (a gateway's 504 too)
LOST = [ConnectionResetError("answer lost"),
        ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an "
                               "internal error"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                    "CreateMultipartUpload")]


@pytest.mark.parametrize("error", LOST, ids=["reset", "500"])
async def test_a_create_whose_answer_is_lost_is_not_sent_again(error: BaseException) -> None:
    store = Store()
    store.lose_create_answer = error
    with pytest.raises(AnswerLost) as lost:
        async with multipart(store):
            pytest.fail("no upload id came back")
    assert store.created == 1 and lost.value.retry_after == 30
    store.lose_create_answer = None
    store.now += timedelta(seconds=30)
    async with multipart(store) as up:  # the next attempt finds the one the store made
        assert up.upload_id == "u1" and store.created == 1
        await up.complete([], extra={})


async def test_a_last_attempt_whose_create_answer_is_lost_leaves_no_upload() -> None:
    store = Store()
    store.lose_create_answer = LOST[0]
    with pytest.raises(AnswerLost):
        async with multipart(store, last_attempt=True):
            pytest.fail("no upload id came back")
    assert store.created == 1 and store.uploads == {}  # no attempt will come for it


async def test_an_upload_made_with_another_checksum_algorithm_is_not_adopted() -> None:
    store = Store()
    store.uploads["crc32"] = {"key": "k", "at": store.now, "parts": {}, "algorithm": "CRC32"}
    store.now += timedelta(seconds=40)
    async with multipart(store, algorithm="CRC64NVME") as up:
        assert not up.resumed and up.upload_id == "u1"
        assert "crc32" not in store.uploads  # quiet and of no use: aborted
        await up.complete([], extra={})


async def test_leftovers_are_cleared_when_quiet_and_only_then() -> None:
    store = Store()
    store.uploads["killed"] = {"key": "k", "at": store.now, "parts": {}}
    store.now += timedelta(seconds=40)
    store.uploads["live"] = {"key": "k", "at": store.now, "parts": {}}
    uploads = OpenUploads(store, transfer().call, bucket="b", key="k")
    assert await clear_quiet(uploads, quiet=30) == 1
    assert list(store.uploads) == ["live"]


async def test_of_two_attempts_adopting_one_upload_at_once_only_the_last_claim_goes_on() -> None:
    store = Store()
    store.uploads["left"] = {"key": "k", "at": store.now, "parts": {}}
    store.put_part("left", 1, 5)
    store.now += timedelta(seconds=40)
    a, b = multipart(store), multipart(store)

    # every store call yields: both find the quiet upload before either claims it
    entered = await asyncio.gather(a.__aenter__(), b.__aenter__(), return_exceptions=True)

    [busy] = [e for e in entered if isinstance(e, BaseException)]
    [owner] = [e for e in entered if isinstance(e, MultipartUpload)]
    assert isinstance(busy, UploadBusy) and owner.upload_id == "left"
    await owner.complete([], extra={})
    assert store.completed == ["left"]


async def test_a_creator_whose_upload_was_taken_over_does_not_complete_or_abort_it() -> None:
    store = Store()
    creator = multipart(store)
    up = await creator.__aenter__()
    store.now += timedelta(seconds=40)  # the creator went quiet (its lease was given up)
    async with multipart(store) as adopter:
        assert adopter.upload_id == up.upload_id
        with pytest.raises(UploadBusy):
            await up.complete([], extra={})
        await creator.__aexit__(None, None, None)  # even a clean exit leaves it alone
        await adopter.complete([], extra={})
    assert store.completed == [up.upload_id] and store.uploads == {}
