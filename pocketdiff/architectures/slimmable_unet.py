"""The slimmable UNet (DDSM): one set of weights that runs at several width multipliers.

DDSM (Yang et al., "Denoising Diffusion Step-aware Models") trains one weight-shared network at several
widths and then picks a width per denoising step. Its public code slices weights at run time inside
slimmable conv/linear/GroupNorm layers of a CIFAR-10 DDPM. Here the same idea is carried to any diffusers
``UNet2DConditionModel`` (or pocketdiff's slim UNet) without rewriting a layer:

- :class:`WidthUNet2DConditionModel` is a real, smaller UNet built from the full config with every level's
  channels scaled (``width_config``). It holds no dead weights and exports like any UNet.
- Its weights are *slices* of the full UNet's (:func:`width_indices`): for every parameter, the kept rows of
  each dimension. :func:`materialise_width` copies them out; :class:`SlimmableUNet` runs the width model's
  forward on the sliced full weights (``torch.func.functional_call``), so gradients of every width train
  the one shared set (sandwich training, ``distill/ddsm_train.py``).

Channel rules (each tested in ``tests/test_slimmable_unet.py``):

- **GroupNorm.** A level of ``C`` channels keeps ``m = round_half_up(w * C / G)`` (at least 1) channels in
  *each* of its ``G`` norm groups (``norm_num_groups``), the first ``m`` of the group. Channel counts stay
  multiples of ``G``, and each group of the slim model normalises a subset of one group of the full model.
- **Attention.** The head count stays; the head dim follows the width. A head spans ``G / heads`` whole
  groups (``G`` must divide by the head count), so per-group slicing keeps every head's channels together.
- **Cross-attention.** ``to_k`` / ``to_v`` keep their input size (the text encoder's width); only their
  outputs are sliced.
- **Decoder skips.** An up ResNet's input is ``cat([hidden, skip])``; its ``conv1``, ``norm1`` and
  ``conv_shortcut`` are sliced per part (the hidden part's kept channels, then the skip part's).
- **GEGLU.** The feed-forward's ``proj`` output is two halves (value, gate); each half is sliced alike.
- **Time embedding.** Kept at full width: the sinusoidal ``time_proj`` and the ``time_embedding`` MLP
  (with a guidance-embedding ``cond_proj``) are the full model's; each ResNet's ``time_emb_proj`` keeps
  its full input and slices its output. (Slicing the sinusoid would change every frequency.)

At width 1.0 every index is the identity: the model is the full UNet, exactly.
"""

from __future__ import annotations

import inspect
import math
import re
from fractions import Fraction

import torch
from diffusers import ModelMixin
from torch import nn

from pocketdiff.architectures.elastic_unet import _up_hidden_channels
from pocketdiff.architectures.slim_unet import SlimUNet2DConditionModel
from pocketdiff.errors import PocketdiffError

DEFAULT_WIDTHS = (0.5, 0.625, 0.75, 0.875, 1.0)
WIDTH_QUANTUM = Fraction(1, 8)  # widths are multiples of 1/8: the role registry has one UNet role per width
_UP_CAT = re.compile(r"^up_blocks\.\d+\.resnets\.\d+\.(conv1\.weight|norm1\.weight|norm1\.bias|conv_shortcut\.weight)$")
_GEGLU = re.compile(r"\.ff\.net\.0\.proj\.(weight|bias)$")


def check_widths(widths) -> tuple[float, ...]:
    """Sorted unique widths; each a multiple of 1/8 in (0, 1], and 1.0 among them."""
    out = sorted({float(w) for w in widths})
    for w in out:
        if not 0 < w <= 1 or Fraction(w).limit_denominator(1000) % WIDTH_QUANTUM:
            raise PocketdiffError(f"width {w!r} is not a multiple of 1/8 in (0, 1]; allowed: 0.125, 0.25, ..., 1.0")
    if not out or out[-1] != 1.0:
        raise PocketdiffError(f"the widths must include 1.0 (the full model); got {out}")
    return tuple(out)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def level_channels(channels: int, width: float, groups: int) -> int:
    """Channels a level of ``channels`` keeps at ``width``: a multiple of ``groups``, at least ``groups``."""
    if channels % groups:
        raise PocketdiffError(f"{channels} channels do not split into {groups} GroupNorm groups")
    return groups * max(1, _round_half_up(width * channels / groups))


def width_config(config: dict, width: float) -> dict:
    """The UNet config of ``width``: every level's channels scaled (:func:`level_channels`), the head count and
    group count kept, the time embedding at the full model's size."""
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    groups = config["norm_num_groups"]
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    for h in heads if isinstance(heads, (list, tuple)) else [heads]:
        if groups % h:
            raise PocketdiffError(f"a slimmable UNet needs the GroupNorm group count ({groups}) to divide by the "
                                  f"attention head count ({h}), so every head keeps whole groups")
    full = list(config.get("full_block_out_channels") or config["block_out_channels"])
    return {**config, "block_out_channels": [level_channels(c, width, groups) for c in full],
            "time_proj_channels": full[0], "full_block_out_channels": full, "width": float(width)}


