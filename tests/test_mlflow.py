"""MLflowBestExporter part 2: run metrics, LoggedModels, registry versions, alias, retention.

Real training (tests/tiny.py), a real SQLite MLflow store in a temp directory,
and a real `mlflow server` subprocess for HTTP and outages.
"""

from __future__ import annotations

import json
import logging
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tiny
from conftest import run_tiny
from mlflow.tracking import MlflowClient
from mlflow_checks import (
    MlflowServer,
    check_mlflow,
    exporter_runs,
    free_port,
    kept_dirs,
    mlflow_state,
)
from oracles import eval_records

from mlflow_best_export import MLflowBestExporter, mirror
from mlflow_best_export.exports import METADATA_FILENAME
from mlflow_best_export.locks import ExportDirLock
from mlflow_best_export.settings import MlflowSettings
from mlflow_best_export.tags import TAG_MODEL_ID

LOSSES = [50, 30, 40, 20, 25, 10, 60, 5, 8]  # new bests at steps 2, 4, 8, 12, 16

pytestmark = pytest.mark.slow


@pytest.fixture
def uri(tmp_path, monkeypatch):
    """A private SQLite store, also made MLflow's global choice (for pyfunc loading)."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    yield store
    mlflow.set_tracking_uri(None)


def make_exporter(tracking_uri, **kwargs):
    kwargs.setdefault("serving_input_receiver_fn", tiny.raw_serving_input_receiver_fn)
    return MLflowBestExporter(tracking_uri=tracking_uri, **kwargs)


def predict_like_estimator(model_dir, checkpoint_path, x):
    estimator = tiny.build_estimator(model_dir, 2, {2: 1.0})
    input_fn = tf.compat.v1.estimator.inputs.numpy_input_fn({"x": x}, shuffle=False)
    return np.array([p["y"] for p in estimator.predict(input_fn, checkpoint_path=checkpoint_path)])


def assert_best_predicts_like_the_estimator(model_dir, best, name="tiny"):
    x = np.random.RandomState(3).uniform(-1, 1, size=(5, 2)).astype("float32")
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@best")
    got = loaded.predict(pd.DataFrame({"x": list(x)}))
    want = predict_like_estimator(model_dir, best.tags["checkpoint_path"], x)
    np.testing.assert_allclose(
        np.stack(got["y"].to_numpy()).reshape(-1), want.reshape(-1), rtol=1e-5
    )


def test_train_and_evaluate_mirrors_the_n_best_into_mlflow(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    exporter = make_exporter(uri, registered_model_name="tiny", exports_to_keep=2)
    tiny.train(model_dir, exporter, LOSSES)
    exporter.close()

    found = check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=16)
    client = MlflowClient(uri)
    run = found["run"]
    assert run.info.status == "FINISHED"
    # Eval metrics carry the event's wall time and the global step.
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in sorted(loss, key=lambda m: m.step)] == list(range(2, 19, 2))

    versions = {
        v.tags["global_step"]: v
        for v in map(lambda e: client.get_model_version("tiny", e.version), found["versions"])
    }
    assert sorted(versions) == ["12", "16"]
    best = found["best"]
    assert best.aliases == ["best"]
    assert "Global step 16" in best.description and "loss" in best.description
    # The loss of step 16 exactly as TensorFlow's own reader reads it from the event file.
    (recorded,) = [r for r in eval_records(model_dir) if r["step"] == 16]
    assert float(best.tags["metric.loss"]) == recorded["metrics"]["loss"]

    # The LoggedModel shows its eval metrics and params, and holds the whole SavedModel.
    model_id = best.tags[TAG_MODEL_ID]
    model = client.get_logged_model(model_id)
    assert {m.key for m in model.metrics} >= {"loss", "mse", "score"}
    assert {m.step for m in model.metrics} == {16}
    assert model.params["global_step"] == "16"
    extra = mlflow.artifacts.download_artifacts(
        f"models:/{model_id}", dst_path=str(tmp_path / "dl")
    )
    saved = [root for root, _, files in os.walk(extra) if METADATA_FILENAME in files]
    assert len(saved) == 1
    with open(os.path.join(saved[0], METADATA_FILENAME)) as f:
        assert json.load(f)["global_step"] == 16

    # models:/tiny@best loads and predicts what the Estimator predicts on that checkpoint.
    assert_best_predicts_like_the_estimator(model_dir, best)

    # The run holds the eval curve with the exports marked.
    figure = client.download_artifacts(run.info.run_id, mirror.FIGURE_FILE, str(tmp_path))
    with open(figure, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Nothing to do the second time: MLflow's state is the same afterwards.
    before = mlflow_state(uri, "tiny")
    mirror.sync(model_dir, MlflowSettings(tracking_uri=uri, registered_model_name="tiny"))
    assert mlflow_state(uri, "tiny") == before


def test_restart_continues_the_same_run_without_duplicates(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    kwargs = json.dumps({"tracking_uri": uri, "registered_model_name": "tiny"})
    losses = ",".join(map(str, LOSSES))
    run_tiny(
        "--model-dir",
        model_dir,
        "--losses",
        losses,
        "--max-steps",
        "10",
        "--exports-to-keep",
        "2",
        "--exporter-kwargs",
        kwargs,
    )
    check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=8)
    run_tiny(
        "--model-dir",
        model_dir,
        "--losses",
        losses,
        "--exports-to-keep",
        "2",
        "--exporter-kwargs",
        kwargs,
    )
    check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=16)
    assert len(exporter_runs(MlflowClient(uri), model_dir)) == 1


def test_retention_spares_versions_with_another_alias_and_foreign_versions(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    client = MlflowClient(uri)
    exporter = make_exporter(uri, registered_model_name="tiny", exports_to_keep=1)
    tiny.train(model_dir, exporter, LOSSES, max_steps=8)  # best so far: step 8
    exporter.close()
    champion = client.get_model_version_by_alias("tiny", "best")
    assert champion.tags["global_step"] == "8"
    client.set_registered_model_alias("tiny", "champion", champion.version)
    # A version some other process registered under the same name.
    foreign = client.create_model_version("tiny", source=champion.source, tags={"who": "me"})

    exporter = make_exporter(uri, registered_model_name="tiny", exports_to_keep=1)
    tiny.train(model_dir, exporter, LOSSES)
    exporter.close()

    live = {v.version: v for v in client.search_model_versions("name = 'tiny'")}
    assert champion.version in live and foreign.version in live
    assert client.get_model_version_by_alias("tiny", "champion").version == champion.version
    best = client.get_model_version_by_alias("tiny", "best")
    assert best.tags["global_step"] == "16"
    # Versions of steps 12 (created and retired during the second run) are gone.
    ours = [v for v in live.values() if "global_step" in v.tags]
    assert sorted(v.tags["global_step"] for v in ours) == ["16", "8"]
    # The champion's LoggedModel is kept too: the version still needs its artifacts.
    mlflow.pyfunc.load_model("models:/tiny@champion")


def test_logs_to_the_active_run(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    with mlflow.start_run() as run:
        exporter = make_exporter(None, exports_to_keep=1)
        tiny.train(model_dir, exporter, [3, 1, 2])
        exporter.close()
    check_mlflow(model_dir, uri, run_id=run.info.run_id)
    assert exporter_runs(MlflowClient(uri), model_dir) == []


def test_as_text_exports_log_and_load(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    exporter = make_exporter(uri, as_text=True, exports_to_keep=1, experiment_name="text")
    tiny.train(model_dir, exporter, [3, 1, 2])
    exporter.close()
    found = check_mlflow(model_dir, uri)
    (model,) = found["models"]
    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    x = np.zeros((2, 2), dtype="float32")
    assert len(loaded.predict(pd.DataFrame({"x": list(x)}))) == 2


def test_sync_repairs_what_was_changed_behind_its_back(tmp_path, uri):
    model_dir = str(tmp_path / "model")
    exporter = make_exporter(uri, registered_model_name="tiny", exports_to_keep=2)
    tiny.train(model_dir, exporter, [5, 3, 4, 1])
    exporter.close()
    client = MlflowClient(uri)
    found = check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=8)
    best = found["best"]
    client.delete_registered_model_alias("tiny", "best")
    client.delete_model_version("tiny", best.version)
    client.delete_logged_model(best.tags[TAG_MODEL_ID])

    report = mirror.sync(model_dir, MlflowSettings(tracking_uri=uri, registered_model_name="tiny"))
    assert report.models_logged == [8] and report.versions_created == [8]
    assert report.alias_moved_to == 8
    check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=8)
    before = mlflow_state(uri, "tiny")
    mirror.sync(model_dir, MlflowSettings(tracking_uri=uri, registered_model_name="tiny"))
    assert mlflow_state(uri, "tiny") == before


def test_versions_caught_up_in_one_sync_are_numbered_in_training_order(tmp_path, uri):
    """Three kept exports registered by one sync: version numbers ascend with the global
    step (MLflow's client reads them), not with the ranking (best first)."""
    model_dir = str(tmp_path / "model")
    exporter = make_exporter(None, exports_to_keep=3, log_to_mlflow=False)
    tiny.train(model_dir, exporter, LOSSES)
    mirror.sync(model_dir, MlflowSettings(tracking_uri=uri, registered_model_name="tiny"))
    check_mlflow(model_dir, uri, registered_model_name="tiny", best_step=16)
    versions = MlflowClient(uri).search_model_versions("name = 'tiny'")
    by_number = sorted((int(v.version), int(v.tags["global_step"])) for v in versions)
    assert [step for _, step in by_number] == [8, 12, 16], by_number


def test_unreachable_server_never_stops_training(tmp_path, caplog, mlflow_fails_fast):
    model_dir = str(tmp_path / "model")
    dead = f"http://127.0.0.1:{free_port()}"
    exporter = make_exporter(
        dead, registered_model_name="tiny", exports_to_keep=2, flush_timeout=60
    )
    with caplog.at_level(logging.WARNING, logger="mlflow_best_export"):
        tiny.train(model_dir, exporter, [5, 3, 4, 1])
        exporter.close()
    assert len(kept_dirs(model_dir)) == 2
    warnings = [r for r in caplog.records if "Could not bring MLflow" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_strict_raises_when_mlflow_fails(tmp_path, mlflow_fails_fast):
    dead = f"http://127.0.0.1:{free_port()}"
    exporter = make_exporter(dead, strict=True, exports_to_keep=2)
    with pytest.raises(mlflow.exceptions.MlflowException):
        tiny.train(str(tmp_path / "model"), exporter, [5, 3, 4, 1])
    with pytest.raises(mlflow.exceptions.MlflowException):
        exporter.close()  # the failure is raised, and the export directory released
    lock = ExportDirLock(str(tmp_path / "model" / "export" / exporter.name))
    lock.acquire()  # raises ExportDirLockedError while the exporter still holds it
    lock.release()


def test_outage_of_a_real_server_is_caught_up(tmp_path, monkeypatch, caplog, mlflow_fails_fast):
    server = MlflowServer(str(tmp_path / "server")).start()
    try:
        model_dir = str(tmp_path / "model")
        exporter = make_exporter(server.uri, registered_model_name="tiny", exports_to_keep=2)
        tiny.train(model_dir, exporter, LOSSES, max_steps=6)
        assert exporter.flush(120)
        server.stop()
        with caplog.at_level(logging.WARNING, logger="mlflow_best_export"):
            tiny.train(model_dir, exporter, LOSSES, max_steps=12)
        assert any("Could not bring MLflow" in r.getMessage() for r in caplog.records)
        assert exporter.flush(10) is False  # still down: not in step
        server.start()
        tiny.train(model_dir, exporter, LOSSES)
        exporter.close()
        found = check_mlflow(model_dir, server.uri, registered_model_name="tiny", best_step=16)
        # Artifacts went through the server's proxied artifact store.
        assert found["best"].source.startswith("mlflow-artifacts:")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        try:
            assert_best_predicts_like_the_estimator(model_dir, found["best"])
        finally:
            mlflow.set_tracking_uri(None)
    finally:
        server.stop()


def test_tensorflows_own_default_compare_fn_is_known_to_the_mirror(tmp_path, uri):
    """compare_fn=tf.estimator's own _loss_smaller ranks by loss, and the registry says so:
    each version's description marks loss as the compared metric."""
    from tensorflow_estimator.python.estimator import exporter as tf_exporter

    model_dir = str(tmp_path / "model")
    exporter = make_exporter(
        uri, compare_fn=tf_exporter._loss_smaller, registered_model_name="tiny", exports_to_keep=2
    )
    tiny.train(model_dir, exporter, LOSSES)
    exporter.close()
    client = MlflowClient(uri)
    versions = client.search_model_versions("name = 'tiny'")
    assert len(versions) == 2
    for version in versions:
        description = client.get_model_version("tiny", version.version).description
        assert "| loss (compared) |" in description, description
