import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdiff.loop import Interrupted, LoopConfig, recover_checkpoint, train, truncate_log
from pocketdiff.pipedir import read_train_log
from pocketdiff.errors import PocketdiffError


def _job(workdir, steps, stop_after=None, lr=0.1, ema_decay=0.0):
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
                    progress=False, ema_decay=ema_decay), {"lr": lr, "steps": steps, "ema": ema_decay},
                    stop_after=stop_after, lr_scheduler=sched)
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
    log = read_train_log(tmp_path / "b")
    assert [r["step"] for r in log] == list(range(1, 11)) and {"loss", "mean_out"} <= set(log[0])


def test_ema_is_the_average_of_the_trajectory_and_resumes_exactly(tmp_path):
    raw, _ = _job(tmp_path / "raw", 10)
    avg, _ = _job(tmp_path / "ema", 10, ema_decay=0.5)
    # the same trajectory, averaged by hand: decay min(0.5, (1 + n) / (10 + n)) at update n (0 at n = 1)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    shadow = [p.detach().clone() for p in model.parameters()]
    for step in range(10):
        opt.zero_grad()
        (model(data[(step * 8) % 64:(step * 8) % 64 + 8]) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        n = step  # EMAModel.get_decay: the update count minus one
        d = 0.0 if n <= 0 else min(0.5, (1 + n) / (10 + n))
        shadow = [d * s + (1 - d) * p.detach() for s, p in zip(shadow, model.parameters())]
    for p, q, s in zip(raw.parameters(), avg.parameters(), shadow):
        assert not torch.allclose(p, q)  # the average is not the last iterate
        torch.testing.assert_close(q, s)
    with pytest.raises(Interrupted):
        _job(tmp_path / "cut", 10, stop_after=6, ema_decay=0.5)
    resumed, _ = _job(tmp_path / "cut", 10, ema_decay=0.5)
    for p, q in zip(avg.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(PocketdiffError, match="ema_decay must be in \\[0, 1\\).*got 1.0"):
        LoopConfig(steps=1, ema_decay=1.0)


def test_finished_job_is_not_retrained(tmp_path):
    _job(tmp_path, 4)
    _, again = _job(tmp_path, 4)
    assert again["resumed_from"] == 4 and again["steps"] == 4 and again["session_wall_time_s"] == 0.0


def test_config_change_is_refused(tmp_path):
    _job(tmp_path, 4)
    with pytest.raises(PocketdiffError, match="checkpoint of a different config"):
        _job(tmp_path, 4, lr=0.2)


def test_lr_schedule_cosine_decays_to_a_twentieth_and_constant_is_none():
    from pocketdiff.loop import lr_schedule

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


def test_log_rows_are_means_over_their_interval(tmp_path):
    """A row every log_every steps (and at the last) holds each term's mean over the steps since the row before;
    after a resume, over this run's steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    seen: list[float] = []

    def loss_fn(models, x):
        loss = (models[0](x) ** 2).mean()
        seen.append(float(loss))
        return {"loss": loss}

    def run(stop_after=None):
        train(tmp_path, [model], opt, lambda step: data[step % 8 * 8:step % 8 * 8 + 8], loss_fn,
              LoopConfig(steps=12, checkpoint_every=1, log_every=5, progress=False), {"job": 1},
              stop_after=stop_after)

    with pytest.raises(Interrupted):
        run(stop_after=7)
    run()
    log = read_train_log(tmp_path)
    assert [r["step"] for r in log] == [5, 10, 12]
    assert log[0]["loss"] == pytest.approx(sum(seen[0:5]) / 5)
    assert log[1]["loss"] == pytest.approx(sum(seen[7:10]) / 3)  # resumed at 7: steps 8-10 of this run
    assert log[2]["loss"] == pytest.approx(sum(seen[10:12]) / 2)


def _run_until(cmd, checkpoint_meta: Path, at_step: int, timeout: float = 120):
    """Start ``cmd``, and SIGKILL it once its checkpoint reaches ``at_step`` (wherever it is then: training,
    saving, swapping checkpoints). Returns the step the kill was sent at."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            step = json.loads(checkpoint_meta.read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = -1
        if step >= at_step or proc.poll() is not None:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return step


def test_training_survives_real_kills(tmp_path):
    """Killed with SIGKILL three times (a checkpoint every step, so most kills land inside a checkpoint's write
    or swap), resumed each time: the final weights equal an uninterrupted run's, and no log step appears twice."""
    script = [sys.executable, str(Path(__file__).with_name("killable_job.py"))]
    subprocess.run(script + [str(tmp_path / "straight")], check=True)
    killed = tmp_path / "killed"
    for at in (20, 90, 200):
        _run_until(script + [str(killed)], killed / "checkpoint" / "pocketdiff_loop.json", at)
    subprocess.run(script + [str(killed)], check=True)
    assert json.loads((killed / "summary.json").read_text())["resumed_from"] >= 200  # resumed, not restarted
    np.testing.assert_array_equal(np.load(killed / "final.npy"), np.load(tmp_path / "straight" / "final.npy"))
    steps = [r["step"] for r in read_train_log(killed)]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert [r["step"] for r in read_train_log(tmp_path / "straight")] == steps


def test_a_kill_between_checkpoint_renames_resumes_from_the_last_complete_one(tmp_path):
    """The states a kill can leave inside ``save``: the new checkpoint half-written (checkpoint.tmp), the current
    one moved aside before the new one is renamed in (checkpoint.old only), both complete."""
    _job(tmp_path, 8)
    ckpt, old, tmp = tmp_path / "checkpoint", tmp_path / "checkpoint.old", tmp_path / "checkpoint.tmp"
    ckpt.rename(old)  # killed between moving the current checkpoint aside and renaming the new one in
    tmp.mkdir()  # with a half-written new one
    recover_checkpoint(tmp_path)
    assert json.loads((ckpt / "pocketdiff_loop.json").read_text())["step"] == 8 and not old.exists()
    shutil.copytree(ckpt, old)  # killed after the rename, before the old one was deleted
    recover_checkpoint(tmp_path)
    assert ckpt.is_dir() and not old.exists()
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 4, "loss": 1}\n{"step": 8, "loss": 2}\n{"step": 12, "lo')  # a torn last line
    truncate_log(log, 8)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [4, 8]
