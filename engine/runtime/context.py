"""What a stage sees of the record it is running for."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.template import Condition, render_value

__all__ = ["StageContext"]


class StageContext:
    """Per stage and record: the render scope, the deadline, and a place to leave notes.

    `scope` holds `input` (the record), `stages` (name → {"output", "skipped"} for the stages
    that have finished) and `env`. It is shared by the record's stages and only ever grows.
    """

    __slots__ = ("_finalizers", "_notes", "deadline", "name", "scope")

    def __init__(self, name: str, scope: Mapping[str, Any], deadline: float,
                 finalizers: list[Callable[[Any], Any]] | None = None) -> None:
        self.name = name
        self.scope = scope
        self.deadline = deadline
        self._notes: dict[str, Any] | None = None
        self._finalizers = finalizers

    @property
    def input(self) -> Any:
        return self.scope["input"]

    @property
    def stages(self) -> Mapping[str, Mapping[str, Any]]:
        return self.scope["stages"]  # type: ignore[no-any-return]

    def render(self, value: Any) -> Any:
        """Render a template (or data holding templates) against this record."""
        return render_value(value, self.scope)

    def evaluate(self, condition: Condition) -> bool:
        return condition.evaluate(self.scope)

    def remaining(self) -> float:
        """Seconds left before the request deadline (the budget every call must fit in)."""
        return self.deadline - time.monotonic()

    def note(self, **fields: Any) -> None:
        """Attach facts to this stage's trace event (tier used, tokens, cache age...)."""
        if self._notes is None:
            self._notes = {}
        self._notes.update(fields)

    @property
    def notes(self) -> dict[str, Any] | None:
        return self._notes

    def finalize(self, transform: Callable[[Any], Any]) -> None:
        """Apply `transform` to the run's final output (after `output:` is rendered)."""
        if self._finalizers is None:
            raise RuntimeError("this context has no run to finalize")
        self._finalizers.append(transform)
