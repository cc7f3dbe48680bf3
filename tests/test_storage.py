"""Retired logged models free their storage, on each kind of artifact store.

After a run with seven improvements and ``exports_to_keep=2``, the logged-model
directories in the artifact store == the live logged models == the kept
exports, on a local SQLite store, on a real ``mlflow server`` with
``--artifacts-destination`` (proxied ``mlflow-artifacts:``), and on a server
whose default artifact root is ``s3://`` on moto's S3 server, used directly by
the client (``--no-serve-artifacts``). The store is listed on disk or with
boto3, never through the code under test.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import run_tiny
from mlflow.tracking import MlflowClient
from mlflow_checks import MlflowServer, check_mlflow, exporter_runs, kept_dirs
from s3 import s3_server

pytestmark = pytest.mark.slow

LOSSES = "70,60,50,40,30,20,10"  # a new best at every eval: seven improvements


def train(model_dir, uri, *extra, check=True, **env):
    kwargs = json.dumps({"tracking_uri": uri, "registered_model_name": "stored"})
    args = ("--model-dir", model_dir, "--losses", LOSSES, "--exports-to-keep", "2")
    return run_tiny(*args, "--exporter-kwargs", kwargs, *extra, check=check, **env)


def live_model_ids(client, experiment_id):
    return {m.model_id for m in client.search_logged_models([experiment_id])}


def test_local_sqlite_store_holds_only_the_kept_models(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model_dir = str(tmp_path / "model")
    train(model_dir, uri)
    # check_mlflow lists the local artifact root on disk: model dirs == live models == kept.
    found = check_mlflow(model_dir, uri, registered_model_name="stored", best_step=14)
    assert len(found["models"]) == len(kept_dirs(model_dir)) == 2
    client = MlflowClient(uri)
    experiment = client.get_experiment(found["run"].info.experiment_id)
    root = experiment.artifact_location.removeprefix("file://")
    assert len(os.listdir(os.path.join(root, "models"))) == 2


def test_proxied_artifacts_hold_only_the_kept_models_also_after_a_kill_in_reclamation(tmp_path):
    server = MlflowServer(str(tmp_path / "server")).start()
    try:
        model_dir = str(tmp_path / "model")
        killed = train(model_dir, server.uri, "--kill", "during_reclaim:8", check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
        client = MlflowClient(server.uri)
        (run,) = exporter_runs(client, model_dir)
        on_disk = os.path.join(server.artifacts_destination, run.info.experiment_id, "models")
        # The kill left a live model whose artifacts are already gone.
        assert live_model_ids(client, run.info.experiment_id) - set(os.listdir(on_disk))
        train(model_dir, server.uri, "--max-steps", "16")
        found = check_mlflow(
            model_dir,
            server.uri,
            registered_model_name="stored",
            artifacts_destination=server.artifacts_destination,
        )
        experiment_id = found["run"].info.experiment_id
        models_dir = os.path.join(server.artifacts_destination, experiment_id, "models")
        assert sorted(os.listdir(models_dir)) == sorted(m.model_id for m in found["models"])
    finally:
        server.stop()


def test_s3_artifact_root_holds_only_the_kept_models_also_after_a_kill_in_reclamation(tmp_path):
    with s3_server(str(tmp_path / "moto.log")) as s3:
        bucket = s3.new_bucket()
        env = {**s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
        server = MlflowServer(
            str(tmp_path / "server"),
            artifact_args=(
                "--default-artifact-root",
                f"s3://{bucket}/artifacts",
                "--no-serve-artifacts",
            ),
            extra_env=env,
        ).start()
        try:
            model_dir = str(tmp_path / "model")
            killed = train(model_dir, server.uri, "--kill", "during_reclaim:8", check=False, **env)
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
            client = MlflowClient(server.uri)
            (run,) = exporter_runs(client, model_dir)
            experiment_id = run.info.experiment_id

            def stored():
                prefix = f"artifacts/{experiment_id}/models/"
                return {k[len(prefix) :].split("/")[0] for k in s3.keys(bucket, prefix)}

            # The kill left a live model whose artifacts are gone from S3.
            assert live_model_ids(client, experiment_id) - stored()

            train(model_dir, server.uri, "--max-steps", "16", **env)
            found = check_mlflow(model_dir, server.uri, registered_model_name="stored")
            live = live_model_ids(client, experiment_id)
            assert stored() == live == {m.model_id for m in found["models"]}
            assert len(live) == len(kept_dirs(model_dir)) == 2
        finally:
            server.stop()


def test_gc_reclaims_what_earlier_releases_left_and_nothing_else(tmp_path):
    from click.testing import CliRunner

    from mlflow_best_export.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model_dir = str(tmp_path / "model")
    kwargs = json.dumps({"tracking_uri": uri, "registered_model_name": "stored"})
    run_tiny(
        "--model-dir",
        model_dir,
        "--losses",
        "30,20,10",
        "--exports-to-keep",
        "3",
        "--exporter-kwargs",
        kwargs,
    )
    client = MlflowClient(uri)
    (run,) = exporter_runs(client, model_dir)
    experiment_id = run.info.experiment_id
    root = client.get_experiment(experiment_id).artifact_location.removeprefix("file://")
    models_dir = os.path.join(root, "models")
    versions = sorted(client.search_model_versions("name='stored'"), key=lambda v: int(v.version))
    old, backing, kept = versions
    # (a) what the first release did on retention: version and model deleted, artifacts left.
    client.delete_model_version("stored", old.version)
    client.delete_logged_model(old.tags["mlflow_best_export.model_id"])
    # (b) a deleted model whose version is still live (someone deleted just the model).
    client.delete_logged_model(backing.tags["mlflow_best_export.model_id"])
    # (c) another package's deleted model with artifacts of its own.
    foreign = client.create_logged_model(experiment_id=experiment_id, name="foreign")
    other = tmp_path / "other"
    other.mkdir()
    (other / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    client.log_model_artifacts(foreign.model_id, str(other))
    client.delete_logged_model(foreign.model_id)
    before = set(os.listdir(models_dir))
    leftover = old.tags["mlflow_best_export.model_id"]
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(os.path.join(models_dir, leftover))
        for f in files
    )

    dry = CliRunner().invoke(main, ["gc", "stored", "--dry-run", "--tracking-uri", uri])
    assert dry.exit_code == 0, dry.output
    lines = [line for line in dry.output.splitlines() if "reclaim" in line]
    assert len(lines) == 1 and leftover in lines[0], dry.output
    assert f"{size / 1024:.1f} KB" in lines[0] or f"{size / 1024 / 1024:.1f} MB" in lines[0]
    assert set(os.listdir(models_dir)) == before

    done = CliRunner().invoke(main, ["gc", "stored", "--tracking-uri", uri])
    assert done.exit_code == 0, done.output
    assert set(os.listdir(models_dir)) == before - {leftover}
    assert backing.tags["mlflow_best_export.model_id"] in os.listdir(models_dir)
    assert foreign.model_id in os.listdir(models_dir)
    assert kept.tags["mlflow_best_export.model_id"] in os.listdir(models_dir)
