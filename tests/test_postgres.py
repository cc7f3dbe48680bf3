"""MLflowBestExporter against a production-style tracking server.

A real PostgreSQL (tests/postgres.py: initdb + pg_ctl in a temp dir) holds the tracking
and registry store of a real ``mlflow server`` that proxies artifacts
(``--artifacts-destination`` on local disk): clients upload and download models through
the server over HTTP and never see the artifact store itself.

Without PostgreSQL binaries these tests are skipped, except under CI (``CI=1``), where that
is a failure: .ci/run installs PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import psycopg2
import pytest
import tiny
from conftest import TESTS, run_tiny, subprocess_env
from mlflow.tracking import MlflowClient
from mlflow_checks import MlflowServer, check_mlflow, exporter_runs, mlflow_state
from postgres import PostgresServer, find_bindir

from mlflow_best_export import MLflowBestExporter, mirror, registry
from mlflow_best_export.settings import MlflowSettings
from mlflow_best_export.tags import TAG_MODEL_ID
from mlflow_best_export.tracking import exporter_key

LOSSES = [50, 30, 40, 20, 25, 10, 60, 5, 8]  # new bests at steps 2, 4, 8, 12, 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the session."""
    bindir = find_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb and no initdb on "
            "PATH); install it with `apt-get install postgresql` to run these tests."
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI=1 and {reason}")
        pytest.skip(reason)
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """A real `mlflow server` on a fresh PostgreSQL database, with proxied artifacts.

    One per module: creating MLflow's schema in PostgreSQL takes a while; the tests keep
    apart by model directory and registered model name.
    """
    database = postgres.create_database("mlflow_best_export_tests")
    server = MlflowServer(
        str(tmp_path_factory.mktemp("pg-server")), backend_store_uri=database
    ).start()
    server.database = database
    yield server
    server.stop()


