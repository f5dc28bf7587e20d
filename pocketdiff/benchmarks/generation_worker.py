"""Peak memory and wall time of one whole generation on a bundle, in a child process of its own.

:func:`generation_peak` runs ``python -m pocketdiff.benchmarks.generation_worker`` (which imports the
runtime only: no torch), so the peak resident set (``VmHWM``) is what an app holding the runtime and the
bundle's sessions needs for one image: every session the step policy uses loaded at once, as
``RuntimePipeline.from_bundle`` does, then one generation at the given steps and guidance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from pocketdiff.benchmarks.session_worker import peak_rss_mb
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.sampler import RuntimePipeline

PROMPT = "a photo of a red circle on a grey background"


def _generate(bundle: str, backend: str, steps: int, guidance: float, threads: int) -> dict:
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    rt = RuntimePipeline.from_bundle(bundle, backend, threads=threads)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()
    t1 = time.perf_counter()
    result = rt.generate(PROMPT, steps=steps, guidance=guidance, seed=0)
    return {"load_s": load_s, "generate_s": time.perf_counter() - t1, "image_shape": list(result.image.shape),
            "calls": len(result.trace), "rss_before_load_mb": rss_start, "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mb()}


def generation_peak(bundle: str | Path, backend: str, steps: int, guidance: float, threads: int = 2) -> dict:
    """One generation of :data:`PROMPT` on ``bundle`` in a fresh child process: its load and generation times and
    peak RSS (MB, the whole child: Python, the runtime and every session)."""
    cmd = [sys.executable, "-m", "pocketdiff.benchmarks.generation_worker", str(bundle), backend, str(steps),
           str(guidance), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        raise PocketdiffError(f"generation on {bundle} ({backend}) failed: {last}")
    return {"bundle": str(bundle), "backend": backend, "steps": steps, "guidance": guidance, "threads": threads,
            **json.loads(proc.stdout.strip().splitlines()[-1])}


if __name__ == "__main__":  # the child of generation_peak: one JSON line on stdout
    b, be, s, g, t = sys.argv[1:6]
    sys.stdout.write(json.dumps(_generate(b, be, int(s), float(g), int(t))) + "\n")
