"""``clockwork``: reuse the UNet's low-resolution features across steps (Clockwork Diffusion).

A full step runs ``unet_cw_full``, the whole UNet with the inner low-resolution part's output as a second output
(``lowres_out``), which the policy keeps in its state. A light step runs ``unet_cw_light``: the UNet's outer
high-resolution part with the trained adaptor standing in for the inner part, fed the cache (``lowres_cache``).
Guidance as the other policies (``guided.py``): with two-pass CFG the calls are batch 2, so the cache holds both
halves, negative first.

The clock: the first and the last step are always full; between them step i is light when ``i % period != 0``
(period 1: every step full; 2: every other), or, when ``light_steps`` lists step indices, exactly those. A list
that names the first or last step, or a step past the run, is refused before any model runs.
"""

from __future__ import annotations

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import Denoise
from pocketdiff.runtime.policies.guided import GuidedPolicy

CW_FULL, CW_LIGHT = "unet_cw_full", "unet_cw_light"
CACHE_OUT, CACHE_IN = "lowres_out", "lowres_cache"


def clock_schedule(steps: int, period: int = 1, light_steps=()) -> list[bool]:
    """One flag per step, True where the step is light."""
    if light_steps:
        bad = [i for i in light_steps if not 0 < i < steps - 1]
        if bad:
            raise PocketdiffError(f"clockwork light_steps {list(light_steps)}: step {bad[0]} is not between the first "
                                  f"(0) and the last ({steps - 1}) of {steps} steps, which are always full")
        return [i in set(light_steps) for i in range(steps)]
    return [0 < i < steps - 1 and i % period != 0 for i in range(steps)]


class ClockworkPolicy(GuidedPolicy):
    name = "clockwork"
    ROLES = (CW_FULL, CW_LIGHT)
    PARAMS = {"period": (int, 2), "light_steps": (list, [])}

    def validate(self) -> None:
        if self.params["period"] < 1:
            raise PocketdiffError(f"sampler policy 'clockwork': period must be >= 1, got {self.params['period']}")
        steps = self.params["light_steps"]
        if any(isinstance(i, bool) or not isinstance(i, int) for i in steps) or len(set(steps)) != len(steps):
            raise PocketdiffError(f"sampler policy 'clockwork': light_steps must be distinct step indices, got {steps}")
        self.params["light_steps"] = sorted(steps)

    def roles(self) -> tuple[str, ...]:
        return (CW_FULL, CW_LIGHT) if self.params["light_steps"] or self.params["period"] > 1 else (CW_FULL,)

    def schedule(self, steps: int) -> list[bool]:
        return clock_schedule(steps, self.params["period"], self.params["light_steps"])

    def begin(self, run: Denoise) -> dict:
        return {**self.guidance_state(run), "light": self.schedule(len(run.timesteps)), "cache": None}

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        if state["light"][i]:
            return self.guided_call(run, CW_LIGHT, t, sample, state, **{CACHE_IN: state["cache"]})[0]
        out, raw = self.guided_call(run, CW_FULL, t, sample, state)
        state["cache"] = raw[CACHE_OUT]
        return out
