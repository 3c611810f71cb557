"""Safe YAML → plain data plus a source map, so every later error can say `file:line:col`.

PyYAML composes the file into nodes (which carry marks); we build the Python values from
those nodes ourselves instead of letting a constructor do it, because we need what a
constructor throws away:
- the line and column of every value and key, under its YAML path;
- duplicate keys, which `yaml.safe_load` silently resolves to the last one;
- the expanded size of aliases, measured *before* expanding them, so a "billion laughs"
  file is rejected in microseconds instead of eating the machine;
- `${VAR}` and `${VAR:-default}` references, resolved here and never echoed in messages.

Mapping keys are taken as written (`on:` stays the string "on", not YAML 1.1's `True`).
Scalars otherwise follow `yaml.safe_load` (ints, floats, booleans, null).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import Diagnostic, SpecError

__all__ = ["MAX_DEPTH", "MAX_EXPANDED_NODES", "Document", "SourceMap", "load_file", "load_text"]

MAX_EXPANDED_NODES = 50_000
"""Largest number of nodes a file may expand to through aliases (pipelines have hundreds)."""

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists a file may have (building the data is recursive)."""

_ENV_REF = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Path_ = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Where each YAML path came from; `locate` falls back to the closest enclosing node."""

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    from_env: set[Path_] = field(default_factory=set)

    def locate(self, path: Path_, *, key: bool = False) -> tuple[int, int] | None:
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            mark = self.values.get(path[:end])
            if mark is not None:
                return mark
        return None

    def diagnostic(
        self,
        message: str,
        path: Path_ = (),
        *,
        hint: str | None = None,
        key: bool = False,
        severity: str = "error",
    ) -> Diagnostic:
        line, column = self.locate(path, key=key) or (None, None)
        return Diagnostic(
            message, self.file, line, column, tuple(path), hint, severity  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Document:
    """A loaded YAML file: plain data, where it came from, and the folder it lives in."""

    data: Any
    source: SourceMap
    base_dir: Path


def load_file(path: str | Path, env: Mapping[str, str] | None = None) -> Document:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Diagnostic(f"no such file: {file}", str(file))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Diagnostic(f"cannot read the file: {exc}", str(file))]) from None
    return load_text(text, str(file), env, base_dir=file.resolve().parent)


def load_text(
    text: str,
    file: str = "<string>",
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
) -> Document:
    source = SourceMap(file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise SpecError([_yaml_diagnostic(exc, file)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(f"invalid YAML: {exc}", file)]) from None
    if root is None:
        raise SpecError(
            [Diagnostic("the file is empty", file, hint="a pipeline starts with `version: 1`")]
        )
    builder = _Builder(source, os.environ if env is None else env)
    builder.check_size(root)
    data = builder.build(root, ())
    if builder.errors:
        raise SpecError(builder.errors)
    return Document(data, source, base_dir or Path.cwd())


def _yaml_diagnostic(exc: yaml.MarkedYAMLError, file: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    if exc.context:
        problem = f"{problem} ({exc.context})"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Diagnostic(f"invalid YAML: {problem}", file, line, column)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Turns a composed node graph into Python data, recording marks and problems."""

    def __init__(self, source: SourceMap, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.errors: list[Diagnostic] = []
        self._scalars = yaml.SafeLoader("")

    def check_size(self, root: yaml.Node) -> None:
        """Reject alias bombs, recursive aliases and too deep nesting before expanding."""
        sizes: dict[int, tuple[int, int]] = {}  # node → (expanded nodes, expanded height)
        visiting: set[int] = set()

        def size(node: yaml.Node, depth: int = 0) -> int:
            key = id(node)
            if key in visiting:
                raise SpecError([self.source_error(node, "a recursive alias refers to itself")])
            total, height = sizes.get(key, (0, 0))
            if depth + height > MAX_DEPTH:
                raise SpecError([self.source_error(node, _TOO_DEEP)])
            if total:
                return height
            visiting.add(key)
            children = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            height = 1 + max((size(child, depth + 1) for child in children), default=0)
            total = 1 + sum(sizes[id(child)][0] for child in children)
            visiting.discard(key)
            sizes[key] = (total, height)
            if total > MAX_EXPANDED_NODES:
                raise SpecError([self.source_error(node, _BOMB)])
            return height

        size(root)

    def source_error(self, node: yaml.Node, message: str, path: Path_ = ()) -> Diagnostic:
        line, column = _mark(node)
        return Diagnostic(message, self.source.file, line, column, path)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.source.values.setdefault(path, _mark(node))
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:
            self.errors.append(self.source_error(node, f"unsupported YAML tag {node.tag}", path))
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        if node.tag == _STR_TAG:
            return self._string(node.value, path)
        try:
            return self._scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:  # a tag safe YAML does not know
            message = f"unsupported YAML tag {node.tag}"
        except Exception:  # an explicit tag on a value that does not fit it: `!!int abc`
            message = f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}"
        self.errors.append(self.source_error(node, message, path))
        return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_sources(value_node, path))
                continue
            key = self._key(key_node)
            if key is None:
                continue
            sub = (*path, key)
            if key in result:
                first = self.source.keys[sub][0]
                line, column = _mark(key_node)
                self.errors.append(
                    Diagnostic(
                        f"duplicate key '{key}' (first defined on line {first})",
                        self.source.file, line, column, sub,
                        hint="YAML keeps only the last one; remove or rename one of them",
                    )
                )
                continue
            self.source.keys[sub] = _mark(key_node)
            result[key] = self.build(value_node, sub)
        return {**{k: v for k, v in merged.items() if k not in result}, **result}

    def _merge_sources(self, node: yaml.Node, path: Path_) -> dict[str, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                self.errors.append(self.source_error(source, "`<<` merges only mappings"))
                continue
            merged.update(self._mapping(source, path))
        return merged

    def _key(self, node: yaml.Node) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            return str(node.value)
        self.errors.append(self.source_error(node, "mapping keys must be plain strings"))
        return None

    def _string(self, text: str, path: Path_) -> str:
        if "${" not in text:
            return text

        def resolve(match: re.Match[str]) -> str:
            escaped, name, default = match.groups()
            if escaped:
                return match.group(0)[1:]
            self.source.from_env.add(path)
            value = self.env.get(name)
            if value is not None:
                return value
            if default is not None:
                return default
            self.errors.append(
                self.source.diagnostic(
                    f"environment variable {name} is not set",
                    path,
                    hint=f"export {name}=..., or give a default: ${{{name}:-value}}",
                )
            )
            return ""

        return _ENV_REF.sub(resolve, text)


_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep; pipelines are far flatter"

_BOMB = (
    f"this node expands to more than {MAX_EXPANDED_NODES:,} nodes through aliases "
    "(an alias bomb?); pipelines are far smaller"
)
