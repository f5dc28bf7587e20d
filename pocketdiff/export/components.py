"""The exported components: fixed, export-friendly torch wrappers around a pipeline's models, one per role.

Every target (ONNX, Core ML, ExecuTorch) exports these modules, and parity compares each target
against :func:`torch_reference` on the same wrappers. Names, shapes and dtypes of every role's inputs
and outputs are the role registry's (``export/roles.py``); this module adds the torch side: the
wrapper a role exports (:data:`WRAPPERS`) and its example inputs. Core ML re-wraps these in apple's
layout (``export/coreml.py``); the names are optimum's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor
from torch import nn

from pocketdiff.architectures.clockwork_unet import is_clockwork
from pocketdiff.architectures.exit_unet import is_exit_unet, seg_in, seg_level
from pocketdiff.architectures.unet_levels import levels
from pocketdiff.architectures.slimmable_unet import export_widths, materialise_width
from pocketdiff.export.roles import ROLES, Dims
from pocketdiff.runtime.policies import (CW_FULL, CW_LIGHT, SEG_IN, WIDTH_STEPS, exit_role, seg_role,
                                         width_role)
from pocketdiff.runtime.policies.adadiff import MAX_LEVELS
from pocketdiff.runtime.policies.budget import STEP_BUDGET
from pocketdiff.runtime.sessions import TensorSpec

class TextEncoderExport(nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):  # [B, 77] int32 -> [B, 77, D], [B, D]
        out = self.text_encoder(input_ids.to(torch.int64), return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetExport(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        # [B,C,h,w], [], [B,77,D] (, [B,W]) -> [B,C,h,w]
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class ClockworkFullExport(nn.Module):
    """Clockwork's full step: the UNet through its split, with the inner part's output as a second output."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        # [B,C,h,w], [], [B,77,D] (, [B,W]) -> [B,C,h,w], lowres_out [B,R,s,s]
        return self.unet.full_step(sample, timestep, encoder_hidden_states, timestep_cond)


class ClockworkLightExport(nn.Module):
    """Clockwork's light step: the UNet's outer part with the adaptor fed the cache (the last input)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.embedded = guidance_embed_dim(unet) is not None

    def forward(self, sample, timestep, encoder_hidden_states, fourth, fifth=None):
        # [B,C,h,w], [], [B,77,D], then lowres_cache [B,R,s,s], or timestep_cond [B,W], lowres_cache -> [B,C,h,w]
        timestep_cond, cache = (fourth, fifth) if self.embedded else (None, fourth)
        return self.unet.light_step(sample, timestep, encoder_hidden_states, cache, timestep_cond)


class SegInExport(nn.Module):
    """AdaDiff's first segment: down path, mid block and the lowest up block."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        # [B,C,h,w], [], [B,77,D] (, [B,W]) -> hidden [B,cN,zN,zN], temb [B,E], skips_l0 .. skips_l(n-2)
        h, emb, packs = seg_in(self.unet, sample, timestep, encoder_hidden_states, timestep_cond)
        return (h, emb, *(packs[level] for level in range(len(packs))))


class SegLevelExport(nn.Module):
    """AdaDiff's segment at one level: its up block (at level 0 also the output head)."""

    def __init__(self, unet, level: int):
        super().__init__()
        self.unet, self.level = unet, level

    def forward(self, hidden, skips, temb, encoder_hidden_states):
        # [B,c(L+1),zL,zL], [B,kL,zL,zL], [B,E], [B,77,D] -> hidden_out [B,cL,z(L-1),..] or out_sample [B,C,h,w]
        return seg_level(self.unet, self.level, hidden, skips, temb, encoder_hidden_states)


class ExitExport(nn.Module):
    """AdaDiff's exit head at one level: (out_sample, uncertainty)."""

    def __init__(self, unet, level: int):
        super().__init__()
        self.head = unet.exits[f"l{level}"]

    def forward(self, hidden, skips0, temb):  # [B,cL,z,z], [B,k0,h,h], [B,E] -> [B,C,h,w], [B]
        return self.head(hidden, skips0, temb)


class StepBudgetExport(nn.Module):
    """BudgetFusion's predictor: the prompt's text-encoder states -> predicted quality per step count and metric."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, encoder_hidden_states):  # [B,77,D] -> quality [B,K,M]
        return self.predictor(encoder_hidden_states)


def guidance_embed_dim(unet) -> int | None:
    """The width of a guidance-embedded UNet's ``timestep_cond`` input (None: a CFG UNet)."""
    return getattr(unet.config, "time_cond_proj_dim", None)


