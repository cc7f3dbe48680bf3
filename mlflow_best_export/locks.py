"""One writer per export directory: ``ExportDirLock``.

Two exporters writing the same ``export/<name>`` directory would each delete
the other's exports. The lock is taken when an exporter binds to a directory
and held for the life of the process (or until ``close()``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from mlflow_best_export import fs
from mlflow_best_export.exports import LOCK_FILENAME

logger = logging.getLogger(__name__)


class ExportDirLockedError(RuntimeError):
    """Another exporter (another process, or another in this one) is exporting to the
    same export directory."""


#: Seconds a remote lock stays valid without renewal (the holder renews it every third).
LEASE_SECONDS = float(os.environ.get("MLFLOW_BEST_EXPORT_LOCK_LEASE", "120"))
# Time for a racing writer's lock object to become visible before ours is read back.
_SETTLE_SECONDS = 0.5


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "token": secrets.token_hex(8),
    }


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _describe_owner(owner: Mapping[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {started}"


class ExportDirLock:
    """An exclusive, process-lifetime lock on an export directory.

    Two exporters writing the same ``export/<name>`` directory would each
    delete the other's exports. Locally the lock is an ``flock`` on a file in
    the directory, which the kernel releases when the holder dies, even by
    SIGKILL. Elsewhere (object stores, HDFS, ``ram://``) it is a lease: a lock
    file holding the owner (host, pid, start time, a random token) and when
    the lease was last renewed. A daemon thread renews it every third of
    ``lease_seconds``. A second exporter waits: a renewal proves the holder
    alive (refused, naming it); a lease that runs out, or a holder on the same
    host whose process is gone, is taken over. Two exporters starting within the same
    fraction of a second on a store without conditional writes can still both
    believe they hold it; each reads its lock back after a pause, which
    catches all but a very narrow race.

    Args:
      export_base: the export directory.
      lease_seconds: how long a remote lock stays valid without renewal.
    """

    def __init__(self, export_base: str, lease_seconds: float | None = None):
        self.path = fs.join(export_base, LOCK_FILENAME)
        self._export_base = export_base
        self._lease = LEASE_SECONDS if lease_seconds is None else float(lease_seconds)
        self._local: fs.LocalLock | None = None
        self._owner: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost: str | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
          ExportDirLockedError: if another live process holds it; the message
            names the holder.
        """
        if self._local is not None or self._owner is not None:
            return
        owner = _owner()
        if fs.has_atomic_rename(self.path):
            lock = fs.LocalLock(self.path)
            holder = lock.acquire(_describe_owner(owner))
            if holder is not None:
                self._refuse(holder)
            self._local = lock
            return
        fs.makedirs(self._export_base)
        current = self._read()
        if current is not None:
            self._wait_for_lease(current)
        self._write(owner)
        time.sleep(_SETTLE_SECONDS)
        current = self._read()
        if current is None or current.get("token") != owner["token"]:
            self._refuse(_describe_owner(current or {}))
        self._owner = owner
        self._stop.clear()
        self._renewer = threading.Thread(
            target=self._renew, name="mlflow-best-export-lock", daemon=True
        )
        self._renewer.start()

    def _wait_for_lease(self, current: dict[str, Any]) -> None:
        """Return once the lock in ``current`` may be taken over; refuse if its holder lives.

        A lease renewed within its term may belong to a live exporter or to one
        that just died (a preempted job restarted at once). A holder on this
        host whose process is gone is known dead. Otherwise this waits, at most
        until the lease runs out: a renewal proves the holder alive.
        """
        lease = float(current.get("lease", self._lease))
        expires = float(current.get("renewed", 0)) + lease
        holder = _describe_owner(current)
        # The more telling reason first: a process known gone, whatever its lease says.
        if current.get("host") == socket.gethostname() and not _process_alive(current.get("pid")):
            logger.warning(
                "Taking over the lock on %s from %s: that process is gone.",
                self._export_base,
                holder,
            )
            return
        if time.time() >= expires:
            logger.warning(
                "Taking over the lock on %s from %s: its lease ran out.", self._export_base, holder
            )
            return
        logger.warning(
            "The export directory %s is locked by %s; waiting up to %.0f s for its lease to be "
            "renewed (a live exporter) or to run out (a stopped one).",
            self._export_base,
            holder,
            expires - time.time(),
        )
        while time.time() < expires:
            time.sleep(min(1.0, lease / 10))
            now = self._read()
            if now is None:
                return  # released meanwhile
            if now.get("token") != current.get("token") or now.get("renewed") != current.get(
                "renewed"
            ):
                self._refuse(_describe_owner(now))
        logger.warning(
            "Taking over the lock on %s from %s: it was not renewed within its lease (%.0f s).",
            self._export_base,
            holder,
            lease,
        )

    def check(self) -> None:
        """Raise if a remote lease was lost (taken over, or not renewable).

        Raises:
          ExportDirLockedError: naming what happened.
        """
        if self._lost is not None:
            raise ExportDirLockedError(self._lost)

    def release(self) -> None:
        """Release the lock; a remote lock file is deleted if it is still ours."""
        if self._local is not None:
            self._local.release()
            self._local = None
        if self._owner is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        try:
            current = self._read()
            if current is not None and current.get("token") == self._owner["token"]:
                fs.remove(self.path)
        except OSError as err:
            logger.warning("Could not remove the lock %s: %s", self.path, err)
        self._owner = None

    def _refuse(self, holder: str) -> None:
        if holder.startswith(f"pid {os.getpid()} on {socket.gethostname()},"):
            raise ExportDirLockedError(
                f"Another exporter in this process ({holder}) is exporting to "
                f"{self._export_base}. Two exporters must not share an export directory: give "
                f"this one another `name`, or close() the other one first."
            ) from None
        raise ExportDirLockedError(
            f"Another process ({holder}) is exporting to {self._export_base}. Two exporters "
            f"must not share an export directory: give this one another `name`, or stop the "
            f"other process."
        ) from None

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(fs.read_bytes(self.path).decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # half-written or foreign: an expired lease
        return data if isinstance(data, dict) else {}

    def _write(self, owner: Mapping[str, Any]) -> None:
        record = dict(owner, renewed=time.time(), lease=self._lease)
        fs.write_bytes(self.path, json.dumps(record, sort_keys=True).encode("utf-8"))

    def _renew(self) -> None:
        while not self._stop.wait(self._lease / 3) and self._renew_once():
            pass

    def _renew_once(self) -> bool:
        """Renew the lease; False once it was found taken over (see :meth:`check`)."""
        owner = self._owner
        if owner is None:
            return False
        try:
            current = self._read()
            if current is not None and current.get("token") != owner["token"]:
                self._lost = (
                    f"The lock on {self._export_base} was taken over by "
                    f"{_describe_owner(current)}: this exporter did not renew it within "
                    f"the lease ({self._lease:.0f} s)."
                )
                logger.error(self._lost)
                return False
            self._write(owner)
        except OSError as err:
            logger.warning("Could not renew the lock %s: %s", self.path, err)
        return True
