"""The intake API's rules, with the backfill itself replaced by one the test holds open:
one backfill per route at a time, long polls that end with the run, a stopping service marks
its runs interrupted, tokens compared exactly. (``s3ferry backfill --server``: test_submit.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.errors import ConfigError, FerryError
from common.metrics import DispatcherMetrics
from common.settings import Settings, load_settings
from dispatcher import intake
from dispatcher.diff import Mode
from s3ferry.localbed import write_private

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings(tmp_path: Path, **dispatcher: Any) -> Settings:
    path = tmp_path / "s3ferry.toml"
    write_private(path, """
[endpoints.a]
endpoint_url = "http://127.0.0.1:1"
[endpoints.a.credentials]
kind = "static"
access_key_id = "k"
secret_access_key = "s"
[routes.one]
source = { endpoint = "a", bucket = "src" }
destinations = [{ endpoint = "a", bucket = "one" }]
[routes.two]
source = { endpoint = "a", bucket = "src" }
destinations = [{ endpoint = "a", bucket = "two" }]
""")
    return load_settings(path, queue_url="http://queue", queue_endpoint="a",
                         dispatcher=dispatcher)


class HeldBackfills:
    """Stands in for run_backfill: each call waits until the test lets it end."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def __call__(self, settings: Settings, routes: list[Any], options: Any,
                       **kwargs: Any) -> dict[str, Any]:
        name = ",".join(r.name for r in routes)
        self.calls.append({"routes": name, "mode": options.mode, **kwargs})
        future = self.release[name] = asyncio.get_running_loop().create_future()
        return await future


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[TestClient[Any, Any], HeldBackfills, intake.Intake]]:
    held = HeldBackfills()
    monkeypatch.setattr(intake, "run_backfill", held)
    service = intake.Intake(settings(tmp_path), clients=object(),  # type: ignore[arg-type]
                            metrics=DispatcherMetrics(), token=TOKEN)
    client = TestClient(TestServer(service.app()))
    await client.start_server()
    try:
        yield client, held, service
    finally:
        await service.close()
        await client.close()


async def test_one_backfill_per_route_and_long_polls_end_with_the_run(api: Any) -> None:
    client, held, _ = api
    first = await client.post("/v1/backfills", json={"routes": ["one"]}, headers=AUTH)
    assert first.status == 202
    run = await first.json()
    assert first.headers["Location"] == f"/v1/backfills/{run['id']}"
    await asyncio.sleep(0)  # the run's task starts
    same = await client.post("/v1/backfills", json={}, headers=AUTH)  # every route: one too
    assert same.status == 409
    assert (await same.json())["running"] == run["id"]
    other = await client.post("/v1/backfills", json={"routes": ["two"], "compare": "checksum"},
                              headers=AUTH)
    assert other.status == 202
    await asyncio.sleep(0)
    assert [c["routes"] for c in held.calls] == ["one", "two"]
    assert held.calls[1]["mode"] is Mode.CHECKSUM

    short = await client.get(f"/v1/backfills/{run['id']}?wait=0.05", headers=AUTH)
    assert (await short.json())["state"] == "running"
    polled = asyncio.create_task(client.get(f"/v1/backfills/{run['id']}?wait=30",
                                            headers=AUTH))
    await asyncio.sleep(0.05)
    assert not polled.done()
    held.release["one"].set_result({"enqueued": {"jobs": {"copy": 3}}})
    ended = await (await polled).json()
    assert ended["state"] == "done" and ended["summary"] == {"enqueued": {"jobs": {"copy": 3}}}

    every = await client.post("/v1/backfills", headers=AUTH)  # no body: every route
    assert every.status == 409  # two is still running
    held.release["two"].set_exception(FerryError("listing failed: AccessDenied"))
    await asyncio.sleep(0.01)
    again = await client.post("/v1/backfills", json={"routes": ["one"]}, headers=AUTH)
    assert again.status == 202  # one is free again
    listed = await (await client.get("/v1/backfills", headers=AUTH)).json()
    states = [(r["routes"], r["state"], r.get("error")) for r in listed["backfills"]]
    assert states == [(["one"], "running", None),
                      (["two"], "failed", "listing failed: AccessDenied"),
                      (["one"], "done", None)]


async def test_a_stopping_service_marks_its_runs_interrupted(api: Any) -> None:
    client, _, service = api
    answer = await (await client.post("/v1/backfills", json={}, headers=AUTH)).json()
    await asyncio.sleep(0)
    await service.close()
    run = await (await client.get(f"/v1/backfills/{answer['id']}", headers=AUTH)).json()
    assert run["state"] == "interrupted"


@pytest.mark.parametrize("header", [None, "", "Bearer", f"Bearer {TOKEN}x", f"Basic {TOKEN}",
                                    f"Bearer {TOKEN[:-1]}"])
async def test_requests_without_the_exact_token_are_refused(api: Any, header: str | None
                                                            ) -> None:
    client, held, _ = api
    headers = {"Authorization": header} if header is not None else {}
    for method, path in (("POST", "/v1/backfills"), ("GET", "/v1/backfills"),
                         ("GET", "/v1/backfills/x")):
        answer = await client.request(method, path, json={}, headers=headers)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert held.calls == []
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v1/backfills", headers={"Authorization": f"bearer {TOKEN}"}
                             )).status == 200


@pytest.mark.parametrize(("body", "error"), [
    ({"shards": 0}, "shards: Input should be greater than or equal to 1"),
    ({"routes": []}, "routes: List should have at least 1 item"),
    ({"routes": ["one", "three"]}, "unknown route(s) three"),
    ({"delete": "maybe"}, "delete: Input should be a valid boolean"),
    ({"endpoint_url": "http://elsewhere"}, "endpoint_url: Extra inputs are not permitted"),
    ([1, 2], "body: Input should be a valid dictionary"),
])
async def test_bad_requests_say_what_is_wrong(api: Any, body: Any, error: str) -> None:
    client, held, _ = api
    answer = await client.post("/v1/backfills", json=body, headers=AUTH)
    assert answer.status == 400
    assert error in (await answer.json())["error"]
    assert held.calls == []


def test_the_service_needs_a_long_enough_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        intake.intake_token(settings(tmp_path))
    with pytest.raises(ConfigError, match="at least 16"):
        intake.intake_token(settings(tmp_path, intake_token="short"))
    assert intake.intake_token(settings(tmp_path, intake_token=TOKEN)) == TOKEN
    assert TOKEN not in repr(settings(tmp_path, intake_token=TOKEN))

