"""Clockwork on the tiny pipeline: the split against the UNet (and against diffusers' own blocks via hooks), the
adaptor, the clock, adaptor training (2 steps, killed and resumed), export of the full and light graphs with
parity, and the ``clockwork`` policy's trace through the one sampler loop."""

import json

import numpy as np
import pytest
import torch

from pocketdiff.architectures.clockwork_unet import (ClockworkAdaptor, as_clockwork_unet, check_split, inner,
                                                     outer_down, split_forward, time_embedding)
from pocketdiff.architectures.factory import build_pipeline
from pocketdiff.distill.clockwork_train import ClockworkTrainConfig, clockwork_train
from pocketdiff.errors import PocketdiffError
from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import load_pipeline, read_history, read_train_log
from pocketdiff.runtime.policies import clock_schedule, make_policy
from ports import check_all_ports


def _inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    hidden = torch.randn(batch, 77, c.cross_attention_dim, generator=g)
    cond = torch.randn(batch, c.time_cond_proj_dim, generator=g) if c.time_cond_proj_dim else None
    return x, torch.tensor(321.0), hidden, cond


@pytest.mark.parametrize("embedded", [False, True])
def test_split_is_the_unet_exactly(embedded):
    """outer + inner = the UNet, bit for bit, at every boundary; lowres_in/lowres_out are the tensors diffusers'
    own blocks produce there (caught with forward hooks on the unsplit UNet)."""
    unet = build_pipeline("tiny", unet_overrides={"time_cond_proj_dim": 16} if embedded else None).unet.eval()
    x, t, hidden, cond = _inputs(unet)
    seen = {}
    hooks = [unet.down_blocks[0].register_forward_hook(lambda m, a, out: seen.__setitem__("in1", out[0])),
             unet.up_blocks[1].register_forward_hook(lambda m, a, out: seen.__setitem__("out1", out)),
             unet.down_blocks[1].register_forward_hook(lambda m, a, out: seen.__setitem__("in2", out[0])),
             unet.up_blocks[0].register_forward_hook(lambda m, a, out: seen.__setitem__("out2", out))]
    with torch.no_grad():
        want = unet(x, t, hidden, timestep_cond=cond).sample
        for h in hooks:
            h.remove()
        for r in (1, 2):
            got, lowres_out = split_forward(unet, r, x, t, hidden, cond)
            assert torch.equal(got, want)
            assert torch.equal(lowres_out, seen[f"out{r}"])
            emb = time_embedding(unet, x, t, cond)
            _, lowres_in = outer_down(unet, r, x, emb, hidden)
            assert torch.equal(lowres_in, seen[f"in{r}"])
            assert torch.equal(inner(unet, r, lowres_in, emb, hidden), lowres_out)
    # the shapes the docstring states for the tiny UNet (block_out_channels [32, 32, 64], 8x8 latents)
    assert tuple(seen["in1"].shape) == (2, 32, 4, 4) and tuple(seen["out1"].shape) == (2, 32, 8, 8)


def test_untrained_adaptor_is_the_identity_and_light_step_reuses_the_cache():
    unet = build_pipeline("tiny").unet.eval()
    cw = as_clockwork_unet(unet, 1)
    x, t, hidden, _ = _inputs(unet)
    with torch.no_grad():
        full, cache = cw.full_step(x, t, hidden)
        # the zero-initialised correction: fed this step's own cache, the light step is the full UNet
        assert torch.equal(cw.light_step(x, t, hidden, cache), full)
        x2 = x + 0.1 * torch.randn_like(x)
        ident = as_clockwork_unet(unet, 1, {"kind": "identity"})
        assert sum(p.numel() for p in ident.adaptor.parameters()) == 0
        # identity: the outer part of x2 around the cache of x (by hand: the UNet with up_blocks[1] forced to it)
        h = unet.up_blocks[1].register_forward_hook(lambda m, a, out: cache)
        want = unet(x2, t, hidden).sample
        h.remove()
        assert torch.allclose(ident.light_step(x2, t, hidden, cache), want, atol=1e-6)
    assert isinstance(cw.adaptor, ClockworkAdaptor) and cw.config.clockwork_adaptor["kind"] == "trained"


