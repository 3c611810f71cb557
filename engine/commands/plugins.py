"""`engine plugins`: every stage type found, where it comes from, and its config fields."""

from __future__ import annotations

from pydantic import BaseModel
from rich.table import Table

from engine.commands import EXIT_OK, EXIT_RECORD_ERRORS, stdout
from engine.errors import PluginError
from engine.registry import Registry


def plugins() -> int:
    registry = Registry.from_entry_points()
    table = Table(title="stage types (entry-point group engine.stages)")
    for column in ("type", "from", "config fields (* required)"):
        table.add_column(column, overflow="fold")
    broken = 0
    for name in registry.names():
        origin = registry.info(name).origin
        try:
            fields = _fields(registry.get(name).Config)
        except PluginError as exc:
            broken += 1
            fields = f"[red]broken:[/red] {exc}"
        table.add_row(name, origin, fields)
    stdout().print(table)
    return EXIT_RECORD_ERRORS if broken else EXIT_OK


def _fields(config: type[BaseModel]) -> str:
    return ", ".join(
        (info.alias or name) + ("*" if info.is_required() else "")
        for name, info in config.model_fields.items()
    )
