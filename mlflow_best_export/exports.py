"""The on-disk export directory: what is there, its metadata, and retention.

An exporter writes ``<model_dir>/export/<name>/<10-digit timestamp>/``. Each
export made by ``MLflowBestExporter`` carries
``assets.extra/mlflow_best_export.json`` with the eval result that earned it,
its global step and checkpoint. The file is written into the export before the
Estimator renames the export into place, so an export either has complete
metadata or was made by another class (the original ``BestExporter``, say).

Everything goes through ``fs``, so the directory may be local or on any
filesystem TensorFlow writes (``gs://``, ``s3://``, ``hdfs://``, ``ram://``).
Where directories cannot be renamed atomically (everything but local paths),
an export is complete once its ``saved_model.pb`` (or ``.pbtxt``) exists: it
is written last and, when the export is retired, deleted first. A
timestamp directory without it is not an export, and is removed as debris of
a crash when the exporter starts.

TensorFlow is imported lazily: for a ``scheme://`` path, and to read the
global step of an export that has no metadata.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_best_export import fs
from mlflow_best_export.ranking import Comparison

logger = logging.getLogger(__name__)

METADATA_FILENAME = "mlflow_best_export.json"
#: Where the metadata is inside an export directory.
METADATA_PATH = f"assets.extra/{METADATA_FILENAME}"
METADATA_FORMAT = 1
LOCK_FILENAME = ".mlflow_best_export.lock"
_TEMP_PREFIX = "temp-"
#: The files that make a directory a SavedModel; written last, deleted first.
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


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
    comparison: Comparison | None,
    recovered: bool = False,
) -> dict[str, Any]:
    """The metadata stored in ``assets.extra/mlflow_best_export.json``.

    ``comparison`` (None for a custom compare function) is recorded as
    ``compare_key``, ``compare_mode`` and ``min_delta``, from which
    ``Comparison.from_metadata`` rebuilds it.
    """
    from mlflow_best_export._version import __version__

    compared = comparison.to_metadata() if comparison else {"compare_key": None}

    return {
        "format": METADATA_FORMAT,
        "exporter_name": exporter_name,
        "global_step": int(step),
        "eval_result": {k: _json_number(v) for k, v in sorted(metrics.items())},
        "checkpoint_path": checkpoint_path,
        **compared,
        "recovered_after_crash": recovered,
        "export_time": time.time(),
        "host": socket.gethostname(),
        "package_version": __version__,
    }


def write_metadata_file(metadata: Mapping[str, Any], directory: str) -> str:
    """Write metadata as JSON into ``directory`` (a local staging directory); return its path."""
    path = os.path.join(directory, METADATA_FILENAME)
    text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    fs.write_bytes(path, text.encode("utf-8"))
    return path


def read_metadata(export_dir: str) -> dict[str, Any] | None:
    """The parsed metadata of an export, or None when it has none (or it is unreadable)."""
    path = fs.join(export_dir, "assets.extra", METADATA_FILENAME)
    try:
        metadata = json.loads(fs.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("Ignoring unreadable export metadata %s: %s", path, err)
        return None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("eval_result"), dict):
        logger.warning("Ignoring export metadata %s: not in the expected format", path)
        return None
    return metadata


def export_from_metadata(path: str, version: int, metadata: dict[str, Any]) -> Export:
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

    Only 10-digit timestamp directories holding a ``saved_model.pb`` (or
    ``.pbtxt``) count (what TensorFlow Serving loads); ``temp-*`` directories
    of unfinished exports, debris of a crash and other files are ignored.
    Exports without metadata have ``step`` and ``metrics`` of None.
    """
    exports = []
    for name in fs.listdir(export_base):
        path = fs.join(export_base, name)
        if not is_export_dir_name(name) or not is_saved_model(path):
            continue
        metadata = read_metadata(path)
        if metadata is None:
            exports.append(Export(path=path, version=int(name)))
        else:
            exports.append(export_from_metadata(path, int(name), metadata))
    return exports


def is_saved_model(path: str) -> bool:
    """True if ``path`` is a directory holding ``saved_model.pb`` or ``saved_model.pbtxt``."""
    return any(fs.exists(fs.join(path, name)) for name in SAVED_MODEL_FILES)


def read_export_step(export_dir: str) -> int | None:
    """The ``global_step`` saved in an export's variables, or None if it has none."""
    prefix = fs.join(export_dir, "variables", "variables")
    if not fs.exists(prefix + ".index"):
        return None
    import tensorflow as tf

    try:
        # The reader of the prefix itself: load_variable first asks whether the prefix is
        # a directory, which ram:// answers yes for any prefix of a file's name.
        return int(tf.compat.v1.train.NewCheckpointReader(prefix).get_tensor("global_step"))
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


