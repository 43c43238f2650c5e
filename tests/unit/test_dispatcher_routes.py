"""Routes: the TOML forms load, bad fields are named, keys map and filter as documented."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.routes import Route, glob_to_regex
from common.settings import load_settings
from s3ferry.localbed import write_private

pytestmark = pytest.mark.timeout(30)

ENDPOINTS = """
[endpoints.global]
[endpoints.china]
region = "cn-north-1"
"""


def load(tmp_path: Path, routes: str) -> dict[str, Route]:
    path = tmp_path / "c.toml"
    write_private(path, ENDPOINTS + routes)
    return load_settings(path).routes


def test_table_and_array_forms(tmp_path: Path) -> None:
    tables = load(tmp_path, """
[routes.photos]
source = { endpoint = "global", bucket = "photos", prefix = "2024/" }
sync_deletes = true
[[routes.photos.destinations]]
endpoint = "china"
bucket = "photos-cn"
prefix = "m/"
storage_class = "STANDARD_IA"
""")
    array = load(tmp_path, """
[[routes]]
name = "photos"
source = { endpoint = "global", bucket = "photos", prefix = "2024/" }
sync_deletes = true
destinations = [
  { endpoint = "china", bucket = "photos-cn", prefix = "m/", storage_class = "STANDARD_IA" },
]
""")
    assert tables == array
    assert tables["photos"].name == "photos" and tables["photos"].sync_deletes


@pytest.mark.parametrize(("routes", "named"), [
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x" }\ndestinations = []',
     "routes.r.destinations"),
    ('[routes.r]\nsource = { endpoint = "nowhere", bucket = "b1x" }\n'
     'destinations = [{ endpoint = "china", bucket = "b2x" }]', "routes.r.source.endpoint"),
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x" }\n'
     'destinations = [{ endpoint = "china", bucket = "a" }]', "routes.r.destinations.0.bucket"),
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x" }\ninclude = ["[abc"]\n'
     'destinations = [{ endpoint = "china", bucket = "b2x" }]', "routes.r.include"),
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x" }\nmin_size = 10\n'
     'max_size = 1\ndestinations = [{ endpoint = "china", bucket = "b2x" }]', "min_size"),
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x" }\nsize_min = 1\n'
     'destinations = [{ endpoint = "china", bucket = "b2x" }]', "routes.r.size_min"),
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x", prefix = "a/" }\n'
     'destinations = [{ endpoint = "global", bucket = "b1x", prefix = "a/copy/" }]',
     "overlaps the source"),
    ('[[routes]]\nsource = { endpoint = "global", bucket = "b1x" }\n'
     'destinations = [{ endpoint = "china", bucket = "b2x" }]', "routes.0.name"),
    ('[routes.r]\nsource = { endpoint = "global", bucket = "b1x" }\n'
     'modified_after = 2024-01-01T00:00:00\n'
     'destinations = [{ endpoint = "china", bucket = "b2x" }]', "time zone"),
])
def test_invalid_routes_are_rejected_naming_the_field(tmp_path: Path, routes: str,
                                                      named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(tmp_path, routes)


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    ("*.jpg", ["a.jpg", "x/y/a.jpg"], ["a.jpeg", "a.jpg/b"]),
    ("logs/*.gz", ["logs/a.gz"], ["logs/x/a.gz", "a/logs/a.gz"]),
    ("logs/**", ["logs/a", "logs/x/y"], ["log/a"]),
    ("**/tmp/*", ["tmp/a", "x/tmp/a"], ["x/tmp/a/b"]),
    ("file?.[ch]", ["file1.c", "d/fileX.h"], ["file10.c", "file1.o"]),
    ("[!a]*", ["b", "x/bcd"], ["abc"]),
])
def test_globs(pattern: str, yes: list[str], no: list[str]) -> None:
    rx = glob_to_regex(pattern)
    assert all(rx.fullmatch(k) for k in yes)
    assert not any(rx.fullmatch(k) for k in no)


ROUTE = Route.model_validate({
    "name": "r", "source": {"endpoint": "global", "bucket": "src", "prefix": "data/"},
    "destinations": [{"endpoint": "china", "bucket": "dst", "prefix": "backup/data/"},
                     {"endpoint": "global", "bucket": "dst2"}],
    "include": ["**/*.csv", "*.json"], "exclude": ["tmp/**"],
    "min_size": 1, "max_size": 100,
    "modified_after": "2024-01-01T00:00:00Z"})


def test_key_mapping_replaces_the_prefix_for_every_destination() -> None:
    assert [(d.bucket, k) for d, k in ROUTE.destination_keys("data/x y/\u4e2d.csv")] == [
        ("dst", "backup/data/x y/\u4e2d.csv"), ("dst2", "x y/\u4e2d.csv")]


def test_too_long_destination_keys_are_left_out() -> None:
    key = "data/" + "k" * 1015  # 1020 bytes: fits at the source, not below "backup/data/"
    assert [d.bucket for d, _ in ROUTE.destination_keys(key)] == ["dst2"]


@pytest.mark.parametrize(("key", "size", "modified", "accepted"), [
    ("data/a/b.csv", 5, datetime(2024, 6, 1, tzinfo=UTC), True),
    ("data/top.json", 5, None, True),
    ("data/a/b.json", 5, None, True),  # "*.json" has no "/": matches the last segment
    ("data/tmp/b.csv", 5, None, False),
    ("data/a/b.txt", 5, None, False),
    ("other/a.csv", 5, None, False),
    ("data/a.csv", 0, None, False),
    ("data/a.csv", 101, None, False),
    ("data/a.csv", None, None, True),  # unknown size (a delete event) passes
    ("data/a.csv", 5, datetime(2023, 12, 31, tzinfo=UTC), False),
])
def test_filters(key: str, size: int | None, modified: datetime | None,
                 accepted: bool) -> None:
    assert ROUTE.accepts(key, size=size, last_modified=modified) is accepted
