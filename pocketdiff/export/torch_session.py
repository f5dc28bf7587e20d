"""A :class:`~pocketdiff.runtime.sessions.Session` over the PyTorch modules: the parity reference for the
runtime's loop.

The torch-free runtime cannot hold torch objects, so this lives beside the exporters. With it the one
sampler loop (``RuntimePipeline``) runs on a pipeline's own modules, for any step policy, including
methods diffusers' pipeline does not have: the bundle's test vectors (trace, latents) come from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pocketdiff.architectures.exit_unet import adadiff_params
from pocketdiff.architectures.step_budget import budget_spec
from pocketdiff.export.components import ComponentSpec, component_specs, guidance_embed_dim
from pocketdiff.export.roles import ROLES, Dims
from pocketdiff.runtime.policies import StepPolicy, default_policy_name, make_policy
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.sessions import TensorSpec
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer


class TorchSession:
    """One exported wrapper module (``export/components.py``) behind the Session protocol: inputs cast to the
    role's declared dtypes, run under ``no_grad`` in fp32, any batch."""

    fixed_batch = None

    def __init__(self, spec: ComponentSpec, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.spec, self.inputs, self.outputs, self.path = spec, inputs, outputs, f"torch {spec.name}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(np.asarray(feeds[i.name], dtype=i.dtype))) for i in self.inputs]
        with torch.no_grad():
            out = self.spec.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {o.name: t.numpy() for o, t in zip(self.outputs, out)}


def default_policy(pipe) -> StepPolicy:
    """The policy a pipeline's UNet implies: a DDSM UNet's searched width schedule, a Clockwork UNet's clock, a
    calibrated AdaDiff UNet's exits and threshold, else the w-embedded single pass, or CFG."""
    schedule = getattr(pipe.unet.config, "ddsm_schedule", None)
    if schedule:
        return make_policy("ddsm", {"widths": [float(w) for w in schedule["widths"]]})
    clock = getattr(pipe.unet.config, "clockwork_schedule", None)
    if clock:
        return make_policy("clockwork", {k: clock[k] for k in ("period", "light_steps")})
    exits = getattr(pipe.unet.config, "adadiff_schedule", None)
    if exits:
        return make_policy("adadiff", adadiff_params(pipe.unet))
    return make_policy(default_policy_name(["timestep_cond"] if guidance_embed_dim(pipe.unet) else []))


def torch_runtime(pipe, tokenizer_dir: str | Path, scheduler_config: dict, policy: StepPolicy | None = None,
                  roles=None) -> RuntimePipeline:
    """The runtime's sampler loop on ``pipe``'s torch modules (one :class:`TorchSession` per role; ``roles``
    default: the roles the pipeline exports), with ``pipe.step_budget``'s rule when one is attached."""
    dims = Dims.from_pipe(pipe)
    sessions = {}
    for spec in component_specs(pipe, roles=roles):
        inputs, outputs = ROLES[spec.name].io(dims)
        sessions[spec.name] = TorchSession(spec, inputs, outputs)
    return RuntimePipeline(CLIPBPETokenizer.from_dir(tokenizer_dir), sessions, scheduler_config,
                           (dims.latent_channels, dims.latent_size, dims.latent_size),
                           pipe.vae.config.scaling_factor, policy or default_policy(pipe),
                           budget_spec(pipe.step_budget) if getattr(pipe, "step_budget", None) is not None else None)
