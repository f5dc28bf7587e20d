"""AdaDiff: early exits on a diffusers UNet's up path, each an output head and an uncertainty estimation module
(UEM), and the UNet cut into segments at them so a runtime really stops computing (Tang et al., "AdaDiff").

**Where exits may sit.** A conv UNet's output is full resolution, and every up block consumes skip connections
from the down path at its own resolution. An exit inside the down path or after the mid block would have to
rebuild the output from the lowest resolution with none of those skips: no light head can. So exits sit after
an up block, at its *level* L (the resolution level it works at; the up block at level L is ``up_blocks[n-1-L]``
of an n-level UNet): L in 1 .. n-1 (after every up block but the last, which is the UNet's own output). SD1.5
allows L = 3, 2, 1 (hidden [B, 1280, 16, 16], [B, 1280, 32, 32], [B, 640, 64, 64] at 512²); the toy teacher
(3 levels) L = 2, 1 ([B, 128, 4, 4], [B, 64, 8, 8]).

**The exit at level L** (:class:`ExitHead`) takes the up block's output ``hidden`` [B, c_L, z_(L-1), z_(L-1)], the
level-0 skip connections ``skips_l0`` [B, k_0, h, h] (``conv_in``'s output and the first down block's resnet
outputs, concatenated: the full-resolution detail, the noise included, that only the skips carry; they are a
segment output anyway, since the last up block needs them) and the time embedding ``temb`` [B, E]:

- the output: 1x1 convs of ``hidden`` (nearest-upsampled to full resolution) and of ``skips_l0`` added, ``blocks``
  ResnetBlock2Ds with the time embedding, the output norm and a ``conv_out`` (initialised from the UNet's own
  when the head has its width) -> [B, C, h, h] (what the UNet predicts: ε or v);
- the UEM: ``hidden`` normed and pooled, concatenated with ``temb`` (so it is timestep-aware), a two-layer MLP and
  a sigmoid -> ``uncertainty`` [B] in (0, 1).

**The segments** (the cut is at every allowed level, so the graphs are the same for any exit set; a level with no
exit costs one extra call):

- ``seg_in``: ``conv_in``, the down blocks, the mid block and the lowest up block (level n-1) -> ``hidden``, ``temb``
  and, per level L <= n-2, ``skips_lL`` [B, k_L, z_L, z_L]: the skips the up block at level L takes, concatenated
  in down-path order (they share a resolution);
- ``seg_lL`` (L = n-2 .. 0): the up block at level L on ``hidden``, ``skips_lL``, ``temb`` and the text ->
  ``hidden_out`` (L >= 1), or, at L = 0, the output head -> ``out_sample``.

``seg_in`` then every ``seg_lL`` in turn is the UNet's forward, op for op (tested: ``torch.equal``).
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
from pocketdiff.architectures.unet_levels import allowed_levels, levels, skip_channels, temb_dim
from pocketdiff.architectures.unet_parts import down_call, input_conv, mid_call, output_head, time_embedding, up_call
from pocketdiff.errors import PocketdiffError

DEFAULT_HEAD = {"channels": None, "blocks": 2, "uem_hidden": 64}  # channels None: the UNet's first level's
ADADIFF_KEYS = ("adadiff_exits", "adadiff_head", "adadiff_schedule")


def check_exits(config, exits) -> list[int]:
    """The exit levels, deepest first; one ``error:`` line for a level the UNet does not allow."""
    allowed = allowed_levels(config)
    if not isinstance(exits, (list, tuple)) or not exits or any(
            isinstance(x, bool) or not isinstance(x, int) or x not in allowed for x in exits) or len(set(exits)) < len(exits):
        raise PocketdiffError(f"adadiff exits must be distinct levels among {allowed} (after every up block but the "
                              f"last of this {levels(config)}-level UNet), got {exits!r}")
    return sorted(exits, reverse=True)


def check_head(head: dict | None) -> dict:
    h = {**DEFAULT_HEAD, **(head or {})}
    unknown = sorted(set(h) - set(DEFAULT_HEAD))
    if unknown:
        raise PocketdiffError(f"adadiff head has no setting {unknown[0]!r}; allowed: {', '.join(DEFAULT_HEAD)}")
    if not isinstance(h["blocks"], int) or h["blocks"] < 0 or not isinstance(h["uem_hidden"], int) or \
            h["uem_hidden"] < 1 or h["channels"] is not None and (not isinstance(h["channels"], int) or h["channels"] < 1):
        raise PocketdiffError(f"adadiff head needs blocks >= 0, uem_hidden >= 1 and channels >= 1 (or null); got "
                              f"{h['blocks']!r}, {h['uem_hidden']!r}, {h['channels']!r}")
    return h


def check_unet(unet) -> None:
    parts.check_sd_style(unet, "adadiff")
    ups = [b.upsamplers is not None for b in unet.up_blocks]
    if ups != [True] * (len(ups) - 1) + [False]:
        raise PocketdiffError("adadiff needs an upsampler on every up block but the last (an SD-style up path)")


def seg_in(unet, sample, timestep, encoder_hidden_states, timestep_cond=None):
    """(hidden after the lowest up block, temb [B, E], {level L <= n-2: skips_lL}) -> the first segment."""
    parts.check_sample_size(unet, sample, "adadiff")
    emb = time_embedding(unet, sample, timestep, timestep_cond)
    h = input_conv(unet, sample)  # [B, C0, h, w]
    skips = (h,)
    for block in unet.down_blocks:
        h, res = down_call(block, h, emb, encoder_hidden_states)
        skips += res
    h = mid_call(unet, h, emb, encoder_hidden_states)
    first = unet.up_blocks[0]
    k = len(first.resnets)
    h, skips = up_call(first, h, emb, encoder_hidden_states, skips[-k:]), skips[:-k]
    packs = {}
    for level, block in zip(range(len(unet.up_blocks) - 2, -1, -1), unet.up_blocks[1:]):
        k = len(block.resnets)
        packs[level], skips = torch.cat(skips[-k:], dim=1), skips[:-k]
    return h, emb, packs


def seg_level(unet, level: int, hidden, pack, emb, encoder_hidden_states):
    """The up block at ``level`` on ``hidden`` and its packed skips; at level 0 also the output head."""
    block = unet.up_blocks[len(unet.up_blocks) - 1 - level]
    split = skip_channels(dict(unet.config))[level]
    h = up_call(block, hidden, emb, encoder_hidden_states, tuple(torch.split(pack, split, dim=1)))
    return output_head(unet, h) if level == 0 else h


class ExitHead(nn.Module):
    """(hidden [B, c_L, z, z], skips_l0 [B, k_0, h, h], temb [B, E]) -> (out [B, C, h, h], uncertainty [B])."""

    def __init__(self, hidden_channels: int, skip_channels: int, temb_channels: int, out_channels: int, groups: int,
                 scale: int, channels: int, blocks: int, uem_hidden: int):
        super().__init__()
        if channels % groups or hidden_channels % groups:
            raise PocketdiffError(f"adadiff head channels {channels} must be a multiple of the UNet's {groups} groups")
        self.scale = scale
        self.hidden_in = nn.Conv2d(hidden_channels, channels, 1)
        self.skip_in = nn.Conv2d(skip_channels, channels, 1)
        self.blocks = nn.ModuleList(ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=temb_channels,
                                                  groups=groups) for _ in range(blocks))
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.uem_norm = nn.GroupNorm(groups, hidden_channels)
        self.uem = nn.Sequential(nn.Linear(hidden_channels + temb_channels, uem_hidden), nn.SiLU(),
                                 nn.Linear(uem_hidden, 1))

    def forward(self, hidden, skips0, temb):
        h = self.hidden_in(hidden)  # [B, Ch, z, z]: 1x1 before upsampling, the cheaper order
        if self.scale > 1:
            h = F.interpolate(h, scale_factor=float(self.scale), mode="nearest")  # [B, Ch, h, h]
        h = h + self.skip_in(skips0)
        for block in self.blocks:
            h = block(h, temb)
        out = self.conv_out(F.silu(self.norm_out(h)))  # [B, C, h, h]
        pooled = F.silu(self.uem_norm(hidden)).mean(dim=(2, 3))  # [B, c_L]
        return out, torch.sigmoid(self.uem(torch.cat([pooled, temb], dim=1)))[:, 0]  # [B]


def build_head(config: dict, level: int, head: dict | None) -> ExitHead:
    h = check_head(head)
    boc = config["block_out_channels"]
    return ExitHead(boc[level], sum(skip_channels(config)[0]), temb_dim(config), config["out_channels"],
                    config["norm_num_groups"], 2 ** (level - 1), h["channels"] or boc[0], h["blocks"], h["uem_hidden"])


class ExitUNet2DConditionModel(SlimUNet2DConditionModel):
    """A (slim) UNet with AdaDiff exits. Config: ``adadiff_exits`` (levels), ``adadiff_head`` (``{channels, blocks,
    uem_hidden}``) and ``adadiff_schedule`` (``{scheduler, steps, guidance, threshold}`` once calibrated, else None).
    ``forward`` is the plain UNet; :meth:`exit_forward` also returns every exit's output and uncertainty."""

    def __init__(self, *args, adadiff_exits: list[int] | tuple[int, ...] = (1,), adadiff_head: dict | None = None,
                 adadiff_schedule: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        check_unet(self)
        config = dict(self.config)
        exits, head = check_exits(config, list(adadiff_exits)), check_head(adadiff_head)
        self.register_to_config(adadiff_exits=exits, adadiff_head=head, adadiff_schedule=adadiff_schedule)
        self.exits = nn.ModuleDict({f"l{level}": build_head(config, level, head) for level in exits})

    def init_heads_from_output(self, levels_=None) -> None:
        """Start the heads' output layers (``norm_out``, ``conv_out``) as the UNet's own where the widths agree."""
        for level in self.config.adadiff_exits if levels_ is None else levels_:
            e = self.exits[f"l{level}"]
            if self.conv_norm_out is not None and e.conv_out.weight.shape == self.conv_out.weight.shape:
                e.norm_out.load_state_dict(self.conv_norm_out.state_dict())
                e.conv_out.load_state_dict(self.conv_out.state_dict())

    def exit_forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        """(the UNet's output [B, C, h, w], {level: (exit output [B, C, h, w], uncertainty [B])}): every segment and
        every exit (training, calibration)."""
        out, hiddens, packs, emb = level_features(self, sample, timestep, encoder_hidden_states, timestep_cond)
        return out, {level: self.exits[f"l{level}"](hiddens[level], packs[0], emb) for level in self.config.adadiff_exits}


def level_features(unet, sample, timestep, encoder_hidden_states, timestep_cond=None):
    """Every segment in turn: (the UNet's output, {level L >= 1: the up block's output at L}, the packed skips,
    temb): what the exit heads take."""
    h, emb, packs = seg_in(unet, sample, timestep, encoder_hidden_states, timestep_cond)
    n = levels(unet.config)
    hiddens = {n - 1: h}
    for level in range(n - 2, -1, -1):
        h = seg_level(unet, level, h, packs[level], emb, encoder_hidden_states)
        hiddens[level] = h
    return hiddens.pop(0), hiddens, packs, emb


_slim = inspect.signature(SlimUNet2DConditionModel.__init__)
ExitUNet2DConditionModel.__init__.__signature__ = _slim.replace(parameters=[
    *_slim.parameters.values(),
    inspect.Parameter("adadiff_exits", inspect.Parameter.KEYWORD_ONLY, default=(1,)),
    inspect.Parameter("adadiff_head", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("adadiff_schedule", inspect.Parameter.KEYWORD_ONLY, default=None),
])
__all__ = ["ExitHead", "ExitUNet2DConditionModel", "ModelMixin", "as_exit_unet", "seg_in", "seg_level"]


def as_exit_unet(unet, exits, head: dict | None = None, schedule: dict | None = None,
                 exit_state: dict | None = None) -> ExitUNet2DConditionModel:
    """``unet``'s weights (a UNet, slim UNet or exit UNet) in an :class:`ExitUNet2DConditionModel`; the heads are
    ``exit_state``'s (keys under ``exits.``), else ``unet``'s own if it has them for these exits, else new (their
    output layers started as the UNet's)."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_") and k not in ADADIFF_KEYS}
    out = ExitUNet2DConditionModel(**config, adadiff_exits=list(exits), adadiff_head=head, adadiff_schedule=schedule)
    state = unet.state_dict()
    if exit_state is not None:
        state = {**{k: v for k, v in state.items() if not k.startswith("exits.")}, **exit_state}
    fresh = out.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith("exits.") or (k in fresh and fresh[k].shape == v.shape)}
    new_heads = [lv for lv in out.config.adadiff_exits if not any(k.startswith(f"exits.l{lv}.") for k in kept)]
    result = out.load_state_dict({**{k: v for k, v in fresh.items() if k.startswith("exits.")}, **kept}, strict=False)
    bad = list(result.unexpected_keys) + list(result.missing_keys)
    if bad:
        raise PocketdiffError(f"as_exit_unet: weight {bad[0]} does not match the exit UNet")
    out.init_heads_from_output(new_heads)
    dtype = next(unet.parameters()).dtype
    return (out if dtype == out.dtype else out.to(dtype)).eval()


def is_exit_unet(unet) -> bool:
    return getattr(unet.config, "adadiff_exits", None) is not None


def adadiff_params(unet, threshold: float | None = None) -> dict:
    """The ``adadiff`` policy params of an exit UNet: its levels and exits, the calibrated threshold (or
    ``threshold``) and the calibration's curve."""
    schedule = unet.config.adadiff_schedule or {}
    tau = threshold if threshold is not None else schedule.get("threshold", 0.0)
    return {"levels": levels(dict(unet.config)), "exits": list(unet.config.adadiff_exits), "threshold": float(tau),
            "calibration": dict(schedule.get("calibration", {}))}
