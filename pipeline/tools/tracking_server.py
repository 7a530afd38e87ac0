"""An MLflow tracking server for many writers: PostgreSQL as its backend store, artifacts served from a local folder.

    python -m pipeline.tools.tracking_server start            # prints the MLFLOW_TRACKING_URI to export
    python -m pipeline.tools.tracking_server status
    python -m pipeline.tools.tracking_server stop

Everything lives in one project-local folder (default mlflow-server/, ignored by git): postgres/ (the database
cluster, its log and socket), artifacts/, mlflow.log, password and state.json. Both servers listen on 127.0.0.1
only, and PostgreSQL asks for the generated password (scram-sha-256). PostgreSQL refuses to run as root: run as
root, its commands run as the `postgres` user, who owns postgres/. `stop` keeps the data; `start` reuses it.
`start` refuses a port that something else listens on, and whatever stops it (an error, Ctrl-C) stops what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from pipeline import paths
from pipeline.cli import os_error_line
from pipeline.lib.io import write_json
from pipeline.tools.server_process import ServerError, alive, free_port, process_started, stop_group, wait_healthy

PG_BINS = sorted(
    Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
)
DATABASE, USER = "mlflow", "mlflow"


def refuse_taken_port(port: int) -> None:
    """Another server on the port would answer /health for ours, and the stages would log into it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT port is free
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ServerError(
                f"port {port} on 127.0.0.1 is already in use (`ss -ltnp 'sport = :{port}'` shows by what): stop that"
                " server, or pick another port: python -m pipeline.tools.tracking_server start --port N"
            ) from None


def pg_tool(name: str) -> str:
    """Debian's newest /usr/lib/postgresql/<version>/bin, else PATH."""
    found = next((str(b / name) for b in reversed(PG_BINS) if (b / name).exists()), None) or shutil.which(name)
    if not found:
        raise ServerError(f"{name} not found: install PostgreSQL's server (Debian: apt install postgresql-15)")
    return str(found)


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL's server commands refuse root: as root, run them as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def run(cmd: list[str], what: str, env: dict | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-600:]}")


def init_cluster(folder: Path) -> None:
    """A new PostgreSQL cluster in folder/postgres/data with a generated password for the user mlflow (what a failed
    earlier attempt left there is replaced)."""
    initdb = pg_tool("initdb")
    owner = "postgres" if os.geteuid() == 0 else None
    if owner:
        try:
            pwd.getpwnam(owner)
        except KeyError:
            raise ServerError(
                "PostgreSQL refuses to run as root, and there is no user 'postgres' to run it as"
            ) from None
    pg = folder / "postgres"
    shutil.rmtree(pg, ignore_errors=True)
    pg.mkdir(parents=True)
    password = secrets.token_urlsafe(24)
    write_private(folder / "password", password)
    pwfile = pg / "pwfile"
    write_private(pwfile, password)
    if owner:
        shutil.chown(pg, owner, owner)
        shutil.chown(pwfile, owner, owner)
    try:
        auth = ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        run(as_postgres([initdb, "-D", str(pg / "data"), "-U", USER, "-E", "UTF8", *auth]), "initdb")
    finally:
        pwfile.unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)


def start_postgres(folder: Path, port: int) -> None:
    pg = folder / "postgres"
    options = f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(pg))}"  # pg_ctl passes these through a shell
    cmd = [pg_tool("pg_ctl"), "-D", str(pg / "data"), "-l", str(pg / "postgres.log"), "-w", "-o", options, "start"]
    run(as_postgres(cmd), f"PostgreSQL (log: {pg / 'postgres.log'})")


