"""`make dev`: the Dagster UI (webserver and daemon) on the demo environment, in one command.

What it sets up, in order, before handing over to `dagster dev`:

* `ITRESUME_HOME` (default `./.itresume`) and settings from `./.env`, which Dagster would load
  anyway (and let win over the shell), so this launcher decides on the same values;
* the warehouse: `ITRESUME_DATABASE_URL`, else the embedded PostgreSQL under `$ITRESUME_HOME`,
  left running on exit so the next start takes a fraction of a second;
* Dagster's own storage: a `dagster` database on that server, as `DAGSTER_PG_URL` in the
  `postgresql+psycopg2://` form dagster-postgres needs (an existing `DAGSTER_PG_URL` wins);
* `DAGSTER_HOME=$ITRESUME_HOME/dagster`, holding a fresh copy of the shipped `dagster.yaml`;
* the API: `ITRESUME_API_URL` and its credentials if set, else the simulator in this process.

`dagster dev` then runs as a child in a process group of its own: SIGINT, SIGTERM and SIGHUP
are forwarded to the whole group, which is killed after a grace period, so no webserver, daemon,
code server or run worker outlives the launcher. Should the launcher itself be killed with
SIGKILL, Linux still sends the child SIGINT (PR_SET_PDEATHSIG) and `dagster dev` shuts its
services down.

`itresume-dev env` prints the same settings as shell exports (and prepares the database), so
Dagster's CLI in another shell shares the instance, the run history and the log files:
``eval "$(.venv/bin/itresume-dev env)"``. `make demo` uses the same instance.

`itresume-dev stop` (`make stop`) stops a running `make dev` and the embedded PostgreSQL that
`make demo` and `make dev` leave running for a fast next start.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from itresume_pipeline.settings import LOCAL_PROFILE, LOCAL_PROFILE_MEANS

if TYPE_CHECKING:
    from itresume_pipeline.local.simulator import ApiSimulator

DAGSTER_DATABASE = "dagster"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
DEV_CLIENT = "demo"
DEV_CLIENT_KEY = "demo-key"
STOP_GRACE_S = 20.0
_PR_SET_PDEATHSIG = 1

# Runs `argv[2:]` with PR_SET_PDEATHSIG=SIGINT; exits at once if the launcher already died.
_PDEATHSIG_SHIM = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, int(signal.SIGINT))\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class DevError(RuntimeError):
    """A setup problem with a message fit for the terminal."""


@dataclass(frozen=True)
class DevEnvironment:
    root: Path
    home: Path
    dagster_home: Path
    dagster_pg_url: str
    warehouse: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def dagster_storage_url(server_uri: str, database: str = DAGSTER_DATABASE) -> str:
    """`postgresql+psycopg2://…` for `database` on the server of a libpq URI or DSN.

    Works for TCP servers (`postgresql://u:p@host:5432/db`) and for unix sockets, including
    the embedded server's `postgresql://postgres:@/postgres?host=/socket/dir`, whose socket
    directory goes into the `host` query parameter. Other parameters (sslmode...) are kept.
    """
    import psycopg
    from sqlalchemy.engine import URL

    info = psycopg.conninfo.conninfo_to_dict(server_uri)
    host = str(info.pop("host", "") or "")
    port = info.pop("port", None)
    user = info.pop("user", None)
    password = info.pop("password", None)
    info.pop("dbname", None)
    query = {key: str(value) for key, value in info.items() if value is not None}
    tcp_host: str | None = host
    if not host or host.startswith("/") or "," in host:  # a socket dir, or several hosts
        tcp_host = None
        if host:
            query["host"] = host
        if port:
            query["port"] = str(port)
            port = None
    url = URL.create(
        "postgresql+psycopg2",
        username=str(user) if user else None,
        password=str(password) if password is not None else None,
        host=tcp_host,
        port=int(port) if port else None,
        database=database,
        query=query,
    )
    return url.render_as_string(hide_password=False)


# Not at the repository root: with DAGSTER_HOME unset, Dagster's CLI reads ./dagster.yaml, and
# this one needs DAGSTER_PG_URL, so a plain `dagster asset materialize` in the checkout would fail.
INSTANCE_CONFIG = Path("deploy") / "dagster.yaml"


def project_root() -> Path:
    """The checkout holding `workspace.yaml` and the shipped `deploy/dagster.yaml`."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "workspace.yaml").is_file() and (candidate / INSTANCE_CONFIG).is_file():
            return candidate
    raise DevError(
        f"run this from the project checkout: workspace.yaml and {INSTANCE_CONFIG} not found"
    )


