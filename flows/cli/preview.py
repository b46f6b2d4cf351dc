"""`zpipe prompts preview`: every prompt a campaign week would generate, without generating.

No model, no Prefect run, no network: trends come only from sources that are local files
(or none with --no-trends), ranked and filtered for the brand as a run does (safety, brand
fit; no reuse history), and each dropped trend is listed with its reason. Registered on the main CLI with
`app.add_typer(prompts_app, name="prompts")`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from tasks.core.errors import ZpipeError

prompts_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Prompt tools: see what a campaign would generate.")


@prompts_app.callback()
def _prompts() -> None:
    """Inspect a campaign's prompts; nothing is generated."""


def preview_week(campaign: Path, week: str | None, trends: bool = True,
                 settings: Path | None = None, today: datetime | None = None) -> dict[str, Any]:
    """The week's plan as plain data: one row per image, plus the slots that rules skipped."""
    from tasks.config.schema import load_campaign, load_settings, parse_week
    from tasks.content.plan import brand_fingerprint, plan_week_slots
    from tasks.store.keys import PENDING
    from tasks.trends.ranking import load_sensitive_terms, rank_trends, source_weights
    from tasks.trends.sources import ingest

    # 1. Campaign, week and settings (keys depend on the engine's model and sizes)
    bundle = load_campaign(campaign)
    now = today or datetime.now(ZoneInfo(bundle.campaign.timezone))
    week_label, monday = parse_week(week, now.date())
    if settings is None and Path("configs/settings.yaml").is_file():
        settings = Path("configs/settings.yaml")
    config = load_settings(settings)

    # 2. Trends from local files only (a preview never touches the network), ranked and
    #    filtered for the brand as a run does: one per day, the dropped ones with their reason
    sources = bundle.campaign.trends.sources if trends else []
    local = [s for s in sources if not s.is_http]
    report = ingest(local) if local else None
    found, dropped, note = [], [], None if trends else "trends ignored (--no-trends)"
    if report is not None:
        terms_path = bundle.campaign.trends.sensitive_terms
        ranked = rank_trends(report, bundle.brand.safety,
                             sensitive_terms=load_sensitive_terms(terms_path) if terms_path else [],
                             now=now, weights=source_weights(local))
        found = ranked.trends[:len(bundle.campaign.days)]
        dropped = [{"title": d.trend.title, "rule": d.rule, "reason": d.reason} for d in ranked.dropped]
        if not found and dropped:
            note = (f"none of the week's {len(dropped)} trends fits the brand (e.g. "
                    f"{dropped[0]['title']}: {dropped[0]['reason']}): the day follows its own theme")

    # 3. Plan exactly as a run would
    gated = bundle.campaign.approval == "required"
    plan = plan_week_slots(bundle, week_label, monday, found, config.engine, brand_fingerprint(bundle),
                           PENDING if gated else "", note)
    images = [{
        "day": job.weekday, "date": job.date.isoformat(), "format": job.format,
        "variant": job.variant, "template": job.prompt.template, "version": job.prompt.version,
        "festivals": job.festivals, "rules": job.rules, "variant_axes": job.variant_axes,
        "copy": job.copy_text, "headline_overlay": job.overlay_lines, "trend": job.trend,
        "trend_note": job.trend_note,
        "seed": job.seed, "size": [job.width, job.height], "key": job.key,
        "prompt": job.prompt.text, "sku": job.sku,
        "product": None if job.product is None else {
            "image": job.product.declared, "sha256": job.product.sha256,
            "box": list(job.product.box), "anchor": job.product.layout.anchor},
    } for job in plan.jobs]
    skipped = [{"day": s.weekday, "date": s.date.isoformat(), "format": s.format,
                "variant": s.variant, "rules": s.rules} for s in plan.skipped]
    return {
        "campaign": bundle.campaign.name, "week": week_label, "monday": monday.isoformat(),
        "language": bundle.campaign.language,
        "trends": {"used": len(found), "found": len(report.trends) if report else 0,
                   "dropped": dropped, "remote_sources_skipped": len(sources) - len(local),
                   "failures": [f"{f.source}: {f.reason}" for f in report.failures] if report else []},
        "images": images, "skipped": skipped,
        "catalogue_problems": [str(problem) for problem in plan.catalogue_problems],
    }


def _festival_names(festivals: list[dict[str, str]]) -> str:
    return ", ".join(f"{f['zh']} {f['en']}" for f in festivals)


@prompts_app.command()
def preview(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML, e.g. configs/campaigns/weekly-demo.yaml")],
    week: Annotated[str | None, typer.Option("--week", help="ISO week, e.g. 2027-W05 (default: this week)")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    no_trends: Annotated[bool, typer.Option("--no-trends", help="ignore the trend sources")] = False,
    settings: Annotated[Path | None, typer.Option(
        help="settings YAML, for keys and sizes (default: configs/settings.yaml if present)")] = None,
) -> None:
    """List every prompt a campaign week would generate (day, format, variant, template, prompt)."""
    err = Console(stderr=True)
    if not err.is_terminal:
        err = Console(stderr=True, width=200)  # piped: one line per dropped trend
    try:
        result = preview_week(campaign, week, trends=not no_trends, settings=settings)
    except ZpipeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from None

    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: keep each prompt on few lines
    table = Table(title=f"{result['campaign']} {result['week']}: {len(result['images'])} prompts",
                  show_lines=True)
    for column in ("day", "date", "format", "v", "template"):
        table.add_column(column, no_wrap=True)
    table.add_column("festival", max_width=24)
    table.add_column("rules", max_width=28)
    table.add_column("prompt", overflow="fold", ratio=1)
    for row in result["images"]:
        rules = ", ".join(row["rules"])
        if row["headline_overlay"]:
            rules += ("\n" if rules else "") + "overlay: " + " / ".join(row["headline_overlay"])
        if row["sku"]:
            rules += ("\n" if rules else "") + f"sku {row['sku']}"
        if row["product"]:
            x, y, w, h = row["product"]["box"]
            name = Path(row["product"]["image"]).name
            rules += ("\n" if rules else "") + f"product {name} {w}x{h} at {x},{y}"
        table.add_row(row["day"], row["date"], row["format"], str(row["variant"]),
                      f"{row['template']}@{row['version']}", _festival_names(row["festivals"]),
                      rules, row["prompt"])
    console.print(table)
    for row in result["skipped"]:
        console.print(f"skipped: {row['day']} {row['date']} {row['format']} v{row['variant']} "
                      f"(rule {row['rules'][-1]})", highlight=False)
    for line in result["catalogue_problems"]:
        err.print(f"[yellow]catalogue row left out:[/] {line}", highlight=False)
    trends = result["trends"]
    for row in trends["dropped"]:
        err.print(f"trend dropped: {row['title']} ({row['reason']})", highlight=False)
    notes = list(dict.fromkeys(row["trend_note"] for row in result["images"] if row["trend_note"]))
    for line in notes:
        err.print(f"no trend: {line}", highlight=False)
    note = f"{trends['used']} of {trends['found']} trends from local files used"
    if trends["remote_sources_skipped"]:
        note += f"; {trends['remote_sources_skipped']} remote sources not fetched in a preview"
    err.print(note, highlight=False)
    for failure in trends["failures"]:
        err.print(f"[yellow]trend source skipped:[/] {failure}", highlight=False)