class VaeDecoderExport(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):  # [B,C,h,w] (already divided by scaling_factor) -> [B,3,H,W]
        return self.vae.decode(latent_sample, return_dict=False)[0]


class CastIO(nn.Module):
    """Run ``module`` in ``dtype`` behind float32 inputs and outputs (integer inputs pass through).

    Apps and the runtime then feed the same float32 tensors whatever the precision; the casts sit
    at the graph's edges, like onnxruntime's ``keep_io_types``.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, *args):
        args = tuple(a.to(self.dtype) if a.is_floating_point() else a for a in args)
        out = self.module(*args)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


@dataclass(frozen=True)
class ComponentSpec:
    """How to export one component: wrapper, example inputs, names, which inputs carry the batch."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch_inputs: tuple[str, ...]  # inputs whose dim 0 is the batch


def _width_unet(width: float):
    return lambda pipe: UNetExport(materialise_width(pipe.unet, width))


# role -> the torch wrapper it exports, built from a loaded pipeline (a DDSM width: the real smaller UNet)
WRAPPERS = {
    "text_encoder": lambda pipe: TextEncoderExport(pipe.text_encoder),
    "unet": lambda pipe: UNetExport(pipe.unet),
    "vae_decoder": lambda pipe: VaeDecoderExport(pipe.vae),
    **{width_role(k / WIDTH_STEPS): _width_unet(k / WIDTH_STEPS) for k in range(1, WIDTH_STEPS)},
    CW_FULL: lambda pipe: ClockworkFullExport(pipe.unet),
    CW_LIGHT: lambda pipe: ClockworkLightExport(pipe.unet),
    SEG_IN: lambda pipe: SegInExport(pipe.unet),
    **{seg_role(lv): (lambda pipe, lv=lv: SegLevelExport(pipe.unet, lv)) for lv in range(MAX_LEVELS - 1)},
    **{exit_role(lv): (lambda pipe, lv=lv: ExitExport(pipe.unet, lv)) for lv in range(1, MAX_LEVELS)},
    STEP_BUDGET: lambda pipe: StepBudgetExport(pipe.step_budget),
}
_DTYPES = {"float32": torch.float32, "int32": torch.int32, "int64": torch.int64}


def pipeline_roles(pipe) -> list[str]:
    """The roles a pipeline exports, in registry order: every non-optional role, a DDSM UNet's widths
    (:func:`~pocketdiff.architectures.slimmable_unet.export_widths`), a Clockwork UNet's full and light graphs, an
    AdaDiff UNet's segments and exit heads, a step-budget predictor (``pipe.step_budget``, attached by
    ``architectures.step_budget.attach_step_budget``)."""
    extra = {width_role(w) for w in export_widths(pipe.unet)} | ({CW_FULL, CW_LIGHT} if is_clockwork(pipe.unet) else set())
    if is_exit_unet(pipe.unet):
        n = levels(dict(pipe.unet.config))
        extra |= {SEG_IN, *(seg_role(lv) for lv in range(n - 1)), *(exit_role(lv) for lv in pipe.unet.config.adadiff_exits)}
    if getattr(pipe, "step_budget", None) is not None:
        extra.add(STEP_BUDGET)
    return [r.name for r in ROLES.values() if not r.optional or r.name in extra]


def component_specs(pipe, batch: int = 2, roles=None) -> list[ComponentSpec]:
    """The pipeline's components (``roles``, default :func:`pipeline_roles`), with example inputs at ``batch``
    (2 lets dynamo keep the batch dynamic): zeros, and timestep 500."""
    dims = Dims.from_pipe(pipe)
    specs = []
    for name in roles if roles is not None else pipeline_roles(pipe):
        role = ROLES[name]
        inputs, outputs = role.io(dims, batch)
        example = tuple(torch.tensor(500.0) if i.name == "timestep" else torch.zeros(i.shape, dtype=_DTYPES[i.dtype])
                        for i in inputs)
        specs.append(ComponentSpec(role.name, WRAPPERS[role.name](pipe), example, tuple(i.name for i in inputs),
                                   tuple(o.name for o in outputs),
                                   tuple(n for n in role.batch_inputs() if n in {i.name for i in inputs})))
    return specs


