"""serving.py for real: tiny Estimators, their SavedModels, MLflow on SQLite, `mlflow models serve`.

One Estimator is trained per module and exported with both kinds of serving
input receiver; every prediction made through MLflow is compared with
``Estimator.predict`` on the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os

import estimators
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.models import Model
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from mlflow_best_export import __version__, frames, serving
from mlflow_best_export import flavor as flavor_lib
from mlflow_best_export import signature as signature_lib

KINDS = ("raw", "parsing")
OUTPUTS = ["label", "scores", "y"]
USER_FILE = "nested/vocab.txt"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained Estimator and its exports: {(kind, as_text): export_dir}."""
    root = tmp_path_factory.mktemp("estimator")
    vocab = root / "vocab.txt"
    vocab.write_text("low\nmid\nhigh\n")
    metadata = root / "metadata.json"
    metadata.write_text(json.dumps({"global_step": 30}))
    estimator = estimators.train(str(root / "model"))
    exports = {}
    for kind in KINDS:
        for as_text in (False, True):
            exports[kind, as_text] = estimators.export(
                estimator,
                str(root / "model" / "export" / f"{kind}{'_text' if as_text else ''}"),
                kind,
                as_text=as_text,
                assets_extra={"mlflow_best_export.json": str(metadata), USER_FILE: str(vocab)},
            )
    return estimator, exports


@pytest.fixture(scope="module")
def expected(trained):
    """Estimator.predict on the module's sample frame."""
    estimator, _ = trained
    data = estimators.frame(7)
    return data, estimators.predict(estimator, data)


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A private SQLite store, also made the global one (models:/ URIs resolve through it)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(
        "serving", artifact_location=str(tmp_path / "artifacts")
    )
    with _use_tracking_uri(uri):
        yield client, experiment_id, uri


