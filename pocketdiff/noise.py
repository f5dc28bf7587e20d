"""Third-party messages a pocketdiff user should not see: every one filtered by its exact text, with why.

The ``pocketdiff`` command calls :func:`quiet` before it imports anything heavy (``cli/__init__.py``), so a
run shows pocketdiff's own progress bars and result lines, and third-party warnings that are not in
:data:`KNOWN`. ``--verbose`` also shows third-party progress bars (coremltools' MIL passes, diffusers' loading
bars); ``--debug`` installs nothing, so everything shows. Library code is unaffected unless it calls
:func:`quiet` itself.

Each entry names where the message comes from (a logger, a warning category, or native code writing to the
process's stderr), a regular expression its text must match from the start, and why it is harmless here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Noise:
    source: str  # "logging:<logger name>", "warnings:<category name>" or "native" (C++ writing to fd 2)
    text: str  # a regular expression the message must match at its start
    why: str


KNOWN = (
    Noise("logging:torch.utils._pytree", r"<enum '\w+'> is an Enum subclass and is now natively supported",
          "torchao registers enum constants the old way on import; a deprecation for torchao, not for us"),
    Noise("logging:torchao", r"Failed to load .*torchao/_C_(mxfp8|cutlass_90a)",
          "torchao's CUDA kernels (sm90 CUTLASS, MX fp8): this project runs on the CPU"),
    Noise("logging:torchao.kernel.intmm", r"Warning: Detected no triton",
          "Triton is a GPU compiler: nothing here uses it"),
    Noise("logging:diffusers.quantizers.torchao.torchao_quantizer", r"Unable to import `torchao` Tensor objects",
          "only for loading torchao-quantised checkpoints, which pocketdiff never reads"),
    Noise("logging:diffusers.utils.import_utils", r"Multiple distributions found for package optimum",
          "optimum and optimum-onnx share the package name by design (ENV.md)"),
    Noise("logging:diffusers.configuration_utils",
          r"The config attributes \{'block_out_channels': \[[\d, ]+\]\} were passed to AutoencoderTiny, but are not",
          "AutoencoderTiny registers block_out_channels itself (for vae_scale_factor) and then warns on reloading it"),
    Noise("logging:diffusers.pipelines.pipeline_utils",
          r"Expected types for vae: \(<class '[\w.]+AutoencoderKL'>,\), got <class '[\w.]+AutoencoderTiny'>",
          "a distilled tiny decoder in StableDiffusionPipeline's vae slot: diffusers runs it (decode() is the same)"),
    Noise("logging:torch.onnx._internal.exporter._registration", r"torchvision is not installed\. Skipping torchvision::",
          "torchvision must not be installed here (ENV.md); no exported graph uses its ops"),
    Noise("logging:transformers.modeling_utils", r"`loss_type=None` was set in the config but it is unrecognized",
          "a training-loss default of the text encoder's config; inference only here"),
    Noise("logging:coremltools", r"Torch version \S+ has not been tested with coremltools",
          "the pinned torch is newer than coremltools' test matrix; every Core ML package is validated (export/coreml.py)"),
    Noise("logging:coremltools", r"Failed to load _ML\w+Proxy: No module named 'coremltools\.libcoremlpython'",
          "Core ML's native runtime exists on macOS only; off macOS the exporter validates the spec instead"),
    Noise("logging:coremltools", r"scikit-learn version \S+ is not supported",
          "coremltools' scikit-learn converter, which pocketdiff does not use"),
    Noise("logging:coremltools", r"Tuple detected at graph output\. This will be flattened",
          "the text encoder returns two tensors on purpose; their names are checked after conversion"),
    Noise("logging:coremltools", r"Saving value type of int64 into a builtin type of int32",
          "shape constants; the converted packages are checked against their I/O spec"),
    Noise("logging:root", r"Please consider (to run )?pre-processing before quantization",
          "onnxruntime's quantiser suggests its shape-inference pre-pass; every int8 graph is checked for parity "
          "(export/quantize.py)"),
    Noise("warnings:FutureWarning", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
          "inside torch.export / ExecuTorch's lowering, not our code"),
    Noise("warnings:TracerWarning", r"Converting a tensor to a Python boolean might cause the trace to be incorrect",
          "diffusers' and transformers' shape asserts during Core ML tracing: shapes are static there"),
    Noise("warnings:UserWarning", r"# The axis name: batch_size will not be used, since it shares the same shape",
          "torch.onnx merges the equal batch dims of the inputs into one dynamic axis, as intended"),
    Noise("native", r"\[threadpool\.cpp:\d+\] Resetting threadpool to \d+ threads",
          "ExecuTorch logs the pool size pocketdiff set (--threads), before loading a program"),
    Noise("native", r"\[cpuinfo_utils\.cpp:\d+\] ",
          "XNNPACK's CPU probe reads ARM-only files (midr) and logs their absence on x86"),
)

_STATE = {"quiet": False, "show_progress": True}


class _Drop(logging.Filter):
    def __init__(self, patterns: list[re.Pattern]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def _by_source(prefix: str) -> dict[str, list[re.Pattern]]:
    out: dict[str, list[re.Pattern]] = {}
    for n in KNOWN:
        kind, _, name = n.source.partition(":")
        if kind == prefix:
            out.setdefault(name, []).append(re.compile(n.text))
    return out


def quiet(show_progress: bool = False) -> None:
    """Filter every :data:`KNOWN` message; third-party progress bars show only with ``show_progress``."""
    for logger, patterns in _by_source("logging").items():
        logging.getLogger(logger).addFilter(_Drop(patterns))
    for patterns in _by_source("warnings").values():  # (the category is documentation: some, like torch.jit's
        for p in patterns:                              # TracerWarning, do not exist before their package loads)
            warnings.filterwarnings("ignore", message=p.pattern)
    _STATE.update(quiet=True, show_progress=show_progress)


def third_party_bars() -> contextlib.AbstractContextManager:
    """Around a third-party call that draws its own progress bars on sys.stderr (coremltools' converter): the
    bars are dropped unless quiet is off or progress was asked for."""
    if _STATE["quiet"] and not _STATE["show_progress"]:
        return contextlib.redirect_stderr(io.StringIO())
    return contextlib.nullcontext()


@contextlib.contextmanager
def native_stderr() -> Iterator[None]:
    """Around native code that writes to the process's stderr (XNNPACK's cpuinfo probe): while quiet, what it
    writes is collected and written back without the :data:`KNOWN` native lines."""
    if not _STATE["quiet"]:
        yield
        return
    patterns = [re.compile(n.text) for n in KNOWN if n.source == "native"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", errors="replace").splitlines(keepends=True):
                if not any(p.match(line) for p in patterns):
                    sys.stderr.write(line)
