"""Backfill end to end: dispatcher -> SQS -> worker, fan-out to two endpoints, re-runs idle,
``--delete`` stays inside the destination prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from common.limits import MIB
from common.settings import Settings, load_settings
from dispatcher.backfill import BackfillOptions
from dispatcher.cli import run_backfill
from dispatcher.diff import Mode
from s3ferry.localbed import write_private
from tests.integration.harness import (
    RCLONE_DROPS,
    assert_same_object,
    route_toml,
    run_until_idle,
)

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]

AWKWARD = ["space name.txt", "plus+sign.txt", "percent%20.txt", "unicode/\u4e2d\u6587.txt",
           "emoji/\U0001f600.bin", "deep/a/b/c/d.txt", "tilde~and=equals&amp.txt"]


def with_routes(config_path: Path, tmp_path: Path, routes_toml: str) -> Path:
    path = tmp_path / "s3ferry.toml"
    write_private(path, config_path.read_text() + "\n" + routes_toml)
    return path


def settings_for(config: Path, queues: Any) -> Settings:
    return load_settings(config, queue_url=queues.queue_url, dlq_url=queues.dlq_url)


def put_many(client: Any, bucket: str, objects: dict[str, bytes], threads: int = 16) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                      objects.items()))


def listing(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def fanout_toml(src: str, china: str, rclone: str) -> str:
    return f"""
[routes.fan]
source = {{ endpoint = "global", bucket = "{src}", prefix = "data/" }}
exclude = ["*.tmp"]

[[routes.fan.destinations]]
endpoint = "china"
bucket = "{china}"
prefix = "mirror/data/"

