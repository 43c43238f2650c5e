"""Routes: which source objects go where. Shared by the dispatcher and settings.

A route names one source (endpoint, bucket, optional prefix) and one or more destinations, each
on any endpoint, with its own prefix, storage class and KMS key. In the TOML file::

    [routes.photos]
    source = { endpoint = "global", bucket = "photos", prefix = "2024/" }
    include = ["**/*.jpg", "*.png"]      # globs on the key below the source prefix
    exclude = ["tmp/**"]
    min_size = 1
    max_size = 10_000_000_000
    modified_after = 2024-01-01T00:00:00Z
    sync_deletes = false                 # opt-in: deletes at the source delete copies

    [[routes.photos.destinations]]
    endpoint = "china"
    bucket = "photos-cn"
    prefix = "mirror/2024/"              # replaces the source prefix
    storage_class = "STANDARD_IA"
    kms_key_id = "arn:aws-cn:kms:..."

``[[routes]]`` with a ``name`` field is accepted too. Key mapping is prefix replacement: a
source key ``<source.prefix><rest>`` becomes ``<destination.prefix><rest>``; because both sides
share their prefix, the mapping keeps S3's UTF-8 byte order, which the backfill merge relies on.

Globs: ``*`` and ``?`` stay within one path segment, ``**`` crosses ``/``, ``[abc]`` is a
class. A pattern without ``/`` matches the last segment (``*.tmp`` matches ``a/b/x.tmp``).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.errors import ConfigError
from common.limits import MAX_KEY_BYTES

_FROZEN = ConfigDict(frozen=True, extra="forbid")
# Lenient on purpose: S3-compatible stores (and legacy AWS buckets) allow capitals and "_".
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,61}[A-Za-z0-9]$")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a key glob; raise ValueError naming what is wrong with it."""
    if not pattern:
        raise ValueError("empty glob pattern")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" also matches zero directories
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError(f"unclosed '[' in glob {pattern!r}")
            body = pattern[i + 1:end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace(r"\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    anchored = "".join(out)
    if "/" not in pattern:
        return re.compile(f"(?:.*/)?{anchored}", re.DOTALL)
    return re.compile(anchored.lstrip("/") if pattern.startswith("/") else anchored, re.DOTALL)


def _check_bucket(value: str) -> str:
    if not _BUCKET.match(value):
        raise ValueError(f"{value!r} is not a valid bucket name (3-63 characters: letters, "
                         "digits, '.', '-', '_')")
    return value


def _check_prefix(value: str) -> str:
    if len(value.encode("utf-8")) >= MAX_KEY_BYTES:
        raise ValueError(f"prefix is longer than {MAX_KEY_BYTES - 1} bytes")
    return value


class SourceSpec(BaseModel):
    model_config = _FROZEN
    endpoint: str = Field(min_length=1)
    bucket: str
    prefix: str = ""

    _bucket = field_validator("bucket")(_check_bucket)
    _prefix = field_validator("prefix")(_check_prefix)


class DestinationSpec(BaseModel):
    model_config = _FROZEN
    endpoint: str = Field(min_length=1)
    bucket: str
    prefix: str = ""
    storage_class: str | None = None
    kms_key_id: str | None = None

    _bucket = field_validator("bucket")(_check_bucket)
    _prefix = field_validator("prefix")(_check_prefix)

    @property
    def label(self) -> str:
        return f"{self.endpoint}:{self.bucket}/{self.prefix}"


class Route(BaseModel):
    """One source fanned out to N destinations, with filters. Frozen, validated at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9_.\-]*$")
    source: SourceSpec
    destinations: list[DestinationSpec] = Field(min_length=1)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    min_size: int | None = Field(default=None, ge=0)
    max_size: int | None = Field(default=None, ge=0)
    modified_after: datetime | None = None
    sync_deletes: bool = False

    @field_validator("include", "exclude")
    @classmethod
    def _globs_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            glob_to_regex(pattern)
        return patterns

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        if (self.min_size is not None and self.max_size is not None
                and self.min_size > self.max_size):
            raise ValueError(f"min_size ({self.min_size}) is larger than max_size "
                             f"({self.max_size})")
        seen: set[tuple[str, str, str]] = set()
        for i, dest in enumerate(self.destinations):
            where = (dest.endpoint, dest.bucket, dest.prefix)
            if where in seen:
                raise ValueError(f"destinations.{i}: {dest.label} is listed twice")
            seen.add(where)
            if (dest.endpoint, dest.bucket) == (self.source.endpoint, self.source.bucket) and (
                    dest.prefix.startswith(self.source.prefix)
                    or self.source.prefix.startswith(dest.prefix)):
                raise ValueError(f"destinations.{i}: {dest.label} overlaps the source "
                                 "(copies would be copied again)")
        if self.modified_after is not None and self.modified_after.tzinfo is None:
            raise ValueError("modified_after needs a time zone, e.g. 2024-01-01T00:00:00Z")
        return self

    @cached_property
    def _include(self) -> tuple[re.Pattern[str], ...]:
        return tuple(glob_to_regex(p) for p in self.include)

    @cached_property
    def _exclude(self) -> tuple[re.Pattern[str], ...]:
        return tuple(glob_to_regex(p) for p in self.exclude)

    # -- matching -----------------------------------------------------------------------

    def relative(self, key: str) -> str | None:
        """The key below the source prefix, or None when the key is not in this route."""
        return key[len(self.source.prefix):] if key.startswith(self.source.prefix) else None

    def key_in_scope(self, relative_key: str) -> bool:
        """Include/exclude globs, on the key below the source prefix."""
        if self._include and not any(p.fullmatch(relative_key) for p in self._include):
            return False
        return not any(p.fullmatch(relative_key) for p in self._exclude)

    def object_wanted(self, *, size: int | None, last_modified: datetime | None) -> bool:
        """Size and age filters; unknown values pass (an event may not carry them)."""
        if size is not None:
            if self.min_size is not None and size < self.min_size:
                return False
            if self.max_size is not None and size > self.max_size:
                return False
        return not (self.modified_after is not None and last_modified is not None
                    and last_modified <= self.modified_after)

    def accepts(self, key: str, *, size: int | None = None,
                last_modified: datetime | None = None) -> bool:
        rel = self.relative(key)
        return (rel is not None and rel != "" and self.key_in_scope(rel)
                and self.object_wanted(size=size, last_modified=last_modified))

    def destination_key(self, dest: DestinationSpec, key: str) -> str:
        rel = self.relative(key)
        if rel is None:
            raise ValueError(f"key {key!r} is not below the source prefix {self.source.prefix!r}")
        return dest.prefix + rel

    def destination_keys(self, key: str) -> list[tuple[DestinationSpec, str]]:
        """Every (destination, key) a source key maps to; keys too long for S3 are left out."""
        out = []
        for dest in self.destinations:
            dkey = self.destination_key(dest, key)
            if 0 < len(dkey.encode("utf-8")) <= MAX_KEY_BYTES:
                out.append((dest, dkey))
        return out


def routes_from_toml(data: Any) -> Any:
    """``[routes.NAME]`` tables or a ``[[routes]]`` array -> {name: table} with names set.

    Anything malformed is passed through for pydantic to reject with the field named.
    """
    if isinstance(data, list):
        out: dict[str, Any] = {}
        for i, table in enumerate(data):
            if not isinstance(table, dict) or not table.get("name"):
                raise ConfigError(f"routes.{i}.name: every [[routes]] entry needs a name")
            name = str(table["name"])
            if name in out:
                raise ConfigError(f"routes.{i}.name: route {name!r} is defined twice")
            out[name] = table
        return out
    if isinstance(data, dict):
        named: dict[str, Any] = {}
        for name, table in data.items():
            if isinstance(table, dict):
                if table.get("name", name) != name:
                    raise ConfigError(f"routes.{name}.name: {table['name']!r} differs from the "
                                      f"table name {name!r}")
                table = {**table, "name": name}
            named[name] = table
        return named
    return data
