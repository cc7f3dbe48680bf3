"""The ``scheme://`` side of ``fs``: TensorFlow's filesystems, through ``tf.io.gfile``.

TensorFlow is imported on first use. A scheme that no filesystem is registered
for raises :class:`UnsupportedFilesystemError` naming what to install; errors
become the ``OSError`` a local file would raise; :class:`RangeReader` reads
exactly the bytes asked for (one ranged request each), not ``GFile``'s 512 KiB.
Only ``fs`` uses this module.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
from collections.abc import Iterator

# What to install for schemes TensorFlow 2.15 does not register by itself.
_INSTALL_HINTS = {
    "s3": "tensorflow-io (pip install 'mlflow-best-export[s3]', i.e. tensorflow-io 0.36 for "
    "TensorFlow 2.15) and set S3_ENDPOINT/AWS credentials as tensorflow-io documents",
    "az": "tensorflow-io (pip install 'tensorflow-io==0.36.*')",
    "http": "tensorflow-io (pip install 'tensorflow-io==0.36.*')",
    "https": "tensorflow-io (pip install 'tensorflow-io==0.36.*')",
    "hdfs": "a Hadoop client: set HADOOP_HDFS_HOME and CLASSPATH as TensorFlow's HDFS "
    "guide describes",
    "viewfs": "a Hadoop client: set HADOOP_HDFS_HOME and CLASSPATH as TensorFlow's HDFS "
    "guide describes",
}
# Schemes whose filesystem tensorflow-io registers when it is imported.
_TFIO_SCHEMES = frozenset({"s3", "az", "http", "https", "hdfs", "viewfs", "har"})


class UnsupportedFilesystemError(ValueError):
    """No filesystem is registered for a path's scheme; the message says what to install."""


def tf_gfile():
    import tensorflow as tf

    return tf.io.gfile


def tf_errors():
    import tensorflow as tf

    return tf.errors


def check_scheme(path: str, scheme: str) -> None:
    """Raise :class:`UnsupportedFilesystemError` if no filesystem handles ``scheme``."""
    gfile = tf_gfile()
    errors = tf_errors()
    if scheme in _TFIO_SCHEMES:
        with contextlib.suppress(ImportError):
            import tensorflow_io  # noqa: F401 - registers its filesystems on import
    try:
        gfile.exists(path)
    except errors.UnimplementedError:
        hint = _INSTALL_HINTS.get(scheme, "a TensorFlow filesystem plugin for it")
        raise UnsupportedFilesystemError(
            f"No filesystem is registered for {scheme}:// paths such as {path!r}: install "
            f"{hint}. Without it TensorFlow can neither write nor read that model directory."
        ) from None
    except errors.OpError:
        pass  # the scheme is known; this path's trouble (permissions, say) shows on use


class RangeReader(io.RawIOBase):
    """Random access to a file on any ``tf.io.gfile`` filesystem, one ranged read per call.

    ``tf.io.gfile.GFile`` reads through a 512 KiB buffer, so a 16-byte read
    of an S3 object fetches half a megabyte. This reads exactly what is asked
    (a buffer the size of the request), so an incremental read of an event
    file fetches the appended bytes and nothing else.
    """

    def __init__(self, path: str, size: int):
        super().__init__()
        self._path = path
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = read_range(self._path, self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextlib.contextmanager
def as_os_errors(path: str) -> Iterator[None]:
    """TensorFlow's errors of a remote file as the ``OSError`` a local file would raise."""
    errors = tf_errors()
    try:
        yield
    except errors.NotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such file", path) from None
    except errors.PermissionDeniedError as err:
        raise PermissionError(errno.EACCES, err.message, path) from None
    except errors.OpError as err:
        raise OSError(errno.EIO, err.message, path) from None


def read_range(path: str, offset: int, size: int) -> bytes:
    with as_os_errors(path):
        try:
            # TensorFlow's own stream with a buffer of exactly the request: one ranged
            # read. tf.io.gfile.GFile has no public way to size its 512 KiB buffer.
            from tensorflow.python.lib.io import _pywrap_file_io

            stream = _pywrap_file_io.BufferedInputStream(path, max(size, 1))
            stream.seek(offset)
            data = stream.read(size)
        except ImportError:  # pragma: no cover - TensorFlow moved it: correct, buffered
            with tf_gfile().GFile(path, "rb") as file:
                file.seek(offset)
                data = file.read(size)
    return data


def walk_files(path: str) -> list[str]:
    """The files under a directory, as paths relative to it with ``/``, sorted."""
    found = []
    with as_os_errors(path):
        walked = list(tf_gfile().walk(path))
    for root, _, names in walked:
        relative = root[len(path) :].strip("/")
        found.extend(posixpath.join(relative, name) if relative else name for name in names)
    return sorted(found)


def download(source: str, files: list[str], destination: str) -> None:
    """Copy ``files`` (relative to ``source``) into the local directory ``destination``."""
    gfile = tf_gfile()
    os.makedirs(destination, exist_ok=True)
    for relative in files:
        target = os.path.join(destination, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with as_os_errors(source):
            gfile.copy(posixpath.join(source, relative), target, overwrite=True)


def upload(source: str, files: list[str], destination: str) -> None:
    """Copy ``files`` (relative to the local ``source``), in this order, to ``destination``."""
    gfile = tf_gfile()
    made: set[str] = set()
    for relative in files:
        target = posixpath.join(destination, relative)
        with as_os_errors(target):
            parent = posixpath.dirname(target)
            if parent not in made:
                gfile.makedirs(parent)
                made.add(parent)
            gfile.copy(os.path.join(source, *relative.split("/")), target)


def stat(path: str) -> tuple[int, bool] | None:
    """``(size, is a directory)`` of ``path``, or None if it does not exist."""
    try:
        with as_os_errors(path):
            status = tf_gfile().stat(path)
    except FileNotFoundError:
        return None
    return int(status.length), bool(status.is_directory)


def listdir(path: str) -> list[str]:
    """The names in a directory, sorted; empty if it does not exist."""
    try:
        with as_os_errors(path):
            names = tf_gfile().listdir(path)
    except FileNotFoundError:
        return []
    # Object stores list "directories" with a trailing slash.
    return sorted({name.rstrip("/") for name in names if name.rstrip("/")})


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file, replacing it (one PUT on object stores)."""
    with as_os_errors(path):
        if path.startswith("ram://"):
            # TensorFlow 2.15's ram:// opens an existing file for writing without
            # truncating it: the new bytes would follow the old ones.
            with contextlib.suppress(tf_errors().NotFoundError):
                tf_gfile().remove(path)
        with tf_gfile().GFile(path, "wb") as file:
            file.write(data)


def remove(path: str) -> bool:
    """Delete a file; True if it existed."""
    try:
        with as_os_errors(path):
            tf_gfile().remove(path)
    except FileNotFoundError:
        return False
    return True
