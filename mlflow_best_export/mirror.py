"""Keeping MLflow in step with a model directory: reconciliation and its worker.

The model directory is the truth; MLflow is a mirror. :class:`Mirror` brings
MLflow in line with a snapshot of the directory (the eval history and the
kept exports): metrics not yet mirrored are logged, kept exports without a
LoggedModel or version get one, what fell out of the kept set is deleted and
the alias points at the best. Running it twice changes nothing the second time.

:class:`BackgroundSync` runs a Mirror on a worker thread, so that ``export()``
returns once the SavedModel is on disk. Requests coalesce: the worker always
reconciles the newest snapshot, and whatever a crash loses is redone by the
next reconciliation.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_best_export import fs
from mlflow_best_export.exports import Export
from mlflow_best_export.history import EvalHistory, EvalRecord
from mlflow_best_export.ranking import Comparison
from mlflow_best_export.tracking import first_line, redact_text

logger = logging.getLogger(__name__)

#: The run artifact holding the eval curve with the exports marked.
FIGURE_FILE = "mlflow_best_export/eval_history.png"


@dataclass(frozen=True)
class Snapshot:
    """What the model directory holds: the eval history and the kept exports, best first."""

    history: EvalHistory
    kept: tuple[Export, ...]


@dataclass
class SyncReport:
    """What one reconciliation changed."""

    run_id: str | None = None
    metrics_logged: int = 0
    models_logged: list[int] = field(default_factory=list)
    versions_created: list[int] = field(default_factory=list)
    versions_deleted: list[str] = field(default_factory=list)
    models_deleted: list[str] = field(default_factory=list)
    protected_versions: list[str] = field(default_factory=list)
    alias_moved_to: int | None = None
    storage_reclaimed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything in MLflow changed."""
        return bool(
            self.metrics_logged
            or self.models_logged
            or self.versions_created
            or self.versions_deleted
            or self.models_deleted
            or self.alias_moved_to is not None
            or self.storage_reclaimed
        )

    def summary(self) -> str:
        """One line for logs and the command line."""
        if not self.changed:
            return "MLflow is in step with the model directory; nothing to change."
        parts = []
        if self.metrics_logged:
            parts.append(f"{self.metrics_logged} eval steps mirrored")
        # Numbers that name things (steps, versions) are listed; counts stand alone.
        if self.models_logged:
            parts.append(f"models logged for steps {_listed(self.models_logged)}")
        if self.versions_created:
            parts.append(f"versions created for steps {_listed(self.versions_created)}")
        if self.versions_deleted:
            parts.append(f"versions {_listed(self.versions_deleted)} deleted")
        if self.models_deleted:
            parts.append(f"{len(self.models_deleted)} logged models deleted")
        if self.alias_moved_to is not None:
            parts.append(f"alias moved to step {self.alias_moved_to}")
        if self.storage_reclaimed:
            parts.append(
                f"artifacts of {len(self.storage_reclaimed)} deleted logged models reclaimed"
            )
        return "; ".join(parts) + "."


def _listed(items: list) -> str:
    return ", ".join(map(str, items))


ProgressFn = Callable[[str, int, int], None]