@pytest.fixture
def uri(server, monkeypatch):
    """The server, also made MLflow's global choice (pyfunc loading resolves models:/ there)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    mlflow.set_tracking_uri(server.uri)
    yield server.uri
    mlflow.set_tracking_uri(None)


def query(server, sql: str, *params):
    dsn = server.database.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def files_under(root: str) -> set[str]:
    return {name for _, _, names in os.walk(root) for name in names}


def test_train_and_evaluate_mirrors_the_n_best_into_a_postgres_backed_server(tmp_path, server, uri):
    model_dir = str(tmp_path / "model")
    exporter = MLflowBestExporter(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        tracking_uri=uri,
        registered_model_name="pg-tiny",
        exports_to_keep=2,
    )
    tiny.train(model_dir, exporter, LOSSES)
    exporter.close()

    found = check_mlflow(model_dir, uri, registered_model_name="pg-tiny", best_step=16)
    run = found["run"]
    assert run.info.status == "FINISHED"
    # The store really is PostgreSQL: the run, its metrics and the versions are rows there.
    assert query(server, "SELECT status FROM runs WHERE run_uuid = %s", run.info.run_id) == [
        ("FINISHED",)
    ]
    steps = query(
        server,
        "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'loss' ORDER BY step",
        run.info.run_id,
    )
    assert [s for (s,) in steps] == list(range(2, 19, 2))
    # A deleted version keeps its row (MLflow never reuses a version number), marked deleted.
    versions = query(
        server,
        "SELECT version FROM model_versions WHERE name = 'pg-tiny' "
        "AND current_stage <> 'Deleted_Internal' ORDER BY version",
    )
    assert sorted(v.version for v in found["versions"]) == sorted(str(v) for (v,) in versions)

    # Artifacts were proxied: the client was handed mlflow-artifacts:/ locations, and the
    # SavedModels landed in the server's --artifacts-destination, not in this process's cwd.
    best = found["best"]
    model = MlflowClient(uri).get_logged_model(best.tags[TAG_MODEL_ID])
    assert model.artifact_location.startswith("mlflow-artifacts:"), model.artifact_location
    stored = files_under(os.path.join(server.root, "artifacts"))
    assert {"MLmodel", "saved_model.pb", "variables.index"} <= stored
    assert not os.path.exists("mlruns")

    # models:/NAME@best downloads through the server and predicts.
    x = np.random.RandomState(3).uniform(-1, 1, size=(5, 2)).astype("float32")
    loaded = mlflow.pyfunc.load_model("models:/pg-tiny@best")
    got = np.stack(loaded.predict(pd.DataFrame({"x": list(x)}))["y"].to_numpy()).reshape(-1)
    assert got.shape == (5,) and np.all(np.isfinite(got))

    before = mlflow_state(uri, "pg-tiny")
    mirror.sync(model_dir, MlflowSettings(tracking_uri=uri, registered_model_name="pg-tiny"))
    assert mlflow_state(uri, "pg-tiny") == before  # nothing to change the second time


def test_restart_continues_the_same_run_without_duplicates(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    kwargs = json.dumps({"tracking_uri": uri, "registered_model_name": "pg-restart"})
    common = [
        "--model-dir",
        model_dir,
        "--losses",
        ",".join(map(str, LOSSES)),
        "--exports-to-keep",
        "2",
        "--exporter-kwargs",
        kwargs,
    ]
    run_tiny(*common, "--max-steps", "10")
    check_mlflow(model_dir, uri, registered_model_name="pg-restart", best_step=8)
    run_tiny(*common)
    check_mlflow(model_dir, uri, registered_model_name="pg-restart", best_step=16)
    assert len(exporter_runs(MlflowClient(uri), model_dir)) == 1


def test_a_crash_in_the_middle_of_an_upload_is_repaired_on_restart(tmp_path, server, uri):
    model_dir = str(tmp_path / "model")
    client = MlflowClient(uri)

    def train(*extra: str) -> subprocess.CompletedProcess:
        # tests/cluster.py without TF_CONFIG: one process; an 8 MB variable makes the
        # SavedModel big enough to be cut in the middle of its upload.
        return subprocess.run(
            [
                sys.executable,
                str(TESTS / "cluster.py"),
                "--model-dir",
                model_dir,
                "--losses",
                "5,3,4,2,6,1",
                "--every",
                "2",
                "--throttle-secs",
                "0",
                "--ballast-mb",
                "8",
                "--exporter-kwargs",
                json.dumps({"registered_model_name": "pg-crash"}),
                *extra,
            ],
            env=subprocess_env(MLFLOW_TRACKING_URI=uri),
            capture_output=True,
            text=True,
            timeout=300,
        )

    crashed = train("--kill-mid-upload", "--max-steps", "8")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-4000:]
    assert "kill_mid_upload: SIGKILL after" in crashed.stderr
    # At the crash: exports on disk, and a LoggedModel whose upload never completed.
    (run,) = exporter_runs(client, model_dir)
    models = registry.find_models(
        client, run.info.experiment_id, exporter_key(model_dir, "best_exporter")
    )
    pending = [m for m in models if not m.ready]
    assert pending, models
    partial = client.get_logged_model(pending[0].model_id)
    assert partial.status.to_proto() != partial.status.READY.to_proto()
    with pytest.raises(AssertionError):
        check_mlflow(model_dir, uri, registered_model_name="pg-crash")

    # The restart trains on (a local train_and_evaluate that finds training complete evaluates
    # nothing, so its exporter is never called: `mlflow-best-export sync` repairs that case).
    restarted = train()
    assert restarted.returncode == 0, restarted.stderr[-4000:]
    found = check_mlflow(model_dir, uri, registered_model_name="pg-crash", best_step=12)
    live = {m.model_id for m in found["models"]}
    assert not live & {m.model_id for m in pending}
    # The repaired best is whole: it downloads through the server, big variables included.
    dst = mlflow.artifacts.download_artifacts(
        f"models:/{found['best'].tags[TAG_MODEL_ID]}", dst_path=str(tmp_path / "dl")
    )
    sizes = [
        os.path.getsize(os.path.join(root, n))
        for root, _, names in os.walk(dst)
        for n in names
        if n.startswith("variables.data")
    ]
    assert sum(sizes) >= 8 * 2**20, sizes