def channel_index(n_full: int, n_sub: int, groups: int) -> torch.Tensor:
    """Rows of an ``n_full`` dimension that an ``n_sub`` one keeps: the first ``n_sub / groups`` of each of the
    ``groups`` equal groups (the identity when equal)."""
    if n_sub == n_full:
        return torch.arange(n_full)
    if n_full % groups or n_sub % groups or n_sub > n_full:
        raise PocketdiffError(f"cannot slice {n_full} channels to {n_sub} in {groups} groups")
    per, keep = n_full // groups, n_sub // groups
    return (torch.arange(groups)[:, None] * per + torch.arange(keep)[None, :]).reshape(-1)


def width_indices(full: nn.Module, sub: nn.Module) -> dict[str, list[torch.Tensor | None]]:
    """For every parameter of the width model ``sub``: per dimension, the rows of ``full``'s parameter it keeps
    (None: all). Raises if a parameter has no counterpart."""
    groups = full.config.norm_num_groups
    fp = dict(full.named_parameters())
    out = {}
    for name, p in sub.named_parameters():
        if name not in fp:
            raise PocketdiffError(f"the width model has a parameter {name} the full model lacks")
        big = fp[name]
        if big.dim() != p.dim():
            raise PocketdiffError(f"{name}: {tuple(big.shape)} in the full model, {tuple(p.shape)} at this width")
        dims = []
        for d, (nf, ns) in enumerate(zip(big.shape, p.shape)):
            if nf == ns:
                dims.append(None)
            elif _UP_CAT.search(name) and d == (0 if ".norm1." in name else 1):
                block = name.rsplit(".", 2)[0]  # up_blocks.L.resnets.J
                hf, hs = _up_hidden_channels(full, block), _up_hidden_channels(sub, block)
                dims.append(torch.cat([channel_index(hf, hs, groups), hf + channel_index(nf - hf, ns - hs, groups)]))
            elif _GEGLU.search(name) and d == 0:
                half = channel_index(nf // 2, ns // 2, groups)
                dims.append(torch.cat([half, nf // 2 + half]))
            else:
                dims.append(channel_index(nf, ns, groups))
        out[name] = dims
    return out


def slice_param(t: torch.Tensor, dims: list[torch.Tensor | None]) -> torch.Tensor:
    for d, idx in enumerate(dims):
        if idx is not None:
            t = t.index_select(d, idx.to(t.device))
    return t


class WidthUNet2DConditionModel(SlimUNet2DConditionModel):
    """A UNet at one width of a slimmable UNet: the config of :func:`width_config` (``block_out_channels``
    scaled, ``full_block_out_channels``, ``time_proj_channels`` and ``width`` recorded); its time embedding
    at the full model's size. A real module: it saves, loads and exports like any diffusers UNet."""

    def __init__(self, *args, time_proj_channels: int | None = None, full_block_out_channels=None,
                 width: float = 1.0, **kwargs):
        self._time_proj_channels = time_proj_channels  # read by _set_time_proj during the parent's __init__
        super().__init__(*args, **kwargs)
        self.register_to_config(time_proj_channels=time_proj_channels,
                                full_block_out_channels=list(full_block_out_channels or self.config.block_out_channels),
                                width=float(width))

    def _set_time_proj(self, time_embedding_type, block_out_channels, flip_sin_to_cos, freq_shift, time_embedding_dim):
        full = [self._time_proj_channels or block_out_channels[0], *block_out_channels[1:]]
        return super()._set_time_proj(time_embedding_type, full, flip_sin_to_cos, freq_shift, time_embedding_dim)


_parent = inspect.signature(SlimUNet2DConditionModel.__init__)
WidthUNet2DConditionModel.__init__.__signature__ = _parent.replace(parameters=[
    *_parent.parameters.values(),
    inspect.Parameter("time_proj_channels", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("full_block_out_channels", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("width", inspect.Parameter.KEYWORD_ONLY, default=1.0),
])


class DDSMUNet2DConditionModel(SlimUNet2DConditionModel):
    """The output of DDSM's stages: the full-width UNet (shared weights, trained at every width) whose config
    lists its ``ddsm_widths`` and, once searched, its ``ddsm_schedule`` (``{"scheduler", "steps", "guidance",
    "widths": [one per step]}``). Its own forward is the full width, so every diffusers pipeline runs it as
    the teacher-sized UNet; the exporter writes one UNet per width the schedule uses (every width before a
    search) and, with a schedule, the ``ddsm`` step policy (``export/components.py``)."""

    def __init__(self, *args, ddsm_widths=DEFAULT_WIDTHS, ddsm_schedule: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(ddsm_widths=list(check_widths(ddsm_widths)), ddsm_schedule=ddsm_schedule)


_slim = inspect.signature(SlimUNet2DConditionModel.__init__)
DDSMUNet2DConditionModel.__init__.__signature__ = _slim.replace(parameters=[
    *_slim.parameters.values(),
    inspect.Parameter("ddsm_widths", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_WIDTHS),
    inspect.Parameter("ddsm_schedule", inspect.Parameter.KEYWORD_ONLY, default=None),
])
__all__ = ["DDSMUNet2DConditionModel", "ModelMixin", "SlimmableUNet", "WidthUNet2DConditionModel",
           "as_ddsm_unet", "export_widths", "materialise_width", "width_config"]


def as_ddsm_unet(unet, widths, schedule: dict | None = None) -> DDSMUNet2DConditionModel:
    """``unet``'s weights (a UNet, slim UNet or DDSM UNet) as a :class:`DDSMUNet2DConditionModel`."""
    config = {k: v for k, v in _full_config(unet).items() if k not in ("ddsm_widths", "ddsm_schedule")}
    out = DDSMUNet2DConditionModel(**config, ddsm_widths=widths, ddsm_schedule=schedule)
    out.load_state_dict(unet.state_dict(), strict=True)
    dtype = next(unet.parameters()).dtype
    return (out if dtype == out.dtype else out.to(dtype)).eval()


def export_widths(unet) -> tuple[float, ...]:
    """The widths below 1.0 a pipeline exports: those a DDSM UNet's schedule uses, or before a search every width
    it was trained at (so one bundle can run any schedule); none for any other UNet."""
    schedule = getattr(unet.config, "ddsm_schedule", None)
    widths = schedule["widths"] if schedule else getattr(unet.config, "ddsm_widths", None) or ()
    return tuple(sorted({float(w) for w in widths} - {1.0}))


def _full_config(unet) -> dict:
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    if config.get("width", 1.0) != 1.0:
        raise PocketdiffError(f"slim a full-width UNet; this one is already at width {config['width']}")
    for k in ("time_proj_channels", "full_block_out_channels", "width", "ddsm_widths", "ddsm_schedule"):
        config.pop(k, None)
    return config


def build_width_model(unet, width: float, device: str | torch.device | None = None) -> WidthUNet2DConditionModel:
    """The width model's structure (weights uninitialised on ``device="meta"``)."""
    with torch.device(device or "cpu"):
        return WidthUNet2DConditionModel(**width_config(_full_config(unet), width))


def materialise_width(unet, width: float) -> WidthUNet2DConditionModel:
    """A real UNet at ``width`` holding ``unet``'s sliced weights (no dead weights). At 1.0 it computes exactly
    what ``unet`` does."""
    sub = build_width_model(unet, width, next(unet.parameters()).device)  # (meta in: meta out, for FLOP counts)
    index = width_indices(unet, sub)
    full = dict(unet.named_parameters())
    with torch.no_grad():
        sub.load_state_dict({n: slice_param(full[n], index[n]).detach().clone() for n in index}, strict=True,
                            assign=True)
    dtype = next(unet.parameters()).dtype
    return (sub if dtype == sub.dtype else sub.to(dtype)).eval()


class SlimmableUNet(nn.Module):
    """Wraps a full UNet (its parameters are this module's, unchanged keys under ``unet.``);
    ``forward(sample, t, hidden, width=w)`` runs the width-``w`` model on slices of the shared weights.

    The width models' structures live on the meta device, outside the module tree (no memory, no device
    moves); at 1.0 the wrapped UNet itself runs."""

    def __init__(self, unet, widths=DEFAULT_WIDTHS):
        super().__init__()
        self.unet = unet
        self.widths = check_widths(widths)
        self._skeletons = {w: build_width_model(unet, w, "meta") for w in self.widths if w != 1.0}
        self._index = {w: width_indices(unet, s) for w, s in self._skeletons.items()}

    def channels(self, width: float) -> list[int]:
        """``block_out_channels`` at ``width``."""
        return width_config(_full_config(self.unet), width)["block_out_channels"]

    def forward(self, sample, timestep, encoder_hidden_states, width: float = 1.0, **kwargs):
        # sample [B, C, h, w], timestep [] or [B], encoder_hidden_states [B, 77, D] -> UNet2DConditionOutput
        if width == 1.0:
            return self.unet(sample, timestep, encoder_hidden_states, **kwargs)
        if width not in self._skeletons:
            raise PocketdiffError(f"width {width} is not one of this slimmable UNet's widths {list(self.widths)}")
        full = dict(self.unet.named_parameters())
        params = {n: slice_param(full[n], dims) for n, dims in self._index[width].items()}
        return torch.func.functional_call(self._skeletons[width], params, (sample, timestep, encoder_hidden_states),
                                          kwargs, strict=True)
