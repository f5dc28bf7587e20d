"""The shipped toy teacher: loads offline with plain diffusers and pocketdiff, and reproduces its
committed smoke-eval numbers for the same seed."""

import json

import numpy as np
import pytest

from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR

PIPE = TOY_TEACHER_DIR / "pipeline"
SMOKE = TOY_TEACHER_DIR.parent.parent.parent / "benchmarks" / "baselines" / "toy_teacher_smoke.json"


def test_size_budget():
    total = sum(f.stat().st_size for f in PIPE.rglob("*.safetensors"))
    assert total <= 30 * 1024**2, total


def test_loads_with_plain_diffusers():
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPE), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a small red circle in the top left on a grey background", num_inference_steps=4,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert img.shape == (32, 32, 3)


def test_generate_cli(tmp_path):
    from pocketdiff.cli import main

    out = tmp_path / "t.png"
    assert main(["generate", "--pipeline", str(PIPE), "a blue square left of a yellow ring", "--steps", "5",
                 "--out", str(out), "--no-progress"]) == 0
    assert out.is_file()


def test_reproduces_committed_smoke_eval(tmp_path):
    from pocketdiff.cli import main

    want = json.loads(SMOKE.read_text())
    out = tmp_path / "eval.json"
    assert main(["eval", "--pipeline", str(PIPE), "--n", str(want["n"]), "--steps", str(want["steps"]),
                 "--guidance", str(want["guidance"]), "--scheduler", want["scheduler"], "--seed", str(want["seed"]),
                 "--out", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())
    assert want["guidance"] == TEACHER_GUIDANCE
    assert got["attribute_accuracy"] == pytest.approx(want["attribute_accuracy"], abs=0.02)
    assert got["clip_score"] == pytest.approx(want["clip_score"], abs=0.5)
    assert got["fid"] == pytest.approx(want["fid"], rel=0.05, abs=0.05)
    assert np.isfinite(got["fid"])
