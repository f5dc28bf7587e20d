"""Numeric parity between an exported component and its PyTorch original.

One function for every target, in the spirit of apple/ml-stable-diffusion's ``report_correctness``:
compute max-abs error and PSNR of the candidate against the reference, and raise if either falls
outside the thresholds of the precision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pocketdiff.errors import choice_error
from pocketdiff.runtime.sampler import guidance_scale_embedding

# precision or weight quantisation -> (min PSNR dB, max abs error or None). The fp32/fp16 rows are
# the project's contract; the quantised rows are documented floors (docs/export.md) that catch a
# broken quantiser, not a promise about image quality, which the quality harness measures.
THRESHOLDS = {"fp32": (60.0, 1e-3), "fp16": (35.0, None), "int8": (25.0, None),
              "palette6": (20.0, None), "palette4": (15.0, None)}


class ParityError(AssertionError):
    """An exported component does not match PyTorch within the thresholds of its precision."""


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
        raise ParityError(f"{name}: shape {candidate.shape} differs from PyTorch's {reference.shape}")
    min_psnr, max_abs_allowed = THRESHOLDS[precision]
    result = ParityResult(
        name, float(np.abs(reference.astype(np.float64) - candidate).max()), psnr(reference, candidate),
        min_psnr, max_abs_allowed,
    )
    if not result.ok:
        raise ParityError(
            f"{name}: parity failed at {precision}: PSNR {result.psnr_db:.1f} dB (need >= {min_psnr}), "
            f"max abs {result.max_abs:.3g} (allowed {max_abs_allowed})"
        )
    return result


def component_parity(pipe, role: str, run, level: str, batch: int) -> dict[str, dict]:
    """The one parity check every target uses.

    Runs ``role``'s PyTorch fp32 wrapper (``export/components.py``) and the exported candidate
    ``run(feeds) -> {output name: array}`` on the same fixed inputs at ``batch``, and checks every
    output at thresholds ``level``. Raises :class:`ParityError`; returns the results for the manifest.
    """
    from pocketdiff.export.components import parity_inputs, torch_reference

    feeds = parity_inputs(pipe, role, batch)
    want = torch_reference(pipe, role, feeds)
    got = run(feeds)
    return {name: {**check_parity(f"{role}.{name}", ref, got[name], level).to_dict(), "batch": batch}
            for name, ref in want.items()}


def fixed_inputs(role: str, batch: int, latent_shape, hidden_size: int, vocab_size: int, seed: int = 0,
                 guidance_embed_dim: int | None = None) -> dict[str, np.ndarray]:
    """The fixed inputs every parity check and benchmark feeds a component (numpy only): random ids,
    Gaussian latents and hidden states, timestep 500; a guidance-embedded UNet also gets the w
    embedding of guidance 7.5."""
    rng = np.random.default_rng(seed)
    c, h, w = latent_shape
    if role == "text_encoder":
        return {"input_ids": rng.integers(0, vocab_size, (batch, 77)).astype(np.int32)}
    if role == "unet":
        return {"sample": rng.standard_normal((batch, c, h, w)).astype(np.float32),
                "timestep": np.array(500.0, np.float32),
                "encoder_hidden_states": rng.standard_normal((batch, 77, hidden_size)).astype(np.float32),
                **({"timestep_cond": np.repeat(guidance_scale_embedding(7.5 - 1, guidance_embed_dim), batch, 0)}
                   if guidance_embed_dim else {})}
    if role == "vae_decoder":
        return {"latent_sample": rng.standard_normal((batch, c, h, w)).astype(np.float32)}
    raise ValueError(f"no fixed inputs for role {role!r}")
