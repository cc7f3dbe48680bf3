"""MLflowBestCheckpoint on real ``model.fit`` runs: killed, resumed with worse validation data,
on local disk, ``ram://``, ``s3://`` (moto) and under a two-worker strategy.

Oracles: the training script saves every epoch's weights and logs itself
(``keras_fit.OracleSaver``); a kept SavedModel is identified by matching its
predictions on a probe with those of each epoch's weights. MLflow is read with
its own client and pyfunc.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import keras_fit
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import tensorflow as tf
from conftest import TESTS, free_port, subprocess_env
from mlflow.tracking import MlflowClient
from mlflow_checks import exporter_runs

pytestmark = pytest.mark.slow
KEEP = 2
MODEL = "keras-best"


def run_fit(*args: str, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        [sys.executable, str(TESTS / "keras_fit.py"), *args],
        env=subprocess_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def expected_kept(logs: dict[int, float], keep: int) -> list[int]:
    """The last ``keep`` epochs that each beat every epoch before them (val_loss, finite)."""
    best, chain = math.inf, []
    for epoch in sorted(logs):
        if math.isfinite(logs[epoch]) and logs[epoch] < best:
            best = logs[epoch]
            chain.append(epoch)
    return chain[-keep:]


def epoch_predictions(oracle_dir: str, logs: dict[int, float]) -> dict[int, np.ndarray]:
    """Each epoch's predictions on the probe, from the weights the script saved."""
    found = {}
    for epoch in logs:
        model = keras_fit.build_model()
        model.load_weights(os.path.join(oracle_dir, f"epoch-{epoch}.weights.h5"))
        found[epoch] = model.predict(keras_fit.probe(), verbose=0)
    return found


def epoch_of(predictions, by_epoch: dict[int, np.ndarray]) -> int:
    """The one epoch whose weights predict ``predictions`` (an array or a frame)."""
    predictions = np.asarray(predictions, dtype="float64")
    matches = [e for e, p in by_epoch.items() if np.allclose(np.ravel(p), np.ravel(predictions))]
    assert len(matches) == 1, matches
    return matches[0]


def saved_model_predictions(path: str) -> np.ndarray:
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(**{k: tf.constant(v) for k, v in keras_fit.probe().items()})
    return next(iter(out.values())).numpy()


def local_exports(export_base: str) -> list[str]:
    return sorted(
        os.path.join(export_base, n)
        for n in os.listdir(export_base)
        if len(n) == 10 and n.isdigit()
        and os.path.exists(os.path.join(export_base, n, "saved_model.pb"))
    )  # fmt: skip


def check_mlflow(uri: str, directory: str, logs, by_epoch, want: list[int]) -> None:
    """Versions = the kept epochs, ascending with them; `best` on the best; each epoch's
    val_loss mirrored once at step = epoch; one run, found again by the second process."""
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    probe = pd.DataFrame({k: v[:, 0] for k, v in keras_fit.probe().items()})
    epochs = [
        epoch_of(mlflow.pyfunc.load_model(f"models:/{MODEL}/{v.version}").predict(probe), by_epoch)
        for v in versions
    ]
    assert epochs == sorted(want)
    best = client.get_model_version_by_alias(MODEL, "best")
    assert epochs[[v.version for v in versions].index(best.version)] == min(want, key=logs.get)
    (run,) = exporter_runs(client, directory)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == sorted(logs)
    assert {m.step: m.value for m in history} == pytest.approx(logs, rel=1e-6)


