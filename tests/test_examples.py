"""The examples run as documented, and `mlflow models serve` answers like the Estimator.

The README's main job (examples/train_and_evaluate.py) runs in a fresh
directory on MLflow's embedded default store; examples/promote.py and
examples/serve.sh then work on what it left, and the served best model's
answers are compared with Estimator.predict on the same checkpoint. The same
comparison runs for a raw-tensor serving receiver trained by tests/tiny.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import requests
import tensorflow as tf
import tiny
from conftest import REPO, subprocess_env
from mlflow.tracking import MlflowClient
from mlflow_checks import check_mlflow, free_port

from mlflow_best_export import MLflowBestExporter

pytestmark = pytest.mark.slow
EXAMPLES = REPO / "examples"


def example_env(**extra: str) -> dict[str, str]:
    env = subprocess_env(**extra)
    env.pop("MLFLOW_TRACKING_URI", None)  # the examples use MLflow's own default
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run(args, cwd, code=0, timeout=900):
    proc = subprocess.run(
        args, cwd=cwd, env=example_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == code, (proc.returncode, proc.stdout[-3000:], proc.stderr[-5000:])
    return proc


def load_example():
    spec = importlib.util.spec_from_file_location("example", EXAMPLES / "train_and_evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("example")
    proc = run(
        [
            sys.executable,
            str(EXAMPLES / "train_and_evaluate.py"),
            "--max-steps",
            "600",
            "--checkpoint-every",
            "100",
        ],
        cwd,
    )
    return cwd, proc.stdout


def test_main_job_ends_with_where_to_look(example_run):
    cwd, out = example_run
    assert (cwd / "mlflow.db").exists()  # the embedded default store, in the working directory
    assert f"mlflow ui --backend-store-uri sqlite:///{cwd}/mlflow.db" in out
    assert "models:/house-prices@best" in out
    found = check_mlflow(
        str(cwd / "example_model_dir"),
        f"sqlite:///{cwd}/mlflow.db",
        registered_model_name="house-prices",
    )
    assert 1 <= len(found["kept"]) <= 3


def test_promote_example_refuses_then_promotes(example_run):
    cwd, _ = example_run
    script = str(EXAMPLES / "promote.py")
    refused = run([sys.executable, script, "--require", "loss<0.001"], cwd, code=1)
    assert "refused: Not promoting house-prices" in refused.stderr
    promoted = run([sys.executable, script, "--require", "loss<1e9"], cwd)
    assert "moved house-prices@champion" in promoted.stdout
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    best = client.get_model_version_by_alias("house-prices", "best")
    assert client.get_model_version_by_alias("house-prices", "champion").version == best.version


def test_serve_example_answers_like_the_estimator(example_run):
    cwd, _ = example_run
    port = str(free_port())
    proc = run(["bash", str(EXAMPLES / "serve.sh"), "house-prices", port], cwd, timeout=600)
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    got = [row["outputs"] for row in answer["predictions"]]

    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    best = client.get_model_version_by_alias("house-prices", "best")
    example = load_example()
    estimator, _ = example.build_estimator(str(cwd / "example_model_dir"))
    rows = {
        "area": [120.0, 60.0],
        "rooms": [4.0, 2.0],
        "age": [10.0, 50.0],
        "distance": [5.0, 20.0],
    }
    features = {k: np.array(v, dtype="float32") for k, v in rows.items()}
    input_fn = tf.compat.v1.estimator.inputs.numpy_input_fn(features, shuffle=False)
    want = [
        float(p["predictions"][0])
        for p in estimator.predict(input_fn, checkpoint_path=best.tags["checkpoint_path"])
    ]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_models_serve_raw_receiver_from_a_training_run(tmp_path, serve):
    """The raw-tensor receiver: a DataFrame column per input, served from models:/NAME@best."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model_dir = str(tmp_path / "model")
    exporter = MLflowBestExporter(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        exports_to_keep=2,
        tracking_uri=uri,
        registered_model_name="tiny-raw",
    )
    tiny.train(model_dir, exporter, [5, 3, 4, 1, 2])
    exporter.close()
    best = MlflowClient(uri).get_model_version_by_alias("tiny-raw", "best")
    assert best.tags["global_step"] == "8"

    x = np.random.RandomState(5).uniform(-1, 1, size=(4, 2)).astype("float32")
    url = serve("models:/tiny-raw@best", uri)
    payload = {"dataframe_split": {"columns": ["x"], "data": [[row.tolist()] for row in x]}}
    response = requests.post(f"{url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    got = pd.DataFrame(response.json()["predictions"])["y"]
    estimator = tiny.build_estimator(model_dir, 2, {2: 1.0})
    input_fn = tf.compat.v1.estimator.inputs.numpy_input_fn({"x": x}, shuffle=False)
    want = [
        float(p["y"][0])
        for p in estimator.predict(input_fn, checkpoint_path=best.tags["checkpoint_path"])
    ]
    np.testing.assert_allclose(np.array(got.tolist(), dtype=float).reshape(-1), want, rtol=1e-5)


def test_example_readme_commands_match():
    """The README's Quick start runs exactly this example."""
    readme = (REPO / "README.md").read_text()
    assert re.search(r"pip install \. && python examples/train_and_evaluate\.py", readme)
