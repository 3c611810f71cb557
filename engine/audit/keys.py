"""The audit log's one secret (ENGINE_AUDIT_KEY) and the keys derived from it.

Operators manage a single 32-byte key; each use gets its own subkey, HMAC-SHA256(key, label),
so the key that seals the chain never doubles as the content cipher's key or the pseudonym
key. With the key:

- the chain is HMAC-SHA256: someone who edits a record cannot recompute the chain;
- user ids become HMAC pseudonyms: not reversible by guessing ids;
- content is sealed with AES-256-GCM (random 96-bit nonce; the record's hash as associated
  data, so a ciphertext cannot be moved to another record).

Without a key the log still records metadata, but the chain is plain SHA-256 (it catches
corruption and naive edits, not a forger who recomputes it), pseudonyms are plain SHA-256,
and content cannot be stored. The key is never written anywhere; files carry its `key_id`
(a derived fingerprint) so a wrong key is named as such.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.audit.records import AuditError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["ENV", "Keys", "generate_key", "key_from_env", "parse_key"]

ENV = "ENGINE_AUDIT_KEY"
KEY_BYTES = 32
_HINT = "make one with `engine audit keygen`"


def generate_key() -> str:
    """A fresh key in the form ENGINE_AUDIT_KEY takes (URL-safe base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str) -> bytes:
    """32 bytes from hex or (URL-safe) base64; the message never repeats the value."""
    text = text.strip()
    for decode in (bytes.fromhex, base64.urlsafe_b64decode, base64.b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise AuditError(f"{ENV} must be {KEY_BYTES} random bytes written as base64 or hex "
                     f"(it has {len(text)} characters that are neither); {_HINT}")


def key_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    value = environ.get(ENV, "")
    return parse_key(value) if value.strip() else None


class Keys:
    """The subkeys of one audit key (or their unkeyed stand-ins when there is none)."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise AuditError(f"an audit key must be {KEY_BYTES} bytes, not {len(key)}; {_HINT}")
        self._chain = _derive(key, b"chain") if key else None
        self._users = _derive(key, b"user") if key else None
        self._content = _derive(key, b"content") if key else None
        self._cipher: AESGCM | None = None
        self.id = _derive(key, b"id").hex()[:16] if key else None
        self.chain = "hmac-sha256" if key else "sha256"

    def digest(self, data: bytes) -> str:
        if self._chain is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self._chain, data, hashlib.sha256).hexdigest()

    def pseudonym(self, user: str) -> str:
        """The same user always gets the same pseudonym, which is how `forget` finds them."""
        if self._users is None:
            return hashlib.sha256(b"engine-audit-user\0" + user.encode()).hexdigest()[:32]
        return hmac.new(self._users, user.encode(), hashlib.sha256).hexdigest()[:32]

    def seal(self, plaintext: bytes, record_hash: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead().encrypt(nonce, plaintext, record_hash.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, token: str, record_hash: str) -> bytes:
        """The plaintext, or AuditError if the token was altered, moved or sealed by another
        key."""
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(token, validate=True)
            return self._aead().decrypt(raw[:12], raw[12:], record_hash.encode())
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise AuditError("content does not decrypt with this key") from exc

    def _aead(self) -> AESGCM:
        if self._content is None:
            raise AuditError(f"storing or reading content needs {ENV}; {_HINT}")
        if self._cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._cipher = AESGCM(self._content)
        return self._cipher


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, b"engine-audit/" + label, hashlib.sha256).digest()
