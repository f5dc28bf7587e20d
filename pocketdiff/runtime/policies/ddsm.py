"""``ddsm``: a per-step UNet width (DDSM). Step i runs the UNet of width ``widths[i]``, each width its own
exported UNet role (``unet`` is the full width, ``unet_w625`` width 0.625, ...), with the same guidance as the
other policies (``guided.py``): two-pass CFG in one batch-2 call when the UNet has no guidance embedding, else
one batch-1 call with it.

The manifest's ``sampler.params.widths`` holds one width per step, for the steps the search ran at (the
bundle pins them). A schedule naming a width the bundle has no UNet for, or a step count other than the
schedule's, is refused before any model runs.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import UNET, Denoise
from pocketdiff.runtime.policies.guided import GuidedPolicy

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


class DDSMPolicy(GuidedPolicy):
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

    def begin(self, run: Denoise) -> dict:
        n, widths = len(run.timesteps), self.params["widths"]
        if n != len(widths):
            raise PocketdiffError(f"the ddsm schedule has {len(widths)} widths, one per step, so it runs "
                                  f"{len(widths)} steps; {n} were asked for")
        return self.guidance_state(run)

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        return self.guided_call(run, width_role(self.params["widths"][i]), t, sample, state)[0]
