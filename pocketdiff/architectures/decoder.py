"""Efficient image decoders: a channel-pruned ``AutoencoderKL`` decoder and a TAESD-style tiny decoder.

* :class:`PrunedDecoderAutoencoderKL` is an ``AutoencoderKL`` (so a diffusers ``ModelMixin`` +
  ``ConfigMixin``) whose decoder has its own channel widths, ``decoder_block_out_channels`` (and
  ``decoder_norm_num_groups``); the encoder is unchanged. :func:`prune_decoder` builds one from a
  teacher VAE at a width multiplier (SnapFusion: 0.5) and initialises it by structured channel
  selection: every channel space of the decoder keeps the channels whose L1 norm, summed over the
  teacher filters that write into that space, is largest (Li et al., "Pruning Filters for Efficient
  ConvNets"). A residual stream is one space: every block that adds into it keeps the same channels.
* :func:`tiny_decoder_vae` builds diffusers' ``AutoencoderTiny`` (TAESD's architecture: conv, ReLU,
  nearest upsampling only; fixed and export-friendly) with one upsampling per factor of 2 of the
  teacher VAE. Its ``scaling_factor`` is 1.0, as in TAESD: it decodes the latents the UNet produces
  directly (a pipeline divides by the scaling factor before decoding). Its encoder is never trained
  or used by text-to-image; the decoder is the part that ships.

A pipeline folder holding the pruned VAE names its class
``["pocketdiff.architectures.decoder", "PrunedDecoderAutoencoderKL"]`` in ``model_index.json``; diffusers
imports it from there.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, ModelMixin
from diffusers.models.autoencoders.vae import Decoder

from pocketdiff.errors import PocketdiffError

# diffusers finds the loading method by looking the class's bases up in this module
__all__ = ["ModelMixin", "PrunedDecoderAutoencoderKL", "prune_decoder", "tiny_decoder_vae", "DECODER_KINDS"]
DECODER_KINDS = ("pruned", "tiny")


class PrunedDecoderAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` whose decoder has ``decoder_block_out_channels`` (default: the encoder's)."""

    def __init__(self, *args, decoder_block_out_channels: list[int] | None = None,
                 decoder_norm_num_groups: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)  # registers every AutoencoderKL config value
        cfg = self.config
        channels = list(decoder_block_out_channels or cfg.block_out_channels)
        groups = decoder_norm_num_groups or cfg.norm_num_groups
        if len(channels) != len(cfg.block_out_channels) or any(c % groups for c in channels):
            raise PocketdiffError(f"decoder_block_out_channels {channels} must have {len(cfg.block_out_channels)} "
                                  f"entries, each divisible by decoder_norm_num_groups {groups}")
        self.register_to_config(decoder_block_out_channels=channels, decoder_norm_num_groups=groups)
        self.decoder = Decoder(in_channels=cfg.latent_channels, out_channels=cfg.out_channels,
                               up_block_types=cfg.up_block_types, block_out_channels=channels,
                               layers_per_block=cfg.layers_per_block, norm_num_groups=groups, act_fn=cfg.act_fn,
                               mid_block_add_attention=cfg.mid_block_add_attention)


