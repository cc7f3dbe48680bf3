"""The embedded SQLite store: a kill while it is created never breaks mirroring, and a store
that MLflow cannot open is explained in one line with its fix.

Expectations come from the model directory (listing, summary_iterator) and MLflow's own
client (tests/mlflow_checks.py), never from this package.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import pytest
import tiny
from conftest import run_tiny, subprocess_env
from mlflow_checks import check_mlflow
from oracles import export_dirs

from mlflow_best_export import MLflowBestExporter

LOSSES = [50, 30, 40, 20, 25, 10]  # new bests at steps 2, 4, 8, 12
COMMAND = os.path.join(os.path.dirname(sys.executable), "mlflow-best-export")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A model directory with eval history and two kept exports, mirrored nowhere yet."""
    model_dir = str(tmp_path_factory.mktemp("store") / "model")
    exporter = MLflowBestExporter(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        exports_to_keep=2,
        log_to_mlflow=False,
    )
    tiny.train(model_dir, exporter, LOSSES)
    return model_dir


def sync_command(model_dir: str, uri: str) -> list[str]:
    return [COMMAND, "sync", model_dir, "--registered-model", "tiny", "--tracking-uri", uri]


def creating(directory) -> list[str]:
    """The temporary stores of creations under way (or killed) in ``directory``."""
    return glob.glob(os.path.join(directory, ".mlflow.db.creating-*"))


@pytest.mark.slow
def test_a_kill_while_the_store_is_created_leaves_none_or_a_whole_one(trained, tmp_path):
    """`sync` on a fresh store, SIGKILLed at several moments after the store's creation
    began; then a plain `sync` mirrors everything and no temporary file is left."""
    landed = 0
    for offset in (0.0, 0.1, 0.25, 0.4, 0.6, 0.9):
        directory = tmp_path / f"kill-{offset}"
        directory.mkdir()
        uri = f"sqlite:///{directory}/mlflow.db"
        proc = subprocess.Popen(
            sync_command(trained, uri),
            cwd=directory,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not creating(directory):
            assert proc.poll() is None and time.monotonic() < deadline, "no store creation seen"
            time.sleep(0.005)
        time.sleep(offset)
        proc.kill()
        proc.wait()
        # Killed while the store was being made: the real name does not exist yet.
        if creating(directory):
            landed += 1
            assert not os.path.exists(directory / "mlflow.db"), offset
        done = subprocess.run(
            sync_command(trained, uri),
            cwd=directory,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (offset, done.stdout, done.stderr[-3000:])
        check_mlflow(trained, uri, registered_model_name="tiny", best_step=12)
        assert creating(directory) == [], offset
    # The moments must have hit the creation itself, not only what follows it.
    assert landed >= 3, landed


def half_created_store(path) -> None:
    """A store whose tables are newer than the schema revision it records, as a kill in
    the middle of MLflow's migrations leaves it (deterministic, unlike a kill). Made in
    another process: this one must not keep an engine on the file."""
    code = (
        "import sys, sqlite3; from mlflow.tracking import MlflowClient; "
        "MlflowClient('sqlite:///' + sys.argv[1]).search_experiments(); "
        "db = sqlite3.connect(sys.argv[1]); "
        "db.execute(\"UPDATE alembic_version SET version_num = '451aebb31d03'\"); db.commit()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)


@pytest.mark.slow
def test_a_half_created_store_is_explained_once_and_never_stops_training(trained, tmp_path):
    db = tmp_path / "mlflow.db"
    half_created_store(db)
    uri = f"sqlite:///{db}"

    # The command line: one line, the path and the fix, exit 1.
    proc = subprocess.run(
        sync_command(trained, uri), env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == 1, proc
    errors = [line for line in proc.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"The MLflow store {db} holds no runs" in errors[0] and f"rm {db}" in errors[0]

    # The exporter, syncing after every export: training goes on, and the store is
    # warned about once, in one line.
    model_dir = str(tmp_path / "model")
    kwargs = {"tracking_uri": uri, "registered_model_name": "tiny", "flush_timeout": 30}
    proc = run_tiny(
        "--model-dir",
        model_dir,
        "--losses",
        ",".join(map(str, LOSSES)),
        "--exports-to-keep",
        "2",
        "--exporter-kwargs",
        json.dumps(kwargs),
        "--log-level",
        "WARNING",
        "--flush-each",
    )
    ours = [line for line in proc.stderr.splitlines() if " mlflow_best_export" in line]
    about_the_store = [line for line in ours if str(db) in line]
    assert len(about_the_store) == 1, ours
    assert "ALTER TABLE" not in proc.stderr and "CREATE TABLE" not in proc.stderr
    assert len(export_dirs(os.path.join(model_dir, "export", "best_exporter"))) == 2

    # The fix it names works: delete the file, sync, and MLflow mirrors everything.
    os.remove(db)
    done = subprocess.run(
        sync_command(model_dir, uri), env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=12)


def test_a_store_that_holds_runs_is_never_called_deletable(tmp_path):
    from mlflow.tracking import MlflowClient

    from mlflow_best_export import store

    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    client.create_run(client.get_experiment_by_name("Default").experiment_id)
    error = RuntimeError("(sqlite3.OperationalError) no such column: runs.foo\n[SQL: SELECT ...]")
    text = store.diagnose(f"sqlite:///{db}", error)
    assert "1 runs" in text and "rm " not in text and "mlflow db upgrade" in text
    # Not a schema error (a lock, say): nothing to say about the file.
    assert store.diagnose(f"sqlite:///{db}", RuntimeError("database is locked")) is None
    assert store.diagnose("http://127.0.0.1:5000", error) is None
