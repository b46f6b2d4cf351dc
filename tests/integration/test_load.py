"""Load: a burst of 1,000 signed comments against the running intake, from a second process.

`bench/comment_load.py` runs as a subprocess against the shared `zpipe up` stack (see
tests/integration/test_always_on.py): many authors, re-sent ids, blocklisted texts, bad signatures and
invalid fields, 32 requests in flight. Every request must get an answer that the intake's
policy allows for it (none lost, no 5xx, no connection error), and once the reply flows have
finished every accepted comment has exactly one reply image in S3 and nothing else has one.
The stack's rate limits (`RATE_LIMITS`) keep the accepted comments few: that is the policy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import defaultdict

import httpx
import pytest
from test_always_on import RATE_LIMITS, REPO, release_stack, reply_images, shared_stack, wait_states

from flows.services.intake import load_intake_settings
from tasks.core.errors import ConfigError

REQUESTS = 1000


@pytest.fixture(scope="module")
def stack(request, zpipe_cache):
    """The shared `zpipe up` stack (started on first use, stopped after its last user)."""
    yield shared_stack(request, zpipe_cache)
    release_stack(request)


def _burst(stack, tmp_path, run_id: str) -> tuple[dict, list[dict]]:
    """Run the load generator in its own process; returns its summary and every request."""
    out = tmp_path / "burst.json"
    done = subprocess.run(
        [sys.executable, "bench/comment_load.py", "--home", str(stack.home), "--n", str(REQUESTS),
         "--concurrency", "32", "--authors", "200", "--run-id", run_id, "--json", str(out)],
        cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=150)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    return report["summary"], report["requests"]


def test_rate_limits_come_from_the_environment(monkeypatch):
    """How `zpipe up` (and this test's stack) sets the limits that bound a burst."""
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET", "a-secret-of-enough-length")
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET_FILE", raising=False)
    monkeypatch.setenv("ZPIPE_INTAKE_PER_MINUTE", "8")
    monkeypatch.setenv("ZPIPE_INTAKE_PER_AUTHOR_PER_MINUTE", "2")
    settings = load_intake_settings(REPO / "configs" / "brands", "file:///tmp/x")
    assert (settings.overall_per_minute, settings.per_author_per_minute) == (8, 2)
    monkeypatch.delenv("ZPIPE_INTAKE_PER_AUTHOR_PER_MINUTE")
    assert load_intake_settings(REPO / "configs" / "brands", "x").per_author_per_minute == 5
    for bad in ("0", "ten", "-3", "1.5"):
        monkeypatch.setenv("ZPIPE_INTAKE_PER_MINUTE", bad)
        with pytest.raises(ConfigError, match=f"ZPIPE_INTAKE_PER_MINUTE.*whole number.*got '{bad}'"):
            load_intake_settings(REPO / "configs" / "brands", "x")


@pytest.mark.slow
def test_burst_of_signed_comments_is_answered_by_policy_and_replied_once(stack, tmp_path):
    run_id = f"load-{uuid.uuid4().hex[:8]}"
    summary, sent = _burst(stack, tmp_path, run_id)

    # 1. None lost: one answer per request, no connection error, no 5xx
    assert len(sent) == REQUESTS
    assert [s for s in sent if s["error"] or s["status"] is None] == []
    assert [s for s in sent if s["status"] >= 500] == []

    # 2. Each answer is one the policy allows for that kind of request
    by_kind = defaultdict(list)
    for s in sent:
        by_kind[s["kind"]].append(s)
    assert {s["status"] for s in by_kind["bad_signature"]} == {401}
    assert {s["status"] for s in by_kind["invalid"]} == {422}
    for s in by_kind["valid"] + by_kind["duplicate"] + by_kind["blocked"]:
        assert s["status"] in (200, 202, 429), s
        if s["status"] == 429:
            assert int(s["retry_after"]) >= 1, s
        blocked = "blocked" in (s["kind"], s["of"])
        if s["status"] == 202:
            assert not blocked and s["state"] == "queued", s
        if s["status"] == 200:
            assert s["state"] == "rejected" if blocked else s["state"] in ("queued", "running", "done"), s

    # 3. At most one acceptance per comment id, and the rate limit holds (it moves per minute)
    accepted = [s["id"] for s in sent if s["status"] == 202]
    assert len(accepted) == len(set(accepted)) >= 1
    admitted = set(accepted) | {s["id"] for s in sent if s["state"] == "rejected"}
    minutes = 1 + int(summary["wall_s"] // 60)
    assert len(admitted) <= int(RATE_LIMITS["ZPIPE_INTAKE_PER_MINUTE"]) * minutes
    assert sum(s["status"] == 429 for s in sent) >= REQUESTS // 2
    # re-sends of accepted comments were answered 200 with the first one's state, not queued again
    assert any(s["status"] == 200 and s["id"] in accepted for s in sent)

    # 4. The ledger: accepted -> done; rejected stays rejected; refused ids were never recorded
    states = wait_states(stack.info, sorted(admitted), timeout=150)
    assert {i: states[i]["state"] for i in accepted} == dict.fromkeys(accepted, "done")
    assert all(states[i]["state"] == "rejected" for i in admitted - set(accepted))
    refused = sorted({s["id"] for s in sent if s["kind"] != "invalid"} - admitted)[:50]
    with httpx.Client(base_url=stack.info["intake_url"], timeout=10) as client:
        assert {client.get(f"/v1/comments/{i}").status_code for i in refused} == {404}

    # 5. Exactly one reply image per accepted comment, none for any other comment of the burst
    images = {i: keys for i, keys in reply_images(stack.info).items() if i.startswith(run_id + "-")}
    assert {i: len(keys) for i, keys in images.items()} == dict.fromkeys(accepted, 1)
    print(f"accepted {len(accepted)}, rejected {len(admitted) - len(accepted)}, "
          f"429 {sum(s['status'] == 429 for s in sent)}; p50 {summary['latency_ms']['p50']} ms, "
          f"p99 {summary['latency_ms']['p99']} ms, {summary['throughput_rps']} req/s")