def _load_dotenv(root: Path) -> list[str]:
    """Apply `./.env` the way Dagster's CLI does (it overrides the shell); return its keys."""
    path = root / ".env"
    if not path.is_file():
        return []
    from dotenv import dotenv_values

    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    os.environ.update(values)
    return sorted(values)


def install_instance_config(root: Path, dagster_home: Path) -> Path:
    """Copy the shipped dagster.yaml into DAGSTER_HOME (atomically; every start, so it follows
    the checkout)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    partial = dagster_home / ".dagster.yaml.partial"
    shutil.copyfile(root / INSTANCE_CONFIG, partial)
    os.replace(partial, target)
    return target


def prepare_environment(*, port: int | None = None) -> DevEnvironment:
    """Fill `os.environ` with everything the shipped instance and the code location need."""
    root = project_root()
    _load_dotenv(root)
    # The local rig (simulator, embedded PostgreSQL, CSV sheet, .eml outbox) fills what is unset;
    # without this profile the code location would refuse to guess.
    os.environ["ITRESUME_PROFILE"] = LOCAL_PROFILE
    os.environ.setdefault("ITRESUME_HOME", str(root / ".itresume"))
    os.environ["ITRESUME_HOME"] = str(Path(os.environ["ITRESUME_HOME"]).expanduser().absolute())

    from itresume_pipeline import settings
    from itresume_pipeline.local.embedded_postgres import embedded_server_uri, ensure_database

    home = settings.home()
    home.mkdir(parents=True, exist_ok=True)
    host = settings.env("DAGSTER_HOST", DEFAULT_HOST)
    if port is None:
        port = int(settings.env("DAGSTER_PORT", str(DEFAULT_PORT)))

    warehouse_url = settings.env("ITRESUME_DATABASE_URL")
    warehouse = (
        "ITRESUME_DATABASE_URL" if warehouse_url else f"embedded, {settings.embedded_pg_dir()}"
    )
    dagster_pg_url = settings.env("DAGSTER_PG_URL")
    if not dagster_pg_url:
        server_uri = warehouse_url or embedded_server_uri(settings.embedded_pg_dir())
        try:
            ensure_database(server_uri, DAGSTER_DATABASE)
        except Exception as exc:
            from itresume_pipeline.redaction import redact

            raise DevError(
                f"cannot create the database {DAGSTER_DATABASE!r} for Dagster's storage on the "
                f"warehouse server ({redact(exc)}); create it, or set DAGSTER_PG_URL"
            ) from exc
        dagster_pg_url = dagster_storage_url(server_uri, DAGSTER_DATABASE)
    if not dagster_pg_url.startswith("postgresql+psycopg2://"):
        raise DevError("DAGSTER_PG_URL must start with postgresql+psycopg2:// (dagster-postgres)")
    os.environ["DAGSTER_PG_URL"] = dagster_pg_url

    dagster_home = home / "dagster"
    install_instance_config(root, dagster_home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("ITRESUME_DAGSTER_URL", f"http://{host}:{port}")
    return DevEnvironment(
        root=root,
        home=home,
        dagster_home=dagster_home,
        dagster_pg_url=dagster_pg_url,
        warehouse=warehouse,
        host=host,
        port=port,
    )


def _pid_file(home: Path) -> Path:
    return home / "dev.pid"


def _is_launcher(pid: int) -> bool:
    """True while `pid` is an itresume-dev launcher (a pid file may outlive its process)."""
    try:
        return b"itresume" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_everything() -> int:
    """Stop a running `make dev` (its whole process group) and the embedded PostgreSQL."""
    os.environ.setdefault("ITRESUME_HOME", str(project_root() / ".itresume"))
    from itresume_pipeline import settings
    from itresume_pipeline.local.embedded_postgres import stop_embedded_server

    pid_file = _pid_file(settings.home())
    pid = int(pid_file.read_text() or 0) if pid_file.is_file() else 0
    if pid and _is_launcher(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S + 10
        while _is_launcher(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _say(f"stopped make dev (pid {pid})")
    pid_file.unlink(missing_ok=True)
    data_dir = settings.embedded_pg_dir()
    if stop_embedded_server(data_dir):
        _say(f"stopped the embedded PostgreSQL at {data_dir}")
    return 0


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _start_simulator() -> ApiSimulator | None:
    """The API simulator, unless a real (or other) API is configured."""
    if os.environ.get("ITRESUME_API_URL", "").strip():
        return None
    from itresume_pipeline.local.simulator import ApiSimulator

    simulator = ApiSimulator(client=DEV_CLIENT, client_key=DEV_CLIENT_KEY).start()
    os.environ["ITRESUME_API_URL"] = simulator.url
    os.environ["ITRESUME_CLIENT"] = DEV_CLIENT
    os.environ["ITRESUME_CLIENT_KEY"] = DEV_CLIENT_KEY
    return simulator


def _dagster_dev_command(env: DevEnvironment) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(env.root / "workspace.yaml"),
        "-h",
        env.host,
        "-p",
        str(env.port),
    ]
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *command]
    return command


def _wait_until_ready(
    env: DevEnvironment, child: subprocess.Popen[bytes], stop: threading.Event
) -> None:
    """Say when the UI answers, so a person (or a log reader) knows when to open it."""
    began = time.monotonic()
    while not stop.is_set() and child.poll() is None:
        try:
            with urllib.request.urlopen(f"{env.url}/server_info", timeout=2) as response:
                if response.status == 200:
                    _say(f"Dagster UI ready at {env.url} ({time.monotonic() - began:.0f} s)")
                    return
        except OSError:
            pass
        stop.wait(1.0)


def _kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGINT to the whole group (as Ctrl-C would), then SIGKILL whatever is left."""
    pgid = child.pid
    if child.poll() is None:
        _kill_group(pgid, signal.SIGINT)
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _say(f"dagster dev still running after {grace_s:.0f} s: killing it")
    # Webserver, daemon, code servers and run workers share the group; none may outlive us.
    _kill_group(pgid, signal.SIGKILL)
    if child.poll() is None:
        child.wait()


