"""Python objects a pipeline file names as `package.module:name` — a `response_schema`
model, a flags provider class — imported the same way, with the same error."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_ref"]


def import_ref(ref: str) -> Any:
    """The object `ref` names; ValueError saying why when it cannot be imported."""
    module_name, _, attribute = ref.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {ref}: {exc}") from None
