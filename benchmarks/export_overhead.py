"""Benchmark: the blocking time of MLflowBestExporter.export() against the original's.

An Estimator with about 100 MB of variables (``--mb``) is trained one step.
Both exporters are then asked, round after round, to export a candidate that
beats every earlier one (the worst case: every call writes a SavedModel), each
into its own export directory, in alternating order:

- original: ``tf.estimator.BestExporter`` (TF 2.15);
- ours: ``MLflowBestExporter`` logging to a SQLite store in a temp directory,
  with ``registered_model_name`` set, so every export is also logged as a
  LoggedModel (the whole SavedModel uploaded), registered, aliased, and the
  one that falls out of the top ``exports_to_keep`` deleted.

The eval result of each round is written to the eval event file first, as
``train_and_evaluate`` does. What is timed is the call to ``export()`` alone:
the MLflow work runs on the exporter's worker thread. Two figures:

- idle worker: the worker has caught up before the round (evals minutes apart,
  the usual case), so the ratio shows the cost of our decisions, metadata and
  retention on the training thread;
- busy worker: the next round starts at once, while the previous upload runs
  on the other core, which is the worst case on a 2-core machine.

Usage::

    python benchmarks/export_overhead.py            # 100 MB, 6 rounds
    python benchmarks/export_overhead.py --mb 20 --rounds 4
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_estimator(model_dir: str, megabytes: int):
    import tensorflow as tf

    size = megabytes * (1 << 20) // 4

    def model_fn(features, labels, mode):
        x = features["x"]
        w = tf.compat.v1.get_variable("w", [2, 1], initializer=tf.compat.v1.zeros_initializer())
        # Weight that serving reads, so the exported graph keeps the big variable.
        big = tf.compat.v1.get_variable(
            "big", [size], initializer=tf.compat.v1.random_uniform_initializer(), trainable=False
        )
        pred = tf.matmul(x, w) + big[0] * 0.0
        if mode == tf.estimator.ModeKeys.PREDICT:
            return tf.estimator.EstimatorSpec(mode, predictions={"y": pred})
        loss = tf.reduce_mean(tf.square(pred - labels))
        train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
            loss, global_step=tf.compat.v1.train.get_global_step()
        )
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    config = tf.estimator.RunConfig(model_dir=model_dir, log_step_count_steps=10_000)
    return tf.estimator.Estimator(model_fn, config=config)


def serving_input_receiver_fn():
    import tensorflow as tf

    return tf.estimator.export.build_raw_serving_input_receiver_fn(
        {"x": tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")}
    )()


def train_input_fn():
    import numpy as np
    import tensorflow as tf

    x = np.zeros((4, 2), dtype="float32")
    y = np.zeros((4, 1), dtype="float32")
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).repeat().batch(4)


def write_eval(model_dir: str, eval_result: dict, step: int) -> None:
    from tensorflow.python.eager import context
    from tensorflow_estimator.python.estimator import estimator as estimator_lib

    with context.graph_mode():
        estimator_lib._write_dict_to_summary(os.path.join(model_dir, "eval"), eval_result, step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the variables in MB")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--keep", type=int, default=2, help="exports_to_keep of both")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow_best_export import MLflowBestExporter

    work = tempfile.mkdtemp(prefix="export-overhead-")
    os.chdir(work)  # MLflow's default artifact root is ./mlruns
    model_dir = os.path.join(work, "model")
    estimator = build_estimator(model_dir, args.mb)
    estimator.train(train_input_fn, max_steps=1)
    checkpoint = tf.train.latest_checkpoint(model_dir)

    original = tf.estimator.BestExporter(
        name="original",
        serving_input_receiver_fn=serving_input_receiver_fn,
        exports_to_keep=args.keep,
    )
    ours = MLflowBestExporter(
        name="ours",
        serving_input_receiver_fn=serving_input_receiver_fn,
        exports_to_keep=args.keep,
        tracking_uri=f"sqlite:///{work}/mlflow.db",
        registered_model_name="overhead",
    )
    export_root = os.path.join(model_dir, "export")

    def timed(exporter, eval_result):
        base = os.path.join(export_root, exporter.name)
        start = time.perf_counter()
        path = exporter.export(estimator, base, checkpoint, eval_result, False)
        elapsed = time.perf_counter() - start
        assert path is not None, "every round must export"
        return elapsed

    results = {}
    loss = 100.0
    for phase_index, phase in enumerate(("idle worker", "busy worker")):
        times = {"original": [], "ours": []}
        for round_ in range(args.rounds):
            loss *= 0.9
            step = phase_index * 1000 + round_ + 1
            eval_result = {"loss": loss, "global_step": step}
            write_eval(model_dir, eval_result, step)
            if phase == "idle worker":
                ours.flush()
            # Export directories are named by the second: TensorFlow sleeps a second when a
            # name is taken. Start each round in a fresh second, untimed, for both.
            time.sleep(1.0 - time.time() % 1.0 + 0.01)
            order = (original, ours) if round_ % 2 == 0 else (ours, original)
            for exporter in order:
                key = "original" if exporter is original else "ours"
                times[key].append(timed(exporter, dict(eval_result)))
        results[phase] = times

    start = time.perf_counter()
    in_step = ours.flush()
    drain = time.perf_counter() - start
    ours.close()

    print(
        f"export() blocking time, {args.mb} MB of variables, {args.rounds} exporting rounds "
        f"per phase (median; min..max)"
    )
    for phase, times in results.items():
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"  {phase:12s} original {med['original']:.3f} s "
            f"({min(times['original']):.3f}..{max(times['original']):.3f})  "
            f"ours {med['ours']:.3f} s ({min(times['ours']):.3f}..{max(times['ours']):.3f})  "
            f"ratio ours/original {med['ours'] / med['original']:.2f}"
        )
    print(f"  MLflow caught up {drain:.1f} s after the last export; in step: {in_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
