"""The KD job's denoising term trains the student's own prediction type: the noise for an epsilon UNet, the
velocity for a v-prediction one, each against a hand computation from the schedule's betas, and the job's
logged ``denoise`` term is the MSE to exactly that target."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from pocketdiff.architectures.elastic_unet import ElasticUNet
from pocketdiff.distill.kd import KDJob, KDTrainConfig, denoise_target, encoded_pool
from pocketdiff.errors import PocketdiffError


def _by_hand(kind, x0, noise, t):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear
    acp = torch.cumprod(1 - betas, 0)[t].view(-1, 1, 1, 1).float()
    return noise if kind == "epsilon" else acp.sqrt() * noise - (1 - acp).sqrt() * x0


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_denoise_term_targets_the_prediction_type(tiny_pipe, kind):
    sched = DDPMScheduler.from_config({**tiny_pipe.scheduler.config, "prediction_type": kind})
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), torch.tensor([5, 500, 990])
    want = _by_hand(kind, x0, noise, t)
    assert torch.allclose(denoise_target(sched, x0, noise, t), want, atol=1e-5)
    assert kind == "epsilon" or not torch.allclose(want, noise, atol=1e-2)  # v really differs from the noise

    cfg = KDTrainConfig(batch_size=2, pool_size=4, skip_prob=0.0)
    student, seen = ElasticUNet(tiny_pipe.unet), []

    def recording(*args, **kwargs):  # the student's prediction, as the loss sees it
        seen.append(student(*args, **kwargs).sample)
        return SimpleNamespace(sample=seen[-1])

    with KDJob(tiny_pipe, student, tiny_pipe.unet, cfg, encoded_pool(tiny_pipe, "toyworld", 4, 0), sched) as job:
        b = job.batch(0)
        terms = job.loss([recording], b)
    x0_b, _, t_b, noise_b, _ = b
    assert torch.allclose(terms["denoise"], F.mse_loss(seen[0], _by_hand(kind, x0_b, noise_b, t_b)), atol=1e-6)


def test_unknown_prediction_type_is_named(tiny_pipe):
    sched = SimpleNamespace(config=SimpleNamespace(prediction_type="flow"))
    with pytest.raises(PocketdiffError, match="unknown UNet prediction_type 'flow'; allowed: epsilon, v_prediction"):
        denoise_target(sched, torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long))
