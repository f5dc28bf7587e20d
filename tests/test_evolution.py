"""Action evaluation: the proxy is zero with nothing removed, removal values follow Δquality/Δlatency,
and restore undoes remove."""

import pytest
import torch

from pocketdiff.architectures.elastic_unet import ElasticUNet
from pocketdiff.distill.evolution import Action, best_action, evaluate_actions, make_probe, quality_proxy
from pocketdiff.errors import PocketdiffError


@pytest.fixture(scope="module")
def setup(tiny_pipe):
    from diffusers import DDPMScheduler

    unet = tiny_pipe.unet.eval()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    probe = make_probe(unet, latents, hidden, DDPMScheduler.from_config(tiny_pipe.scheduler.config), (200, 800))
    return ElasticUNet(unet), probe


def test_proxy_and_actions(setup):
    elastic, probe = setup
    assert quality_proxy(elastic, probe, set()) == 0.0  # the elastic model with nothing skipped is the teacher
    latency = {b: 1.0 + i for i, b in enumerate(elastic.skippable)}
    base, actions = evaluate_actions(elastic, probe, set(), latency.__getitem__)
    assert base == 0.0 and {a.kind for a in actions} == {"remove"} and len(actions) == len(elastic.skippable)
    for a in actions:
        assert a.d_latency_ms == -latency[a.block] and a.d_quality > 0
        assert a.value == pytest.approx(a.d_quality / latency[a.block])
    best = best_action(actions, "remove")
    assert best.value == min(a.value for a in actions)
    # after removing it, restoring it is an action whose gain equals the removal's cost
    base2, actions2 = evaluate_actions(elastic, probe, {best.block}, latency.__getitem__)
    restore = next(a for a in actions2 if a.kind == "restore")
    assert restore.block == best.block and base2 == pytest.approx(best.d_quality)
    assert restore.d_quality == pytest.approx(-best.d_quality) and best_action(actions2, "restore") == restore


def test_bad_removed_set(setup):
    elastic, probe = setup
    fixed = next(n for n, b in elastic.blocks.items() if not b.skippable)
    with pytest.raises(PocketdiffError, match=f"unskippable or unknown block '{fixed}'"):
        evaluate_actions(elastic, probe, {fixed}, lambda b: 1.0)
    assert best_action([Action("remove", "x", 1.0, -1.0)], "restore") is None
