"""Clockwork: a diffusers UNet split at a resolution boundary, and the adaptor that stands in for its
low-resolution part on light steps (Habibian et al., "Clockwork Diffusion", 2023).

The split at boundary ``r`` (the number of outer resolution levels, 1 <= r < number of levels) sees the UNet as

- the **outer** high-resolution part: ``conv_in``, ``down_blocks[:r]``, ``up_blocks[n-r:]``, the output norm and
  ``conv_out``;
- the **inner** low-resolution part: ``down_blocks[r:]``, ``mid_block``, ``up_blocks[:n-r]``.

Two tensors cross the boundary (shapes for SD1.5 at 512², r = 1; the toy teacher's in brackets):

- ``lowres_in`` [B, 320, 32, 32] ([B, 32, 4, 4]): the output of ``down_blocks[r-1]`` (after its downsampler).
  It is the inner down path's input and also the one skip connection the inner up path takes from outside
  (the last of ``down_blocks[r-1]``'s res samples is this same tensor); :func:`check_split` checks that count.
- ``lowres_out`` [B, 640, 64, 64] ([B, 64, 8, 8]): the output of ``up_blocks[n-r-1]`` (after its upsampler),
  the hidden state the outer up path starts from. This is what Clockwork caches.

:func:`outer_down` + :func:`inner` + :func:`outer_up` is the UNet's own forward, op for op (diffusers 0.39's
``UNet2DConditionModel.forward`` without the options an SD UNet does not use: class or addition embeddings,
attention masks, ControlNet residuals; :func:`check_split` refuses a UNet that has them).

:class:`ClockworkAdaptor` predicts ``lowres_out`` at the current step from the cache (``lowres_out`` of the last
full step), the current ``lowres_in`` and the time embedding: it works at the inner resolution (the cache
strided down to it), adds a zero-initialised correction upsampled back, so before training it is exactly the
identity adaptor (``kind = "identity"``: output = cache, the public reference's). Fixed, export-friendly ops only
(conv, GroupNorm, SiLU, nearest upsampling), as taesd's.

:class:`ClockworkUNet2DConditionModel` is the stage's output: the UNet (its own forward is the full UNet, so
every diffusers pipeline runs it unchanged) holding the adaptor as a submodule, its config naming the boundary,
the adaptor and, once chosen, the clock schedule.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from pocketdiff.architectures import unet_parts as parts
from pocketdiff.architectures.slim_unet import SlimUNet2DConditionModel
from pocketdiff.architectures.unet_parts import (check_sd_style, down_call, input_conv, mid_call, output_head,
                                                 time_embedding, up_call)
from pocketdiff.errors import PocketdiffError, choice_error

ADAPTOR_KINDS = ("trained", "identity")
DEFAULT_ADAPTOR = {"kind": "trained", "channels": None, "blocks": 2}  # channels None: lowres_in's channels


def _levels(unet) -> int:
    return len(unet.down_blocks)


def check_split(unet, boundary: int) -> None:
    """Refuse a boundary or a UNet the split cannot serve exactly (one ``error:`` line naming the value)."""
    n = _levels(unet)
    if isinstance(boundary, bool) or not isinstance(boundary, int) or not 1 <= boundary < n:
        raise PocketdiffError(f"clockwork boundary must be an integer in [1, {n - 1}] (outer resolution levels of this "
                              f"{n}-level UNet), got {boundary!r}")
    check_sd_style(unet, "clockwork")
    if unet.down_blocks[boundary - 1].downsamplers is None:
        raise PocketdiffError(f"clockwork boundary {boundary}: down_blocks.{boundary - 1} has no downsampler, so no "
                              "resolution boundary lies after it")
    made = sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks[boundary:])
    taken = sum(len(b.resnets) for b in unet.up_blocks[:n - boundary])
    if taken != made + 1:
        raise PocketdiffError(f"clockwork boundary {boundary}: the inner up blocks take {taken} skip connections, the "
                              f"inner down blocks make {made}; the split needs exactly one more (lowres_in)")


def check_sample_size(unet, sample: torch.Tensor) -> None:
    parts.check_sample_size(unet, sample, "clockwork")


def outer_down(unet, boundary: int, sample, emb, text) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``conv_in`` and the outer down blocks: (the outer up path's skip connections, ``lowres_in``)."""
    h = input_conv(unet, sample)  # [B, C0, h, w]
    skips = (h,)
    for block in unet.down_blocks[:boundary]:
        h, res = down_call(block, h, emb, text)
        skips += res
    return skips[:-1], h  # the last res sample is lowres_in itself: the inner up path takes it


