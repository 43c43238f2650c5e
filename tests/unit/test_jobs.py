"""Job messages: strict validation, every rejection named."""

import json

import pytest

from common.errors import BadMessage
from common.jobs import MAX_JOB_BYTES, CopyJob, DeleteJob, DestinationRef, SourceRef, decode, encode


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
    ("x" * (MAX_JOB_BYTES + 1), "oversized"),
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
