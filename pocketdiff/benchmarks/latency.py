"""Latency measurement: honest warm-up, medians, side-by-side alternation, machine info.

:func:`measure_alternating` interleaves several candidates call by call, so machine noise hits all
of them alike; ``benchmarks/compare.py`` (``bench compare``) is built on it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pocketdiff.pipedir import package_versions


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    min_ms: float
    max_ms: float
    repeat: int
    warmup: int

    def to_dict(self) -> dict:
        return asdict(self)


def stats(samples_s: list[float], warmup: int) -> LatencyStats:
    ms = [s * 1000 for s in samples_s]
    return LatencyStats(statistics.median(ms), min(ms), max(ms), len(ms), warmup)


def measure(fn: Callable[[], object], warmup: int = 3, repeat: int = 20) -> LatencyStats:
    """Median/min/max wall time of ``fn()`` over ``repeat`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return stats(samples, warmup)


def measure_alternating(fns: dict[str, Callable[[], object]], warmup: int = 3, repeat: int = 20,
                        keep_samples: bool = False) -> dict:
    """Like :func:`measure` for several candidates, interleaved call by call (a, b, c, a, b, c, ...).

    Returns name -> :class:`LatencyStats`, or name -> (stats, raw seconds) with ``keep_samples``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    if keep_samples:
        return {k: (stats(v, warmup), v) for k, v in samples.items()}
    return {k: stats(v, warmup) for k, v in samples.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None) -> dict:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(), "threads": threads,
            "versions": package_versions()}
