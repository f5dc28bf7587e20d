"""Portable RNG for initial latents.

The apps must draw the same initial noise as Python for the same seed, so the algorithm is fixed and
documented here rather than left to a framework:

* **Generator:** MT19937 seeded with ``init_genrand(seed)`` (seed in [0, 2**32 - 1]).
* **Uniform double:** ``a = next_u32() >> 5; b = next_u32() >> 6; (a * 67108864.0 + b) / 9007199254740992.0``.
* **Normal:** Marsaglia's polar method. Draw ``x1 = 2u - 1, x2 = 2u - 1`` until ``0 < r2 = x1² + x2² < 1``;
  ``f = sqrt(-2 ln r2 / r2)``; return ``f·x2`` now and keep ``f·x1`` for the next call.
* **Latents:** the normals fill the tensor in C (row-major) order and are cast from float64 to float32.

This is exactly NumPy's legacy ``RandomState(seed).standard_normal``, whose stream NumPy guarantees not
to change, and the ``NumPyRandomSource`` of apple/ml-stable-diffusion (Swift) implements the same
algorithm. :func:`reference_normals` is a plain-Python transcription for porting to Kotlin; the tests
pin its first draws as literal vectors and check it against NumPy.
"""

from __future__ import annotations

import math

import numpy as np

from pocketdiff.errors import PocketdiffError

_MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= _MAX_SEED:
        raise PocketdiffError(f"seed must be an integer in [0, {_MAX_SEED}], got {seed!r}")
    return int(seed)


def initial_latents(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 latents of ``shape`` for ``seed`` (see module docstring)."""
    seed = check_seed(seed)
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


class _MT19937:
    """Plain MT19937 (Matsumoto & Nishimura), for the reference transcription only."""

    def __init__(self, seed: int):
        self.mt = [0] * 624
        self.mt[0] = seed & 0xFFFFFFFF
        for i in range(1, 624):
            prev = self.mt[i - 1]
            self.mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        self.index = 624

    def _twist(self) -> None:
        mt = self.mt
        for i in range(624):
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
            mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.index = 0

    def next_u32(self) -> int:
        if self.index >= 624:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y & 0xFFFFFFFF

    def next_double(self) -> float:
        a = self.next_u32() >> 5
        b = self.next_u32() >> 6
        return (a * 67108864.0 + b) / 9007199254740992.0


def reference_normals(seed: int, count: int) -> list[float]:
    """The first ``count`` float64 normals for ``seed``, computed without NumPy (porting reference)."""
    gen = _MT19937(check_seed(seed))
    out: list[float] = []
    while len(out) < count:
        while True:
            x1 = 2.0 * gen.next_double() - 1.0
            x2 = 2.0 * gen.next_double() - 1.0
            r2 = x1 * x1 + x2 * x2
            if 0.0 < r2 < 1.0:
                break
        f = math.sqrt(-2.0 * math.log(r2) / r2)
        out.append(f * x2)
        out.append(f * x1)
    return out[:count]
