"""`zpipe verify` and `zpipe provenance ...`: check an image's labels; make a dev C2PA certificate.

Registered in `flows/cli/app.py` with `app.command("verify")(verify_command)` and
`app.add_typer(provenance_app, name="provenance")`. The checks live in `tasks.labels.verify`; this
module only fetches the bytes (a file, `s3://bucket/key`, or an http(s) URL) and prints.

Exit codes of `verify`: 0 every required label present and valid, 1 a check failed,
2 bad input (missing file or object, not an image, unreadable brand or trust file).
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import typer
from rich.console import Console
from rich.markup import escape

from tasks.core.errors import StoreError, ZpipeError

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # a labelled image is a few MB at most
console = Console()
err = Console(stderr=True)

provenance_app = typer.Typer(add_completion=False, no_args_is_help=True,
                             help="C2PA Content Credentials: local development certificates.")


def _say(text: str) -> None:
    """Print one line as is: no wrapping (paths and keys stay whole), no auto-highlighting."""
    console.print(text, highlight=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


# --- verify ------------------------------------------------------------------------------


def verify_command(
    target: Annotated[str, typer.Argument(help="image file, s3://bucket/key, or http(s) URL")],
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    brand: Annotated[Path | None, typer.Option(
        help="brand YAML: where its label goes, its producer id (default: the default label)")] = None,
    store: Annotated[str | None, typer.Option(
        help="store to resolve the watermark's content id to a key (default for s3:// "
             "targets: their bucket)")] = None,
    trust: Annotated[Path | None, typer.Option(
        help="PEM file of trusted CA certificates for C2PA (e.g. the dev-cert ca.pem)")] = None,
    require_c2pa: Annotated[bool, typer.Option(
        "--require-c2pa",
        help="fail unless C2PA Content Credentials are valid (trusted, with --trust)")] = False,
) -> None:
    """Check an image's AIGC labels: visible label, XMP, invisible watermark, C2PA."""
    from tasks.labels.verify import verify_bytes

    # 1. Inputs (any problem here is exit code 2, naming what was at fault)
    try:
        data, sidecar, default_store = _fetch(target)
        brand_config = _load_brand(brand) if brand is not None else None
        anchors = _read_file(trust, "--trust") if trust is not None else None
        object_store = _open_store(store) if store else default_store
        report = verify_bytes(data, brand=brand_config, store=object_store, trust_anchors=anchors,
                              require_c2pa=require_c2pa, sidecar=sidecar, target=target)
    except ZpipeError as exc:
        raise _fail(str(exc)) from None

    # 2. Report
    if json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_report(report)
    raise typer.Exit(code=0 if report.ok else 1)


def _fetch(target: str) -> tuple[bytes, dict[str, Any] | None, Any]:
    """(image bytes, its sidecar or None, the store it came from or None) for a target."""
    parts = urlsplit(target)
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # C:\\ is a path
    if scheme and Path(target).is_file():
        scheme = ""  # an existing file whose name looks like a URL
    if scheme == "s3":
        return _fetch_s3(target, parts.netloc, unquote(parts.path).lstrip("/"))
    if scheme in ("http", "https"):
        return _fetch_http(target), None, None
    if scheme == "file":
        target = unquote(parts.path)
    elif scheme:
        raise StoreError(f"{target}: unsupported target; use a file path, s3://bucket/key or an "
                         "http(s) URL")
    path = Path(target).expanduser()
    if not path.is_file():
        raise StoreError(f"{target}: no such file")
    data = _read_file(path, target)
    sidecar_path = path.with_name(path.name + ".json")
    sidecar = _parse_sidecar(sidecar_path.read_bytes()) if sidecar_path.is_file() else None
    return data, sidecar, None


def _fetch_s3(target: str, bucket: str, key: str) -> tuple[bytes, dict[str, Any] | None, Any]:
    from tasks.store.objects import S3Store

    if not bucket or not key:
        raise StoreError(f"{target}: use s3://bucket/key")
    bucket_store = S3Store(bucket)  # AWS_* from the environment, as for --store
    data = bucket_store.get(key)  # StoreError names the object when it is missing
    try:
        sidecar = _parse_sidecar(bucket_store.get(f"{key}.json"))
    except StoreError:
        sidecar = None  # no sidecar beside it: the brand spec says where the label is
    return data, sidecar, bucket_store


def _fetch_http(url: str) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=30, follow_redirects=True) as response:
            if response.status_code != 200:
                raise StoreError(f"{url}: HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise StoreError(f"{url}: larger than {MAX_DOWNLOAD_BYTES // 2**20} MB")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise StoreError(f"{url}: cannot download: {type(exc).__name__}: {exc}") from None
    return b"".join(chunks)


def _parse_sidecar(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = jsonlib.loads(raw)
    except ValueError:
        return None  # not a zpipe sidecar: ignore it rather than fail the image
    return doc if isinstance(doc, dict) and "labels" in doc else None


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _load_brand(path: Path) -> Any:
    from tasks.config.schema import load_brand

    return load_brand(path)


def _open_store(url: str) -> Any:
    from tasks.store.objects import open_store

    return open_store(url)


def _print_report(report: Any) -> None:
    _say(f"[bold]{escape(report.target)}[/]  {report.format.lower()} "
         f"{report.width}x{report.height}, {report.size_bytes / 1024:.1f} KB"
         + ("  (sidecar found)" if report.sidecar else ""))
    for name, check in report.sections().items():
        absent = getattr(check, "state", None) == "absent" and not check.required
        if check.status == "pass":
            mark = "[green]✓[/]"
        elif check.failed:
            mark = "[bold red]✗[/]"
        elif check.status == "fail" and not absent:
            mark = "[yellow]![/]"  # a problem in a check that is not required (e.g. invalid C2PA)
        else:
            mark = "[dim]-[/]"
        _say(f" {mark} {name:<9} {escape(check.summary())}")
        shown = check.messages[1:] if check.summary() == (check.messages or [None])[0] else check.messages
        if absent:
            shown = []  # "absent (not required)" says it all
        for message in shown:
            _say(f"     {escape(message)}")
    if report.ok:
        _say("[bold green]OK[/]: every required label is present and valid")
    else:
        _say(f"[bold red]FAIL[/]: {', '.join(report.failures())}")


# --- provenance dev-cert -----------------------------------------------------------------


@provenance_app.callback()
def _provenance() -> None:
    """C2PA Content Credentials: local development certificates."""


@provenance_app.command("dev-cert")
def dev_cert_command(
    directory: Annotated[Path, typer.Argument(help="folder for ca.pem, signer-chain.pem, signer-key.pem")],
    days: Annotated[int, typer.Option(help="validity of the signing certificate")] = 365,
    force: Annotated[bool, typer.Option("--force", help="replace existing files")] = False,
) -> None:
    """Make a local test CA and an ES256 signing certificate (for development, never production)."""
    from tasks.labels.provenance import ENV_CERT, ENV_KEY, make_dev_cert

    try:
        ca, chain, key = make_dev_cert(directory, days=days, overwrite=force)
    except ZpipeError as exc:
        raise _fail(str(exc)) from None
    _say(escape(f"trust anchor (CA):   {ca}\nsigning certificate: {chain}\n"
                f"private key (0600):  {key}\n\nSign with:\n"
                f"  export {ENV_CERT}={chain.resolve()} {ENV_KEY}={key.resolve()}\n"
                f"Verify with:\n  zpipe verify IMAGE --trust {ca.resolve()}"))
