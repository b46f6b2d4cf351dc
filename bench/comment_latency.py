"""Benchmark: comment accepted -> labelled image in S3, through the whole local stack.

Starts `zpipe up` in a temporary home (real Prefect server, SeaweedFS, resident task worker,
`zpipe serve`, intake), posts N signed comments one after another, polls each status URL
until `done`, then stops the stack. For each comment it splits the wall time into the work
(generation on the worker + label, from the sidecar) and the rest (event -> trigger -> flow
run start, task hand-off to the worker, upload, ledger updates): the orchestration share.

    .venv/bin/python bench/comment_latency.py --n 20
"""

from __future__ import annotations

import argparse
import json
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

from flows.services.intake import post_comment

REPO = Path(__file__).resolve().parents[1]
ZPIPE = str(Path(sys.executable).parent / "zpipe")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--fast-path", choices=["on", "off", "both"], default="both",
                        help="the intake's hand-off to a resident worker (both: off, then on)")
    args = parser.parse_args()
    for mode in (["off", "on"] if args.fast_path == "both" else [args.fast_path]):
        measure(args.n, mode == "on")


def measure(n: int, fast_path: bool) -> None:
    """One stack, `n` sequential comments after a warm-up; prints the table."""
    home = Path(tempfile.mkdtemp(prefix="zpipe-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env["ZPIPE_INTAKE_FAST_PATH"] = "true" if fast_path else "false"
    run = lambda *a: subprocess.run([ZPIPE, *a, "--home", str(home)], cwd=REPO, env=env,  # noqa: E731
                                    capture_output=True, text=True, check=True)
    run("up", "--prefect-port", str(_port()), "--s3-port", str(_port()),
        "--intake-port", str(_port()))
    try:
        info = json.loads(run("status", "--json").stdout)
        secret = Path(info["intake_secret_file"]).read_text().strip()
        creds = json.loads(Path(info["s3_credentials_file"]).read_text())
        s3 = boto3.client("s3", endpoint_url=info["s3_endpoint_url"], region_name="us-east-1",
                          aws_access_key_id=creds["aws_access_key_id"],
                          aws_secret_access_key=creds["aws_secret_access_key"])
        totals, work, accept, by_worker = [], [], [], 0
        for i in range(n + 1):  # comment 0 warms up (first flow-run imports, jieba)
            comment = {"id": f"bench-{i}-{int(time.time())}", "author": f"user{i}", "brand": "demo",
                       "post_id": "p-1", "text": f"第{i}杯桂花拿铁真好喝 osmanthus latte #{i}"}
            started = time.perf_counter()
            answer = post_comment(info["intake_url"], secret, comment)
            accepted = time.perf_counter()
            answer.raise_for_status()
            url = info["intake_url"].rstrip("/") + answer.json()["status_url"]
            while (status := httpx.get(url, timeout=10).json())["state"] not in ("done", "failed"):
                time.sleep(0.05)
            done = time.perf_counter()
            if status["state"] != "done":
                raise SystemExit(f"comment failed: {status}")
            key = next(o["Key"] for o in s3.list_objects_v2(
                Bucket=info["bucket"], Prefix="demo/comments/")["Contents"]
                if comment["id"] in o["Key"] and o["Key"].endswith(".json"))
            timings = json.loads(s3.get_object(Bucket=info["bucket"], Key=key)["Body"].read())["timings"]
            if i == 0:
                continue
            by_worker += _answered_on_worker(info["prefect_api_url"], status["flow_run_id"])
            totals.append(done - accepted)
            accept.append(accepted - started)
            work.append(timings["batch_s"] + timings["encode_s"] + timings["label_s"])
    finally:
        run("down")
    share = [1 - w / t for w, t in zip(work, totals, strict=True)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU only, tiny model; "
          f"date {datetime.now(UTC):%Y-%m-%d}; n={n} sequential comments after 1 warm-up; "
          f"fast path {'on' if fast_path else 'off'}: {by_worker} of {n} answered on the resident worker")
    print("| measure | p50 | p95 |\n|---|---|---|")
    rows = [("POST accepted (202), ms", [a * 1000 for a in accept], "{:.0f}"),
            ("accepted -> image in S3 (status done), s", totals, "{:.2f}"),
            ("of which generation + label (sidecar), s", work, "{:.2f}"),
            ("orchestration share (event, trigger, flow start, hand-off, upload, ledger), %",
             [x * 100 for x in share], "{:.0f}")]
    for name, values, fmt in rows:
        print(f"| {name} | {fmt.format(statistics.median(values))} | {fmt.format(_pct(values, .95))} |")

def _answered_on_worker(api_url: str, flow_run_id: str | None) -> int:
    """1 when the run that answered was the fast path's: a flow run started inside the worker,
    not by the comment deployment's trigger."""
    if not flow_run_id:
        return 0
    run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=10).json()
    return int(run.get("deployment_id") is None)


if __name__ == "__main__":
    main()