[[routes.fan.destinations]]
endpoint = "rclone"
bucket = "{rclone}"
"""


@pytest.mark.timeout(600)
async def test_backfill_fans_out_to_two_endpoints_and_a_rerun_enqueues_nothing(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, china, rclone = make_bucket("global"), make_bucket("china"), make_bucket("rclone")
    # Spread over 50 directories: rclone serve s3 stores them as real directories.
    objects = {f"data/d{i % 50:02d}/obj-{i:04d}.bin": os.urandom(i % 97) for i in range(150)}
    objects |= {f"data/{k}": k.encode() for k in AWKWARD}
    put_many(s3_clients["global"], src, objects
             | {"other/outside.txt": b"x", "data/skip-me.tmp": b"tmp"})
    config = with_routes(config_path, tmp_path, fanout_toml(src, china, rclone))
    settings = settings_for(config, queues)
    routes = list(settings.routes.values())

    dry = await run_backfill(settings, routes, BackfillOptions(page_size=50), dry_run=True)
    assert dry["would_enqueue"]["jobs"] == {"copy": 2 * len(objects)}
    assert sqs_global.get_queue_attributes(
        QueueUrl=queues.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"] == "0"

    first = await run_backfill(settings, routes, BackfillOptions(page_size=50))
    assert first["enqueued"]["jobs"] == {"copy": 2 * len(objects)}
    assert first["enqueued"]["bytes"] == 2 * sum(len(b) for b in objects.values())
    summary = await run_until_idle(config, queues, max_jobs=16)
    assert summary.results["copied"] == 2 * len(objects)

    rel = {k.removeprefix("data/"): len(v) for k, v in objects.items()}
    assert listing(s3_clients["china"], china) == {f"mirror/data/{k}": n for k, n in rel.items()}
    assert listing(s3_clients["rclone"], rclone) == rel
    for key in AWKWARD:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], china,
                           f"data/{key}", f"mirror/data/{key}")
        assert_same_object(s3_clients["global"], src, s3_clients["rclone"], rclone,
                           f"data/{key}", key, drops=RCLONE_DROPS)

    for mode in Mode.SIZE, Mode.CHECKSUM:
        again = await run_backfill(settings, routes, BackfillOptions(mode=mode, shards=3))
        assert again["enqueued"]["jobs"] == {}, (mode, again["decisions"])
    assert again["decisions"] == {"skip:same_fingerprint": 2 * len(objects),
                                  "skip:filtered": 2}


async def test_changed_source_is_copied_again_in_checksum_mode_but_not_in_size_mode(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any]) -> None:
    src, china, rclone = make_bucket("global"), make_bucket("china"), make_bucket("rclone")
    put_many(s3_clients["global"], src, {"data/a.txt": b"aaaa", "data/b.txt": b"bbbb"})
    config = with_routes(config_path, tmp_path, fanout_toml(src, china, rclone))
    settings = settings_for(config, queues)
    routes = list(settings.routes.values())
    await run_backfill(settings, routes, BackfillOptions())
    await run_until_idle(config, queues)
    s3_clients["global"].put_object(Bucket=src, Key="data/a.txt", Body=b"AAAA")  # same size

    size = await run_backfill(settings, routes, BackfillOptions(mode=Mode.SIZE), dry_run=True)
    checksum = await run_backfill(settings, routes, BackfillOptions(mode=Mode.CHECKSUM))

    assert size["would_enqueue"]["jobs"] == {}
    assert checksum["enqueued"]["jobs"] == {"copy": 2}
    assert {s["source"].rsplit("/", 1)[1] for s in checksum["sample"]} == {"a.txt"}
    await run_until_idle(config, queues)
    assert s3_clients["rclone"].get_object(Bucket=rclone, Key="a.txt")["Body"].read() == b"AAAA"


async def test_a_destination_whose_bytes_are_wrong_is_found_and_healed_by_a_content_compare(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any]) -> None:
    """A copy that went bad behind s3ferry's back (its size and fingerprint metadata still
    say "copied", as a store that lost the bytes of a completed upload would): size and
    checksum compares trust it; ``--compare content`` reads it back and copies it again."""
    src, dst = make_bucket("global"), make_bucket("china")
    good = {"data/one.bin": os.urandom(6 * MIB), "data/two.txt": b"intact"}
    put_many(s3_clients["global"], src, good)
    config = with_routes(config_path, tmp_path, route_toml("r", src, dst, prefix="data/"))
    settings = settings_for(config, queues)
    routes = list(settings.routes.values())
    await run_backfill(settings, routes, BackfillOptions())
    await run_until_idle(config, queues)
    copied = s3_clients["china"].head_object(Bucket=dst, Key="one.bin")
    s3_clients["china"].put_object(Bucket=dst, Key="one.bin", Body=os.urandom(6 * MIB),
                                   Metadata=copied["Metadata"])  # same size, same fingerprint

    for trusting in (Mode.SIZE, Mode.CHECKSUM):
        looked = await run_backfill(settings, routes, BackfillOptions(mode=trusting),
                                    dry_run=True)
        assert looked["would_enqueue"]["jobs"] == {}
    content = await run_backfill(settings, routes, BackfillOptions(mode=Mode.CONTENT))
    assert content["enqueued"]["jobs"] == {"copy": 2}
    summary = await run_until_idle(config, queues, part_size=5 * MIB)

    assert summary.results == {"copied": 1, "skipped": 1}
    assert summary.skipped == {"verified_content": 1}
    for key in good:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key,
                           key.removeprefix("data/"))


async def test_delete_never_touches_keys_outside_the_destination_prefix_or_globs(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any]) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    put_many(s3_clients["global"], src, {"data/keep.txt": b"k"})
    outside = ["mirror", "mirrorx/a.txt", "other/b.txt", "mirro/c.txt", "mirror/data",
               "mirror/data.txt"]
    inside_extra = ["mirror/data/gone.txt", "mirror/data/deep/gone too.txt"]
    protected = ["mirror/data/scratch.tmp"]  # excluded by the route's glob: not ours to delete
    put_many(s3_clients["china"], dst, {k: b"z" for k in outside + inside_extra + protected})
    config = with_routes(config_path, tmp_path, f"""
