"""Benchmark: a burst of signed comments against a running intake, sent from this process.

Reads the intake URL, its secret file and the brand folder from `zpipe status --json` (a
running `zpipe up` stack), builds N comments — many authors, some re-sent ids, some
blocklisted texts, some bad signatures, some invalid fields — signs them all first, then
sends them at once over loopback with bounded concurrency (httpx async, one client and
connection per sender). Prints how every request was answered, the intake's latency
(p50/p90/p99, and p99 per answer), throughput, and the CPU the intake and the client used.

    ZPIPE_INTAKE_PER_MINUTE=8 ZPIPE_INTAKE_PER_AUTHOR_PER_MINUTE=2 .venv/bin/zpipe up
    .venv/bin/python bench/comment_load.py --n 1000 --concurrency 32 --authors 200

The stack's rate limits decide how many comments are accepted (202) and how many are
refused with 429 + Retry-After: `ZPIPE_INTAKE_PER_MINUTE` and
`ZPIPE_INTAKE_PER_AUTHOR_PER_MINUTE` in the environment of `zpipe up`. `--json PATH` writes
every request and its answer (no secrets) for tests to check against the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from flows.services.intake import load_brands
from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

ZPIPE = str(Path(sys.executable).parent / "zpipe")
WRONG_SECRET = b"not-the-intake-secret-0123456789"  # signs the bad-signature requests
KINDS = ("valid", "duplicate", "blocked", "bad_signature", "invalid")
TEXTS = ("想要一杯桂花拿铁，秋天的味道！", "周末去露营，带上手冲咖啡 camping coffee",
         "雨天窗边的热可可 hot cocoa please", "燕麦拿铁配早午餐 oat latte brunch",
         "冰美式和城市夕阳 iced americano sunset")


@dataclass
class Sent:
    """One request of the burst and how the intake answered it (never the secret)."""

    i: int
    kind: str
    id: str
    author: str
    of: str | None = None  # a duplicate's original kind: valid or blocked
    status: int | None = None
    state: str | None = None
    retry_after: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    body: bytes = field(default=b"", repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def stack_info(home: str | None) -> dict:
    """`zpipe status --json` of the running stack; exits with the reason when it is not healthy."""
    argv = [ZPIPE, "status", "--json", *(["--home", home] if home else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    try:
        info = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.stdout.strip()}; "
                         "start the stack with `zpipe up`") from None
    intake = info["processes"].get("intake", {})
    if intake.get("state") != "running":
        raise SystemExit(f"the intake of the stack at {info['home']} is {intake.get('state')}: "
                         "run `zpipe up` (see `zpipe status`)")
    return info


def plan(n: int, authors: int, brand: str, blocked_terms: list[str], shares: dict[str, float],
         run_id: str, seed: int) -> list[Sent]:
    """N requests in random order. Re-sends repeat one of the first 60 comments (a platform
    retrying its first deliveries) within 30 requests of it, racing the first copy."""
    rng = random.Random(seed)
    counts = {kind: round(n * shares[kind]) for kind in KINDS if kind != "valid"}
    counts["valid"] = n - sum(counts.values())
    if counts["valid"] < 1:
        raise SystemExit(f"the shares {shares} leave no valid comment: lower them")
    if counts["blocked"] and not blocked_terms:
        raise SystemExit(f"brand {brand!r} has no replies.blocklist: pass --blocked 0")
    requests: list[Sent] = []
    for kind in ("valid", "blocked", "bad_signature", "invalid"):
        for k in range(counts[kind]):
            cid = f"{run_id}-{kind[:3]}-{k}"
            author = f"user-{rng.randrange(authors)}"
            requests.append(Sent(len(requests), kind, cid, author))
    rng.shuffle(requests)
    early = [s for s in requests if s.kind in ("valid", "blocked")][:60]
    for _ in range(counts["duplicate"]):
        resent = rng.choice(early)
        first = next(i for i, sent in enumerate(requests) if sent is resent)
        requests.insert(first + rng.randint(1, 30),
                        Sent(0, "duplicate", resent.id, resent.author, of=resent.kind))
    for i, sent in enumerate(requests):
        sent.i = i
    return requests


def sign_all(requests: list[Sent], secret: bytes, brand: str, blocked_terms: list[str],
             seed: int) -> None:
    """Bodies and signatures, made before the burst so that sending measures only the intake."""
    rng = random.Random(seed + 1)
    now = int(time.time())
    copies: Counter[str] = Counter()
    texts: dict[str, str] = {}
    for sent in requests:
        if sent.id not in texts:
            text = rng.choice(TEXTS) + f" #{sent.id}"
            if "blocked" in (sent.kind, sent.of):
                text = f"{rng.choice(blocked_terms)} {text}"
            texts[sent.id] = text
        comment = {"id": sent.id if sent.kind != "invalid" else f"{sent.id} has spaces",
                   "author": sent.author, "text": texts[sent.id], "post_id": "p-load", "brand": brand}
        sent.body = json.dumps(comment, ensure_ascii=False).encode()
        # a re-sent comment has the same body: an older timestamp keeps its signature unique
        stamp = str(now - copies[sent.id])
        copies[sent.id] += 1
        key = WRONG_SECRET if sent.kind == "bad_signature" else secret
        sent.headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                        SIGNATURE_HEADER: sign(key, stamp, sent.body)}


async def burst(url: str, requests: list[Sent], concurrency: int, timeout_s: float,
                client: str = "aiohttp") -> float:
    """Send every request, at most `concurrency` at a time; returns the wall time in seconds.

    Each of the `concurrency` senders has its own keep-alive connection (like a platform's
    webhook workers), opened before the timed burst. The client shares this machine's cores
    with the intake, so its own CPU shows up as the intake's latency: httpx (`--client
    httpx`) spends ~1.8 ms of CPU per request, aiohttp (the default) ~0.5 ms (2 cores,
    2026-12-07). One httpx client pooling 32 connections spent 3.1 ms and gave p99 570-880 ms
    against a server that only answers a fixed 429 (encode/httpx#3215).
    """
    endpoint = url.rstrip("/") + "/v1/comments"
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    for sent in requests:
        queue.put_nowait(sent)
    send = _aiohttp_sender if client == "aiohttp" else _httpx_sender
    async with send(url, concurrency, timeout_s) as (post, warm):
        async def worker(i: int) -> None:
            while not queue.empty():
                sent = queue.get_nowait()
                started = time.perf_counter()
                try:
                    sent.status, sent.retry_after, sent.state = await post(i, endpoint, sent)
                except (TimeoutError, httpx.HTTPError, OSError) as exc:  # aiohttp's are OSErrors
                    sent.error = f"{type(exc).__name__}: {exc}"
                finally:
                    sent.latency_ms = (time.perf_counter() - started) * 1000

        # each sender opens its connection first (GET /healthz): the burst times the intake's
        # answers, not 32 clients setting up at once (the first 32 answers measured 250-750 ms
        # without this, the next ones ~40 ms)
        await asyncio.gather(*(warm(i, url.rstrip("/") + "/healthz") for i in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return time.perf_counter() - started


Answer = tuple[int, str | None, str | None]  # status, Retry-After, state


@contextlib.asynccontextmanager
async def _httpx_sender(url: str, concurrency: int, timeout_s: float) -> AsyncIterator[tuple]:
    """A `httpx.AsyncClient` with one connection per sender."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=timeout_s))
                   for _ in range(concurrency)]

        async def post(i: int, endpoint: str, sent: Sent) -> Answer:
            answer = await clients[i].post(endpoint, content=sent.body, headers=sent.headers)
            state = (answer.json().get("state")
                     if answer.headers.get("content-type", "").startswith("application/json") else None)
            return answer.status_code, answer.headers.get("retry-after"), state

        async def warm(i: int, health: str) -> None:
            await clients[i].get(health)

        yield post, warm


@contextlib.asynccontextmanager
async def _aiohttp_sender(url: str, concurrency: int, timeout_s: float) -> AsyncIterator[tuple]:
    """An `aiohttp.ClientSession` per sender, each with one keep-alive connection."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=timeout)) for _ in range(concurrency)]

        async def post(i: int, endpoint: str, sent: Sent) -> Answer:
            async with sessions[i].post(endpoint, data=sent.body, headers=sent.headers) as answer:
                body = await answer.read()
                state = (json.loads(body).get("state")
                         if answer.content_type == "application/json" else None)
                return answer.status, answer.headers.get("Retry-After"), state

        async def warm(i: int, health: str) -> None:
            async with sessions[i].get(health) as answer:
                await answer.read()

        yield post, warm


def _pct(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (q=0.99 of 1000 values: the 990th)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def summarize(requests: list[Sent], wall_s: float) -> dict:
    """Counts per kind and answer, latency quantiles and throughput."""
    latencies = [s.latency_ms for s in requests if s.latency_ms is not None and s.error is None]
    answers = Counter((s.kind, "error" if s.error else f"{s.status} {s.state or ''}".strip())
                      for s in requests)
    return {
        "requests": len(requests), "answered": sum(s.status is not None for s in requests),
        "errors": sum(s.error is not None for s in requests),
        "server_errors": sum((s.status or 0) >= 500 for s in requests),
        "wall_s": round(wall_s, 3), "throughput_rps": round(len(requests) / wall_s, 1),
        "latency_ms": {name: round(_pct(latencies, q), 1) for name, q in
                       (("p50", .5), ("p90", .9), ("p99", .99), ("max", 1.0))} if latencies else {},
        "latency_ms_by_status": {str(code): round(statistics.median(values), 1) for code, values in
                                 _by_status(requests).items()},
        "latency_p99_ms_by_status": {str(code): round(_pct(values, .99), 1) for code, values in
                                     _by_status(requests).items()},
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "answers": [{"kind": kind, "answer": answer, "count": count}
                    for (kind, answer), count in sorted(answers.items())],
    }


def _by_status(requests: list[Sent]) -> dict[int, list[float]]:
    groups: dict[int, list[float]] = {}
    for s in requests:
        if s.status is not None and s.latency_ms is not None:
            groups.setdefault(s.status, []).append(s.latency_ms)
    return dict(sorted(groups.items()))


def print_table(summary: dict, args: argparse.Namespace) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; date {datetime.now(UTC):%Y-%m-%d}; "
          f"{summary['requests']} requests, concurrency {args.concurrency}, {args.authors} authors, "
          f"{args.client} client, "
          "client and stack on one machine (loopback)")
    print("\n| kind | answer | count |\n|---|---|---|")
    for row in summary["answers"]:
        print(f"| {row['kind']} | {row['answer']} | {row['count']} |")
    lat = summary["latency_ms"]
    print("\n| answered | errors | 5xx | wall s | throughput req/s | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {summary['answered']} | {summary['errors']} | {summary['server_errors']} | "
          f"{summary['wall_s']} | {summary['throughput_rps']} | {lat.get('p50')} | {lat.get('p90')} | "
          f"{lat.get('p99')} | {lat.get('max')} |")
    p99 = summary["latency_p99_ms_by_status"]
    by_status = ", ".join(f"{code}: {ms} ms (p99 {p99[code]} ms)"
                          for code, ms in summary["latency_ms_by_status"].items())
    print(f"\nmedian latency by answer: {by_status}")
    print("load average after the burst (1, 5, 15 min): " + ", ".join(map(str, summary["load_average"])))
    if "cpu_s" in summary:
        print(f"CPU during the burst: intake {summary['cpu_s']['intake']} s, "
              f"this client {summary['cpu_s']['client']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="stack home (default: $ZPIPE_HOME, else ./.zpipe)")
    parser.add_argument("--n", type=int, default=1000, help="requests in the burst")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    parser.add_argument("--authors", type=int, default=200, help="distinct comment authors")
    parser.add_argument("--brand", default="demo")
    for kind, share in (("duplicate", 0.1), ("blocked", 0.05), ("bad_signature", 0.05), ("invalid", 0.02)):
        parser.add_argument(f"--{kind.replace('_', '-')}", type=float, default=share, dest=kind,
                            help=f"share of {kind.replace('_', ' ')} requests (default {share})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-id", default=f"load-{int(time.time())}", help="prefix of comment ids")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                        help="the senders' HTTP client (see `burst`: its CPU is on these cores too)")
    parser.add_argument("--json", type=Path, help="write every request's answer and the summary here")
    args = parser.parse_args()
    if args.n < 1 or args.concurrency < 1 or args.authors < 1:
        parser.error("--n, --concurrency and --authors must be at least 1")

    info = stack_info(args.home)
    secret = Path(info["intake_secret_file"]).read_text(encoding="utf-8").strip().encode()
    brand = load_brands(Path(info["brands"])).get(args.brand)
    if brand is None:
        raise SystemExit(f"the intake serves no brand {args.brand!r}; see {info['brands']}")
    terms = list(brand.replies.blocklist)
    shares = {kind: getattr(args, kind) for kind in KINDS if kind != "valid"}
    requests = plan(args.n, args.authors, args.brand, terms, shares, args.run_id, args.seed)
    sign_all(requests, secret, args.brand, terms, args.seed)
    intake = psutil.Process(info["processes"]["intake"]["pid"])
    cpu_before = (sum(intake.cpu_times()[:2]), time.process_time())
    wall_s = asyncio.run(burst(info["intake_url"], requests, args.concurrency, args.timeout, args.client))
    summary = summarize(requests, wall_s)
    # where the CPU went: the intake's process, and this client (on the same cores)
    summary["cpu_s"] = {"intake": round(sum(intake.cpu_times()[:2]) - cpu_before[0], 2),
                        "client": round(time.process_time() - cpu_before[1], 2)}
    print_table(summary, args)
    if args.json:
        records = [{k: v for k, v in asdict(s).items() if k not in ("body", "headers")} for s in requests]
        args.json.write_text(json.dumps({"summary": summary, "requests": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
