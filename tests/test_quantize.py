"""int8 calibrated on real activations (export/quantize.py): the calibration records what the sampler feeds, the
onnxruntime calibration reads exactly those feeds, and a calibrated bundle's UNet and decoder are QDQ int8 that match
PyTorch fp32 on a held-out generation, run on the unchanged runtime and say in the manifest how they were quantised."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from pocketdiff.errors import PocketdiffError
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.export.components import component_specs
from pocketdiff.export.onnx import export_component
from pocketdiff.export.parity import psnr
from pocketdiff.export.quantize import (FeedReader, calibrate_onnx, calibration_prompts, onnx_input_types,
                                        quantize_onnx_static, record_calibration)
from pocketdiff.export.torch_session import torch_runtime
from pocketdiff.generate import GenerateConfig, generate_torch
from pocketdiff.pipedir import inspect_pipeline
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import get_scheduler_entry
from pocketdiff.runtime.sessions import OnnxSession

PROMPTS, STEPS = 2, 3  # calibration prompts (one more is held out), DDIM steps (one UNet call each)


@pytest.fixture(scope="module")
def calibration(tiny_pipe, tiny_pipeline_dir):
    info = inspect_pipeline(tiny_pipeline_dir)
    ddim = get_scheduler_entry("ddim").config_for(info.scheduler_config)
    runtime = torch_runtime(tiny_pipe, info.tokenizer_dir, ddim)
    return record_calibration(runtime, calibration_prompts(PROMPTS, seed=3), STEPS, guidance=7.5, seed=3)


@pytest.fixture(scope="module")
def int8_bundle(tiny_pipeline_dir, tmp_path_factory):
    return write_bundle(tiny_pipeline_dir, tmp_path_factory.mktemp("int8") / "b",
                        ExportConfig(targets=("onnx",), quantize="int8", calibration=PROMPTS, calibration_seed=3,
                                     steps=STEPS, guidance=7.5, scheduler="ddim"))


def test_calibration_records_every_call_of_the_sampler(calibration):
    assert len(calibration.prompts) == PROMPTS and len(calibration.held_out_prompts) == 1
    assert len(calibration.samples("unet")) == PROMPTS * STEPS  # one UNet call per DDIM step
    assert len(calibration.samples("vae_decoder")) == PROMPTS
    assert len(calibration.samples("text_encoder")) == 2 * PROMPTS  # CFG: the prompt and the empty prompt
    assert calibration.parity_feeds("unet")[0] == 2 and len(calibration.parity_feeds("unet")[1]) == STEPS
    first = calibration.samples("unet")[0]
    assert first["sample"].shape[0] == 2 and first["timestep"].shape == ()  # the CFG batch, a 0-d timestep
    steps = [float(s["timestep"]) for s in calibration.samples("unet")[:STEPS]]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == STEPS  # the scheduler's own timesteps
    # the recorded latents are the generation's, not a constant: two prompts at two seeds differ
    a, b = calibration.samples("vae_decoder")
    assert not np.allclose(a["latent_sample"], b["latent_sample"])


@pytest.fixture(scope="module")
def decoder_onnx(tiny_pipe, tmp_path_factory):
    spec = component_specs(tiny_pipe, roles=["vae_decoder"])[0]
    return export_component(spec, tmp_path_factory.mktemp("decoder"))


def test_onnx_calibration_reads_the_recorded_feeds(decoder_onnx, calibration, tmp_path):
    samples = calibration.samples("vae_decoder")
    ranges = calibrate_onnx(decoder_onnx, samples, tmp_path)
    latents = np.stack([s["latent_sample"] for s in samples])
    low, high = ranges["latent_sample"].range_value  # the graph input's range is exactly the recorded one
    assert np.isclose(low, latents.min()) and np.isclose(high, latents.max())
    zeros = calibrate_onnx(decoder_onnx, [{"latent_sample": np.zeros_like(latents[0])}], tmp_path)
    assert tuple(zeros["latent_sample"].range_value) == (0.0, 0.0)
    moved = [name for name in ranges.data if not np.allclose(ranges[name].range_value, zeros[name].range_value)]
    assert len(moved) > 0.5 * len(ranges.data)
    # chunks merge: one sample a pass gives the ranges of all at once (onnxruntime's own chunking drops them)
    chunked = calibrate_onnx(decoder_onnx, samples, tmp_path, chunk=1)
    assert all(np.allclose(chunked[n].range_value, ranges[n].range_value) for n in ranges.data)


def test_feed_reader_casts_and_serves_each_sample_once(decoder_onnx, calibration):
    samples = calibration.samples("unet")
    reader = FeedReader(samples, {"sample": np.float32, "timestep": np.float32})
    reader.set_range(1, 3)
    got = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert got[2] is None and reader.served == 2 and got[0]["timestep"].shape == ()
    assert np.array_equal(got[0]["sample"], samples[1]["sample"])
    assert onnx_input_types(decoder_onnx) == {"latent_sample": np.float32}
    with pytest.raises(PocketdiffError, match=r"calibration sample 0 lacks inputs \['latent_sample'\]"):
        FeedReader(samples, {"latent_sample": np.float32}).get_next()


def _manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_static_int8_bundle_records_and_passes_parity(int8_bundle):
    by_role = {c["role"]: c for c in _manifest(int8_bundle)["components"]}
    for role, batch, samples in (("unet", 2, PROMPTS * STEPS), ("vae_decoder", 1, PROMPTS)):
        c = by_role[role]
        q = c["meta"]["quantization"]
        assert c["quantization"] == "int8" and q["scheme"] == "qdq-static"
        assert q["calibration"]["samples"] == samples and q["calibration"]["prompts"] == PROMPTS
        assert q["ops"]["int8"].get("Conv", 0) > 0 and q["calibrated_tensors"] > 10
        (results,) = c["parity"].values()
        assert list(c["parity"]) == [f"batch{batch}"]  # the held-out generation's batch
        for r in results.values():  # against PyTorch fp32 on real activations; quantised, so below fp32's 60 dB
            assert r["ok"] and r["min_psnr_db"] == 25 and 30 <= r["psnr_db"] < 60, (role, r)
        ops = {n.op_type for n in onnx.load(str(int8_bundle / c["path"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    text = by_role["text_encoder"]
    assert text["quantization"] == "int8" and text["meta"]["quantization"]["scheme"] == "dynamic"
    assert _manifest(int8_bundle)["export"]["calibration"] == PROMPTS


def test_static_int8_bundle_runs_on_the_unchanged_runtime(int8_bundle, tiny_pipeline_dir):
    """The int8 image is far closer to PyTorch fp32's than another seed's image is."""
    images = {seed: generate_torch(tiny_pipeline_dir, GenerateConfig("a small red circle in the top left", steps=STEPS,
                                                                     guidance=7.5, seed=seed, scheduler="ddim"))
              .image.astype(int) for seed in (5, 6)}
    got = RuntimePipeline.from_bundle(int8_bundle).generate("a small red circle in the top left", steps=STEPS,
                                                             guidance=7.5, seed=5).image.astype(int)
    error, spread = np.abs(got - images[5]).mean(), np.abs(images[6] - images[5]).mean()
    assert 0 < error < 0.25 * spread, (error, spread)


@pytest.mark.parametrize("kwargs,message", [
    (dict(quantize="int8", calibration=-1), "calibration must be a prompt count >= 0, got -1"),
    (dict(calibration=2), "calibration 2 calibrates int8 activations: it needs --quantize int8, got quantize None"),
    (dict(targets=("executorch",), quantize="int8"),
     "quantisation 'int8' on target 'executorch' is static: it needs --calibration N"),
    (dict(quantize="int8", calibration=2, precision="fp16"), "calibrated int8 quantises the fp32 graph"),
    (dict(quantize="int8", calibration=2, calibration_prompts="/nonexistent/prompts.txt"),
     "calibration prompts file /nonexistent/prompts.txt does not exist"),
])
def test_bad_calibration_config(kwargs, message):
    with pytest.raises(PocketdiffError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExportConfig(**kwargs).validate()


def test_calibration_prompts(tmp_path):
    assert calibration_prompts(2, seed=1) == calibration_prompts(2, seed=1) != calibration_prompts(2, seed=2)
    assert len(calibration_prompts(4)) == 5  # four and one held out
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\na dog\n")
    assert calibration_prompts(1, prompts_file=str(f)) == ["a cat", "a dog"]
    with pytest.raises(PocketdiffError, match="has 2 prompts; calibration 2 needs 3"):
        calibration_prompts(2, prompts_file=str(f))


def test_static_int8_through_external_data(decoder_onnx, calibration, tmp_path, monkeypatch):
    """The path a model over 2 GB takes (the SD1.5 UNet): every copy keeps its weights in one external-data file."""
    monkeypatch.setattr("pocketdiff.export.quantize.EXTERNAL_DATA_BYTES", 1)
    path = tmp_path / "vae_decoder" / "model.onnx"
    path.parent.mkdir()
    shutil.copy(decoder_onnx, path)
    meta = quantize_onnx_static(path, calibration.samples("vae_decoder"))
    assert sorted(f.name for f in path.parent.iterdir()) == ["model.onnx", "model.onnx_data"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["vae_decoder"]  # the work folder is gone
    graph = onnx.load(str(path), load_external_data=False).graph  # the weights are outside the graph file
    assert sum(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer) > 10
    assert not [t.name for t in graph.initializer if len(t.raw_data) > 4096] and meta["ops"]["int8"]["Conv"] > 0
    feeds = calibration.parity_feeds("vae_decoder")[1][0]
    want, got = OnnxSession(decoder_onnx).run(feeds)["sample"], OnnxSession(path).run(feeds)["sample"]
    assert 30 < psnr(want, got) < 60
