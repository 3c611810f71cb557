"""Spec + registry → `CompiledPipeline`, or a `SpecError` listing every problem in the file.

Order: resolve each stage's type and validate its `with:` against that type's `Config`;
build the DAG from `needs`; then check cycles, template references, routes, handlers, model
and resource names and the input schema. Every check runs even when an earlier one failed
(as far as its inputs allow), so one `engine validate` shows the whole list.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import jsonschema
import networkx as nx
from jsonschema.protocols import Validator
from pydantic import BaseModel

from engine.compile import checks
from engine.compile.pipeline import CompiledPipeline, CompiledStage
from engine.errors import Diagnostic, PluginError, SpecError
from engine.registry import Registry
from engine.resources import Resources
from engine.spec import LoadedSpec
from engine.spec.loader import Document, SourceMap
from engine.spec.types import ModelRef, ResourceRef
from engine.spec.validation import closest, validate
from engine.stages.base import Setup, SetupError, Stage, walk_values
from engine.template import Condition, Template

if TYPE_CHECKING:
    from engine.flags.client import PipelineFlags

__all__ = ["compile_pipeline", "stage_config_problems"]

_OUTPUT = "<output>"


def compile_pipeline(
    loaded: LoadedSpec,
    registry: Registry,
    env: Mapping[str, str] | None = None,
    resources: Resources | None = None,
) -> CompiledPipeline:
    spec, source = loaded.spec, loaded.source
    resources = resources or Resources()
    errors: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    instances: dict[str, Stage[Any]] = {}
    refs: dict[str, list[tuple[checks.Path, frozenset[str]]]] = {}
    names: list[tuple[checks.Path, Any]] = []
    templates: list[tuple[checks.Path, Template | Condition]] = []

    for name, stage_spec in spec.stages.items():
        path = ("stages", name)
        instance = _instantiate(name, loaded, registry, resources, errors)
        found = [((*path, "with", *sub), value) for sub, value in instance.references()
                 ] if instance else []
        if stage_spec.if_ is not None:
            found.append(((*path, "if"), stage_spec.if_))
        templates += [(p, v) for p, v in found if isinstance(v, Template | Condition)]
        refs[name] = [(p, v.stage_refs) for p, v in found if isinstance(v, Template | Condition)]
        names += [(p, v) for p, v in found if isinstance(v, ModelRef | ResourceRef)]
        if instance is not None:
            instances[name] = instance
            warnings += [source.diagnostic(msg, (*path, "with", *sub), severity="warning")
                         for msg, sub in instance.check()]

    delegations = [(n, s.on_error, ("stages", n, "on_error"), "on_error")
                   for n, s in spec.stages.items() if s.on_error not in ("fail", "continue")]
    delegations += [(n, target, ("stages", n, "with"), "handoff")
                    for n, stage in instances.items() for target in sorted(stage.handoffs())]
    graph = _graph(loaded)
    errors += checks.unknown_needs(spec, source)
    knots = list(checks.cycles(graph, source))
    errors += knots
    outputs = [(p, v) for p, v in walk_values(spec.output, ("output",)) if isinstance(v, Template)]
    output_refs = [(p, v.stage_refs) for p, v in outputs]
    if not knots:
        errors += checks.reference_problems({**refs, _OUTPUT: output_refs}, graph, source)
        errors += checks.handler_problems(delegations, spec, graph, source)
    branches = {n: s.branches() for n, s in instances.items() if s.branches()}
    errors += checks.route_problems(branches, spec, source)
    errors += checks.name_problems(names, spec, source)
    validator = _input_validator(spec.input.schema_, source, errors)
    env = dict(os.environ if env is None else env)
    flags = _flags(loaded, [*templates, *outputs], env, errors, warnings)
    if errors:
        raise SpecError(errors + warnings)

    handlers = {handler for _, handler, _, _ in delegations}
    used = {name for _, found in output_refs for name in found}
    warnings += _unused_outputs(graph, instances, handlers, used, loaded)
    assert validator is not None
    stages = {n: _compiled(n, instances[n], graph, loaded, handlers) for n in spec.stages}
    return CompiledPipeline(
        loaded=loaded,
        graph=graph,
        stages=stages,
        roots=tuple(n for n in spec.stages if not spec.stages[n].needs and n not in handlers),
        chain=_chain(stages, graph) if not handlers else (),
        need_counts={n: len(stage.needs) for n, stage in stages.items()},
        sinks=tuple(n for n in spec.stages if graph.out_degree(n) == 0 and n not in handlers),
        output=spec.output,
        deadline=spec.defaults.timeout,
        input_validator=validator,
        env=env,
        resources=resources,
        warnings=tuple(warnings),
        flags=flags,
    )


def _instantiate(
    name: str, loaded: LoadedSpec, registry: Registry, resources: Resources,
    errors: list[Diagnostic],
) -> Stage[Any] | None:
    """The stage object for `name`, or None after recording why it cannot be built."""
    stage_spec = loaded.spec.stages[name]
    found = _configured(name, stage_spec.type, stage_spec.with_, loaded.source, registry, errors)
    if found is None:
        return None
    cls, config = found
    try:
        return cls(Setup(name, config, loaded.spec, loaded.base_dir, resources))
    except SetupError as exc:
        errors.append(loaded.source.diagnostic(str(exc), ("stages", name, "with", *exc.path)))
        return None
    except Exception as exc:  # a plugin's constructor bug must not hide the other errors
        errors.append(loaded.source.diagnostic(
            f"stage type '{stage_spec.type}' failed to set up: {type(exc).__name__}: {exc}",
            ("stages", name),
        ))
        return None


def _flags(loaded: LoadedSpec, templates: list[tuple[checks.Path, Template | Condition]],
           env: Mapping[str, str], errors: list[Diagnostic], warnings: list[Diagnostic]
           ) -> PipelineFlags | None:
    """The pipeline's feature flags; only a pipeline that has or uses them loads OpenFeature."""
    uses = [(path, value.flag_refs) for path, value in templates if value.flag_refs]
    if loaded.spec.flags is None and not uses:
        return None
    from engine.flags.setup import open_flags

    return open_flags(loaded, uses, env, errors, warnings)


