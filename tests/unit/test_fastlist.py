"""ListObjectsV2 pages read by :mod:`dispatcher.fastlist` give botocore's answer, or are left
to botocore whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.parsers import create_parser

from dispatcher import fastlist

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
OPERATION = botocore.session.get_session().get_service_model("s3").operation_model(
    "ListObjectsV2")
SHAPE = OPERATION.output_shape


def entry(key: str, *, size: int = 5, modified: str = "2026-11-22T10:00:00.000Z",
          etag: str = '"0123456789abcdef0123456789abcdef"', extra: str = "") -> str:
    return (f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}</LastModified>"
            f"<ETag>{escape(etag)}</ETag><Size>{size}</Size>{extra}"
            f"<StorageClass>STANDARD</StorageClass></Contents>")


def page(*entries: str, ns: str = NS, tail: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult {ns}>'
            f"<Name>bucket</Name><Prefix>data/</Prefix><KeyCount>{len(entries)}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType>"
            f"<IsTruncated>true</IsTruncated>{''.join(entries)}{tail}"
            f"<NextContinuationToken>tok+/=</NextContinuationToken>"
            f"</ListBucketResult>").encode()


def botocore_parse(body: bytes, status: int = 200) -> dict[str, Any]:
    parsed: dict[str, Any] = create_parser("rest-xml").parse(
        {"status_code": status, "headers": {}, "body": body}, SHAPE)
    return parsed


def hooked_parse(body: bytes, status: int = 200) -> tuple[dict[str, Any], bool]:
    """What the client returns with the hook installed (the endpoint's order), and whether
    the fast path took the entries."""
    response = {"status_code": status, "headers": {}, "body": body}
    custom: dict[str, Any] = {}
    fastlist.before_parse(response_dict=response, customized_response_dict=custom,
                          operation_model=OPERATION)
    parsed: dict[str, Any] = create_parser("rest-xml").parse(response, SHAPE)
    parsed.update(custom)
    return parsed, "Contents" in custom


def without_metadata(parsed: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parsed.items() if k != "ResponseMetadata"}


AWKWARD = ["space name.txt", "plus%2Bsign.txt", "percent%2520.txt", "%E4%B8%AD%E6%96%87.txt",
           "a%26b%3Cc%3E.txt", "k" * 1024, "quote%22and%27.txt", ""]


def test_entries_are_botocore_s_own_values_for_awkward_keys_sizes_and_times() -> None:
    entries = [entry(k, size=i * 1_000_003) for i, k in enumerate(AWKWARD)]
    entries += [entry("zero", size=0), entry("frac", modified="2026-11-22T10:00:00.5Z"),
                entry("whole", modified="2026-01-01T00:00:00Z"), entry("no-etag", etag=""),
                entry("sums", extra="<ChecksumAlgorithm>CRC32</ChecksumAlgorithm>"
                                    "<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>"
                                    "<ChecksumType>FULL_OBJECT</ChecksumType>"),
                entry("big", size=5 * 1024 ** 4)]
    body = page(*entries, tail="<CommonPrefixes><Prefix>data/dir/</Prefix></CommonPrefixes>")
    expected = botocore_parse(body)
    got, fast = hooked_parse(body)
    assert fast
    assert without_metadata(got) == without_metadata(expected)
    assert [c["Key"] for c in got["Contents"]] == [
        *AWKWARD, "zero", "frac", "whole", "no-etag", "sums", "big"]
    assert got["Contents"][-2]["ChecksumAlgorithm"] == ["CRC32", "CRC64NVME"]
    assert got["IsTruncated"] is True and got["NextContinuationToken"] == "tok+/="
    assert got["CommonPrefixes"] == [{"Prefix": "data/dir/"}]
    # the same instant as botocore's (whose tzinfo object depends on the machine's zone)
    for mine, theirs in zip(got["Contents"], expected["Contents"], strict=True):
        assert mine["LastModified"].utcoffset() == timedelta(0)
        assert mine["LastModified"] == theirs["LastModified"]
    assert got["Contents"][-5]["LastModified"] == datetime(2026, 11, 22, 10, 0, 0, 500000,
                                                           tzinfo=UTC)


def test_a_page_without_a_namespace_or_without_entries_reads_the_same() -> None:
    body = page(entry("a"), entry("b"), ns="")
    got, fast = hooked_parse(body)
    assert fast and without_metadata(got) == without_metadata(botocore_parse(body))
    empty = page()
    got, fast = hooked_parse(empty)
    assert not fast and without_metadata(got) == without_metadata(botocore_parse(empty))
    assert "Contents" not in got


def test_elements_botocore_does_not_model_are_skipped_as_botocore_skips_them() -> None:
    """S3-compatible stores add their own (Alibaba OSS: <Type>); botocore ignores them."""
    body = page(entry("a", extra="<Type>Normal</Type>"), entry("b", extra="<Tier>hot</Tier>"))
    got, fast = hooked_parse(body)
    assert fast and without_metadata(got) == without_metadata(botocore_parse(body))
    assert "Type" not in got["Contents"][0]
    # without the model to tell, an unknown element sends the page to botocore
    response = {"status_code": 200, "headers": {}, "body": body}
    custom: dict[str, Any] = {}
    fastlist.before_parse(response_dict=response, customized_response_dict=custom)
    assert custom == {}


@pytest.mark.parametrize("body,status", [
    (page(entry("a", extra="<Owner><ID>x</ID><DisplayName>y</DisplayName></Owner>")), 200),
    (page(entry("a", extra="<RestoreStatus><IsRestoreInProgress>true</IsRestoreInProgress>"
                           "</RestoreStatus>")), 200),
    (page(entry("a", modified="Sun, 22 Nov 2026 10:00:00 GMT")), 200),
    (page(entry("a")).replace(b"<Size>5</Size>", b"<Size>5.0</Size>"), 200),
    (page(entry("a")).replace(b"</Contents>", b"</Contents><!-- <Contents></Contents> -->"),
     200),
], ids=["owner", "restore-status", "rfc822-time", "odd-size", "text-and-tree-disagree"])
def test_what_the_fast_path_does_not_know_is_left_to_botocore_whole(body: bytes,
                                                                    status: int) -> None:
    response = {"status_code": status, "headers": {}, "body": body}
    custom: dict[str, Any] = {}
    fastlist.before_parse(response_dict=response, customized_response_dict=custom,
                          operation_model=OPERATION)
    assert custom == {} and response["body"] is body


def test_errors_and_unreadable_xml_are_left_to_botocore() -> None:
    error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code>'
             b"<Message>The specified bucket does not exist</Message></Error>")
    for body, status in [(error, 404), (page(entry("a"))[:-20], 200),
                         (page(entry("a")) + b"<Contents>", 200)]:
        response = {"status_code": status, "headers": {}, "body": body}
        custom: dict[str, Any] = {}
        fastlist.before_parse(response_dict=response, customized_response_dict=custom)
        assert custom == {} and response["body"] is body


def test_install_registers_once_on_the_client_s_own_events() -> None:
    session = botocore.session.get_session()
    client = session.create_client("s3", region_name="us-east-1", aws_access_key_id="a",
                                   aws_secret_access_key="b")
    other = session.create_client("s3", region_name="us-east-1", aws_access_key_id="a",
                                  aws_secret_access_key="b")
    fastlist.install(client)
    fastlist.install(client)
    operation = client.meta.service_model.operation_model("ListObjectsV2")
    custom: dict[str, Any] = {}
    responses = client.meta.events.emit(
        fastlist.EVENT, response_dict={"status_code": 200, "headers": {},
                                       "body": page(entry("a"))},
        customized_response_dict=custom, operation_model=operation)
    assert [r[0] for r in responses].count(fastlist.before_parse) == 1
    assert [c["Key"] for c in custom["Contents"]] == ["a"]
    custom = {}
    other.meta.events.emit(fastlist.EVENT, response_dict={"status_code": 200, "headers": {},
                                                          "body": page(entry("a"))},
                           customized_response_dict=custom, operation_model=operation)
    assert custom == {}  # another client is not touched