def resolve_exports(
    exports: Iterable[Export], history: Any, steps: dict[str, int | None] | None = None
) -> list[Export]:
    """The exports whose step and metrics are known, completed from the history.

    Exports without metadata (made by the original class) get the eval that the
    history holds for the ``global_step`` in their variables; those that cannot
    be placed are left out (and so are never deleted).

    Args:
      exports: the exports, e.g. from :func:`list_exports`.
      history: an ``EvalHistory`` (anything with ``get(step)``).
      steps: a cache of ``{export path: global step}`` kept between calls.
    """
    steps = {} if steps is None else steps
    resolved = []
    for export in exports:
        if not export.ranked:
            if export.path not in steps:
                steps[export.path] = read_export_step(export.path)
            step = steps[export.path]
            record = history.get(step) if step is not None else None
            if record is not None:
                export = with_history(export, record.metrics, step)
        if export.ranked:
            resolved.append(export)
    return resolved


def compare_fn_of(exports: Iterable[Export]) -> Comparison | None:
    """The comparison recorded in the newest export's metadata, or None.

    Exports record it when the exporter used a ``Comparison`` (``loss_smaller``,
    ``metric_smaller``, ``metric_bigger``).
    """
    for export in sorted(exports, key=lambda e: e.version, reverse=True):
        comparison = Comparison.from_metadata(export.metadata)
        if comparison is not None:
            return comparison
    return None


def remove_stale_temps(export_base: str) -> list[str]:
    """Delete what a crashed export or deletion left behind; return the paths removed.

    That is ``temp-*`` directories (an export being written, or a local export
    being deleted) and timestamp directories with our metadata but without a
    ``saved_model.pb`` (a remote export being copied or deleted); a directory
    of anyone else's is left alone. Only call this while holding
    the export directory's lock: an export in progress writes to such a
    directory.
    """
    removed = []
    for name in fs.listdir(export_base):
        path = fs.join(export_base, name)
        if name.startswith(_TEMP_PREFIX):
            debris = fs.isdir(path)
        else:
            # Ours (it has our metadata), yet not a SavedModel: half copied or half deleted.
            debris = (
                is_export_dir_name(name)
                and fs.exists(fs.join(path, METADATA_PATH))
                and not is_saved_model(path)
            )
        if debris:
            fs.rmtree(path)
            logger.info("Removed the unfinished export %s", path)
            removed.append(path)
    return removed


def delete_exports(exports: Iterable[Export]) -> list[Export]:
    """Delete export directories; return the ones that are gone.

    A crash in the middle never leaves a half-deleted export that looks
    servable: a local export is first renamed to a ``temp-`` name; elsewhere
    its ``saved_model.pb`` goes first. Either kind of debris is cleaned up
    when the exporter next starts (:func:`remove_stale_temps`).
    """
    deleted = []
    for export in exports:
        try:
            if fs.has_atomic_rename(export.path):
                base, name = fs.split(export.path)
                doomed = fs.join(base, f"{_TEMP_PREFIX}delete-{name}")
                try:
                    fs.rename(export.path, doomed)
                except FileNotFoundError:
                    deleted.append(export)
                    continue
            else:
                doomed = export.path
                _retire_in_place(doomed)
            fs.rmtree(doomed)
        except OSError as err:
            logger.warning("Could not delete the export %s: %s", export.path, err)
            continue
        logger.info("Deleted the export %s (no longer among the best)", export.path)
        deleted.append(export)
    return deleted


def _retire_in_place(export_dir: str) -> None:
    """Delete a remote export so that every crash leaves recognisable debris: the SavedModel
    file first (no longer servable nor listed), our metadata last (the debris stays ours)."""
    for name in SAVED_MODEL_FILES:
        fs.remove(fs.join(export_dir, name))
    for relative in fs.walk_files(export_dir):
        if relative != METADATA_PATH:
            fs.remove(fs.join(export_dir, relative))
    fs.remove(fs.join(export_dir, METADATA_PATH))


def stage_export(local_dir: str, export_base: str, name: str) -> str:
    """Put an export written locally into ``export_base``; return its path there.

    Locally it is copied to a ``temp-*`` directory and renamed, as TensorFlow
    does when it exports. Elsewhere the files
    are copied with ``saved_model.pb`` last, so the export is complete (and
    listed) only once all of it is there.
    """
    destination = fs.join(export_base, name)
    if fs.has_atomic_rename(export_base):
        # A copy is not atomic: it goes to a temp-* directory (debris if killed).
        temp = fs.join(export_base, f"{_TEMP_PREFIX}{name}")
        fs.upload_tree(local_dir, temp)
        fs.rename(temp, destination)
        return destination
    fs.upload_tree(local_dir, destination, first=(METADATA_PATH,), last=SAVED_MODEL_FILES)
    return destination
