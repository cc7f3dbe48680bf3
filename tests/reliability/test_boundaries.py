"""Boundaries: exporters sharing a registered model, and credentials in the tracking URI."""

from __future__ import annotations

import glob
import json
import logging
import os

import harness
import mlflow
import pytest
import tensorflow as tf
import tiny
from mlflow.tracking import MlflowClient
from mlflow_checks import MlflowServer, check_mlflow, exporter_runs
from proxy import FaultProxy

from mlflow_best_export import MLflowBestExporter, loss_smaller, metric_bigger

pytestmark = pytest.mark.slow


def train_with(model_dir, exporters, losses, max_steps=None):
    """train_and_evaluate with several exporters in one EvalSpec."""
    schedule = tiny.schedule_from(losses, harness.EVERY)
    estimator = tiny.build_estimator(model_dir, harness.EVERY, schedule)
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(tiny.train_input_fn, max_steps=max_steps or 2 * len(losses)),
        tf.estimator.EvalSpec(
            tiny.make_eval_input_fn(model_dir, schedule),
            steps=1,
            exporters=exporters,
            start_delay_secs=0,
            throttle_secs=0,
        ),
    )


def test_two_exporters_sharing_a_registered_model_never_delete_each_others_versions(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model_dir = str(tmp_path / "model")
    client = MlflowClient(uri)
    client.create_registered_model("shared")
    foreign = client.create_model_version("shared", source=str(tmp_path), tags={"who": "me"})

    def exporter(name, compare_fn, keep, alias):
        return MLflowBestExporter(
            name=name,
            serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
            compare_fn=compare_fn,
            exports_to_keep=keep,
            tracking_uri=uri,
            registered_model_name="shared",
            alias=alias,
        )

    # One collects hard (keeps 1), the other keeps 3: the first deletes a version at every
    # new best, and must never touch the second's.
    by_loss = exporter("by_loss", loss_smaller, 1, "best_loss")
    by_score = exporter("by_score", metric_bigger("score"), 3, "best_score")
    train_with(model_dir, [by_loss, by_score], list(harness.LOSSES))
    by_loss.close()
    by_score.close()

    check_mlflow(model_dir, uri, registered_model_name="shared", name="by_loss",
                 alias="best_loss", best_step=16)  # fmt: skip
    check_mlflow(model_dir, uri, registered_model_name="shared", name="by_score",
                 alias="best_score", best_step=16)  # fmt: skip

    def versions_of(exporter_name):  # by the bookkeeping tag, read with MLflow's client
        return [
            v
            for v in client.search_model_versions("name = 'shared'")
            if json.loads(v.tags.get("mlflow_best_export", "{}")).get("exporter") == exporter_name
        ]

    loss_versions, score_versions = versions_of("by_loss"), versions_of("by_score")
    assert len(loss_versions) == 1 and len(score_versions) == 3
    live = {str(v.version) for v in client.search_model_versions("name = 'shared'")}
    assert live == {str(foreign.version)} | {str(v.version) for v in loss_versions + score_versions}
    # Retention ran next door: versions were deleted (new bests at 2, 4, 8, 12 and 16; the
    # worker may skip a few that fell out before it got to them).
    assert max(int(v) for v in live) > len(live)


def test_credentials_in_the_tracking_uri_never_reach_logs_or_mlflow(
    tmp_path, caplog, mlflow_fails_fast
):
    server = MlflowServer(str(tmp_path / "server")).start()
    proxy = FaultProxy(server.uri).start()
    try:
        uri = f"http://alice:secret@127.0.0.1:{proxy.port}"
        model_dir = str(tmp_path / "model")
        exporter = MLflowBestExporter(
            serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
            exports_to_keep=2,
            tracking_uri=uri,
            registered_model_name="tiny",
            experiment_name="secretless",
        )
        losses = list(harness.LOSSES)
        with caplog.at_level(logging.DEBUG, logger="mlflow_best_export"):
            tiny.train(model_dir, exporter, losses, max_steps=4)
            exporter.flush(60)
            proxy.drop()  # connection errors: MLflow's messages name the URL it called
            tiny.train(model_dir, exporter, losses, max_steps=10)
            exporter.flush(10)
            proxy.fail()  # and 500s
            tiny.train(model_dir, exporter, losses, max_steps=14)
            exporter.flush(10)
            proxy.heal()
            tiny.train(model_dir, exporter, losses)
            exporter.close()
        assert proxy.dropped and proxy.failed
        check_mlflow(model_dir, server.uri, registered_model_name="tiny", best_step=16)

        formatter = logging.Formatter("%(name)s %(message)s")
        ours = [r for r in caplog.records if r.name.startswith("mlflow_best_export")]
        assert any("Could not bring MLflow" in r.getMessage() for r in ours)
        for record in ours:
            assert "secret" not in formatter.format(record), formatter.format(record)

        client = MlflowClient(server.uri)
        texts = []
        (run,) = exporter_runs(client, model_dir)
        texts += [json.dumps(run.data.tags), json.dumps(run.data.params), run.info.run_name]
        for model in client.search_logged_models(experiment_ids=[run.info.experiment_id]):
            texts += [json.dumps(model.tags), json.dumps(model.params), model.artifact_location]
        for version in client.search_model_versions("name = 'tiny'"):
            texts += [json.dumps(version.tags), version.description or "", version.source]
        for path in glob.glob(os.path.join(model_dir, "export", "*", "*", "assets.extra", "*")):
            with open(path) as f:
                texts.append(f.read())
        for model in client.search_logged_models(experiment_ids=[run.info.experiment_id]):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location}/MLmodel",
                dst_path=str(tmp_path / model.model_id),
                tracking_uri=server.uri,
            )
            with open(local) as f:
                texts.append(f.read())
        assert len(texts) > 10
        leaks = [t for t in texts if "secret" in t]
        assert not leaks, leaks
    finally:
        proxy.stop()
        server.stop()


def test_credentials_stay_out_of_logs_when_an_upload_fails(tmp_path, caplog, mlflow_fails_fast):
    server = MlflowServer(str(tmp_path / "server")).start()
    proxy = FaultProxy(server.uri).start()
    try:
        exporter = MLflowBestExporter(
            serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
            exports_to_keep=1,
            tracking_uri=f"http://alice:secret@127.0.0.1:{proxy.port}",
            flush_timeout=30,
        )
        # Artifact uploads and LoggedModel updates fail: log_model fails half-way and so
        # does marking the LoggedModel FAILED.
        proxy.drop(only=("/mlflow-artifacts/", "/logged-models/m-"))
        with caplog.at_level(logging.DEBUG, logger="mlflow_best_export"):
            tiny.train(str(tmp_path / "model"), exporter, [3, 1])
            exporter.close()
        assert proxy.dropped
        formatter = logging.Formatter("%(name)s %(message)s")
        ours = [r for r in caplog.records if r.name.startswith("mlflow_best_export")]
        texts = [formatter.format(r) for r in ours]
        assert any("API request to" in t for t in texts), texts  # MLflow's messages are there
        assert not [t for t in texts if "secret" in t]
    finally:
        proxy.stop()
        server.stop()
