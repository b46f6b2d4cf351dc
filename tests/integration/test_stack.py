"""The local stack (`zpipe up/status/down`) with real processes on loopback.

The Prefect server and SeaweedFS are the real ones; the worker, serve and intake are small
stand-ins (the same command table, other argv) that check the environment they were given.
One stack is started for the whole module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest
import typer
from typer.testing import CliRunner

from flows.services import stack
from tests.conftest import postgres_database

REPO = Path(__file__).resolve().parents[2]
SECRET_VARS = ("ZPIPE_INTAKE_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ZPIPE_HOME")
NAMES = ["prefect-server", "s3", "worker", "serve", "intake"]
DB_PASSWORD = "pg-Secret-7d1e"  # trust auth ignores it; the stack must hide it all the same

# worker / serve stand-in: report the (non-secret) environment, write to the bucket, stay up
APP_STANDIN = """
import json, os, sys, time
import boto3
seen = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "AWS_ENDPOINT_URL", "ZPIPE_STORE",
        "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_RESULTS_PERSIST_BY_DEFAULT",
        "PREFECT_RUNNER_POLL_FREQUENCY")}
seen["has_intake_secret"] = "ZPIPE_INTAKE_SECRET" in os.environ
print("ENV " + json.dumps(seen), flush=True)
bucket = os.environ["ZPIPE_STORE"].removeprefix("s3://")
boto3.client("s3").put_object(Bucket=bucket, Key="standin/" + sys.argv[1], Body=b"hello")
print("wrote standin/" + sys.argv[1], flush=True)
time.sleep(3600)
"""

# intake stand-in: 200 on /healthz, reports whether it got the secret
INTAKE_STANDIN = """
import http.server, json, os, sys
print("ENV " + json.dumps({"has_intake_secret": bool(os.environ.get("ZPIPE_INTAKE_SECRET"))}), flush=True)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def _literal(code: str) -> str:
    """Argv items are str.format templates: double the braces of code passed with -c."""
    return code.replace("{", "{{").replace("}", "}}")