def inner(unet, boundary: int, lowres_in, emb, text) -> torch.Tensor:
    """The inner part: ``lowres_in`` [B, C_r-1, h/2^r, w/2^r] -> ``lowres_out`` [B, C_r, h/2^(r-1), w/2^(r-1)]."""
    h, skips = lowres_in, (lowres_in,)
    for block in unet.down_blocks[boundary:]:
        h, res = down_call(block, h, emb, text)
        skips += res
    h = mid_call(unet, h, emb, text)
    for block in unet.up_blocks[:_levels(unet) - boundary]:
        k = len(block.resnets)
        h, skips = up_call(block, h, emb, text, skips[-k:]), skips[:-k]
    return h


def outer_up(unet, boundary: int, lowres_out, skips, emb, text) -> torch.Tensor:
    """The outer up blocks from ``lowres_out`` and the outer skips, then the output head -> [B, C, h, w]."""
    h = lowres_out
    for block in unet.up_blocks[_levels(unet) - boundary:]:
        k = len(block.resnets)
        h, skips = up_call(block, h, emb, text, skips[-k:]), skips[:-k]
    return output_head(unet, h)


def split_forward(unet, boundary: int, sample, timestep, encoder_hidden_states, timestep_cond=None):
    """The UNet's output through outer + inner, and ``lowres_out`` (the cache a light step reuses)."""
    check_sample_size(unet, sample)
    emb = time_embedding(unet, sample, timestep, timestep_cond)
    skips, lowres_in = outer_down(unet, boundary, sample, emb, encoder_hidden_states)
    lowres_out = inner(unet, boundary, lowres_in, emb, encoder_hidden_states)
    return outer_up(unet, boundary, lowres_out, skips, emb, encoder_hidden_states), lowres_out


def interface_channels(config: dict, boundary: int) -> tuple[int, int]:
    """(``lowres_in`` channels, ``lowres_out`` channels) of a UNet config at ``boundary``."""
    boc = list(config["block_out_channels"])
    return boc[boundary - 1], boc[boundary]


def interface_sizes(config: dict, boundary: int) -> tuple[int, int]:
    """(``lowres_in`` side, ``lowres_out`` side) for the config's ``sample_size`` latents."""
    s = config["sample_size"]
    return s // 2 ** boundary, s // 2 ** (boundary - 1)


def check_adaptor(adaptor: dict | None) -> dict:
    a = {**DEFAULT_ADAPTOR, **(adaptor or {})}
    unknown = sorted(set(a) - set(DEFAULT_ADAPTOR))
    if unknown:
        raise PocketdiffError(f"clockwork adaptor has no setting {unknown[0]!r}; allowed: {', '.join(DEFAULT_ADAPTOR)}")
    if a["kind"] not in ADAPTOR_KINDS:
        raise choice_error("clockwork adaptor kind", a["kind"], ADAPTOR_KINDS)
    if not isinstance(a["blocks"], int) or a["blocks"] < 0 or a["channels"] is not None and (
            not isinstance(a["channels"], int) or a["channels"] < 1):
        raise PocketdiffError(f"clockwork adaptor needs blocks >= 0 and channels >= 1 (or null); got {a['blocks']!r}, "
                              f"{a['channels']!r}")
    return a


class ClockworkAdaptor(nn.Module):
    """(cache [B, Cr, 2s, 2s], lowres_in [B, Ci, s, s], emb [B, E]) -> predicted lowres_out [B, Cr, 2s, 2s]."""

    def __init__(self, in_channels: int, cache_channels: int, temb_channels: int, groups: int, kind: str = "trained",
                 channels: int | None = None, blocks: int = 2):
        super().__init__()
        self.kind = kind
        if kind == "identity":
            return
        ca = channels or in_channels
        if ca % groups:
            raise PocketdiffError(f"clockwork adaptor channels {ca} must be a multiple of the UNet's {groups} groups")
        self.cache_in = nn.Conv2d(cache_channels, ca, 3, stride=2, padding=1)  # the cache at the inner resolution
        self.lowres_in = nn.Conv2d(in_channels, ca, 1)
        self.blocks = nn.ModuleList(ResnetBlock2D(in_channels=ca, out_channels=ca, temb_channels=temb_channels,
                                                  groups=groups) for _ in range(blocks))
        self.norm_out = nn.GroupNorm(groups, ca)
        self.conv_out = nn.Conv2d(ca, cache_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # untrained, it is the identity adaptor
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cache, lowres_in, emb):
        if self.kind == "identity":
            return cache
        a = self.cache_in(cache) + self.lowres_in(lowres_in)  # [B, Ca, s, s]
        for block in self.blocks:
            a = block(a, emb)
        delta = self.conv_out(F.silu(self.norm_out(a)))  # [B, Cr, s, s]
        return cache + F.interpolate(delta, scale_factor=2.0, mode="nearest")


