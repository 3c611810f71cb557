"""API keys: who is calling, for which tenant, allowed which pipelines.

Keys are never stored, only their SHA-256 (a key file leaked from a backup grants nothing).
A fast hash is enough here, unlike for passwords: keys are long random strings, so there is
nothing to brute-force from the digest. The file (`--keys FILE`, or the same text in
`ENGINE_API_KEYS`):

```yaml
keys:
  - sha256: 3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea
    user: alice                   # the caller, as pipelines and the audit log see it
    tenant: acme
    pipelines: [support-triage]   # optional: every pipeline when absent
    rate: 60/min                  # optional: this key's own limit instead of --rate-per-key
```

Make a key and its line with `python -c "import secrets; print('sk-' + secrets.token_urlsafe(32))"`
and `printf %s "$KEY" | sha256sum`. Checking compares the presented key's digest with every
stored digest in constant time (`hmac.compare_digest`, no early exit), so response timing says
nothing about how close a guess was, nor which entry matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.resources.limits import Rate, RateStr
from engine.serve.config import ConfigError

__all__ = ["ENV_VAR", "Identity", "KeyRing", "hash_key"]

ENV_VAR = "ENGINE_API_KEYS"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as the key file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=_HEX64.pattern)
    user: str = Field(min_length=1)
    tenant: str = Field("default", min_length=1)
    pipelines: tuple[str, ...] | None = None
    rate: RateStr | None = None


class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: tuple[_Entry, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is from. `key_id` names the key in rate-limit buckets and logs: a prefix
    of its digest, never the key."""

    user: str
    tenant: str
    key_id: str
    pipelines: tuple[str, ...] | None = None
    rate: Rate | None = None

    def may_use(self, pipeline: str) -> bool:
        return self.pipelines is None or pipeline in self.pipelines


ANONYMOUS = Identity("anonymous", "default", "anonymous")
"""Every caller, when the server runs without keys (`--no-auth`, or on loopback)."""


class KeyRing:
    """The loaded keys. Empty means no authentication (the caller decides if that is allowed)."""

    def __init__(self, entries: tuple[_Entry, ...] = ()) -> None:
        self._digests = [bytes.fromhex(entry.sha256) for entry in entries]
        self._identities = [Identity(e.user, e.tenant, e.sha256[:12], e.pipelines, e.rate)
                            for e in entries]

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def load(cls, path: Path | None) -> KeyRing:
        """From `path`, else from `ENGINE_API_KEYS`, else none."""
        if path is not None:
            try:
                text, source = path.read_text(encoding="utf-8"), f"--keys {path}"
            except OSError as exc:
                raise ConfigError(f"--keys {path}: {exc.strerror}") from None
        elif os.environ.get(ENV_VAR):
            text, source = os.environ[ENV_VAR], f"${ENV_VAR}"
        else:
            return cls()
        return cls(_parse(text, source).keys)

    def authenticate(self, authorization: str | None) -> Identity | None:
        """The identity for an `Authorization: Bearer <key>` header, or None."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = -1
        for index, stored in enumerate(self._digests):
            if hmac.compare_digest(digest, stored):
                found = index
        return self._identities[found] if found >= 0 else None


def _parse(text: str, source: str) -> _File:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None  # the text may hold secrets
    try:
        return _File.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "<root>"
        hint = " (sha256: 64 lowercase hex digits)" if "sha256" in where else ""
        raise ConfigError(f"{source}: {where}: {problem['msg']}{hint}") from None
