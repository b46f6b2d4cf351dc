"""Every `ZPIPE_*` environment variable, declared once: type, default and why it exists.

`Environment` is the one list (`zpipe config env` prints it, the README's table is checked
against it). Readers ask for one variable when they need it, never at import time:
`env_value("spool")` validates that variable alone against its declared type and bounds, and a
bad value is a ConfigError naming the variable; `env_raw(...)` gives the text to readers that
check it with their own message. Secrets (S3 keys) stay with boto3's own `AWS_*` chain.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Field, SecretStr, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.errors import ConfigError

PREFIX = "ZPIPE_"

# Prefect settings zpipe's processes run with (offline, no nagging); not ZPIPE_* variables.
QUIET_PREFECT = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}


class Environment(BaseSettings):
    """zpipe's environment variables (all optional)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore",
                                      frozen=True)

    # -- where things are -----------------------------------------------------------------
    store: str | None = Field(
        default=None, description="overrides the settings file's `store` (file:///dir or s3://bucket/prefix)")
    generation: Literal["local", "workers"] | None = Field(
        default=None, description="overrides `generation`: local (in the flow) or workers (`zpipe worker`s)")
    cache: Path = Field(
        default=Path("~/.cache/zpipe"), description="the tiny model's cache, and the spool's last "
        "fallback (read by zengine.tiny, which imports nothing of zpipe)")
    home: Path = Field(
        default=Path(".zpipe"), description="the local stack's home: logs, data, generated secrets")
    database_url: str | None = Field(
        default=None, description="PostgreSQL for the stack's Prefect server (`zpipe up`); "
                                  "unset: SQLite. May hold a password: environment only")
    spool: Path | None = Field(
        default=None, description="finished images wait here through S3 outages; default "
        "$ZPIPE_HOME/spool, else $ZPIPE_CACHE/spool")
    font: Path | None = Field(
        default=None, description="a CJK font file for labels and headlines, when fc-match finds none")
    intake_url: str | None = Field(
        default=None, description="where the local stack's intake listens (written by `zpipe up` "
        "for clients; zpipe does not read it)")

    # -- publishing -------------------------------------------------------------------------
    upload_patience_s: float = Field(
        default=60.0, ge=0, le=86400, description="how long uploads retry: rides out an S3 restart")

    # -- the comment intake -------------------------------------------------------------------
    intake_secret: SecretStr | None = Field(
        default=None, description="HMAC key shared with comment senders (or use the _FILE form)")
    intake_secret_file: Path | None = Field(
        default=None, description="a file holding the intake secret (Kubernetes/Docker secrets)")
    intake_per_minute: int = Field(
        default=120, ge=1, description="comments the intake accepts a minute, overall")
    intake_per_author_per_minute: int = Field(
        default=5, ge=1, description="comments it accepts a minute from one author for one brand")
    intake_fast_path: bool = Field(
        default=True, description="with `generation: workers`, also hand each accepted comment "
                                  "straight to a resident worker (the event's flow run only if it is not "
                                  "answered within 60 s)")
    intake_max_queue: int = Field(
        default=200, ge=1, description="comment replies waiting or running before the intake "
                                       "answers 503 + Retry-After (back-pressure)")

    # -- C2PA Content Credentials (signing is off unless a certificate and key are set) -----
    c2pa_cert: Path | None = Field(default=None, description="certificate chain file (PEM)")
    c2pa_key: Path | None = Field(default=None, description="private key file (PEM)")
    c2pa_cert_pem: SecretStr | None = Field(
        default=None, description="the certificate chain itself, instead of a file")
    c2pa_key_pem: SecretStr | None = Field(
        default=None, description="the private key itself, instead of a file")
    c2pa_tsa_url: str | None = Field(
        default=None, description="an RFC 3161 time-stamp authority for signatures (needs network)")

    # -- resident GPU task workers (`zpipe worker`) and the flows that wait for them ---------
    worker_heartbeat_s: float = Field(default=5.0, gt=0, description="beat interval of a running batch")
    worker_stale_s: float = Field(
        default=60.0, gt=0, description="a batch's beat silent this long: its worker is gone, hand it over")
    worker_pickup_s: float = Field(
        default=60.0, gt=0, description="queued this long while others ran or workers idled: hand it over")
    worker_poll_s: float = Field(default=5.0, gt=0, description="how often a waiting flow looks")
    worker_max_handovers: int = Field(default=3, ge=0, description="hand-overs of one batch, then fail")
    worker_server_wait_s: float = Field(
        default=600.0, gt=0, description="wait this long for an unreachable Prefect API")
    worker_spool_drain_s: float = Field(
        default=60.0, gt=0, description="how often a worker uploads what its local spool holds "
                                        "(images S3 could not take when they were made)")


def env_name(field: str) -> str:
    """`upload_patience_s` -> `ZPIPE_UPLOAD_PATIENCE_S` (the field must be declared)."""
    if field not in Environment.model_fields:
        raise KeyError(f"{field!r} is not a declared ZPIPE_* variable (tasks.core.settings.Environment)")
    return PREFIX + field.upper()


def env_default(field: str) -> Any:
    """The declared default of one variable."""
    env_name(field)
    return Environment.model_fields[field].default


def env_raw(field: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's text as set, or None when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(env_name(field))
    return value or None


def env_value(field: str, environ: Mapping[str, str] | None = None) -> Any:
    """One variable, validated alone against its declared type and bounds; else its default."""
    raw = env_raw(field, environ)
    info = Environment.model_fields[field]
    if raw is None:
        return info.default
    try:
        kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        return TypeAdapter(kind).validate_python(raw.strip())
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        shown = None if "secret" in field or field.endswith("_pem") else raw
        raise ConfigError("environment", env_name(field), error["msg"], shown) from None


@dataclass(frozen=True)
class EnvVar:
    name: str
    type: str
    default: str
    reason: str


def _type_name(annotation: Any) -> str:
    """`Path | None` -> "path", `Literal["local", "workers"] | None` -> "local or workers"."""
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return " or ".join(str(arg) for arg in get_args(annotation))
    names = {Path: "path", str: "text", float: "number", int: "integer", SecretStr: "secret"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def env_table() -> list[EnvVar]:
    """Every variable in declaration order: name, type, default, one-line reason."""
    rows = []
    for field, info in Environment.model_fields.items():
        default = "" if info.default is None else str(info.default)
        rows.append(EnvVar(env_name(field), _type_name(info.annotation), default, info.description or ""))
    return rows


def env_markdown() -> str:
    """The table as Markdown (the README's environment table is exactly this)."""
    lines = ["| variable | type | default | what it is for |", "|---|---|---|---|"]
    lines += [f"| `{row.name}` | {row.type} | {f'`{row.default}`' if row.default else '—'} | {row.reason} |"
              for row in env_table()]
    return "\n".join(lines)
