"""Same seed, same image: diffusers (torch) path vs the torch-free runtime on ONNX, within 2/255."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pocketdiff.errors import PocketdiffError
from pocketdiff.generate import (GenerateConfig, generate_many, generate_runtime, generate_torch,
                                 images_from_latents, runtime_from_onnx_folder)
from pocketdiff.pipedir import load_pipeline
from pocketdiff.runtime.schedulers import SCHEDULERS


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_paths_agree(tiny_pipeline_dir, tiny_onnx_dir, scheduler):
    cfg = GenerateConfig("a small red circle in the top left", steps=6, guidance=7.5, seed=11, scheduler=scheduler)
    a = generate_torch(tiny_pipeline_dir, cfg).image.astype(int)
    b = generate_runtime(tiny_onnx_dir, cfg).image.astype(int)
    assert a.shape == b.shape == (32, 32, 3)
    assert np.abs(a - b).max() <= 2
    assert a.std() > 1  # not a blank image


def test_paths_agree_without_guidance(tiny_pipeline_dir, tiny_onnx_dir):
    cfg = GenerateConfig("a blue square", steps=4, guidance=1.0, seed=5, scheduler="ddim")
    a = generate_torch(tiny_pipeline_dir, cfg)
    b = generate_runtime(tiny_onnx_dir, cfg)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2
    assert a.steps == b.steps == 4


def test_latents_then_decode_is_the_image(tiny_pipeline_dir, tiny_onnx_dir):
    """Decoding generate_many's latents reproduces its images exactly: the decoder reports share one run."""
    prompts = ["a red circle", "a blue square", "a green triangle"]
    cfg = GenerateConfig("", steps=3, guidance=2.0, seed=4, scheduler="ddim")
    images = generate_many(prompts, cfg, pipeline_dir=tiny_pipeline_dir, batch_size=2)
    latents = generate_many(prompts, cfg, pipeline_dir=tiny_pipeline_dir, batch_size=2, output="latent")
    assert latents.dtype == np.float32 and latents.shape[0] == 3 and latents.ndim == 4
    decoded = images_from_latents(load_pipeline(tiny_pipeline_dir).vae, latents, batch_size=2)
    assert decoded.dtype == np.uint8 and decoded.shape == images.shape
    assert np.abs(decoded.astype(int) - images.astype(int)).max() <= 1
    with pytest.raises(PocketdiffError, match="'pixels'"):
        generate_many(prompts, cfg, pipeline_dir=tiny_pipeline_dir, output="pixels")
    with pytest.raises(PocketdiffError, match="torch path"):
        generate_many(prompts, cfg, onnx_dir=tiny_onnx_dir, output="latent")


def test_seed_and_prompt_matter(tiny_onnx_dir):
    pipe = runtime_from_onnx_folder(tiny_onnx_dir)
    base = pipe.generate("a red circle", steps=3, guidance=7.5, seed=1).image.astype(int)
    other_seed = pipe.generate("a red circle", steps=3, guidance=7.5, seed=2).image.astype(int)
    again = pipe.generate("a red circle", steps=3, guidance=7.5, seed=1).image.astype(int)
    assert np.array_equal(base, again)
    assert np.abs(base - other_seed).max() > 2


def test_runtime_progress_and_timings(tiny_onnx_dir):
    pipe = runtime_from_onnx_folder(tiny_onnx_dir)
    seen = []
    res = pipe.generate("a red circle", steps=5, guidance=7.5, seed=0, scheduler="pndm",
                        callback=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]  # PLMS runs one extra step
    assert res.steps == 6 and [c.step for c in res.trace if c.role == "unet"] == list(range(6))
    assert set(res.timings) == {"tokenize_s", "text_encoder_s", "unet_s", "decoder_s", "total_s"}
    assert res.image.dtype == np.uint8


def test_cli_both_paths(tiny_pipeline_dir, tiny_onnx_dir, tmp_path):
    outs = {}
    for flag, src in (("--pipeline", tiny_pipeline_dir), ("--onnx", tiny_onnx_dir)):
        out = tmp_path / f"{flag[2:]}.png"
        proc = subprocess.run(
            [sys.executable, "-m", "pocketdiff.cli", "generate", flag, str(src), "a green star", "--steps", "5",
             "--guidance", "6", "--seed", "9", "--scheduler", "euler", "--out", str(out)],
            capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "denoising" in proc.stderr  # the progress bar
        outs[flag] = np.asarray(Image.open(out)).astype(int)
    assert np.abs(outs["--pipeline"] - outs["--onnx"]).max() <= 2
