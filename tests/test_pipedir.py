import json

import pytest

from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import (
    StageRecord, atomic_output_dir, inspect_pipeline, read_history, write_history,
)


def test_inspect_tiny(tiny_pipeline_dir):
    info = inspect_pipeline(tiny_pipeline_dir)
    assert info.latent_shape == (4, 8, 8) and info.vae_scale_factor == 4
    assert info.history[0].name == "create" and "torch" in info.history[0].versions


def test_loads_with_plain_diffusers(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir), local_files_only=True)
    assert pipe.unet.config.sample_size == 8


def test_missing_dir(tmp_path):
    with pytest.raises(PocketdiffError, match="does not exist"):
        inspect_pipeline(tmp_path / "nope")


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_missing_component(copy_pipeline, component):
    import shutil

    p = copy_pipeline()
    shutil.rmtree(p / component)
    with pytest.raises(PocketdiffError, match=f"missing component '{component}'.*required components: unet, vae"):
        inspect_pipeline(p)


@pytest.mark.parametrize("component,key,value,match", [
    ("unet", "cross_attention_dim", 48, "cross_attention_dim 48 does not match the text encoder hidden_size 32"),
    ("vae", "latent_channels", 8, "latent_channels 8 does not match UNet in_channels 4"),
])
def test_incompatible_components(copy_pipeline, component, key, value, match):
    p = copy_pipeline()
    f = p / component / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), key: value}))
    with pytest.raises(PocketdiffError, match=match):
        inspect_pipeline(p)


def test_unknown_scheduler_class(copy_pipeline):
    p = copy_pipeline()
    f = p / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "_class_name": "LMSDiscreteScheduler"}))
    with pytest.raises(PocketdiffError, match="unknown scheduler class 'LMSDiscreteScheduler'; allowed: DDIMScheduler"):
        inspect_pipeline(p)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(copy_pipeline, damage):
    p = copy_pipeline()
    f = p / "unet" / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(PocketdiffError, match="corrupt safetensors file .*diffusion_pytorch_model.safetensors"):
        inspect_pipeline(p)


def test_history_round_trip(tmp_path):
    recs = [StageRecord("create", {"arch": "tiny"}), StageRecord("slim", {"p": 0.1}, {"loss": 0.5}, 12.5)]
    write_history(tmp_path, recs)
    back = read_history(tmp_path)
    assert [r.name for r in back] == ["create", "slim"] and back[1].metrics == {"loss": 0.5}
    assert back[1].wall_time_s == 12.5 and back[1].config == {"p": 0.1}


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_then_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(PocketdiffError, match="already exists; pass --force"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(x.name for x in out.iterdir()) == ["new"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