class Mirror:
    """Reconciles one exporter's model directory into MLflow.

    Args:
      model_dir: the Estimator's model directory.
      exporter_name: the exporter's name (``export/<name>``).
      tracking_uri: where MLflow lives; None uses MLflow's own resolution.
      registry_uri: the Model Registry's URI, if not the tracking URI.
      experiment_name: the experiment for a new run.
      run_id: an explicit run to log to.
      run_name: the name of a run created here.
      registered_model_name: register kept exports under this name (None: do not register).
      alias: the alias moved to the best version.
      comparison: how the exports were compared (None: a custom compare_fn);
        its metric is shown in version descriptions and the run's figure.
    """

    def __init__(
        self,
        *,
        model_dir: str,
        exporter_name: str,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        experiment_name: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        registered_model_name: str | None = None,
        alias: str | None = "best",
        comparison: Comparison | None = None,
    ):
        self.model_dir = model_dir
        self.exporter_name = exporter_name
        self._tracking_uri = tracking_uri
        self._registry_uri = registry_uri
        self._experiment_name = experiment_name
        self._run_id = run_id
        self._run_name = run_name
        self.registered_model_name = registered_model_name
        self.alias = alias if registered_model_name else None
        self._comparison = comparison
        self._client = None
        self._run = None
        self._metrics = None
        self._registry = None
        self._in_step_with: tuple[tuple[str, int | None], ...] | None = None
        self._leftovers_reclaimed = False

    # -- connection ------------------------------------------------------------------------

    def _connect(self):
        from mlflow.tracking import MlflowClient

        from mlflow_best_export import registry, tracking

        if self._client is None:
            from mlflow_best_export import store

            # A missing embedded store is created whole before MLflow first opens it.
            store.ensure(store.resolve_uri(self._tracking_uri))
            store.ensure(self._registry_uri)
            self._client = MlflowClient(
                tracking_uri=self._tracking_uri, registry_uri=self._registry_uri
            )
        if self._run is None:
            self._run = tracking.resolve_run(
                self._client,
                model_dir=self.model_dir,
                exporter_name=self.exporter_name,
                experiment_name=self._experiment_name,
                run_id=self._run_id,
                run_name=self._run_name,
            )
            self._metrics = tracking.MetricMirror(self._client, self._run.run_id)
            self._registry = registry.Registry(
                client=self._client,
                experiment_id=self._run.experiment_id,
                run_id=self._run.run_id,
                key=tracking.exporter_key(self.model_dir, self.exporter_name),
                exporter_name=self.exporter_name,
                registered_model_name=self.registered_model_name,
                alias=self.alias,
                compare_key=self._comparison.key if self._comparison else None,
            )
        return self._client

    def explain(self, error: BaseException) -> str:
        """One line on an MLflow failure: what is wrong with an embedded store and its fix,
        else the error's first line (never the SQL that SQLAlchemy appends)."""
        from mlflow_best_export import store

        for uri in (self._registry_uri, store.resolve_uri(self._tracking_uri)):
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
        from mlflow_best_export import registry as registry_lib

        self._connect()
        report = SyncReport(run_id=self.run_id)
        report.metrics_logged = self._metrics.mirror(snapshot.history.records)

        kept_ids = tuple(registry_lib.identity(e) for e in snapshot.kept)
        if kept_ids == self._in_step_with:
            return report
        reg = self._registry
        models, versions, alias_on = reg.current()
        the_plan = registry_lib.plan(
            snapshot.kept, models, versions, alias=self.alias, alias_on=alias_on
        )
        total = len(the_plan.log) + len(the_plan.register)
        done = 0

        for entry in the_plan.delete_models:
            if not entry.ready:  # a crash mid-upload left it; it is replaced below
                reg.delete_model(entry)
                report.models_deleted.append(entry.model_id)
        gone: set[tuple[str, int | None]] = set()
        for export in the_plan.log:
            try:
                reg.log_model(export, lambda e, model_id: self._link(snapshot.history, e, model_id))
            except Exception:
                if fs.isdir(export.path):
                    raise
                # Retention deleted it after the snapshot was taken; a newer snapshot
                # follows, and the unfinished LoggedModel is cleaned up then.
                logger.debug("Export %s went away while it was logged.", export.path)
                gone.add(registry_lib.identity(export))
                continue
            report.models_logged.append(export.step)
            done += 1
            if progress:
                progress("logged", done, total)
        version_of = {
            v.mirrors: v.version for v in (versions or ()) if v not in the_plan.delete_versions
        }
        if versions is not None:
            # Before registering: each new version links itself on a fresh read.
            reg.link(models, [v for v in versions if v not in the_plan.delete_versions])
        for export in the_plan.register:
            if registry_lib.identity(export) in gone:
                continue
            mv = reg.register(export)
            version_of[registry_lib.identity(export)] = str(mv.version)
            report.versions_created.append(export.step)
            done += 1
            if progress:
                progress("registered", done, total)
        if the_plan.alias_to is not None and registry_lib.identity(the_plan.alias_to) in version_of:
            reg.set_alias(the_plan.alias_to, version_of)
            report.alias_moved_to = the_plan.alias_to.step
        for entry in the_plan.delete_versions:
            reg.delete_version(entry)
            report.versions_deleted.append(entry.version)
        for entry in the_plan.delete_models:
            if entry.ready:
                reg.delete_model(entry)
                report.models_deleted.append(entry.model_id)
        for entry in the_plan.protected:
            logger.info(
                "Keeping version %s of %s although its export is gone: it carries the alias %s.",
                entry.version,
                self.registered_model_name,
                ", ".join(a for a in entry.aliases if a != self.alias),
            )
        report.protected_versions = [v.version for v in the_plan.protected]
        if not self._leftovers_reclaimed:
            self._reclaim_leftovers(reg.experiment_id, report)
        self._log_figure(snapshot)
        self._in_step_with = None if gone else kept_ids
        return report

    def _reclaim_leftovers(self, experiment_id: str, report: SyncReport) -> None:
        """Once per process: artifacts that a crash, a user's delete or an earlier release
        left behind deleted logged models. Best effort: an artifact store that cannot be
        listed (permissions, say) must not keep the rest of MLflow out of step."""
        from mlflow_best_export import registry as registry_lib

        self._leftovers_reclaimed = True
        try:
            for leftover in registry_lib.find_leftovers(self._client, [experiment_id]):
                registry_lib.reclaim_leftover(self._client, leftover)
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


