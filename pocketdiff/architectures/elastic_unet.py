"""The elastic UNet: any diffusers ``UNet2DConditionModel`` with sub-blocks skippable per forward pass.

Blocks are the down/mid/up ResNet and cross-attention (``Transformer2DModel``) sub-blocks, named by
module path (``down_blocks.1.attentions.0``, ``mid_block.resnets.1``, ``up_blocks.3.resnets.2``).
Skipping a block replaces it, for that one call, with a parameter-free stand-in
(:class:`SkippedResnet`, :class:`SkippedAttention`); the skip set is an explicit argument of
:meth:`ElasticUNet.forward`, never global state.

Skip rules (:func:`skippable_blocks` lists them, with the reason a block is not skippable):
- a cross-attention block is always skippable: it is residual, so identity keeps every shape;
- a down or mid ResNet is skippable when its input and output channels are equal (identity). The
  first ResNet of a level that widens the channels (SD1.5: 320→640, 640→1280) is not;
- an up ResNet receives ``cat([hidden, skip_connection])``. Skipping it drops that skip connection
  and passes ``hidden`` on, which is valid only when ``hidden`` already has the ResNet's output
  channels. The stand-in keeps the first ``out_channels`` channels, which are ``hidden`` because
  diffusers concatenates it first.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pocketdiff.errors import PocketdiffError

BLOCK_PATTERN = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.(resnets|attentions)\.\d+$")


def unet_blocks(unet) -> list[tuple[str, nn.Module]]:
    """The ResNet and attention sub-blocks of a diffusers UNet, in order of definition."""
    return [(name, m) for name, m in unet.named_modules() if BLOCK_PATTERN.match(name)]


def block_kind(name: str) -> str:
    return "resnet" if ".resnets." in name else "attention"


class SkippedResnet(nn.Module):
    """Stands in for a removed ResNet: identity, or for an up ResNet the ``hidden`` part of its
    ``cat([hidden, skip])`` input (the first ``keep_channels`` channels)."""

    def __init__(self, keep_channels: int | None = None, in_channels: int = 0, out_channels: int = 0):
        super().__init__()
        self.keep_channels = keep_channels
        self.in_channels, self.out_channels = in_channels, out_channels  # the removed block's, for shape rules

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if self.keep_channels is None:
            return input_tensor
        return input_tensor[:, : self.keep_channels]  # [B, C_hidden + C_skip, H, W] -> [B, C_out, H, W]


class SkippedAttention(nn.Module):
    """Stands in for a removed ``Transformer2DModel``: identity, in its return convention."""

    def __init__(self, in_channels: int = 0):
        super().__init__()
        self.in_channels = in_channels

    def forward(self, hidden_states: torch.Tensor, *args, return_dict: bool = True, **kwargs):
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=hidden_states)
        return (hidden_states,)


@dataclass(frozen=True)
class BlockInfo:
    name: str
    kind: str  # "resnet" or "attention"
    stage: str  # "down", "mid" or "up"
    in_channels: int  # for an up ResNet: hidden + skip-connection channels
    out_channels: int
    skippable: bool
    reason: str  # why (not) skippable


def _up_hidden_channels(unet, name: str) -> int:
    """Channels of ``hidden`` entering up ResNet ``name`` (before the skip connection is concatenated)."""
    _, level, _, idx = name.split(".")
    level, idx = int(level), int(idx)
    block = unet.up_blocks[level]
    if idx > 0:
        return block.resnets[idx - 1].out_channels
    if level == 0:
        return unet.mid_block.resnets[-1].out_channels if unet.mid_block is not None else \
            unet.down_blocks[-1].resnets[-1].out_channels
    return unet.up_blocks[level - 1].resnets[-1].out_channels


def skippable_blocks(unet) -> list[BlockInfo]:
    """Every ResNet/attention sub-block of ``unet`` with whether skipping it keeps shapes valid."""
    out = []
    for name, m in unet_blocks(unet):
        stage = name.split(".")[0].split("_")[0]
        if isinstance(m, (SkippedAttention, SkippedResnet)):  # a slim UNet's removed block
            out.append(BlockInfo(name, block_kind(name), stage, m.in_channels, getattr(m, "out_channels", m.in_channels),
                                 False, "already removed (a stand-in of a slim UNet)"))
            continue
        if block_kind(name) == "attention":
            ch = m.config.in_channels if hasattr(m, "config") else m.in_channels
            out.append(BlockInfo(name, "attention", stage, ch, ch, True, "residual: identity keeps the shape"))
            continue
        cin, cout = m.in_channels, m.out_channels
        if stage == "up":
            hidden = _up_hidden_channels(unet, name)
            ok = hidden == cout
            why = (f"drops its skip connection; hidden ({hidden}) has the output's {cout} channels" if ok else
                   f"hidden has {hidden} channels, output {cout}: dropping the block changes the shape")
        else:
            ok = cin == cout
            why = "identity: in = out channels" if ok else f"changes channels {cin} -> {cout}"
        out.append(BlockInfo(name, "resnet", stage, cin, cout, ok, why))
    return out


def stand_in(info: BlockInfo) -> nn.Module:
    """The parameter-free module that replaces a skipped block."""
    if info.kind == "attention":
        return SkippedAttention(info.in_channels)
    return SkippedResnet(info.out_channels if info.stage == "up" else None, info.in_channels, info.out_channels)


def check_skip_set(infos: dict[str, BlockInfo], skip: Collection[str]) -> None:
    for name in skip:
        if name not in infos:
            raise PocketdiffError(f"unknown UNet block {name!r}; blocks look like 'down_blocks.0.attentions.1' "
                                  f"(see skippable_blocks)")
        if not infos[name].skippable:
            raise PocketdiffError(f"UNet block {name!r} cannot be skipped: {infos[name].reason}")


def _parent_and_index(unet, name: str) -> tuple[nn.ModuleList, int]:
    path, idx = name.rsplit(".", 1)
    return unet.get_submodule(path), int(idx)


@contextmanager
def blocks_replaced(unet, replacements: dict[str, nn.Module]):
    """Swap the named blocks for the given modules inside the ``with`` body, then put them back."""
    originals = {}
    try:
        for name, module in replacements.items():
            parent, idx = _parent_and_index(unet, name)
            originals[name] = parent[idx]
            parent[idx] = module
        yield unet
    finally:
        for name, module in originals.items():
            parent, idx = _parent_and_index(unet, name)
            parent[idx] = module


class ElasticUNet(nn.Module):
    """Wraps a ``UNet2DConditionModel``; ``forward(..., skip=names)`` runs it with those blocks skipped.

    The wrapped UNet's parameters and state-dict keys are unchanged (``elastic.unet``)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.blocks = {b.name: b for b in skippable_blocks(unet)}
        self._stand_ins = {n: stand_in(b) for n, b in self.blocks.items() if b.skippable}

    @property
    def skippable(self) -> list[str]:
        return [n for n, b in self.blocks.items() if b.skippable]

    def forward(self, sample, timestep, encoder_hidden_states, skip: Collection[str] = (), **kwargs):
        # sample [B, C, h, w], timestep [] or [B], encoder_hidden_states [B, 77, D] -> UNet output
        check_skip_set(self.blocks, skip)
        with blocks_replaced(self.unet, {n: self._stand_ins[n] for n in skip}):
            return self.unet(sample, timestep, encoder_hidden_states, **kwargs)
