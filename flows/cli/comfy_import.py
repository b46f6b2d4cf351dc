"""`zpipe import comfyui WORKFLOW.json`: a ComfyUI workflow -> a prompt template and settings.

Registered in `flows/cli/app.py` with `app.add_typer(import_app, name="import")`. The translation
lives in `tasks.content.comfyui`; this module only prints the report and writes the files.

Exit codes: 0 files written (with --allow-partial, refused nodes were dropped and are listed),
2 the workflow holds nodes zpipe cannot honour (nothing written; the report says which), the
file is malformed, or the output files exist (without --force).
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks.core.errors import ZpipeError

import_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Bring workflows from other tools (ComfyUI).")
console = Console()
err = Console(stderr=True)

_STYLE = {"info": "green", "warning": "yellow", "refused": "bold red"}
MAX_SHOWN = 40  # characters of a value in the table (the JSON report has them whole)


@import_app.callback()
def _import() -> None:
    """Translate other tools' workflows into zpipe configs; nothing in them is run."""


def _shown(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _print_report(report: list[Any], title: str) -> None:
    table = Table(title=title, show_lines=False, expand=True)
    table.add_column("node", no_wrap=True)
    table.add_column("class", overflow="fold")
    table.add_column("field", overflow="fold")
    table.add_column("value", overflow="fold", max_width=MAX_SHOWN // 2)
    table.add_column("zpipe", overflow="fold", ratio=1, min_width=30)
    table.add_column("severity", no_wrap=True)
    for t in report:
        style = _STYLE[t.severity]
        table.add_row(escape(t.node), escape(t.class_type), escape(t.field), escape(_shown(t.value)),
                      escape(t.zpipe), f"[{style}]{t.severity}[/]")
    console.print(table)


@import_app.command("comfyui")
def comfyui_command(
    workflow: Annotated[Path, typer.Argument(help="ComfyUI workflow JSON (UI/save or API format)")],
    out: Annotated[Path, typer.Option("--out", help="directory for prompts.yaml and settings.yaml")],
    name: Annotated[str | None, typer.Option(
        help="template name (default: from the file name, e.g. image-z-image-turbo)")] = None,
    model: Annotated[str, typer.Option(
        help="engine.model to write: tiny, a local diffusers folder, or a hub id")] = "tiny",
    revision: Annotated[str | None, typer.Option(help="hub revision to pin (for a hub id)")] = None,
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="drop the nodes zpipe cannot honour instead of failing")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files in --out")] = False,
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Import a ComfyUI workflow: a prompt template and engine settings, each value explained."""
    from tasks.content.comfyui import ComfyUIRefused, import_workflow, write_import

    result = None
    try:
        result = import_workflow(workflow, allow_partial=allow_partial, name=name, model=model,
                                 revision=revision)
        files = write_import(result, out, force=force)
    except ComfyUIRefused as exc:
        _finish(json, exc.report, None, str(exc), workflow)
    except (ZpipeError, ValueError) as exc:
        _finish(json, result.report if result else [], None, str(exc), workflow)
    else:
        _finish(json, result.report, {"files": [str(p) for p in files], "template": result.template_name,
                                      "format": result.format, "brand_loras": result.brand_loras},
                None, workflow)


def _finish(as_json: bool, report: list[Any], done: dict[str, Any] | None, error: str | None,
            workflow: Path) -> None:
    dropped = [t for t in report if t.severity == "refused"]
    if as_json:
        payload = {"ok": error is None, "workflow": str(workflow), "error": error,
                   "report": [t.model_dump(mode="json") for t in report], **(done or {})}
        console.print_json(jsonlib.dumps(payload, ensure_ascii=False, default=str))
    else:
        if report:
            _print_report(report, f"ComfyUI import: {workflow.name}")
        if error is not None:
            err.print(f"[bold red]error:[/] {escape(error)}", highlight=False, soft_wrap=True)
        else:
            assert done is not None
            if dropped:
                err.print(f"[bold red]PARTIAL IMPORT:[/] {len(dropped)} node(s) dropped: "
                          + escape(", ".join(f"{t.class_type} ({t.node})" for t in dropped))
                          + "; the image will differ from the workflow's", highlight=False)
            for path in done["files"]:
                console.print(f"wrote {escape(path)}", highlight=False, soft_wrap=True)
            console.print(f"template {done['template']!r}; use it with `formats: [{done['format']}]`"
                          " and language zh or en", highlight=False, soft_wrap=True)
            for lora in done["brand_loras"]:
                console.print(f"brand LoRA to add: loras: [{{path: {escape(lora['path'])}, "
                              f"weight: {lora['weight']:g}}}]", highlight=False, soft_wrap=True)
    if error is not None:
        raise typer.Exit(code=2)
