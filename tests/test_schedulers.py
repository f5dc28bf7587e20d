"""Numpy schedulers vs diffusers: identical timesteps for 1..50 steps, step outputs within 1e-5."""

import diffusers
import numpy as np
import pytest
import torch

from pocketdiff.architectures.factory import SD15_SCHEDULER
from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.schedulers import SCHEDULERS, scheduler_from_config

PREDICTIONS = ("epsilon", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")


def _pair(name, cfg):
    entry = SCHEDULERS[name]
    return getattr(diffusers, entry.diffusers_class).from_config(entry.config_for(cfg)), entry.create(cfg)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_timesteps_match(name, prediction):
    for spacing in SPACINGS:
        cfg = dict(SD15_SCHEDULER, prediction_type=prediction, timestep_spacing=spacing)
        for n in range(1, 51):
            ref, ours = _pair(name, cfg)
            ref.set_timesteps(n)
            ours.set_timesteps(n)
            np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"{spacing} n={n}")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_step_outputs_match(name, prediction):
    """Each step, fed the same random sample and model output, agrees within 1e-5 (multistep state included)."""
    for spacing in SPACINGS:
        for n in (1, 2, 5, 8, 25, 50):
            cfg = dict(SD15_SCHEDULER, prediction_type=prediction, timestep_spacing=spacing)
            ref, ours = _pair(name, cfg)
            ref.set_timesteps(n)
            ours.set_timesteps(n)
            assert abs(float(ref.init_noise_sigma) - float(ours.init_noise_sigma)) <= 1e-6
            rng = np.random.default_rng(n)
            for i, t in enumerate(ref.timesteps):
                x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
                out = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
                scaled = ref.scale_model_input(torch.from_numpy(x), t).numpy()
                np.testing.assert_allclose(ours.scale_model_input(x, i), scaled, atol=1e-6, rtol=0)
                want = ref.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample.numpy()
                got = ours.step(out, i, x)
                assert got.dtype == np.float32
                err = np.abs(got - want).max()
                assert err <= 1e-5, f"{spacing} n={n} step {i}: max abs {err}"


def test_scheduler_changes_the_result():
    # Guard against a parity test that cannot fail: different samplers give different updates.
    cfg = dict(SD15_SCHEDULER)
    outs = []
    for name in ("ddim", "euler"):
        s = SCHEDULERS[name].create(cfg)
        s.set_timesteps(10)
        x = np.ones((1, 4, 2, 2), np.float32)
        outs.append(s.step(np.zeros_like(x), 0, x))
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


def test_unknown_scheduler_name():
    with pytest.raises(PocketdiffError, match="unknown scheduler 'lms'; allowed: ddim, euler, dpm\\+\\+2m, pndm"):
        scheduler_from_config(SD15_SCHEDULER, "lms")


def test_unknown_scheduler_class():
    with pytest.raises(PocketdiffError, match="LMSDiscreteScheduler"):
        scheduler_from_config({**SD15_SCHEDULER, "_class_name": "LMSDiscreteScheduler"})


def test_unsupported_option_is_named():
    with pytest.raises(PocketdiffError, match="use_karras_sigmas=True"):
        scheduler_from_config({**SD15_SCHEDULER, "use_karras_sigmas": True}, "euler")
    with pytest.raises(PocketdiffError, match="prediction_type 'sample'"):
        scheduler_from_config({**SD15_SCHEDULER, "prediction_type": "sample"}, "ddim")


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5])
def test_bad_step_count(bad):
    s = scheduler_from_config(SD15_SCHEDULER, "ddim")
    with pytest.raises(PocketdiffError, match="steps must be an integer"):
        s.set_timesteps(bad)
