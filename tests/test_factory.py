import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from pocketdiff.architectures.factory import ARCHITECTURES, get_architecture
from pocketdiff.errors import PocketdiffError


def _params(module):
    return sum(p.numel() for p in module.parameters())


def test_sd15_is_exact():
    """The sd15 configs give SD1.5's published parameter counts (built on the meta device: no memory)."""
    arch = get_architecture("sd15")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        text = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
    assert _params(unet) == 859_520_964
    assert _params(vae) == 83_653_863
    assert _params(text) == 123_060_480
    assert arch.image_size == 512 and arch.scheduler["_class_name"] == "PNDMScheduler"


def test_tiny_keeps_sd_block_layout():
    tiny, sd = get_architecture("tiny"), get_architecture("sd15")
    assert set(tiny.unet["down_block_types"]) == set(sd.unet["down_block_types"])
    assert tiny.unet["mid_block_type"] == sd.unet["mid_block_type"]
    assert tiny.unet["layers_per_block"] == 2 and len(tiny.unet["block_out_channels"]) >= 3
    assert tiny.unet["cross_attention_dim"] == tiny.text_encoder["hidden_size"]


def test_tiny_pipeline(tiny_pipe):
    assert type(tiny_pipe.unet).__name__ == "UNet2DConditionModel"
    assert _params(tiny_pipe.unet) < 3_000_000
    ids = tiny_pipe.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny_pipe.text_encoder(ids)[0]
        out = tiny_pipe.unet(torch.zeros(1, 4, 8, 8), 10, hidden).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_unknown_architecture():
    with pytest.raises(PocketdiffError, match="unknown architecture .sd21.; allowed: sd15, tiny, toy, sd15-student, tiny-student"):
        get_architecture("sd21")
    assert list(ARCHITECTURES) == ["sd15", "tiny", "toy", "sd15-student", "tiny-student"]
