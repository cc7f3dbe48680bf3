"""Keeping MLflow in step with a model directory.

The model directory is the truth; MLflow is a mirror. :class:`Mirror` brings
MLflow in line with a :class:`Snapshot` of the directory (the eval history and
the kept exports), in three steps: the metrics not yet mirrored are logged,
``reconcile.plan`` decides what the LoggedModels, versions and alias need, and
``reconcile.apply`` does it. Running it twice changes nothing the second time.
``worker.BackgroundSync`` runs a Mirror for the exporter; :func:`sync` runs one
for the command line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from mlflow_best_export import fs, reconcile
from mlflow_best_export.exports import Export
from mlflow_best_export.ranking import Comparison, Ranking
from mlflow_best_export.reconcile import ProgressFn, SyncReport
from mlflow_best_export.records import EvalHistory, EvalRecord
from mlflow_best_export.registry import identity
from mlflow_best_export.settings import MlflowSettings
from mlflow_best_export.tracking import first_line, redact_text

logger = logging.getLogger(__name__)

#: The run artifact holding the eval curve with the exports marked.
FIGURE_FILE = "mlflow_best_export/eval_history.png"


@dataclass(frozen=True)
class Snapshot:
    """What the model directory holds: the eval history and the kept exports, best first."""

    history: EvalHistory
    kept: tuple[Export, ...]


class Mirror:
    """Reconciles one exporter's model directory into MLflow.

    Args:
      settings: where and how to mirror.
      model_dir: the Estimator's model directory.
      exporter_name: the exporter's name (``export/<name>``).
      comparison: how the exports were compared (None: a custom compare_fn);
        its metric is shown in version descriptions and the run's figure.
      run_id: the run to log to, if not ``settings.run_id`` (the active run the
        exporter found on the training thread).
    """

    def __init__(
        self,
        settings: MlflowSettings,
        *,
        model_dir: str,
        exporter_name: str,
        comparison: Comparison | None = None,
        run_id: str | None = None,
    ):
        self.settings = settings
        self.model_dir = model_dir
        self.exporter_name = exporter_name
        self._comparison = comparison
        self._run_id = run_id or settings.run_id
        self._client = None
        self._run = None
        self._metrics = None
        self._registry = None
        self._in_step_with: tuple[tuple[str, int | None], ...] | None = None
        self._leftovers_reclaimed = False

    # -- connection ------------------------------------------------------------------------

    def _connect(self):
        from mlflow.tracking import MlflowClient

        from mlflow_best_export import registry, store, tracking

        settings = self.settings
        if self._client is None:
            # A missing embedded store is created whole before MLflow first opens it.
            store.ensure(store.resolve_uri(settings.tracking_uri))
            store.ensure(settings.registry_uri)
            self._client = MlflowClient(
                tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri
            )
        if self._run is None:
            self._run = tracking.resolve_run(
                self._client,
                model_dir=self.model_dir,
                exporter_name=self.exporter_name,
                experiment_name=settings.experiment_name,
                run_id=self._run_id,
                run_name=settings.run_name,
            )
            self._metrics = tracking.MetricMirror(self._client, self._run.run_id)
            self._registry = registry.Registry(
                client=self._client,
                registered_model_name=settings.registered_model_name,
                experiment_id=self._run.experiment_id,
                run_id=self._run.run_id,
                key=tracking.exporter_key(self.model_dir, self.exporter_name),
                exporter_name=self.exporter_name,
                alias=settings.moved_alias,
                compare_key=self._comparison.key if self._comparison else None,
            )
        return self._client

    def explain(self, error: BaseException) -> str:
        """One line on an MLflow failure: what is wrong with an embedded store and its fix,
        else the error's first line (never the SQL that SQLAlchemy appends)."""
        from mlflow_best_export import store

        for uri in (self.settings.registry_uri, store.resolve_uri(self.settings.tracking_uri)):
            diagnosis = store.diagnose(uri, error)
            if diagnosis is not None:
                return diagnosis
        return f"{type(error).__name__}: {first_line(error)}"

    @property
    def run_id(self) -> str | None:
        """The run being logged to, once known."""
        return self._run.run_id if self._run is not None else None

    def reset(self) -> None:
        """Forget cached MLflow state; the next sync asks MLflow afresh."""
        if self._metrics is not None:
            self._metrics.forget()
        self._in_step_with = None

    # -- reconciliation --------------------------------------------------------------------

    def sync(self, snapshot: Snapshot, progress: ProgressFn | None = None) -> SyncReport:
        """Bring MLflow in line with ``snapshot``; idempotent.

        Raises:
          MlflowException or OSError: on any failure; what succeeded stays
            done and the next call carries on from there.
        """
        self._connect()
        report = SyncReport(run_id=self.run_id)
        report.metrics_logged = self._metrics.mirror(snapshot.history.records)
        kept_ids = tuple(identity(e) for e in snapshot.kept)
        if kept_ids == self._in_step_with:
            return report
        models, versions, alias_on = self._registry.current()
        the_plan = reconcile.plan(
            snapshot.kept, models, versions, alias=self._registry.alias, alias_on=alias_on
        )
        reconcile.apply(
            the_plan,
            self._registry,
            on_logged=lambda export, model_id: self._link(snapshot.history, export, model_id),
            progress=progress,
            report=report,
        )
        if not self._leftovers_reclaimed:
            self._reclaim_leftovers(self._registry.experiment_id, report)
        self._log_figure(snapshot)
        self._in_step_with = None if report.gone else kept_ids
        return report

    def _reclaim_leftovers(self, experiment_id: str, report: SyncReport) -> None:
        """Once per process: artifacts that a crash, a user's delete or an earlier release
        left behind deleted logged models. Best effort: an artifact store that cannot be
        listed (permissions, say) must not keep the rest of MLflow out of step."""
        from mlflow_best_export import cleanup

        self._leftovers_reclaimed = True
        try:
            for leftover in cleanup.find_leftovers(self._client, [experiment_id]):
                cleanup.reclaim_leftover(self._client, leftover)
                report.storage_reclaimed.append(leftover.model_id)
        except Exception as err:  # noqa: BLE001 - see the docstring
            logger.warning(
                "Could not reclaim the artifacts of deleted logged models in experiment %s "
                "(%s); `mlflow-best-export gc` can do it later.",
                experiment_id,
                redact_text(err),
            )

    def _log_figure(self, snapshot: Snapshot) -> None:
        """Log the eval curve with the exports marked, as the run's ``eval_history.png``."""
        from mlflow_best_export.plots import history_figure

        comparison = self._comparison
        key = comparison.key if comparison else None
        if key is None or not any(key in r.metrics for r in snapshot.history.records):
            return
        figure = history_figure(
            snapshot.history,
            key,
            higher_is_better=comparison.higher_is_better,
            kept_steps=[e.step for e in snapshot.kept if e.step is not None],
            title=f"{self.exporter_name}: {key} over steps, kept exports circled",
        )
        self._client.log_figure(self.run_id, figure, FIGURE_FILE)

    def _link(self, history: EvalHistory, export: Export, model_id: str) -> None:
        record = history.get(export.step) if export.step is not None else None
        if record is None or not record.metrics:
            # The history may be gone (a copied export directory); the export's own
            # metadata still knows the eval result.
            record = EvalRecord(export.step, time.time(), dict(export.metrics or {}), None)
        self._metrics.link(record, model_id)

    def finish_run(self) -> None:
        """Mark a run this exporter created as finished."""
        if self._run is not None and self._run.created_here:
            self._client.set_terminated(self._run.run_id, "FINISHED")