def torch_reference(pipe, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one component in PyTorch fp32 on numpy inputs named as in the exported graph."""
    spec = component_specs(pipe, roles=[name])[0]
    args = [torch.from_numpy(np.asarray(inputs[n])) for n in spec.input_names]
    with torch.no_grad():
        out = spec.module(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(spec.output_names, out)}


def parity_inputs(pipe, role: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The role's registered fixed inputs at ``pipe``'s shapes."""
    return ROLES[role].fixed_inputs(Dims.from_pipe(pipe), batch, seed)


class TwoPassGroupNorm(nn.Module):
    """``nn.GroupNorm`` from reshape/mean/sub/mul/rsqrt, sharing the original's parameters.

    Two reasons, both measured on ExecuTorch 1.5.1:

    - ``native_group_norm`` is not delegated to XNNPACK, and its portable kernel computes the
      variance in one pass (max abs 1.9e-2 against float64 on a 512-channel 64x64 input of mean 50).
    - XNNPACK's mean accumulates sequentially, so one mean over a whole group (8 x 256 x 256 values in
      the SD1.5 decoder) errs by 1.3e-3; the statistics here are means of row means (W, then the
      rest), which errs by 2.7e-5 (torch: 2.5e-6).
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    @staticmethod
    def _mean(y):  # [B, G, R, W] -> [B, G, 1, 1]: over W first, then over R (short sums)
        b, g, r, w = y.shape
        rows = y.reshape(b, g * r, w, 1).mean(dim=(2, 3), keepdim=True)  # [B, G*R, 1, 1]
        return rows.reshape(b, g, r, 1).mean(dim=(2, 3), keepdim=True)

    def forward(self, x):  # [B, C, *spatial]
        b, c = x.shape[:2]
        y = x.reshape(b, self.num_groups, -1, x.shape[-1] if x.dim() > 2 else 1)  # [B, G, R, W]
        d = y - self._mean(y)
        y = (d * torch.rsqrt(self._mean(d * d) + self.eps)).reshape(x.shape)
        if self.weight is None:
            return y
        shape = (1, c) + (1,) * (x.dim() - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


class TwoPassLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension in the same two-pass form (same reason).

    The statistics are taken over the last two dims of a ``[..., D, 1]`` view: XNNPACK's mean takes
    the two innermost dims of a 4-D tensor, not the last dim of a 3-D one.
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

    def forward(self, x):  # [B, N, D]
        x4 = x.unsqueeze(-1)  # [B, N, D, 1]
        d = x4 - x4.mean(dim=(-2, -1), keepdim=True)
        y = (d * torch.rsqrt((d * d).mean(dim=(-2, -1), keepdim=True) + self.eps)).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


def _swap_norms(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                new = TwoPassGroupNorm(child)
            elif isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
                new = TwoPassLayerNorm(child)
            else:
                continue
            setattr(parent, name, new)
            swapped.append((parent, name, child))
    return swapped


@contextlib.contextmanager
def xnnpack_friendly(pipe):
    """Temporarily rewrite ``pipe``'s models (any of ``unet``, ``vae``, ``text_encoder`` it has) into ops
    XNNPACK delegates, computing the same function.

    - Attention in its plain bmm + softmax form (diffusers' ``AttnProcessor``, transformers'
      ``eager``): ``scaled_dot_product_attention`` decomposes into masked-softmax guards
      (any/where/logical_not) that XNNPACK rejects, splitting the graph into many small delegates.
    - Group and layer norms in the two-pass form above.
    """
    diffusers_models = [m for m in (getattr(pipe, "unet", None), getattr(pipe, "vae", None))
                        if m is not None and hasattr(m, "set_attn_processor")]  # a TAESD decoder has no attention
    text_encoder = getattr(pipe, "text_encoder", None)
    before = [dict(m.attn_processors) for m in diffusers_models]
    text_before = text_encoder.config._attn_implementation if text_encoder is not None else None
    for m in diffusers_models:
        m.set_attn_processor(AttnProcessor())
    if text_encoder is not None:
        text_encoder.set_attn_implementation("eager")
    swapped = [s for model in (text_encoder, *diffusers_models) if model is not None for s in _swap_norms(model)]
    try:
        yield pipe
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
        for m, procs in zip(diffusers_models, before):
            m.set_attn_processor(procs)
        if text_encoder is not None:
            text_encoder.set_attn_implementation(text_before)


def tensor_spec(name: str, shape, dtype) -> dict:
    """One manifest tensor entry (``runtime.sessions.TensorSpec``); symbolic dims stay strings (``batch_size``)."""
    return TensorSpec(name, tuple(shape), str(dtype)).to_dict()


def component_record(role: str, target: str, path: str, precision: str, quantization: str | None,
                     inputs: list[dict], outputs: list[dict], parity: dict | None, meta: dict) -> dict:
    """One ``manifest.components`` entry (schema: ``export/manifest.schema.json``)."""
    return {"name": role, "role": role, "target": target, "path": path, "precision": precision,
            "quantization": quantization, "inputs": inputs, "outputs": outputs, "parity": parity, "meta": meta}