def test_split_errors_name_the_value():
    unet = build_pipeline("tiny").unet
    for bad in (0, 3, 1.5, True):
        with pytest.raises(PocketdiffError, match=r"boundary must be an integer in \[1, 2\]"):
            check_split(unet, bad)
    with pytest.raises(PocketdiffError, match="adaptor kind"):
        as_clockwork_unet(unet, 1, {"kind": "learned"})
    with pytest.raises(PocketdiffError, match="no setting 'width'"):
        as_clockwork_unet(unet, 1, {"width": 3})


def test_clock_schedule_by_hand():
    F, L = False, True
    assert clock_schedule(8, 1) == [F] * 8
    assert clock_schedule(8, 2) == [F, L, F, L, F, L, F, F]
    assert clock_schedule(8, 3) == [F, L, L, F, L, L, F, F]
    assert clock_schedule(8, 4) == [F, L, L, L, F, L, L, F]
    assert clock_schedule(4, 3) == [F, L, L, F]
    assert clock_schedule(8, 2, [2, 5]) == [F, F, L, F, F, L, F, F]
    with pytest.raises(PocketdiffError, match=r"step 7 is not between the first \(0\) and the last \(7\)"):
        clock_schedule(8, 2, [3, 7])
    with pytest.raises(PocketdiffError, match="period must be >= 1"):
        make_policy("clockwork", {"period": 0})
    with pytest.raises(PocketdiffError, match="distinct step indices"):
        make_policy("clockwork", {"light_steps": [2, 2]})
    assert make_policy("clockwork", {"period": 1}).roles() == ("unet_cw_full",)


@pytest.fixture(scope="module")
def trained(tiny_pipeline_dir, tmp_path_factory):
    """clockwork-train for 2 steps on 3 four-step DPM++ trajectories, stopped after 1 (a kill) and resumed."""
    tmp = tmp_path_factory.mktemp("clockwork")
    cfg = ClockworkTrainConfig(scheduler="dpm++2m", sampler_steps=4, guidance=2.0, n_trajectories=3, steps=2,
                               batch_size=4, checkpoint_every=1, max_gap=2, period=3)
    with pytest.raises(Interrupted):
        clockwork_train(tiny_pipeline_dir, tmp / "trained", cfg, tmp / "work", stop_after=1, progress=False)
    assert not (tmp / "trained").exists()  # nothing half-written
    clockwork_train(tiny_pipeline_dir, tmp / "trained", cfg, tmp / "work", progress=False)
    return tmp


def test_adaptor_training_resumes_and_logs_named_terms(trained, tiny_pipeline_dir):
    log = read_train_log(trained / "work")
    assert [r["step"] for r in log] == [2]  # resumed at step 1
    assert {"feature", "output", "identity_feature", "loss"} <= set(log[-1])
    rec = read_history(trained / "trained")[-1]
    assert rec.name == "clockwork-train" and rec.config["summary"]["resumed_from"] == 1
    assert rec.config["pins"] == {"steps": 4, "guidance": 2.0, "scheduler": "dpm++2m"}
    unet = load_pipeline(trained / "trained").unet
    assert type(unet).__name__ == "ClockworkUNet2DConditionModel"
    assert unet.config.clockwork_schedule == {"steps": 4, "guidance": 2.0, "scheduler": "dpm++2m", "period": 3,
                                              "light_steps": []}
    assert unet.adaptor.conv_out.weight.abs().sum() > 0  # trained away from its zero initialisation
    teacher = load_pipeline(tiny_pipeline_dir).unet
    assert all(torch.equal(p, teacher.state_dict()[k]) for k, p in unet.state_dict().items()
               if not k.startswith("adaptor."))  # the UNet itself stayed frozen


