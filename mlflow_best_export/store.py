"""The embedded SQLite store: created whole or not at all, and a broken one explained.

MLflow creates a missing ``sqlite:///`` store the first time a client uses it,
running its schema migrations in place, and SQLite runs schema changes outside
a transaction. A process killed in those seconds leaves a half-migrated file
that no later process can open ("duplicate column name ..."). So this package
creates a missing store under a temporary name in the same directory, lets
MLflow migrate it there, and links it to its real name only when it is
complete: a kill at any moment leaves either no store or a whole one. A
leftover temporary file of a killed process is removed by the next creation.

A store that exists but cannot be opened is described by :func:`diagnose`:
its path, what it holds and the exact fix. This package never deletes a store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from urllib.parse import unquote

from mlflow_best_export import fs

logger = logging.getLogger(__name__)

_SCHEME = "sqlite:///"
_CREATING = ".creating-"


def resolve_uri(uri: str | None) -> str:
    """``uri``, or MLflow's own choice without it (``MLFLOW_TRACKING_URI``, else the
    embedded ``sqlite:///mlflow.db`` in the working directory)."""
    if uri:
        return uri
    import mlflow

    return mlflow.get_tracking_uri()


def sqlite_path(uri: str | None) -> str | None:
    """The file of a ``sqlite:///`` URI (absolute), or None for any other store."""
    if not uri or not uri.startswith(_SCHEME):
        return None
    path = unquote(uri[len(_SCHEME) :].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return os.path.abspath(path)


def ensure(uri: str | None) -> None:
    """Create the SQLite store at ``uri`` if it is missing (or an empty file), whole.

    Any other kind of store, or one that exists, is left to MLflow.

    Raises:
      OSError: the directory cannot be written.
      MlflowException: MLflow cannot create a store there.
    """
    path = sqlite_path(uri)
    if path is None or _holds_data(path):
        return
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    _remove_leftovers(directory, name)
    temporary = os.path.join(directory, f".{name}{_CREATING}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        from mlflow.tracking import MlflowClient

        logger.info("Creating the MLflow store %s.", path)
        client = MlflowClient(tracking_uri=_SCHEME + temporary, registry_uri=_SCHEME + temporary)
        client.search_experiments(max_results=1)  # creates and migrates the tracking tables
        client.search_registered_models(max_results=1)  # and checks the registry's
        try:
            os.link(temporary, path)  # never over a store another process made meanwhile
        except OSError:
            # It exists (another process made it: kept, unless it is an empty file, which
            # holds nothing), or this filesystem has no hard links: rename instead.
            if not _holds_data(path):
                os.replace(temporary, path)
    finally:
        _remove(temporary)


def _holds_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return False


def _remove(temporary: str) -> None:
    for leftover in (temporary, temporary + "-journal", temporary + "-wal", temporary + "-shm"):
        fs.remove(leftover)


def _remove_leftovers(directory: str, name: str) -> None:
    """Remove the temporary stores of creations whose process is gone (killed)."""
    pattern = fs.join(fs.glob_escape(directory), f".{fs.glob_escape(name)}{_CREATING}*")
    for leftover in fs.glob(pattern):
        if leftover.endswith(("-journal", "-wal", "-shm")):
            continue
        pid = leftover.rsplit(_CREATING, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            logger.info("Removing %s, left by an interrupted store creation.", leftover)
            _remove(leftover)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# What MLflow (through SQLAlchemy) says of a store whose schema is not what it expects.
_SCHEMA_ERRORS = (
    "duplicate column",
    "no such table",
    "no such column",
    "already exists",
    "out-of-date database schema",
    "file is not a database",
    "malformed",
)


def diagnose(uri: str | None, error: BaseException) -> str | None:
    """Why the SQLite store at ``uri`` cannot be opened, and the fix; None when ``error``
    is no schema error of an existing SQLite file (a lock, say: then it passes)."""
    path = sqlite_path(uri)
    text = str(error).lower()
    if path is None or not _holds_data(path) or not any(e in text for e in _SCHEMA_ERRORS):
        return None
    counts = _counts(path)
    if counts is None:
        return (
            f"The MLflow store {path} is not a readable SQLite database. Move it away (or "
            f"restore it from a backup); a new one is created on the next start."
        )
    runs, models = counts
    if runs == 0 and models == 0:
        return (
            f"The MLflow store {path} holds no runs and no registered models and cannot be "
            f"opened: its creation was interrupted (a half-migrated schema). Delete it "
            f"(rm {path}); the next start or `mlflow-best-export sync` creates it whole and "
            f"mirrors everything again from the model directory."
        )
    return (
        f"The MLflow store {path} ({runs} runs, {models} registered models) cannot be opened. "
        f"Back it up, then run `mlflow db upgrade {_SCHEME}{path}`; this package never deletes "
        f"a store that holds runs."
    )


def _counts(path: str) -> tuple[int, int] | None:
    """(runs, registered models) in a SQLite store, read with the standard library (a
    half-created store may lack either table); None if it is not a SQLite database."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            return tuple(  # type: ignore[return-value]
                db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if table in tables else 0
                for table in ("runs", "registered_models")
            )
    except sqlite3.DatabaseError:
        return None
