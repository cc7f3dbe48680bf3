"""MLflowBestExporter: a drop-in ``tf.estimator.BestExporter`` that keeps the N best.

This module is the only one that imports ``tf.estimator``. It is an adapter:
it checks the arguments, turns what the Estimator hands over into the
``keeper``'s terms, carries out the keeper's decisions with
``export_saved_model`` and the export directory, and hands the kept exports
to the MLflow mirror.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from mlflow_best_export import arguments, fs, ranking, retention, staging
from mlflow_best_export import exports as exports_lib
from mlflow_best_export.keeper import Candidate, Keeper
from mlflow_best_export.session import ExportSession
from mlflow_best_export.settings import MlflowSettings

logger = logging.getLogger(__name__)

_CHECKPOINT_STEP = re.compile(r"-(\d+)$")


def _candidate(
    eval_result: Mapping[str, Any], checkpoint_path: str | None, ranked_by: ranking.Ranking
) -> Candidate:
    """The evaluated checkpoint as the keeper sees it."""
    if not isinstance(eval_result, Mapping):
        raise ValueError(f"`eval_result` must be a dict of metrics, got {eval_result!r}.")
    metrics = exports_lib.plain_metrics(eval_result)
    ranked_by.require(metrics, shown=eval_result)
    step = _candidate_step(eval_result, checkpoint_path)
    return Candidate(step, metrics, time.time(), source=checkpoint_path)


def _candidate_step(eval_result: Mapping[str, Any], checkpoint_path: str | None) -> int:
    if "global_step" in eval_result:
        return int(eval_result["global_step"])
    if checkpoint_path:
        match = _CHECKPOINT_STEP.search(checkpoint_path)
        if match:
            return int(match.group(1))
        try:
            return int(tf.train.load_variable(checkpoint_path, "global_step"))
        except (tf.errors.OpError, ValueError):
            pass
    raise ValueError(
        "The eval result has no 'global_step' and the checkpoint path does not tell it; "
        f"eval result keys: {sorted(eval_result)}, checkpoint_path: {checkpoint_path!r}."
    )


def _existing_checkpoint(checkpoint_path: str | None, model_dir: str) -> str | None:
    """The checkpoint prefix if its files still exist (also after the model dir moved)."""
    if not checkpoint_path:
        return None
    candidates = [checkpoint_path, fs.join(model_dir, fs.split(checkpoint_path)[1])]
    for path in candidates:
        if fs.exists(path + ".index"):
            return path
    return None


@dataclass(frozen=True)
class SavedModelWriter:
    """Writes one export: a SavedModel of a checkpoint, with the eval result that earned it
    (``assets.extra/mlflow_best_export.json``) and the extra assets.

    Attributes:
      exporter_name: recorded in the metadata.
      comparison: how the export was compared (None: a custom compare_fn), recorded too.
      receiver_fn: the ``serving_input_receiver_fn``.
      assets_extra: ``{destination in assets.extra: source file}``, copied into each export.
      as_text: write the SavedModel proto as text.
    """

    exporter_name: str
    comparison: ranking.Comparison | None
    receiver_fn: Any
    assets_extra: Mapping[str, str]
    as_text: bool

    def write(
        self,
        estimator: tf.estimator.Estimator,
        session: ExportSession,
        candidate: Candidate,
        checkpoint_path: str | None,
        *,
        recovered: bool = False,
    ) -> Candidate:
        """Export ``candidate`` from ``checkpoint_path``; the export as the keeper sees it."""
        metadata = exports_lib.build_metadata(
            exporter_name=self.exporter_name,
            step=candidate.step,
            metrics=candidate.metrics,
            checkpoint_path=checkpoint_path,
            comparison=self.comparison,
            recovered=recovered,
        )
        with staging.staging_dir() as tmp:
            # The metadata travels as an extra asset, so it lands in the export before the
            # Estimator renames it into place: no export is ever seen without it.
            assets_extra = dict(self.assets_extra)
            assets_extra[exports_lib.METADATA_FILENAME] = exports_lib.write_metadata_file(
                metadata, tmp
            )
            # Where directories cannot be renamed atomically (object stores, ram://), the
            # SavedModel is written locally and copied with saved_model.pb last, instead of
            # TensorFlow's rename of a temp directory, which there copies every object again
            # (or, on ram://, loses the contents).
            staged = not fs.has_atomic_rename(session.export_base)
            path = estimator.export_saved_model(
                os.path.join(tmp, "export") if staged else session.export_base,
                self.receiver_fn,
                assets_extra=assets_extra,
                as_text=self.as_text,
                checkpoint_path=checkpoint_path,
            )
            return session.place(os.fsdecode(path), metadata, staged=staged)


class MLflowBestExporter(tf.estimator.BestExporter):
    """Exports the best models, keeps the N best, and mirrors them into MLflow.

    A drop-in replacement for ``tf.estimator.BestExporter`` in
    ``tf.estimator.EvalSpec(exporters=...)``, with the same positional
    arguments and defaults, that:

    - judges each candidate against the best export actually kept on disk, so
      a restarted process never exports a model worse than one already kept;
    - recovers a best whose export was lost to a crash, from its checkpoint;
    - keeps the ``exports_to_keep`` best exports (not the newest);
    - never lets a NaN or infinite result win, and skips foreign scalars in
      the eval history instead of failing;
    - writes ``assets.extra/mlflow_best_export.json`` into each export with the
      eval result, global step and checkpoint that earned it.

    Args:
      name: unique name of this exporter, used in the export path
        ``<model_dir>/export/<name>/``.
      serving_input_receiver_fn: a function that takes no arguments and returns
        a ``ServingInputReceiver``.
      event_file_pattern: glob of the eval event files, relative to the model
        directory; None ignores the eval history (no crash recovery).
      compare_fn: ``f(best_eval_result, current_eval_result) -> bool``, True
        when the current result is better. ``loss_smaller``,
        ``metric_smaller(key)`` and ``metric_bigger(key)`` carry their key, so
        NaN handling and ranking are exact; any other function is called by
        keyword and used pairwise.
      assets_extra: ``{destination inside assets.extra: source file}`` copied
        into every export.
      as_text: write the SavedModel proto as text.
      exports_to_keep: which exports to keep on disk: N keeps the N best
        (``KeepBestN(N)``), None keeps all, or any retention policy value such
        as ``AnyOf(KeepBestN(3), KeepLatestN(1))``. The registry keeps the
        same exports.

    Keyword-only MLflow options:
      log_to_mlflow: mirror the history and the kept exports into MLflow
        (default True); False makes this a better ``BestExporter`` only.
      tracking_uri: where to log; None uses MLflow's own resolution
        (``MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``).
      registry_uri: the Model Registry, if not at ``tracking_uri``.
      experiment_name: the experiment of a new run (default: MLflow's choice).
      run_id: log to this run. Without it: the active run if there is one,
        else the run this exporter created earlier for this model directory,
        else a new run.
      run_name: the name of a run created here.
      registered_model_name: register each kept export as a version of this
        registered model; None logs models without registering them.
      alias: the alias moved to the best version (default ``"best"``); None
        moves none.
      strict: raise MLflow failures from the next ``export()`` instead of
        logging a warning and carrying on (default False).
      flush_timeout: seconds the final export and ``close()`` wait for MLflow
        to catch up (None: no limit).

    Raises:
      ValueError: if any argument is invalid; the message names the argument.
    """

    def __init__(
        self,
        name: str = "best_exporter",
        serving_input_receiver_fn: Any = None,
        event_file_pattern: str | None = "eval/*.tfevents.*",
        compare_fn: ranking.CompareFn = ranking.loss_smaller,
        assets_extra: Mapping[str, str] | None = None,
        as_text: bool = False,
        exports_to_keep: int | retention.RetentionPolicy | None = 5,
        *,
        log_to_mlflow: bool = True,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        experiment_name: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        registered_model_name: str | None = None,
        alias: str | None = "best",
        strict: bool = False,
        flush_timeout: float | None = 600.0,
    ):
        name = arguments.validate_name(name)
        arguments.validate_serving_input_receiver_fn(serving_input_receiver_fn)
        event_file_pattern = arguments.validate_event_file_pattern(event_file_pattern)
        ranking.check_compare_fn(compare_fn)
        assets_extra = arguments.validate_assets_extra(assets_extra)
        arguments.validate_flag(as_text, "as_text")
        policy = retention.retention_policy(exports_to_keep)
        settings = MlflowSettings(
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
            experiment_name=experiment_name,
            run_id=run_id,
            run_name=run_name,
            registered_model_name=registered_model_name,
            alias=alias,
            strict=strict,
            flush_timeout=flush_timeout,
        )
        super().__init__(
            name=name,
            serving_input_receiver_fn=serving_input_receiver_fn,
            event_file_pattern=event_file_pattern,
            compare_fn=compare_fn,
            assets_extra=assets_extra or None,
            as_text=as_text,
            # The parent only checks it; a policy value is ours alone.
            exports_to_keep=exports_to_keep if isinstance(policy, retention.KeepBestN) else None,
        )
        # Our own names for what the parent also keeps: its private attributes are its own.
        self._mlflow = settings if arguments.validate_flag(log_to_mlflow, "log_to_mlflow") else None
        self._keep_argument = exports_to_keep
        self._ranked_by = compare_fn
        self._events_glob = event_file_pattern
        self._keeper = Keeper(compare_fn, policy)
        self._comparison = self._keeper.ranking.comparison
        self._writer = SavedModelWriter(
            name, self._comparison, serving_input_receiver_fn, assets_extra, as_text
        )
        self._session: ExportSession | None = None  # bound at the first export()

    @property
    def compare_fn(self) -> ranking.CompareFn:
        """The compare function this exporter ranks with."""
        return self._ranked_by

    @property
    def exports_to_keep(self) -> int | retention.RetentionPolicy | None:
        """The ``exports_to_keep`` argument, as given."""
        return self._keep_argument

    @property
    def retention(self) -> retention.RetentionPolicy:
        """The retention policy applied on disk and in the registry."""
        return self._keeper.policy

    def export(
        self,
        estimator: tf.estimator.Estimator,
        export_path: str | bytes,
        checkpoint_path: str | bytes | None,
        eval_result: Mapping[str, Any],
        is_the_final_export: bool,
    ) -> str | None:
        """Export the candidate if it beats every kept export; keep the N best.

        Called by ``train_and_evaluate`` after each evaluation.

        Args:
          estimator: the Estimator being trained.
          export_path: the base directory of this exporter's exports,
            ``<model_dir>/export/<name>``.
          checkpoint_path: the checkpoint that was evaluated.
          eval_result: the result of ``Estimator.evaluate`` on it.
          is_the_final_export: True for the export at the end of training.

        Returns:
          The path of the new export as ``str``, or None when the candidate was
          not better than the best kept export.

        Raises:
          ValueError: if the eval result lacks the compared metric (the message
            names the keys it has).
          ExportDirLockedError: if another process is exporting to the same
            directory.
        """
        checkpoint_path = fs.absolute(os.fsdecode(checkpoint_path)) if checkpoint_path else None
        model_dir = os.fsdecode(estimator.model_dir)
        session = self._bind(model_dir, os.fsdecode(export_path))
        key = self._keeper.ranking.key
        candidate = _candidate(eval_result, checkpoint_path, self._keeper.ranking)
        history = session.history()
        # What is exported or deleted below is added to `kept` or taken out as it happens.
        kept = session.kept(history)
        earlier = [
            Candidate(r.step, r.metrics, r.wall_time, source=r.checkpoint_path)
            for r in history.before(candidate.step)
        ]
        found: dict[int, str | None] = {}  # where each contender's checkpoint is now

        def recoverable(contender: Candidate) -> bool:
            found[contender.step] = _existing_checkpoint(contender.source, model_dir)
            return found[contender.step] is not None

        decision = self._keeper.decide(kept, earlier, candidate, recoverable)
        for lost in decision.unrecoverable:
            session.report_unrecoverable(
                lost, _describe(lost, key), f"its checkpoint {lost.source} is gone"
            )
        best = decision.baseline
        for lost in decision.recover:
            _say_recovered(lost, key, found[lost.step])
            kept.append(
                self._writer.write(estimator, session, lost, found[lost.step], recovered=True)
            )
            best = lost

        new_export = None
        mine, theirs = _describe(candidate, key), _describe(best, key)
        if decision.export:
            logger.info("Exporting step %d: %s beats %s.", candidate.step, mine, theirs)
            written = self._writer.write(estimator, session, candidate, checkpoint_path)
            kept.append(written)
            new_export = written.source.path
        else:
            logger.info(
                "Not exporting step %d: %s does not beat the best kept export (%s).",
                candidate.step,
                mine,
                theirs,
            )
        session.retire(history, kept, final=is_the_final_export)
        return new_export

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until MLflow mirrors every export made so far.

        Returns:
          True when MLflow is in step; False on timeout or when the last attempt
          failed (it is retried at the next export, or by ``mlflow-best-export sync``).

        Raises:
          The last MLflow failure, when ``strict=True``.
        """
        return self._session is None or self._session.flush(timeout)

    def close(self) -> None:
        """Wait (up to ``flush_timeout``) for MLflow, then release the export directory.

        Raises:
          The last MLflow failure, when ``strict=True``.
        """
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _bind(self, model_dir: str, export_base: str) -> ExportSession:
        session = self._session
        if session is None or (session.model_dir, session.export_base) != (model_dir, export_base):
            self.close()
            self._session = ExportSession(
                model_dir=model_dir,
                export_base=export_base,
                exporter_name=self.name,
                event_file_pattern=self._events_glob,
                keeper=self._keeper,
                mlflow=self._mlflow,
            )
        return self._session


def _say_recovered(lost: Candidate, key: str | None, recovered_from: str | None) -> None:
    logger.warning(
        "The eval at step %d (%s) beat every kept export but was never exported "
        "(the process stopped first); exporting it now from %s.",
        lost.step,
        _describe(lost, key),
        recovered_from,
    )


def _describe(candidate: Candidate | None, key: str | None) -> str:
    if candidate is None:
        return "no kept export"
    if key is not None and key in candidate.metrics:
        return f"{key}={candidate.metrics[key]:.6g}"
    return ", ".join(f"{k}={v:.6g}" for k, v in sorted(candidate.metrics.items()))