def test_killed_and_resumed_fit_keeps_the_best_where_model_checkpoint_does_not(tmp_path):
    directory, oracle = str(tmp_path / "run"), str(tmp_path / "oracle")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "--directory", directory, "--oracle-dir", oracle, "--epochs", "8", "--keep", str(KEEP),
        "--backup", str(tmp_path / "backup"), "--model-checkpoint", str(tmp_path / "mc.h5"),
        "--mlflow", json.dumps({"tracking_uri": uri, "registered_model_name": MODEL}),
    ]  # fmt: skip
    first = run_fit(*common, "--kill-in-epoch", "6")
    assert first.returncode == -9, first.stderr[-3000:]
    assert sorted(keras_fit.oracle_logs(oracle)) == [1, 2, 3, 4, 5]
    # Resumed from the backup of epoch 5, with far noisier validation data: every later
    # epoch is worse than the best before the kill.
    second = run_fit(*common, "--val-noise", "3.0")
    assert second.returncode == 0, second.stderr[-3000:]
    logs = keras_fit.oracle_logs(oracle)
    assert sorted(logs) == list(range(1, 9))
    want = expected_kept(logs, KEEP)
    by_epoch = epoch_predictions(oracle, logs)

    exports = local_exports(os.path.join(directory, "export", "best_exporter"))
    assert sorted(epoch_of(saved_model_predictions(p), by_epoch) for p in exports) == want
    check_mlflow(uri, directory, logs, by_epoch, want)
    # ModelCheckpoint(save_best_only=True), in the same runs, forgot its best on restart.
    checkpointed = tf.keras.models.load_model(str(tmp_path / "mc.h5"))
    ended_with = epoch_of(checkpointed.predict(keras_fit.probe(), verbose=0), by_epoch)
    assert logs[ended_with] > min(logs[e] for e in want), (ended_with, logs)

    # Served through pyfunc as model.predict answers, on 10,000 rows.
    best = min(want, key=logs.get)
    model = keras_fit.build_model()
    model.load_weights(os.path.join(oracle, f"epoch-{best}.weights.h5"))
    rows, _ = keras_fit.data(10_000, seed=5, noise=0.0)
    frame = pd.DataFrame({k: v[:, 0] for k, v in rows.items()})
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@best")
    started = time.perf_counter()
    answer = served.predict(frame)
    seconds = time.perf_counter() - started
    np.testing.assert_allclose(
        answer.to_numpy().ravel(), model.predict(rows, verbose=0).ravel(), rtol=1e-5, atol=1e-6
    )
    print(f"pyfunc: {len(frame) / seconds:,.0f} rows/s on {len(frame):,} rows")


def test_command_line_reads_a_keras_directory(tmp_path):
    directory, oracle = str(tmp_path / "run"), str(tmp_path / "oracle")
    done = run_fit("--directory", directory, "--oracle-dir", oracle, "--epochs", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    logs = keras_fit.oracle_logs(oracle)
    shown = subprocess.run(
        [sys.executable, "-m", "mlflow_best_export.cli", "history", directory, "--format", "json"],
        env=subprocess_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    table = json.loads(shown.stdout)
    assert {r["step"]: r["val_loss"] for r in table["records"]} == pytest.approx(logs, rel=1e-6)
    assert table["best_step"] == min(logs, key=logs.get)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    synced = subprocess.run(
        [sys.executable, "-m", "mlflow_best_export.cli", "sync", directory,
         "--tracking-uri", uri, "--registered-model", MODEL],
        env=subprocess_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    versions = MlflowClient(uri).search_model_versions(f"name='{MODEL}'")
    assert len(versions) == len(expected_kept(logs, KEEP))


def test_ram_filesystem_restart_in_one_process(tmp_path):
    directory = f"ram://keras-{os.getpid()}-{time.time_ns()}/run"
    oracle = str(tmp_path / "oracle")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = {"tracking_uri": uri, "registered_model_name": MODEL}
    x, y = keras_fit.data(512, seed=1, noise=0.05)
    for epochs, noise in ((4, 0.0), (8, 3.0)):  # the second fit: a restart, worse validation
        from mlflow_best_export.keras import MLflowBestCheckpoint

        tf.keras.utils.set_random_seed(7)
        model = keras_fit.build_model()
        if epochs == 8:
            model.load_weights(os.path.join(oracle, "epoch-4.weights.h5"))
        x_val, y_val = keras_fit.data(128, seed=2, noise=noise)
        callback = MLflowBestCheckpoint(directory, exports_to_keep=KEEP, **options)
        model.fit(
            x, y, validation_data=(x_val, y_val), epochs=epochs, initial_epoch=epochs - 4,
            batch_size=32, verbose=0, callbacks=[keras_fit.OracleSaver(oracle), callback],
        )  # fmt: skip
    logs = keras_fit.oracle_logs(oracle)
    want = expected_kept(logs, KEEP)
    by_epoch = epoch_predictions(oracle, logs)
    base = f"{directory}/export/best_exporter"
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(base) if n.rstrip("/").isdigit()]
    kept = [epoch_of(saved_model_predictions(f"{base}/{n}"), by_epoch) for n in names]
    assert sorted(kept) == want
    check_mlflow(uri, directory, logs, by_epoch, want)


def test_s3_killed_and_resumed(tmp_path):
    pytest.importorskip("tensorflow_io", reason="the s3:// suite needs tensorflow-io")
    from s3 import s3_server

    with s3_server(str(tmp_path / "moto.log")) as s3:
        bucket = s3.new_bucket()
        directory, oracle = f"s3://{bucket}/run", str(tmp_path / "oracle")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        common = [
            "--directory", directory, "--oracle-dir", oracle, "--epochs", "6",
            "--keep", str(KEEP), "--backup", str(tmp_path / "backup"),
            "--mlflow", json.dumps({"tracking_uri": uri, "registered_model_name": MODEL}),
        ]  # fmt: skip
        first = run_fit(*common, "--kill-in-epoch", "4", env=s3.env)
        assert first.returncode == -9, first.stderr[-3000:]
        second = run_fit(*common, "--val-noise", "3.0", "--exit-process", env=s3.env)
        assert second.returncode == 0, second.stderr[-3000:]
        logs = keras_fit.oracle_logs(oracle)
        want = expected_kept(logs, KEEP)
        by_epoch = epoch_predictions(oracle, logs)
        prefix = "run/export/best_exporter"
        kept = []
        for name, files in s3.exports(bucket, prefix).items():
            assert len(name) == 10 and name.isdigit() and "saved_model.pb" in files, name
            local = tmp_path / "copies" / name
            for file in files:
                (local / file).parent.mkdir(parents=True, exist_ok=True)
                (local / file).write_bytes(s3.read(bucket, f"{prefix}/{name}/{file}"))
            kept.append(epoch_of(saved_model_predictions(str(local)), by_epoch))
        assert sorted(kept) == want
        check_mlflow(uri, directory, logs, by_epoch, want)


def test_only_the_chief_of_two_workers_exports(tmp_path):
    directory = str(tmp_path / "run")
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(TESTS / "keras_fit.py"),
                    "--directory",
                    directory,
                    "--epochs",
                    "4",
                    "--multi-worker",
                    "--oracle-dir",
                    str(tmp_path / f"o{index}"),
                ],
                env=subprocess_env(TF_CONFIG=config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    logs = keras_fit.oracle_logs(str(tmp_path / "o0"))
    want = expected_kept(logs, KEEP)
    by_epoch = epoch_predictions(str(tmp_path / "o0"), logs)
    exports = local_exports(os.path.join(directory, "export", "best_exporter"))
    assert sorted(epoch_of(saved_model_predictions(p), by_epoch) for p in exports) == want
    # One writer of the history: the chief's one event file.
    assert len(os.listdir(os.path.join(directory, "eval"))) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"directory": ""}, "`directory` must be"),
        ({"mode": "best"}, "`mode` must be"),
        ({"save_freq": 0}, "`save_freq` must be"),
        ({"exports_to_keep": 0}, "exports_to_keep"),
        ({"name": "a/b"}, "`name`"),
        ({"alias": ""}, "`alias`"),
        ({"strict": "yes"}, "`strict`"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path, kwargs, message):
    from mlflow_best_export.keras import MLflowBestCheckpoint

    arguments = {"directory": str(tmp_path / "run"), **kwargs}
    with pytest.raises(ValueError, match=message):
        MLflowBestCheckpoint(**arguments)


