"""The one settings class: every ZPIPE_* variable declared once, read when needed, documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError
from tasks.core.settings import Environment, env_default, env_markdown, env_name, env_raw, env_value

REPO = Path(__file__).resolve().parents[3]
VARIABLE = re.compile(r"\bZPIPE_[A-Z0-9_]*[A-Z0-9]\b")
NOT_VARIABLES = {"ZPIPE_NS"}  # tasks.labels.watermark: an XMP namespace constant, not the environment


def _python_sources() -> list[Path]:
    return [p for folder in ("tasks", "flows", "zengine") for p in (REPO / folder).rglob("*.py")]


def test_every_variable_the_code_names_is_declared() -> None:
    declared = {env_name(field) for field in Environment.model_fields}
    named = {m for p in _python_sources() for m in VARIABLE.findall(p.read_text(encoding="utf-8"))}
    named -= NOT_VARIABLES
    prefixes = {"ZPIPE_WORKER_"}  # WorkerPolicy's error names the family
    assert {n for n in named if n not in declared and n + "_" not in prefixes} == set()


def test_nothing_but_the_settings_module_reads_zpipe_variables_from_os_environ() -> None:
    reads = re.compile(r"(os\.environ(\.get)?\(|os\.environ\[|getenv\()\s*[\"']ZPIPE_")
    offenders = [str(p.relative_to(REPO)) for p in _python_sources()
                 if reads.search(p.read_text(encoding="utf-8")) and p.name != "tiny.py"]
    assert offenders == []  # zengine/tiny.py reads ZPIPE_CACHE itself: the engine imports no zpipe


def test_readme_table_is_the_settings_table() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- env-table:start")
    body = readme[readme.index("\n", start) + 1:readme.index("<!-- env-table:end -->")].strip()
    assert body == env_markdown(), "regenerate it: zpipe config env --markdown"


def test_zpipe_config_env_prints_every_variable() -> None:
    out = subprocess.run([str(REPO / ".venv/bin/zpipe"), "config", "env", "--markdown"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    for field in Environment.model_fields:
        assert f"`{env_name(field)}`" in out


def test_every_variable_has_a_reason() -> None:
    assert all(info.description for info in Environment.model_fields.values())


def test_one_variable_is_validated_alone_and_named(monkeypatch) -> None:
    monkeypatch.setenv("ZPIPE_UPLOAD_PATIENCE_S", "soon")
    monkeypatch.setenv("ZPIPE_WORKER_POLL_S", "2")
    assert env_value("worker_poll_s") == 2.0  # a bad value elsewhere does not matter here
    with pytest.raises(ConfigError, match="ZPIPE_UPLOAD_PATIENCE_S"):
        env_value("upload_patience_s")


def test_unset_and_empty_are_the_default(monkeypatch) -> None:
    monkeypatch.setenv("ZPIPE_INTAKE_PER_MINUTE", "")
    assert env_raw("intake_per_minute") is None
    assert env_value("intake_per_minute") == env_default("intake_per_minute") == 120


def test_secrets_are_not_echoed(monkeypatch) -> None:
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET", "")
    monkeypatch.setenv("ZPIPE_C2PA_KEY_PEM", "x" * 5)
    assert env_value("c2pa_key_pem").get_secret_value() == "xxxxx"
    assert "xxxxx" not in repr(env_value("c2pa_key_pem"))


def test_unknown_variable_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="not a declared"):
        env_name("no_such_thing")
