"""``cfg``: classifier-free guidance as diffusers runs it, one UNet call per step.

With guidance w > 1 the texts are ``[negative, prompt]`` and each step is one batch-2 call on
``[x, x]``, combined as ``out_u + w (out_c - out_u)``; with w <= 1, one batch-1 call on the prompt alone.
"""

from __future__ import annotations

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import UNET, Denoise, StepPolicy, cfg_combine, unet_feeds


class CFGPolicy(StepPolicy):
    name = "cfg"

    def texts(self, guidance: float) -> tuple[str, ...]:
        return ("negative", "prompt") if guidance > 1.0 else ("prompt",)

    def check(self, sessions, guidance: float) -> None:
        fixed, cfg = sessions[UNET].fixed_batch, guidance > 1.0
        if fixed is not None and fixed != (2 if cfg else 1):
            raise PocketdiffError(
                f"this UNet was exported at fixed batch {fixed} ("
                f"{'guidance > 1, CFG' if fixed == 2 else 'no guidance'}); guidance {guidance} needs batch "
                f"{2 if cfg else 1}: use guidance {'> 1' if fixed == 2 else '<= 1'}, re-export with a matching "
                f"--guidance, or the onnx backend")

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        cfg = run.guidance > 1.0
        out = run.call(UNET, unet_feeds(np.concatenate([sample, sample]) if cfg else sample, t, run.hidden))
        return cfg_combine(out["out_sample"], run.guidance) if cfg else out["out_sample"]
