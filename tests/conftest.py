"""Shared fixtures: quiet TensorFlow, a private MLflow store, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Anything that falls back to MLflow's default store must not touch the checkout: the
# default store of this test session is a SQLite file in a private temp directory.
_DEFAULT_STORE = tempfile.mkdtemp(prefix="mlflow-best-export-tests-")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_DEFAULT_STORE}/mlflow.db")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process that imports this checkout."""
    env = dict(os.environ)
    paths = [str(REPO), str(TESTS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def run_tiny(*args: str, check: bool = True, timeout: float = 600, **env: str):
    """Run tests/tiny.py (training with MLflowBestExporter) in a fresh process."""
    proc = subprocess.run(
        [sys.executable, str(TESTS / "tiny.py"), *args],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"tiny.py {' '.join(args)} exited with {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(autouse=True)
def _quiet_tensorflow():
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    yield


@pytest.fixture(autouse=True)
def _private_cwd(tmp_path_factory, monkeypatch):
    """Run each test in a temp directory: MLflow's default artifact root is ``./mlruns``."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
