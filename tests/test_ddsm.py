"""DDSM on the tiny pipeline: sandwich training (2 steps, killed and resumed), a 2-generation search (resumed),
export of two widths with parity, and the ``ddsm`` policy's trace through the one sampler loop."""

import json

import numpy as np
import pytest

from pocketdiff.distill.ddsm_search import DDSMSearchConfig, ddsm_search, next_population, pareto_front
from pocketdiff.distill.ddsm_train import DDSMTrainConfig, ddsm_train, sandwich_widths
from pocketdiff.errors import PocketdiffError
from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import load_pipeline, read_history, read_train_log
from pocketdiff.runtime.policies import make_policy
from ports import check_all_ports

SCHEDULE = [1.0, 0.5, 0.75, 0.5]


@pytest.fixture(scope="module")
def trained(tiny_pipeline_dir, tmp_path_factory):
    """ddsm-train for 2 steps, stopped after 1 (a kill) and resumed."""
    tmp = tmp_path_factory.mktemp("ddsm")
    cfg = DDSMTrainConfig(widths=(0.5, 0.75, 1.0), steps=2, batch_size=4, pool_size=16, checkpoint_every=1)
    with pytest.raises(Interrupted):
        ddsm_train(tiny_pipeline_dir, tmp / "trained", cfg, tmp / "work", stop_after=1, progress=False)
    assert not (tmp / "trained").exists()  # nothing half-written
    ddsm_train(tiny_pipeline_dir, tmp / "trained", cfg, tmp / "work", progress=False)
    return tmp


def test_sandwich_training_resumes_and_logs_each_width(trained):
    log = read_train_log(trained / "work")
    assert [r["step"] for r in log] == [2]  # resumed at step 1: this run logged step 2 only
    assert {"denoise@1.0", "out_kd@1.0", "denoise@0.5", "out_kd@0.5", "denoise@rand", "out_kd@rand", "rand_width",
            "loss"} <= set(log[-1])
    assert log[-1]["rand_width"] == 0.75  # the only width between the smallest and the full
    rec = read_history(trained / "trained")[-1]
    assert rec.name == "ddsm-train" and rec.config["summary"]["resumed_from"] == 1
    unet = load_pipeline(trained / "trained").unet
    assert type(unet).__name__ == "DDSMUNet2DConditionModel" and unet.config.ddsm_widths == [0.5, 0.75, 1.0]


def test_sandwich_widths_are_deterministic():
    widths = (0.5, 0.625, 0.75, 0.875, 1.0)
    a = sandwich_widths(7, 0, widths, 2)
    assert a == sandwich_widths(7, 0, widths, 2) and [t for t, _ in a] == ["1.0", "0.5", "rand1", "rand2"]
    assert all(w in (0.625, 0.75, 0.875) for _, w in a[2:])
    assert {tuple(sandwich_widths(s, 0, widths, 1)) for s in range(20)} != {tuple(a[:3])}  # draws vary by step
    assert sandwich_widths(0, 0, (0.5, 1.0), 1) == [("1.0", 1.0), ("0.5", 0.5)]


def test_search_two_generations_resumes(trained):
    cfg = DDSMSearchConfig(steps=3, guidance=2.0, population=4, generations=2, elite=1, n_prompts=2)
    work, out = trained / "search.work", trained / "searched"
    with pytest.raises(Interrupted):
        ddsm_search(trained / "trained", out, cfg, work, stop_after=1, progress=False)
    assert not out.exists()
    ddsm_search(trained / "trained", out, cfg, work, progress=False)
    rep = json.loads((work / "report.json").read_text())
    assert [h["generation"] for h in rep["history"]] == [1, 2] and (work / "search.png").stat().st_size > 1000
    uniform = {u["width"]: u for u in rep["uniform"]}
    assert uniform[1.0]["proxy"] == 0.0 and uniform[1.0]["cost"] == 1.0 and uniform[0.5]["proxy"] == pytest.approx(1)
    assert uniform[0.5]["cost"] < uniform[0.75]["cost"] < 1.0  # MACs fall with the width
    chosen = rep["chosen"]
    assert chosen["fitness"] == min(p["fitness"] for p in rep["front"])
    assert chosen["fitness"] == pytest.approx(chosen["proxy"] + cfg.lam * chosen["cost"])
    unet = load_pipeline(out).unet
    assert unet.config.ddsm_schedule == {"scheduler": "ddim", "steps": 3, "guidance": 2.0, "widths": chosen["widths"]}
    from pocketdiff.pinned import pinned_defaults

    assert pinned_defaults(pipeline=out).resolve(None, None) == (3, 2.0)


