"""The student side at tiny scale (``arch=tiny-student``, the twin of ``sd15-student``): slim UNet with a guidance
embedding run as one batch-1 pass per step, the TAESD-style decoder, the pruned decoder as the alternative; its
ONNX and ExecuTorch bundles with parity; and ``bench compare`` against the 50-step CFG teacher composed from the
traces."""

import pytest
import torch
from diffusers import AutoencoderTiny, PNDMScheduler, UNet2DConditionModel

from pocketdiff.architectures.decoder import PrunedDecoderAutoencoderKL
from pocketdiff.architectures.factory import SPECS_DIR, build_pipeline, get_architecture, load_unet_spec
from pocketdiff.architectures.slim_unet import SlimUNet2DConditionModel
from pocketdiff.benchmarks.compare import Side, compare, parse_side
from pocketdiff.benchmarks.components import arch_sources, component_flops, meta_pipeline
from pocketdiff.benchmarks.generation_worker import generation_peak
from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import load_pipeline
from pocketdiff.runtime.bundle import load_bundle


@pytest.fixture(scope="module")
def student_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench")
    onnx, pipe_dir = arch_sources("tiny-student", "onnx", None, cache_dir=cache)
    teacher, _ = arch_sources("tiny", "onnx", None, cache_dir=cache)
    return {"cache": cache, "onnx": onnx, "pipe": pipe_dir, "teacher": teacher}


def _check_student_bundle(bundle, target):
    b = load_bundle(bundle)
    assert b.manifest["sampler"]["policy"] == "guidance_embedded"
    unet = b.component("unet", target)
    assert "timestep_cond" in [i["name"] for i in unet.inputs]
    if target == "executorch":  # one pass per step: the static batch is 1, not CFG's 2
        assert unet.inputs[0]["shape"][0] == 1
    for c in b.components:
        if c.target == target:  # parity against torch, per batch and output, as the export gate recorded it
            for per_output in c.parity.values():
                for p in per_output.values():
                    assert p["ok"] and p["psnr_db"] >= 60.0, (c.role, p)


def _check_student_end_to_end(r, names):
    e = r["end_to_end"]
    pndm = PNDMScheduler.from_config(get_architecture("tiny").scheduler)
    pndm.set_timesteps(50)  # diffusers' PLMS repeats its first timestep: 50 steps are 51 UNet calls
    assert e["A"]["calls"] == {"text_encoder@1": 2, "unet@2": len(pndm.timesteps), "vae_decoder@1": 1}
    for n in names:
        assert e[n]["policy"] == "guidance_embedded"
        assert e[n]["calls"] == {"text_encoder@1": 1, "unet@1": 8, "vae_decoder@1": 1}
        med = {(row["component"], row["batch"]): row[n]["median_ms"] for row in r["components"] if n in row}
        assert e[n]["e2e_ms"] == pytest.approx(med[("text_encoder", 1)] + 8 * med[("unet", 1)]
                                               + med[("vae_decoder", 1)])
        assert e["speedup_vs_a"][n] == pytest.approx(e["A"]["e2e_ms"] / e[n]["e2e_ms"], rel=1e-3)


def test_student_architecture_is_the_tiny_unet_minus_its_spec_plus_w():
    pipe = build_pipeline("tiny-student")
    spec = load_unet_spec(SPECS_DIR / "tiny-student.json")["removed_blocks"]
    assert isinstance(pipe.unet, SlimUNet2DConditionModel) and pipe.unet.config.time_cond_proj_dim == 32
    assert isinstance(pipe.vae, AutoencoderTiny)
    full = UNet2DConditionModel(**{**get_architecture("tiny").unet, "time_cond_proj_dim": 32})
    removed = {k for k in full.state_dict() if any(k.startswith(b + ".") for b in spec)}
    assert removed and set(pipe.unet.state_dict()) == set(full.state_dict()) - removed
    # TAESD's layout: the decoder takes the UNet's latents (scale 1.0) to the full image
    with torch.no_grad():
        img = pipe.vae.decode(torch.zeros(1, 4, 8, 8)).sample
    assert img.shape == (1, 3, 32, 32) and pipe.vae.config.scaling_factor == 1.0
    assert isinstance(build_pipeline("tiny-student", decoder="kl").vae, type(build_pipeline("tiny").vae))
    with pytest.raises(PocketdiffError, match="unknown decoder 'taesd'; allowed: kl, tiny"):
        build_pipeline("tiny-student", decoder="taesd")


def test_student_onnx_bundle_against_50_step_cfg_teacher(student_cache):
    """A batch-1 w-embedded UNet with parity, composed end to end from the traces: 1 text call, 8 UNet calls at
    batch 1, 1 decode, against the teacher's 2 text calls, 50 batch-2 UNet calls and 1 decode."""
    _check_student_bundle(student_cache["onnx"], "onnx")
    sides = [Side("bundle", student_cache["teacher"], "onnx", 50, 7.5),
             Side("bundle", student_cache["onnx"], "onnx", 8, 7.5)]
    _check_student_end_to_end(compare(sides, threads=1, warmup=1, repeat=2), ["B"])


@pytest.mark.slow  # (make test-slow) the tiny ExecuTorch export takes minutes on 2 cores
def test_student_executorch_bundle(student_cache):
    et, _ = arch_sources("tiny-student", "executorch", None, cache_dir=student_cache["cache"])
    _check_student_bundle(et, "executorch")
    sides = [Side("bundle", student_cache["teacher"], "onnx", 50, 7.5),
             Side("bundle", student_cache["onnx"], "onnx", 8, 7.5), Side("bundle", et, "executorch", 8, 7.5)]
    _check_student_end_to_end(compare(sides, threads=1, warmup=1, repeat=2), ["B", "C"])


def test_pruned_decoder_alternative(student_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an arch side builds under ./build/bench
    side = parse_side("arch=tiny-student,decoder_width=0.5,backend=torch,steps=8")
    assert side.kind == "pipeline" and side.policy == "guidance_embedded"
    vae = load_pipeline(side.path).vae
    assert isinstance(vae, PrunedDecoderAutoencoderKL) and vae.config.decoder_block_out_channels == [8, 16, 16]
    with pytest.raises(PocketdiffError, match="decoder_width prunes the KL decoder"):
        arch_sources("tiny-student", "torch", None, cache_dir=student_cache["cache"], decoder_width=0.5,
                     decoder="tiny")


def test_generation_peak_is_one_image_in_its_own_process(student_cache):
    r = generation_peak(student_cache["onnx"], "onnx", steps=8, guidance=2.0, threads=1)
    assert r["image_shape"] == [32, 32, 3] and r["calls"] == 10  # text, 8 UNet passes, decode
    assert r["rss_before_load_mb"] < r["rss_after_load_mb"] <= r["peak_rss_mb"]
    assert r["peak_rss_mb"] < 1000  # a torch-free child: no torch import (which alone takes ~400 MB)
    with pytest.raises(PocketdiffError, match="generation on .* failed"):
        generation_peak(student_cache["onnx"], "coreml", steps=8, guidance=2.0)


def test_flops_count_the_student_decoder_it_holds(student_cache, tiny_pipeline_dir):
    """FLOPs come from the meta-device models of the pipeline's own classes: the TAESD-style decoder, not a KL one."""
    student, teacher = meta_pipeline(student_cache["pipe"]), meta_pipeline(tiny_pipeline_dir)
    assert isinstance(student.vae, AutoencoderTiny)
    assert 0 < component_flops(student, "vae_decoder", 1)["macs"] < component_flops(teacher, "vae_decoder", 1)["macs"]
