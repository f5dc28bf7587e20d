"""The guidance half every multi-role UNet policy shares (``ddsm``, ``clockwork``): whether its UNet roles take
the guidance embedding, and one guided call.

- a UNet with a ``timestep_cond`` input (a ``distill-steps --guidance-embed`` student): one batch-1 call on the
  prompt alone with ``guidance_scale_embedding(w - 1)``, as ``guidance_embedded`` runs it;
- else two-pass CFG as ``cfg`` runs it: texts ``[negative, prompt]``, one batch-2 call on ``[x, x]``, combined
  (with guidance <= 1, one batch-1 call on the prompt).

Which one is read from the sessions in :meth:`GuidedPolicy.check`, which the loop calls before
:meth:`~pocketdiff.runtime.policies.base.StepPolicy.texts`.
"""

from __future__ import annotations

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import Denoise, StepPolicy, cfg_combine, unet_feeds
from pocketdiff.runtime.policies.guidance_embedded import W_INPUT, embed_dim, guidance_scale_embedding


class GuidedPolicy(StepPolicy):
    """Base of policies whose per-step roles are UNet-like (sample, timestep, states[, timestep_cond] in,
    out_sample out); subclasses call :meth:`guided_call`."""

    _embedded = False

    def check(self, sessions, guidance: float) -> None:
        roles = self.roles()
        self._embedded = W_INPUT in {s.name for s in sessions[roles[0]].inputs}
        batch = 1 if self._embedded or guidance <= 1.0 else 2
        for role in roles:
            fixed = sessions[role].fixed_batch
            if fixed is not None and fixed != batch:
                raise PocketdiffError(f"the {role} UNet was exported at fixed batch {fixed}; guidance {guidance} "
                                      f"needs batch {batch}: use the onnx backend or re-export")

    def texts(self, guidance: float) -> tuple[str, ...]:
        return ("negative", "prompt") if guidance > 1.0 and not self._embedded else ("prompt",)

    def guidance_state(self, run: Denoise) -> dict:
        """``{"w": embedding}`` for a guidance-embedded UNet, else nothing (merge into ``begin``'s state)."""
        if self._embedded:
            return {"w": guidance_scale_embedding(run.guidance - 1, embed_dim(run.sessions[self.roles()[0]]))}
        return {}

    def guided_feeds(self, run: Denoise, t, sample: np.ndarray, state: dict, **extra: np.ndarray) -> dict:
        """The UNet inputs of one guided call: the sample doubled under two-pass CFG, the w embedding if any."""
        if "w" in state:
            return unet_feeds(sample, t, run.hidden, **{W_INPUT: state["w"]}, **extra)
        cfg = run.guidance > 1.0
        return unet_feeds(np.concatenate([sample, sample]) if cfg else sample, t, run.hidden, **extra)

    def combine(self, run: Denoise, out: np.ndarray, state: dict) -> np.ndarray:
        """A guided call's output [B, C, h, w] -> the model output [1, C, h, w] (CFG-combined at batch 2)."""
        return cfg_combine(out, run.guidance) if "w" not in state and run.guidance > 1.0 else out

    def guided_call(self, run: Denoise, role: str, t, sample: np.ndarray, state: dict, **extra: np.ndarray
                    ) -> tuple[np.ndarray, dict]:
        """(the guided model output [1, C, h, w], the call's raw outputs); ``extra`` feeds go in unchanged (a
        batch-2 call's extras hold both halves)."""
        out = run.call(role, self.guided_feeds(run, t, sample, state, **extra))
        return self.combine(run, out["out_sample"], state), out
