"""Benchmark: how a campaign scales over N resident `zpipe worker`s with a stand-in GPU.

Real processes everywhere except the model: a `prefect server` (SQLite, or PostgreSQL in a
database of its own, dropped after), SeaweedFS with auth (`weed mini`, as `zpipe up` starts
it), N `zpipe worker` processes (`python -m bench.standin LATENCY worker`: the
real worker command on bench.standin's fixed-latency engine), and the `weekly-campaign` flow
called in this process with `generation: workers`, publishing to S3. For each database and
worker count it runs one campaign of `--images` images and reports throughput against the
ideal N / latency, and where the rest went, from the sidecars (the stand-in's start and end of
every batch, per worker pid) and the wall clock:

- head: flow start -> first stand-in batch starts (planning, the first hand-overs);
- gap: on one worker, one stand-in batch's end -> its next one's start (the next batch's
  bookkeeping overlaps the current one: a worker holds two pieces of work), median;
- busy: the stand-in's share of N workers x the generation span;
- tail: last batch ends -> flow returns (its publishing on the worker, contact sheet, artifacts);
- CPU: cores busy on average per process role (flow, server, S3, workers) and machine-wide.

The baseline is a plain loop with the same stand-in in this process: sleep, Pillow label,
JPEG, boto3 `put_object`, one image after another.

    .venv/bin/python bench/scale.py --workers 1,2,4,8 --images 1000 --latency 0.3 \
        --databases sqlite,postgres --json /tmp/scale.json

Prints a markdown table; correctness (every planned image exactly once in S3, each made by
the stand-in in one of the worker processes) is checked for every run and fails loudly.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/scale.py`: bench.standin and the tests' helpers
    sys.path.insert(0, str(REPO))

from tests.conftest import postgres_database  # noqa: E402 - after the repo is on sys.path
from tests.processes import stop_process  # noqa: E402

BIN = Path(sys.executable).parent
WEEK = "2026-W48"
FORMATS = ["1:1", "9:16", "4:5", "3:4", "16:9"]
MAX_VARIANTS = 16  # VariantsConfig.count's bound
# Any number of images: a catalogue of SKUs x formats x variants (one day), so a 1,000-image
# campaign is 125 SKUs x 2 formats x 4 variants; keys and seeds come from the SKU ids.
CAMPAIGN = """\
kind: campaign
name: scale
brand: ../brands/demo.yaml
prompts: ../prompts/library.yaml
template: daily-poster
language: bilingual
timezone: Asia/Shanghai
approval: none
formats: {formats}
variants: {variants}
output: {{format: jpeg, quality: 90}}
trends: {{sources: []}}
catalogue: {{url: ../catalogues/{catalogue}}}
days:
  mon: {{zh: 本周新品, en: this week's products}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shape(images: int) -> tuple[int, int, int]:
    """(SKUs, formats, variants) whose product is `images`: 2 formats x 4 variants when it
    divides, else the fewest formats and most variants that do."""
    if images % 8 == 0:
        return images // 8, 2, 4
    for formats in range(1, len(FORMATS) + 1):
        for variants in range(MAX_VARIANTS, 0, -1):
            skus, rest = divmod(images, formats * variants)
            if not rest:
                return skus, formats, variants
    raise SystemExit(f"--images {images}: not SKUs x formats (<=5) x variants (<=16)")


def write_campaign(root: Path, images: int, qa: bool, max_batch: int, scale: float) -> tuple[Path, Path]:
    """A copy of configs/ with a campaign of `images` images and a workers settings file."""
    if not (root / "configs").exists():
        shutil.copytree(REPO / "configs", root / "configs")
    skus, formats, variants = _shape(images)
    catalogue = f"scale-{images}.csv"
    rows = [f"S{i:04d},第{i + 1}号新品,product {i + 1}" for i in range(skus)]
    (root / "configs/catalogues" / catalogue).write_text(
        "sku,name_zh,name_en\n" + "\n".join(rows) + "\n", encoding="utf-8")
    campaign = root / f"configs/campaigns/scale-{images}.yaml"
    campaign.write_text(CAMPAIGN.format(formats=json.dumps(FORMATS[:formats]), variants=variants,
                                        catalogue=catalogue), encoding="utf-8")
    settings = root / "configs/settings.scale.yaml"
    settings.write_text(
        "kind: settings\n"
        f"engine: {{model: tiny, preview_scale: {scale}, max_batch: {max_batch}}}\n"
        "generation: workers\n"
        f"qa: {{enabled: {'true' if qa else 'false'}}}\n", encoding="utf-8")
    return campaign, settings


# -- servers -------------------------------------------------------------------------------

SERVICE_PIDS: dict[str, int] = {}  # "s3", "prefect": the pid of each running service


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role's processes and their live
    children, and by the whole machine (`machine`: every process, this bench's included)."""
    import psutil

    used: dict[str, float] = {}
    for role, role_pids in pids.items():
        used[role] = 0.0
        for pid in role_pids:
            try:
                proc = psutil.Process(pid)
                # this process started the servers and workers: its own CPU is the flow's alone
                family = [proc] if pid == os.getpid() else [proc, *proc.children(recursive=True)]
                for one in family:
                    times = one.cpu_times()
                    used[role] += times.user + times.system
            except psutil.Error:  # gone: its share is lost, and the table says 0
                continue
    machine = psutil.cpu_times()
    used["machine"] = machine.user + machine.system + machine.nice + getattr(machine, "irq", 0.0) \
        + getattr(machine, "softirq", 0.0)
    return used


def _wait(probe, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except Exception:  # not up yet: any error means "try again"
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def s3_server(root: Path) -> Iterator[dict[str, str]]:
    """SeaweedFS with auth on; yields the AWS_* environment for it."""
    data = root / "weed"
    data.mkdir(parents=True)
    port = _port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "bench-" + uuid.uuid4().hex[:8],
           "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex, "AWS_DEFAULT_REGION": "us-east-1"}
    weed = shutil.which("weed", path=f"{BIN}:{os.environ.get('PATH', '')}") or "weed"
    log = data / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
             "-s3.port.lance=0", f"-s3.localSocket={data}/s3.sock",
             f"-filer.localSocket={data}/filer.sock", f"-s3.port={port}"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
        try:
            import boto3

            client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                                  aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                  aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                  region_name="us-east-1")
            _wait(lambda: client.list_buckets() is not None, proc, log, "SeaweedFS", 60)
            SERVICE_PIDS["s3"] = proc.pid
            yield env
        finally:
            stop_process(proc, 15)


@contextlib.contextmanager
def database(kind: str) -> Iterator[str | None]:
    """None for SQLite; for PostgreSQL a database of its own (Prefect's URL), dropped after."""
    if kind == "sqlite":
        yield None
        return
    with postgres_database("zpipe_bench") as url:
        yield url.replace("postgresql://", "postgresql+asyncpg://", 1)


@contextlib.contextmanager
def prefect_server(root: Path, database_url: str | None) -> Iterator[str]:
    """`prefect server start` on a free port (SQLite under its own PREFECT_HOME, or `database_url`)."""
    import httpx

    home = root / f"prefect-{uuid.uuid4().hex[:6]}"
    home.mkdir(parents=True)
    port = _port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _wait(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, proc, log,
                  "the Prefect server", 180)
            SERVICE_PIDS["prefect"] = proc.pid
            yield url
        finally:
            stop_process(proc, 20)


@contextlib.contextmanager
def workers(count: int, latency: float, settings: Path, env: dict[str, str],
            logs: Path) -> Iterator[list[int]]:
    """`count` stand-in `zpipe worker` processes; yields their pids once the server sees them all."""
    from prefect.client.orchestration import get_client

    from tasks.orchestration.handover import generation_workers

    procs, outs = [], []
    try:
        for i in range(count):
            out = open(logs / f"worker-{count}-{i}.log", "wb")  # noqa: SIM115 - closed below
            outs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.standin", str(latency), "worker", "--settings",
                 str(settings)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        pids = {f"{socket.gethostname()}-{p.pid}" for p in procs}

        def all_up() -> bool:
            with get_client(sync_client=True) as client:
                return pids <= {w["identifier"] for w in generation_workers(client)}

        _wait(all_up, procs[0], logs / f"worker-{count}-0.log", f"{count} workers", 180)
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            stop_process(proc, 20)
        for out in outs:
            out.close()


# -- one campaign ---------------------------------------------------------------------------


@dataclass
class Run:
    database: str
    workers: int
    images: int
    latency: float
    wall_s: float
    head_s: float
    tail_s: float
    gen_span_s: float
    busy_share: float
    gap_median_s: float | None
    batches: int
    label_median_s: float
    task_runs: int
    keys_in_s3: int = 0  # correctness, checked here and by tests/integration/test_bench_scale.py
    unique_keys: int = 0
    standin_images: int = 0
    worker_pids: tuple[int, ...] = ()
    made_by_pids: tuple[int, ...] = ()
    cores: dict[str, float] | None = None  # CPU cores busy on average, per role and machine-wide

    @property
    def rate(self) -> float:
        return self.images / self.wall_s

    @property
    def efficiency(self) -> float:
        return self.rate / (self.workers / self.latency)


def _sidecars(bucket: str, prefix: str) -> tuple[list[str], list[dict]]:
    import boto3

    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    images = [k.removeprefix(prefix) for k in keys
              if not k.endswith(".json") and not k.removeprefix(prefix).startswith("_")]
    sidecars = [json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}{k}.json")["Body"].read())
                for k in images]
    return images, sidecars


def _generation_task_runs(started: datetime) -> int:
    """Generation task runs started since `started` (one per batch unless one was handed over)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime, TaskRunFilterTags

    from tasks.orchestration.handover import GENERATION_TAG

    runs_filter = TaskRunFilter(tags=TaskRunFilterTags(all_=[GENERATION_TAG]),
                                start_time=TaskRunFilterStartTime(after_=started))
    with get_client(sync_client=True) as client:
        return client.request("POST", "/task_runs/count", json={
            "task_runs": runs_filter.model_dump(mode="json", exclude_unset=True)}).json()


def run_campaign(campaign: Path, settings: Path, bucket: str, db: str, count: int, pids: list[int],
                 images: int, latency: float) -> Run:
    """One campaign through the stand-in workers; checks every image is there once, from them."""
    from flows.campaign import weekly_campaign

    prefix = f"{db}-{count}w-{uuid.uuid4().hex[:6]}"
    roles = {"flow": [os.getpid()], "server": [SERVICE_PIDS["prefect"]], "s3": [SERVICE_PIDS["s3"]],
             "workers": pids}
    cpu_before = cpu_seconds(roles)
    started_at = datetime.now(UTC)
    started = time.time()
    summary = weekly_campaign(str(campaign), week=WEEK, store=f"s3://{bucket}/{prefix}",
                              settings=str(settings))
    ended = time.time()
    cpu_after = cpu_seconds(roles)
    cores = {role: (cpu_after[role] - cpu_before[role]) / (ended - started) for role in cpu_after}
    keys, sidecars = _sidecars(bucket, prefix + "/")
    assert len(summary.created) == images and not summary.failed, summary
    assert len(keys) == len(set(keys)) == images, f"{len(keys)} images in S3, planned {images}"
    assert sorted(s["key"] for s in sidecars) == sorted(keys)
    made_by = {int(s["timings"]["engine_pid"]) for s in sidecars}
    assert all(s["model"]["id"] == "standin" for s in sidecars), "an image not made by the stand-in"
    assert made_by <= set(pids), f"images made by pids {made_by - set(pids)}, not the workers {pids}"
    batches = sorted({(int(s["timings"]["engine_pid"]), s["timings"]["standin_start"],
                       s["timings"]["standin_end"]) for s in sidecars}, key=lambda b: b[1])
    first, last = batches[0][1], max(end for _, _, end in batches)
    busy = sum(end - start for _, start, end in batches)
    gaps = []
    for pid in made_by:
        mine = [b for b in batches if b[0] == pid]
        gaps += [nxt[1] - cur[2] for cur, nxt in itertools.pairwise(mine)]
    return Run(database=db, workers=count, images=images, latency=latency, wall_s=ended - started,
               head_s=first - started, tail_s=ended - last, gen_span_s=last - first,
               busy_share=busy / (count * (last - first)),
               gap_median_s=statistics.median(gaps) if gaps else None, batches=len(batches),
               label_median_s=statistics.median(s["timings"]["label_s"] for s in sidecars),
               task_runs=_generation_task_runs(started_at), keys_in_s3=len(keys),
               unique_keys=len(set(keys)),
               standin_images=sum(s["model"]["id"] == "standin" for s in sidecars),
               worker_pids=tuple(pids), made_by_pids=tuple(sorted(made_by)), cores=cores)


def plain_loop(campaign: Path, settings: Path, bucket: str, latency: float) -> tuple[float, int]:
    """The same planned images, one after another: stand-in sleep, Pillow label, JPEG, boto3 put."""
    import boto3
    from PIL import Image, ImageDraw

    from bench.standin import StandInEngine
    from tasks.config.schema import load_campaign, load_settings, parse_week
    from tasks.content.catalogue import read_catalogue
    from tasks.content.plan import brand_fingerprint, plan_week
    from tasks.generation.engine import to_request

    bundle = load_campaign(campaign)
    engine = load_settings(settings).engine
    week, monday = parse_week(WEEK, datetime.now(UTC).date())
    requests = [to_request(j) for j in plan_week(bundle, week, monday, [], engine, brand_fingerprint(bundle),
                                                 catalogue=read_catalogue(bundle))]
    standin, s3 = StandInEngine(latency), boto3.client("s3")
    started = time.perf_counter()
    for i, request in enumerate(requests):
        result = standin.generate([request])[0]
        image = Image.open(io.BytesIO(result.png)).convert("RGB")
        ImageDraw.Draw(image).text((8, image.height - 20), "AI-generated", fill=(255, 255, 255))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        s3.put_object(Bucket=bucket, Key=f"plain/{i:04d}.jpg", Body=buffer.getvalue(),
                      ContentType="image/jpeg")
    return time.perf_counter() - started, len(requests)


# -- the whole benchmark ---------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict:
    import boto3
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    root = Path(tempfile.mkdtemp(prefix="zpipe-scale-"))
    logs = root / "logs"
    logs.mkdir()
    campaign, settings = write_campaign(root, args.images, args.qa, args.max_batch, args.scale)
    warm = write_campaign(root, args.warmup, args.qa, args.max_batch, args.scale)[0] if args.warmup else None
    results = root / "results"  # Prefect result storage shared by the workers and the flow
    runs: list[Run] = []
    plain: dict[str, float] = {}
    with s3_server(root) as s3_env:
        os.environ.update(s3_env)
        os.environ["ZPIPE_SPOOL"] = str(root / "spool")
        os.environ.pop("ZPIPE_STORE", None)
        os.environ.pop("ZPIPE_GENERATION", None)
        bucket = "scale-" + uuid.uuid4().hex[:8]
        boto3.client("s3").create_bucket(Bucket=bucket)
        if args.plain:
            plain_loop(warm or campaign, settings, bucket, args.latency)  # warm-up: imports, clients
            plain["wall_s"], plain["images"] = plain_loop(campaign, settings, bucket, args.latency)
            print(f"plain loop: {plain['images']} images in {plain['wall_s']:.2f} s", flush=True)
        for db in args.databases:
            with database(db) as database_url, prefect_server(root, database_url) as api, \
                    temporary_settings({PREFECT_API_URL: api, PREFECT_LOCAL_STORAGE_PATH: str(results),
                                        PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
                env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_LOCAL_STORAGE_PATH": str(results),
                       "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
                for count in args.workers:
                    with workers(count, args.latency, settings, env, logs) as pids:
                        if warm:  # first-call costs of this process and the new workers
                            run_campaign(warm, settings, bucket, db, count, pids, args.warmup, args.latency)
                        run = run_campaign(campaign, settings, bucket, db, count, pids, args.images,
                                           args.latency)
                    runs.append(run)
                    print(f"{db} {count} worker(s): {run.wall_s:.2f} s, {run.rate:.2f} images/s, "
                          f"{run.efficiency:.1%} of ideal", flush=True)
                # the flow's logs and events reach this server before it stops (else the exit
                # waits on them for ever)
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
    shutil.rmtree(root, ignore_errors=True)
    return _report(args, runs, plain)


def _report(args: argparse.Namespace, runs: list[Run], plain: dict[str, float]) -> dict:
    ideal_1 = args.images * args.latency
    figures = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "images": args.images, "latency_s": args.latency, "max_batch": args.max_batch,
        "preview_scale": args.scale, "qa": args.qa, "warmup_images": args.warmup,
        "bench_pid": os.getpid(), "plain": plain,
        "runs": [{**vars(r), "rate": r.rate, "efficiency": r.efficiency} for r in runs],
    }
    print(f"\nmachine: {figures['machine']}, date {figures['date']}; {args.images} images per campaign, "
          f"stand-in {args.latency:g} s/image, batches of {args.max_batch}, preview scale {args.scale:g}, "
          f"QA {'on' if args.qa else 'off'}\n")
    print("| database | workers | wall s | images/s | ideal images/s | of ideal | head s | gap/batch s "
          "| busy share | tail s | label s/image | batch task runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        gap = f"{r.gap_median_s:.3f}" if r.gap_median_s is not None else "-"
        print(f"| {r.database} | {r.workers} | {r.wall_s:.2f} | {r.rate:.2f} | {r.workers / r.latency:.2f} "
              f"| {r.efficiency:.1%} | {r.head_s:.2f} | {gap} | {r.busy_share:.1%} | {r.tail_s:.2f} "
              f"| {r.label_median_s:.3f} | {r.task_runs} ({r.batches} batches) |")
    print(f"\nCPU: cores busy on average during each campaign ({os.cpu_count()} in the machine)\n")
    print("| database | workers | flow (this process) | Prefect server | S3 | workers | machine |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        c = r.cores or {}
        print(f"| {r.database} | {r.workers} | {c.get('flow', 0):.2f} | {c.get('server', 0):.2f} "
              f"| {c.get('s3', 0):.2f} | {c.get('workers', 0):.2f} | {c.get('machine', 0):.2f} |")
    if plain:
        print(f"\n| 1 worker vs plain loop | wall s | vs plain | vs ideal {ideal_1:.1f} s |")
        print("|---|---|---|---|")
        print(f"| plain loop (stand-in, Pillow, JPEG, boto3) | {plain['wall_s']:.2f} | 1.000 "
              f"| {plain['wall_s'] / ideal_1:.3f} |")
        for r in runs:
            if r.workers == 1:
                print(f"| zpipe, 1 worker, {r.database} | {r.wall_s:.2f} | {r.wall_s / plain['wall_s']:.3f} "
                      f"({r.wall_s / plain['wall_s'] - 1:+.1%}) | {r.wall_s / ideal_1:.3f} |")
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--workers", type=ints, default=[1, 2, 4, 8], help="worker counts, e.g. 1,2,4,8")
    parser.add_argument("--images", type=int, default=224,
                        help="images per campaign (catalogue SKUs x formats x variants)")
    parser.add_argument("--latency", type=float, default=0.3, help="stand-in seconds per image")
    parser.add_argument("--databases", type=lambda t: t.split(","), default=["sqlite", "postgres"],
                        help="sqlite,postgres")
    parser.add_argument("--max-batch", type=int, default=4, help="engine.max_batch (images per hand-over)")
    parser.add_argument("--scale", type=float, default=0.25, help="preview scale (0.25: 1:1 is 256x256)")
    parser.add_argument("--qa", action="store_true", help="run the QA gate (OCR/NSFW) before publishing")
    parser.add_argument("--warmup", type=int, default=8,
                        help="images of a warm-up campaign per worker set (0: none)")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain-loop baseline")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    for db in args.databases:
        if db not in ("sqlite", "postgres"):
            parser.error(f"--databases: {db!r} is neither sqlite nor postgres")
    figures = bench(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
