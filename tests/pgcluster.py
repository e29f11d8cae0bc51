"""A throwaway PostgreSQL cluster for tests: initdb into a temporary folder, a free port on 127.0.0.1.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user (created when
missing). Used by the ``postgres_url`` fixture outside CI (CI starts one in ``.ci/run``) and by the
tests that stop and restart a database of their own.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PgCluster", "create_database", "drop_database", "free_port", "postgres_bin"]


def postgres_bin(name: str) -> str:
    """The path of a PostgreSQL program (``initdb``, ``pg_ctl``), version 15 preferred."""
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: (not f.endswith("/15/bin"), f))
    for folder in folders:
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install PostgreSQL (apt-get install postgresql)")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """A PostgreSQL cluster of its own: ``start()``, ``stop()`` (a stopped database refuses connections),
    ``start()`` again on the same port and data, ``destroy()`` at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wr124-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            shutil.chown(self.root, "postgres")
        self._run(postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")

    @property
    def url(self) -> str:
        """The URL of the cluster's ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> Self:
        """Start (or start again) the server and wait until it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c full_page_writes=off -c max_connections=200")
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")
        return self

    def stop(self) -> None:
        """Stop the server now: clients' connections are cut (``fast`` mode; the data stays)."""
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs and remove its files."""
        subprocess.run([*(["runuser", "-u", "postgres", "--"] if self._as_root else []), postgres_bin("pg_ctl"),
                        "-D", str(self.data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()


def create_database(server_url: str, prefix: str = "t", options: str = "") -> str:
    """Create an empty database on the server of ``server_url`` (with ``CREATE DATABASE`` ``options``, such as a
    collation); return its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" {options}'.encode())
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(server_url: str, db_url: str) -> None:
    """Drop the database ``db_url`` names, cutting its connections."""
    import psycopg

    name = db_url.rpartition("/")[2]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
