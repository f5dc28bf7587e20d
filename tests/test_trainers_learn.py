"""Every trainer learns: on a tiny problem (a handful of samples, seen again and again) its logged loss falls
from the first logged step (25) to the last (50). Each run is seconds on the tiny or toy models."""

import pytest

from pocketdiff.distill.decoder import DecoderDistillConfig, distill_decoder
from pocketdiff.distill.kd import KDTrainConfig
from pocketdiff.distill.robust_training import robust_train
from pocketdiff.distill.steps import StepDistillConfig, distill_steps
from pocketdiff.pipedir import read_train_log
from pocketdiff.toyworld.checker import CheckerTrainConfig, train_checker
from pocketdiff.toyworld.clip import ClipTrainConfig, train_clip
from pocketdiff.toyworld.teacher import TeacherRecipe, UnetTrainConfig, VaeTrainConfig, train_teacher

STEPS = 50


def _falls(log: list[dict], term: str = "loss", by: float = 0.9) -> tuple[float, float]:
    first, last = log[0][term], log[-1][term]
    assert [r["step"] for r in log] == [25, 50]
    assert last < by * first, (term, first, last)
    return first, last


def test_kd_job_learns(tiny_pipeline_dir, tmp_path):
    cfg = KDTrainConfig(steps=STEPS, batch_size=4, pool_size=4, lr=1e-3, skip_prob=0.0, checkpoint_every=STEPS)
    robust_train(tiny_pipeline_dir, tmp_path / "out", cfg, tmp_path / "work", progress=False)
    _falls(read_train_log(tmp_path / "work"), "denoise")  # (KD to its own starting copy: out_kd starts at 0)


def test_decoder_distillation_learns(tiny_pipeline_dir, tmp_path):
    cfg = DecoderDistillConfig(kind="tiny", tiny_channels=8, tiny_blocks=1, steps=STEPS, batch_size=8, lr=1e-3,
                               perceptual="none", n_generated=8, gen_steps=2, gen_batch=8, n_encoded=8,
                               checkpoint_every=STEPS)
    distill_decoder(tiny_pipeline_dir, tmp_path / "out", cfg, tmp_path / "work", progress=False)
    _falls(read_train_log(tmp_path / "work" / "train"))


def test_step_distillation_learns(tiny_pipeline_dir, tmp_path):
    cfg = StepDistillConfig(start_steps=4, rounds=1, iters=STEPS, batch_size=4, pool_size=4, lr=1e-3,
                            cfg_prob=0.5, w_min=1.5, w_max=3.0, checkpoint_every=STEPS)
    distill_steps(tiny_pipeline_dir, tmp_path / "out", cfg, tmp_path / "work", progress=False)
    _falls(read_train_log(tmp_path / "work" / "round1" / "train"))


@pytest.mark.parametrize("part", ["clip", "checker"])
def test_toy_clip_and_checker_learn(part, tmp_path):
    if part == "clip":
        train_clip(tmp_path / "clip", ClipTrainConfig(steps=STEPS, batch_size=16, pool_size=16), progress=False)
    else:
        train_checker(tmp_path / "checker", CheckerTrainConfig(steps=STEPS, batch_size=16, pool_size=16),
                      progress=False)
    _falls(read_train_log(tmp_path / part))


def test_toy_vae_and_unet_learn(tmp_path):
    """They train inside the teacher recipe, after the CLIP and the checker (one step each here)."""
    tiny = TeacherRecipe(ClipTrainConfig(steps=1, batch_size=8, pool_size=8),
                         CheckerTrainConfig(steps=1, batch_size=8, pool_size=8),
                         VaeTrainConfig(steps=STEPS, batch_size=8, pool_size=8),
                         UnetTrainConfig(steps=STEPS, batch_size=8, pool_size=8))
    train_teacher(tmp_path / "teacher", tiny, progress=False)
    for part in ("vae", "unet"):
        _falls(read_train_log(tmp_path / "teacher.work" / part))
