"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary data directory, a free
loopback port, trust authentication, fsync off; stopped and deleted at the end.

initdb and postgres refuse to run as root, and CI runs as root: there they run as the `postgres`
system user (Debian's package creates it), in a directory that user owns. Missing binaries are a
failure with the command that installs them, never a skip: the study-sharing test must run in CI.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

INSTALL = "apt-get install -y postgresql"


def server_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    for initdb in reversed(found):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    """Yields a SQLAlchemy URL of an empty database `study` on a fresh server."""
    bindir = server_bin()
    if bindir is None:
        raise RuntimeError(f"the PostgreSQL server binaries (initdb, pg_ctl) are not installed: {INSTALL}")
    root = Path(tempfile.mkdtemp(prefix="rnn-pg-", dir="/tmp"))  # short: the socket path has a length limit
    data, sock, log = root / "data", root / "sock", root / "server.log"
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o755)
        for d in (data, sock):
            d.mkdir()
            shutil.chown(d, "postgres", "postgres")
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {tail}\n{server_log}")

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "rnn", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        try:
            import psycopg2

            conn = psycopg2.connect(host="127.0.0.1", port=port, user="rnn", dbname="postgres")
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE study")
            conn.close()
            yield f"postgresql://rnn@127.0.0.1:{port}/study"  # the form docs/tune.md gives: no driver named
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
