"""ListObjectsV2 as an async stream of :class:`Entry`, one page ahead at most.

The next page is requested while the current one is consumed, so listing and diffing overlap;
memory holds two pages (2,000 keys) whatever the bucket size. A listing may ask for a small
first page (``first_page``): the backfill's unsharded diff does, so its first jobs leave once
100 keys are in, not 1,000 (LocalStack answers 100 keys in ~15 ms, 1,000 in 95-170 ms). It
costs one request more per listing, which is why sharded diffs, many short listings, do not.
Pages are parsed by :mod:`dispatcher.fastlist` (botocore's answer for ~1/7 of its CPU).
Keys are yielded relative to a base prefix. A key the store returns outside the requested
prefix is dropped and logged, never passed on: the delete path relies on every destination
key being below its prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from common.logs import get_logger
from common.retry import RetryPolicy, retrying
from common.s3errors import translated
from dispatcher import fastlist
from dispatcher.diff import Entry

log = get_logger(__name__)
FIRST_PAGE_KEYS = 100  # a quick first page, where one is asked for


async def _page(client: Any, policy: RetryPolicy, **kwargs: Any) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        with translated("ListObjectsV2", kwargs["Bucket"]):
            answer: dict[str, Any] = await client.list_objects_v2(**kwargs)
        return answer
    return await retrying(call, policy)


async def pages(client: Any, *, bucket: str, prefix: str, delimiter: str | None = None,
                page_size: int = 1000, first_page: int | None = None,
                policy: RetryPolicy | None = None) -> AsyncIterator[dict[str, Any]]:
    """Every ListObjectsV2 page, the next one fetched while the caller handles this one."""
    policy = policy or RetryPolicy()
    fastlist.install(client)
    size = min(page_size, first_page or page_size)
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    pending = asyncio.ensure_future(_page(client, policy, **kwargs, MaxKeys=size))
    try:
        while True:
            page = await pending
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token:
                pending = asyncio.ensure_future(
                    _page(client, policy, **kwargs, MaxKeys=page_size,
                          ContinuationToken=token))
            yield page
            if not token:
                return
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


async def list_entries(client: Any, *, bucket: str, prefix: str, base: str | None = None,
                       delimiter: str | None = None, page_size: int = 1000,
                       first_page: int | None = None,
                       policy: RetryPolicy | None = None) -> AsyncIterator[Entry]:
    """Objects under ``prefix`` as entries keyed relative to ``base`` (default: ``prefix``).

    The key equal to ``base`` itself (a "folder" marker) has no relative name and is skipped.
    """
    base = prefix if base is None else base
    async for page in pages(client, bucket=bucket, prefix=prefix, delimiter=delimiter,
                            page_size=page_size, first_page=first_page, policy=policy):
        for obj in page.get("Contents", ()):
            key: str = obj["Key"]
            if not key.startswith(prefix):
                log.warning("listing_key_outside_prefix", bucket=bucket, prefix=prefix)
                continue
            if key == base:
                continue
            modified = obj.get("LastModified")
            yield Entry(key=key[len(base):], size=int(obj.get("Size", 0)),
                        etag=str(obj.get("ETag", "")).strip('"'),
                        last_modified=modified if isinstance(modified, datetime) else None,
                        storage_class=str(obj.get("StorageClass") or ""))


async def common_prefixes(client: Any, *, bucket: str, prefix: str,
                          policy: RetryPolicy | None = None) -> AsyncIterator[str]:
    """The first-level "directories" below ``prefix``, relative to it, in listing order."""
    async for page in pages(client, bucket=bucket, prefix=prefix, delimiter="/",
                            policy=policy):
        for entry in page.get("CommonPrefixes", ()):
            name: str = entry["Prefix"]
            if name.startswith(prefix):
                yield name[len(prefix):]