def test_example_script_twice_on_the_embedded_store(tmp_path):
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the example uses MLflow's own default
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(TESTS.parent / "examples" / "keras_fit.py"), "run"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    exports = local_exports(str(tmp_path / "run" / "export" / "best_exporter"))
    assert len(exports) == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name='keras-example'")
    assert (
        sorted(json.loads(v.tags["mlflow_best_export"])["export_dir"] for v in versions) == exports
    )
    assert client.get_model_version_by_alias("keras-example", "best").version in {
        v.version for v in versions
    }


def test_models_serve_answers_like_model_predict(tmp_path, serve):
    """`mlflow models serve -m models:/NAME@best`: a JSON frame of the input columns in."""
    directory, oracle = str(tmp_path / "run"), str(tmp_path / "oracle")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = json.dumps({"tracking_uri": uri, "registered_model_name": MODEL})
    done = run_fit("--directory", directory, "--oracle-dir", oracle, "--epochs", "3",
                   "--mlflow", options)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    logs = keras_fit.oracle_logs(oracle)
    model = keras_fit.build_model()
    model.load_weights(os.path.join(oracle, f"epoch-{min(logs, key=logs.get)}.weights.h5"))
    rows = keras_fit.probe(8)
    url = serve(f"models:/{MODEL}@best", uri)
    records = [{k: float(v[i, 0]) for k, v in rows.items()} for i in range(8)]
    response = requests.post(f"{url}/invocations", json={"dataframe_records": records}, timeout=60)
    assert response.status_code == 200, response.text
    got = pd.DataFrame(response.json()["predictions"]).to_numpy(dtype=float).ravel()
    np.testing.assert_allclose(got, model.predict(rows, verbose=0).ravel(), rtol=1e-5, atol=1e-6)
