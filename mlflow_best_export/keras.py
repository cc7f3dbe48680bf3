"""MLflowBestCheckpoint: the exporter's guarantees for ``tf.keras`` ``fit``, as a callback.

A thin adapter on the same core as ``MLflowBestExporter``: the keeper decides,
``ExportSession`` holds the directory (lock, history, names, retention, the MLflow
worker), and the directory has the Estimator's layout, so the command line works
on it unchanged::

    <directory>/eval/events.out.tfevents.*      each epoch's logs (step = epoch)
    <directory>/export/<name>/<timestamp>/      the kept SavedModels, with
                                                assets.extra/mlflow_best_export.json
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from mlflow_best_export import arguments, fs, retention, staging
from mlflow_best_export import exports as exports_lib
from mlflow_best_export.keeper import Candidate, Keeper
from mlflow_best_export.ranking import Comparison
from mlflow_best_export.session import ExportSession
from mlflow_best_export.settings import MlflowSettings

logger = logging.getLogger(__name__)

__all__ = ["MLflowBestCheckpoint"]


class MLflowBestCheckpoint(tf.keras.callbacks.Callback):
    """Keeps the N best models of a ``fit`` as SavedModels and in MLflow, across restarts.

    Where ``ModelCheckpoint(save_best_only=True)`` compares with the best of the
    current process only, this compares with the best export kept in
    ``directory``, so a resumed ``fit`` never exports a worse model; it keeps the
    ``exports_to_keep`` best, and mirrors each epoch's logs (step = epoch) and the
    kept exports (logged models, registry versions, alias ``best``) into MLflow
    in the background. Under a distribution strategy only the chief writes.

    Args:
      directory: where the history and the exports live (any filesystem ``fs``
        supports: local, ``gs://``, ``s3://``, ``ram://``).
      monitor: the logged metric that ranks models, e.g. ``"val_loss"``.
      mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for accuracies and AUCs, as
        Keras decides).
      exports_to_keep: N keeps the N best (``KeepBestN(N)``), None keeps all, or any
        retention policy value.
      save_freq: ``"epoch"``, or a number of batches (step = batches seen).
      name: the exports' directory under ``directory/export/``.
      log_to_mlflow: mirror into MLflow (the other keyword arguments are
        ``MLflowBestExporter``'s MLflow options).

    Raises:
      ValueError: if an argument is invalid; the message names it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        monitor: str = "val_loss",
        mode: str = "auto",
        exports_to_keep: int | retention.RetentionPolicy | None = 5,
        *,
        save_freq: str | int = "epoch",
        name: str = "best_exporter",
        log_to_mlflow: bool = True,
        **mlflow_options: Any,
    ):
        super().__init__()
        if not isinstance(directory, str | os.PathLike) or not os.fspath(directory).strip():
            raise ValueError(f"`directory` must be a path or URL, got {directory!r}.")
        self.directory = fs.absolute(os.fspath(directory))
        fs.check_filesystem(self.directory)
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"`mode` must be 'min', 'max' or 'auto', got {mode!r}.")
        if save_freq != "epoch" and (not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(
                f"`save_freq` must be 'epoch' or a number of batches; got {save_freq!r}."
            )
        self.name = arguments.validate_name(name)
        self.save_freq = save_freq
        self.comparison = Comparison(monitor, _direction(monitor, mode))
        self._keeper = Keeper(self.comparison, retention.retention_policy(exports_to_keep))
        settings = MlflowSettings(**mlflow_options)
        self._mlflow = settings if arguments.validate_flag(log_to_mlflow, "log_to_mlflow") else None
        self._session: ExportSession | None = None
        self._events: Any = None
        self._batches = 0

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._session is None and _is_chief(self.model):
            self._session = ExportSession(
                model_dir=self.directory,
                export_base=fs.join(self.directory, "export", self.name),
                exporter_name=self.name,
                event_file_pattern="eval/*.tfevents.*",
                keeper=self._keeper,
                mlflow=self._mlflow,
            )
            self._events = tf.summary.create_file_writer(fs.join(self.directory, "eval"))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.save_freq == "epoch":
            self._consider(epoch + 1, logs or {})

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._batches += 1
        if self.save_freq != "epoch" and self._batches % self.save_freq == 0:
            self._consider(self._batches, logs or {})

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        session = self._session
        if session is not None:  # the final state: MLflow catches up, the run is finished
            history = session.history()
            session.retire(history, session.kept(history), final=True)
        self.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until MLflow mirrors every export so far (see ``MLflowBestExporter.flush``)."""
        return self._session is None or self._session.flush(timeout)

    def close(self) -> None:
        """Wait (up to ``flush_timeout``) for MLflow, then release the directory."""
        session, self._session = self._session, None
        if self._events is not None:
            self._events.close()
            self._events = None
        if session is not None:
            session.close()

    def _consider(self, step: int, logs: Mapping[str, Any]) -> None:
        """Record the logs of ``step``; export the model if it beats every kept export."""
        metrics = exports_lib.plain_metrics(logs)
        self._keeper.ranking.require(metrics, f"The logs of step {step}")
        session = self._session
        if session is None:  # not the chief: it saves only when the chief does
            if _distributed(self.model):
                self._save_elsewhere()
            return
        with self._events.as_default():
            for key, value in sorted(metrics.items()):
                tf.summary.scalar(key, value, step=step)
        self._events.flush()
        history = session.history()
        kept = session.kept(history)
        earlier = [Candidate(r.step, r.metrics, r.wall_time) for r in history.before(step)]
        candidate = Candidate(step, metrics, time.time())
        # A lost best cannot be recovered: Keras keeps no weights of earlier epochs.
        decision = self._keeper.decide(kept, earlier, candidate, lambda c: False)
        key = self.comparison.key
        for lost in decision.unrecoverable:
            described = f"{key}={lost.metrics.get(key)}"
            session.report_unrecoverable(lost, described, "Keras keeps no earlier weights")
        if decision.export:
            kept.append(self._save(session, step, metrics))
        elif _distributed(self.model):
            self._save_elsewhere()
        session.retire(history, kept)

    def _save(self, session: ExportSession, step: int, metrics: Mapping[str, float]) -> Candidate:
        metadata = exports_lib.build_metadata(
            exporter_name=self.name,
            step=step,
            metrics=metrics,
            checkpoint_path=None,
            comparison=self.comparison,
        )
        logger.info(
            "Exporting step %d: %s=%.6g.", step, self.comparison.key, metrics[self.comparison.key]
        )
        with staging.staging_dir() as tmp:
            local = os.path.join(tmp, str(int(time.time())))
            self.model.save(local, save_format="tf", include_optimizer=False)
            os.makedirs(os.path.join(local, "assets.extra"), exist_ok=True)
            exports_lib.write_metadata_file(metadata, os.path.join(local, "assets.extra"))
            return session.place(local, metadata, staged=True)

    def _save_elsewhere(self) -> None:
        """Every worker of a multi-worker strategy saves when the chief does (saving reads
        variables across workers); the others' copies are thrown away."""
        with staging.staging_dir() as tmp:
            self.model.save(os.path.join(tmp, "model"), save_format="tf", include_optimizer=False)


def _direction(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    # Keras' rule for mode="auto": accuracies, AUCs and F-measures grow.
    name = monitor.lower()
    return "max" if any(part in name for part in ("acc", "auc", "fmeasure")) else "min"


def _distributed(model: tf.keras.Model) -> bool:
    """True under a strategy with several workers (a cluster with a task for this one)."""
    resolver = getattr(model.distribute_strategy, "cluster_resolver", None)
    return resolver is not None and bool(resolver.task_type)


def _is_chief(model: tf.keras.Model) -> bool:
    return bool(model.distribute_strategy.extended.should_checkpoint)
