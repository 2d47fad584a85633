"""Integer seeds derived from the search seed, so no RNG object ever crosses a process."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined only by ``parts`` (e.g. search seed, candidate id, purpose)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1
