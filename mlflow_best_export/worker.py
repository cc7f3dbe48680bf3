"""The exporter's MLflow worker: a thread that keeps MLflow in step, so training never waits.

``export()`` returns once the SavedModel is on disk; :class:`BackgroundSync`
hands the new snapshot to its thread, which runs ``Mirror.sync``. Requests
coalesce (the worker always reconciles the newest snapshot) and whatever a
crash or an outage loses is redone by the next reconciliation.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Sequence

from mlflow_best_export.exports import Export
from mlflow_best_export.mirror import Mirror, Snapshot
from mlflow_best_export.ranking import Comparison
from mlflow_best_export.reconcile import SyncReport
from mlflow_best_export.records import EvalHistory
from mlflow_best_export.settings import MlflowSettings
from mlflow_best_export.tracking import redact_text

logger = logging.getLogger(__name__)


class BackgroundSync:
    """Runs a :class:`Mirror` on a worker thread, newest snapshot first, from an exporter's
    bind to its release.

    ``request()`` never blocks, except for the final export, which waits up to
    ``flush_timeout`` and marks the run finished. Failures are logged as warnings
    (one line per kind of failure in an outage, not one per attempt) and retried
    at the next request; with ``strict=True`` the failure is raised by the next
    ``request()`` or ``flush()``.

    Args:
      mirror: what to run.
      settings: ``strict`` and ``flush_timeout`` are read from it.
      label: the export directory, named in warnings.
      exit_flush_timeout: how long the interpreter's exit waits for the worker.
    """

    def __init__(
        self,
        mirror: Mirror,
        settings: MlflowSettings,
        *,
        label: str = "",
        exit_flush_timeout: float = 60.0,
    ):
        self.mirror = mirror
        self.settings = settings
        self.label = label
        self.exit_flush_timeout = exit_flush_timeout
        self.last_report: SyncReport | None = None
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._requested = 0
        self._finished = 0
        self._error: BaseException | None = None
        self._failing = False
        self._warned: set[str] = set()  # kinds of failure warned about in this outage
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="mlflow-best-export-sync", daemon=True
        )
        self._thread.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (lambda s: s and s._flush_at_exit())(ref())
        atexit.register(self._atexit)

    @classmethod
    def start(
        cls,
        settings: MlflowSettings,
        *,
        model_dir: str,
        export_base: str,
        exporter_name: str,
        comparison: Comparison | None,
    ) -> BackgroundSync:
        """Start mirroring one model directory.

        Called on the training thread, which may hold the fluent API's active run
        (MLflow keeps it per thread): that run is the one to log to.
        """
        run_id = settings.run_id or _active_run_id(settings.tracking_uri)
        mirror = Mirror(
            settings,
            model_dir=model_dir,
            exporter_name=exporter_name,
            comparison=comparison,
            run_id=run_id,
        )
        return cls(mirror, settings, label=export_base)

    def request(self, history: EvalHistory, kept: Sequence[Export], *, final: bool = False) -> None:
        """Ask for MLflow to mirror ``history`` and the ``kept`` exports (best first).

        Args:
          final: the process is about to end: wait for MLflow so the run is complete.
        """
        self.raise_if_failed()
        with self._cond:
            self._pending = Snapshot(history=history, kept=tuple(kept))
            self._requested += 1
            self._cond.notify_all()
        if final:
            self._finish()

    def _finish(self) -> None:
        timeout = self.settings.flush_timeout
        if not self.flush(timeout):
            # flush() is also False at once when the last attempt failed: say both.
            logger.warning(
                "MLflow is not in step after the final export (it is failing, or did not "
                "catch up within %s s); run `mlflow-best-export sync` to finish.",
                timeout,
            )
            return
        try:
            self.mirror.finish_run()
        except Exception as err:  # noqa: BLE001 - an MLflow outage must not stop training
            if self.settings.strict:
                raise
            logger.warning("Could not mark the MLflow run finished: %s", redact_text(err))

    def raise_if_failed(self) -> None:
        """In strict mode, raise the last failure until a sync succeeds again."""
        if self.settings.strict and self._error is not None:
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

    def close(self) -> bool:
        """Wait up to ``flush_timeout`` for MLflow, then stop the worker."""
        try:
            done = self.flush(self.settings.flush_timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            atexit.unregister(self._atexit)
        if not done:
            logger.warning(
                "MLflow is not yet in step with %s; run `mlflow-best-export sync` or restart "
                "training to finish.",
                self.label,
            )
        return done

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
            if self.settings.strict:
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


def _active_run_id(tracking_uri: str | None) -> str | None:
    """The fluent API's active run, if it lives where the exporter logs."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    if tracking_uri is not None and tracking_uri != mlflow.get_tracking_uri():
        return None
    return run.info.run_id