def snapshot_of(
    model_dir: str,
    *,
    exporter_name: str = "best_exporter",
    event_file_pattern: str | None = "eval/*.tfevents.*",
    compare_fn: Any = None,
) -> Snapshot:
    """Read a Snapshot from a model directory, as the exporter would see it.

    Args:
      model_dir: the Estimator's model directory.
      exporter_name: the exporter's name (exports are under ``export/<name>``).
      event_file_pattern: the eval event files; None for no history.
      compare_fn: how the exports rank; None takes the compared metric and
        direction recorded in the exports' metadata.

    Raises:
      ValueError: when the model directory does not exist, or ``compare_fn``
        is None and the exports do not record how they were compared.
    """

    from mlflow_best_export import exports as exports_lib
    from mlflow_best_export.history import read_eval_history

    fs.check_filesystem(model_dir)
    if not fs.isdir(model_dir):
        raise ValueError(f"The model directory {model_dir!r} does not exist.")
    history = read_eval_history(model_dir, event_file_pattern) if event_file_pattern else None
    history = history if history is not None else EvalHistory([])
    exports = exports_lib.list_exports(fs.join(model_dir, "export", exporter_name))
    if compare_fn is None:
        compare_fn = exports_lib.compare_fn_of(exports)
        if compare_fn is None and exports:
            raise ValueError(
                f"The exports under {model_dir}/export/{exporter_name} do not record how they "
                f"were compared (a custom compare_fn); say which metric ranks them, e.g. "
                f"--metric loss --mode min."
            )
    kept = (
        Ranking.of(compare_fn).rank(exports_lib.resolve_exports(exports, history))
        if exports
        else []
    )
    return Snapshot(history=history, kept=tuple(kept))


def sync(
    model_dir: str,
    settings: MlflowSettings | None = None,
    *,
    exporter_name: str = "best_exporter",
    event_file_pattern: str | None = "eval/*.tfevents.*",
    compare_fn: Any = None,
    progress: ProgressFn | None = None,
) -> SyncReport:
    """Bring MLflow in line with a model directory, as the exporter does on start.

    Mirrors missing eval metrics into the exporter's run (found by tag, or
    ``settings.run_id``), logs and registers kept exports that have no LoggedModel
    or version yet, deletes what this exporter logged for exports that are gone
    (never a version with another alias), and moves the alias to the best.

    Args:
      model_dir: the Estimator's model directory.
      settings: where and how to mirror (default: ``MlflowSettings()``).

    Raises:
      ValueError: for a missing model directory or unknown ranking.
      MlflowException: when MLflow fails; what succeeded stays done.
    """
    snapshot = snapshot_of(
        model_dir,
        exporter_name=exporter_name,
        event_file_pattern=event_file_pattern,
        compare_fn=compare_fn,
    )
    comparison = Comparison.of(compare_fn) if compare_fn is not None else None
    if comparison is None and snapshot.kept:
        comparison = Comparison.from_metadata(snapshot.kept[0].metadata)
    mirror = Mirror(
        settings or MlflowSettings(),
        model_dir=model_dir,
        exporter_name=exporter_name,
        comparison=comparison,
    )
    return mirror.sync(snapshot, progress)
