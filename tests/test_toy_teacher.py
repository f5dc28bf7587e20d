"""Smoke run of the toy-teacher recipe (2 steps per part), with an interruption and a resume."""

import json

import pytest

from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import inspect_pipeline
from pocketdiff.toyworld.teacher import TeacherRecipe, train_teacher


def test_quick_recipe_resumes(tmp_path):
    out = tmp_path / "teacher"
    with pytest.raises(Interrupted):
        train_teacher(out, TeacherRecipe.quick(), progress=False, stop_after=1)
    assert not out.exists()  # nothing half-written
    assert json.loads((tmp_path / "teacher.work" / "clip" / "checkpoint" / "pocketdiff_loop.json").read_text())["step"] == 1
    train_teacher(out, TeacherRecipe.quick(), progress=False)
    info = inspect_pipeline(out / "pipeline")
    rec = info.history[-1]
    assert rec.name == "toy-train-teacher" and rec.metrics["clip"]["resumed_from"] == 1
    assert rec.metrics["unet"]["steps"] == 2 and "psnr_db" in rec.metrics["vae"]
    assert (out / "clip" / "config.json").is_file() and (out / "checker" / "config.json").is_file()
    assert info.unet_config["cross_attention_dim"] == info.text_encoder_config["hidden_size"] == 64
