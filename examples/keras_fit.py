"""Keep the 3 best models of a tf.keras `fit` on disk and in the MLflow Model Registry.

    python examples/keras_fit.py [DIRECTORY]

Run it twice: the second run resumes (BackupAndRestore) and never exports a model
worse than the best one the first run kept. Then look in `mlflow ui`: Models ->
keras-example, alias `best`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf

from mlflow_best_export.keras import MLflowBestCheckpoint


def main(directory: str) -> None:
    rng = np.random.default_rng(0)
    x = {k: rng.normal(size=(2048, 1)).astype("float32") for k in ("a", "b", "c")}
    y = (2 * x["a"] - x["b"] + 0.5 * x["c"] + 0.1 * rng.normal(size=(2048, 1))).astype("float32")
    inputs = {k: tf.keras.Input(shape=(1,), name=k) for k in x}
    hidden = tf.keras.layers.Dense(16, activation="relu")(
        tf.keras.layers.Concatenate()(list(inputs.values()))
    )
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(hidden))
    model.compile("adam", "mse")
    model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=10,
        verbose=2,
        callbacks=[
            # Instead of tf.keras.callbacks.ModelCheckpoint(path, save_best_only=True):
            MLflowBestCheckpoint(
                directory,
                monitor="val_loss",
                exports_to_keep=3,
                registered_model_name="keras-example",
            ),  # fmt: skip
            tf.keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
        ],
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "keras_run")