def assert_predictions_match(got: pd.DataFrame, want: dict[str, np.ndarray]) -> None:
    """A pyfunc answer equals Estimator.predict: scalars for [batch, 1], lists per row else."""
    assert sorted(got.columns) == OUTPUTS
    assert len(got) == len(want["y"])
    np.testing.assert_allclose(got["y"].to_numpy(dtype="float64"), want["y"][:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.array(got["scores"].tolist()), want["scores"], rtol=1e-5)
    assert list(got["label"]) == [v.decode() for v in want["label"]]


def signature_dict(schema) -> list[dict]:
    return [spec.to_dict() for spec in schema.inputs]


# -- the signature ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_signature_lists_feature_columns_and_outputs(trained, kind):
    _, exports = trained
    signature = signature_lib.signature_of(exports[kind, False])

    assert signature.key == "serving_default"
    assert signature.parses_examples == (kind == "parsing")
    assert [t.name for t in signature.outputs] == OUTPUTS
    mlflow_signature = signature.to_model_signature()
    inputs = {spec["name"]: spec for spec in signature_dict(mlflow_signature.inputs)}
    assert list(inputs) == ["a", "b", "n"]  # the features, never the "examples" string
    assert inputs["a"]["type"] == "double"
    assert inputs["b"] == {
        "type": "array",
        "items": {"type": "double"},
        "name": "b",
        "required": True,
    }
    assert inputs["n"]["type"] == "long"
    # A parsing receiver's default makes the feature optional.
    assert inputs["n"]["required"] == (kind == "raw")
    outputs = {spec["name"]: spec for spec in signature_dict(mlflow_signature.outputs)}
    assert outputs["y"]["type"] == "float"
    assert outputs["scores"]["type"] == "array"
    assert outputs["label"]["type"] == "string"


def test_signature_of_parsing_export_reads_the_feature_spec(trained):
    _, exports = trained
    signature = signature_lib.signature_of(exports["parsing", True])

    assert signature.examples_input == "examples"
    assert signature.features == (
        signature_lib.Feature("a", "float32", "dense", (), True),
        signature_lib.Feature("b", "float32", "dense", (2,), True),
        signature_lib.Feature("n", "int64", "dense", (), False),
    )


def test_signature_of_rejects_what_is_not_a_saved_model(tmp_path, trained):
    _, exports = trained
    with pytest.raises(ValueError, match="not a SavedModel"):
        signature_lib.signature_of(tmp_path)
    with pytest.raises(ValueError, match="no signature 'nope'.*serving_default"):
        signature_lib.signature_of(exports["raw", False], "nope")


# -- save_model and the pyfunc loader ---------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["pb", "pbtxt"])
@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_predicts_like_the_estimator(tmp_path, trained, expected, kind, as_text):
    _, exports = trained
    data, want = expected
    path = tmp_path / "model"

    flavor_lib.save_model(exports[kind, as_text], path)

    copied = path / flavor_lib.SAVED_MODEL_SUBPATH
    assert (copied / ("saved_model.pbtxt" if as_text else "saved_model.pb")).exists()
    assert json.loads((copied / "assets.extra" / "mlflow_best_export.json").read_text()) == {
        "global_step": 30
    }
    assert (copied / "assets.extra" / USER_FILE).read_text() == "low\nmid\nhigh\n"
    meta = Model.load(str(path))
    assert meta.flavors["python_function"]["loader_module"] == "mlflow_best_export.serving"
    flavor = meta.flavors[flavor_lib.FLAVOR_NAME]
    assert flavor["receiver"] == kind
    assert flavor["signature_key"] == "serving_default"
    assert flavor["tensorflow_version"].startswith("2.15.")
    assert [spec["name"] for spec in signature_dict(meta.signature.inputs)] == ["a", "b", "n"]

    model = mlflow.pyfunc.load_model(str(path))
    assert_predictions_match(model.predict(data), want)
    # The loaded model is reused: a second, smaller batch goes through the same function.
    assert_predictions_match(model.predict(data.iloc[:2]), {k: v[:2] for k, v in want.items()})


def test_requirements_reinstall_tensorflow_and_this_package(tmp_path, trained):
    _, exports = trained
    flavor_lib.save_model(exports["raw", False], tmp_path / "model")

    requirements = (tmp_path / "model" / "requirements.txt").read_text().splitlines()
    import tensorflow as tf

    assert f"tensorflow=={tf.__version__}" in requirements
    assert f"mlflow-best-export=={__version__}" in requirements
    assert "numpy<2" in requirements
    assert "pandas" in requirements
    assert any(r.startswith("mlflow==") for r in requirements)
    assert (tmp_path / "model" / "python_env.yaml").exists()


def test_save_model_extra_requirements_and_refusal_to_overwrite(tmp_path, trained):
    _, exports = trained
    path = tmp_path / "model"
    flavor_lib.save_model(exports["raw", False], path, extra_pip_requirements=["pyyaml"])
    assert "pyyaml" in (path / "requirements.txt").read_text().splitlines()
    with pytest.raises(mlflow.exceptions.MlflowException, match="already exists"):
        flavor_lib.save_model(exports["raw", False], path)


def test_parsing_model_applies_the_graph_default_for_a_missing_feature(tmp_path, trained):
    estimator, exports = trained
    path = tmp_path / "model"
    flavor_lib.save_model(exports["parsing", False], path)
    data = estimators.frame(4)

    # Through pyfunc (MLflow enforces the signature) the optional column may be left out...
    without_n = mlflow.pyfunc.load_model(str(path)).predict(data[["a", "b"]])
    assert_predictions_match(without_n, estimators.predict(estimator, data.assign(n=0)))
    # ...and the loader itself also takes gaps in it (MLflow refuses a long column with NaNs).
    loaded = serving.load_serving_model(exports["parsing", False])
    assert loaded.vectorized  # the columns go below ParseExample, no tf.Example is built
    some_missing = loaded.predict(data.assign(n=[None, 2, None, 1]))
    assert_predictions_match(
        some_missing, estimators.predict(estimator, data.assign(n=[0, 2, 0, 1]))
    )


@pytest.mark.parametrize("kind", KINDS)
def test_serving_model_takes_dicts_and_records(trained, expected, kind):
    _, exports = trained
    data, want = expected
    model = serving.load_serving_model(exports[kind, False])

    columns = {
        "a": data["a"].to_numpy(),
        "b": np.array(data["b"].tolist()),
        "n": data["n"].to_numpy(),
    }
    assert_predictions_match(model.predict(columns), want)
    assert_predictions_match(model.predict(data.to_dict(orient="records")), want)


def test_parsing_without_a_readable_spec_encodes_columns_by_dtype(trained, expected):
    import tensorflow as tf

    _, exports = trained
    data, want = expected
    model = serving.load_serving_model(exports["parsing", False])
    # As if the graph's ParseExample op could not be read.
    model.signature = dataclasses.replace(model.signature, features=None)

    first = tf.train.Example.FromString(frames.examples_from_frame(data, None)[0])
    assert list(first.features.feature["b"].float_list.value) == pytest.approx(data["b"][0])
    assert list(first.features.feature["n"].int64_list.value) == [data["n"][0]]
    assert_predictions_match(model.predict(data), want)


def test_raw_model_reports_a_missing_input(trained):
    _, exports = trained
    model = serving.load_serving_model(exports["raw", False])
    with pytest.raises(ValueError, match="needs the input 'n'"):
        model.predict(estimators.frame(2)[["a", "b"]])


@pytest.mark.parametrize(
    ("kind", "signature_key", "column"),
    [("raw", "predict", "predictions"), ("parsing", "serving_default", "outputs")],
)
def test_canned_regressor(tmp_path, kind, signature_key, column):
    """A canned Estimator's raw export has only 'predict'; its parsing export serves 'regress'."""
    import tensorflow as tf

    columns = [tf.feature_column.numeric_column("a")]
    regressor = tf.estimator.LinearRegressor(columns, model_dir=str(tmp_path / "linear"))

    def input_fn():
        a = np.linspace(-1, 1, 64, dtype="float32")
        return tf.data.Dataset.from_tensor_slices(({"a": a}, 3 * a[:, None])).repeat().batch(16)

    regressor.train(input_fn, max_steps=20)

    def receiver():
        if kind == "parsing":
            spec = tf.feature_column.make_parse_example_spec(columns)
            return tf.estimator.export.build_parsing_serving_input_receiver_fn(spec)()
        placeholder = tf.compat.v1.placeholder(tf.float32, [None], name="a")
        return tf.estimator.export.build_raw_serving_input_receiver_fn({"a": placeholder})()

    export_dir = regressor.export_saved_model(str(tmp_path / "export"), receiver).decode()
    flavor_lib.save_model(export_dir, tmp_path / "model")
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))

    data = pd.DataFrame({"a": [-0.5, 0.0, 0.25]})
    got = model.predict(data)

    def predict_input_fn():
        return tf.data.Dataset.from_tensor_slices({"a": data["a"].to_numpy("float32")}).batch(3)

    want = [p["predictions"][0] for p in regressor.predict(predict_input_fn)]
    flavor = Model.load(str(tmp_path / "model")).flavors[flavor_lib.FLAVOR_NAME]
    assert flavor["signature_key"] == signature_key
    assert flavor["receiver"] == kind
    assert list(got.columns) == [column]
    np.testing.assert_allclose(got[column].to_numpy(dtype="float64"), want, rtol=1e-5)
    if kind == "parsing":
        # A signature chosen at save time is the one pyfunc serves (read from the MLmodel).
        flavor_lib.save_model(export_dir, tmp_path / "by-key", signature_key="predict")
        by_key = mlflow.pyfunc.load_model(str(tmp_path / "by-key")).predict(data)
        assert list(by_key.columns) == ["predictions"]
        np.testing.assert_allclose(np.stack(by_key["predictions"]).reshape(-1), want, rtol=1e-5)


