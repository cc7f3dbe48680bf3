"""Local staging directories that outlive no process.

The exporter stages a SavedModel, an MLmodel directory or a downloaded export in
a local temporary directory. ``tempfile.TemporaryDirectory`` removes it when the
``with`` block ends, but a SIGKILL (preemption, OOM killer) ends no block, and
such directories used to pile up in ``$TMPDIR``. Each staging directory here is
named after its process (``mlflow_best_export-<pid>-<random>``), and every process
removes those of processes that are gone once, when the exporter starts or at its
first staging, whichever comes first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator

from mlflow_best_export import fs

logger = logging.getLogger(__name__)

PREFIX = "mlflow_best_export-"
_swept = False


@contextlib.contextmanager
def staging_dir() -> Iterator[str]:
    """A new local directory, removed with its contents when the block ends (and by the
    next process to stage anything, if this one is killed first)."""
    sweep_once()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    try:
        yield path
    finally:
        fs.rmtree(path)


def sweep_once() -> None:
    """:func:`remove_leftovers`, the first time a process calls it."""
    global _swept
    if not _swept:
        _swept = True
        remove_leftovers()


def remove_leftovers(directory: str | None = None) -> list[str]:
    """Remove the staging directories of processes that are gone; the paths removed.

    Args:
      directory: where to look (default: the temporary directory ``tempfile`` uses).
    """
    directory = directory or tempfile.gettempdir()
    removed = []
    for path in fs.glob(fs.join(fs.glob_escape(directory), PREFIX + "*")):
        pid = fs.split(path)[1][len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and fs.isdir(path):
            fs.rmtree(path)
            removed.append(path)
    if removed:
        logger.info("Removed %d staging directories of killed processes.", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
