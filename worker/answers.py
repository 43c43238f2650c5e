"""S3's successful answers to the wire's calls, read as botocore reads them, at a tenth of
the CPU.

botocore's response parser walks every member of the output shape through a case-insensitive
header dict and parses each date with dateutil: about 0.4 ms per answer, more than building
and signing the request. :class:`AnswerReader` is made once per operation from botocore's own
output shape (which header is which member, of which type) and reads one plain dict of
lower-cased headers. Dates in the usual forms (RFC 1123 in headers, ISO 8601 in XML) are read
by the standard library; anything else goes to botocore's parser of dates. Error answers are
not read here: the wire hands them to botocore's parser (they are rare).

``tests/unit/test_wire.py`` checks the result equals botocore's for every header S3 sends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from xml.etree import ElementTree

from botocore.utils import parse_timestamp


def read_timestamp(value: str) -> datetime:
    """A date from a header or an XML answer, as an aware datetime (raises ValueError)."""
    try:
        if value[:1].isdigit():  # 2026-11-22T01:02:03.000Z
            parsed = datetime.fromisoformat(value)
        else:  # Sun, 22 Nov 2026 01:02:03 GMT
            parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
    except (ValueError, TypeError, IndexError):
        pass
    result: datetime = parse_timestamp(value)
    return result


def _convert(kind: str, value: str) -> Any:
    if kind in {"integer", "long"}:
        return int(value)
    if kind == "boolean":
        return value == "true"
    if kind == "timestamp":
        return read_timestamp(value)
    return value


@dataclass(frozen=True)
class _Field:
    member: str
    name: str  # lower-cased header name, or XML tag
    kind: str


class AnswerReader:
    """Reads the answers of one operation (headers, maps of prefixed headers, an XML or a
    streaming payload)."""

    def __init__(self, output_shape: Any) -> None:
        self._headers: list[_Field] = []
        self._prefixed: list[_Field] = []
        self._payload: str | None = output_shape.serialization.get("payload")
        self._xml: dict[str, _Field] = {}
        self._expires = False
        for member, shape in output_shape.members.items():
            ser = shape.serialization
            if ser.get("location") == "header":
                if member == "Expires":
                    self._expires = True  # botocore's customisation: ExpiresString too
                self._headers.append(_Field(member, ser.get("name", member).lower(),
                                            shape.type_name))
            elif ser.get("location") == "headers":
                self._prefixed.append(_Field(member, ser.get("name", "").lower(), "map"))
        if self._payload is not None:
            payload = output_shape.members[self._payload]
            for member, shape in getattr(payload, "members", {}).items():
                name = shape.serialization.get("name", member)
                self._xml[name] = _Field(member, name, shape.type_name)
        self.streaming = self._payload is not None and not self._xml

    def read(self, status: int, headers: Mapping[str, str], body: Any) -> dict[str, Any]:
        """The parsed answer; ``body`` is the stream (streaming payload), the bytes, or the
        XML payload already parsed."""
        parsed: dict[str, Any] = {}
        for field in self._headers:
            value = headers.get(field.name)
            if value is None:
                continue
            if field.member == "Expires":
                parsed["ExpiresString"] = value
                # botocore drops an unreadable Expires and keeps the string
                with contextlib.suppress(ValueError, OverflowError, RuntimeError):
                    parsed["Expires"] = read_timestamp(value)
                continue
            parsed[field.member] = _convert(field.kind, value)
        for field in self._prefixed:
            n = len(field.name)
            parsed[field.member] = {k[n:]: v for k, v in headers.items()
                                    if k.startswith(field.name)}
        if self._payload is not None:
            parsed[self._payload] = body if self.streaming else self._read_xml(body)
        meta: dict[str, Any] = {}
        if "x-amz-request-id" in headers:
            meta["RequestId"] = headers["x-amz-request-id"]
            meta["HostId"] = headers.get("x-amz-id-2", "")
        meta.update(HTTPStatusCode=status, HTTPHeaders=dict(headers), RetryAttempts=0)
        parsed["ResponseMetadata"] = meta
        return parsed

    def _read_xml(self, body: bytes | ElementTree.Element) -> dict[str, Any]:
        if isinstance(body, ElementTree.Element):
            root = body  # already parsed by the caller
        elif not body:
            return {}
        else:
            root = ElementTree.fromstring(body)
        out: dict[str, Any] = {}
        for child in root:
            tag = child.tag.rsplit("}", 1)[-1]
            field = self._xml.get(tag)
            if field is not None:
                out[field.member] = _convert(field.kind, child.text or "")
        return out
