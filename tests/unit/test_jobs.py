"""Job messages: strict validation, every rejection named."""

import json

import pytest

from common.errors import BadMessage
from common.jobs import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_JOBS,
    MAX_JOB_BYTES,
    Bundle,
    CopyJob,
    DeleteJob,
    DestinationRef,
    SourceRef,
    decode,
    decode_item,
    encode,
    encode_bundle,
    item_body,
    jobs_of,
)


def job(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1, "kind": "copy", "id": "j1",
        "source": {"endpoint": "global", "bucket": "src-bucket", "key": "a b+c%d/é.txt",
                   "size": 3, "etag": '"abc"'},
        "destination": {"endpoint": "china", "bucket": "dst-bucket", "key": "a b+c%d/é.txt"},
    }
    body.update(over)
    return body


def test_round_trip_keeps_awkward_keys() -> None:
    original = CopyJob(source=SourceRef(endpoint="g", bucket="bkt", key="sp ace+plus%25/ü" * 3),
                       destination=DestinationRef(endpoint="c", bucket="bkt2", key="x y"))
    assert decode(encode(original)) == original


def test_delete_job_decodes() -> None:
    d = DeleteJob(destination=DestinationRef(endpoint="c", bucket="bkt", key="k"),
                  sequencer="0055")
    assert decode(encode(d)) == d


@pytest.mark.parametrize(("body", "reason"), [
    ("not json", "not_json"),
    ("[1, 2]", "not_an_object"),
    (json.dumps(job(v=2)), "unknown_version"),
    (json.dumps(job(v=None)), "unknown_version"),
    (json.dumps({k: v for k, v in job().items() if k != "v"}), "unknown_version"),
    (json.dumps(job(kind="move")), "invalid_job"),
    (json.dumps(job(extra_field=1)), "invalid_job"),
    (json.dumps(job(source={"endpoint": "g", "bucket": "bkt"})), "invalid_job"),
    (json.dumps(job(source={"endpoint": "g", "bucket": "bkt", "key": "k", "size": -1})),
     "invalid_job"),
    (json.dumps(job(destination={"endpoint": "c", "bucket": "bkt", "key": "k" * 1025})),
     "invalid_job"),
    (json.dumps(job(destination={"endpoint": "c", "bucket": "bkt", "key": ""})), "invalid_job"),
    ("x" * (MAX_BUNDLE_BYTES + 1), "oversized"),
    (json.dumps(job(options={"sequencer": "9" * MAX_JOB_BYTES})), "oversized"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "jobs": []}), "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "jobs": {"a": 1}}), "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "jobs": [{}] * (MAX_BUNDLE_JOBS + 1)}),
     "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "attempts": -1, "jobs": [job()]}),
     "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "attempts": True, "jobs": [job()]}),
     "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "", "jobs": [job()]}), "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "jobs": [job()], "x": 1}), "invalid_job"),
    (json.dumps({"v": 2, "kind": "bundle", "id": "b", "jobs": [job()]}), "unknown_version"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "limit": 0, "jobs": [job()]}),
     "invalid_job"),
    (json.dumps({"v": 1, "kind": "bundle", "id": "b", "limit": "9", "jobs": [job()]}),
     "invalid_job"),
])
def test_malformed_messages_are_rejected_with_a_reason(body: str, reason: str) -> None:
    with pytest.raises(BadMessage) as info:
        decode(body)
    assert info.value.reason == reason


def test_1024_byte_key_is_accepted_1025_is_not() -> None:
    key = "é" * 512  # 1,024 bytes in UTF-8
    assert len(key.encode()) == 1024
    parsed = decode(json.dumps(job(destination={"endpoint": "c", "bucket": "bkt", "key": key})))
    assert isinstance(parsed, CopyJob) and parsed.destination.key == key


def test_error_names_the_bad_field() -> None:
    with pytest.raises(BadMessage, match=r"source\.size"):
        decode(json.dumps(job(source={"endpoint": "g", "bucket": "bkt", "key": "k",
                                      "size": "big"})))


def test_a_bundle_carries_its_jobs_and_their_attempts() -> None:
    copy = CopyJob(source=SourceRef(endpoint="g", bucket="bkt", key="sp ace+%25/ü", size=0),
                   destination=DestinationRef(endpoint="c", bucket="bkt2", key="sp ace+%25/ü"))
    delete = DeleteJob(destination=DestinationRef(endpoint="c", bucket="bkt2", key="gone"))

    body = encode_bundle([encode(copy), encode(delete)], bundle_id="b1", attempts=2, limit=100)

    message = decode(body)
    assert isinstance(message, Bundle)
    assert (message.id, message.attempts, message.limit, len(message.jobs)) == ("b1", 2, 100, 2)
    assert jobs_of(body) == [copy, delete]
    # an entry on its own is a whole job message again (what the dead-letter queue gets)
    assert decode(item_body(message.jobs[0])) == copy


def test_one_bad_entry_does_not_spoil_the_rest_of_its_bundle() -> None:
    body = json.dumps({"v": 1, "kind": "bundle", "id": "b", "jobs": [
        job(), job(kind="move"), "not a job", {**job(), "kind": "bundle"}]})

    message = decode(body)  # the envelope is fine

    assert isinstance(message, Bundle)
    assert isinstance(decode_item(message.jobs[0]), CopyJob)
    reasons = []
    for item in message.jobs[1:]:
        with pytest.raises(BadMessage) as info:
            decode_item(item)
        reasons.append(info.value.reason)
    assert reasons == ["invalid_job", "not_an_object", "invalid_job"]  # no bundle in a bundle
    with pytest.raises(BadMessage):
        jobs_of(body)


def test_encode_bundle_refuses_an_empty_or_overfull_bundle() -> None:
    with pytest.raises(ValueError):
        encode_bundle([])
    with pytest.raises(ValueError):
        encode_bundle([encode(CopyJob(**decode_item(job()).model_dump()))] * (MAX_BUNDLE_JOBS + 1))
