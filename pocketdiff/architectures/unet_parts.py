"""The pieces of diffusers' ``UNet2DConditionModel.forward`` that the methods which cut a UNet apart share
(Clockwork's split, AdaDiff's segments): the time embedding and one down or up block call, op for op as
diffusers 0.39 runs them for an SD-style UNet, and the checks that a UNet is one.
"""

from __future__ import annotations

import torch

from pocketdiff.errors import PocketdiffError


def check_sd_style(unet, method: str) -> None:
    """Refuse a UNet with the options the cut forward does not reproduce (class or addition embeddings, no mid
    block): one ``error:`` line naming the setting."""
    c = unet.config
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
        if c.get(key) is not None:
            raise PocketdiffError(f"{method} cuts SD-style UNets; this one has {key} = {c.get(key)!r}")
    if unet.mid_block is None:
        raise PocketdiffError(f"{method} needs a UNet with a mid block")


def check_sample_size(unet, sample: torch.Tensor, method: str) -> None:
    f = 2 ** unet.num_upsamplers
    if any(d % f for d in sample.shape[-2:]):
        raise PocketdiffError(f"{method} needs latent sides divisible by {f}; got {tuple(sample.shape[-2:])}")


def time_embedding(unet, sample, timestep, timestep_cond=None) -> torch.Tensor:
    """The UNet's time embedding [B, E] (with a guidance-embedded UNet's ``timestep_cond`` [B, W])."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    return unet.time_embed_act(emb) if unet.time_embed_act is not None else emb


def input_conv(unet, sample) -> torch.Tensor:
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    return unet.conv_in(sample)


def down_call(block, h, emb, text):
    """One down block: (hidden, its res samples)."""
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, encoder_hidden_states=text)
    return block(hidden_states=h, temb=emb)


def mid_call(unet, h, emb, text):
    if getattr(unet.mid_block, "has_cross_attention", False):
        return unet.mid_block(h, emb, encoder_hidden_states=text)
    return unet.mid_block(h, emb)


def up_call(block, h, emb, text, skips):
    """One up block on its skip connections (the tuple in down-path order; the block takes them from the end)."""
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=text)
    return block(hidden_states=h, temb=emb, res_hidden_states_tuple=skips)


def output_head(unet, h) -> torch.Tensor:
    """The output norm, activation and ``conv_out``."""
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)
