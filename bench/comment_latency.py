"""Benchmark: comment accepted -> labelled image in S3, through the whole local stack.

Starts `zpipe up` in a temporary home (real Prefect server, SeaweedFS, resident task worker,
`zpipe serve`, intake), posts N signed comments one after another, polls each status URL
until `done` (every `POLL_S`), then stops the stack. "Done" is measured twice: when the poll
saw it, and when the reply recorded it (the ledger record's `updated_at`, stamped after the
upload: the image is in S3 by then); both against the wall clock of this machine, from the
moment the intake's 202 arrived. For each comment it splits the time into the work
(generation + label + QA gate, from the sidecar) and the rest (event -> trigger -> flow run
start, or hand-off to the worker; upload, ledger updates): the orchestration share, and the
pick-up into "accepted -> the answering run created" and "created -> running". Per comment
lines and the stack's home (its logs) go to stderr.

    .venv/bin/python bench/comment_latency.py --n 20 --fast-path both --database both
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/comment_latency.py`: the tests' database helper
    sys.path.insert(0, str(REPO))

from bench.scale import database  # noqa: E402 - after the repo is on sys.path
from flows.services.intake import post_comment  # noqa: E402
from tasks.store.keys import COMMENTS  # noqa: E402

POLL_S = 0.05  # between two status polls: at most this much of "status done" is the poll's
ZPIPE = str(Path(sys.executable).parent / "zpipe")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _utc_s(stamp: str | None) -> float:
    """An API or ledger timestamp as epoch seconds (NaN when missing)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else math.nan


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--fast-path", choices=["on", "off", "both"], default="both",
                        help="the intake's hand-off to a resident worker (both: off, then on)")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="sqlite",
                        help="the Prefect server's database (postgres: a database of its own on "
                             "127.0.0.1:5432, dropped after; both: SQLite, then PostgreSQL)")
    args = parser.parse_args()
    for db in (["sqlite", "postgres"] if args.database == "both" else [args.database]):
        for mode in (["off", "on"] if args.fast_path == "both" else [args.fast_path]):
            with database(db) as url:
                measure(args.n, mode == "on", url)


