"""Batch scoring: the vectorized input path gives exactly what ParseExample gives.

A SavedModel with a parsing receiver (dense float, int64 and string features,
with and without defaults, scalar and multi-valued) is built with TensorFlow's
own builder; its outputs are the parsed tensors themselves. For random frames
(hypothesis), ``ServingModel.predict`` (columns fed below the ParseExample op)
must equal the signature run on the same rows serialized as ``tf.Example``s.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_best_export import frames as frames_lib
from mlflow_best_export import serving
from mlflow_best_export import signature as signature_lib

SPEC = {
    "f": tf.io.FixedLenFeature([], tf.float32, default_value=-1.5),
    "v": tf.io.FixedLenFeature([2], tf.float32),
    "n": tf.io.FixedLenFeature([1], tf.int64, default_value=[7]),
    "k": tf.io.FixedLenFeature([3], tf.int64),
    "s": tf.io.FixedLenFeature([], tf.string, default_value="none"),
    "t": tf.io.VarLenFeature(tf.float32),
    "w": tf.io.VarLenFeature(tf.string),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("parsing") / "model")
    with tf.Graph().as_default():
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        parsed = tf.io.parse_example(examples, SPEC)
        outputs = {
            name: tf.identity(
                tf.sparse.to_dense(tensor) if isinstance(tensor, tf.SparseTensor) else tensor,
                name=f"out_{name}",
            )
            for name, tensor in parsed.items()
        }
        outputs["score"] = parsed["f"] * 2.0 + tf.reduce_sum(parsed["v"], axis=1)
        with tf.compat.v1.Session() as session:
            builder = tf.compat.v1.saved_model.Builder(path)
            signature = tf.compat.v1.saved_model.predict_signature_def(
                {"examples": examples}, outputs
            )
            builder.add_meta_graph_and_variables(
                session, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()
    return serving.load_serving_model(path)


def serialized_path(model, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The reference: one tf.Example per row, parsed by the graph's own ParseExample op."""
    examples = frames_lib.examples_from_frame(frame, model.signature.features)
    outputs = model._function(examples=tf.constant(examples, dtype=tf.string))
    return {name: value.numpy() for name, value in outputs.items()}


def vectorized_path(model, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in model._parsed.run(frame).items()}


floats = st.one_of(st.none(), st.floats(allow_nan=False, width=32))
ints = st.integers(min_value=-(2**31), max_value=2**31)


@st.composite
def frames(draw):
    rows = draw(st.integers(min_value=1, max_value=12))
    columns = {
        "v": [draw(st.lists(st.floats(width=32), min_size=2, max_size=2)) for _ in range(rows)],
        "k": [draw(st.lists(ints, min_size=3, max_size=3)) for _ in range(rows)],
    }
    if draw(st.booleans()):
        columns["f"] = [draw(floats) for _ in range(rows)]
    if draw(st.booleans()):
        columns["n"] = [draw(st.one_of(st.none(), ints)) for _ in range(rows)]
    if draw(st.booleans()):
        text = st.one_of(st.none(), st.text(max_size=4))
        columns["s"] = [draw(text) for _ in range(rows)]
    if draw(st.booleans()):  # variable length: missing, one value, or a list
        cell = st.one_of(
            st.none(),
            st.floats(allow_nan=False, width=32),
            st.lists(st.floats(width=32), max_size=3),
        )
        columns["t"] = [draw(cell) for _ in range(rows)]
    if draw(st.booleans()):
        cell = st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=3))
        columns["w"] = [draw(cell) for _ in range(rows)]
    return pd.DataFrame(columns)


def test_the_fast_path_is_taken(model):
    assert model.vectorized
    assert sorted(f.name for f in model.signature.features) == sorted(SPEC)
    assert {f.name for f in model.signature.features if f.kind == "sparse"} == {"t", "w"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames())
def test_vectorized_input_equals_parse_example(model, frame):
    fast = vectorized_path(model, frame)
    slow = serialized_path(model, frame)
    assert fast.keys() == slow.keys()
    for name in slow:
        assert fast[name].dtype == slow[name].dtype, name
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)


def test_missing_values_take_the_graphs_defaults(model):
    frame = pd.DataFrame(
        {
            "v": [[1.0, 2.0], [3.0, 4.0]],
            "k": [[1, 2, 3], [4, 5, 6]],
            "f": [math.nan, 0.25],
            "n": [None, 3],
            "s": ["a", None],
        }
    )
    out = model.predict(frame)
    assert out["f"].tolist() == [-1.5, 0.25]
    assert out["s"].tolist() == ["a", "none"]
    assert out["n"].tolist() == [7, 3]  # shape [1]: one value per row
    for name, value in serialized_path(model, frame).items():
        np.testing.assert_array_equal(vectorized_path(model, frame)[name], value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["v"]), "needs the features \\['v'\\]"),
        (lambda f: f.assign(v=[[1.0, 2.0], None]), "'v' has no default and is missing in row 1"),
        (lambda f: f.assign(k=[[1, 2, 3], [4, 5]]), "takes 3 value\\(s\\) per example"),
        (lambda f: f.assign(n=[1.5, 2.0]), "'n' takes integers"),
    ],
    ids=["column", "cell", "count", "integral"],
)
def test_refusals_match_parse_example(model, change, message):
    frame = change(pd.DataFrame({"v": [[1.0, 2.0], [3.0, 4.0]], "k": [[1, 2, 3], [4, 5, 6]]}))
    with pytest.raises(ValueError, match=message):
        model.predict(frame)
    # ParseExample (or the example encoder) refuses the same input.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        serialized_path(model, frame)


def test_raw_inputs_are_fed_from_the_columns_without_a_copy():
    column = pd.Series(np.arange(6, dtype=np.float32))
    info = signature_lib.TensorInfo("x", "float32", (None,))
    array = frames_lib.to_array(column, info)
    assert np.shares_memory(array, column.to_numpy())
    info2 = signature_lib.TensorInfo("x", "float32", (None, 1))
    assert frames_lib.to_array(column, info2).shape == (6, 1)
