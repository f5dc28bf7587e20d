"""Numeric parity between an exported component and its PyTorch original.

One function for every target, in the spirit of apple/ml-stable-diffusion's ``report_correctness``:
compute max-abs error and PSNR of the candidate against the reference, and raise if either falls
outside the thresholds of the precision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.components import parity_inputs, torch_reference

# precision or weight quantisation -> (min PSNR dB, max abs error or None). The fp32/fp16 rows are
# the project's contract; the quantised rows are documented floors (docs/export.md) that catch a
# broken quantiser, not a promise about image quality, which the quality harness measures.
THRESHOLDS = {"fp32": (60.0, 1e-3), "fp16": (35.0, None), "int8": (25.0, None),
              "palette6": (20.0, None), "palette4": (15.0, None)}


class ParityError(PocketdiffError):
    """An exported component does not match PyTorch within the thresholds of its precision: a one-line user
    error (exit 2) naming the component and output, the measured PSNR and max abs error, and the thresholds;
    nothing is written (the bundle is built in a temporary folder)."""


@dataclass(frozen=True)
class ParityResult:
    name: str
    max_abs: float
    psnr_db: float
    min_psnr_db: float
    max_abs_allowed: float | None

    @property
    def ok(self) -> bool:
        return self.psnr_db >= self.min_psnr_db and (self.max_abs_allowed is None or self.max_abs <= self.max_abs_allowed)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR in dB with the reference's peak-to-peak range as signal (inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    mse = float(np.mean((ref - np.asarray(candidate, dtype=np.float64)) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def parity_level(precision: str, quantization: str | None) -> str:
    """The thresholds row for an export: its quantisation if any, else its precision."""
    return quantization or precision


def check_parity(name: str, reference: np.ndarray, candidate: np.ndarray, precision: str = "fp32") -> ParityResult:
    """Compare and raise :class:`ParityError` below threshold; returns the measured result."""
    if precision not in THRESHOLDS:
        raise choice_error("precision", precision, THRESHOLDS)
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ParityError(f"export parity failed for {name}: shape {candidate.shape} differs from PyTorch's "
                          f"{reference.shape}")
    min_psnr, max_abs_allowed = THRESHOLDS[precision]
    result = ParityResult(
        name, float(np.abs(reference.astype(np.float64) - candidate).max()), psnr(reference, candidate),
        min_psnr, max_abs_allowed,
    )
    if not result.ok:
        raise ParityError(
            f"export parity failed for {name} at {precision}: PSNR {result.psnr_db:.1f} dB (threshold >= {min_psnr} "
            f"dB), max abs error {result.max_abs:.3g} (threshold {'<= ' if max_abs_allowed is not None else ''}"
            f"{max_abs_allowed if max_abs_allowed is not None else 'none'})"
        )
    return result


def component_parity(pipe, role: str, run, level: str, batch: int, feeds: Sequence[dict] | None = None
                     ) -> dict[str, dict]:
    """The one parity check every target uses.

    Runs ``role``'s PyTorch fp32 wrapper (``export/components.py``) and the exported candidate
    ``run(feeds) -> {output name: array}`` on the same fixed inputs at ``batch``, and checks every
    output at thresholds ``level``. ``feeds`` (input dicts at ``batch``) replace the fixed inputs, every output
    then compared over all of them at once: a calibrated int8 component is checked on a held-out generation's
    real feeds (``export/quantize.py``), the ranges it was calibrated for. Raises :class:`ParityError`; returns the
    results for the manifest.
    """
    cases = list(feeds) if feeds is not None else [parity_inputs(pipe, role, batch)]
    want = [torch_reference(pipe, role, f) for f in cases]
    got = [run(f) for f in cases]
    return {name: {**check_parity(f"{role}.{name}", np.stack([w[name] for w in want]),
                                  np.stack([np.asarray(g[name]) for g in got]), level).to_dict(), "batch": batch}
            for name in want[0]}
