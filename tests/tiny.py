"""A tiny real Estimator whose eval loss follows a schedule, for end-to-end tests.

The model is linear, ``y = x . w`` with two inputs, trained towards
``w* = (1, 2)``. The eval labels are shifted by an offset chosen from the step
of the checkpoint being evaluated, and the eval inputs come in ``x, -x`` pairs,
so the cross term cancels and the eval loss is exactly

    loss(step) = offset(step)**2 + mean((x . (w - w*))**2)

The second term starts below 2 and shrinks with training, so scheduling
``offset**2`` values at least 2 apart makes the loss go up and down on purpose
while the ordering of evals is known in advance. Because the offset depends
only on the checkpoint's step, a restarted process sees the same schedule.

Run as a script, it trains with ``MLflowBestExporter`` in this process; the
tests use that to stop, kill and restart training in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys

import numpy as np

W_STAR = (1.0, 2.0)
EVAL_BATCH = 64


def eval_x() -> np.ndarray:
    half = np.random.RandomState(7).uniform(-1, 1, size=(EVAL_BATCH // 2, 2)).astype("float32")
    return np.concatenate([half, -half])


def loss_at(schedule: dict[int, float], step: int) -> float:
    """The scheduled eval loss floor for a checkpoint step (the last entry repeats)."""
    steps = sorted(schedule)
    chosen = steps[0]
    for s in steps:
        if s <= step:
            chosen = s
    return schedule[chosen]


def estimator_spec(mode, pred, labels, learning_rate: float):
    """The train/eval EstimatorSpec of the linear model: squared error, metrics mse and score."""
    import tensorflow as tf

    sq = tf.square(pred - labels)
    loss = tf.reduce_mean(sq)
    train_op = tf.compat.v1.train.GradientDescentOptimizer(learning_rate).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()
    )
    metrics = {
        "mse": tf.compat.v1.metrics.mean(sq),
        "score": tf.compat.v1.metrics.mean(-sq),
    }
    return tf.estimator.EstimatorSpec(
        mode, loss=loss, train_op=train_op, predictions={"y": pred}, eval_metric_ops=metrics
    )


def build_estimator(model_dir: str, every: int, schedule: dict[int, float], **config):
    import tensorflow as tf

    def model_fn(features, labels, mode):
        x = features["x"]
        w = tf.compat.v1.get_variable("w", [2, 1], initializer=tf.compat.v1.zeros_initializer())
        pred = tf.matmul(x, w)
        predictions = {"y": pred}
        if mode == tf.estimator.ModeKeys.PREDICT:
            return tf.estimator.EstimatorSpec(mode, predictions=predictions)
        return estimator_spec(mode, pred, labels, learning_rate=0.2)

    run_config = tf.estimator.RunConfig(
        model_dir=model_dir,
        save_checkpoints_steps=every,
        save_summary_steps=every,
        log_step_count_steps=10_000,
        keep_checkpoint_max=config.pop("keep_checkpoint_max", 50),
        tf_random_seed=1,
        **config,
    )
    return tf.estimator.Estimator(model_fn, config=run_config)


def train_input_fn():
    import tensorflow as tf

    x = np.random.RandomState(1).uniform(-1, 1, size=(256, 2)).astype("float32")
    y = (x @ np.array(W_STAR, dtype="float32")).reshape(-1, 1)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).repeat().batch(32)


def make_eval_input_fn(model_dir: str, schedule: dict[int, float]):
    def eval_input_fn():
        import tensorflow as tf

        checkpoint = tf.train.latest_checkpoint(model_dir)
        step = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0
        offset = math.sqrt(loss_at(schedule, step))
        x = eval_x()
        y = (x @ np.array(W_STAR, dtype="float32")).reshape(-1, 1) + offset
        return tf.data.Dataset.from_tensor_slices(({"x": x}, y.astype("float32"))).batch(EVAL_BATCH)

    return eval_input_fn


def raw_serving_input_receiver_fn():
    import tensorflow as tf

    return tf.estimator.export.build_raw_serving_input_receiver_fn(
        {"x": tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")}
    )()


def parsing_serving_input_receiver_fn():
    import tensorflow as tf

    return tf.estimator.export.build_parsing_serving_input_receiver_fn(
        {"x": tf.io.FixedLenFeature([2], tf.float32)}
    )()


def new_best_steps(losses: list[float], every: int = 2) -> list[int]:
    """The checkpoint steps whose scheduled loss beats every earlier one: the evals a
    never-stopped run with ``loss_smaller`` exports, read off the schedule alone."""
    steps, best = [], None
    for index, loss in enumerate(losses):
        if best is None or loss < best:
            steps.append(every * (index + 1))
            best = loss
    return steps


def schedule_from(losses: list[float], every: int) -> dict[int, float]:
    """Map the n-th checkpoint (step ``every * n``) to ``losses[n - 1]``."""
    return {every * (i + 1): float(v) for i, v in enumerate(losses)}


def train(
    model_dir: str,
    exporter,
    losses: list[float],
    every: int = 2,
    max_steps: int | None = None,
    eval_name: str | None = None,
):
    """Run train_and_evaluate to ``max_steps`` (default: the end of the schedule)."""
    import tensorflow as tf

    schedule = schedule_from(losses, every)
    estimator = build_estimator(model_dir, every, schedule)
    max_steps = max_steps or every * len(losses)
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(train_input_fn, max_steps=max_steps),
        tf.estimator.EvalSpec(
            make_eval_input_fn(model_dir, schedule),
            steps=1,
            name=eval_name,
            exporters=[exporter] if exporter is not None else [],
            start_delay_secs=0,
            throttle_secs=0,
        ),
    )
    return estimator


def _kill_self() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


KILL_POINTS = (
    "before_export",
    "in_savedmodel_write",
    "before_retention",
    "during_retention",
    "during_upload",
    "before_register",
    "before_alias",
    "during_registry_retention",
    "during_reclaim",
)
"""Where ``--kill POINT:STEP`` can stop the process, in the order an export meets them.

