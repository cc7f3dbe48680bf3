"""Tiny real Estimators for serving tests, with both kinds of serving input receiver.

The model has three features of different kinds, ``a`` (a float), ``b`` (two
floats) and ``n`` (an int64 that a parsing receiver defaults to 0), and three
outputs: ``y`` shaped ``[batch, 1]`` like a canned regressor's, ``scores``
shaped ``[batch, 3]`` and the string ``label``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LABELS = ("low", "mid", "high")


def model_fn(features, labels, mode):
    import tensorflow as tf

    n = tf.cast(features["n"], tf.float32)
    x = tf.concat([features["a"][:, None], features["b"], n[:, None]], axis=1)
    w = tf.compat.v1.get_variable("w", [4, 1], initializer=tf.compat.v1.zeros_initializer())
    bias = tf.compat.v1.get_variable("bias", [], initializer=tf.compat.v1.zeros_initializer())
    y = tf.matmul(x, w) + bias
    scores = tf.nn.softmax(tf.concat([-y, tf.zeros_like(y), y], axis=1))
    label = tf.gather(tf.constant(LABELS), tf.argmax(scores, axis=1))
    predictions = {"y": y, "scores": scores, "label": label}
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions=predictions)
    loss = tf.reduce_mean(tf.square(y - labels))
    train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()
    )
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, predictions=predictions)


def features(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feature values, as the Estimator's input_fn feeds them."""
    r = np.random.RandomState(seed)
    return {
        "a": r.uniform(-1, 1, rows).astype("float32"),
        "b": r.uniform(-1, 1, (rows, 2)).astype("float32"),
        "n": r.randint(0, 3, rows).astype("int64"),
    }


def frame(rows: int, seed: int = 1) -> pd.DataFrame:
    """The same features as a client sends them: plain floats, ints and lists."""
    values = features(rows, seed)
    return pd.DataFrame(
        {
            "a": values["a"].astype("float64"),
            "b": [list(map(float, row)) for row in values["b"]],
            "n": values["n"],
        }
    )


def train(model_dir: str, steps: int = 30):
    """A trained Estimator (a few dozen steps, a couple of seconds)."""
    import tensorflow as tf

    def input_fn():
        values = features(256)
        y = values["a"] + 2 * values["b"][:, 0] - values["b"][:, 1] + 0.5 * values["n"]
        labels = y.reshape(-1, 1).astype("float32")
        return tf.data.Dataset.from_tensor_slices((values, labels)).repeat().batch(32)

    config = tf.estimator.RunConfig(tf_random_seed=1, log_step_count_steps=10_000)
    estimator = tf.estimator.Estimator(model_fn, model_dir=model_dir, config=config)
    estimator.train(input_fn, max_steps=steps)
    return estimator


def predict(estimator, data: pd.DataFrame) -> dict[str, np.ndarray]:
    """``Estimator.predict`` on the latest checkpoint, stacked per output."""
    import tensorflow as tf

    values = {
        "a": data["a"].to_numpy("float32"),
        "b": np.asarray(data["b"].tolist(), dtype="float32"),
        "n": data["n"].to_numpy("int64"),
    }

    def input_fn():
        return tf.data.Dataset.from_tensor_slices(values).batch(len(data))

    rows = list(estimator.predict(input_fn, yield_single_examples=True))
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def raw_serving_input_receiver_fn():
    """Raw tensors: the signature's inputs are ``a``, ``b`` and ``n``."""
    import tensorflow as tf

    return tf.estimator.export.build_raw_serving_input_receiver_fn(
        {
            "a": tf.compat.v1.placeholder(tf.float32, [None], name="a"),
            "b": tf.compat.v1.placeholder(tf.float32, [None, 2], name="b"),
            "n": tf.compat.v1.placeholder(tf.int64, [None], name="n"),
        }
    )()


def parsing_serving_input_receiver_fn():
    """Serialized tf.Examples: the signature's only input is the string ``examples``."""
    import tensorflow as tf

    return tf.estimator.export.build_parsing_serving_input_receiver_fn(
        {
            "a": tf.io.FixedLenFeature([], tf.float32),
            "b": tf.io.FixedLenFeature([2], tf.float32),
            "n": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        }
    )()


RECEIVERS = {
    "raw": raw_serving_input_receiver_fn,
    "parsing": parsing_serving_input_receiver_fn,
}


def export(estimator, export_base: str, kind: str, **kwargs) -> str:
    """Export with the ``raw`` or ``parsing`` receiver; returns the export path as str."""
    path = estimator.export_saved_model(export_base, RECEIVERS[kind], **kwargs)
    return path.decode() if isinstance(path, bytes) else path
