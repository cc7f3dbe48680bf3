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
from typing import Any

import tensorflow as tf

from mlflow_best_export import exports as exports_lib
from mlflow_best_export import fs, ranking, retention, staging
from mlflow_best_export.exports import Export, ExportDirLock
from mlflow_best_export.history import EvalHistory, HistoryReader
from mlflow_best_export.keeper import Candidate, Keeper
from mlflow_best_export.mirror import MirrorSession, MirrorSettings, validate_flag

logger = logging.getLogger(__name__)

_CHECKPOINT_STEP = re.compile(r"-(\d+)$")


def _validate_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(
            f"`name` is used as a directory under <model_dir>/export/ and must not contain "
            f"path separators or be '.' or '..'; got {name!r}."
        )
    return name


def _validate_serving_input_receiver_fn(fn: Any) -> Any:
    if fn is None or not callable(fn):
        raise ValueError(
            "`serving_input_receiver_fn` must be a function that takes no arguments and "
            "returns a ServingInputReceiver, e.g. "
            "tf.estimator.export.build_raw_serving_input_receiver_fn(...); "
            f"got {fn!r}."
        )
    return fn


def _validate_event_file_pattern(pattern: Any) -> str | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(
            "`event_file_pattern` must be a glob relative to the model directory, such as "
            f"'eval/*.tfevents.*', or None to ignore the eval history; got {pattern!r}."
        )
    if os.path.isabs(pattern):
        raise ValueError(
            "`event_file_pattern` is relative to the model directory; got the absolute "
            f"path {pattern!r}."
        )
    return pattern


