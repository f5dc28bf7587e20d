"""The child process of ``pocketdiff bench`` for a bundle backend (onnx, executorch): load one component,
time its first call and ``repeat`` more after warm-up, and report its peak RSS, as one JSON line on stdout.

It imports the runtime's sessions and the role registry only (no torch: ExecuTorch's bindings bring their
own), so cold start and peak memory belong to that component on the runtime, as on a phone.
``benchmarks/components.py`` starts it, one process per (component, batch); its torch-backend twin is there.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pocketdiff.benchmarks.latency import measure
from pocketdiff.export.roles import Dims, get_role
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.sessions import BACKENDS, TensorSpec


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: ``VmHWM`` from ``/proc/self/status``.

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``execve``, so a child started from a large
    parent reports the parent's peak (measured: every case of a bench run from a 1.3 GB parent read
    1294 MB). ``VmHWM`` belongs to the address space, which ``execve`` replaces. Falls back to
    ``ru_maxrss`` where ``/proc`` is missing (macOS reports it in bytes, Linux in KiB)."""
    status = Path("/proc/self/status")
    if status.exists():
        m = re.search(r"^VmHWM:\s*(\d+) kB", status.read_text(), re.M)
        if m:
            return int(m.group(1)) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def time_component(load: Callable[[], Callable[[], object]], warmup: int, repeat: int) -> dict:
    """``load()`` returns the zero-argument call to time; cold start = load + first call."""
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    call = load()
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    call()
    first_s = time.perf_counter() - t1
    stats = measure(call, warmup, repeat)
    return {"load_s": load_s, "first_call_s": first_s, "cold_start_s": load_s + first_s,
            **stats.to_dict(), "rss_before_load_mb": rss_start, "peak_rss_mb": peak_rss_mb()}


def session_worker(source: str, backend: str, role: str, batch: int, threads: int, warmup: int, repeat: int,
                   trusted_key_hex: str = "") -> dict:
    if backend == "executorch":  # imports are not part of the cold start
        import executorch.runtime  # noqa: F401
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted_key_hex)) if trusted_key_hex else None

    def load():
        bundle = load_bundle(source, trusted_key=key)
        comp = bundle.component(role, backend)
        session = BACKENDS[backend](bundle.file(comp.path), [TensorSpec.from_dict(i) for i in comp.inputs],
                                    [TensorSpec.from_dict(o) for o in comp.outputs], threads)
        feeds = get_role(role).fixed_inputs(Dims.from_bundle(bundle, backend), batch)
        return lambda: session.run(feeds)

    return time_component(load, warmup, repeat)


if __name__ == "__main__":
    src, be, role_, batch_, threads_, warmup_, repeat_, key_ = sys.argv[1:9]
    sys.stdout.write(json.dumps(session_worker(src, be, role_, int(batch_), int(threads_), int(warmup_),
                                               int(repeat_), key_)) + "\n")
