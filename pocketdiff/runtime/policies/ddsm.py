"""``ddsm``: a per-step UNet width (DDSM). Step i runs the UNet of width ``widths[i]``, each width its own
exported UNet role (``unet`` is the full width, ``unet_w625`` width 0.625, ...), with the same guidance as the
other policies: two-pass CFG in one batch-2 call when the UNet has no guidance embedding, else one batch-1
call with it.

The manifest's ``sampler.params.widths`` holds one width per step, for the steps the search ran at (the
bundle pins them). A schedule naming a width the bundle has no UNet for, or a step count other than the
schedule's, is refused before any model runs.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import UNET, Denoise, StepPolicy, cfg_combine, unet_feeds
from pocketdiff.runtime.policies.guidance_embedded import W_INPUT, embed_dim, guidance_scale_embedding

WIDTH_STEPS = 8  # widths are multiples of 1/8: k/8 for k = 1..8


def width_role(width: float) -> str:
    """The UNet role of a width: ``unet`` at 1.0, else ``unet_w`` + the width in thousandths (``unet_w625``)."""
    return UNET if float(width) == 1.0 else f"unet_w{round(float(width) * 1000):03d}"


WIDTH_ROLES = tuple(width_role(k / WIDTH_STEPS) for k in range(1, WIDTH_STEPS))


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1 \
            or Fraction(float(width)).limit_denominator(1000) * WIDTH_STEPS % 1:
        raise PocketdiffError(f"sampler policy 'ddsm': width {width!r} is not a multiple of 1/8 in (0, 1]")
    return float(width)


class DDSMPolicy(StepPolicy):
    name = "ddsm"
    ROLES = (UNET, *WIDTH_ROLES)
    PARAMS = {"widths": (list, [])}

    def validate(self) -> None:
        if not self.params["widths"]:
            raise PocketdiffError("sampler policy 'ddsm' needs params.widths: one UNet width per step")
        self.params["widths"] = [check_width(w) for w in self.params["widths"]]

    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(width_role(w) for w in self.params["widths"]))

    def fixed_steps(self) -> int:
        return len(self.params["widths"])

    def _embedded(self, sessions) -> bool:
        return W_INPUT in {s.name for s in sessions[self.roles()[0]].inputs}

    def texts(self, guidance: float) -> tuple[str, ...]:
        return ("negative", "prompt") if guidance > 1.0 else ("prompt",)

    def check(self, sessions, guidance: float) -> None:
        for role in self.roles():
            fixed = sessions[role].fixed_batch
            if fixed is not None and fixed != (2 if guidance > 1.0 else 1):
                raise PocketdiffError(f"the {role} UNet was exported at fixed batch {fixed}; guidance {guidance} "
                                      f"needs batch {2 if guidance > 1.0 else 1}: use the onnx backend or re-export")

    def begin(self, run: Denoise) -> dict:
        n, widths = len(run.timesteps), self.params["widths"]
        if n != len(widths):
            raise PocketdiffError(f"the ddsm schedule has {len(widths)} widths, one per step, so it runs "
                                  f"{len(widths)} steps; {n} were asked for")
        if self._embedded(run.sessions):
            return {"w": guidance_scale_embedding(run.guidance - 1, embed_dim(run.sessions[self.roles()[0]]))}
        return {}

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        role = width_role(self.params["widths"][i])
        if "w" in state:  # a guidance-embedded UNet: one pass
            return run.call(role, unet_feeds(sample, t, run.hidden, **{W_INPUT: state["w"]}))["out_sample"]
        cfg = run.guidance > 1.0
        out = run.call(role, unet_feeds(np.concatenate([sample, sample]) if cfg else sample, t, run.hidden))
        return cfg_combine(out["out_sample"], run.guidance) if cfg else out["out_sample"]
