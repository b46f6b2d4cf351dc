"""The `zpipe` command line: run a campaign, validate configs, generate one image."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.errors import ZpipeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="zpipe: brand calendars and trends in, labelled AI images in S3 out.")
console = Console()
err = Console(stderr=True)

QUIET_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
}


def _quiet_prefect(verbose: bool = False) -> None:
    """Offline-friendly Prefect defaults; run logs still reach the API (and the UI)."""
    for name, value in QUIET_PREFECT.items():
        os.environ.setdefault(name, value)
    if not verbose:  # keep the terminal for the progress bars
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="config YAML files")]) -> None:
    """Check config files; errors name the file, the field and the bad value (exit code 2)."""
    from tasks.config import load_config

    bad = 0
    for path in files:
        try:
            model = load_config(path)
        except ZpipeError as exc:
            err.print(f"[bold red]✗[/] {exc}", highlight=False)
            bad += 1
        else:
            console.print(f"[green]✓[/] {path} ({model.kind})", highlight=False)  # type: ignore[attr-defined]
    if bad:
        raise typer.Exit(code=2)


@app.command()
def run(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML, e.g. configs/campaigns/weekly-demo.yaml")],
    week: Annotated[str | None, typer.Option(help="ISO week, e.g. 2026-W48 (default: this week)")] = None,
    store: Annotated[str | None, typer.Option(help="file:///dir or s3://bucket/prefix")] = None,
    settings: Annotated[Path | None, typer.Option(
        help="settings YAML (default: configs/settings.yaml if present)")] = None,
    model: Annotated[str | None, typer.Option(
        help="override the model: tiny, a directory, or a hub id")] = None,
    revision: Annotated[str | None, typer.Option(help="hub revision to pin")] = None,
    scale: Annotated[float | None, typer.Option(help="preview scale of the size presets (0-1]")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's run logs")] = False,
) -> None:
    """Run one week of a campaign: trends -> prompts -> images -> labels -> store."""
    _quiet_prefect(verbose)
    from flows.campaign import weekly_campaign
    from tasks.config import load_campaign, load_settings, parse_week
    from tasks.progress import ProgressEvent, progress_sink
    from tasks.storage import open_store

    try:
        # fail fast with a clear message, before Prefect starts
        bundle = load_campaign(campaign)
        parse_week(week, datetime.now(ZoneInfo(bundle.campaign.timezone)).date())
        settings = settings or _default_settings()
        config = load_settings(settings)
        open_store(store or config.store)
        overrides = {k: v for k, v in {"model": model, "revision": revision,
                                       "preview_scale": scale}.items() if v is not None}
        engine = config.engine.model_copy(update=overrides)
        engine = type(engine).model_validate(engine.model_dump())
    except (ZpipeError, ValueError) as exc:
        raise _fail(exc) from None

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    started = time.perf_counter()
    with Progress(*columns, console=err, transient=False) as bars:
        images = bars.add_task("images", total=None)
        generated = bars.add_task("generated", total=None)

        def on_event(event: ProgressEvent) -> None:
            if event.kind == "planned":
                bars.update(images, total=event.total)
                bars.update(generated, total=event.total)
            elif event.kind == "skipped":
                bars.advance(images, event.count)
                bars.advance(generated, event.count)
            elif event.kind == "generated":
                bars.advance(generated, event.count)
            else:
                bars.advance(images, event.count)

        try:
            with progress_sink(on_event):
                summary = weekly_campaign(campaign=str(campaign), week=week, store=store,
                                          settings=str(settings) if settings else None,
                                          engine=engine)
        except ZpipeError as exc:
            raise _fail(exc) from None
        except RuntimeError as exc:
            err.print(f"[bold red]campaign failed:[/] {exc}", highlight=False)
            raise typer.Exit(code=1) from None

    table = Table(title=f"{summary.campaign} {summary.week}")
    for column in ("new", "already there", "failed", "store"):
        table.add_column(column)
    table.add_row(str(len(summary.created)), str(len(summary.existing)), str(len(summary.failed)),
                  summary.store)
    console.print(table)
    for failure in summary.trend_failures:
        err.print(f"[yellow]trend source skipped:[/] {failure}", highlight=False)
    console.print(f"{summary.planned} images in {time.perf_counter() - started:.1f} s")


def _default_settings() -> Path | None:
    path = Path("configs/settings.yaml")
    return path if path.is_file() else None


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="the prompt (Chinese or English)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="out.png / out.jpg / out.webp")],
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    format: Annotated[str, typer.Option("--format", help="1:1, 4:5, 3:4, 9:16 or 16:9")] = "1:1",
    brand: Annotated[Path | None, typer.Option(help="brand YAML for logo and labels")] = None,
    settings: Annotated[Path | None, typer.Option(help="settings YAML")] = None,
    scale: Annotated[float | None, typer.Option(help="preview scale (0-1]")] = None,
) -> None:
    """Generate one labelled image through the same engine and labels as a campaign."""
    from flows.single import generate_one

    try:
        result = generate_one(prompt, output, seed=seed, fmt=format, brand_path=brand,
                              settings_path=settings or _default_settings(), scale=scale)
    except (ZpipeError, ValueError) as exc:
        raise _fail(exc) from None
    console.print(f"wrote {output} ({result})", highlight=False)


if __name__ == "__main__":
    app()
