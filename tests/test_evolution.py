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


# ---- the evolution loop (stage slim-evolve) ----------------------------------------------------

def _fake_table(path, unet, unet_ms=20.0, block_ms=1.0):
    """A latency table with known numbers, so the test knows how many removals meet the budget."""
    from pocketdiff.benchmarks.blocks import unet_blocks, write_latency_table

    blocks = {n: {"kind": "resnet" if ".resnets." in n else "attention", "median_ms": block_ms}
              for n, _ in unet_blocks(unet)}
    table = {"backend": "torch", "batch": 2, "sample_size": 8, "call_overhead_ms": 0.0,
             "unet": {"median_ms": unet_ms}, "blocks": blocks}
    return write_latency_table(path, "fake", table, {"cpu": "test"})


def test_evolution_smoke_with_resume(tiny_pipe, tiny_pipeline_dir, tmp_path):
    """2 actions (budget 0.9 of 20 ms with 1 ms per block), a short fine-tune after each, interrupted after
    the first and resumed; then the materialised slim UNet is written with the report and plot."""
    from pocketdiff.architectures.slim_unet import SlimUNet2DConditionModel
    from pocketdiff.distill.evolution import EvolveConfig, evolve
    from pocketdiff.distill.kd import KDTrainConfig
    from pocketdiff.loop import Interrupted
    from pocketdiff.pipedir import load_pipeline, read_history, read_json

    table = _fake_table(tmp_path / "lut.json", tiny_pipe.unet)
    cfg = EvolveConfig(latency_table=str(table), target="fake", budget=0.9, quality_floor=10.0, probe_size=2,
                       probe_timesteps=(300, 900), finetune=KDTrainConfig(steps=2, batch_size=2, pool_size=8,
                                                                          checkpoint_every=1))
    work, out = tmp_path / "work", tmp_path / "slim"
    with pytest.raises(Interrupted):
        evolve(tiny_pipeline_dir, out, cfg, work, stop_after=1, progress=False)
    assert not out.exists() and len(read_json(work / "state.json")["records"]) == 1
    evolve(tiny_pipeline_dir, out, cfg, work, progress=False)
    report = read_json(work / "report.json")
    its = report["iterations"]
    assert [r["kind"] for r in its] == ["remove", "remove"] and report["budget_met"]
    assert report["estimate_ms"] == pytest.approx(18.0) and report["estimate_ratio"] == pytest.approx(0.9)
    assert report["removed_blocks"] == sorted(r["block"] for r in its) == its[-1]["removed"]
    assert report["params_slim"] < report["params_full"] and (work / "evolution.png").stat().st_size > 1000
    assert all({"d_quality", "d_latency_ms", "value", "proxy_before", "proxy_after_finetune"} <= set(r) for r in its)
    assert (work / "finetune" / "iter_002" / "log.jsonl").is_file()
    slim = load_pipeline(out).unet
    assert isinstance(slim, SlimUNet2DConditionModel) and slim.config.removed_blocks == report["removed_blocks"]
    assert read_history(out)[-1].name == "slim-evolve"


def test_choose_action_restores_below_floor():
    from pocketdiff.distill.evolution import EvolveConfig, choose_action

    cfg = EvolveConfig(latency_table="x", budget=0.5, quality_floor=0.1)
    acts = [Action("remove", "a", 0.01, -2.0), Action("remove", "b", 0.01, -1.0), Action("restore", "c", -0.2, 1.0)]
    assert choose_action(acts, 0.05, 90.0, cfg, 100.0, tabu=[])[0].block == "a"  # over budget: 0.005/ms beats 0.01/ms
    assert choose_action(acts, 0.05, 90.0, cfg, 100.0, tabu=["a"])[0].block == "b"  # a restored block stays
    assert choose_action(acts, 0.5, 90.0, cfg, 100.0, tabu=[])[0].block == "c"  # proxy above the floor: restore
    assert choose_action(acts, 0.05, 40.0, cfg, 100.0, tabu=[]) == (None, "budget met")
    assert choose_action(acts[:1], 0.05, 90.0, cfg, 100.0, tabu=["a"])[0] is None


@pytest.mark.parametrize("change,message", [
    ({"latency_table": ""}, "needs a latency table"),
    ({"budget": 1.5}, "budget must be in (0, 1]"),
    ({"quality_floor": 0.0}, "quality_floor must be > 0"),
])
def test_bad_evolve_config(change, message):
    from pocketdiff.distill.evolution import EvolveConfig

    with pytest.raises(PocketdiffError, match=message.replace("(", r"\(").replace("]", r"\]")):
        EvolveConfig(**{"latency_table": "t.json", **change}).validate()
