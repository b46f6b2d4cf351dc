"""`zpipe webhooks pending|redeliver`: the outbox of deliveries no receiver took yet.

Registered in `flows/cli/app.py` with `app.add_typer(webhooks_app, name="webhooks")`; the work is in
`tasks.notify.webhooks`. Exit codes: 0 nothing left waiting, 1 deliveries still waiting, 2 bad input.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tasks.core.errors import ZpipeError

console = Console()
err = Console(stderr=True)

webhooks_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="Outbound webhooks: what waits in the outbox, and delivering it again.")

StoreOption = Annotated[str | None, typer.Option(help="store URL (default: the settings' store)")]
SettingsOption = Annotated[str | None, typer.Option(help="settings YAML (for its store)")]


def _store(store: str | None, settings: str | None):
    from tasks.config.schema import load_settings
    from tasks.store.objects import open_store

    try:
        return open_store(store or load_settings(settings).store)
    except ZpipeError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def _show(deliveries) -> None:
    for d in deliveries:
        console.print(f"{d.status:9} {d.event:22} {escape(d.url)}  id {d.id}  attempts {d.attempts}"
                      + (f"  last: {escape(d.last_error)}" if d.last_error else ""),
                      highlight=False, soft_wrap=True)


@webhooks_app.command("pending")
def pending_command(store: StoreOption = None, settings: SettingsOption = None) -> None:
    """List the deliveries waiting in the outbox (exit 1 when any wait)."""
    from tasks.notify.webhooks import pending

    waiting = pending(_store(store, settings))
    if not waiting:
        console.print("the webhook outbox is empty", highlight=False)
        return
    _show(waiting)
    raise typer.Exit(code=1)


@webhooks_app.command("redeliver")
def redeliver_command(
    store: StoreOption = None, settings: SettingsOption = None,
    patience_s: Annotated[float | None, typer.Option(
        help="retry each delivery this long (default: its receiver's patience_s)")] = None,
) -> None:
    """Deliver the outbox again (same delivery ids: receivers drop what they already have)."""
    from tasks.notify.webhooks import redeliver

    done = redeliver(_store(store, settings), patience_s=patience_s,
                     log=lambda line: err.print(escape(line), highlight=False, soft_wrap=True))
    if not done:
        console.print("the webhook outbox is empty", highlight=False)
        return
    _show(done)
    if any(d.status != "delivered" for d in done):
        raise typer.Exit(code=1)
