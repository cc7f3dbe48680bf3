"""Shared fixtures: quiet TensorFlow, a private MLflow store, subprocess helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Anything that falls back to MLflow's default store must not touch the checkout: the
# default store of this test session is a SQLite file in a private temp directory.
_DEFAULT_STORE = tempfile.mkdtemp(prefix="mlflow-best-export-tests-")
_CREATE_DEFAULT_STORE = "MLFLOW_TRACKING_URI" not in os.environ
if _CREATE_DEFAULT_STORE:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_DEFAULT_STORE}/mlflow.db"

#: Test modules that must run without TensorFlow and MLflow (the pure core).
PURE_MODULES = {"test_keeper"}


def pytest_runtest_setup(item):
    global _CREATE_DEFAULT_STORE
    if _CREATE_DEFAULT_STORE and item.module.__name__.rsplit(".", 1)[-1] not in PURE_MODULES:
        _CREATE_DEFAULT_STORE = False
        # Create the store before any test runs a child process, with its Default
        # experiment's artifacts in the temp directory too: whichever process created it
        # first would otherwise put them under its ./mlruns.
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(os.environ["MLFLOW_TRACKING_URI"], f"{_DEFAULT_STORE}/artifacts")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(tmp_path):
    """Start `mlflow models serve` for a model URI; the servers are killed on teardown."""
    import requests

    started = []

    def start(model_uri: str, tracking_uri: str) -> str:
        port = free_port()
        log = open(tmp_path / f"serve-{port}.log", "w")
        bin_dir = os.path.dirname(sys.executable)
        env = subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
        # The server execs `uvicorn` by name, as from an activated virtualenv.
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri]
        command += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    return url
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        log.flush()
        raise AssertionError(
            f"mlflow models serve did not come up:\n{(tmp_path / f'serve-{port}.log').read_text()}"
        )

    yield start
    for proc, log in started:
        # The whole session: the CLI, the uvicorn it execs and its workers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.fixture
def mlflow_fails_fast(monkeypatch):
    """No MLflow client retries and a short timeout: MLflow's own retries would turn every
    request to a dead or failing server into minutes of waiting."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
