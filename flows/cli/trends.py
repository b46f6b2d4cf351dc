"""`zpipe trends ...`: pull trend sources and print them ranked and filtered for a brand.

Registered in `flows/cli/app.py` with `app.add_typer(trends_app, name="trends")`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tasks.core.errors import ZpipeError

DEFAULT_SENSITIVE_TERMS = Path("configs/safety/sensitive-terms.txt")

trends_app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Trend sources: pull, merge near-duplicates, rank and filter for brand safety.",
)
console = Console()
err = Console(stderr=True)


@trends_app.callback()
def _trends() -> None:
    """Trend sources: pull, merge near-duplicates, rank and filter for brand safety."""


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code=2)


def _policy(brand: Path | None, blocklist: list[str], deny_topics: list[str]) -> tuple[str | None, Any]:
    """(brand slug, SafetyPolicy): the brand file's `safety:` plus the command-line terms."""
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from tasks.core.yamlio import from_validation_error, read_yaml
    from tasks.trends.ranking import SafetyPolicy

    class BrandSafety(BaseModel):  # just the two fields of a brand file that matter here
        model_config = ConfigDict(extra="ignore")

        slug: str | None = None
        safety: SafetyPolicy = Field(default_factory=SafetyPolicy)

    found = BrandSafety()
    if brand is not None:
        try:
            found = BrandSafety.model_validate(read_yaml(brand))
        except ValidationError as exc:
            raise from_validation_error(brand, exc) from None
    policy = found.safety.model_copy(update={
        "blocklist": [*found.safety.blocklist, *blocklist],
        "deny_topics": [*found.safety.deny_topics, *deny_topics],
    })
    return found.slug, policy


def ranked_to_json(ranked: Any) -> str:
    """The machine-readable form of a `RankedTrends` that `pull --json` prints."""
    trends = [{
        "rank": i,
        "score": s.score,
        "title": s.trend.title,
        "key": s.trend.key,
        "sources": s.sources,
        "tags": s.trend.tags,
        "published": s.trend.published.isoformat() if s.trend.published else None,
        "url": s.trend.url,
        "heat": s.trend.score,
        "variants": s.variants,
        "parts": s.parts.model_dump(),
    } for i, s in enumerate(ranked.kept, start=1)]
    return json.dumps({
        "trends": trends,
        "dropped": [{"title": d.trend.title, "source": d.trend.source, "rule": d.rule,
                     "reason": d.reason} for d in ranked.dropped],
        "failures": [f.model_dump() for f in ranked.failures],
        "notes": [n.model_dump() for n in ranked.notes],
    }, ensure_ascii=False, indent=2)


def _print_table(ranked: Any) -> None:
    table = Table(title=f"{len(ranked.kept)} trends")
    for column, justify in (("#", "right"), ("score", "right"), ("title", "left"),
                            ("sources", "left"), ("tags", "left"), ("published", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for i, scored in enumerate(ranked.kept, start=1):
        published = scored.trend.published
        table.add_row(str(i), f"{scored.score:.3f}", scored.trend.title, ", ".join(scored.sources),
                      ", ".join(scored.trend.tags),
                      f"{published:%Y-%m-%d %H:%M}" if published else "—")
    console.print(table)
    for dropped in ranked.dropped:
        err.print(f"[yellow]dropped[/] {dropped.trend.title}: {dropped.reason}", highlight=False)
    for note in ranked.notes:
        err.print(f"[dim]{note.source}: {note.message}[/]", highlight=False)


@trends_app.command()
def pull(
    sources: Annotated[list[Path], typer.Argument(help="trend source files (configs/sources/*.yaml)")],
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    brand: Annotated[Path | None, typer.Option(
        help="brand YAML whose `safety:` (blocklist, deny_topics) applies; its slug keys the "
             "history")] = None,
    blocklist: Annotated[list[str] | None, typer.Option(
        "--blocklist", help="a term to drop (repeatable; adds to the brand's)")] = None,
    deny_topic: Annotated[list[str] | None, typer.Option(
        "--deny-topic", help="a topic to drop (repeatable; adds to the brand's)")] = None,
    sensitive_terms: Annotated[Path | None, typer.Option(
        help=f"shared sensitive-terms list (default: {DEFAULT_SENSITIVE_TERMS} if present)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="print at most this many trends")] = 20,
    store: Annotated[str | None, typer.Option(
        help="file:///dir or s3://bucket/prefix: HTTP cache, and with --brand the reuse history")] = None,
    days: Annotated[float, typer.Option(min=0, help="skip trends the brand used within this many days")] = 14,
    now: Annotated[datetime | None, typer.Option(
        formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
        help="rank as of this time (default: now; naive times are UTC)")] = None,
) -> None:
    """Pull the sources and print the ranked, brand-safe trends; failed sources with their reason."""
    from tasks.trends.ranking import TrendHistory, load_sensitive_terms, rank_trends, source_weights
    from tasks.trends.sources import MemoryHttpCache, StoreHttpCache, ingest, load_source

    # 1. Configs first: a bad file stops here with exit code 2
    try:
        loaded = [load_source(path) for path in sources]
        slug, policy = _policy(brand, blocklist or [], deny_topic or [])
        terms_path = sensitive_terms
        if terms_path is None and DEFAULT_SENSITIVE_TERMS.is_file():
            terms_path = DEFAULT_SENSITIVE_TERMS
        terms = load_sensitive_terms(terms_path) if terms_path else []
        opened = None
        if store:
            from tasks.store.objects import open_store

            opened = open_store(store)
    except ZpipeError as exc:
        raise _fail(exc) from None
    if terms_path is None:
        err.print(f"[yellow]no shared sensitive-terms list[/] ({DEFAULT_SENSITIVE_TERMS} not found); "
                  "only the brand's terms apply", highlight=False)
    when = now or datetime.now(UTC)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)

    # 2. Ingest (failures are reported, never fatal), then rank for the brand
    try:
        cache = StoreHttpCache(opened) if opened else MemoryHttpCache()
        report = ingest(loaded, cache=cache)
        used = TrendHistory(opened).recent_keys(slug, days, when) if opened and slug else set()
    except ZpipeError as exc:
        raise _fail(exc) from None
    ranked = rank_trends(report, policy, used, sensitive_terms=terms, now=when,
                         weights=source_weights(loaded), limit=limit)

    # 3. Print
    if as_json:
        typer.echo(ranked_to_json(ranked))
    else:
        _print_table(ranked)
    for failure in ranked.failures:
        err.print(f"[yellow]trend source skipped:[/] {failure.source}: {failure.reason}", highlight=False)
    enabled = [s for s in loaded if s.enabled]
    if enabled and len(ranked.failures) == len(enabled):
        raise typer.Exit(code=1)  # every source failed: nothing to rank
