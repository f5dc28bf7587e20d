"""The elastic UNet (skip rules, explicit skip sets) and the materialised slim UNet (parity with the
elastic model, no dead weights, diffusers save/load, pipeline use, export with parity)."""

import json

import pytest
import torch

from pocketdiff.architectures.elastic_unet import ElasticUNet, skippable_blocks
from pocketdiff.architectures.slim_unet import SlimUNet2DConditionModel, materialise
from pocketdiff.errors import PocketdiffError

SKIP = ("down_blocks.0.attentions.1", "mid_block.attentions.0", "down_blocks.1.resnets.1", "up_blocks.0.resnets.1")


def test_sd15_skip_rules():
    """SD1.5 by hand: 38 sub-blocks; all 16 attentions skippable; ResNets that widen channels (down 320->640,
    640->1280) or whose up-path hidden state is wider than their output (up 1280->640, 640->320) are not."""
    from diffusers import UNet2DConditionModel

    from pocketdiff.architectures.factory import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    blocks = {b.name: b for b in skippable_blocks(unet)}
    assert len(blocks) == 38 and sum(b.kind == "attention" for b in blocks.values()) == 16
    fixed = sorted(n for n, b in blocks.items() if not b.skippable)
    assert fixed == ["down_blocks.1.resnets.0", "down_blocks.2.resnets.0", "up_blocks.2.resnets.0",
                     "up_blocks.3.resnets.0"]
    assert "hidden has 1280 channels, output 640" in blocks["up_blocks.2.resnets.0"].reason
    assert blocks["up_blocks.1.resnets.0"].skippable  # hidden 1280 from up_blocks.0, output 1280


def _inputs(unet, batch=2):
    g = torch.Generator().manual_seed(0)
    c, s = unet.config.in_channels, unet.config.sample_size
    return (torch.randn(batch, c, s, s, generator=g), torch.tensor(500.0),
            torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g))


@torch.no_grad()
def test_elastic_skips_every_skippable_block_and_restores(tiny_pipe):
    unet = tiny_pipe.unet.eval()
    elastic = ElasticUNet(unet)
    x = _inputs(unet)
    full = unet(*x).sample
    keys = list(unet.state_dict())
    for name in elastic.skippable:
        out = elastic(*x, skip={name}).sample
        assert out.shape == full.shape and not torch.equal(out, full), name
    assert list(unet.state_dict()) == keys and torch.equal(unet(*x).sample, full)  # blocks put back
    assert torch.equal(elastic(*x).sample, full)
    with pytest.raises(PocketdiffError, match="unknown UNet block 'down_blocks.9.resnets.0'"):
        elastic(*x, skip=["down_blocks.9.resnets.0"])
    fixed = next(n for n, b in elastic.blocks.items() if not b.skippable)
    with pytest.raises(PocketdiffError, match=f"UNet block '{fixed}' cannot be skipped"):
        elastic(*x, skip=[fixed])
    assert list(unet.state_dict()) == keys


@torch.no_grad()
def test_materialised_matches_elastic_and_drops_only_removed_weights(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet.eval()
    x = _inputs(unet)
    slim = materialise(unet, SKIP)
    assert (slim(*x).sample - ElasticUNet(unet)(*x, skip=SKIP).sample).abs().max() <= 1e-5
    removed = sum(p.numel() for n in SKIP for p in unet.get_submodule(n).parameters())
    assert sum(p.numel() for p in slim.parameters()) == sum(p.numel() for p in unet.parameters()) - removed
    assert not any(k.startswith(tuple(f"{n}." for n in SKIP)) for k in slim.state_dict())
    slim.save_pretrained(tmp_path / "slim")
    cfg = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert cfg["_class_name"] == "SlimUNet2DConditionModel" and cfg["removed_blocks"] == sorted(SKIP)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path / "slim").eval()
    assert torch.equal(back(*x).sample, slim(*x).sample)
    assert materialise(back, []).config.removed_blocks == sorted(SKIP)  # removing more keeps what was removed