def _table() -> tuple[stack.ProcessSpec, ...]:
    real = {spec.name: spec for spec in stack.PROCESSES}
    return (
        replace(real["prefect-server"], env={"PREFECT_UI_ENABLED": "false"}),  # the UI build costs time
        real["s3"],
        replace(real["worker"], argv=("{python}", "-c", _literal(APP_STANDIN), "worker")),
        replace(real["serve"], argv=("{python}", "-c", _literal(APP_STANDIN), "serve")),
        replace(real["intake"], argv=("{python}", "-c", _literal(INTAKE_STANDIN), "{intake_port}")),
    )


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group(pgid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _alive(proc.pid):
                out.append(proc.pid)
        except OSError:
            continue
    return out


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("up")(stack.up_command)
    app.command("status")(stack.status_command)
    app.command("down")(stack.down_command)
    return app


runner = CliRunner()


@dataclass
class Running:
    home: Path
    ports: dict[str, int]
    first: stack.StackStatus
    up_seconds: float
    database: str  # sqlite | postgresql
    database_url: str | None

    def pids(self) -> dict[str, int | None]:
        return {name: p.pid for name, p in stack.status(self.home).processes.items()}

    def secret_values(self) -> list[str]:
        env = stack.stack_env(self.home)
        return [env["ZPIPE_INTAKE_SECRET"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]]

    def s3(self):
        import boto3

        env = stack.stack_env(self.home)
        return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One stack per database for the module (a Prefect server start costs 20-40 s): the
    server's own SQLite, and PostgreSQL (a database of its own, with a password the stack must
    keep out of stack.json, status and logs; the machine's server trusts local connections)."""
    home = tmp_path_factory.mktemp("stack") / "home"  # does not exist yet
    prefect, s3, intake = _free_ports(3)
    with contextlib.ExitStack() as cleanup, pytest.MonkeyPatch.context() as mp:
        for name in SECRET_VARS:
            mp.delenv(name, raising=False)
        database_url = None
        if request.param == "postgresql":
            database_url = cleanup.enter_context(postgres_database("zpipe_stack")).replace(
                "postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
        started = time.monotonic()
        try:
            first = stack.up(home, prefect_port=prefect, s3_port=s3, intake_port=intake,
                             processes=_table(), project_dir=REPO, database_url=database_url)
            yield Running(home, {"prefect": prefect, "s3": s3, "intake": intake}, first,
                          time.monotonic() - started, request.param, database_url)
        finally:
            stack.down(home)


def _postgres_tables(url: str) -> set[str]:
    import asyncio

    import asyncpg

    async def tables() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
        return {row["tablename"] for row in rows}

    return asyncio.run(tables())


def _standin_env(home: Path, name: str) -> dict:
    deadline = time.monotonic() + 20
    while True:
        log = (home / "logs" / f"{name}.log").read_text()
        lines = [line for line in log.splitlines() if line.startswith("ENV ")]
        if lines and (name == "intake" or f"wrote standin/{name}" in log):
            return json.loads(lines[-1][4:])
        assert time.monotonic() < deadline, f"{name} stand-in did not report:\n{log}"
        time.sleep(0.2)


# --------------------------------------------------------------------------- whole stack


def test_up_starts_everything_and_status_reports_it(running: Running) -> None:
    assert list(running.first.started) == NAMES
    assert running.first.healthy, running.first
    print(f"up from nothing took {running.up_seconds:.1f} s")

    result = runner.invoke(_cli(), ["status", "--home", str(running.home), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    p, s3, intake = running.ports["prefect"], running.ports["s3"], running.ports["intake"]
    assert doc["prefect_api_url"] == f"http://127.0.0.1:{p}/api"
    assert doc["prefect_ui_url"] == f"http://127.0.0.1:{p}"
    assert doc["s3_endpoint_url"] == f"http://127.0.0.1:{s3}"
    assert doc["intake_url"] == f"http://127.0.0.1:{intake}"
    assert doc["bucket"] == "zpipe" and doc["healthy"] is True
    assert doc["intake_secret_file"] == str(running.home / "secrets" / "intake_secret")
    assert doc["s3_credentials_file"] == str(running.home / "secrets" / "s3_credentials.json")
    assert list(doc["processes"]) == NAMES
    for name, proc in doc["processes"].items():
        assert proc["state"] == "running" and _alive(proc["pid"]), (name, proc)
        assert proc["log"] == str(running.home / "logs" / f"{name}.log")
    for sub in ("data/weed", "data/prefect", "data/results"):
        assert (running.home / sub).is_dir()
    if running.database == "sqlite":
        assert (running.home / "data/prefect/prefect.db").is_file()  # the server's SQLite
        assert doc["database"] == "sqlite"
    else:  # the server's state is in PostgreSQL, and the password is nowhere but secrets/
        assert not (running.home / "data/prefect/prefect.db").exists()
        assert doc["database"] == running.database_url.replace(DB_PASSWORD, "***").replace(
            "postgresql://", "postgresql+asyncpg://")
        assert _postgres_tables(running.database_url) >= {"flow_run", "deployment", "task_run"}
        secret_file = running.home / "secrets" / "database_url"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and DB_PASSWORD in secret_file.read_text()
        for path in [running.home / "stack.json", *(running.home / "logs").glob("*.log")]:
            assert DB_PASSWORD not in path.read_text(errors="replace"), path
        assert DB_PASSWORD not in result.stdout
    table = runner.invoke(_cli(), ["status", "--home", str(running.home)])
    assert table.exit_code == 0 and "running" in table.stdout


def test_processes_get_the_stack_environment(running: Running) -> None:
    env = stack.stack_env(running.home)
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{running.ports['prefect']}/api"
    assert env["ZPIPE_STORE"] == "s3://zpipe"
    import httpx

    assert httpx.get(env["PREFECT_API_URL"] + "/health", timeout=5).status_code == 200

    for name in ("worker", "serve"):
        seen = _standin_env(running.home, name)
        assert seen["PREFECT_API_URL"] == env["PREFECT_API_URL"]
        assert seen["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
        assert seen["ZPIPE_STORE"] == "s3://zpipe"
        assert seen["PREFECT_LOCAL_STORAGE_PATH"] == str(running.home / "data" / "results")
        assert seen["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
        assert seen["has_intake_secret"] is False  # only the intake gets it
    assert _standin_env(running.home, "serve")["PREFECT_RUNNER_POLL_FREQUENCY"] == "1"
    assert _standin_env(running.home, "intake")["has_intake_secret"] is True
    # the stand-ins wrote into the bucket `up` created, with the generated credentials
    keys = {o["Key"] for o in running.s3().list_objects_v2(Bucket="zpipe")["Contents"]}
    assert {"standin/worker", "standin/serve"} <= keys


def test_secrets_are_private_and_never_printed(running: Running) -> None:
    secrets_dir = running.home / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for name in ("intake_secret", "s3_credentials.json"):
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
    values = running.secret_values()
    assert all(len(v) >= 16 for v in values[1:]) and len(values[0]) >= 32

    shown = [runner.invoke(_cli(), ["status", "--home", str(running.home), *flags]).output
             for flags in ([], ["--json"])]
    shown.append(runner.invoke(_cli(), ["up", "--home", str(running.home)]).output)
    shown.append(runner.invoke(_cli(), ["down", "--home", str(running.home / "nothing")]).output)
    files = [*(running.home / "logs").glob("*.log"), *(running.home / "run").glob("*.pid"),
             running.home / "stack.json"]
    for value in values:
        for text in shown:
            assert value not in text
        for path in files:
            assert value not in path.read_text(errors="replace"), path
    # --env is the one deliberate way to get them, for `eval "$(zpipe status --env)"`
    exports = runner.invoke(_cli(), ["status", "--home", str(running.home), "--env"]).stdout
    assert f"export ZPIPE_INTAKE_SECRET={values[0]}" in exports
    assert f"export PREFECT_API_URL=http://127.0.0.1:{running.ports['prefect']}/api" in exports


def test_second_up_starts_nothing(running: Running) -> None:
    before = running.pids()
    result = runner.invoke(_cli(), ["up", "--home", str(running.home)])  # ports from stack.json
    assert result.exit_code == 0, result.output
    assert "nothing to start" in result.output
    assert running.pids() == before


def test_a_dead_process_is_restarted_alone(running: Running) -> None:
    before = running.pids()
    os.killpg(before["s3"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stack.status(running.home).processes["s3"].state != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert runner.invoke(_cli(), ["status", "--home", str(running.home)]).exit_code == 1

    again = stack.up(running.home, processes=_table())
    assert again.started == ("s3",) and again.healthy
    after = running.pids()
    assert after["s3"] != before["s3"]
    assert {k: v for k, v in after.items() if k != "s3"} == {k: v for k, v in before.items() if k != "s3"}
    # S3 data survive the restart
    assert running.s3().get_object(Bucket="zpipe", Key="standin/worker")["Body"].read() == b"hello"


def test_the_database_is_kept_and_never_changed_under_a_running_server(running: Running) -> None:
    kept = stack._read_secret_file(running.home / "secrets" / "database_url")
    if running.database == "sqlite":
        assert kept is None
        with pytest.raises(stack.StackConfigError, match="run `zpipe down` before changing its database"):
            stack.up(running.home, processes=_table(), database_url="postgresql://postgres@127.0.0.1/x")
        return
    assert kept == running.database_url.replace("postgresql://", "postgresql+asyncpg://")
    again = stack.up(running.home, processes=_table())  # no URL given: the kept one, nothing restarts
    assert again.started == () and again.database == running.first.database
    with pytest.raises(stack.StackConfigError, match="running on postgresql\\+asyncpg://postgres:\\*\\*\\*@"):
        stack.up(running.home, processes=_table(), database_url="sqlite")


def test_an_unreachable_database_is_refused_before_anything_starts(tmp_path: Path) -> None:
    port = _free_ports(1)[0]  # nothing listens there
    with pytest.raises(stack.StackConfigError) as refused:
        stack.up(tmp_path, processes=_table(), database_url=f"postgres://zp:hunter22@127.0.0.1:{port}/zp")
    message = str(refused.value)
    assert f"postgresql+asyncpg://zp:***@127.0.0.1:{port}/zp" in message and "hunter22" not in message
    assert "createdb" in message and "ZPIPE_DATABASE_URL" in message
    assert not list((tmp_path / "run").glob("*.pid")) and not (tmp_path / "secrets" / "database_url").exists()
    with pytest.raises(stack.StackConfigError, match="is not PostgreSQL"):
        stack.up(tmp_path, processes=_table(), database_url="mysql://root@127.0.0.1/zp")


def test_busy_port_is_refused_before_anything_starts(running: Running, tmp_path: Path) -> None:
    prefect, s3 = _free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        result = runner.invoke(_cli(), ["up", "--home", str(tmp_path), "--prefect-port", str(prefect),
                                        "--s3-port", str(s3), "--intake-port", str(busy)])
    assert result.exit_code == 2, result.output
    assert f"port {busy}" in result.output and "intake" in result.output and "--intake-port" in result.output
    assert not list((tmp_path / "run").glob("*.pid"))
    assert not stack._port_in_use(prefect) and not stack._port_in_use(s3)

    # the other stack's S3 port is "something else" for this home too
    with pytest.raises(stack.PortBusyError, match=f"port {running.ports['s3']} for s3"):
        stack.up(tmp_path, prefect_port=prefect, s3_port=running.ports["s3"], intake_port=busy,
                 processes=_table())
    assert not list((tmp_path / "run").glob("*.pid"))

    # a running process keeps its port until `down`; two roles never share one
    with pytest.raises(stack.StackConfigError, match="run `zpipe down` before changing its port"):
        stack.up(running.home, prefect_port=prefect, processes=_table())
    with pytest.raises(stack.StackConfigError, match="ports must differ"):
        stack.up(tmp_path, prefect_port=prefect, s3_port=prefect, intake_port=s3, processes=_table())


def test_down_stops_everything_and_is_idempotent(running: Running) -> None:
    pids = running.pids()
    members = {pid for pgid in pids.values() if pgid for pid in _group(pgid)}
    assert set(pids.values()) <= members

    result = runner.invoke(_cli(), ["down", "--home", str(running.home)])
    assert result.exit_code == 0, result.output
    assert "stopped: intake, serve, worker, s3, prefect-server" in result.output
    assert not [pid for pid in members if _alive(pid)]
    for port in running.ports.values():
        assert not stack._port_in_use(port), port
    assert not list((running.home / "run").glob("*.pid"))
    assert (running.home / "secrets" / "intake_secret").is_file()  # data and secrets stay
    if running.database == "sqlite":
        assert (running.home / "data" / "prefect" / "prefect.db").is_file()
    else:  # the state stays in PostgreSQL, and the URL for the next `up`
        assert "flow_run" in _postgres_tables(running.database_url)
        assert (running.home / "secrets" / "database_url").is_file()

    assert stack.down(running.home) == []
    again = runner.invoke(_cli(), ["down", "--home", str(running.home)])
    assert again.exit_code == 0 and "nothing was running" in again.output
    result = runner.invoke(_cli(), ["status", "--home", str(running.home), "--json"])
    assert result.exit_code == 1
    assert {p["state"] for p in json.loads(result.stdout)["processes"].values()} == {"stopped"}


# --------------------------------------------------------------------------- no processes


def test_home_is_option_then_env_then_dot_zpipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert stack.resolve_home(None, environ={}) == tmp_path / ".zpipe"
    assert stack.resolve_home(None, environ={"ZPIPE_HOME": "/srv/z"}) == Path("/srv/z")
    assert stack.resolve_home(Path("h"), environ={"ZPIPE_HOME": "/srv/z"}) == tmp_path / "h"


def test_secrets_from_environment_then_files_then_generated(tmp_path: Path) -> None:
    paths = stack.StackPaths(tmp_path)
    given = {"ZPIPE_INTAKE_SECRET": "i" * 40, "AWS_ACCESS_KEY_ID": "key-1",
             "AWS_SECRET_ACCESS_KEY": "s" * 40}
    first = stack._load_or_create_secrets(paths, given)
    assert (first.intake_secret, first.access_key, first.secret_key) == ("i" * 40, "key-1", "s" * 40)
    assert "s" * 40 not in repr(first)
    assert stat.S_IMODE(paths.s3_credentials_file.stat().st_mode) == 0o600
    assert stack._load_or_create_secrets(paths, {}) == first  # reused from the files

    other = stack.StackPaths(tmp_path / "other")
    made = stack._load_or_create_secrets(other, {})
    assert made.intake_secret != first.intake_secret and made.access_key.startswith("zpipe-")
    assert stack._load_or_create_secrets(other, {}) == made
    assert stat.S_IMODE(other.intake_secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(other.secrets.stat().st_mode) == 0o700


def test_a_reused_pid_is_never_ours(tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another process: stopped, and down leaves it alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "worker.pid").write_text(json.dumps(
            {"pid": other.pid, "create_time": psutil.Process(other.pid).create_time() - 3600}))
        assert stack.status(tmp_path).processes.get("worker").state == "stopped"
        assert stack.down(tmp_path) == []
        assert other.poll() is None
        assert not (tmp_path / "run" / "worker.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_status_without_a_stack(tmp_path: Path) -> None:
    result = runner.invoke(_cli(), ["status", "--home", str(tmp_path), "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["prefect_api_url"] == "http://127.0.0.1:4200/api" and doc["bucket"] == "zpipe"
    assert {p["state"] for p in doc["processes"].values()} == {"stopped"}
    with pytest.raises(stack.StackError, match="run `zpipe up` first"):
        stack.stack_env(tmp_path)


def test_a_process_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    crash = stack.ProcessSpec("worker", ("{python}", "-c", "import sys; print('no GPU here'); sys.exit(3)"),
                              ready="alive", env_kind="app")
    with pytest.raises(stack.StackError, match=r"worker exited while starting(.|\n)*no GPU here") as info:
        stack.up(tmp_path, processes=(crash,))
    assert info.value.exit_code == 1 and str(tmp_path / "logs" / "worker.log") in str(info.value)
    assert stack.status(tmp_path).processes["worker"].state == "stopped"
    assert not (tmp_path / "run" / "worker.pid").exists()

    missing = replace(crash, argv=("/nonexistent/zpipe", "worker"))
    with pytest.raises(stack.StackConfigError, match="/nonexistent/zpipe is not an executable"):
        stack.up(tmp_path, processes=(missing,))


def test_http_readiness_needs_a_port() -> None:
    with pytest.raises(ValueError, match=r"'web'.*needs a port"):
        stack.ProcessSpec("web", ("x",), ready="http", env_kind="app", health_path="/healthz")


# --------------------------------------------------------------------------- infra files


def test_infra_files_validate() -> None:
    """infra/validate.sh: YAML, Kubernetes schemas, the compose spec, Prefect's prefect.yaml model."""
    for tool in ("kubernetes-validate", "check-jsonschema"):
        if not (Path(sys.executable).parent / tool).exists() and not shutil.which(tool):
            pytest.skip(f"{tool} is not installed: pip install -e '.[dev]'")
    result = subprocess.run(["bash", str(REPO / "infra" / "validate.sh")], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "ZPIPE_VALIDATE_NO_INSTALL": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all infra files valid" in result.stdout
