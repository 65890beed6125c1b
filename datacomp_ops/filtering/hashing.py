"""Seeded 64-bit hashing of uids, shared by the baselines that draw samples (random, MetaCLIP's balancing)."""

from __future__ import annotations

import numpy as np

# 2**64 / golden ratio: consecutive seeds land far apart in the hash's input space
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value (uint64 arithmetic wraps on purpose)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seed_salt(seed: int) -> np.uint64:
    """What a draw's seed adds to the hashed values."""
    return np.uint64(seed * GOLDEN_GAMMA % 2**64)