def _configured(
    name: str, type_name: str, with_: Any, source: SourceMap, registry: Registry,
    errors: list[Diagnostic],
) -> tuple[type[Stage[Any]], BaseModel] | None:
    """Resolve a stage type and validate its `with:` block, recording what is wrong."""
    path = ("stages", name)
    if type_name not in registry:
        guess = closest(type_name, registry.names())
        known = f"known types: {', '.join(registry.names())}"
        errors.append(source.diagnostic(
            f"unknown stage type '{type_name}'", (*path, "type"),
            hint=f"did you mean '{guess}'? {known}" if guess else known,
        ))
        return None
    try:
        cls = registry.get(type_name)
    except PluginError as exc:
        errors.append(source.diagnostic(str(exc), (*path, "type"),
                                        hint="reinstall or fix the plugin that provides it"))
        return None
    config = validate(cls.Config, with_, source, (*path, "with"))
    if isinstance(config, list):
        errors += config
        return None
    return cls, config


def stage_config_problems(doc: Document, registry: Registry) -> list[Diagnostic]:
    """Each stage's type and `with:` problems, read from the raw document.

    Used when the core keys are invalid and the compiler cannot run, so that one
    `engine validate` still lists the stage configs' problems in the same pass.
    """
    stages = doc.data.get("stages") if isinstance(doc.data, dict) else None
    errors: list[Diagnostic] = []
    for name, raw in (stages or {}).items() if isinstance(stages, dict) else ():
        if not (isinstance(raw, dict) and isinstance(raw.get("type"), str)):
            continue
        with_ = raw.get("with", {})
        if isinstance(with_, dict):
            _configured(str(name), raw["type"], with_, doc.source, registry, errors)
    return errors


def _graph(loaded: LoadedSpec) -> nx.DiGraph[str]:
    graph: nx.DiGraph[str] = nx.DiGraph()
    stages = loaded.spec.stages
    graph.add_nodes_from(stages)
    graph.add_edges_from(
        (need, name) for name, s in stages.items() for need in s.needs if need in stages
    )
    return graph


def _input_validator(schema: dict[str, Any], source: SourceMap, errors: list[Diagnostic]
                     ) -> Validator | None:
    cls = jsonschema.validators.validator_for(schema)
    meta = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)
    problems = sorted(meta.iter_errors(schema), key=lambda e: list(map(str, e.absolute_path)))
    for exc in problems:  # all of them, not only the first as `check_schema` would
        path = ("input", "schema", *exc.absolute_path)
        best = jsonschema.exceptions.best_match([exc, *exc.context])
        errors.append(source.diagnostic(f"not a valid JSON Schema: {best.message}", path))
    return None if problems else cls(schema)


def _unused_outputs(graph: nx.DiGraph[str], instances: Mapping[str, Stage[Any]], handlers: set[str],
                    used: set[str], loaded: LoadedSpec) -> Iterator[Diagnostic]:
    """A sink nobody reads is legal but usually a wiring mistake."""
    if loaded.spec.output is None:
        return
    for name in graph.nodes:
        if graph.out_degree(name) or name in handlers or name in used:
            continue
        if instances[name].terminal:
            continue
        yield loaded.source.diagnostic(
            f"the output of stage '{name}' is not used: nothing needs it and `output` "
            "does not refer to it", ("stages", name), severity="warning",
            hint=f"refer to it in `output` (stages.{name}.output) or remove the stage",
        )


def _chain(stages: Mapping[str, CompiledStage], graph: nx.DiGraph[str]
           ) -> tuple[CompiledStage, ...]:
    """The stages in order if they form one path with no route branches, else ()."""
    path = list(nx.topological_sort(graph))
    linear = all(graph.has_edge(a, b) for a, b in itertools.pairwise(path))
    if not linear or len(graph.edges) != len(path) - 1:
        return ()
    if any(stage.branches for stage in stages.values()):
        return ()
    return tuple(stages[name] for name in path)


def _compiled(name: str, stage: Stage[Any], graph: nx.DiGraph[str], loaded: LoadedSpec,
              handlers: set[str]) -> CompiledStage:
    spec = loaded.spec.stages[name]
    return CompiledStage(
        name=name,
        type=spec.type,
        stage=stage,
        needs=tuple(dict.fromkeys(spec.needs)),
        dependents=tuple(d for d in graph.successors(name) if d not in handlers),
        branches=stage.branches(),
        condition=spec.if_,
        timeout=spec.timeout,
        on_error=spec.on_error,
    )
