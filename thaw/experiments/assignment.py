"""Experiments: deterministic, sticky assignment of a user to an arm by a salted hash (no state to store)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SHARE_TOLERANCE = 1e-6


def bucket(user_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, user_id): the same user always lands in the same place, and
    experiments with different salts place users independently."""
    digest = hashlib.sha256(f"{salt}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(user_id: str, salt: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm of `user_id`: arms are (name, traffic share) laid end to end on [0, 1) in the order given."""
    if not arms:
        raise ValueError("assign needs at least one (arm, share)")
    total = sum(share for _, share in arms)
    if abs(total - 1.0) > SHARE_TOLERANCE or any(share < 0 for _, share in arms):
        raise ValueError(f"arm shares must be >= 0 and sum to 1; got {[s for _, s in arms]} (sum {total})")
    u, edge = bucket(user_id, salt), 0.0
    for name, share in arms:
        edge += share
        if u < edge:
            return name
    return arms[-1][0]  # u is within rounding of 1.0


def seed_of(key: str) -> int:
    """A 63-bit seed derived from a string (e.g. a rec_id), for the random policy and interleaving coin flips."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
