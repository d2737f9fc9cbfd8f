"""A recording key's stable 64-bit hash.

Python's `hash()` is salted per process; this is the same on every machine and
run, so the choices made per recording from it — which shard holds it, which
augmentation parameters each of its variants draws — are reproducible.
"""

from __future__ import annotations

import hashlib


def stable_hash(key: str) -> int:
  """The first 8 bytes of the key's SHA-256, little-endian."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