def test_materialise_refuses_bad_blocks(tiny_pipe):
    with pytest.raises(PocketdiffError, match="'down_blocks.2.resnets.0' cannot be skipped: changes channels 32 -> 64"):
        materialise(tiny_pipe.unet, ["down_blocks.2.resnets.0"])
    with pytest.raises(PocketdiffError, match="unknown UNet block 'mid_block.resnets.7'"):
        materialise(tiny_pipe.unet, ["mid_block.resnets.7"])


# ExecuTorch in make test-slow, for make test's time: make demo's build (which CI runs) exports its slim UNet to
# every target with parity and draws its image on ExecuTorch
@pytest.mark.parametrize("target", ["onnx", pytest.param("executorch", marks=pytest.mark.slow)])
def test_slim_unet_in_pipeline_and_export(tiny_pipe, tmp_path, target):
    """A pipeline folder holding the slim UNet loads in diffusers' StableDiffusionPipeline and exports with
    parity."""
    from diffusers import StableDiffusionPipeline

    from pocketdiff.export.bundle import ExportConfig, write_bundle
    from pocketdiff.pipedir import StageRecord, load_pipeline, write_pipeline

    pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "unet": materialise(tiny_pipe.unet, SKIP)})
    folder = write_pipeline(pipe, tmp_path / "slim", [StageRecord("test", {"removed": list(SKIP)})])
    assert json.loads((folder / "model_index.json").read_text())["unet"] == ["pocketdiff.architectures.slim_unet",
                                                                           "SlimUNet2DConditionModel"]
    loaded = load_pipeline(folder)
    assert type(loaded.unet).__name__ == "SlimUNet2DConditionModel"
    image = loaded("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert image.shape[-1] == 3
    bundle = write_bundle(folder, tmp_path / "bundle", ExportConfig(targets=(target,)))
    manifest = json.loads((bundle / "manifest.json").read_text())
    unets = {c["target"]: c for c in manifest["components"] if c["role"] == "unet"}
    assert set(unets) == {target}
    assert min(r["psnr_db"] for runs in unets[target]["parity"].values() for r in runs.values()) >= 60


def test_unet_spec_with_removed_blocks_builds_a_slim_unet(tmp_path):
    """A --unet-spec may list removed_blocks: the architecture is then built as a SlimUNet2DConditionModel,
    and FLOPs on the meta device follow it."""
    from pocketdiff.architectures.factory import build_pipeline, load_unet_spec
    from pocketdiff.benchmarks.components import arch_sources, component_flops, meta_pipeline

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"removed_blocks": list(SKIP)}))
    pipe = build_pipeline("tiny", unet_overrides=load_unet_spec(spec))
    assert isinstance(pipe.unet, SlimUNet2DConditionModel) and pipe.unet.config.removed_blocks == sorted(SKIP)
    slim_dir, _ = arch_sources("tiny", "torch", None, cache_dir=tmp_path / "cache", unet_spec=spec)
    full_dir, _ = arch_sources("tiny", "torch", None, cache_dir=tmp_path / "cache")
    slim, full = (component_flops(meta_pipeline(d), "unet", 1) for d in (slim_dir, full_dir))
    assert slim["macs"] < full["macs"] and slim["params"] < full["params"]


def test_shipped_sd15_spec_is_valid_and_documented():
    """The shipped SnapFusion-like spec builds a slim SD1.5 UNet (on the meta device: no memory), every removed
    block has its source, and it removes the highest-resolution cross-attention."""
    from pathlib import Path

    import pocketdiff
    from pocketdiff.architectures.factory import get_architecture, load_unet_spec

    path = Path(pocketdiff.__file__).parent / "architectures" / "specs" / "sd15-snapfusion.json"
    spec = load_unet_spec(path)
    with torch.device("meta"):
        slim = SlimUNet2DConditionModel(**{**get_architecture("sd15").unet, **spec})
    removed = slim.config.removed_blocks
    assert len(removed) == 11 and set(json.loads(path.read_text())["_sources"]) == set(removed)
    assert {"down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "up_blocks.3.attentions.0",
            "up_blocks.3.attentions.1", "up_blocks.3.attentions.2"} <= set(removed)