def test_next_population_keeps_elites_and_stays_in_range():
    cfg = DDSMSearchConfig(population=6, elite=2, mutation=0.5)
    scored = [((0, 0, 0), 3.0), ((1, 1, 1), 1.0), ((2, 2, 2), 2.0), ((0, 1, 2), 0.5)]
    pop = next_population(scored, 3, cfg, np.random.default_rng(0))
    assert pop[:2] == [(0, 1, 2), (1, 1, 1)] and len(pop) == 6 and len(set(pop)) == 6
    assert all(0 <= i <= 2 for p in pop for i in p)
    front = pareto_front([{"cost": 1.0, "proxy": 0.0}, {"cost": 0.5, "proxy": 0.4}, {"cost": 0.6, "proxy": 0.5},
                          {"cost": 0.3, "proxy": 1.0}])
    assert [p["cost"] for p in front] == [0.3, 0.5, 1.0]


@pytest.fixture(scope="module")
def ddsm_bundle(trained):
    """The trained pipeline with a hand-set schedule (widths 0.5 and 0.75 below full), exported to ONNX."""
    from diffusers import StableDiffusionPipeline

    from pocketdiff.architectures.slimmable_unet import as_ddsm_unet
    from pocketdiff.export.bundle import ExportConfig, write_bundle
    from pocketdiff.pipedir import StageRecord, write_pipeline

    pipe = load_pipeline(trained / "trained")
    schedule = {"scheduler": "ddim", "steps": len(SCHEDULE), "guidance": 2.0, "widths": SCHEDULE}
    unet = as_ddsm_unet(pipe.unet, pipe.unet.config.ddsm_widths, schedule)
    src = write_pipeline(StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False),
                         trained / "scheduled", [StageRecord("hand-set schedule", {})])
    return write_bundle(src, trained / "bundle", ExportConfig(targets=("onnx",), steps=len(SCHEDULE), guidance=2.0,
                                                              scheduler="ddim"))


def test_export_writes_one_unet_per_scheduled_width_with_parity(ddsm_bundle):
    m = json.loads((ddsm_bundle / "manifest.json").read_text())
    roles = [c["role"] for c in m["components"]]
    assert roles == ["text_encoder", "unet", "unet_w500", "unet_w750", "vae_decoder"]
    assert m["sampler"] == {"policy": "ddsm", "params": {"widths": SCHEDULE}}
    for c in m["components"]:  # batch -> output -> result; a failure would have raised at export
        assert all(r["ok"] for b in c["parity"].values() for r in b.values()), c["role"]
    sizes = {c["role"]: next(f["bytes"] for f in m["files"] if f["path"] == c["path"]) for c in m["components"]}
    assert sizes["unet_w500"] < sizes["unet_w750"] < sizes["unet"]  # real smaller modules, no dead weights
    trace = m["test_vectors"] and json.loads((ddsm_bundle / "test_vectors.json").read_text())["sampler"]["trace"]
    steps = [c for c in trace if c["step"] is not None]
    assert [c["role"] for c in steps] == ["unet", "unet_w500", "unet_w750", "unet_w500"]
    assert all(c["batch"] == 2 for c in steps)  # CFG: one batch-2 call per step


