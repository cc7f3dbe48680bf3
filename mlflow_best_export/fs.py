"""The one filesystem layer: every model-directory path goes through here.

A model directory is as often ``gs://``, ``s3://`` or ``hdfs://`` as local.
Local paths use the standard library (fast, and no TensorFlow import); any
``scheme://`` path uses ``tf.io.gfile``, which is what the Estimator itself
writes with, imported only when such a path is met. A scheme that no
filesystem is registered for raises :class:`UnsupportedFilesystemError` (a
``ValueError``) naming the scheme and what to install, instead of reading as
an empty directory.

What the filesystems do not share, and how this module evens it out:

- Object stores (S3, GCS) have no directories and no atomic rename, and
  TensorFlow's ``ram://`` renames a directory without its contents. Only local
  paths are renamed as directories (:func:`has_atomic_rename`); elsewhere a
  directory is committed by the file written last and retired by deleting
  that file first (see ``exports``).
- There are no inodes: :class:`FileStatus` has an ``identity`` only for local files.
- ``flock`` exists only locally: :class:`LocalLock` is the kernel's lock, and
  ``locks.ExportDirLock`` builds a lease on :func:`write_bytes` elsewhere.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fnmatch
import glob as glob_lib
import io
import logging
import os
import posixpath
import shutil
import stat as stat_lib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow_best_export import remote

logger = logging.getLogger(__name__)


_checked_schemes: set[str] = set()
_used_schemes: set[str] = set()
_counter_lock = threading.Lock()
_bytes_read = 0


def scheme_of(path: str) -> str | None:
    """The URL scheme of a path (``"s3"`` for ``s3://b/k``), or None for a local path."""
    head, sep, _ = path.partition("://")
    if not sep or not head or "/" in head:
        return None
    return None if head == "file" else head


def is_url(path: str) -> bool:
    """True for ``scheme://`` paths, which go through ``tf.io.gfile``."""
    return scheme_of(path) is not None


def _local(path: str) -> str:
    # file:// is a local path for the standard library.
    return path[len("file://") :] if path.startswith("file://") else path


def check_filesystem(path: str) -> None:
    """Make sure a filesystem is registered for the scheme of ``path``.

    For schemes that tensorflow-io provides (``s3://``), it is imported when
    installed. Local paths need nothing. The answer is cached per scheme.

    Raises:
      UnsupportedFilesystemError: if no filesystem handles the scheme; the
        message names the scheme and what to install.
    """
    scheme = scheme_of(path)
    if scheme is None or scheme in _checked_schemes:
        return
    remote.check_scheme(path, scheme)
    _checked_schemes.add(scheme)


def _note_use(path: str) -> None:
    scheme = scheme_of(path)
    if scheme is not None and scheme not in _used_schemes:
        check_filesystem(path)
        _used_schemes.add(scheme)


def _count(n: int) -> None:
    global _bytes_read
    with _counter_lock:
        _bytes_read += n


def bytes_read() -> int:
    """Bytes this process read from files through this module (for benchmarks and tests)."""
    return _bytes_read


# -- paths ---------------------------------------------------------------------------------


def join(base: str, *parts: str) -> str:
    """Join path parts; URLs always with ``/``."""
    if is_url(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def absolute(path: str) -> str:
    """A local path made absolute (metadata and MLflow tags outlive the working
    directory); a URL such as ``gs://...`` is kept as it is."""
    return path if "://" in path else os.path.abspath(path)


def split(path: str) -> tuple[str, str]:
    """``(directory, name)`` of a path, for URLs too."""
    return posixpath.split(path) if is_url(path) else os.path.split(path)


def glob_escape(path: str) -> str:
    """``path`` with glob metacharacters escaped (for the fixed part of a pattern)."""
    return glob_lib.escape(path)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStatus:
    """What a file's status tells, on any filesystem.

    Attributes:
      size: bytes.
      is_dir: True for a directory.
      identity: ``(st_dev, st_ino)`` for local files; None where files have no
        identity beyond their name (object stores).
    """

    size: int
    is_dir: bool
    identity: tuple[int, int] | None


def stat(path: str) -> FileStatus | None:
    """The status of ``path``, or None if it does not exist."""
    if is_url(path):
        _note_use(path)
        found = remote.stat(path)
        return None if found is None else FileStatus(found[0], found[1], None)
    try:
        status = os.stat(_local(path))
    except FileNotFoundError:
        return None
    return FileStatus(
        status.st_size, stat_lib.S_ISDIR(status.st_mode), (status.st_dev, status.st_ino)
    )


def exists(path: str) -> bool:
    """True if ``path`` exists."""
    if is_url(path):
        _note_use(path)
        with remote.as_os_errors(path):
            return bool(remote.tf_gfile().exists(path))
    return os.path.exists(_local(path))


def isdir(path: str) -> bool:
    """True if ``path`` is a directory (on object stores: a prefix with objects under it)."""
    if is_url(path):
        _note_use(path)
        with remote.as_os_errors(path):
            return bool(remote.tf_gfile().isdir(path))
    return os.path.isdir(_local(path))


def listdir(path: str) -> list[str]:
    """The names in a directory, sorted; empty if it does not exist.

    Raises:
      NotADirectoryError: if ``path`` is a file (local paths).
    """
    if is_url(path):
        _note_use(path)
        return remote.listdir(path)
    try:
        return sorted(os.listdir(_local(path)))
    except FileNotFoundError:
        return []


def glob(pattern: str) -> list[str]:
    """The paths matching a glob pattern, sorted."""
    if is_url(pattern):
        _note_use(pattern)
        try:
            with remote.as_os_errors(pattern):
                return sorted(remote.tf_gfile().glob(pattern))
        except FileNotFoundError:
            return []
    return sorted(glob_lib.glob(_local(pattern)))


def matches(name: str, pattern: str) -> bool:
    """True if a file name matches a glob pattern (``fnmatch``)."""
    return fnmatch.fnmatchcase(name, pattern)


class ReadFile(io.RawIOBase):
    """A file open for reading, local or remote, with its size when opened.

    Attributes:
      size: the file's size when it was opened.
    """

    def __init__(self, raw: io.RawIOBase, size: int, local: bool):
        super().__init__()
        self._raw = raw
        self.size = size
        self._local = local

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        if count:
            _count(count)
        return count or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_read(path: str) -> ReadFile:
    """Open a file for random-access reading.

    Raises:
      FileNotFoundError: if it does not exist.
      OSError: if it cannot be read.
    """
    if is_url(path):
        _note_use(path)
        with remote.as_os_errors(path):
            status = stat(path)
        if status is None:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        if status.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        return ReadFile(remote.RangeReader(path, status.size), status.size, local=False)
    raw = open(_local(path), "rb", buffering=0)  # noqa: SIM115 - closed by ReadFile
    return ReadFile(raw, os.fstat(raw.fileno()).st_size, local=True)


def read_range(path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of a file from ``offset`` (fewer at its end)."""
    with open_read(path) as file:
        file.seek(offset)
        return file.read(size) or b""


def read_bytes(path: str) -> bytes:
    """The whole content of a file.

    Raises:
      FileNotFoundError: if it does not exist.
    """
    if is_url(path):
        _note_use(path)
        with remote.as_os_errors(path), remote.tf_gfile().GFile(path, "rb") as file:
            data = file.read()
        _count(len(data))
        return data
    with open(_local(path), "rb") as file:
        data = file.read()
    _count(len(data))
    return data


# -- writing -------------------------------------------------------------------------------


def makedirs(path: str) -> None:
    """Create a directory and its parents (nothing to do on object stores' prefixes)."""
    if is_url(path):
        _note_use(path)
        with remote.as_os_errors(path):
            remote.tf_gfile().makedirs(path)
        return
    os.makedirs(_local(path), exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file (replacing it). On object stores the write is one PUT."""
    if is_url(path):
        _note_use(path)
        remote.write_bytes(path, data)
        return
    with open(_local(path), "wb") as file:
        file.write(data)


def remove(path: str) -> bool:
    """Delete a file; True if it existed."""
    if is_url(path):
        _note_use(path)
        return remote.remove(path)
    try:
        os.remove(_local(path))
    except FileNotFoundError:
        return False
    return True


def rmtree(path: str) -> None:
    """Delete a directory and everything under it; nothing if it does not exist."""
    if is_url(path):
        _note_use(path)
        with contextlib.suppress(FileNotFoundError), remote.as_os_errors(path):
            remote.tf_gfile().rmtree(path)
        return
    shutil.rmtree(_local(path), ignore_errors=True)


def has_atomic_rename(path: str) -> bool:
    """True where a directory can be renamed atomically with its contents (local paths).

    Object stores rename object by object, and TensorFlow 2.15's ``ram://``
    renames a directory without its children, so neither is used that way.
    """
    return not is_url(path)


def rename(source: str, destination: str) -> None:
    """Rename a local file or directory (see :func:`has_atomic_rename`).

    Raises:
      FileNotFoundError: if ``source`` does not exist.
      ValueError: for URLs, which are never renamed as directories here.
    """
    if is_url(source) or is_url(destination):
        raise ValueError(f"Refusing a non-atomic rename of {source!r} to {destination!r}.")
    os.rename(_local(source), _local(destination))


def walk_files(path: str) -> Iterator[str]:
    """The files under a directory, as paths relative to it with ``/``, sorted."""
    if is_url(path):
        _note_use(path)
        yield from remote.walk_files(path)
        return
    found = []
    base = _local(path)
    for root, _, names in os.walk(base):
        relative = os.path.relpath(root, base)
        for name in names:
            rel = name if relative == "." else os.path.join(relative, name)
            found.append(rel.replace(os.sep, "/"))
    yield from sorted(found)


def copy_tree_to_local(source: str, destination: str) -> None:
    """Copy a directory tree from any filesystem to a new local directory.

    Raises:
      ValueError: if ``source`` is not a directory.
    """
    if not is_url(source):
        shutil.copytree(_local(source), destination)
        return
    if not isdir(source):
        raise ValueError(f"{source!r} is not a directory.")
    remote.download(source, list(walk_files(source)), destination)


def upload_tree(
    source: str, destination: str, *, first: tuple[str, ...] = (), last: tuple[str, ...] = ()
) -> None:
    """Copy a local directory tree to ``destination`` on any filesystem.

    Args:
      source: a local directory.
      destination: the directory to create (it must not exist yet).
      first: relative paths copied before every other file, in this order.
      last: relative paths copied after every other file, in this order: the
        file that marks the tree complete (``saved_model.pb``) goes last.
    """
    files = list(walk_files(source))
    middle = [f for f in files if f not in first and f not in last]
    ordered = [f for f in first if f in files] + middle + [f for f in last if f in files]
    if not is_url(destination):
        shutil.copytree(source, _local(destination))
        return
    _note_use(destination)
    remote.upload(source, ordered, destination)


# -- locks and exit -----------------------------------------------------------------------


class LocalLock:
    """An exclusive ``flock`` on a local file; the kernel drops it when the holder dies.

    Args:
      path: the lock file (created if missing).
    """

    def __init__(self, path: str):
        self.path = _local(path)
        self._fd: int | None = None

    def acquire(self, owner: str) -> str | None:
        """Take the lock and record ``owner`` in the file.

        Returns:
          None when taken; else the owner recorded by the process holding it.
        """
        import fcntl

        if self._fd is not None:
            return None
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        """Release the lock (the file stays; it is harmless)."""
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def used_schemes() -> frozenset[str]:
    """The URL schemes this process has used through this module."""
    return frozenset(_used_schemes)


def aborts_at_exit() -> bool:
    """True once this process used tensorflow-io's S3 filesystem (see :func:`exit_process`)."""
    return "s3" in _used_schemes


def exit_process(code: int = 0) -> None:
    """End the process now: run the ``atexit`` handlers, flush, then ``os._exit(code)``.

    tensorflow-io 0.35-0.37's S3 filesystem aborts the interpreter at exit
    ("pure virtual method called", exit status 134) once it has been used,
    while C++ static objects are destroyed, after every Python ``atexit``
    handler has run (tensorflow/io#1912). Nothing is lost then, but the exit
    status says failure. Ending a training script with ``exit_process()``
    runs the same handlers (this package's final MLflow flush among them) and
    skips only that C++ teardown.
    """
    try:
        atexit._run_exitfuncs()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
