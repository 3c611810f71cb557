"""Building a pipeline's flags when it compiles, and checking the `flag()` calls it makes.

The provider is registered with the OpenFeature API under a domain derived from its settings
(`engine:<digest>`): each pipeline evaluates through the client of its own domain, so the
SDK's API-wide hooks apply, and pipelines with different providers share a process. Two
pipelines with the same settings share a domain; compiling again replaces the provider with
an equal one. Registration waits for the provider to initialize: a provider that cannot start
is a compile error, not a run that silently serves defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from openfeature import api
from openfeature.provider import AbstractProvider, FeatureProvider

from engine.errors import Diagnostic, SpecError
from engine.flags.client import PipelineFlags
from engine.flags.file_provider import FileProvider
from engine.refs import import_ref
from engine.spec import LoadedSpec
from engine.spec.models import FlagsSpec
from engine.spec.validation import closest

__all__ = ["open_flags"]

Path_ = tuple[str | int, ...]
Uses = Sequence[tuple[Path_, frozenset[str]]]
"""Where templates call `flag('<name>')`, with the names they pass."""


def open_flags(loaded: LoadedSpec, uses: Uses, env: Mapping[str, str],
               errors: list[Diagnostic], warnings: list[Diagnostic]) -> PipelineFlags | None:
    """The pipeline's flags (None without a `flags:` block), recording what is wrong."""
    spec, source = loaded.spec.flags, loaded.source
    if spec is None:
        errors += [source.diagnostic(
            f"flag('{name}') is used, but the pipeline has no `flags:` block", path,
            hint="add one, e.g. `flags: {path: flags.yaml, targeting_key: "
                 "'{{ input.user_id }}'}`") for path, names in uses for name in sorted(names)]
        return None
    errors += _context_problems(spec, loaded)
    provider = _provider(spec, loaded, errors)
    if provider is None:
        return None
    if isinstance(provider, FileProvider):
        warnings += _unknown_flags(uses, provider, loaded)
    domain = _domain(spec, loaded.base_dir)
    try:
        api.set_provider_and_wait(provider, domain)
    except Exception as exc:
        errors.append(source.diagnostic(
            f"the flags provider failed to initialize: {type(exc).__name__}: {exc}",
            ("flags", "provider")))
        return None
    return PipelineFlags(api.get_client(domain), spec.targeting_key, spec.attributes, env)


def _context_problems(spec: FlagsSpec, loaded: LoadedSpec) -> list[Diagnostic]:
    """The context is rendered before (or while) stages run: stage outputs are not there."""
    fields: dict[Path_, object] = {("flags", "targeting_key"): spec.targeting_key}
    fields |= {("flags", "attributes", name): value for name, value in spec.attributes.items()}
    return [loaded.source.diagnostic(
        "the flags' evaluation context may read `input` and `env` only", path,
        hint="put what targeting needs in the input record")
        for path, value in fields.items() if getattr(value, "stage_refs", None)]


def _provider(spec: FlagsSpec, loaded: LoadedSpec, errors: list[Diagnostic]
              ) -> FeatureProvider | None:
    source = loaded.source
    if spec.provider == "file":
        assert spec.path is not None  # FlagsSpec requires it for the file provider
        path = loaded.base_dir / spec.path
        if not path.is_file():
            errors.append(source.diagnostic(f"no flags file at {path}", ("flags", "path")))
            return None
        try:
            return FileProvider(path, spec.refresh)
        except SpecError as exc:
            errors += exc.diagnostics
            return None
    try:
        return _built(spec.provider, spec.options)
    except Exception as exc:  # an import, a wrong name, its constructor: all the user's
        errors.append(source.diagnostic(
            f"cannot build the flags provider: {type(exc).__name__}: {exc}",
            ("flags", "provider"),
            hint="an OpenFeature provider class, or a function returning a provider, as "
                 "'package.module:Name' (its package installed, e.g. "
                 "openfeature-provider-flagd), with `options:` for it"))
        return None


def _built(ref: str, options: Mapping[str, object]) -> AbstractProvider:
    """`Name(**options)`: a provider class (flagd's) or a factory — LaunchDarkly's provider
    wants a client object, which a three-line function of the user's can make."""
    provider = import_ref(ref)(**options)
    if not isinstance(provider, AbstractProvider):
        raise TypeError(f"{ref} made a {type(provider).__name__}, not an OpenFeature "
                        "provider (openfeature.provider.AbstractProvider)")
    return provider


def _unknown_flags(uses: Uses, provider: FileProvider, loaded: LoadedSpec
                   ) -> list[Diagnostic]:
    """A name the file lacks is legal (it may be added later) but usually a typo."""
    return [loaded.source.diagnostic(
        f"flag('{name}') is not in {provider.path.name}: it reads as its default until added",
        path, severity="warning",
        hint=f"did you mean '{guess}'?" if (guess := closest(name, provider.flags)) else None)
        for path, names in uses for name in sorted(names) if name not in provider.flags]


def _domain(spec: FlagsSpec, base_dir: Path) -> str:
    """The OpenFeature domain of these provider settings (not of the context templates)."""
    path = str((base_dir / spec.path).resolve()) if spec.path else None
    settings = [spec.provider, path, spec.refresh, spec.options]
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(),
                             digest_size=8).hexdigest()
    return f"engine:{digest}"
