"""A real, private PostgreSQL server for tests: initdb into a temp dir, pg_ctl on a free port.

Debian's ``postgresql`` package puts the binaries in ``/usr/lib/postgresql/<major>/bin``
(not on PATH). ``initdb`` refuses to run as root, so as root the cluster is created and
run by the ``postgres`` system user (which the package creates), in a directory it owns.
Connections use ``trust`` authentication on 127.0.0.1 only; the Unix socket lives in the
temp dir, so nothing touches the system cluster or ``/var/run/postgresql``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from mlflow_checks import free_port

SUPERUSER = "postgres"


def find_bindir() -> str | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with initdb and pg_ctl, or PATH's."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    candidates.sort(key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if candidates:
        return os.path.dirname(candidates[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _run_as() -> str | None:
    """The user to run PostgreSQL as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError as err:
        raise RuntimeError(
            "Running as root, and there is no 'postgres' user to run PostgreSQL as "
            "(apt-get install postgresql creates it)."
        ) from err
    return SUPERUSER


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1; ``uri(db)`` is a SQLAlchemy URL."""

    bindir: str
    root: str = ""
    port: int = 0
    user: str | None = field(default=None, init=False)
    started: bool = field(default=False, init=False)

    def __post_init__(self):
        self.user = _run_as()
        self.root = self.root or tempfile.mkdtemp(prefix="mlflow-best-export-pg-")
        self.port = self.port or free_port()
        if self.user is not None:
            # tempfile dirs are 0700 root: hand this one to the user running the server.
            ids = pwd.getpwnam(self.user)
            os.chown(self.root, ids.pw_uid, ids.pw_gid)

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "postgres.log")

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = list(argv)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
                f"\n--- server log\n{self.tail()}"
            )
        return proc

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def start(self) -> PostgresServer:
        """initdb (first time only) and start; returns once it accepts connections."""
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._run(
                self._bin("initdb"),
                "-D",
                self.data,
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",  # a test cluster: durability across power loss is not needed
            )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self._bin("pg_ctl"),
            "-D",
            self.data,
            "-l",
            self.log,
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.started = True
        return self

    def create_database(self, name: str) -> str:
        """Create a database; return its SQLAlchemy URL."""
        self._run(
            self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name
        )
        return self.uri(name)

    def uri(self, database: str) -> str:
        """The SQLAlchemy URL of ``database``, naming the driver: SQLAlchemy 2.1 defaults
        ``postgresql://`` to psycopg 3, while the test extra installs psycopg2-binary."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        if self.started:
            try:
                self._run(self._bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
            finally:
                self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""