# -- LoggedModels and the registry ------------------------------------------------------------


def test_log_model_creates_a_ready_logged_model_linked_to_the_run(tracking, trained, expected):
    client, experiment_id, _ = tracking
    _, exports = trained
    data, want = expected
    run = client.create_run(experiment_id)

    model = flavor_lib.log_model(
        client,
        exports["parsing", False],
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        name="best_exporter-step-30",
        step=30,
        params={"global_step": "30"},
        tags={"mlflow_best_export.key": "k1"},
    )

    assert model.status == LoggedModelStatus.READY
    fetched = client.get_logged_model(model.model_id)
    assert fetched.status == LoggedModelStatus.READY
    assert fetched.name == "best_exporter-step-30"
    assert fetched.model_type == flavor_lib.MODEL_TYPE
    assert fetched.source_run_id == run.info.run_id
    assert fetched.params == {"global_step": "30"}
    assert fetched.tags["mlflow_best_export.key"] == "k1"
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(model.model_id, 30)]
    found = client.search_logged_models(
        [experiment_id], filter_string="tags.`mlflow_best_export.key` = 'k1'"
    )
    assert [m.model_id for m in found] == [model.model_id]

    artifacts = os.path.join(fetched.artifact_location, flavor_lib.SAVED_MODEL_SUBPATH)
    assert os.path.exists(os.path.join(artifacts, "assets.extra", "mlflow_best_export.json"))
    assert os.path.exists(os.path.join(artifacts, "assets.extra", USER_FILE))
    mlmodel = Model.load(f"models:/{model.model_id}")
    assert mlmodel.model_id == model.model_id
    assert mlmodel.run_id == run.info.run_id

    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    assert_predictions_match(loaded.predict(data), want)


def test_log_model_without_a_run(tracking, trained):
    client, experiment_id, _ = tracking
    _, exports = trained
    model = flavor_lib.log_model(
        client, exports["raw", True], experiment_id=experiment_id, run_id=None, name="no-run"
    )
    assert client.get_logged_model(model.model_id).status == LoggedModelStatus.READY
    assert model.source_run_id is None