def _validate_assets_extra(assets_extra: Any) -> dict[str, str]:
    if assets_extra is None:
        return {}
    if not isinstance(assets_extra, Mapping):
        raise ValueError(
            "`assets_extra` must be a dict of {destination path inside assets.extra: source "
            f"file}}; got {type(assets_extra).__name__}."
        )
    checked = {}
    for dest, source in assets_extra.items():
        if not isinstance(dest, str) or not dest.strip():
            raise ValueError(f"`assets_extra` keys must be non-empty relative paths; got {dest!r}.")
        if os.path.isabs(dest) or dest.startswith(("/", "\\")):
            raise ValueError(
                f"`assets_extra` key {dest!r} is absolute; keys are destinations relative to "
                f"the export's assets.extra directory, e.g. 'vocab.txt'."
            )
        parts = re.split(r"[/\\]", dest)
        if ".." in parts:
            raise ValueError(
                f"`assets_extra` key {dest!r} contains '..'; destinations must stay inside "
                f"assets.extra."
            )
        if os.path.normpath(dest) == exports_lib.METADATA_FILENAME:
            raise ValueError(
                f"`assets_extra` key {dest!r} is reserved for the exporter's own metadata; "
                f"choose another destination name."
            )
        if not isinstance(source, str | os.PathLike):
            raise ValueError(
                f"`assets_extra[{dest!r}]` must be the path of a source file; got {source!r}."
            )
        source = os.fspath(source)
        fs.check_filesystem(source)
        if not fs.exists(source):
            raise ValueError(
                f"`assets_extra[{dest!r}]`: the source file {source!r} does not exist."
            )
        if fs.isdir(source):
            raise ValueError(
                f"`assets_extra[{dest!r}]`: {source!r} is a directory; list its files one by one."
            )
        checked[dest] = source
    return checked


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
        name = _validate_name(name)
        _validate_serving_input_receiver_fn(serving_input_receiver_fn)
        event_file_pattern = _validate_event_file_pattern(event_file_pattern)
        ranking.check_compare_fn(compare_fn)
        assets_extra = _validate_assets_extra(assets_extra)
        validate_flag(as_text, "as_text")
        policy = retention.retention_policy(exports_to_keep)
        settings = MirrorSettings(
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
        self._mlflow = settings if validate_flag(log_to_mlflow, "log_to_mlflow") else None
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
        self._keep_argument = exports_to_keep
        self._receiver_fn = serving_input_receiver_fn
        self._extra_assets = assets_extra
        self._text_proto = as_text
        # Our own names for what the parent also keeps: its private attributes are its own.
        self._ranked_by = compare_fn
        self._events_glob = event_file_pattern
        self._keeper = Keeper(compare_fn, policy)
        self._comparison = ranking.Comparison.of(compare_fn)
        self._compare_key = self._comparison.key if self._comparison else None
        self._lock: ExportDirLock | None = None
        self._history_reader: HistoryReader | None = None
        self._bound_to: tuple[str, str] | None = None
        self._export_steps: dict[str, int | None] = {}
        self._unrecoverable_warned: set[int] = set()
        self._session: MirrorSession | None = None
        # The highest export name seen or used: a name is never given to a second export.
        self._newest_name = 0

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
        export_base = os.fsdecode(export_path)
        checkpoint_path = _absolute(os.fsdecode(checkpoint_path)) if checkpoint_path else None
        model_dir = os.fsdecode(estimator.model_dir)
        self._bind(model_dir, export_base)
        self._lock.check()

        candidate = self._candidate(eval_result, checkpoint_path)
        history = self._poll_history()
        # The one listing of this call: what is exported or deleted below is added to
        # `kept` or taken out of it as it happens.
        listed = exports_lib.list_exports(export_base)
        self._newest_name = max([self._newest_name, *(e.version for e in listed)])
        kept = [
            _candidate_of(e)
            for e in exports_lib.resolve_exports(listed, history, self._export_steps)
        ]
        earlier = [
            Candidate(r.step, r.metrics, r.wall_time, source=r.checkpoint_path)
            for r in history.before(candidate.step)
        ]
        # Where each contender's checkpoint is now (None: gone), looked up once.
        found: dict[int, str | None] = {}

        def recoverable(contender: Candidate) -> bool:
            found[contender.step] = _existing_checkpoint(contender.source, model_dir)
            return found[contender.step] is not None

        decision = self._keeper.decide(kept, earlier, candidate, recoverable)
        self._warn_unrecoverable(decision.unrecoverable)
        best = decision.baseline
        for lost in decision.recover:
            logger.warning(
                "The eval at step %d (%s) beat every kept export but was never exported "
                "(the process stopped first); exporting it now from %s.",
                lost.step,
                _describe(lost.metrics, self._compare_key),
                lost.source,
            )
            kept.append(
                self._write_export(estimator, export_base, lost, found[lost.step], recovered=True)
            )
            best = lost

        new_export = None
        described = _describe(best.metrics if best else None, self._compare_key)
        if decision.export:
            logger.info(
                "Exporting step %d: %s beats %s.",
                candidate.step,
                _describe(candidate.metrics, self._compare_key),
                described if best is not None else "no kept export",
            )
            written = self._write_export(
                estimator, export_base, candidate, checkpoint_path, recovered=False
            )
            kept.append(written)
            new_export = written.source.path
        else:
            logger.info(
                "Not exporting step %d: %s does not beat the best kept export (%s).",
                candidate.step,
                _describe(candidate.metrics, self._compare_key),
                described,
            )

        remaining = self._retire(kept)
        if self._session is not None:
            self._session.request(history, [c.source for c in remaining], final=is_the_final_export)
        return new_export

    # -- binding to a model directory ------------------------------------------------------

    def _bind(self, model_dir: str, export_base: str) -> None:
        if self._bound_to == (model_dir, export_base):
            return
        self._release()
        fs.check_filesystem(model_dir)
        fs.check_filesystem(export_base)
        lock = ExportDirLock(export_base)
        lock.acquire()
        self._lock = lock
        exports_lib.remove_stale_temps(export_base)
        staging.sweep_once()  # what a killed predecessor staged locally
        self._history_reader = (
            HistoryReader(model_dir, self._events_glob) if self._events_glob else None
        )
        self._export_steps.clear()
        self._unrecoverable_warned.clear()
        self._bound_to = (model_dir, export_base)
        if self._mlflow is not None:
            self._session = self._mlflow.start(
                model_dir=model_dir,
                export_base=export_base,
                exporter_name=self.name,
                comparison=self._comparison,
            )

    def _release(self) -> None:
        session, self._session = self._session, None
        try:
            if session is not None:
                session.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self._bound_to = None

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
        self._release()

    # -- decisions ----------------------------------------------------------------------

    def _candidate(self, eval_result: Mapping[str, Any], checkpoint_path: str | None) -> Candidate:
        if not isinstance(eval_result, Mapping):
            raise ValueError(f"`eval_result` must be a dict of metrics, got {eval_result!r}.")
        metrics = exports_lib.plain_metrics(eval_result)
        if self._compare_key is not None and self._compare_key not in metrics:
            raise ValueError(
                f"The eval result has no {self._compare_key!r}, which compare_fn compares; it "
                f"has the keys {sorted(eval_result)}. Pass compare_fn=metric_smaller(key) or "
                f"metric_bigger(key) for one of them."
            )
        step = _candidate_step(eval_result, checkpoint_path)
        return Candidate(step, metrics, time.time(), source=checkpoint_path)

    def _poll_history(self) -> EvalHistory:
        if self._history_reader is None:
            return EvalHistory([])
        return self._history_reader.poll()

    def _warn_unrecoverable(self, lost: tuple[Candidate, ...]) -> None:
        for record in lost:
            if record.step in self._unrecoverable_warned:
                continue
            self._unrecoverable_warned.add(record.step)
            logger.warning(
                "The eval at step %d (%s) beat every kept export but was never exported, and "
                "its checkpoint %s is gone; it cannot be recovered.",
                record.step,
                _describe(record.metrics, self._compare_key),
                record.source,
            )

    # -- effects ------------------------------------------------------------------------

    def _retire(self, kept: list[Candidate]) -> list[Candidate]:
        """Delete the exports the policy does not keep; the rest, best first."""
        doomed = self._keeper.retire(kept)
        gone = {e.path for e in exports_lib.delete_exports(c.source for c in doomed)}
        return self._keeper.rank(c for c in kept if c.source.path not in gone)

    def _write_export(
        self,
        estimator: tf.estimator.Estimator,
        export_base: str,
        candidate: Candidate,
        checkpoint_path: str | None,
        *,
        recovered: bool,
    ) -> Candidate:
        """Export ``candidate`` from ``checkpoint_path``; the export as the keeper sees it."""
        metadata = exports_lib.build_metadata(
            exporter_name=self.name,
            step=candidate.step,
            metrics=candidate.metrics,
            checkpoint_path=checkpoint_path,
            comparison=self._comparison,
            recovered=recovered,
        )
        with staging.staging_dir() as tmp:
            # The metadata travels as an extra asset, so it lands in the export before the
            # Estimator renames it into place: no export is ever seen without it.
            assets_extra = dict(self._extra_assets)
            assets_extra[exports_lib.METADATA_FILENAME] = exports_lib.write_metadata_file(
                metadata, tmp
            )
            atomic = fs.has_atomic_rename(export_base)
            # Where directories cannot be renamed atomically (object stores, ram://), the
            # SavedModel is written locally and copied with saved_model.pb last, instead of
            # TensorFlow's rename of a temp directory, which there copies every object again
            # (or, on ram://, loses the contents).
            target_base = export_base if atomic else os.path.join(tmp, "export")
            path = os.fsdecode(
                estimator.export_saved_model(
                    target_base,
                    self._receiver_fn,
                    assets_extra=assets_extra,
                    as_text=self._text_proto,
                    checkpoint_path=checkpoint_path,
                )
            )
            if not atomic:
                name = _free_name(export_base, path, after=self._newest_name)
                path = exports_lib.stage_export(path, export_base, name)
        version = int(fs.split(path)[1])
        self._newest_name = max(self._newest_name, version)
        return _candidate_of(exports_lib.export_from_metadata(path, version, metadata))


def _candidate_of(export: Export) -> Candidate:
    """An export as the keeper sees it: made at its timestamp name."""
    return Candidate(export.step, export.metrics, float(export.version), source=export)


def _describe(metrics: Mapping[str, float] | None, key: str | None) -> str:
    if metrics is None:
        return "nothing"
    if key is not None and key in metrics:
        return f"{key}={metrics[key]:.6g}"
    return ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()))


def _free_name(export_base: str, local_export: str, after: int) -> str:
    """The export's timestamp name, or the next one that is free and above ``after``.

    Names are the identity of exports in MLflow (each logged model and version
    records its export directory), so a name is never used twice: a name taken
    ahead of the clock (two exports within a second) and freed by retention
    would otherwise be given to a later, different export.
    """
    version = max(int(os.path.basename(local_export)), after + 1)
    while fs.exists(fs.join(export_base, str(version))):
        version += 1
    return str(version)


def _absolute(path: str) -> str:
    """A local path made absolute (the metadata and MLflow tags outlive the working
    directory); a URL such as ``gs://...`` is kept as it is."""
    return path if "://" in path else os.path.abspath(path)
