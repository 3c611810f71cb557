"""Sticky bucketing: a key always lands on the same point, and keys spread evenly.

Weighted routes (A/B splits, canaries) and the percentage rollouts of feature flags split
traffic by a key such as a user id. Hashing the key with a salt — the route's or the flag's
name — keeps a user in one bucket across requests, processes and restarts, while two splits
with different salts stay independent of each other.
"""

from __future__ import annotations

import hashlib

__all__ = ["sticky_point"]


def sticky_point(salt: str, key: str) -> float:
    """A point in [0, 1) fixed by `(salt, key)`. blake2b rather than `hash()`, which Python
    randomizes per process: every replica must put a user in the same bucket."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
