import json

import pytest
import torch

from pocketdiff.distill.loop import Interrupted, LoopConfig, read_log, train
from pocketdiff.errors import PocketdiffError


def _job(workdir, steps, stop_after=None, lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))

    def batch_fn(step):
        return data[(step * 8) % 64:(step * 8) % 64 + 8]

    def loss_fn(models, x):
        out = models[0](x)
        return {"loss": (out ** 2).mean(), "mean_out": out.mean().detach()}

    summary = train(workdir, [model], opt, batch_fn, loss_fn, LoopConfig(steps=steps, checkpoint_every=4, log_every=1,
                    progress=False), {"lr": lr, "steps": steps}, stop_after=stop_after, lr_scheduler=sched)
    return model, summary


def test_resume_equals_uninterrupted(tmp_path):
    straight, _ = _job(tmp_path / "a", 10)
    with pytest.raises(Interrupted, match="stopped at step 5 of 10"):
        _job(tmp_path / "b", 10, stop_after=5)
    first_wall = json.loads((tmp_path / "b" / "checkpoint" / "pocketdiff_loop.json").read_text())["wall_time_s"]
    resumed, second = _job(tmp_path / "b", 10)
    assert second["resumed_from"] == 5 and second["steps"] == 10
    assert first_wall > 0 and second["wall_time_s"] > first_wall  # cumulative over the resumed runs
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    log = read_log(tmp_path / "b")
    assert [r["step"] for r in log] == list(range(1, 11)) and {"loss", "mean_out"} <= set(log[0])


def test_finished_job_is_not_retrained(tmp_path):
    _job(tmp_path, 4)
    _, again = _job(tmp_path, 4)
    assert again["resumed_from"] == 4 and again["steps"] == 4 and again["session_wall_time_s"] == 0.0


def test_config_change_is_refused(tmp_path):
    _job(tmp_path, 4)
    with pytest.raises(PocketdiffError, match="checkpoint of a different config"):
        _job(tmp_path, 4, lr=0.2)


def test_lr_schedule_cosine_decays_to_a_twentieth_and_constant_is_none():
    from pocketdiff.distill.loop import lr_schedule

    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.2)
    assert lr_schedule(opt, "constant", 10, 0.2) is None
    sched = lr_schedule(opt, "cosine", 10, 0.2)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.2 / 20)
    with pytest.raises(PocketdiffError, match="unknown learning-rate schedule 'linear'; allowed: constant, cosine"):
        lr_schedule(opt, "linear", 10, 0.2)
