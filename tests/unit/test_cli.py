"""The console script: subcommands, help, and configuration errors that name the bad field."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import WorkerSettings, load_settings
from s3ferry.cli import main
from s3ferry.localbed import write_private


def test_help_lists_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "worker" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["teleport"])
    assert info.value.code == 2


def test_python_dash_m_worker_help() -> None:
    out = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "--exit-when-idle" in out


@pytest.mark.parametrize(("toml", "field"), [
    ('[endpoints.a]\nregion = 5\n', "endpoints.a.region"),
    ('[endpoints.a]\naddressing_style = "sideways"\n', "endpoints.a.addressing_style"),
    ('[endpoints.a]\ncredentials = { kind = "static", access_key_id = "k" }\n',
     "endpoints.a.credentials.static.secret_access_key"),
    ('[worker]\npart_size = 1024\n', "worker.part_size"),
    ('[worker]\nserver_copy_budget = 4096\n', "worker.server_copy_budget"),
    ('[dispatcher]\njobs_per_message = 0\n', "dispatcher.jobs_per_message"),
    ('[dispatcher]\nbundle_size = 10\n', "dispatcher.bundle_size"),
    ("[endpoints.a\n", "not valid TOML"),
])
def test_bad_config_is_refused_naming_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    write_private(path, toml)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(path)


def test_worker_exits_2_with_the_bad_field_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[worker]\nmax_jobs = 0\n')
    run = subprocess.run([sys.executable, "-m", "worker", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "worker.max_jobs" in run.stderr


def test_secrets_in_config_are_not_printed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    write_private(path, '[endpoints.a]\ncredentials = { kind = "static", access_key_id = "AK", '
                    'secret_access_key = "s3cr3t-value" }\n')
    settings = load_settings(path)
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings.model_dump())


def test_explicit_keys_win_over_a_missing_aws_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray AWS_PROFILE must not break endpoints configured with their own keys."""
    import asyncio

    from common.clients import ClientPool, sync_client
    from common.settings import Endpoint, StaticCredentials

    monkeypatch.setenv("AWS_PROFILE", "profile-that-does-not-exist")
    ep = Endpoint(name="a", endpoint_url="http://127.0.0.1:9",
                  credentials=StaticCredentials(kind="static", access_key_id="AK",
                                                secret_access_key="SK"))
    assert sync_client(ep).meta.region_name == "us-east-1"

    async def open_client() -> str:
        async with ClientPool({"a": ep}) as pool:
            client = await pool.get("a")
            return str(client._request_signer._credentials.access_key)

    assert asyncio.run(open_client()) == "AK"


def test_dispatcher_settings_come_from_the_file_and_the_environment_key_by_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[dispatcher]\njobs_per_message = 20\nbundle_object_bytes = 4096\n")
    monkeypatch.setenv("S3FERRY_DISPATCHER__BUNDLE_OBJECT_BYTES", "65536")

    settings = load_settings(path)

    assert settings.dispatcher.jobs_per_message == 20  # from the file
    assert settings.dispatcher.bundle_object_bytes == 65536  # the environment wins


def test_the_readme_configuration_loads_and_shows_the_worker_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (example,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    path = tmp_path / "readme.toml"
    write_private(path, example)
    for name in [n for n in os.environ if n.startswith("S3FERRY_")]:
        monkeypatch.delenv(name)

    settings = load_settings(path)

    shown = tomllib.loads(example)["worker"]
    assert "server_copy_budget" in shown
    assert {k: getattr(settings.worker, k) for k in shown} == {
        k: getattr(WorkerSettings(), k) for k in shown}


@pytest.mark.parametrize(("toml", "named"), [
    ("[wroker]\nmax_jobs = 3\n", "unknown table wroker (did you mean worker?)"),
    ('[s3ferry]\nqueue_urll = "x"\n', "unknown key s3ferry.queue_urll (did you mean "
                                      "s3ferry.queue_url?)"),
    ("[worker]\nmax_job = 3\n", "worker.max_job: Extra inputs are not permitted"),
    ('[routes.r]\nsource = { endpoint = "a", bucket = "bkt" }\ndestinations = []\n'
     "sync_deletez = true\n", "sync_deletez"),
])
def test_a_misspelt_table_or_key_is_refused_by_name(tmp_path: Path, toml: str,
                                                    named: str) -> None:
    path = write_private(tmp_path / "c.toml", '[endpoints.a]\nregion = "us-east-1"\n' + toml)
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert named in str(refused.value)


SECRET_TOML = ('[endpoints.a]\ncredentials = { kind = "static", access_key_id = "AK", '
               'secret_access_key = "s3cr3t" }\n')


@pytest.mark.parametrize(("text", "mode", "allowed", "refused"), [
    (SECRET_TOML, 0o644, False, True),
    (SECRET_TOML, 0o640, False, True),
    (SECRET_TOML, 0o600, False, False),
    (SECRET_TOML, 0o644, True, False),
    ('[dispatcher]\nintake_token = "t-t-t-t-t-t-t-t-t-t"\n', 0o604, False, True),
    ('[endpoints.a]\ncredentials = { kind = "env", prefix = "A_" }\n', 0o644, False, False),
], ids=["world-readable", "group-readable", "private", "told-explicitly", "token",
        "no-keys"])
def test_a_file_holding_keys_must_be_private_unless_told_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, mode: int, allowed: bool,
        refused: bool) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(mode)
    if allowed:
        monkeypatch.setenv("S3FERRY_ALLOW_READABLE_SECRETS", "1")
    if refused:
        with pytest.raises(ConfigError, match=r"other users can read it.*chmod 600"):
            load_settings(path)
    else:
        load_settings(path)


COMMANDS_ON_A_QUEUE = {
    "worker": ["--queue-url", "http://q", "--dlq-url", "http://d"],
    "backfill": ["--queue-url", "http://q"],
    "events": ["--queue-url", "http://q", "--events-queue-url", "http://e",
               "--events-dlq-url", "http://d"],
    "status": ["--queue-url", "http://q"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS_ON_A_QUEUE))
@pytest.mark.parametrize(("toml", "said"), [
    ('[endpoints.a]\nregion = "us-east-1"\n'
     '[routes.r]\nsource = { endpoint = "a", bucket = "bkt" }\n'
     'destinations = [{ endpoint = "a", bucket = "dst" }]\n',
     "no endpoint named 'queue' for the SQS queues"),
    ('[endpoints.queue]\n[wroker]\n', "unknown table wroker"),
    (SECRET_TOML.replace("[endpoints.a]", "[endpoints.queue]"), "other users can read it"),
], ids=["no-queue-endpoint", "misspelt-table", "readable-keys"])
def test_every_command_refuses_bad_config_in_one_line_and_exit_2(
        tmp_path: Path, command: str, toml: str, said: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    path.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3FERRY_")}
    run = subprocess.run([sys.executable, "-m", "s3ferry", command, "--config", str(path),
                          *COMMANDS_ON_A_QUEUE[command]], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert run.returncode == 2, run.stderr
    assert said in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