def test_a_work_dir_with_other_trajectories_is_refused(trained, tiny_pipeline_dir):
    cfg = ClockworkTrainConfig(scheduler="dpm++2m", sampler_steps=5, guidance=2.0, n_trajectories=3, steps=2,
                               batch_size=4, max_gap=2)
    with pytest.raises(PocketdiffError, match="holds trajectories of another pipeline, sampler or data draw"):
        clockwork_train(tiny_pipeline_dir, trained / "other", cfg, trained / "work", progress=False)
    assert not (trained / "other").exists()


def test_cli_errors_are_one_line(tiny_pipeline_dir, tmp_path, capsys):
    from pocketdiff.cli import main

    for flags, msg in ((["--boundary", "5"], "error: clockwork boundary must be an integer in [1, 2]"),
                       (["--light-steps", "3", "--sampler-steps", "4"], "error: clockwork light_steps [3]: step 3 is"),
                       (["--adaptor", "learned"], "error: clockwork adaptor must be 'trained' or 'identity'")):
        args = ["clockwork-train", "--pipeline", str(tiny_pipeline_dir), "--out", str(tmp_path / "o"), "--no-progress"]
        assert main(args + flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(msg), err
        assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def cw_bundle(trained):
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    return write_bundle(trained / "trained", trained / "bundle", ExportConfig(targets=("onnx",), steps=4, guidance=2.0,
                                                                              scheduler="dpm++2m"))


def test_export_writes_the_full_and_light_graphs_with_parity(cw_bundle):
    m = json.loads((cw_bundle / "manifest.json").read_text())
    roles = {(c["role"], c["target"]) for c in m["components"]}
    assert {("unet", "onnx"), ("unet_cw_full", "onnx"), ("unet_cw_light", "onnx")} <= roles
    assert m["sampler"] == {"policy": "clockwork", "params": {"period": 3, "light_steps": []}}
    assert (m["defaults"]["steps"], m["defaults"]["guidance"], m["scheduler"]["name"]) == (4, 2.0, "dpm++2m")
    for c in m["components"]:  # batch -> output -> result; a failure would have raised at export
        assert all(r["ok"] for b in c["parity"].values() for r in b.values()), (c["role"], c["target"])
    light = next(c for c in m["components"] if c["role"] == "unet_cw_light" and c["target"] == "onnx")
    assert [i["name"] for i in light["inputs"]][-1] == "lowres_cache"
    assert light["inputs"][-1]["shape"][1:] == [32, 8, 8]
    trace = json.loads((cw_bundle / "test_vectors.json").read_text())["sampler"]["trace"]
    assert [(c["step"], c["role"], c["batch"]) for c in trace if c["step"] is not None] == \
        [(0, "unet_cw_full", 2), (1, "unet_cw_light", 2), (2, "unet_cw_light", 2), (3, "unet_cw_full", 2)]


@pytest.mark.slow  # make test covers the same wrappers on ONNX; ExecuTorch's export adds about a minute
def test_executorch_exports_the_full_and_light_graphs_with_parity(trained, tmp_path):
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    out = write_bundle(trained / "trained", tmp_path / "b", ExportConfig(targets=("executorch",), steps=4, guidance=2.0,
                                                                         scheduler="dpm++2m"))
    m = json.loads((out / "manifest.json").read_text())
    assert {c["role"] for c in m["components"]} >= {"unet_cw_full", "unet_cw_light"}
    for c in m["components"]:
        assert all(r["ok"] for b in c["parity"].values() for r in b.values()), c["role"]


def test_runtime_runs_the_clock_and_matches_torch(cw_bundle, trained):
    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.pipedir import inspect_pipeline
    from pocketdiff.runtime.sampler import RuntimePipeline
    from pocketdiff.runtime.schedulers import get_scheduler_entry

    rt = RuntimePipeline.from_bundle(cw_bundle)
    info = inspect_pipeline(trained / "trained")
    pipe = load_pipeline(trained / "trained")
    ref = torch_runtime(pipe, info.tokenizer_dir, get_scheduler_entry("dpm++2m").config_for(info.scheduler_config))
    assert ref.policy.name == "clockwork"
    got, want = {}, {}
    rt.generate("a red circle", steps=6, guidance=2.0, seed=3, on_step=lambda i, x: got.__setitem__(i, x))
    res = ref.generate("a red circle", steps=6, guidance=2.0, seed=3, on_step=lambda i, x: want.__setitem__(i, x))
    assert [c.role for c in res.trace if c.step is not None] == \
        ["unet_cw_full", "unet_cw_light", "unet_cw_light", "unet_cw_full", "unet_cw_light", "unet_cw_full"]
    assert np.allclose(got[5], want[5], atol=1e-3)
    # period 1 runs the full graph every step: the same latents as the plain UNet under cfg
    full = ref.with_sessions(ref.sessions, make_policy("clockwork", {"period": 1}))
    plain = torch_runtime(pipe, info.tokenizer_dir, get_scheduler_entry("dpm++2m").config_for(info.scheduler_config),
                          make_policy("cfg"))  # the plain unet role, which full steps must reproduce
    a, b = {}, {}
    plain.generate("a red circle", steps=6, guidance=2.0, seed=3, on_step=lambda i, x: a.__setitem__(i, x))
    full.generate("a red circle", steps=6, guidance=2.0, seed=3, on_step=lambda i, x: b.__setitem__(i, x))
    assert np.allclose(a[5], b[5], atol=1e-5)


def test_guidance_embedded_unet_runs_batch_one(tmp_path):
    """A guidance-embedded student: one batch-1 call per step with its w embedding; the cache is batch 1."""
    from diffusers import StableDiffusionPipeline

    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.pipedir import StageRecord, inspect_pipeline, write_pipeline
    from pocketdiff.runtime.schedulers import get_scheduler_entry

    pipe = build_pipeline("tiny", unet_overrides={"time_cond_proj_dim": 16})
    unet = as_clockwork_unet(pipe.unet, 1, schedule={"period": 2, "light_steps": []})
    src = write_pipeline(StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False),
                         tmp_path / "p", [StageRecord("create", {})])
    info = inspect_pipeline(src)
    rt = torch_runtime(load_pipeline(src), info.tokenizer_dir, get_scheduler_entry("ddim").config_for(
        info.scheduler_config))
    res = rt.generate("a red circle", steps=4, guidance=3.0, seed=0)
    assert [(c.role, c.batch) for c in res.trace if c.step is not None] == \
        [("unet_cw_full", 1), ("unet_cw_light", 1), ("unet_cw_full", 1), ("unet_cw_full", 1)]
    assert [c.batch for c in res.trace if c.role == "text_encoder"] == [1]  # the prompt only: no negative pass


