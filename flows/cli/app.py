"""The `zpipe` command line: run a campaign, validate configs, generate one image."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.core.errors import ZpipeError
from tasks.core.settings import QUIET_PREFECT

if TYPE_CHECKING:  # the flow module imports Prefect: only for the annotation
    from flows.campaign import CampaignSummary

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="zpipe: brand calendars and trends in, labelled AI images in S3 out.")
console = Console()
err = Console(stderr=True)

CLI_PREFECT = QUIET_PREFECT | {
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    # Without PREFECT_API_URL a run starts a temporary API server, migrating a new database on
    # first use; Prefect gives it 20 s, which a cold, loaded 2-core machine exceeds.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
}


# diffusers / transformers / huggingface_hub: no "Loading weights" bars or load warnings between
# zpipe's bars (zengine turns diffusers' own bars off when the hub's switch is on).
QUIET_MODEL_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}


def _quiet_prefect(verbose: bool = False) -> None:
    """Offline-friendly Prefect defaults; run logs still reach the API (and the UI)."""
    for name, value in CLI_PREFECT.items():
        os.environ.setdefault(name, value)
    if not verbose:  # keep the terminal for zpipe's own progress bars
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        for name, value in QUIET_MODEL_LIBRARIES.items():
            os.environ.setdefault(name, value)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="config YAML files")]) -> None:
    """Check config files; errors name the file, the field and the bad value (exit code 2)."""
    from rich.markup import escape

    from tasks.config.schema import load_config

    bad = 0
    for path in files:
        try:
            model = load_config(path)
        except ZpipeError as exc:  # the message quotes file values: never read them as markup
            err.print(f"[bold red]✗[/] {escape(str(exc))}", highlight=False)
            bad += 1
        else:
            console.print(f"[green]✓[/] {escape(str(path))} ({model.kind})",  # type: ignore[attr-defined]
                          highlight=False)
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
    from flows.campaign import finished_week, weekly_campaign
    from tasks.config.schema import load_campaign, load_settings, parse_week
    from tasks.core.progress import ProgressEvent, progress_sink
    from tasks.store.objects import open_store

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

    started = time.perf_counter()
    # A week an earlier run finished needs no Prefect API and no model: say so and stop.
    try:
        done = finished_week(str(campaign), week, store, str(settings) if settings else None, engine)
    except ZpipeError as exc:
        raise _fail(exc) from None
    if done is not None:
        _print_summary(done, started, note="nothing to do: every image of the week is in the store")
        return

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
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
            elif event.kind == "loaded":
                bars.console.print(event.detail, highlight=False)
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

    _print_summary(summary, started)


def _print_summary(summary: CampaignSummary, started: float, note: str = "") -> None:
    from tasks.store.objects import open_store

    table = Table(title=f"{summary.campaign} {summary.week}")
    for column in ("new", "already there", "failed", "from spool", "store"):
        table.add_column(column)
    table.add_row(str(len(summary.created)), str(len(summary.existing)), str(len(summary.failed)),
                  str(len(summary.from_spool)), summary.store)
    console.print(table)
    for failure in summary.trend_failures:
        err.print(f"[yellow]trend source skipped:[/] {failure}", highlight=False)
    for problem in summary.catalogue_problems:
        err.print(f"[yellow]catalogue row left out:[/] {problem}", highlight=False)
    console.print(f"{summary.planned} images in {time.perf_counter() - started:.1f} s"
                  + (f" ({note})" if note else ""), highlight=False)
    store = open_store(summary.store)
    if summary.contact_sheet:  # a local path opens in a browser; S3 gets a week-long link
        console.print(f"Look at them: {store.url(summary.contact_sheet, expires_s=7 * 24 * 3600)}",
                      highlight=False, soft_wrap=True)  # a URL must stay one line to be clicked
    console.print(f"Store: {store.describe()}", highlight=False, soft_wrap=True)
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if PREFECT_API_URL.value() and PREFECT_UI_URL.value():  # none for the temporary local API
        console.print(f"Runs, artifacts and logs: {PREFECT_UI_URL.value()}/runs", highlight=False)


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
    from flows.cli.single import generate_one

    try:
        result = generate_one(prompt, output, seed=seed, fmt=format, brand_path=brand,
                              settings_path=settings or _default_settings(), scale=scale)
    except (ZpipeError, ValueError) as exc:
        raise _fail(exc) from None
    console.print(f"wrote {output} ({result})", highlight=False)


@app.command()
def worker(
    settings: Annotated[Path | None, typer.Option(help="settings YAML (model, device)")] = None,
) -> None:
    """Run a resident generation task worker (one per GPU): loads the model once, serves batches."""
    _quiet_prefect(verbose=True)
    from flows.services.worker import run_worker
    from tasks.config.schema import load_settings

    try:
        config = load_settings(settings or _default_settings())
        err.print(f"worker: model {config.engine.model}, device {config.engine.device}",
                  highlight=False)
        run_worker(config)
    except ZpipeError as exc:
        raise _fail(exc) from None


@app.command()
def serve(
    campaigns: Annotated[Path, typer.Option(help="folder of campaign YAML files")] = Path(
        "configs/campaigns"),
    brands: Annotated[Path, typer.Option(help="folder of brand YAML files")] = Path("configs/brands"),
    settings: Annotated[Path | None, typer.Option(help="settings YAML")] = None,
    limit: Annotated[int, typer.Option(help="flow runs at once")] = 4,
) -> None:
    """Serve every deployment: campaign schedules, hourly trends, comment replies."""
    _quiet_prefect(verbose=True)
    from flows.deployments import serve_all

    try:
        serve_all(campaigns, brands, settings or _default_settings(), limit=limit)
    except ZpipeError as exc:
        raise _fail(exc) from None


@app.command()
def intake(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8787,
    brands: Annotated[Path, typer.Option(help="folder of brand YAML files")] = Path("configs/brands"),
    store: Annotated[str | None, typer.Option(help="store URL (default: settings)")] = None,
    settings: Annotated[Path | None, typer.Option(help="settings YAML")] = None,
) -> None:
    """Run the signed comment intake (HTTP): accepted comments trigger reply images."""
    _quiet_prefect(verbose=True)
    from flows.services.intake import serve as serve_intake
    from tasks.config.schema import load_settings
    from tasks.core.settings import env_value

    try:
        settings = settings or _default_settings()
        config = load_settings(settings)
        store_url = store or config.store
        # with resident workers, each accepted comment also goes straight to one (fast path)
        serve_intake(host=host, port=port, brands_dir=brands, store_url=store_url,
                     fast_path=config.generation == "workers" and env_value("intake_fast_path"),
                     settings=str(settings.resolve()) if settings else None)
    except ZpipeError as exc:
        raise _fail(exc) from None


def _register_subcommands() -> None:
    from flows.cli.comfy_import import import_app
    from flows.cli.config import config_app
    from flows.cli.held import held_app
    from flows.cli.preview import prompts_app
    from flows.cli.trends import trends_app
    from flows.cli.verify import provenance_app, verify_command
    from flows.cli.webhooks import webhooks_app
    from flows.services import stack

    app.command("up")(stack.up_command)
    app.command("status")(stack.status_command)
    app.command("down")(stack.down_command)
    app.add_typer(trends_app, name="trends", help="Pull, rank and filter trend sources.")
    app.add_typer(prompts_app, name="prompts", help="Preview the prompts a week would generate.")
    app.command("verify")(verify_command)
    app.add_typer(provenance_app, name="provenance", help="C2PA Content Credentials: dev certificates.")
    app.add_typer(import_app, name="import", help="Bring workflows from other tools (ComfyUI).")
    app.add_typer(config_app, name="config", help="zpipe's environment variables (`zpipe config env`).")
    app.add_typer(held_app, name="held", help="Images the QA gate held: list, release, delete.")
    app.add_typer(webhooks_app, name="webhooks", help="Outbound webhooks: the outbox, redelivery.")


_register_subcommands()

if __name__ == "__main__":
    app()
