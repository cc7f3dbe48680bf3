"""The on-disk export directory: what is there, its metadata, and retention.

An exporter writes ``<model_dir>/export/<name>/<10-digit timestamp>/``. Each
export made by ``MLflowBestExporter`` carries
``assets.extra/mlflow_best_export.json`` with the eval result that earned it,
its global step and checkpoint. The file is written into the export before the
Estimator renames the export into place, so an export either has complete
metadata or was made by another class (the original ``BestExporter``, say).

TensorFlow is imported lazily and only to read the global step of an export
that has no metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

METADATA_FILENAME = "mlflow_best_export.json"
METADATA_FORMAT = 1
LOCK_FILENAME = ".mlflow_best_export.lock"
_TEMP_PREFIX = "temp-"


@dataclass(frozen=True)
class Export:
    """One export directory and what is known about the eval that earned it.

    Attributes:
      path: absolute path of the export directory.
      version: the directory's timestamp name as an int.
      step: global step of the exported checkpoint, when known.
      metrics: the eval result (plain floats), when known.
      checkpoint_path: the checkpoint the export was made from, when known.
      has_metadata: True when the export carries our metadata file.
      metadata: the parsed metadata file (empty without one).
    """

    path: str
    version: int
    step: int | None = None
    metrics: Mapping[str, float] | None = None
    checkpoint_path: str | None = None
    has_metadata: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ranked(self) -> bool:
        """True when the export has metrics to be ranked by."""
        return self.metrics is not None and self.step is not None


def is_export_dir_name(name: str) -> bool:
    """True for the 10-digit timestamp names exports are written under."""
    return len(name) == 10 and name.isdigit()


def plain_metrics(eval_result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalars of an eval result as plain floats.

    ``global_step`` is kept out (it is stored separately); values that are not
    numeric scalars (serialized summaries, arrays) are dropped.
    """
    metrics: dict[str, float] = {}
    for key, value in eval_result.items():
        if key == "global_step" or isinstance(value, bytes | str):
            continue
        try:
            metrics[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def _json_number(value: float) -> float | str:
    # JSON has no NaN or infinity; strings keep the file readable by any parser.
    return value if math.isfinite(value) else str(value)


def _from_json_number(value: Any) -> float:
    return float(value)


def build_metadata(
    *,
    exporter_name: str,
    step: int,
    metrics: Mapping[str, float],
    checkpoint_path: str | None,
    compare_key: str | None,
    compare_mode: str | None = None,
    recovered: bool = False,
) -> dict[str, Any]:
    """The metadata stored in ``assets.extra/mlflow_best_export.json``."""
    from mlflow_best_export._version import __version__

    return {
        "format": METADATA_FORMAT,
        "exporter_name": exporter_name,
        "global_step": int(step),
        "eval_result": {k: _json_number(v) for k, v in sorted(metrics.items())},
        "checkpoint_path": checkpoint_path,
        "compare_key": compare_key,
        "compare_mode": compare_mode,
        "recovered_after_crash": recovered,
        "export_time": time.time(),
        "host": socket.gethostname(),
        "package_version": __version__,
    }


def write_metadata_file(metadata: Mapping[str, Any], directory: str) -> str:
    """Write metadata as JSON into ``directory``; return the file's path."""
    path = os.path.join(directory, METADATA_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def read_metadata(export_dir: str) -> dict[str, Any] | None:
    """The parsed metadata of an export, or None when it has none (or it is unreadable)."""
    path = os.path.join(export_dir, "assets.extra", METADATA_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("Ignoring unreadable export metadata %s: %s", path, err)
        return None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("eval_result"), dict):
        logger.warning("Ignoring export metadata %s: not in the expected format", path)
        return None
    return metadata


def _export_from_metadata(path: str, version: int, metadata: dict[str, Any]) -> Export:
    try:
        metrics = {k: _from_json_number(v) for k, v in metadata["eval_result"].items()}
        step = int(metadata["global_step"])
    except (KeyError, TypeError, ValueError) as err:
        logger.warning("Ignoring export metadata in %s: %s", path, err)
        return Export(path=path, version=version)
    return Export(
        path=path,
        version=version,
        step=step,
        metrics=metrics,
        checkpoint_path=metadata.get("checkpoint_path"),
        has_metadata=True,
        metadata=metadata,
    )


def list_exports(export_base: str) -> list[Export]:
    """The exports under ``export_base``, oldest first, with their metadata.

    Only 10-digit timestamp directories count (what TensorFlow Serving loads);
    ``temp-*`` directories of unfinished exports and other files are ignored.
    Exports without metadata have ``step`` and ``metrics`` of None.
    """
    try:
        names = os.listdir(export_base)
    except FileNotFoundError:
        return []
    exports = []
    for name in sorted(names):
        path = os.path.join(export_base, name)
        if not is_export_dir_name(name) or not os.path.isdir(path):
            continue
        metadata = read_metadata(path)
        if metadata is None:
            exports.append(Export(path=path, version=int(name)))
        else:
            exports.append(_export_from_metadata(path, int(name), metadata))
    return exports


def read_export_step(export_dir: str) -> int | None:
    """The ``global_step`` saved in an export's variables, or None if it has none."""
    prefix = os.path.join(export_dir, "variables", "variables")
    if not os.path.exists(prefix + ".index"):
        return None
    import tensorflow as tf

    try:
        return int(tf.train.load_variable(prefix, "global_step"))
    except (tf.errors.OpError, ValueError, KeyError) as err:
        logger.info("No global_step in %s: %s", prefix, err)
        return None


def with_history(export: Export, metrics: Mapping[str, float] | None, step: int | None) -> Export:
    """An export without metadata, ranked by the eval recorded for its step."""
    return Export(
        path=export.path,
        version=export.version,
        step=step,
        metrics=dict(metrics) if metrics is not None else None,
        checkpoint_path=export.checkpoint_path,
        has_metadata=False,
    )


def rank_exports(
    exports: Iterable[Export],
    history: Any,
    compare_fn: Any,
    steps: dict[str, int | None] | None = None,
) -> list[Export]:
    """The exports that can be ranked under ``compare_fn``, best first.

    Exports without metadata (made by the original class) are ranked by the
    eval that the history holds for the ``global_step`` in their variables;
    those that cannot be placed are left out (and so never deleted).

    Args:
      exports: the exports, e.g. from :func:`list_exports`.
      history: an ``EvalHistory`` (anything with ``get(step)``).
      compare_fn: the compare function to rank by.
      steps: a cache of ``{export path: global step}`` kept between calls.
    """
    from mlflow_best_export import ranking

    steps = {} if steps is None else steps
    rankable = []
    for export in exports:
        if not export.ranked:
            if export.path not in steps:
                steps[export.path] = read_export_step(export.path)
            step = steps[export.path]
            record = history.get(step) if step is not None else None
            if record is not None:
                export = with_history(export, record.metrics, step)
        if export.ranked and ranking.comparable(compare_fn, export.metrics):
            rankable.append(export)
    return ranking.rank_best_first(rankable, compare_fn, lambda e: e.metrics, lambda e: e.step)


def compare_fn_of(exports: Iterable[Export]) -> Any:
    """The compare function recorded in the newest export's metadata, or None.

    Exports record the compared metric and its direction when the exporter
    used ``loss_smaller``, ``metric_smaller`` or ``metric_bigger``.
    """
    from mlflow_best_export import ranking

    for export in sorted(exports, key=lambda e: e.version, reverse=True):
        key = export.metadata.get("compare_key")
        mode = export.metadata.get("compare_mode")
        if key and mode in ("min", "max"):
            return ranking.metric_bigger(key) if mode == "max" else ranking.metric_smaller(key)
    return None


def remove_stale_temps(export_base: str) -> list[str]:
    """Delete ``temp-*`` directories left by an export that crashed; return their paths.

    Only call this while holding the export directory's lock: an export in
    progress writes to such a directory.
    """
    removed = []
    try:
        names = os.listdir(export_base)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(export_base, name)
        if name.startswith(_TEMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            logger.info("Removed the unfinished export %s", path)
            removed.append(path)
    return removed


def delete_exports(exports: Iterable[Export]) -> list[Export]:
    """Delete export directories; return the ones that are gone.

    The directory is first renamed to a ``temp-`` name so that a crash in the
    middle of the deletion never leaves a half-deleted export that looks
    servable; stale ``temp-`` directories are cleaned up on the next start.
    """
    deleted = []
    for export in exports:
        base, name = os.path.split(export.path)
        doomed = os.path.join(base, f"{_TEMP_PREFIX}delete-{name}")
        try:
            os.rename(export.path, doomed)
        except FileNotFoundError:
            deleted.append(export)
            continue
        except OSError as err:
            logger.warning("Could not delete the export %s: %s", export.path, err)
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        logger.info("Deleted the export %s (no longer among the best)", export.path)
        deleted.append(export)
    return deleted


class ExportDirLockedError(RuntimeError):
    """Another process is exporting to the same export directory."""


class ExportDirLock:
    """An exclusive, process-lifetime lock on an export directory.

    Two exporters writing the same ``export/<name>`` directory would each
    delete the other's exports. The lock is an ``flock`` on a file inside the
    directory, so the kernel releases it when the holder dies, even by SIGKILL.
    """

    def __init__(self, export_base: str):
        self.path = os.path.join(export_base, LOCK_FILENAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
          ExportDirLockedError: if another process holds it; the message names
            the holder recorded in the lock file.
        """
        import fcntl

        if self._fd is not None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise ExportDirLockedError(
                f"Another process ({holder}) is exporting to {os.path.dirname(self.path)}. "
                f"Two exporters must not share an export directory: give this one another "
                f"`name`, or stop the other process."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (the file stays; it is harmless)."""
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
