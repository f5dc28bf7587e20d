"""quantize_onnx_bundle (export/quantize_bundle.py) on the shipped toy student: a verified ONNX-only bundle whose UNet
and decoder are static int8 calibrated on the student's own activations, checked against its fp32 models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pocketdiff.errors import PocketdiffError
from pocketdiff.export.quantize_bundle import quantize_onnx_bundle
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.toyworld import TOY_TEACHER_DIR

STUDENT = TOY_TEACHER_DIR / "student"


@pytest.fixture(scope="module")
def int8_student(tmp_path_factory):
    return quantize_onnx_bundle(STUDENT, tmp_path_factory.mktemp("q") / "student_int8", calibration=3, seed=7,
                                threads=2)


def test_quantized_student_bundle(int8_student):
    bundle = load_bundle(int8_student)  # every file's checksum verified
    source = json.loads((STUDENT / "manifest.json").read_text())
    steps = source["defaults"]["steps"]
    assert bundle.targets == ["onnx"] and not (int8_student / "coreml").exists()
    by_role = {c.role: c for c in bundle.components}
    for role, samples in (("unet", 3 * steps), ("vae_decoder", 3)):  # guidance-embedded: one UNet call a step
        c = by_role[role]
        q = c.meta["quantization"]
        assert c.quantization == "int8" and q["scheme"] == "qdq-static" and q["calibration"]["samples"] == samples
        (runs,) = c.parity.values()
        assert all(r["ok"] and 30 <= r["psnr_db"] < 60 for r in runs.values()), runs
        assert (int8_student / c.path).stat().st_size < 0.7 * (STUDENT / c.path).stat().st_size
    assert by_role["text_encoder"].meta["quantization"]["scheme"] == "dynamic"
    assert set(by_role["text_encoder"].parity) == {"batch1", "batch2"}
    assert bundle.manifest["export"]["calibration"] == 3 and bundle.manifest["defaults"] == source["defaults"]


def test_quantized_student_generates_close_to_fp32(int8_student):
    """The int8 image is far closer to fp32's than fp32's image of another prompt is (the trained student draws the
    same scene at any seed, so a prompt, not a seed, sets the scale)."""
    prompts = ("a small red circle in the top left on a grey background", "a large blue square on a white background")
    fp32 = RuntimePipeline.from_bundle(STUDENT)
    images = [fp32.generate(p, steps=4, guidance=2.0, seed=0).image.astype(int) for p in prompts]
    got = RuntimePipeline.from_bundle(int8_student).generate(prompts[0], steps=4, guidance=2.0, seed=0).image
    error, spread = np.abs(got.astype(int) - images[0]).mean(), np.abs(images[1] - images[0]).mean()
    assert 0 < error < 0.1 * spread, (error, spread)


def test_refuses_a_quantized_source_and_bad_counts(int8_student, tmp_path):
    with pytest.raises(PocketdiffError, match="is not fp32: its onnx text_encoder is fp32\\+int8"):
        quantize_onnx_bundle(int8_student, tmp_path / "again", calibration=2)
    with pytest.raises(PocketdiffError, match="calibration must be a prompt count >= 1 to quantise a bundle, got 0"):
        quantize_onnx_bundle(STUDENT, tmp_path / "zero", calibration=0)
    taken = tmp_path / "taken"
    shutil.copytree(int8_student, taken)
    with pytest.raises(PocketdiffError, match="already exists"):
        quantize_onnx_bundle(STUDENT, taken, calibration=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
