"""The `flag()` template function, and where it finds the record's flags in the scope.

Kept apart from the rest of `engine.flags` so the template environment can register it
without importing the OpenFeature SDK.
"""

from __future__ import annotations

from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context

__all__ = ["FLAGS", "FLAG_FUNCTION", "flag"]

FLAGS = "__flags__"
"""The scope key of a record's flags (`client.RecordFlags`): set by the executor when the
pipeline has a `flags:` block, absent otherwise."""

FLAG_FUNCTION = "flag"
"""The name templates call it by; the compiler looks for calls to it."""


@pass_context
def flag(context: Context, name: str, default: bool | str | int | float = False) -> Any:
    """`flag('name')` is the flag's value for this record, or `default` (False) when the flag
    is unknown or the provider fails; the default's type picks the kind of flag:
    `flag('prompt', 'v1') == 'v2'` reads a string flag."""
    flags = context.get(FLAGS)
    if flags is None:
        raise RuntimeError(
            f"flag({name!r}) needs a `flags:` block in the pipeline file "
            "(e.g. flags: {path: flags.yaml})")
    return flags.value(name, default)
