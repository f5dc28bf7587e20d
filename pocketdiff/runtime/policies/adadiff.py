"""``adadiff``: run the UNet segment by segment and stop at the first exit confident enough (AdaDiff).

The UNet is exported as segments (``unet_seg_in``, then ``unet_seg_l{L}`` for L = n-2 .. 0, the last one ending in
``out_sample``) and exit heads (``unet_exit_l{L}``: ``out_sample`` and ``uncertainty`` [B]); the tensors between
them are named ``hidden`` / ``hidden_out``, ``temb`` and ``skips_l{L}`` (``architectures/exit_unet.py``). At each
step the policy calls ``unet_seg_in``, then walks the levels from the deepest up: where level L has an exit it
calls the head, and returns the head's output when every sample's uncertainty is below ``threshold``; else it
calls the next segment. Segments after an exit that fired are never called; the call trace shows, per step, the
roles that ran (:func:`exit_levels` reads the level each step stopped at from it).

Guidance as the other multi-role policies (``guided.py``). Under two-pass CFG both halves exit together: the step
exits at level L when the larger of the two halves' uncertainties is below the threshold (the guided output
``u + w (c - u)`` amplifies an error in either half). Threshold 0 never exits: the full UNet.
"""

from __future__ import annotations

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import Denoise
from pocketdiff.runtime.policies.guided import GuidedPolicy

MAX_LEVELS = 5  # resolution levels of the UNets the segment roles are registered for (SD1.5 has 4)
SEG_IN = "unet_seg_in"
HIDDEN, HIDDEN_OUT, TEMB, UNCERTAINTY = "hidden", "hidden_out", "temb", "uncertainty"


def seg_role(level: int) -> str:
    return f"unet_seg_l{level}"


def exit_role(level: int) -> str:
    return f"unet_exit_l{level}"


def skips_name(level: int) -> str:
    return f"skips_l{level}"


SEG_ROLES = tuple(seg_role(level) for level in range(MAX_LEVELS - 1))
EXIT_ROLES = tuple(exit_role(level) for level in range(1, MAX_LEVELS))


def exit_levels(trace, steps: int) -> list[int]:
    """Per step, the level it stopped at (0: the full UNet ran), read from a generation's call trace."""
    out = []
    for i in range(steps):
        roles = [c.role if hasattr(c, "role") else c["role"] for c in trace
                 if (c.step if hasattr(c, "step") else c["step"]) == i]
        if seg_role(0) in roles or not roles:
            out.append(0)
        else:
            out.append(int([r for r in roles if r.startswith("unet_exit_l")][-1].removeprefix("unet_exit_l")))
    return out


class AdaDiffPolicy(GuidedPolicy):
    name = "adadiff"
    ROLES = (SEG_IN, *SEG_ROLES, *EXIT_ROLES)
    PARAMS = {"levels": (int, 3), "exits": (list, [1]), "threshold": (float, 0.0), "calibration": (dict, {})}
    data_dependent = True

    def validate(self) -> None:
        n, exits, tau = self.params["levels"], self.params["exits"], self.params["threshold"]
        if not 2 <= n <= MAX_LEVELS:
            raise PocketdiffError(f"sampler policy 'adadiff': levels must be in [2, {MAX_LEVELS}], got {n}")
        if not exits or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < n for x in exits) or \
                len(set(exits)) < len(exits):
            raise PocketdiffError(f"sampler policy 'adadiff': exits must be distinct levels in [1, {n - 1}], got {exits}")
        if not 0.0 <= tau <= 1.0:
            raise PocketdiffError(f"sampler policy 'adadiff': threshold must be in [0, 1], got {tau}")
        self.params["exits"] = sorted(exits, reverse=True)

    def roles(self) -> tuple[str, ...]:
        n = self.params["levels"]
        return (SEG_IN, *(seg_role(level) for level in range(n - 2, -1, -1)),
                *(exit_role(level) for level in self.params["exits"]))

    def begin(self, run: Denoise) -> dict:
        return self.guidance_state(run)

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        n, exits, tau = self.params["levels"], set(self.params["exits"]), np.float32(self.params["threshold"])
        carried = run.call(SEG_IN, self.guided_feeds(run, t, sample, state))  # hidden, temb, skips_l0 .. l(n-2)
        hidden = carried[HIDDEN]
        for level in range(n - 1, -1, -1):
            if level < n - 1:
                out = run.call(seg_role(level), {HIDDEN: hidden, skips_name(level): carried[skips_name(level)],
                                                 TEMB: carried[TEMB], "encoder_hidden_states": run.hidden})
                if level == 0:
                    return self.combine(run, out["out_sample"], state)
                hidden = out[HIDDEN_OUT]
            if level in exits:
                head = run.call(exit_role(level), {HIDDEN: hidden, skips_name(0): carried[skips_name(0)],
                                                   TEMB: carried[TEMB]})
                if float(np.max(head[UNCERTAINTY])) < tau:
                    return self.combine(run, head["out_sample"], state)
        raise PocketdiffError("sampler policy 'adadiff': the segments ended without an output")
