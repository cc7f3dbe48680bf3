"""One process's hold on one export directory, for any training loop.

An :class:`ExportSession` is what an exporter binds when it first exports to a
directory, and releases when it is closed or moves to another one:

- the directory's lock (one writer at a time) and the clean-up of what a killed
  predecessor left (temporary exports, local staging);
- the eval history, read incrementally;
- the kept exports as the keeper sees them, and the names of new ones (a name
  is never given twice);
- retention on disk, then the MLflow worker, handed the kept exports.

It imports neither TensorFlow nor MLflow; the MLflow worker is loaded when it is needed.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from mlflow_best_export import exports as exports_lib
from mlflow_best_export import fs, staging
from mlflow_best_export.exports import Export
from mlflow_best_export.history import HistoryReader
from mlflow_best_export.keeper import Candidate, Keeper
from mlflow_best_export.locks import ExportDirLock
from mlflow_best_export.records import EvalHistory
from mlflow_best_export.settings import MlflowSettings

if TYPE_CHECKING:
    from mlflow_best_export.worker import BackgroundSync

logger = logging.getLogger(__name__)


class ExportSession:
    """The binding of one exporter to one model directory and export directory.

    Args:
      model_dir: the directory whose event files hold the eval history.
      export_base: where this exporter's exports live (``<model_dir>/export/<name>``).
      exporter_name: the exporter's name, recorded in MLflow.
      event_file_pattern: the eval event files, relative to ``model_dir``; None: no history.
      keeper: the exporter's decisions (its ranking and retention policy).
      mlflow: where to mirror; None mirrors nothing.

    Raises:
      ExportDirLockedError: another live process holds ``export_base``.
    """

    def __init__(
        self,
        *,
        model_dir: str,
        export_base: str,
        exporter_name: str,
        event_file_pattern: str | None,
        keeper: Keeper,
        mlflow: MlflowSettings | None,
    ) -> None:
        fs.check_filesystem(model_dir)
        fs.check_filesystem(export_base)
        self.model_dir = model_dir
        self.export_base = export_base
        self.keeper = keeper
        self.lock = ExportDirLock(export_base)
        self.lock.acquire()
        try:
            exports_lib.remove_stale_temps(export_base)
            staging.sweep_once()  # what a killed predecessor staged locally
            self._history = (
                HistoryReader(model_dir, event_file_pattern) if event_file_pattern else None
            )
            self.sync: BackgroundSync | None = None
            if mlflow is not None:
                from mlflow_best_export.worker import BackgroundSync  # loads MLflow

                self.sync = BackgroundSync.start(
                    mlflow,
                    model_dir=model_dir,
                    export_base=export_base,
                    exporter_name=exporter_name,
                    comparison=keeper.ranking.comparison,
                )
        except BaseException:
            self.lock.release()  # a failed bind must not lock this process out of its directory
            raise
        self._export_steps: dict[str, int | None] = {}
        self._newest_name = 0  # the highest export name seen or used
        self._reported: set[int] = set()  # steps reported lost for good

    def history(self) -> EvalHistory:
        """The eval history so far (only the bytes appended since the last call are read)."""
        return self._history.poll() if self._history is not None else EvalHistory([])

    def kept(self, history: EvalHistory) -> list[Candidate]:
        """The exports on disk now, as the keeper sees them."""
        self.lock.check()
        listed = exports_lib.list_exports(self.export_base)
        self._newest_name = max([self._newest_name, *(e.version for e in listed)])
        resolved = exports_lib.resolve_exports(listed, history, self._export_steps)
        return [candidate_of(e) for e in resolved]

    def place(self, written: str, metadata: dict, *, staged: bool) -> Candidate:
        """A SavedModel that was written with ``metadata``, as the keeper sees it.

        Args:
          written: where it was written.
          staged: it was written locally (the export directory is on an object store or
            ``ram://``) and is copied into the export directory here.
        """
        if staged:
            name = free_name(self.export_base, written, after=self._newest_name)
            written = exports_lib.stage_export(written, self.export_base, name)
        version = int(fs.split(written)[1])
        self._newest_name = max(self._newest_name, version)
        return candidate_of(exports_lib.export_from_metadata(written, version, metadata))

    def report_unrecoverable(self, lost: Candidate, described: str, why: str) -> None:
        """Warn, once per step, about a best that was never exported and cannot be now."""
        if lost.step in self._reported:
            return
        self._reported.add(lost.step)
        logger.warning(
            "The eval at step %d (%s) beat every kept export but was never exported, and %s; "
            "it cannot be recovered.",
            lost.step,
            described,
            why,
        )

    def retire(
        self, history: EvalHistory, kept: list[Candidate], *, final: bool = False
    ) -> list[Candidate]:
        """Delete the exports the policy does not keep, and hand the rest to MLflow.

        Args:
          final: the process is about to end: wait for MLflow (up to ``flush_timeout``).

        Returns:
          The kept exports, best first.
        """
        doomed = self.keeper.retire(kept)
        gone = {e.path for e in exports_lib.delete_exports(c.source for c in doomed)}
        remaining = self.keeper.rank(c for c in kept if c.source.path not in gone)
        if self.sync is not None:
            self.sync.request(history, [c.source for c in remaining], final=final)
        return remaining

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until MLflow mirrors every export so far; see ``BackgroundSync.flush``."""
        return self.sync is None or self.sync.flush(timeout)

    def close(self) -> None:
        """Wait (up to ``flush_timeout``) for MLflow, stop the worker, release the lock."""
        try:
            if self.sync is not None:
                self.sync.close()
        finally:
            self.lock.release()


def candidate_of(export: Export) -> Candidate:
    """An export as the keeper sees it: made at its timestamp name."""
    return Candidate(export.step, export.metrics, float(export.version), source=export)


def free_name(export_base: str, local_export: str, after: int) -> str:
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
