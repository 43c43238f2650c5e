"""The worker opens its S3 clients before its first receive, so the first job does not pay
for them; an endpoint that cannot open then is left to its first job, as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from common.clients import ClientPool
from common.settings import load_settings
from s3ferry.localbed import write_private
from worker.main import copy_endpoints, warm_up
from worker.wire import WireClients

ENDPOINTS = """
[endpoints.queue]
endpoint_url = "http://127.0.0.1:9"
credentials = { kind = "static", access_key_id = "q", secret_access_key = "q" }

[endpoints.home]
endpoint_url = "http://127.0.0.1:9"
credentials = { kind = "static", access_key_id = "a", secret_access_key = "secret-a" }

[endpoints.far]
endpoint_url = "http://127.0.0.1:9"
region = "cn-north-1"
credentials = { kind = "profile", profile = "no-such-profile-s3ferry" }

[endpoints.unused]
endpoint_url = "http://127.0.0.1:9"
credentials = { kind = "static", access_key_id = "u", secret_access_key = "u" }
"""

ROUTE = """
[routes.r]
source = { endpoint = "home", bucket = "src" }
destinations = [{ endpoint = "far", bucket = "dst" }]
"""


def test_the_endpoints_to_open_are_the_routes_or_else_all_but_the_queue(tmp_path: Path) -> None:
    with_routes = tmp_path / "a.toml"
    write_private(with_routes, ENDPOINTS + ROUTE)
    without = tmp_path / "b.toml"
    write_private(without, ENDPOINTS)

    assert copy_endpoints(load_settings(with_routes)) == ["far", "home"]
    assert copy_endpoints(load_settings(without)) == ["far", "home", "unused"]


async def test_warm_up_opens_what_it_can_and_logs_what_it_cannot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    config = tmp_path / "c.toml"
    write_private(config, ENDPOINTS + ROUTE)
    settings = load_settings(config)

    async with (ClientPool(settings.endpoints, pool=4) as clients,
                WireClients(clients, pool=4) as s3):
        with capture_logs() as logs:
            await warm_up(s3, copy_endpoints(settings))
        assert sorted(s3._wired) == ["home"]  # opened once, before any job
        assert [(e["event"], e["endpoint"]) for e in logs] == [("endpoint_not_opened", "far")]
        assert "no-such-profile-s3ferry" in logs[0]["error"]
        assert "secret-a" not in str(logs)