def test_runtime_follows_the_schedule_and_matches_torch(ddsm_bundle, trained):
    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.pipedir import inspect_pipeline
    from pocketdiff.runtime.sampler import RuntimePipeline
    from pocketdiff.runtime.schedulers import get_scheduler_entry

    rt = RuntimePipeline.from_bundle(ddsm_bundle)
    res = rt.generate("a red circle", steps=4, guidance=2.0, seed=3)
    assert [(c.step, c.role) for c in res.trace if c.step is not None] == \
        [(0, "unet"), (1, "unet_w500"), (2, "unet_w750"), (3, "unet_w500")]
    info = inspect_pipeline(trained / "scheduled")
    ref = torch_runtime(load_pipeline(trained / "scheduled"), info.tokenizer_dir,
                        get_scheduler_entry("ddim").config_for(info.scheduler_config))
    assert ref.policy.name == "ddsm"
    got, want = {}, {}
    rt.generate("a red circle", steps=4, guidance=2.0, seed=3, on_step=lambda i, x: got.__setitem__(i, x))
    ref.generate("a red circle", steps=4, guidance=2.0, seed=3, on_step=lambda i, x: want.__setitem__(i, x))
    assert np.allclose(got[3], want[3], atol=1e-3)


def test_schedule_errors_are_one_line(ddsm_bundle):
    from pocketdiff.runtime.sampler import RuntimePipeline

    with pytest.raises(PocketdiffError, match="has no unet_w625 for target 'onnx'"):
        RuntimePipeline.from_bundle(ddsm_bundle, policy=make_policy("ddsm", {"widths": [0.625] * 4}))
    rt = RuntimePipeline.from_bundle(ddsm_bundle)
    with pytest.raises(PocketdiffError, match="schedule has 4 widths, one per step, so it runs 4 steps; 6 were"):
        rt.generate("a", steps=6, guidance=2.0, seed=0)
    with pytest.raises(PocketdiffError, match="width 0.3 is not a multiple of 1/8"):
        make_policy("ddsm", {"widths": [1.0, 0.3]})
    with pytest.raises(PocketdiffError, match="needs params.widths"):
        make_policy("ddsm", {})
    assert make_policy("ddsm", {"widths": [1.0, 0.5, 0.5]}).fixed_steps() == 3  # test vectors run all of them
    assert make_policy("cfg").fixed_steps() is None


def test_cli_generate_rejects_a_step_count_the_schedule_does_not_have(ddsm_bundle, tmp_path, capsys):
    from pocketdiff.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", "--bundle", str(ddsm_bundle), "a red circle", "--steps", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the ddsm schedule has 4 widths") and not out.exists()
    assert main(["generate", "--bundle", str(ddsm_bundle), "a red circle", "--out", str(out)]) == 0  # pinned steps
    assert out.is_file()


def test_ddsm_build_stage(tiny_pipeline_dir, tmp_path):
    """The ``ddsm`` stage in a recipe: train, then search; its output pins the search's sampler, which the
    ``export`` stage reads (``pinned_defaults``; the export of a schedule is the bundle test above)."""
    from pocketdiff.build import build, load_recipe
    from pocketdiff.pinned import pinned_defaults

    recipe = tmp_path / "r.toml"
    recipe.write_text("""
stages = ["ddsm"]
[ddsm.train]
widths = [0.5, 1.0]
steps = 1
batch_size = 2
pool_size = 8
[ddsm.search]
scheduler = "dpm++2m"
steps = 2
guidance = 2.0
population = 2
generations = 1
elite = 1
n_prompts = 1
""")
    build(tiny_pipeline_dir, load_recipe(recipe), tmp_path / "work", progress=False)
    out = tmp_path / "work" / "ddsm"
    schedule = load_pipeline(out).unet.config.ddsm_schedule
    assert schedule["scheduler"] == "dpm++2m" and len(schedule["widths"]) == 2
    assert set(schedule["widths"]) <= {0.5, 1.0}
    assert pinned_defaults(pipeline=out) == type(pinned_defaults(pipeline=out))(2, 2.0, "dpm++2m")


def test_every_app_port_replays_this_bundles_vectors(ddsm_bundle, ports):
    """The Kotlin and JS cores (and the runtime itself) replay this bundle's recorded run (tests/ports.py)."""
    check_all_ports(ports, ddsm_bundle, "tiny-ddsm", expect=("policy:ddsm",))