[routes.del]
source = {{ endpoint = "global", bucket = "{src}", prefix = "data/" }}
exclude = ["*.tmp"]
sync_deletes = true
destinations = [{{ endpoint = "china", bucket = "{dst}", prefix = "mirror/data/" }}]
""")
    settings = settings_for(config, queues)
    routes = list(settings.routes.values())

    without = await run_backfill(settings, routes, BackfillOptions(), dry_run=True)
    assert without["would_enqueue"]["jobs"] == {"copy": 1}
    assert without["decisions"]["skip:delete_disabled"] == 3

    result = await run_backfill(settings, routes, BackfillOptions(delete=True, shards=2))
    assert result["enqueued"]["jobs"] == {"copy": 1, "delete": 2}
    assert result["decisions"]["skip:out_of_scope"] == 1
    await run_until_idle(config, queues)

    assert sorted(listing(s3_clients["china"], dst)) == sorted(
        [*outside, *protected, "mirror/data/keep.txt"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_backfill_of_ten_thousand_objects_end_to_end(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any]) -> None:
    n = 10_050
    src, dst = make_bucket("global"), make_bucket("china")
    started = time.monotonic()
    put_many(s3_clients["global"], src, {f"big/{i % 37:02d}/{i:06d}": b"%d" % i
                                         for i in range(n)}, threads=32)
    seeded = time.monotonic()
    config = with_routes(config_path, tmp_path, route_toml("big", src, dst, prefix="big/"))
    settings = settings_for(config, queues)
    routes = list(settings.routes.values())

    result = await run_backfill(settings, routes, BackfillOptions(shards=4))
    enqueued = time.monotonic()
    summary = await run_until_idle(config, queues, max_jobs=32)
    copied = time.monotonic()
    again = await run_backfill(settings, routes, BackfillOptions())

    print(f"seed {seeded - started:.1f}s, backfill {enqueued - seeded:.1f}s, "
          f"worker {copied - enqueued:.1f}s, re-run {again['seconds']:.1f}s")
    assert result["enqueued"]["jobs"] == {"copy": n}
    assert summary.results["copied"] == n
    assert len(listing(s3_clients["china"], dst)) == n
    assert again["enqueued"]["jobs"] == {}


async def test_small_objects_travel_in_bundles_and_large_ones_alone(
        config_path: Path, tmp_path: Path, queues: Any, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any], sqs_global: Any) -> None:
    src, dst = make_bucket("global"), make_bucket("china")
    objects = {f"small/{i:03d}.bin": os.urandom(i % 300) for i in range(230)}
    objects |= {f"small/{k}": k.encode() for k in AWKWARD} | {"small/empty": b""}
    large = {f"large/{i}.bin": os.urandom(MIB + 1) for i in range(2)}  # over 1 MiB: alone
    put_many(s3_clients["global"], src, objects | large)
    config = with_routes(config_path, tmp_path, f"""
[routes.mixed]
source = {{ endpoint = "global", bucket = "{src}" }}
destinations = [{{ endpoint = "china", bucket = "{dst}" }}]
""")
    settings = settings_for(config, queues)

    result = await run_backfill(settings, list(settings.routes.values()), BackfillOptions())

    jobs = len(objects) + len(large)
    assert result["enqueued"]["jobs"] == {"copy": jobs}
    depth = sqs_global.get_queue_attributes(QueueUrl=queues.queue_url, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]
    # 238 small jobs in bundles of 1, 2, 4, ..., 64, 100 and the 11 left; 2 large ones alone
    assert int(depth) == 9 + 2
    summary = await run_until_idle(config, queues, max_jobs=16)
    assert summary.results == {"copied": jobs}
    for key in objects | large:
        assert_same_object(s3_clients["global"], src, s3_clients["china"], dst, key)


def test_the_backfill_command_plans_awkward_keys_and_freezes_its_start_up_heap_once(
        config_path: Path, tmp_path: Path, make_bucket: Callable[[str], str],
        s3_clients: dict[str, Any]) -> None:
    """``s3ferry backfill`` as a user runs it: every key under the prefix is planned, and
    its clients are open and its start-up heap frozen (common.heap) before the listing."""
    src, china, rclone = make_bucket("global"), make_bucket("china"), make_bucket("rclone")
    objects = {f"data/{k}": k.encode() for k in AWKWARD} | {"data/" + "k" * 1019: b"long"}
    put_many(s3_clients["global"], src, objects | {"other/outside.txt": b"x"})
    config = with_routes(config_path, tmp_path, fanout_toml(src, china, rclone))
    env = dict(os.environ, S3FERRY_LOG_FORMAT="json")
    done = subprocess.run([sys.executable, "-m", "s3ferry", "backfill", "--config", str(config),
                           "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # the 1,024-byte key is 1,031 bytes under china's "mirror/" prefix: refused, counted
    assert summary["would_enqueue"]["jobs"] == {"copy": 2 * len(objects) - 1}
    assert summary["unmappable"] == 1
    assert summary["listed"]["source"] == 2 * len(objects)  # once per destination
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("heap_frozen") == 1
    assert next(e["objects"] for e in events if e["event"] == "heap_frozen") > 10_000
    assert names.index("heap_frozen") < names.index("backfill_destination_started")