- ``before_export``: the eval of STEP is in the event file, its export() never runs.
- ``in_savedmodel_write``: the first SavedModel written at or after STEP is complete
  in its ``temp-*`` directory, not yet given its assets nor renamed into place.
- ``before_retention``: in export() of STEP, the new export is renamed into place and
  disk retention has not run. (Our metadata travels inside assets.extra, so "after
  the rename, before the metadata" is the same moment: there is no such gap.)
- ``during_retention``: the first collected export (in an export() at or after STEP) is
  renamed to ``temp-delete-*`` and not yet deleted.
- ``during_upload``: some of the files of the first LoggedModel of an export of step
  >= STEP are uploaded, the rest are not, and the model is still PENDING.
- ``before_register``: the LoggedModel of an export of step >= STEP is READY, its
  model version is not created.
- ``before_alias``: the versions are created, the alias is not moved to the best of
  step >= STEP.
- ``during_registry_retention``: the first model version deleted while the best kept
  export has step >= STEP is gone, the other deletions have not happened.

- ``during_reclaim``: the artifacts of the first LoggedModel retired while the best kept
  export has step >= STEP are deleted from the artifact store, the model itself is not.

The MLflow points fire on the background sync thread; SIGKILL ends the whole process.
"""


def _install_kill(exporter_cls, point: str, at_step: int):
    """Subclass the exporter so that the process SIGKILLs itself at ``point``.

    This injects a crash at an exact moment, which a real signal from outside
    cannot hit reliably; everything else stays real.
    """
    if point not in KILL_POINTS + REMOTE_KILL_POINTS:
        known = ", ".join(KILL_POINTS + REMOTE_KILL_POINTS)
        raise SystemExit(f"unknown kill point {point!r}; choose from {known}")
    state = {"step": -1}

    class Killing(exporter_cls):
        def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
            step = int(eval_result["global_step"])
            if point == "before_export" and step == at_step:
                _kill_self()  # the eval is in the event file; its export never happens
            state["step"] = step
            result = super().export(
                estimator, export_path, checkpoint_path, eval_result, is_the_final_export
            )
            if point in MLFLOW_POINTS:
                # One sync per eval, as when evals are minutes apart: without this the
                # worker may coalesce past the moment the point needs (a deletion, say).
                self.flush()
            return result

    if point == "before_retention":
        from mlflow_best_export.session import ExportSession

        original_retire = ExportSession.retire

        def retire(self, history, kept, *, final=False):
            if state["step"] == at_step:
                _kill_self()  # the export is on disk; retention never ran
            return original_retire(self, history, kept, final=final)

        ExportSession.retire = retire

    if point == "in_savedmodel_write":
        import tensorflow as tf

        builder_cls = tf.compat.v1.saved_model.Builder
        original_save = builder_cls.save

        def save_then_die(self, *args, **kwargs):
            result = original_save(self, *args, **kwargs)
            if state["step"] >= at_step:
                _kill_self()  # written into temp-*, no assets.extra, not renamed
            return result

        builder_cls.save = save_then_die

    if point == "during_remote_copy":
        import tensorflow as tf

        original_copy = tf.io.gfile.copy
        copied = []

        def copy_then_die(source, destination, *args, **kwargs):
            result = original_copy(source, destination, *args, **kwargs)
            if "/export/" in destination and state["step"] >= at_step:
                copied.append(destination)
                if len(copied) == 2:
                    _kill_self()  # metadata and one more file are there, saved_model.pb is not
            return result

        tf.io.gfile.copy = copy_then_die

    if point == "during_retention":
        import shutil

        original_rmtree = shutil.rmtree

        def rmtree_then_die(path, *args, **kwargs):
            if (
                os.path.basename(os.fsdecode(path)).startswith("temp-delete-")
                and state["step"] >= at_step
            ):
                _kill_self()  # renamed out of the way, not yet deleted
            return original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree_then_die

    if point in MLFLOW_POINTS:
        _install_mlflow_kill(point, at_step)
    return Killing


REMOTE_KILL_POINTS = ("during_remote_copy",)
"""Kill points that fire only for a ``scheme://`` model directory (tests/test_s3.py):

- ``during_remote_copy``: an export at or after STEP is written locally, and its
  metadata and one more file are copied to the store, ``saved_model.pb`` not yet.
"""

MLFLOW_POINTS = (
    "during_upload",
    "before_register",
    "before_alias",
    "during_registry_retention",
    "during_reclaim",
)


def _install_mlflow_kill(point: str, at_step: int) -> None:
    from mlflow.tracking import MlflowClient

    from mlflow_best_export import mirror, registry

    state = {"logging": None, "best": None}

    original_log_model = registry.Registry.log_model

    def log_model(self, export):
        state["logging"] = export.step
        try:
            return original_log_model(self, export)
        finally:
            state["logging"] = None

    registry.Registry.log_model = log_model

    if point == "during_upload":
        import shutil
        import tempfile

        original_upload = MlflowClient.log_model_artifacts

        def upload_part_then_die(self, model_id, local_dir):
            if state["logging"] is None or state["logging"] < at_step:
                return original_upload(self, model_id, local_dir)
            files = sorted(
                os.path.relpath(os.path.join(root, name), local_dir)
                for root, _, names in os.walk(local_dir)
                for name in names
            )
            with tempfile.TemporaryDirectory() as part:
                for relative in files[: max(1, len(files) // 2)]:
                    os.makedirs(os.path.join(part, os.path.dirname(relative)), exist_ok=True)
                    shutil.copy(os.path.join(local_dir, relative), os.path.join(part, relative))
                original_upload(self, model_id, part)  # a real, partial upload
            _kill_self()

        MlflowClient.log_model_artifacts = upload_part_then_die

    if point == "before_register":
        original_register = registry.Registry.register

        def register(self, export, model):
            if export.step >= at_step:
                _kill_self()  # the LoggedModel is READY, its version never created
            return original_register(self, export, model)

        registry.Registry.register = register

    if point == "before_alias":
        original_set_alias = registry.Registry.set_alias

        def set_alias(self, export, version):
            if export.step >= at_step:
                _kill_self()  # versions created, alias not moved
            return original_set_alias(self, export, version)

        registry.Registry.set_alias = set_alias

    if point == "during_registry_retention":
        original_sync = mirror.Mirror.sync
        original_delete = registry.Registry.delete_version

        def sync(self, snapshot, progress=None):
            state["best"] = snapshot.kept[0].step if snapshot.kept else None
            return original_sync(self, snapshot, progress)

        def delete_version(self, entry):
            original_delete(self, entry)
            if state["best"] is not None and state["best"] >= at_step:
                _kill_self()  # the first version is deleted, the rest are not

        mirror.Mirror.sync = sync
        registry.Registry.delete_version = delete_version

    if point == "during_reclaim":
        original_sync = mirror.Mirror.sync
        original_reclaim = registry.reclaim_storage

        def sync(self, snapshot, progress=None):
            state["best"] = snapshot.kept[0].step if snapshot.kept else None
            return original_sync(self, snapshot, progress)

        def reclaim_then_die(client, artifact_location, model_id):
            original_reclaim(client, artifact_location, model_id)
            if state["best"] is not None and state["best"] >= at_step:
                _kill_self()  # the artifacts are gone, the LoggedModel is still live

        mirror.Mirror.sync = sync
        registry.reclaim_storage = reclaim_then_die


def copy_tree(source: str, target: str) -> None:
    """Copy a directory of any filesystem TensorFlow knows to a local one, with tf.io.gfile."""
    import tensorflow as tf

    for directory, _, files in tf.io.gfile.walk(source):
        local = os.path.join(target, directory[len(source) :].lstrip("/"))
        os.makedirs(local, exist_ok=True)
        for name in files:
            tf.io.gfile.copy(f"{directory}/{name}", os.path.join(local, name), overwrite=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--losses", required=True, help="comma separated scheduled losses")
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--exports-to-keep", default="3")
    parser.add_argument("--compare", default="loss", choices=["loss", "score"])
    parser.add_argument("--kill", default=None, help="POINT:STEP")
    parser.add_argument("--exporter-kwargs", default="{}", help="JSON keyword arguments")
    parser.add_argument("--log-level", default=None, help="log mlflow_best_export at this level")
    parser.add_argument(
        "--exit-process", action="store_true", help="end with fs.exit_process(0) (S3's abort)"
    )
    parser.add_argument(
        "--copy-to",
        default=None,
        help="at the end, copy the model directory here with tf.io.gfile (for a ram:// one, "
        "which ends with the process)",
    )
    parser.add_argument(
        "--flush-each",
        action="store_true",
        help="wait for MLflow after every export (one sync per eval, as with evals minutes apart)",
    )
    args = parser.parse_args(argv)
    if args.log_level:
        import logging

        logging.basicConfig(format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("mlflow_best_export").setLevel(args.log_level)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if args.model_dir.startswith("s3://"):
        import tensorflow_io  # noqa: F401 - registers the s3:// filesystem the Estimator writes to
    from mlflow_best_export import MLflowBestExporter, fs, loss_smaller, metric_bigger

    exporter_cls = MLflowBestExporter
    if args.kill:
        point, step = args.kill.split(":")
        exporter_cls = _install_kill(exporter_cls, point, int(step))
    keep = None if args.exports_to_keep == "none" else int(args.exports_to_keep)
    exporter = exporter_cls(
        serving_input_receiver_fn=raw_serving_input_receiver_fn,
        compare_fn=loss_smaller if args.compare == "loss" else metric_bigger("score"),
        exports_to_keep=keep,
        **json.loads(args.exporter_kwargs),
    )
    if args.flush_each:
        export = exporter.export

        def export_then_flush(*export_args, **export_kwargs):
            result = export(*export_args, **export_kwargs)
            exporter.flush()
            return result

        exporter.export = export_then_flush
    losses = [float(v) for v in args.losses.split(",")]
    train(args.model_dir, exporter, losses, every=args.every, max_steps=args.max_steps)
    if hasattr(exporter, "close"):
        exporter.close()
    if args.copy_to:
        copy_tree(args.model_dir, args.copy_to)
    if args.exit_process:
        fs.exit_process(0)


if __name__ == "__main__":
    main()