_parent = inspect.signature(AutoencoderKL.__init__)
PrunedDecoderAutoencoderKL.__init__.__signature__ = _parent.replace(parameters=[
    *_parent.parameters.values(),
    inspect.Parameter("decoder_block_out_channels", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("decoder_norm_num_groups", inspect.Parameter.KEYWORD_ONLY, default=None),
])


def pruned_widths(channels: list[int], groups: int, width: float) -> tuple[list[int], int]:
    """(decoder channels at ``width``, a group count that divides them all: ``groups`` if possible)."""
    if not 0.0 < width <= 1.0:
        raise PocketdiffError(f"decoder width multiplier must be in (0, 1], got {width}")
    new = [max(1, round(c * width)) for c in channels]
    g = math.gcd(*new)
    g = max(d for d in range(1, min(groups, g) + 1) if g % d == 0)
    new_groups = groups if all(c % groups == 0 for c in new) else g
    return new, new_groups


def _decoder_spaces(dec) -> dict[str, tuple[str | None, str | None]]:
    """Parameter name prefix (of a conv/linear/norm in a diffusers ``Decoder``) -> (space of its input
    channels, space of its output channels). Spaces are named: ``s<k>`` residual streams,
    ``<resnet>.inner`` a ResNet's hidden channels, ``<attn>.inner`` an attention's inner width; ``None``
    is a space that is never pruned (latents, RGB)."""
    spaces: dict[str, tuple[str | None, str | None]] = {"conv_in": (None, "s0")}
    k, stream = 0, "s0"

    def resnet(prefix: str, r) -> None:
        nonlocal k, stream
        out = stream
        if r.conv_shortcut is not None:  # a new residual stream
            k += 1
            out = f"s{k}"
            spaces[f"{prefix}.conv_shortcut"] = (stream, out)
        spaces[f"{prefix}.norm1"] = (stream, stream)
        spaces[f"{prefix}.conv1"] = (stream, f"{prefix}.inner")
        spaces[f"{prefix}.norm2"] = (f"{prefix}.inner", f"{prefix}.inner")
        spaces[f"{prefix}.conv2"] = (f"{prefix}.inner", out)
        stream = out

    mid = dec.mid_block
    resnet("mid_block.resnets.0", mid.resnets[0])
    for i, (attn, r) in enumerate(zip(mid.attentions, mid.resnets[1:])):
        if attn is not None:
            a = f"mid_block.attentions.{i}"
            spaces[f"{a}.group_norm"] = (stream, stream)
            for proj in ("to_q", "to_k", "to_v"):
                spaces[f"{a}.{proj}"] = (stream, f"{a}.inner")
            spaces[f"{a}.to_out.0"] = (f"{a}.inner", stream)
        resnet(f"mid_block.resnets.{i + 1}", r)
    for b, block in enumerate(dec.up_blocks):
        for j, r in enumerate(block.resnets):
            resnet(f"up_blocks.{b}.resnets.{j}", r)
        for u, _ in enumerate(block.upsamplers or []):
            spaces[f"up_blocks.{b}.upsamplers.{u}.conv"] = (stream, stream)
    spaces["conv_norm_out"] = (stream, stream)
    spaces["conv_out"] = (stream, None)
    return spaces


@torch.no_grad()
def _keep_indices(teacher_dec, spaces, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Space -> sorted indices of the teacher channels to keep (largest summed filter L1 norms)."""
    scores: dict[str, torch.Tensor] = {}
    for prefix, (_, out_space) in spaces.items():
        w = teacher_dec.get_submodule(prefix).weight
        if out_space is None or w.dim() == 1:  # norms do not write a space
            continue
        s = w.abs().flatten(1).sum(1)
        scores[out_space] = scores.get(out_space, 0) + s
    return {sp: torch.sort(torch.topk(sc, sizes[sp]).indices).values for sp, sc in scores.items()}


def prune_decoder(vae, width: float = 0.5) -> PrunedDecoderAutoencoderKL:
    """A :class:`PrunedDecoderAutoencoderKL` at ``width`` × ``vae``'s decoder channels, initialised by L1-norm
    structured channel selection from ``vae``'s decoder; encoder and (post-)quant convs copied unchanged."""
    cfg = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    base = {k: v for k, v in cfg.items() if k in _parent.parameters}
    src_channels = list(cfg.get("decoder_block_out_channels") or cfg["block_out_channels"])
    src_groups = cfg.get("decoder_norm_num_groups") or cfg["norm_num_groups"]
    channels, groups = pruned_widths(src_channels, src_groups, width)
    student = PrunedDecoderAutoencoderKL(**base, decoder_block_out_channels=channels, decoder_norm_num_groups=groups)
    spaces = _decoder_spaces(student.decoder)
    sizes = {}
    for prefix, (i_sp, o_sp) in spaces.items():
        w = student.decoder.get_submodule(prefix).weight
        if o_sp is not None:
            sizes[o_sp] = w.shape[0]
        if i_sp is not None and w.dim() > 1:
            sizes[i_sp] = w.shape[1]
    keep = _keep_indices(vae.decoder, spaces, sizes)
    t_state, s_state = vae.decoder.state_dict(), student.decoder.state_dict()
    new_state = {}
    for name, target in s_state.items():
        prefix, _, leaf = name.rpartition(".")
        if prefix not in spaces:
            raise PocketdiffError(f"prune_decoder does not know decoder parameter {name}; unsupported decoder layout")
        i_sp, o_sp = spaces[prefix]
        t = t_state[name]
        if t.dim() == 1:  # bias or norm affine: lives in the output space
            t = t.index_select(0, keep[o_sp]) if o_sp is not None and target.shape[0] != t.shape[0] else t
        else:
            if o_sp is not None and target.shape[0] != t.shape[0]:
                t = t.index_select(0, keep[o_sp])
            if i_sp is not None and target.shape[1] != t.shape[1]:
                t = t.index_select(1, keep[i_sp])
        if t.shape != target.shape:
            raise PocketdiffError(f"prune_decoder: {name} is {tuple(t.shape)} after selection, the pruned decoder "
                                  f"expects {tuple(target.shape)}")
        new_state[name] = t.clone()
    student.decoder.load_state_dict(new_state, strict=True)
    for part in ("encoder", "quant_conv", "post_quant_conv"):
        if getattr(vae, part, None) is not None:
            getattr(student, part).load_state_dict(getattr(vae, part).state_dict())
    return student.eval()


def tiny_decoder_vae(vae, channels: int = 64, blocks_per_stage: int = 3) -> AutoencoderTiny:
    """An ``AutoencoderTiny`` (TAESD layout) with one upsampling per factor of 2 of ``vae``: randomly
    initialised, to be trained by decoder distillation."""
    if channels < 1 or blocks_per_stage < 1:
        raise PocketdiffError(f"tiny decoder needs channels >= 1 and blocks_per_stage >= 1, got {channels}, "
                              f"{blocks_per_stage}")
    n = len(vae.config.get("decoder_block_out_channels") or vae.config.block_out_channels)  # upsamplings + 1
    return AutoencoderTiny(in_channels=vae.config.in_channels, out_channels=vae.config.out_channels,
                           encoder_block_out_channels=(channels,) * n, decoder_block_out_channels=(channels,) * n,
                           num_encoder_blocks=(1,) + (blocks_per_stage,) * (n - 1),
                           num_decoder_blocks=(blocks_per_stage,) * (n - 1) + (1,),
                           latent_channels=vae.config.latent_channels, scaling_factor=1.0)
