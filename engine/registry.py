"""Stage types, found through the `engine.stages` entry-point group.

Built-ins register through the same group as third-party plugins (see pyproject.toml), so a
plugin is a first-class citizen. Entry points are loaded lazily — `engine validate` imports
only the stage types a pipeline uses — and each class is checked when it loads. A broken
plugin becomes a `PluginError` naming it; the other stage types keep working.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from pydantic import BaseModel

from engine.errors import PluginError
from engine.stages.base import Stage

__all__ = ["GROUP", "Registry", "StageType"]

GROUP = "engine.stages"
BUILTIN_DISTRIBUTION = "engine"


@dataclass(frozen=True)
class StageType:
    """A registered stage type: where it comes from and, once loaded, its class."""

    name: str
    origin: str
    load: Callable[[], object]
    builtin: bool = False


class Registry:
    """Name → stage class, loading and checking each class on first use."""

    def __init__(self, types: Iterable[StageType]) -> None:
        self._types: dict[str, StageType] = {}
        self._duplicates: dict[str, list[str]] = {}
        for stage_type in types:
            if stage_type.name in self._types:
                first = self._types[stage_type.name].origin
                self._duplicates.setdefault(stage_type.name, [first]).append(stage_type.origin)
            else:
                self._types[stage_type.name] = stage_type
        self._loaded: dict[str, type[Stage[BaseModel]]] = {}

    @classmethod
    def from_entry_points(cls, *, builtin_only: bool = False) -> Registry:
        found = [_from_entry_point(ep) for ep in entry_points(group=GROUP)]
        return cls(t for t in found if t.builtin or not builtin_only)

    @classmethod
    def of(cls, classes: Mapping[str, type[Stage[BaseModel]]]) -> Registry:
        """A registry of explicit classes — for tests and embedding."""
        return cls(
            StageType(name, f"{c.__module__}:{c.__qualname__}", functools.partial(_same, c))
            for name, c in classes.items()
        )

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def info(self, name: str) -> StageType:
        return self._types[name]

    def get(self, name: str) -> type[Stage[BaseModel]]:
        """The class for `name`; KeyError if unknown, PluginError if it cannot be loaded."""
        if name in self._loaded:
            return self._loaded[name]
        stage_type = self._types[name]
        if name in self._duplicates:
            raise PluginError(
                f"stage type '{name}' is registered more than once: "
                + ", ".join(self._duplicates[name])
            )
        try:
            loaded = stage_type.load()
        except Exception as exc:  # any import-time failure of a plugin is that plugin's fault
            raise PluginError(
                f"stage type '{name}' from {stage_type.origin} failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._loaded[name] = _checked(name, stage_type.origin, loaded)
        return self._loaded[name]


def _same(obj: object) -> object:
    return obj


def _from_entry_point(ep: EntryPoint) -> StageType:
    dist = ep.dist
    origin = f"{dist.name} {dist.version} ({ep.value})" if dist else ep.value
    builtin = dist is not None and dist.name == BUILTIN_DISTRIBUTION
    return StageType(ep.name, origin, ep.load, builtin)


def _checked(name: str, origin: str, obj: object) -> type[Stage[BaseModel]]:
    """Refuse anything that does not honour the stage contract, saying what is missing."""
    problem = None
    if not (isinstance(obj, type) and issubclass(obj, Stage)):
        problem = "is not a subclass of engine.stages.base.Stage"
    elif not (isinstance(getattr(obj, "Config", None), type) and issubclass(obj.Config, BaseModel)):
        problem = "has no `Config` pydantic model"
    elif not inspect.iscoroutinefunction(obj.run):
        problem = "has no `async def run(self, ctx)`"
    elif inspect.isabstract(obj):
        problem = "is abstract (it does not implement `run`)"
    if problem:
        raise PluginError(f"stage type '{name}' from {origin} {problem}")
    return obj  # type: ignore[return-value]
