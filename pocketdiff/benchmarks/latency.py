"""Latency measurement: honest warm-up, medians, side-by-side alternation, machine info.

:func:`compare_backends` times each exported component on PyTorch, onnxruntime and ExecuTorch in
one process, alternating the backends call by call so that machine noise hits all of them alike,
and reports medians and ratios to PyTorch.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


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


def measure_alternating(fns: dict[str, Callable[[], object]], warmup: int = 3, repeat: int = 20
                        ) -> dict[str, LatencyStats]:
    """Like :func:`measure` for several candidates, interleaved call by call (a, b, c, a, b, c, ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
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
    from pocketdiff.pipedir import package_versions

    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version(), "threads": threads,
            "versions": package_versions()}


def compare_backends(pipeline_dir: str | Path, bundle_dir: str | Path, threads: int = 2, warmup: int = 3,
                     repeat: int = 20, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Per component: median latency on torch, onnxruntime and ExecuTorch at the bundle's ExecuTorch shapes.

    ``bundle_dir`` must hold onnx and executorch components of ``pipeline_dir``'s models. Inputs are
    the parity inputs at the ExecuTorch program's static batch. onnxruntime's workers are told not to
    spin after a call: spinning workers would steal the CPU from the next backend's call (measured:
    the tiny UNet on torch took 28 ms alternating with spinning onnxruntime, 11 ms alone).
    """
    import torch

    from pocketdiff.export.components import component_specs, parity_inputs
    from pocketdiff.pipedir import load_pipeline
    from pocketdiff.runtime.backends import BACKENDS, OnnxSession
    from pocketdiff.runtime.bundle import load_bundle

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_dir)
    pipe = load_pipeline(pipeline_dir)
    rows, specs = [], component_specs(pipe)
    for i, spec in enumerate(specs):
        batch = bundle.component(spec.name, "executorch").inputs[0]["shape"][0]
        feeds = parity_inputs(pipe, spec.name, batch)
        args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
        onnx_c, et_c = bundle.component(spec.name, "onnx"), bundle.component(spec.name, "executorch")
        sessions = {"onnx": OnnxSession(bundle.path / onnx_c.path, threads, allow_spinning=False),
                    "executorch": BACKENDS["executorch"](bundle.path / et_c.path, et_c, threads)}

        def torch_call(module=spec.module, args=args):
            with torch.no_grad():
                return module(*args)

        timed = measure_alternating({"torch": torch_call, **{b: (lambda s=s: s.run(feeds)) for b, s in
                                                            sessions.items()}}, warmup, repeat)
        base = timed["torch"].median_ms
        rows.append({"component": spec.name, "batch": batch,
                     **{f"{b}_ms": round(s.median_ms, 3) for b, s in timed.items()},
                     **{f"{b}_vs_torch": round(s.median_ms / base, 3) for b, s in timed.items() if b != "torch"},
                     "detail": {b: s.to_dict() for b, s in timed.items()}})
        if progress:
            progress(i + 1, len(specs))
    return rows