def test_clockwork_build_stage_pins_the_student_steps(trained, tmp_path):
    """After a step student (its pinned steps), the stage trains for those steps with the student's sampler."""
    from pocketdiff.build import build, load_recipe
    from pocketdiff.pinned import pinned_defaults
    from pocketdiff.pipedir import StageRecord, write_pipeline

    pipe = load_pipeline(trained / "trained")
    student = write_pipeline(pipe, tmp_path / "student", [StageRecord("distill-steps", {"student_steps": 3})])
    recipe = tmp_path / "r.toml"
    recipe.write_text('stages = ["clockwork"]\n[clockwork]\nsteps = 0\nn_trajectories = 1\nadaptor = "identity"\n'
                      'period = 2\n')
    build(student, load_recipe(recipe), tmp_path / "work", progress=False)
    out = tmp_path / "work" / "clockwork"
    assert pinned_defaults(pipeline=out).steps == 3
    unet = load_pipeline(out).unet
    assert unet.config.clockwork_adaptor["kind"] == "identity" and unet.config.clockwork_schedule["steps"] == 3


def test_every_app_port_replays_this_bundles_vectors(cw_bundle, ports):
    """The Kotlin and JS cores (and the runtime itself) replay this bundle's recorded run (tests/ports.py)."""
    check_all_ports(ports, cw_bundle, "tiny-clockwork", expect=("policy:clockwork",))
