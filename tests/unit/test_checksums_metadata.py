"""Checksums combine across parts; metadata is carried over; secrets never logged."""

import json
import os
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from common import checksums, logs
from common.fingerprint import SOURCE_ETAG, newer_than, user_metadata
from common.jobs import CopyJob, DestinationRef, SourceRef
from common.logs import scrub_text
from common.settings import Endpoint
from worker.metadata import direct_copy_args, storage_class_for, write_args
from worker.source import SourceObject, source_object_from_head


@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=6))
def test_combined_part_checksums_equal_whole_object(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
    pieces = [data[a:b] for a, b in pairwise(points)] or [b""]
    for algorithm in ("CRC32", "CRC32C", "CRC64NVME"):
        whole = checksums.compute(algorithm, data)
        combined = checksums.combine(algorithm, [checksums.compute(algorithm, p)
                                                 for p in pieces])
        assert combined.value == whole.value
        wire = checksums.to_wire(algorithm, whole.value)
        assert checksums.from_wire(algorithm, wire) == whole.value


def test_composite_checksums_are_not_comparable() -> None:
    composite = checksums.from_response({"ChecksumCRC32": "AAAAAA==-3",
                                         "ChecksumType": "COMPOSITE"})
    assert composite is not None and not composite.comparable()
    full = checksums.from_response({"ChecksumCRC64NVME": "AAAAAAAAAAA=",
                                    "ChecksumType": "FULL_OBJECT"})
    assert full is not None and full.comparable()


def make_job(**dest: str) -> CopyJob:
    return CopyJob(source=SourceRef(endpoint="g", bucket="src", key="k"),
                   destination=DestinationRef(endpoint="c", bucket="dst", key="k", **dest))


def test_write_args_carry_headers_metadata_tags_and_fingerprint() -> None:
    src = SourceObject(size=3, etag='"e1"', headers={"ContentType": "text/plain",
                                                      "CacheControl": "max-age=60"},
                       metadata={"owner": "ops"}, storage_class="STANDARD_IA")
    args = write_args(src, make_job(), Endpoint(name="c"), tags={"a": "1", "b c": "d&e"})
    assert args["ContentType"] == "text/plain" and args["CacheControl"] == "max-age=60"
    assert user_metadata(args["Metadata"]) == {"owner": "ops"}
    assert args["Metadata"][SOURCE_ETAG] == "e1"
    assert args["Tagging"] == "a=1&b+c=d%26e"
    assert args["StorageClass"] == "STANDARD_IA"


def test_storage_class_mapping_and_kms_per_destination() -> None:
    ep = Endpoint(name="c", storage_class_map={"GLACIER_IR": "STANDARD"}, kms_key_id="key-1")
    assert storage_class_for("GLACIER_IR", make_job(), ep) is None
    assert storage_class_for("GLACIER_IR", make_job(storage_class="ONEZONE_IA"), ep) == \
        "ONEZONE_IA"
    args = write_args(SourceObject(size=1, etag='"e"'), make_job(), ep, tags=None)
    assert args["SSEKMSKeyId"] == "key-1" and args["ServerSideEncryption"] == "aws:kms"


def listed(size: int = 10, storage_class: str | None = "STANDARD", **options: object) -> CopyJob:
    opts: dict[str, object] = {"destination_absent": True}
    opts.update(options)
    return CopyJob.model_validate({
        "source": {"endpoint": "g", "bucket": "src", "key": "k", "size": size, "etag": '"e"',
                   "storage_class": storage_class},
        "destination": {"endpoint": "g", "bucket": "dst", "key": "k"}, "options": opts})


def test_direct_copy_keeps_the_listed_class_mapped_and_encrypts_per_destination() -> None:
    ep = Endpoint(name="g", storage_class_map={"GLACIER_IR": "STANDARD_IA"}, kms_key_id="k1")
    args = direct_copy_args(listed(storage_class="GLACIER_IR"), ep, with_tags=True)
    assert args == {"MetadataDirective": "COPY", "TaggingDirective": "COPY",
                    "StorageClass": "STANDARD_IA", "ServerSideEncryption": "aws:kms",
                    "SSEKMSKeyId": "k1"}
    plain = direct_copy_args(listed(), Endpoint(name="g"), with_tags=False)
    assert plain == {"MetadataDirective": "COPY", "TaggingDirective": "REPLACE"}


def test_archived_source_is_refused_at_head() -> None:
    import pytest

    from common.errors import SourceArchived
    head = {"ContentLength": 1, "ETag": '"e"', "StorageClass": "GLACIER"}
    with pytest.raises(SourceArchived):
        source_object_from_head(head)
    restored = dict(head, Restore='ongoing-request="false", expiry-date="x"')
    assert source_object_from_head(restored).size == 1


def test_sequencers_compare_after_padding() -> None:
    assert newer_than("0062E99A88DC407460", "62E99A88DC40745F")
    assert not newer_than("0055", "0056")
    assert newer_than(None, "0056") and newer_than("01", None)


def test_a_session_token_quoted_as_a_header_is_scrubbed() -> None:
    token = "FwoGZXIvYXdzE" + os.urandom(8).hex()
    for said in (f"x-amz-security-token: {token}; retry", f"'X-Amz-Security-Token': '{token}'",
                 f"?X-Amz-Security-Token={token}&x=1"):
        text = scrub_text(f"store said: {said}")
        assert token not in text and "REDACTED" in text


def test_presigned_queries_and_auth_headers_are_scrubbed() -> None:
    secret = os.urandom(8).hex()
    url = (f"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
           f"X-Amz-Credential=AKIA{secret}&X-Amz-Signature={secret}")
    text = scrub_text(f"GET {url} failed; headers={json.dumps({'Authorization': secret})}")
    assert secret not in text
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in text


# the patterns alone, without the shortcut for text holding neither "=" nor ":"
def _scrub_by_patterns(text: str) -> str:
    text = logs._PRESIGNED.sub(lambda m: f"{m.group(1)}=REDACTED", text)
    text = logs._TOKEN_HEADER.sub(lambda m: f"{m.group(1)}REDACTED", text)
    return logs._AUTH_HEADER.sub(lambda m: f"{m.group(1)}REDACTED", text)


_SCRUB_PIECES = st.sampled_from([
    "Authorization", "authorization", "X-Amz-Signature", "x-amz-credential", "Signature",
    "q-signature", "OSSAccessKeyId", "X-Amz-Security-Token", ";", "=", ":", " ", "'", '"', "&",
    "?", "}", ",", "abc", "é", "AKIA0123", "Bearer t0k3n"])


@given(st.lists(_SCRUB_PIECES | st.text(max_size=4), max_size=12).map("".join))
def test_scrubbing_is_the_patterns_whatever_the_text(text: str) -> None:
    assert scrub_text(text) == _scrub_by_patterns(text)


def test_logged_events_lose_secret_fields_and_signed_queries() -> None:
    event = {"event": "job_failed", "access_key": "AKIA123", "session_token": "tok",
             "url": "https://h/k?X-Amz-Signature=abc123&x=1", "job_id": "0f3a",
             "error": "Authorization: AWS4-HMAC-SHA256 Credential=AKIA/secret", "bytes": 5}
    got = logs._scrub(None, "info", dict(event))
    assert got["access_key"] == got["session_token"] == "REDACTED"
    assert got["url"] == "https://h/k?X-Amz-Signature=REDACTED&x=1"
    assert "AKIA" not in got["error"] and got["error"].startswith("Authorization: ")
    assert (got["event"], got["job_id"], got["bytes"]) == ("job_failed", "0f3a", 5)


def test_composite_checksum_matches_s3s_definition() -> None:
    # value seen from LocalStack for a CRC32 COMPOSITE upload of three known parts
    parts = [b"a" * 10, b"b" * 20, b"c"]
    crcs = [checksums.compute("CRC32", p) for p in parts]
    raw = b"".join(c.value.to_bytes(4, "big") for c in crcs)
    expected = checksums.to_wire("CRC32", checksums.compute("CRC32", raw).value) + "-3"
    assert checksums.composite("CRC32", crcs) == expected


def test_composite_source_is_checked_in_its_own_layout() -> None:
    import pytest

    from common.errors import SourceChanged
    from worker.transfer import check_source, part_checksums

    data = os.urandom(25)
    layout = [data[0:10], data[10:20], data[20:]]
    value = checksums.composite("CRC32", [checksums.compute("CRC32", p) for p in layout])
    src = SourceObject(size=25, etag='"e-3"', checksum=checksums.ObjectChecksum(
        "CRC32", value, False), part_size=10, parts_count=3)
    assert check_source(src, "CRC32", part_checksums(src, "CRC32", data))
    other = SourceObject(size=25, etag='"e-3"', checksum=src.checksum, part_size=5,
                         parts_count=5)
    assert not check_source(other, "CRC32", [checksums.compute("CRC32", data)])  # no layout
    with pytest.raises(SourceChanged):
        check_source(src, "CRC32", part_checksums(src, "CRC32", os.urandom(25)))