class BackgroundSync:
    """Runs a :class:`Mirror` on a worker thread, newest snapshot first.

    ``request()`` never blocks. Failures are logged as warnings (one line per
    kind of failure in an outage, not one per attempt) and retried at the next request; with
    ``strict=True`` the failure is raised by the next ``request()`` or ``flush()``.
    """

    def __init__(self, mirror: Mirror, *, strict: bool = False, exit_flush_timeout: float = 60.0):
        self.mirror = mirror
        self.strict = strict
        self.exit_flush_timeout = exit_flush_timeout
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._requested = 0
        self._finished = 0
        self._error: BaseException | None = None
        self._failing = False
        self._warned: set[str] = set()  # kinds of failure warned about in this outage
        self._closed = False
        self.last_report: SyncReport | None = None
        self._thread = threading.Thread(
            target=self._run, name="mlflow-best-export-sync", daemon=True
        )
        self._thread.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (lambda s: s and s._flush_at_exit())(ref())
        atexit.register(self._atexit)

    def request(self, snapshot: Snapshot) -> None:
        """Ask for MLflow to be brought in line with ``snapshot``."""
        self.raise_if_failed()
        with self._cond:
            self._pending = snapshot
            self._requested += 1
            self._cond.notify_all()

    def raise_if_failed(self) -> None:
        """In strict mode, raise the last failure until a sync succeeds again."""
        if self.strict and self._error is not None:
            raise self._error

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every request so far is handled.

        Returns:
          True when every request was handled in time and the last attempt
          succeeded; False on timeout or when MLflow failed (retried at the next
          request).

        Raises:
          The last failure, in strict mode.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._requested
            while self._finished < target and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            done = self._finished >= target
        self.raise_if_failed()
        return done and not self._failing

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the worker."""
        try:
            return self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            atexit.unregister(self._atexit)

    def _flush_at_exit(self) -> None:
        if self._closed:
            return
        with self._cond:
            outstanding = self._finished < self._requested
        if outstanding:
            logger.info(
                "Waiting up to %.0f s for MLflow to catch up before exit.", self.exit_flush_timeout
            )
        try:
            done = self.flush(self.exit_flush_timeout)
        except Exception as err:  # noqa: BLE001 - nothing may escape an exit hook
            logger.warning(
                "MLflow is not in step with the model directory at exit: %s", redact_text(err)
            )
            return
        if not done:
            logger.warning(
                "MLflow did not catch up within %.0f s of exit; run `mlflow-best-export sync` "
                "(or restart training) to finish.",
                self.exit_flush_timeout,
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                snapshot, self._pending = self._pending, None
                target = self._requested
            self._sync_once(snapshot)
            with self._cond:
                self._finished = max(self._finished, target)
                self._cond.notify_all()

    def _sync_once(self, snapshot: Snapshot) -> None:
        try:
            self.last_report = self.mirror.sync(snapshot)
        except Exception as err:  # noqa: BLE001 - an MLflow outage must not stop training
            self.mirror.reset()
            if self.strict:
                self._error = err
            kind = type(err).__name__
            if kind not in self._warned:
                self._warned.add(kind)
                logger.warning(
                    "Could not bring MLflow in line with the model directory (%s); training "
                    "continues and the next export retries.",
                    self.mirror.explain(err),
                )
            else:
                logger.debug("MLflow still failing: %s", redact_text(err))
            self._failing = True
            return
        if self._failing:
            logger.warning("MLflow is reachable again and back in step with the model directory.")
        self._failing = False
        self._warned.clear()
        self._error = None
        if self.last_report.changed:
            logger.info("MLflow sync: %s", self.last_report.summary())


def _validate_optional_str(value: Any, argument: str, example: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"`{argument}` must be a non-empty string such as {example}, or None; got {value!r}."
        )
    return value


def _validate_timeout(value: Any, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"`{argument}` must be a number of seconds >= 0, or None to wait without limit; "
            f"got {value!r}."
        )
    return float(value)


def validate_flag(value: Any, argument: str) -> bool:
    """``value`` if it is a bool; else a ValueError naming ``argument``."""
    if not isinstance(value, bool):
        raise ValueError(f"`{argument}` must be True or False, got {value!r}.")
    return value


def _active_run_id(tracking_uri: str | None) -> str | None:
    """The fluent API's active run, if it lives where the exporter logs.

    Read on the training thread: the fluent API keeps the active run per thread,
    and the MLflow work happens on a worker thread.
    """
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    if tracking_uri is not None and tracking_uri != mlflow.get_tracking_uri():
        return None
    return run.info.run_id


@dataclass(frozen=True)
class MirrorSettings:
    """An exporter's MLflow options, checked when it is constructed.

    The fields are ``MLflowBestExporter``'s keyword-only MLflow arguments of the
    same names (its docstring says what each means).

    Raises:
      ValueError: a field is invalid; the message names the argument.
    """

    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment_name: str | None = None
    run_id: str | None = None
    run_name: str | None = None
    registered_model_name: str | None = None
    alias: str | None = "best"
    strict: bool = False
    flush_timeout: float | None = 600.0

    def __post_init__(self) -> None:
        from mlflow_best_export.tags import validate_alias, validate_registered_model_name

        checked = {
            "tracking_uri": _validate_optional_str(
                self.tracking_uri, "tracking_uri", "'http://mlflow:5000' or 'sqlite:///mlflow.db'"
            ),
            "registry_uri": _validate_optional_str(
                self.registry_uri, "registry_uri", "'http://mlflow:5000'"
            ),
            "experiment_name": _validate_optional_str(
                self.experiment_name, "experiment_name", "'my-estimator'"
            ),
            "run_id": _validate_optional_str(self.run_id, "run_id", "a run's 32-character id"),
            "run_name": _validate_optional_str(self.run_name, "run_name", "'nightly'"),
            "registered_model_name": validate_registered_model_name(self.registered_model_name),
            "alias": None if self.alias is None else validate_alias(self.alias),
            "strict": validate_flag(self.strict, "strict"),
            "flush_timeout": _validate_timeout(self.flush_timeout, "flush_timeout"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def start(
        self, *, model_dir: str, export_base: str, exporter_name: str, comparison: Comparison | None
    ) -> MirrorSession:
        """Start mirroring one model directory, on a worker thread.

        Called on the training thread, which may hold the fluent API's active run.
        """
        mirror = Mirror(
            model_dir=model_dir,
            exporter_name=exporter_name,
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            experiment_name=self.experiment_name,
            run_id=self.run_id or _active_run_id(self.tracking_uri),
            run_name=self.run_name,
            registered_model_name=self.registered_model_name,
            alias=self.alias,
            comparison=comparison,
        )
        return MirrorSession(BackgroundSync(mirror, strict=self.strict), self, export_base)


class MirrorSession:
    """One exporter's mirroring of one model directory, from bind to release.

    ``request()`` hands each export's outcome to the worker and, at the final
    export, waits for it and marks the run finished; ``close()`` waits up to
    ``flush_timeout`` and stops the worker. MLflow failures are warnings, and
    raised only with ``strict=True``.
    """

    def __init__(self, sync: BackgroundSync, settings: MirrorSettings, export_base: str) -> None:
        self._sync = sync
        self._settings = settings
        self._export_base = export_base

    def request(self, history: EvalHistory, kept: Sequence[Export], *, final: bool) -> None:
        """Ask for MLflow to mirror ``history`` and the ``kept`` exports.

        Args:
          history: the eval history so far.
          kept: the kept exports, best first.
          final: the process is about to end: wait for MLflow so the run is complete.
        """
        self._sync.request(kept_snapshot(history, kept))
        if not final:
            return
        timeout = self._settings.flush_timeout
        if not self._sync.flush(timeout):
            # flush() is also False at once when the last attempt failed: say both.
            logger.warning(
                "MLflow is not in step after the final export (it is failing, or did not "
                "catch up within %s s); run `mlflow-best-export sync` to finish.",
                timeout,
            )
            return
        try:
            self._sync.mirror.finish_run()
        except Exception as err:  # noqa: BLE001 - an MLflow outage must not stop training
            if self._settings.strict:
                raise
            logger.warning("Could not mark the MLflow run finished: %s", redact_text(err))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every request so far is mirrored; see ``BackgroundSync.flush``."""
        return self._sync.flush(timeout)

    def close(self) -> None:
        """Wait up to ``flush_timeout`` for MLflow, then stop the worker."""
        if not self._sync.close(self._settings.flush_timeout):
            logger.warning(
                "MLflow is not yet in step with %s; run `mlflow-best-export sync` or restart "
                "training to finish.",
                self._export_base,
            )


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
    kept = exports_lib.rank_exports(exports, history, compare_fn) if exports else []
    return Snapshot(history=history, kept=tuple(kept))


def sync(
    model_dir: str,
    *,
    exporter_name: str = "best_exporter",
    event_file_pattern: str | None = "eval/*.tfevents.*",
    compare_fn: Any = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    experiment_name: str | None = None,
    run_id: str | None = None,
    registered_model_name: str | None = None,
    alias: str | None = "best",
    progress: ProgressFn | None = None,
) -> SyncReport:
    """Bring MLflow in line with a model directory, as the exporter does on start.

    Mirrors missing eval metrics into the exporter's run (found by tag, or
    ``run_id``), logs and registers kept exports that have no LoggedModel or
    version yet, deletes what this exporter logged for exports that are gone
    (never a version with another alias), and moves the alias to the best.

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
        model_dir=model_dir,
        exporter_name=exporter_name,
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
        experiment_name=experiment_name,
        run_id=run_id,
        registered_model_name=registered_model_name,
        alias=alias,
        comparison=comparison,
    )
    return mirror.sync(snapshot, progress)


def kept_snapshot(history: EvalHistory, kept: Sequence[Export]) -> Snapshot:
    """A Snapshot of the history and the kept exports (best first)."""
    return Snapshot(history=history, kept=tuple(kept))
