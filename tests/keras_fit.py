"""A user's tf.keras training script with MLflowBestCheckpoint; the Keras tests run it in
fresh processes (and import ``build_model``, ``probe`` and ``oracle_logs`` for their oracles).

The model has four named scalar inputs ``a``..``d`` (the columns a pyfunc caller
sends) and one output. ``--oracle-dir`` makes the script save, independently of
the product, every epoch's weights and logs; ``--kill-in-epoch N`` SIGKILLs the
process in the middle of epoch N (after some of its batches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

COLUMNS = ("a", "b", "c", "d")


def data(rows: int, seed: int, noise: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {k: rng.normal(size=(rows, 1)).astype("float32") for k in COLUMNS}
    y = 2 * x["a"] - x["b"] + 0.5 * x["c"] + noise * rng.normal(size=(rows, 1))
    return x, y.astype("float32")


def probe(rows: int = 64) -> dict[str, np.ndarray]:
    """Inputs on which kept models are told apart by their predictions."""
    return data(rows, seed=99, noise=0.0)[0]


def build_model() -> tf.keras.Model:
    inputs = {k: tf.keras.Input(shape=(1,), name=k) for k in COLUMNS}
    joined = tf.keras.layers.Concatenate()(list(inputs.values()))
    hidden = tf.keras.layers.Dense(8, activation="relu")(joined)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1, name="y")(hidden))
    model.compile(tf.keras.optimizers.Adam(0.02), "mse")
    return model


def oracle_logs(oracle_dir: str) -> dict[int, float]:
    """{epoch: val_loss} as the script recorded them; a later record of an epoch wins."""
    found: dict[int, float] = {}
    path = os.path.join(oracle_dir, "logs.jsonl")
    if os.path.exists(path):
        for line in open(path):
            row = json.loads(line)
            found[row["epoch"]] = row["val_loss"]
    return found


class OracleSaver(tf.keras.callbacks.Callback):
    """Saves each epoch's weights and logs, before any other callback sees the epoch."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        self.model.save_weights(os.path.join(self.directory, f"epoch-{epoch + 1}.weights.h5"))
        with open(os.path.join(self.directory, "logs.jsonl"), "a") as file:
            file.write(json.dumps({"epoch": epoch + 1, "val_loss": float(logs["val_loss"])}) + "\n")
            file.flush()
            os.fsync(file.fileno())


class KillInEpoch(tf.keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.kill_epoch, self.epoch = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.kill_epoch and batch == 2:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--directory", required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--val-noise", type=float, default=0.0)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--mlflow", default="{}", help="MLflow options as JSON")
    parser.add_argument("--oracle-dir")
    parser.add_argument("--model-checkpoint", help="also run ModelCheckpoint(save_best_only)")
    parser.add_argument("--backup", help="BackupAndRestore directory")
    parser.add_argument("--kill-in-epoch", type=int)
    parser.add_argument("--exit-process", action="store_true")
    parser.add_argument("--multi-worker", action="store_true", help="MultiWorkerMirroredStrategy")
    args = parser.parse_args(argv)
    # The strategy comes first, before any other TensorFlow op of the process.
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if args.multi_worker else None

    from mlflow_best_export import fs
    from mlflow_best_export.keras import MLflowBestCheckpoint

    tf.keras.utils.set_random_seed(7)
    x, y = data(512, seed=1, noise=0.05)
    x_val, y_val = data(128, seed=2, noise=args.val_noise)
    callbacks: list[tf.keras.callbacks.Callback] = []
    if args.oracle_dir:
        callbacks.append(OracleSaver(args.oracle_dir))
    if args.model_checkpoint:
        callbacks.append(
            tf.keras.callbacks.ModelCheckpoint(
                args.model_checkpoint, monitor="val_loss", save_best_only=True
            )
        )
    mlflow = json.loads(args.mlflow)
    callbacks.append(
        MLflowBestCheckpoint(
            args.directory, exports_to_keep=args.keep, log_to_mlflow=bool(mlflow), **mlflow
        )
    )
    if args.backup:
        callbacks.append(tf.keras.callbacks.BackupAndRestore(args.backup))
    if args.kill_in_epoch:
        callbacks.append(KillInEpoch(args.kill_in_epoch))
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model()
    model.fit(
        x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=32, verbose=0,
        callbacks=callbacks,
    )  # fmt: skip
    if args.exit_process:
        fs.exit_process(0)


if __name__ == "__main__":
    main(sys.argv[1:])
