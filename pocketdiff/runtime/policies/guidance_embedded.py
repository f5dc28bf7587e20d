"""``guidance_embedded``: one batch-1 UNet pass per step on the prompt alone, the guidance scale fed as
``timestep_cond = guidance_scale_embedding(w - 1)`` (a ``distill-steps --guidance-embed`` student; diffusers'
pipeline does the same for a UNet with ``time_cond_proj_dim``). No negative prompt, no CFG combination.
"""

from __future__ import annotations

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.base import UNET, Denoise, StepPolicy, unet_feeds

W_INPUT = "timestep_cond"


def guidance_scale_embedding(w: float, dim: int) -> np.ndarray:
    """[1, dim] float32: diffusers' ``StableDiffusionPipeline.get_guidance_scale_embedding`` of one ``w``
    (the policy passes guidance - 1); the torch copy used in training is ``distill.steps``'."""
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * np.float32(-(np.log(10000.0) / (half - 1)))).astype(np.float32)
    emb = np.float32(w * 1000.0) * freq[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1).astype(np.float32)
    return np.pad(emb, ((0, 0), (0, 1))) if dim % 2 == 1 else emb


def embed_dim(session) -> int:
    """The width of a UNet session's ``timestep_cond`` input."""
    spec = next((s for s in session.inputs if s.name == W_INPUT), None)
    if spec is None or not isinstance(spec.shape[-1], int):
        raise PocketdiffError(f"sampler policy 'guidance_embedded' needs a UNet with a {W_INPUT} input of fixed "
                              f"width; {session.path} has inputs {[s.name for s in session.inputs]}")
    return spec.shape[-1]


class GuidanceEmbeddedPolicy(StepPolicy):
    name = "guidance_embedded"

    def check(self, sessions, guidance: float) -> None:
        embed_dim(sessions[UNET])
        fixed = sessions[UNET].fixed_batch
        if fixed not in (None, 1):
            raise PocketdiffError(f"a guidance-embedded UNet runs at batch 1; this one was exported at fixed batch "
                                  f"{fixed}")

    def begin(self, run: Denoise) -> dict:
        return {"w": guidance_scale_embedding(run.guidance - 1, embed_dim(run.sessions[UNET]))}

    def step(self, run: Denoise, i: int, t, sample: np.ndarray, state: dict) -> np.ndarray:
        return run.call(UNET, unet_feeds(sample, t, run.hidden, **{W_INPUT: state["w"]}))["out_sample"]
