"""`zpipe config env`: every ZPIPE_* environment variable, its type, default and reason.

Registered in `flows/cli/app.py` with `app.add_typer(config_app, name="config")`. The list is
tasks.core.settings.Environment; `--markdown` prints the README's table.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

config_app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console()


@config_app.command("env")
def env_command(
    markdown: Annotated[bool, typer.Option("--markdown", help="print the README's Markdown table")] = False,
) -> None:
    """List every ZPIPE_* environment variable: type, default, what it is for, and if it is set."""
    import os

    from tasks.core.settings import env_markdown, env_table

    if markdown:
        print(env_markdown())
        return
    table = Table(title="zpipe environment (all optional)", show_lines=False)
    for column in ("variable", "type", "default", "set", "what it is for"):
        table.add_column(column, overflow="fold")
    for row in env_table():
        table.add_row(row.name, row.type, row.default or "-", "yes" if os.environ.get(row.name) else "",
                      row.reason)
    console.print(table)
