"""Stage slim-robust: a 2-step smoke run on the tiny pipeline, with an interruption and a resume, named
loss terms logged separately, and deterministic skip sets."""

import pytest

from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import read_train_log
from pocketdiff.distill.kd import KDTrainConfig, skip_set
from pocketdiff.distill.robust_training import robust_train
from pocketdiff.errors import PocketdiffError


def test_robust_training_resumes(tiny_pipeline_dir, tmp_path):
    cfg = KDTrainConfig(steps=2, batch_size=4, pool_size=16, skip_prob=0.5, checkpoint_every=1)
    work, out = tmp_path / "work", tmp_path / "robust"
    with pytest.raises(Interrupted):
        robust_train(tiny_pipeline_dir, out, cfg, work, stop_after=1, progress=False)
    assert not out.exists()  # nothing half-written
    robust_train(tiny_pipeline_dir, out, cfg, work, progress=False)
    log = read_train_log(work)
    assert [r["step"] for r in log] == [2]  # resumed at step 1: only step 2 logged by this run
    assert {"loss", "denoise", "out_kd", "feat_kd", "blocks_skipped"} <= set(log[-1])
    from pocketdiff.pipedir import read_history

    last = read_history(out)[-1]
    assert last.name == "slim-robust" and last.config["summary"]["resumed_from"] == 1


def test_skip_sets_are_deterministic():
    names = [f"b{i}" for i in range(40)]
    a, b = skip_set(3, 0, names, 0.3), skip_set(3, 0, names, 0.3)
    assert a == b and 0 < len(a) < 40 and skip_set(4, 0, names, 0.3) != a
    assert skip_set(3, 0, names, 0.0) == []


@pytest.mark.parametrize("change,message", [
    ({"skip_prob": 1.0}, "skip_prob must be in [0, 1), got 1.0"),
    ({"data": "laion"}, "unknown KD training data source 'laion'"),
    ({"w_feat_kd": -1.0}, "loss weights >= 0"),
])
def test_bad_config(change, message):
    with pytest.raises(PocketdiffError, match=message.replace("[", r"\[").replace(")", r"\)")):
        KDTrainConfig(**change).validate()


def test_cli_slim_robust(tiny_pipeline_dir, tmp_path, capsys):
    from pocketdiff.cli import main

    out = tmp_path / "r"
    args = ["slim-robust", "--pipeline", str(tiny_pipeline_dir), "--out", str(out), "--steps", "1", "--batch-size",
            "2", "--no-progress"]
    assert main([*args, "--skip-prob", "1.5"]) == 2
    assert "skip_prob must be in [0, 1), got 1.5" in capsys.readouterr().err and not out.exists()
    assert main(args) == 0 and (out / "unet" / "config.json").is_file()
    assert main(args) == 2 and "exists" in capsys.readouterr().err
