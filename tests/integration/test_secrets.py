"""Secrets: the known S3 keys and intake secret never leak into logs, runs, artifacts or objects.

The shared `zpipe up` stack (tests/integration/test_always_on.py) got random, known secrets through the
environment, as a user sets them: `AWS_ACCESS_KEY_ID` (AKIA + 16), `AWS_SECRET_ACCESS_KEY`
(40 characters with `/` and `+`), `ZPIPE_INTAKE_SECRET`; SeaweedFS runs with those keys. This
test runs a campaign (`zpipe run` in the stack's environment) and a comment through it, then
scans every place a secret could end up:

* every file under the stack's home except `secrets/` (which holds them by design, mode 0600):
  the logs of all five processes (Prefect server, S3, worker, serve with its flow runs, intake),
  `stack.json`, pid files, the Prefect database, result storage and SeaweedFS's data;
* what `zpipe up`, `zpipe status --json` and `zpipe run` printed;
* through the Prefect API: flows, flow runs (parameters), task runs, logs, artifacts,
  deployments, automations, variables, block documents (secrets included), events;
* every stored object's bytes and metadata, read through S3: images, sidecars, ledger records.

A secret counts as leaked in any of these forms: raw, any 16-character piece of it,
URL-encoded (upper or lower case hex, `+` for space), JSON-escaped, base64 or URL-safe base64
at any of the three byte alignments inside a longer encoded text.

What counts as a secret: the S3 SECRET access key and the intake secret, always. The S3 access
key ID is an identifier, not a secret, in AWS's model: every SigV4 request sends it in clear,
and every presigned URL carries it as `X-Amz-Credential=<key id>/<date>/<region>/s3/aws4_request`
(the campaign's gallery artifact holds such URLs). It is therefore allowed right after
`X-Amz-Credential=` (or its URL-encoded `%3D`) and flagged anywhere else, in any form.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from test_always_on import (
    REPO,
    ZPIPE,
    KnownSecrets,
    _s3_client,
    list_keys,
    post_accepted,
    release_stack,
    reply_images,
    shared_stack,
    wait_states,
)

PIECE = 16  # a piece this long of a random secret cannot occur by chance
CREDENTIAL_PREFIXES = (b"x-amz-credential=", b"x-amz-credential%3d")  # compared case-folded


@pytest.fixture(scope="module")
def stack(request, zpipe_cache):
    """The shared `zpipe up` stack (started on first use, stopped after its last user)."""
    yield shared_stack(request, zpipe_cache)
    release_stack(request)


# -- the scanner ----------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    secret: str  # which secret, by role: never its value
    form: str
    data: bytes


def _base64_forms(value: bytes) -> Iterator[tuple[str, bytes]]:
    """The base64 characters that encode `value` at byte offsets 0, 1 and 2 of a longer text."""
    for shift in range(3):
        first = -(-8 * shift // 6)  # the first character made only of `value`'s bits
        last = 8 * (shift + len(value)) // 6  # one past the last such character
        for name, encode in (("base64", base64.b64encode), ("urlsafe-base64", base64.urlsafe_b64encode)):
            yield f"{name}@{shift}", encode(b"\0" * shift + value)[first:last]


def needles(role: str, value: str, pieces: bool) -> list[Needle]:
    """Every form of one secret that the scan looks for."""
    raw = value.encode()
    forms = {"raw": raw, "url-encoded": quote(value, safe="").encode(),
             "url-encoded-lower": quote(value, safe="").lower().encode(),
             "form-encoded": quote_plus(value, safe="").encode(),
             "json-escaped": json.dumps(value)[1:-1].replace("/", "\\/").encode(),
             **dict(_base64_forms(raw))}
    if pieces:
        forms.update({f"piece@{i}": raw[i:i + PIECE] for i in range(len(raw) - PIECE + 1)})
    unique: dict[bytes, str] = {}
    for form, data in forms.items():
        unique.setdefault(data, form)  # e.g. a key without / or + URL-encodes to itself: "raw"
    return [Needle(role, form, data) for data, form in unique.items()]


def all_needles(known: KnownSecrets) -> list[Needle]:
    return [*needles("S3 secret access key", known.secret_key, pieces=True),
            *needles("intake secret", known.intake_secret, pieces=True),
            *needles("S3 access key id", known.access_key, pieces=False)]


def _allowed(blob: bytes, at: int, needle: Needle) -> bool:
    """The access key id right after X-Amz-Credential= of a presigned URL is allowed."""
    if needle.secret != "S3 access key id" or needle.form != "raw":
        return False
    before = blob[max(0, at - 20):at].lower()
    return before.endswith(CREDENTIAL_PREFIXES)


def find_leaks(sources: dict[str, bytes], known: KnownSecrets) -> list[str]:
    """'<source>: <secret> as <form>' for every disallowed occurrence (values never shown)."""
    leaks = set()
    for needle in all_needles(known):
        for source, blob in sources.items():
            at = blob.find(needle.data)
            while at != -1:
                if not _allowed(blob, at, needle):
                    leaks.add(f"{source}: {needle.secret} as {needle.form.split('@')[0]}")
                    break
                at = blob.find(needle.data, at + 1)
    return sorted(leaks)


def test_scanner_finds_planted_secrets_in_every_form():
    """The scan can fail: each secret planted in each form is found; a presigned URL is not."""
    known = KnownSecrets.random()
    for role, value in (("S3 secret access key", known.secret_key), ("intake secret", known.intake_secret),
                        ("S3 access key id", known.access_key)):
        raw = value.encode()
        planted = {
            "raw": b"log line: key=" + raw + b" end",
            "piece": b"truncated ..." + raw[3:3 + PIECE + 2] + b"...",
            "url": b"GET /x?k=" + quote(value, safe="").encode() + b"&y=1",
            **{f"base64@{k}": base64.b64encode(b"ab"[:k] + b"{" + raw + b"}") for k in range(3)},
            "urlsafe-base64": base64.urlsafe_b64encode(b"\xff\xfe" + raw),
            "json": json.dumps({"k": value}).encode(),
        }
        if role == "S3 access key id":
            planted.pop("piece")  # an access key id is only looked for whole
        for form, blob in planted.items():
            leaks = find_leaks({"planted": blob}, known)
            assert [leak for leak in leaks if role in leak], (role, form)
    presigned = (f"https://s3.example/b/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
                 f"{known.access_key}%2F20261126%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=ab")
    assert find_leaks({"artifact": presigned.encode()}, known) == []
    encoded_twice = quote(presigned, safe="").encode()  # a presigned URL inside another URL
    assert find_leaks({"artifact": encoded_twice}, known) == []
    assert find_leaks({"log": f"access key {known.access_key}".encode()}, known) == \
        ["log: S3 access key id as raw"]


# -- what the stack stores and prints -------------------------------------------------


def collect_files(home: Path) -> dict[str, bytes]:
    """Every regular file under the stack's home but secrets/."""
    found = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home)
        if relative.parts[0] != "secrets" and path.is_file() and not path.is_symlink():
            found[f"file {relative}"] = path.read_bytes()
    return found


