"""Stage slim-finetune: a 2-step smoke run of KD from the teacher into a materialised slim UNet, with an
interruption and a resume; a teacher of another architecture is refused by name."""

import pytest

from pocketdiff.distill.kd import KDTrainConfig
from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import read_train_log
from pocketdiff.distill.slim_finetune import slim_finetune
from pocketdiff.errors import PocketdiffError

REMOVED = ["down_blocks.0.attentions.1", "up_blocks.1.resnets.2"]


@pytest.fixture(scope="module")
def slim_dir(tiny_pipe, tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from pocketdiff.architectures.slim_unet import materialise
    from pocketdiff.pipedir import StageRecord, write_pipeline

    pipe = StableDiffusionPipeline(**{**tiny_pipe.components, "unet": materialise(tiny_pipe.unet, REMOVED)})
    return write_pipeline(pipe, tmp_path_factory.mktemp("slimft") / "slim", [StageRecord("test", {})])


def test_slim_finetune_resumes(slim_dir, tiny_pipeline_dir, tmp_path):
    import torch

    from pocketdiff.pipedir import load_pipeline, read_history

    cfg = KDTrainConfig(steps=2, batch_size=2, pool_size=8, skip_prob=0.0, checkpoint_every=1)
    work, out = tmp_path / "work", tmp_path / "out"
    with pytest.raises(Interrupted):
        slim_finetune(slim_dir, tiny_pipeline_dir, out, cfg, work, stop_after=1, progress=False)
    assert not out.exists()
    slim_finetune(slim_dir, tiny_pipeline_dir, out, cfg, work, progress=False)
    log = read_train_log(work)
    assert [r["step"] for r in log] == [2] and log[-1]["blocks_skipped"] == 0.0
    assert {"denoise", "out_kd", "feat_kd", "loss"} <= set(log[-1]) and log[-1]["out_kd"] > 0
    before, after = load_pipeline(slim_dir).unet, load_pipeline(out).unet
    assert after.config.removed_blocks == sorted(REMOVED)
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # it trained
    last = read_history(out)[-1]
    assert last.name == "slim-finetune" and last.config["summary"]["resumed_from"] == 1


def test_teacher_of_another_architecture_is_refused(slim_dir, tmp_path):
    from pocketdiff.architectures.factory import build_pipeline
    from pocketdiff.pipedir import StageRecord, write_pipeline

    other = build_pipeline("tiny", seed=0, unet_overrides={"block_out_channels": [16, 16, 32]})
    teacher = write_pipeline(other, tmp_path / "other", [StageRecord("create", {})])
    with pytest.raises(PocketdiffError, match="differ in block_out_channels"):
        slim_finetune(slim_dir, teacher, tmp_path / "o", KDTrainConfig(steps=1), tmp_path / "w", progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_slim_finetune_and_evolve_errors(slim_dir, tiny_pipeline_dir, tmp_path, capsys):
    from pocketdiff.cli import main

    out = tmp_path / "ft"
    base = ["slim-finetune", "--pipeline", str(slim_dir), "--teacher", str(tiny_pipeline_dir), "--out", str(out),
            "--batch-size", "2", "--no-progress"]
    assert main([*base, "--steps", "-1"]) == 2 and "steps >= 0" in capsys.readouterr().err
    assert main([*base, "--steps", "1"]) == 0 and (out / "unet" / "config.json").is_file()
    ev = ["slim-evolve", "--pipeline", str(tiny_pipeline_dir), "--out", str(tmp_path / "ev"), "--latency-table",
          str(tmp_path / "none.json"), "--no-progress"]
    assert main([*ev, "--budget", "0"]) == 2 and "budget must be in (0, 1]" in capsys.readouterr().err
    assert main(ev) == 2 and "cannot read latency table" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