def ensure_database(folder: Path, port: int) -> None:
    env = {"PGPASSWORD": (folder / "password").read_text()}
    probe = [pg_tool("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", "postgres", "-tAc"]
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
    found = subprocess.run([*probe, query], capture_output=True, text=True, env={**os.environ, **env}).stdout.strip()
    if found != "1":
        run([pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE], "createdb", env)


def start_mlflow(folder: Path, pg_port: int, port: int, workers: int) -> int:
    # the driver installed (psycopg2-binary), named: for postgresql:// SQLAlchemy 2.1 would pick psycopg 3. No
    # password in it: a command line is readable by every user (ps); libpq reads PGPASSWORD from the environment
    backend = f"postgresql+psycopg2://{USER}@127.0.0.1:{pg_port}/{DATABASE}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend]
    cmd += ["--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with open(folder / "mlflow.log", "ab") as log:
        env = {**os.environ, "PGPASSWORD": (folder / "password").read_text()}
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout=180)
    except BaseException as err:  # Ctrl-C too: its own session never sees the terminal's SIGINT
        stop_group(process.pid)
        if isinstance(err, ServerError):
            raise ServerError(f"{err} (log: {folder / 'mlflow.log'})") from None
        raise
    return process.pid


def still_running(state: dict) -> bool:
    """The MLflow server a state names still runs: its pid is alive and that process started when the server did
    (within a second: psutil derives the time from the boot time, which moves a little as the clock is adjusted).
    After a reboot or a crash the pid may be another process's, which must never be taken for it, nor signalled."""
    if not alive(state["mlflow_pid"]):
        return False
    try:
        process = psutil.Process(state["mlflow_pid"])
        if "mlflow_started" not in state:  # written before start times were recorded: know the server by its command
            return "mlflow" in " ".join(process.cmdline())
        return abs(process.create_time() - state["mlflow_started"]) < 1.0
    except psutil.Error:
        return False


def start(folder: Path, port: int, workers: int) -> dict:
    state = read_state(folder)
    if state is not None:
        if still_running(state):
            return state
        stop(folder)  # a stale state: what is left of it
    refuse_taken_port(port)
    if not (folder / "postgres" / "data" / "PG_VERSION").exists():
        init_cluster(folder)
    pg_port, pid = free_port(), None
    try:  # until state.json names them, nothing else could find the servers to stop them
        start_postgres(folder, pg_port)
        ensure_database(folder, pg_port)
        pid = start_mlflow(folder, pg_port, port, workers)
        return save_state(folder, {"url": f"http://127.0.0.1:{port}", "mlflow_pid": pid, "postgres_port": pg_port})
    except BaseException:
        if pid is not None:
            stop_group(pid)
        stop_postgres(folder)
        raise


def save_state(folder: Path, state: dict) -> dict:
    state = {**state, "mlflow_started": process_started(state["mlflow_pid"])}
    write_json(folder / "state.json", state)  # atomic: a crash mid-write leaves no half a state
    return state


def read_state(folder: Path) -> dict | None:
    """What state.json says, None without one; a corrupt one is an error that says how to clean up by hand."""
    state_file = folder / "state.json"
    if not state_file.exists():
        return None
    with contextlib.suppress(ValueError):  # JSON and UTF-8 decoding errors alike
        state = json.loads(state_file.read_text())
        if isinstance(state, dict) and {"url", "mlflow_pid", "postgres_port"} <= state.keys():
            return state
    raise ServerError(
        f"{state_file} is corrupt: the mlflow server it named may still run (`pgrep -af -- '--artifacts-destination"
        f" {folder}/'` finds it): stop it with kill -- -PID, delete state.json, then `stop` stops PostgreSQL"
    )


def stop_postgres(folder: Path) -> None:
    data = folder / "postgres" / "data"
    status = subprocess.run(as_postgres([pg_tool("pg_ctl"), "-D", str(data), "status"]), capture_output=True)
    if (data / "postmaster.pid").exists() and status.returncode == 0:  # not a stale pid file after a crash
        run(as_postgres([pg_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), "stopping PostgreSQL")


def stop(folder: Path) -> None:
    stop_mlflow(folder)
    stop_postgres(folder)


def stop_mlflow(folder: Path) -> None:
    """Stops the MLflow server that state.json names, if that process still runs, and forgets it."""
    state = read_state(folder)
    if state is not None:
        if still_running(state):
            stop_group(state["mlflow_pid"])
        (folder / "state.json").unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.tracking_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=None, help="the server's folder (default: mlflow-server/)")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=4, help="the MLflow server's worker processes")
    args = parser.parse_args(argv)
    folder = (args.dir or paths.root() / "mlflow-server").resolve()
    try:
        if args.action == "start":
            state = start(folder, args.port, args.workers)
            print(f"tracking server: {state['url']} (PostgreSQL on 127.0.0.1:{state['postgres_port']}, {folder})")
            print(f"export MLFLOW_TRACKING_URI={state['url']}")
        elif args.action == "stop":
            stop(folder)
            print(f"tracking server: stopped ({folder} kept)")
        else:
            state = read_state(folder)
            running = state is not None and still_running(state)
            print(f"tracking server: {'running at ' + state['url'] if running else 'not running'} ({folder})")
            return 0 if running else 3
    except ServerError as err:
        print(f"tracking_server: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk writing state.json, a password file that cannot be read
        print(f"tracking_server: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what `start` had started is stopped by then
        print("tracking_server: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