def _paged(client: httpx.Client, path: str, body: dict | None = None, limit: int = 200) -> list:
    """Every row of a Prefect `/filter` endpoint, page by page."""
    rows, offset = [], 0
    while True:
        page = client.post(path, json={**(body or {}), "limit": limit, "offset": offset})
        page.raise_for_status()
        rows.extend(page.json())
        if len(page.json()) < limit:
            return rows
        offset += limit


def collect_prefect(api_url: str) -> dict[str, bytes]:
    """Runs, parameters, logs, artifacts and the rest, as the Prefect API serves them."""
    found = {}
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=30) as client:
        for name in ("flows", "flow_runs", "task_runs", "logs", "artifacts", "deployments",
                     "automations", "variables", "work_pools"):
            found[f"prefect {name}"] = json.dumps(_paged(client, f"{name}/filter")).encode()
        blocks = client.post("block_documents/filter", json={"include_secrets": True})
        found["prefect block_documents"] = blocks.content
        events, page = [], client.post("events/filter", json={"limit": 50}).json()
        while True:
            events.extend(page["events"])
            if not page.get("next_page") or len(events) > 20_000:
                break
            page = client.get(page["next_page"]).json()
        found["prefect events"] = json.dumps(events).encode()
    return found


def collect_objects(info: dict) -> dict[str, bytes]:
    """Every object in the stack's bucket: its bytes, then its metadata and content type."""
    client = _s3_client(info)
    found = {}
    for key in list_keys(info):
        got = client.get_object(Bucket=info["bucket"], Key=key)
        head = json.dumps({"metadata": got.get("Metadata"), "type": got.get("ContentType")})
        found[f"s3 {key}"] = got["Body"].read() + b"\n" + head.encode()
    return found


