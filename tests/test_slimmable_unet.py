"""The slimmable UNet (DDSM): width 1.0 is the teacher exactly; every width is a real smaller UNet whose weights
are slices of the full one, cut by the channel rules the module documents (checked here by hand-written
indices on the tiny UNet: 3 levels of 32, 32, 64 channels, 8 GroupNorm groups, 4 heads)."""

import pytest
import torch

from pocketdiff.architectures.slimmable_unet import (DDSMUNet2DConditionModel, SlimmableUNet,
                                                     WidthUNet2DConditionModel, as_ddsm_unet, check_widths,
                                                     level_channels, materialise_width)
from pocketdiff.errors import PocketdiffError


@pytest.fixture(scope="module")
def unet(tiny_pipe):
    return tiny_pipe.unet.eval()


def _inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    return (torch.randn(batch, c, s, s, generator=g), torch.tensor(500.0),
            torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g))


def test_width_one_reproduces_the_teacher_exactly(unet):
    x = _inputs(unet)
    with torch.no_grad():
        ref = unet(*x).sample
        assert torch.equal(SlimmableUNet(unet)(*x, width=1.0).sample, ref)
        full = materialise_width(unet, 1.0)  # rebuilt from the width config: time embedding, heads, groups
        assert torch.equal(full(*x).sample, ref)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in unet.parameters())


def test_channel_counts_stay_multiples_of_the_group_count(unet):
    groups = unet.config.norm_num_groups  # 8
    assert [level_channels(c, 0.5, groups) for c in (32, 32, 64)] == [16, 16, 32]
    assert [level_channels(c, 0.625, groups) for c in (32, 32, 64)] == [24, 24, 40]  # 2.5 -> 3 per group; 5
    assert level_channels(32, 0.125, groups) == 8  # never fewer than one channel per group
    for w in (0.5, 0.625, 0.75, 0.875):
        m = materialise_width(unet, w)
        norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)]
        assert norms and all(n.num_groups == groups and n.num_channels % groups == 0 for n in norms)