def _say(message: str) -> None:
    sys.stdout.write(f"[itresume-dev] {message}\n")
    sys.stdout.flush()


def _banner(env: DevEnvironment, simulator: ApiSimulator | None) -> None:
    from itresume_pipeline import settings
    from itresume_pipeline.redaction import redact

    api = f"simulator at {simulator.url}" if simulator else redact(os.environ["ITRESUME_API_URL"])
    for line in (
        f"profile         {LOCAL_PROFILE}: {LOCAL_PROFILE_MEANS}",
        f"ITRESUME_HOME   {env.home}",
        f"DAGSTER_HOME    {env.dagster_home} (copy of {env.root / INSTANCE_CONFIG})",
        f"DAGSTER_PG_URL  {redact(env.dagster_pg_url)}",
        f"warehouse       {env.warehouse}",
        f"API             {api}",
        f"log files       {settings.log_dir()}/YYYY-MM-DD.txt",
        f"Dagster UI      {env.url}  (starting; Ctrl-C stops everything)",
    ):
        _say(line)


def serve(port: int | None = None) -> int:
    env = prepare_environment(port=port)
    if not _port_is_free(env.host, env.port):
        raise DevError(f"port {env.port} on {env.host} is in use; set DAGSTER_PORT to another one")
    simulator = _start_simulator()
    _pid_file(env.home).write_text(str(os.getpid()))
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    child: subprocess.Popen[bytes] | None = None
    try:
        _banner(env, simulator)
        child = subprocess.Popen(
            _dagster_dev_command(env), cwd=env.root, env=os.environ.copy(), process_group=0
        )
        threading.Thread(
            target=_wait_until_ready, args=(env, child, stop), name="ready-check", daemon=True
        ).start()
        while not stop.is_set() and child.poll() is None:
            stop.wait(0.5)
        if received:
            _say(f"{signal.Signals(received[0]).name} received: stopping Dagster")
        else:
            _say(f"dagster dev exited with code {child.returncode}")
        _stop_group(child, STOP_GRACE_S)
        return 0 if received else (child.returncode or 0)
    finally:
        if child is not None and child.poll() is None:
            _stop_group(child, 0)
        if simulator is not None:
            simulator.close()
        _pid_file(env.home).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_env() -> int:
    """Shell exports for Dagster's CLI in another shell (starts the embedded server if needed)."""
    prepare_environment()
    sys.stdout.write(f"# profile {LOCAL_PROFILE}: {LOCAL_PROFILE_MEANS}\n")
    for name in ("ITRESUME_PROFILE", "ITRESUME_HOME", "DAGSTER_HOME", "DAGSTER_PG_URL"):
        sys.stdout.write(f"export {name}={shlex.quote(os.environ[name])}\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itresume-dev",
        description="Dagster UI on the demo environment (simulator + embedded PostgreSQL).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "env", "stop"),
        help="serve: run `dagster dev` (default); env: print shell exports for Dagster's CLI; "
        "stop: stop a running serve and the embedded PostgreSQL",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="UI port (default $DAGSTER_PORT or 3000)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "env":
            return print_env()
        if args.command == "stop":
            return stop_everything()
        return serve(args.port)
    except DevError as exc:
        sys.stderr.write(f"itresume-dev: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