def build_adaptor(config: dict, boundary: int, adaptor: dict | None) -> ClockworkAdaptor:
    a = check_adaptor(adaptor)
    ci, cr = interface_channels(config, boundary)
    temb = config.get("time_embedding_dim") or config["block_out_channels"][0] * 4
    return ClockworkAdaptor(ci, cr, temb, config["norm_num_groups"], a["kind"], a["channels"], a["blocks"])


class ClockworkUNet2DConditionModel(SlimUNet2DConditionModel):
    """A (slim) UNet with a Clockwork adaptor. Config: ``clockwork_boundary``, ``clockwork_adaptor``
    (``{kind, channels, blocks}``) and ``clockwork_schedule`` (``{scheduler, steps, guidance, period,
    light_steps}``, or None before one is chosen). ``forward`` is the plain UNet; :meth:`full_step` also returns
    the cache, :meth:`light_step` runs outer + adaptor on it."""

    def __init__(self, *args, clockwork_boundary: int = 1, clockwork_adaptor: dict | None = None,
                 clockwork_schedule: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        check_split(self, clockwork_boundary)
        adaptor = check_adaptor(clockwork_adaptor)
        self.register_to_config(clockwork_boundary=clockwork_boundary, clockwork_adaptor=adaptor,
                                clockwork_schedule=clockwork_schedule)
        self.adaptor = build_adaptor(dict(self.config), clockwork_boundary, adaptor)

    def full_step(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        """(UNet output [B, C, h, w], lowres_out [B, Cr, .., ..])."""
        return split_forward(self, self.config.clockwork_boundary, sample, timestep, encoder_hidden_states,
                             timestep_cond)

    def light_step(self, sample, timestep, encoder_hidden_states, cache, timestep_cond=None):
        """The UNet output with the adaptor's ``lowres_out`` from ``cache`` in place of the inner part's."""
        check_sample_size(self, sample)
        r = self.config.clockwork_boundary
        emb = time_embedding(self, sample, timestep, timestep_cond)
        skips, lowres_in = outer_down(self, r, sample, emb, encoder_hidden_states)
        return outer_up(self, r, self.adaptor(cache, lowres_in, emb), skips, emb, encoder_hidden_states)


_slim = inspect.signature(SlimUNet2DConditionModel.__init__)
ClockworkUNet2DConditionModel.__init__.__signature__ = _slim.replace(parameters=[
    *_slim.parameters.values(),
    inspect.Parameter("clockwork_boundary", inspect.Parameter.KEYWORD_ONLY, default=1),
    inspect.Parameter("clockwork_adaptor", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("clockwork_schedule", inspect.Parameter.KEYWORD_ONLY, default=None),
])
__all__ = ["ClockworkAdaptor", "ClockworkUNet2DConditionModel", "ModelMixin", "as_clockwork_unet", "split_forward"]
CLOCKWORK_KEYS = ("clockwork_boundary", "clockwork_adaptor", "clockwork_schedule")


def as_clockwork_unet(unet, boundary: int = 1, adaptor: dict | None = None, schedule: dict | None = None,
                      adaptor_state: dict | None = None) -> ClockworkUNet2DConditionModel:
    """``unet``'s weights (a UNet, slim UNet or Clockwork UNet, whose adaptor is dropped unless ``adaptor_state``
    gives one) in a :class:`ClockworkUNet2DConditionModel`."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_") and k not in CLOCKWORK_KEYS}
    out = ClockworkUNet2DConditionModel(**config, clockwork_boundary=boundary, clockwork_adaptor=adaptor,
                                        clockwork_schedule=schedule)
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith("adaptor.")}
    result = out.load_state_dict({**state, **{f"adaptor.{k}": v for k, v in (adaptor_state or {}).items()}},
                                 strict=False)
    bad = list(result.unexpected_keys) + [k for k in result.missing_keys if adaptor_state or not k.startswith("adaptor.")]
    if bad:
        raise PocketdiffError(f"as_clockwork_unet: weight {bad[0]} does not match the Clockwork UNet")
    dtype = next(unet.parameters()).dtype
    return (out if dtype == out.dtype else out.to(dtype)).eval()


def is_clockwork(unet) -> bool:
    return getattr(unet.config, "clockwork_boundary", None) is not None