def test_heads_keep_their_count_and_cross_attention_keeps_the_text_width(unet):
    from diffusers.models.attention_processor import Attention

    m = materialise_width(unet, 0.5)
    attn = dict(m.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    full = dict(unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert isinstance(attn, Attention) and attn.heads == full.heads == 4
    assert attn.to_q.out_features == 16 and full.to_q.out_features == 32  # head dim 8 -> 4
    assert attn.to_k.in_features == attn.to_v.in_features == unet.config.cross_attention_dim


def _kept(n_full, keep_per_group, groups=8):
    per = n_full // groups
    return [g * per + j for g in range(groups) for j in range(keep_per_group)]


def test_decoder_skip_concat_is_sliced_per_part(unet):
    # up_blocks.0.resnets.0 at full width: cat([hidden 64 (mid block), skip 64 (down_blocks.2)]) = 128 in.
    # Width 0.5 keeps 4 of 8 per group in each part: hidden rows 0-3, 8-11, ...; skip rows 64+0-3, 64+8-11, ...
    m = materialise_width(unet, 0.5)
    name = "up_blocks.0.resnets.0"
    full, sub = dict(unet.named_modules())[name], dict(m.named_modules())[name]
    rows_in = _kept(64, 4) + [64 + r for r in _kept(64, 4)]
    rows_out = _kept(64, 4)
    assert sub.conv1.weight.shape == (32, 64, 3, 3)
    assert torch.equal(sub.conv1.weight, full.conv1.weight[rows_out][:, rows_in])
    assert torch.equal(sub.norm1.weight, full.norm1.weight[rows_in])
    assert torch.equal(sub.conv_shortcut.weight, full.conv_shortcut.weight[rows_out][:, rows_in])
    # a prefix slice of the concatenation would take hidden channels only; per part takes half of each
    assert rows_in != list(range(64))


def test_geglu_halves_and_time_embedding(unet):
    m = materialise_width(unet, 0.5)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"
    full, sub = dict(unet.named_parameters())[key], dict(m.named_parameters())[key]
    inner = full.shape[0] // 2  # 128: value half, then gate half
    rows = _kept(inner, 8) + [inner + r for r in _kept(inner, 8)]
    assert torch.equal(sub, full[rows][:, _kept(32, 2)])
    # the time embedding stays at full width: same sinusoid size, same MLP
    assert m.time_proj.num_channels == unet.time_proj.num_channels == 32
    assert torch.equal(m.time_embedding.linear_1.weight, unet.time_embedding.linear_1.weight)
    res = dict(m.named_modules())["down_blocks.0.resnets.0"]
    assert res.time_emb_proj.in_features == unet.time_embedding.linear_2.out_features


def test_shared_weights_train_every_width(unet):
    import copy

    net = SlimmableUNet(copy.deepcopy(unet), widths=(0.5, 0.75, 1.0))
    x = _inputs(unet)
    for w in (0.5, 0.75):
        with torch.no_grad():
            assert torch.allclose(net(*x, width=w).sample, materialise_width(net.unet, w)(*x).sample, atol=1e-5)
    net.zero_grad()
    net(*x, width=0.5).sample.square().mean().backward()
    grad = net.unet.conv_in.weight.grad  # [32, 4, 3, 3]: rows the 0.5 model keeps get gradient, the rest none
    kept = _kept(32, 2)
    dropped = [r for r in range(32) if r not in kept]
    assert grad[kept].abs().sum() > 0 and grad[dropped].abs().sum() == 0
    with pytest.raises(PocketdiffError, match="width 0.625 is not one of"):
        net(*x, width=0.625)


def test_models_round_trip(unet, tmp_path):
    m = materialise_width(unet, 0.75)
    m.save_pretrained(tmp_path / "w")
    back = WidthUNet2DConditionModel.from_pretrained(tmp_path / "w")
    assert back.config.width == 0.75 and back.config.full_block_out_channels == [32, 32, 64]
    x = _inputs(unet)
    with torch.no_grad():
        assert torch.equal(back(*x).sample, m(*x).sample)
    d = as_ddsm_unet(unet, (0.5, 1.0), {"scheduler": "ddim", "steps": 2, "guidance": 2.0, "widths": [1.0, 0.5]})
    d.save_pretrained(tmp_path / "d")
    back = DDSMUNet2DConditionModel.from_pretrained(tmp_path / "d")
    assert back.config.ddsm_widths == [0.5, 1.0] and back.config.ddsm_schedule["widths"] == [1.0, 0.5]


@pytest.mark.parametrize("widths,message", [
    ((0.5, 0.6, 1.0), "width 0.6 is not a multiple of 1/8"),
    ((0.5, 0.75), "must include 1.0"),
    ((0.0, 1.0), "width 0.0 is not a multiple"),
])
def test_bad_widths(widths, message):
    with pytest.raises(PocketdiffError, match=message):
        check_widths(widths)


def test_a_slim_unet_is_slimmable_too(unet):
    from pocketdiff.architectures.elastic_unet import skippable_blocks
    from pocketdiff.architectures.slim_unet import materialise

    removed = [b.name for b in skippable_blocks(unet) if b.skippable][:3]
    slim = materialise(unet, removed)
    d = as_ddsm_unet(slim, (0.5, 1.0))
    assert d.config.removed_blocks == sorted(removed)
    m = materialise_width(d, 0.5)
    assert m.config.removed_blocks == sorted(removed)
    x = _inputs(unet)
    with torch.no_grad():
        assert torch.allclose(SlimmableUNet(d, (0.5, 1.0))(*x, width=0.5).sample, m(*x).sample, atol=1e-5)
        assert torch.equal(materialise_width(d, 1.0)(*x).sample, slim(*x).sample)