def measure(n: int, fast_path: bool, database_url: str | None = None) -> None:
    """One stack (its Prefect server on `database_url`, else SQLite), `n` sequential comments
    after a warm-up; prints the table."""
    home = Path(tempfile.mkdtemp(prefix="zpipe-bench-"))
    load_before = os.getloadavg()[0]
    # the caller's Prefect and AWS settings stay out, except the server's log of the 503s it
    # answers (PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true: "database is locked" on SQLite)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PREFECT_")) or k == "PREFECT_SERVER_LOG_RETRYABLE_ERRORS"}
    env["ZPIPE_INTAKE_FAST_PATH"] = "true" if fast_path else "false"
    run = lambda *a: subprocess.run([ZPIPE, *a, "--home", str(home)], cwd=REPO, env=env,  # noqa: E731
                                    capture_output=True, text=True, check=True)
    run("up", "--prefect-port", str(_port()), "--s3-port", str(_port()),
        "--intake-port", str(_port()), "--database-url", database_url or "sqlite")
    try:
        info = json.loads(run("status", "--json").stdout)
        secret = Path(info["intake_secret_file"]).read_text().strip()
        creds = json.loads(Path(info["s3_credentials_file"]).read_text())
        s3 = boto3.client("s3", endpoint_url=info["s3_endpoint_url"], region_name="us-east-1",
                          aws_access_key_id=creds["aws_access_key_id"],
                          aws_secret_access_key=creds["aws_secret_access_key"])
        totals, recorded, picked, work, accept, by_worker = [], [], [], [], [], 0
        created, waited = [], []
        event_runs: dict[str, int] = {}
        for i in range(n + 1):  # comment 0 warms up (first flow-run imports, jieba)
            comment = {"id": f"bench-{i}-{int(time.time())}", "author": f"user{i}", "brand": "demo",
                       "post_id": "p-1", "text": f"第{i}杯桂花拿铁真好喝 osmanthus latte #{i}"}
            started = time.perf_counter()
            answer = post_comment(info["intake_url"], secret, comment)
            accepted, accepted_at = time.perf_counter(), time.time()
            answer.raise_for_status()
            url = info["intake_url"].rstrip("/") + answer.json()["status_url"]
            while (status := httpx.get(url, timeout=10).json())["state"] not in ("done", "failed"):
                time.sleep(POLL_S)
            done = time.perf_counter()
            if status["state"] != "done":
                raise SystemExit(f"comment failed: {status}")
            record = json.loads(s3.get_object(Bucket=info["bucket"],
                                              Key=f"{COMMENTS}/{comment['id']}.json")["Body"].read())
            key = next(o["Key"] for o in s3.list_objects_v2(
                Bucket=info["bucket"], Prefix="demo/comments/")["Contents"]
                if comment["id"] in o["Key"] and o["Key"].endswith(".json"))
            sidecar = json.loads(s3.get_object(Bucket=info["bucket"], Key=key)["Body"].read())
            if i == 0:
                continue
            api = info["prefect_api_url"]
            on_worker, created_at, running_at = _answering_run(api, status["flow_run_id"])
            by_worker += on_worker
            created.append(created_at - accepted_at)
            waited.append(running_at - created_at)
            totals.append(done - accepted)
            recorded.append(_utc_s(record["updated_at"]) - accepted_at)
            print(f"{comment['id']}: 202 -> created {created[-1]:.2f} s, -> running {waited[-1]:.2f} s, "
                  f"-> recorded {recorded[-1]:.2f} s", file=sys.stderr)
            picked.append(running_at - accepted_at)
            accept.append(accepted - started)
            timings, qa = sidecar["timings"], (sidecar.get("qa") or {}).get("timings_s", {})
            work.append(timings["batch_s"] + timings["encode_s"] + timings["label_s"] + sum(qa.values()))
        time.sleep(8)  # let the last event's run end (or the fast path close it)
        for state in _event_run_fates(info["prefect_api_url"]):
            event_runs[state] = event_runs.get(state, 0) + 1
    finally:
        run("down")
        print(f"stack home (its logs): {home}", file=sys.stderr)
    share = [1 - w / t for w, t in zip(work, recorded, strict=True)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, tiny model; "
          f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; "
          f"Prefect on {'PostgreSQL' if database_url else 'SQLite'}; "
          f"n={n} sequential comments after 1 warm-up; fast path {'on' if fast_path else 'off'}: "
          f"{by_worker} of {n} answered on the resident worker; the events' runs: "
          + (", ".join(f"{count} {state}" for state, count in sorted(event_runs.items())) or "none"))
    print("| measure | p50 | p95 |\n|---|---|---|")
    rows = [("POST accepted (202), ms", [a * 1000 for a in accept], "{:.0f}"),
            ("accepted -> reply recorded done (ledger updated_at; image in S3), s", recorded, "{:.2f}"),
            (f"accepted -> status poll sees done (every {POLL_S:g} s), s", totals, "{:.2f}"),
            ("accepted -> the answering run is running (worker pick-up / flow start), s", picked, "{:.2f}"),
            ("of which accepted -> that run created (`.delay()` / event, trigger), s", created, "{:.2f}"),
            ("of which created -> running (server queue, worker, parameters read), s", waited, "{:.2f}"),
            ("of which generation + label + QA (sidecar), s", work, "{:.2f}"),
            ("orchestration share of the recorded time (hand-off or event, trigger, flow start; "
             "upload, ledger), %", [x * 100 for x in share], "{:.0f}")]
    for name, values, fmt in rows:
        print(f"| {name} | {fmt.format(statistics.median(values))} | {fmt.format(_pct(values, .95))} |")


def _answering_run(api_url: str, run_id: str | None) -> tuple[int, float, float]:
    """(1 if the fast path answered: a task run on the worker, or a flow run without a
    deployment started inside it; else 0, when that run was created and when it started
    running, as epoch seconds)."""
    if not run_id:
        return 0, math.nan, math.nan
    task_run = httpx.get(f"{api_url}/task_runs/{run_id}", timeout=10)
    if task_run.status_code == 200:
        run = task_run.json()
        return 1, _utc_s(run.get("created")), _utc_s(run.get("start_time"))
    run = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10).json()
    return int(run.get("deployment_id") is None), _utc_s(run.get("created")), _utc_s(run.get("start_time"))


def _event_run_fates(api_url: str) -> list[str]:
    """How each event-triggered comment-reply run ended: ran (found the comment answered, or
    answered it), or still waiting (scheduled, pending). With the fast path there should be
    none: the trigger makes one only for a comment not answered within 60 s."""
    runs = httpx.post(f"{api_url}/flow_runs/filter", timeout=30, json={
        "flows": {"name": {"any_": ["comment-reply"]}},
        "flow_runs": {"deployment_id": {"is_null_": False}}, "limit": 200}).json()
    return ["ran" if run["state_type"] == "COMPLETED" else run["state_type"].lower() for run in runs]


if __name__ == "__main__":
    main()
