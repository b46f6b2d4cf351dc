"""`zpipe held list|release|delete`: what the QA gate held, from a terminal.

Registered in `flows/cli/app.py` with `app.add_typer(held_app, name="held")`. The same decisions
are made in the Prefect UI through the `review-held-images` flow's form; both end in
`tasks.approval` (`list_held`, `release_held`, `delete_held`).
Exit codes: 0 done, 2 bad input (unknown store, a key that is not held).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tasks.core.errors import ZpipeError

console = Console()
err = Console(stderr=True)

held_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Images the QA gate held: list them, release or delete them.")

StoreOption = Annotated[str | None, typer.Option(
    help="store URL (default: the settings' store, e.g. file://zpipe-out or s3://bucket)")]
SettingsOption = Annotated[str | None, typer.Option(help="settings YAML (for its store)")]


def _store(store: str | None, settings: str | None):
    from tasks.config.schema import load_settings
    from tasks.store.objects import open_store

    return open_store(store or load_settings(settings).store)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@held_app.command("list")
def list_command(prefix: Annotated[str, typer.Argument(help="e.g. lumen-coffee/weekly-demo/2026-W48/")] = "",
                 store: StoreOption = None, settings: SettingsOption = None) -> None:
    """Every held image with where a release would publish it and why it was held."""
    from tasks.publish.review import list_held

    try:
        held = list_held(_store(store, settings), prefix)
    except ZpipeError as exc:
        raise _fail(exc) from None
    if not held:
        console.print(f"nothing is held under held/{escape(prefix)}", highlight=False)
        return
    console.print(f"{len(held)} held image(s); release or delete them by key:", highlight=False)
    for image in held:  # whole keys on their own lines: easy to copy, never wrapped mid-key
        console.print(f"[bold]{escape(image.key)}[/]", highlight=False, soft_wrap=True)
        console.print(f"  a release publishes to {escape(image.public_key)}", highlight=False,
                      soft_wrap=True)
        console.print(f"  why: {escape('; '.join(image.reasons) or 'no reason recorded')}",
                      highlight=False, soft_wrap=True)


@held_app.command("release")
def release_command(keys: Annotated[list[str], typer.Argument(help="held keys (from `zpipe held list`)")],
                    reviewer: Annotated[str, typer.Option(help="who decided (recorded in the sidecar)")],
                    note: Annotated[str, typer.Option(help="why it may be published")] = "",
                    store: StoreOption = None, settings: SettingsOption = None) -> None:
    """Publish held images as they are (each sidecar records who released it)."""
    from tasks.publish.review import release_held

    opened = _store(store, settings)
    for key in keys:
        try:
            target = release_held(opened, key, reviewer, datetime.now(UTC), note)
        except ZpipeError as exc:
            raise _fail(exc) from None
        console.print(f"released {escape(key)} -> {escape(target)}", highlight=False, soft_wrap=True)


@held_app.command("delete")
def delete_command(keys: Annotated[list[str], typer.Argument(help="held keys (from `zpipe held list`)")],
                   store: StoreOption = None, settings: SettingsOption = None) -> None:
    """Delete held images (a rerun of their week makes them again, with the same seed)."""
    from tasks.publish.review import delete_held, release_target

    opened = _store(store, settings)
    for key in keys:
        try:
            release_target(key)  # a key that is not under held/ is named as such
            if not opened.exists(key):
                raise ZpipeError(f"no held image {key!r}: it was released or deleted already")
            delete_held(opened, key)
        except ZpipeError as exc:
            raise _fail(exc) from None
        console.print(f"deleted {escape(key)}", highlight=False, soft_wrap=True)
