"""The container image definition: hadolint, and the contract the orchestrators rely on.

No Docker engine here, so the image is not built; these tests check the Dockerfile text.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

import pytest

from ._support import DOCKER_DIR, REPO, describe, require_tool, run

DOCKERFILE = DOCKER_DIR / "Dockerfile"
DOCKERIGNORE = DOCKER_DIR / "Dockerfile.dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


@pytest.mark.timeout(60)
def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint")
    proc = run([hadolint, "--no-color", str(DOCKERFILE)], timeout=50)
    assert proc.returncode == 0, describe(proc)


@pytest.mark.timeout(120)
def test_checkov_dockerfile_checks_pass() -> None:
    checkov = require_tool("checkov")
    proc = run([checkov, "-f", str(DOCKERFILE), "--framework", "dockerfile", "--quiet",
                "--compact", "--skip-download"], timeout=110)
    assert proc.returncode == 0, describe(proc)


def test_multi_stage_on_python_311_slim() -> None:
    froms = [args.split()[0] for word, args in _instructions() if word == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    # Same interpreter in both stages: the venv copied from build links to it.
    assert len(set(froms)) == 1
    assert froms[0].startswith("python:3.11-slim")


def test_runtime_runs_as_non_root_numeric_user() -> None:
    users = [args for word, args in _final_stage() if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0


def test_entrypoint_cmd_and_signals() -> None:
    final = dict(_final_stage())
    assert json.loads(final["ENTRYPOINT"]) == ["s3ferry"]
    assert json.loads(final["CMD"]) == ["worker"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["EXPOSE"].split() == ["9400"]


def test_installs_with_the_constraints_file() -> None:
    runs = " ".join(args for word, args in _instructions() if word == "RUN")
    assert re.search(r"pip install [^&]*-c constraints\.txt \.", runs)
    copied = " ".join(args for word, args in _instructions() if word == "COPY")
    assert "constraints.txt" in copied and "pyproject.toml" in copied


def test_copies_every_package_pyproject_installs() -> None:
    """A new top-level package in pyproject.toml must also be copied into the image."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*").rstrip(".") for p in patterns}
    copies = [args.split() for word, args in _instructions()
              if word == "COPY" and "--from" not in args]
    # COPY pkg/ pkg/ : each package lands under its own name in the build directory.
    copied = {src.rstrip("/") for src, dest in (c for c in copies if len(c) == 2)
              if src.rstrip("/") == dest.rstrip("/")}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_no_credentials_baked_in() -> None:
    text = DOCKERFILE.read_text()
    for word, args in _instructions():
        if word in {"ENV", "ARG"}:
            assert not re.search(r"(SECRET|ACCESS_KEY|SESSION_TOKEN|PASSWORD)", args, re.I), args
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


def test_dockerignore_is_an_allow_list_covering_every_copy() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert lines[0] == "*", "exclude everything first, then allow what the build needs"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for word, args in _instructions():
        if word != "COPY" or "--from" in args:
            continue
        for source in args.split()[:-1]:
            source = source.rstrip("/")
            assert any(fnmatch.fnmatch(source, pattern) for pattern in allowed), (
                f"COPY {source} is excluded by {DOCKERIGNORE.name}")
    assert not any(a.startswith(".venv") or a == ".git" for a in allowed)
