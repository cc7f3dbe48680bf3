"""A scheduled-loss Estimator for multi-process runs, and the process that runs one task.

Like tests/tiny.py, the model is ``y = x . w`` trained towards ``w* = (1, 2)`` and the
eval loss is ``offset(step)**2 + mean((x . (w - w*))**2)``. The difference: the offset is
computed in the graph from the global step of the checkpoint being restored, not from
``latest_checkpoint()`` when the input is built. In a cluster the chief writes checkpoints
while the evaluator evaluates, so only the restored step tells which checkpoint is
evaluated; steps are also not multiples of ``every`` (two workers train asynchronously).

Options a cluster needs and tiny.py has not: a per-step sleep on the trainers (so the
evaluator sees several checkpoints of a model that trains in milliseconds), a large
non-trainable "ballast" variable (a big export for upload tests), a record of every
``export()`` call with the task that made it, and a crash in the middle of an upload.

Run as a script it calls ``train_and_evaluate`` for the task that ``TF_CONFIG`` names
(chief, worker, ps or evaluator), or for the whole job in one process without it.
MLflow is reached through ``MLFLOW_TRACKING_URI``, as a user's job would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import tiny


def schedule_from(losses: list[float], every: int) -> dict[int, float]:
    """Steps from ``every * n`` on evaluate to ``losses[n - 1]`` (the first also before)."""
    return tiny.schedule_from(losses, every)


def build_estimator(
    model_dir: str,
    every: int,
    schedule: dict[int, float],
    ballast_mb: int = 0,
    keep_checkpoint_max: int = 1000,
):
    """The Estimator; its RunConfig reads the cluster and this task from TF_CONFIG."""
    import tensorflow as tf

    steps = sorted(schedule)
    offsets = [float(np.sqrt(schedule[s])) for s in steps]

    def model_fn(features, labels, mode):
        w = tf.compat.v1.get_variable("w", [2, 1], initializer=tf.compat.v1.zeros_initializer())
        if ballast_mb:
            # Saved in every checkpoint and export, never trained: an export of a known size.
            tf.compat.v1.get_variable(
                "ballast",
                [ballast_mb * 2**20 // 4],
                initializer=tf.compat.v1.random_uniform_initializer(),
                trainable=False,
            )
        pred = tf.matmul(features["x"], w)
        predictions = {"y": pred}
        if mode == tf.estimator.ModeKeys.PREDICT:
            return tf.estimator.EstimatorSpec(mode, predictions=predictions)
        global_step = tf.compat.v1.train.get_global_step()
        if mode == tf.estimator.ModeKeys.EVAL:
            passed = tf.reduce_sum(tf.cast(tf.constant(steps, tf.int64) <= global_step, tf.int32))
            labels = labels + tf.gather(tf.constant(offsets), tf.maximum(passed - 1, 0))
        return tiny.estimator_spec(mode, pred, labels, learning_rate=0.05)

    run_config = tf.estimator.RunConfig(
        model_dir=model_dir,
        save_checkpoints_steps=every,
        save_summary_steps=every,
        log_step_count_steps=100_000,
        keep_checkpoint_max=keep_checkpoint_max,
        tf_random_seed=1,
        # Workers wait 5 s per index before training by default; nothing to gain here.
        experimental_max_worker_delay_secs=0,
    )
    return tf.estimator.Estimator(model_fn, config=run_config)


def eval_input_fn():
    import tensorflow as tf

    x = tiny.eval_x()
    y = (x @ np.array(tiny.W_STAR, dtype="float32")).reshape(-1, 1)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(tiny.EVAL_BATCH)


def sleep_hook(seconds: float):
    """A training hook that sleeps after every step: paces training for the evaluator."""
    import tensorflow as tf

    class Sleep(tf.estimator.SessionRunHook):
        def after_run(self, run_context, run_values):
            time.sleep(seconds)

    return Sleep()


def recording(exporter_cls, record_path: str):
    """Subclass the exporter so that every ``export()`` call is appended to ``record_path``."""

    class Recording(exporter_cls):
        def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
            task = estimator.config.task_type or "local"
            line = {"task": task, "pid": os.getpid(), "step": int(eval_result["global_step"])}
            with open(record_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            return super().export(
                estimator, export_path, checkpoint_path, eval_result, is_the_final_export
            )

    return Recording


def kill_mid_upload(fraction: float = 0.5) -> None:
    """SIGKILL this process once ``fraction`` of the first variables file was sent to MLflow.

    The upload is real (HTTP PUT to the server's proxied artifact store); only the moment of
    the crash is chosen here, which a signal from outside could not hit reliably.
    """
    from mlflow.store.artifact import http_artifact_repo

    real_request = http_artifact_repo.http_request

    class DyingFile:
        def __init__(self, f):
            self._f = f
            self._limit = os.fstat(f.fileno()).st_size * fraction
            self._sent = 0

        def read(self, size=-1):
            if self._sent >= self._limit:
                sys.stderr.write(f"kill_mid_upload: SIGKILL after {self._sent} bytes\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            data = self._f.read(size)
            self._sent += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

    def http_request(host_creds, endpoint, method, *args, **kwargs):
        if method == "PUT" and "variables.data" in endpoint:
            kwargs["data"] = DyingFile(kwargs["data"])
        return real_request(host_creds, endpoint, method, *args, **kwargs)

    http_artifact_repo.http_request = http_request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--losses", required=True, help="comma separated scheduled losses")
    parser.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--exports-to-keep", type=int, default=2)
    parser.add_argument("--train-delay", type=float, default=0.0, help="seconds per step")
    parser.add_argument("--throttle-secs", type=int, default=1)
    parser.add_argument("--ballast-mb", type=int, default=0)
    parser.add_argument("--record", help="append every export() call to this file")
    parser.add_argument("--kill-mid-upload", action="store_true")
    parser.add_argument("--exporter-kwargs", default="{}", help="JSON keyword arguments")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from mlflow_best_export import MLflowBestExporter

    exporter_cls = MLflowBestExporter
    if args.record:
        exporter_cls = recording(exporter_cls, args.record)
    if args.kill_mid_upload:
        kill_mid_upload()
    # Every task builds the same EvalSpec; only the evaluator ever calls export().
    exporter = exporter_cls(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        exports_to_keep=args.exports_to_keep,
        **json.loads(args.exporter_kwargs),
    )
    losses = [float(v) for v in args.losses.split(",")]
    schedule = schedule_from(losses, args.every)
    estimator = build_estimator(args.model_dir, args.every, schedule, args.ballast_mb)
    hooks = [sleep_hook(args.train_delay)] if args.train_delay else []
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(
            tiny.train_input_fn, max_steps=args.max_steps or args.every * len(losses), hooks=hooks
        ),
        tf.estimator.EvalSpec(
            eval_input_fn,
            steps=1,
            exporters=[exporter],
            start_delay_secs=0,
            # 0 would make the evaluator spin on latest_checkpoint() between checkpoints.
            throttle_secs=args.throttle_secs,
        ),
    )
    exporter.close()


if __name__ == "__main__":
    main()