def test_log_model_marks_the_logged_model_failed_and_raises(tracking, tmp_path):
    client, experiment_id, _ = tracking
    run = client.create_run(experiment_id)
    (tmp_path / "not_a_saved_model").mkdir()

    with pytest.raises(ValueError, match="not a SavedModel"):
        flavor_lib.log_model(
            client,
            tmp_path / "not_a_saved_model",
            experiment_id=experiment_id,
            run_id=run.info.run_id,
            name="broken",
        )

    [model] = client.search_logged_models([experiment_id])
    assert model.status == LoggedModelStatus.FAILED


@pytest.mark.parametrize("kind", KINDS)
def test_registered_version_loads_by_alias(tracking, trained, expected, kind):
    client, experiment_id, _ = tracking
    _, exports = trained
    data, want = expected
    run = client.create_run(experiment_id)
    model = flavor_lib.log_model(
        client,
        exports[kind, False],
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        name=kind,
        step=30,
    )

    client.create_registered_model("tiny")
    version = client.create_model_version(
        "tiny", source=model.model_uri, run_id=run.info.run_id, model_id=model.model_id
    )
    client.set_registered_model_alias("tiny", "best", version.version)

    # The SQL registry store keeps no model_id on versions; the source names the model.
    assert version.source == f"models:/{model.model_id}"
    assert client.get_model_version_by_alias("tiny", "best").version == version.version
    loaded = mlflow.pyfunc.load_model("models:/tiny@best")
    assert_predictions_match(loaded.predict(data), want)


def test_registering_by_artifact_location_needs_no_global_tracking_uri(tracking, trained):
    """A SQLite registry resolves a models:/ source through the *global* tracking URI.

    Registering with the LoggedModel's artifact location (and the run id) as the
    source avoids that, so a client with its own URI can register on its own.
    """
    client, experiment_id, uri = tracking
    _, exports = trained
    run = client.create_run(experiment_id)
    model = flavor_lib.log_model(
        client,
        exports["raw", False],
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        name="raw",
    )
    client.create_registered_model("tiny")
    elsewhere = f"sqlite:///{os.path.dirname(uri[len('sqlite:///') :])}/elsewhere.db"
    with _use_tracking_uri(elsewhere):
        with pytest.raises(mlflow.exceptions.MlflowException, match="not found"):
            client.create_model_version(
                "tiny", source=model.model_uri, run_id=run.info.run_id, model_id=model.model_id
            )
        version = client.create_model_version(
            "tiny",
            source=model.artifact_location,
            run_id=run.info.run_id,
            model_id=model.model_id,
        )
    assert version.source == model.artifact_location
    assert client.get_model_version_download_uri("tiny", version.version) == (
        model.artifact_location
    )


# -- mlflow models serve ----------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_the_estimator(tracking, trained, expected, serve):
    import requests

    client, experiment_id, uri = tracking
    estimator, exports = trained
    data, want = expected
    run = client.create_run(experiment_id)
    client.create_registered_model("tiny")
    for kind in KINDS:
        model = flavor_lib.log_model(
            client,
            exports[kind, False],
            experiment_id=experiment_id,
            run_id=run.info.run_id,
            name=kind,
        )
        version = client.create_model_version(
            "tiny", source=model.model_uri, run_id=run.info.run_id, model_id=model.model_id
        )
        client.set_registered_model_alias("tiny", kind, version.version)
    client.set_registered_model_alias("tiny", "best", version.version)  # the parsing one

    split = json.loads(data.to_json(orient="split", index=False))
    records = json.loads(data.to_json(orient="records"))
    for alias in ("raw", "best"):
        url = serve(f"models:/tiny@{alias}", uri)
        for payload in ({"dataframe_split": split}, {"dataframe_records": records}):
            response = requests.post(f"{url}/invocations", json=payload, timeout=60)
            assert response.status_code == 200, response.text
            assert_predictions_match(pd.DataFrame(response.json()["predictions"]), want)

    # The parsing model ("best") lets a client leave out a feature that has a default.
    without_n = json.loads(data[["a", "b"]].to_json(orient="records"))
    response = requests.post(
        f"{url}/invocations", json={"dataframe_records": without_n}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert_predictions_match(
        pd.DataFrame(response.json()["predictions"]),
        estimators.predict(estimator, data.assign(n=0)),
    )


def test_nothing_lands_in_the_checkout():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not os.path.exists(os.path.join(repo, "mlruns"))
    assert not os.path.exists(os.path.join(repo, "mlflow.db"))
