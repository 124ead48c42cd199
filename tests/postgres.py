"""A throwaway PostgreSQL server for the sweep tests: the system's initdb and pg_ctl on a temporary data folder,
trust authentication, listening on a free local port; stopped at the end, also when a test fails. Skipped, with
the reason, where the binaries or the driver (requirements-scale.txt) are absent."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """postgresql://postgres@127.0.0.1:PORT/optuna on a fresh server (initdb refuses root: run as `postgres`)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not on PATH")
    psycopg = pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install -r requirements-scale.txt")
    folder = Path(tempfile.mkdtemp(prefix="postgres-"))
    as_server = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_server = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_server, *command], check=True, capture_output=True, text=True)

    try:
        run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "start", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as connection:
                connection.execute("CREATE DATABASE optuna")
            yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
        finally:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