def _stack_env(stack) -> dict[str, str]:
    """The environment `eval "$(zpipe status --env)"` gives a user's shell."""
    printed = subprocess.run([ZPIPE, "status", "--env", "--home", str(stack.home)], cwd=REPO,
                             env=stack.env, capture_output=True, text=True, timeout=60, check=True)
    env = dict(stack.env)
    for line in printed.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


def _run_campaign(stack, tmp_path: Path) -> subprocess.CompletedProcess:
    """A one-image campaign through the stack: its worker, its Prefect server, its S3."""
    campaign = tmp_path / "secrets-check.yaml"
    campaign.write_text(textwrap.dedent(f"""\
        kind: campaign
        name: secrets-check
        brand: {REPO}/configs/brands/demo.yaml
        prompts: {REPO}/configs/prompts/library.yaml
        template: daily-poster
        formats: ["1:1"]
        trends: {{sensitive_terms: {REPO}/configs/safety/sensitive-terms.txt}}
        days:
          mon: {{zh: 周一早晨的第一杯手冲咖啡, en: the first pour-over coffee of Monday morning}}
        """), encoding="utf-8")
    return subprocess.run([ZPIPE, "run", str(campaign), "--week", "2026-W48",
                           "--store", f"s3://{stack.info['bucket']}"],
                          cwd=REPO, env=_stack_env(stack), capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_no_secret_in_logs_runs_artifacts_or_objects(stack, tmp_path):
    info, known = stack.info, stack.secrets
    # 1. A comment and a campaign (at the same time), with the secrets from the environment
    comment_id = f"c-secrets-{uuid.uuid4().hex[:8]}"
    answer = post_accepted(info, known.intake_secret, {
        "id": comment_id, "author": "secrets-check", "post_id": "p-secrets", "brand": "demo",
        "text": "想要一杯桂花拿铁 osmanthus latte"})
    assert answer.status_code == 202, answer.text
    campaign = _run_campaign(stack, tmp_path)
    assert campaign.returncode == 0, campaign.stdout + campaign.stderr
    assert wait_states(info, [comment_id], timeout=120)[comment_id]["state"] == "done"

    # 2. The file scan can fail: a planted secret in a log is found, by file name
    planted = stack.home / "logs" / "zz-planted.log"
    planted.write_bytes(b"token " + base64.b64encode(b"x" + known.secret_key.encode()))
    try:
        assert find_leaks(collect_files(stack.home), known) == \
            ["file logs/zz-planted.log: S3 secret access key as base64"]
    finally:
        planted.unlink()

    # 3. Everything a secret could reach, and proof that each part was really read
    sources = {**collect_files(stack.home), **collect_prefect(info["prefect_api_url"]),
               **collect_objects(info),
               **{f"printed {i}": text.encode() for i, text in
                  enumerate([*stack.outputs, campaign.stdout, campaign.stderr])}}
    for process in ("prefect-server", "s3", "worker", "serve", "intake"):
        assert sources[f"file logs/{process}.log"], process
    # the reply's run and parameters: the fast path's task run on the worker, or the fallback flow run
    assert comment_id.encode() in sources["prefect task_runs"] + sources["prefect flow_runs"]
    assert b"secrets-check" in sources["prefect flow_runs"]  # the campaign's run
    # the reply's own log lines were read: the resident worker's (the fast path answers there)
    # or, when the event's fallback run answered, serve's
    assert comment_id.encode() in sources["file logs/worker.log"] + sources["file logs/serve.log"]
    assert json.loads(sources["prefect logs"]) and json.loads(sources["prefect task_runs"])
    credential = b"X-Amz-Credential=" + known.access_key.encode()
    assert credential in sources["prefect artifacts"]  # gallery URLs: the allowed key id was seen
    assert f"s3 _comments/{comment_id}.json" in sources
    reply = reply_images(info)[comment_id][0]
    assert f"s3 {reply}" in sources and f"s3 {reply}.json" in sources
    assert any(k.startswith("s3 demo/secrets-check/") and k.endswith(".jpg") for k in sources)

    # 4. No secret anywhere, in any form
    assert find_leaks(sources, known) == []
    print(f"scanned {len(sources)} sources, {sum(map(len, sources.values())) / 1e6:.1f} MB: no secret")
