"""AdaDiff on the tiny pipeline: the segments against the UNet (and diffusers' own up blocks via hooks), the skip
packing against the up blocks' resnet widths, head training (2 steps, killed and resumed), calibration, export of
the segments and exit heads with parity, and the ``adadiff`` policy exiting early through the one sampler loop."""

import json

import numpy as np
import pytest
import torch

from pocketdiff.architectures.exit_unet import as_exit_unet, level_features, seg_in, seg_level
from pocketdiff.architectures.factory import SD15_UNET, build_pipeline
from pocketdiff.architectures.unet_levels import skip_channels
from pocketdiff.distill.adadiff_calibrate import AdaDiffCalibrateConfig, adadiff_calibrate
from pocketdiff.distill.adadiff_train import AdaDiffTrainConfig, adadiff_train
from pocketdiff.errors import PocketdiffError
from pocketdiff.loop import Interrupted
from pocketdiff.pipedir import inspect_pipeline, load_pipeline, read_history, read_train_log
from pocketdiff.runtime.policies import exit_levels, make_policy
from ports import check_all_ports


def _inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    hidden = torch.randn(batch, 77, c.cross_attention_dim, generator=g)
    cond = torch.randn(batch, c.time_cond_proj_dim, generator=g) if c.time_cond_proj_dim else None
    return x, torch.tensor(321.0), hidden, cond


@pytest.mark.parametrize("embedded", [False, True])
def test_segments_chained_are_the_unet_exactly(embedded):
    """seg_in then every seg_lL = the UNet, bit for bit; each segment's hidden is the tensor diffusers' own up block
    produces (caught with forward hooks on the uncut UNet)."""
    unet = build_pipeline("tiny", unet_overrides={"time_cond_proj_dim": 16} if embedded else None).unet.eval()
    x, t, hidden, cond = _inputs(unet)
    seen = {}
    hooks = [b.register_forward_hook(lambda m, a, out, lv=2 - u: seen.__setitem__(lv, out))
             for u, b in enumerate(unet.up_blocks)]
    with torch.no_grad():
        want = unet(x, t, hidden, timestep_cond=cond).sample
        for h in hooks:
            h.remove()
        h2, emb, packs = seg_in(unet, x, t, hidden, cond)
        assert torch.equal(h2, seen[2]) and sorted(packs) == [0, 1]
        h1 = seg_level(unet, 1, h2, packs[1], emb, hidden)
        assert torch.equal(h1, seen[1])
        assert torch.equal(seg_level(unet, 0, h1, packs[0], emb, hidden), want)
        out, hiddens, _, _ = level_features(unet, x, t, hidden, cond)
        assert torch.equal(out, want) and set(hiddens) == {1, 2}
    # the shapes the docstring states (tiny: block_out_channels [32, 32, 64], 8x8 latents)
    assert tuple(h2.shape) == (2, 64, 4, 4) and tuple(h1.shape) == (2, 32, 8, 8)
    assert tuple(packs[0].shape) == (2, 96, 8, 8) and tuple(packs[1].shape) == (2, 96, 4, 4)


def test_skip_packing_matches_the_up_blocks_resnets():
    """Per level, the packed skip channels (config arithmetic) = each up-block resnet's input width minus the
    hidden it gets, read off diffusers' SD1.5 modules (built on meta), in the order the block pops them."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in SD15_UNET.items() if not k.startswith("_")})
    packs = skip_channels(dict(unet.config))
    for u, block in enumerate(unet.up_blocks):
        level = len(unet.up_blocks) - 1 - u
        h = block.resnets[0].conv1.in_channels - packs[level][-1]  # the hidden entering the block
        popped = []
        for r in block.resnets:
            popped.append(r.conv1.in_channels - h)
            h = r.conv2.out_channels
        assert popped == packs[level][::-1], level
    assert {lv: sum(c) for lv, c in packs.items()} == {3: 3840, 2: 3200, 1: 1600, 0: 960}


def test_exit_heads_start_from_the_unets_output_layers_and_errors_name_the_value():
    unet = build_pipeline("tiny").unet.eval()
    ex = as_exit_unet(unet, [1, 2])
    assert ex.config.adadiff_exits == [2, 1] and ex.config.adadiff_schedule is None
    assert torch.equal(ex.exits["l1"].conv_out.weight, unet.conv_out.weight)
    x, t, hidden, _ = _inputs(unet)
    with torch.no_grad():
        out, exits = ex.exit_forward(x, t, hidden)
        assert torch.equal(out, unet(x, t, hidden).sample)  # the full path untouched
    for level, (pred, u) in exits.items():
        assert pred.shape == x.shape and u.shape == (2,) and bool(((u > 0) & (u < 1)).all())
    for bad in ([0], [3], [1, 1], []):
        with pytest.raises(PocketdiffError, match=r"adadiff exits must be distinct levels among \[2, 1\]"):
            as_exit_unet(unet, bad)
    with pytest.raises(PocketdiffError, match="no setting 'width'"):
        as_exit_unet(unet, [1], {"width": 3})
    with pytest.raises(PocketdiffError, match=r"exits must be distinct levels in \[1, 2\]"):
        make_policy("adadiff", {"levels": 3, "exits": [3]})
    with pytest.raises(PocketdiffError, match=r"threshold must be in \[0, 1\]"):
        make_policy("adadiff", {"threshold": 1.5})


@pytest.fixture(scope="module")
def trained(tiny_pipeline_dir, tmp_path_factory):
    """adadiff-train for 2 steps, stopped after 1 (a kill) and resumed; then calibrated at three thresholds."""
    tmp = tmp_path_factory.mktemp("adadiff")
    cfg = AdaDiffTrainConfig(steps=2, batch_size=4, pool_size=8, checkpoint_every=1)
    with pytest.raises(Interrupted):
        adadiff_train(tiny_pipeline_dir, tmp / "trained", cfg, tmp / "work", stop_after=1, progress=False)
    assert not (tmp / "trained").exists()  # nothing half-written
    adadiff_train(tiny_pipeline_dir, tmp / "trained", cfg, tmp / "work", progress=False)
    cal = AdaDiffCalibrateConfig(scheduler="ddim", sampler_steps=3, guidance=2.0, n_prompts=2,
                                 thresholds=(0.3, 1.0), target_macs=0.9)
    adadiff_calibrate(tmp / "trained", tmp / "calibrated", cal, tmp / "cal.work", progress=False)
    return tmp


def test_head_training_resumes_and_logs_named_terms(trained, tiny_pipeline_dir):
    log = read_train_log(trained / "work")
    assert [r["step"] for r in log] == [2]  # resumed at step 1
    assert {"layerwise@l2", "uem@l2", "kd@l2", "layerwise@l1", "uem@l1", "kd@l1", "loss"} <= set(log[-1])
    rec = read_history(trained / "trained")[-1]
    assert rec.name == "adadiff-train" and rec.config["summary"]["resumed_from"] == 1 and rec.config["exits"] == [2, 1]
    unet = load_pipeline(trained / "trained").unet
    teacher = load_pipeline(tiny_pipeline_dir).unet
    assert all(torch.equal(p, teacher.state_dict()[k]) for k, p in unet.state_dict().items()
               if not k.startswith("exits."))  # the backbone stayed frozen
    fresh = as_exit_unet(teacher, [2, 1])
    assert not torch.equal(unet.exits["l1"].uem[0].weight, fresh.exits["l1"].uem[0].weight) or \
        not torch.equal(unet.exits["l1"].hidden_in.weight, fresh.exits["l1"].hidden_in.weight)


def test_calibration_writes_the_curve_and_the_threshold(trained):
    curve = json.loads((trained / "cal.work" / "curve.json").read_text())
    pts = {p["threshold"]: p for p in curve["curve"]}
    assert set(pts) == {0.0, 0.3, 1.0}
    assert pts[0.0]["proxy"] == 0.0 and pts[0.0]["macs"] > 1.0  # never exits: every head runs on top
    assert pts[1.0]["macs"] < 0.9  # always exits at the deepest head
    assert pts[1.0]["exits"] == [[0, 0, 2]] * 3  # every step of both prompts stopped at level 2
    unet = load_pipeline(trained / "calibrated").unet
    chosen = curve["chosen"]
    assert unet.config.adadiff_schedule["threshold"] == chosen["threshold"] and chosen["macs"] <= 0.9
    assert read_history(trained / "calibrated")[-1].config["pins"] == {"steps": 3, "guidance": 2.0, "scheduler": "ddim"}
    assert (trained / "cal.work" / "curve.png").stat().st_size > 1000
    # a rerun reuses every finished threshold, and skips a line a kill cut short
    with open(trained / "cal.work" / "curve.jsonl", "a") as f:
        f.write('{"threshold": 0.7, "mac')
    cal = AdaDiffCalibrateConfig(scheduler="ddim", sampler_steps=3, guidance=2.0, n_prompts=2, thresholds=(0.3, 1.0),
                                 target_macs=0.9)
    adadiff_calibrate(trained / "trained", trained / "again", cal, trained / "cal.work", progress=False)
    assert json.loads((trained / "cal.work" / "curve.json").read_text())["chosen"] == chosen


def test_calibration_refuses_a_plain_unet_and_an_unreachable_target(tiny_pipeline_dir, trained, tmp_path):
    with pytest.raises(PocketdiffError, match="needs a pipeline with AdaDiff exits"):
        adadiff_calibrate(tiny_pipeline_dir, tmp_path / "o", AdaDiffCalibrateConfig(n_prompts=1), tmp_path / "w",
                          progress=False)
    cal = AdaDiffCalibrateConfig(scheduler="ddim", sampler_steps=3, guidance=2.0, n_prompts=2, thresholds=(0.3, 1.0),
                                 target_macs=0.1)
    with pytest.raises(PocketdiffError, match="no threshold reaches target_macs 0.1"):
        adadiff_calibrate(trained / "trained", tmp_path / "o2", cal, trained / "cal.work", progress=False)
    assert not (tmp_path / "o2").exists()


def test_cli_errors_are_one_line(tiny_pipeline_dir, tmp_path, capsys):
    from pocketdiff.cli import main

    for cmd, flags, msg in (("adadiff-train", ["--exits", "3"], "error: adadiff exits must be distinct levels among"),
                            ("adadiff-calibrate", ["--rule", "fast"], "error: unknown adadiff-calibrate rule 'fast'")):
        args = [cmd, "--pipeline", str(tiny_pipeline_dir), "--out", str(tmp_path / "o"), "--no-progress"]
        assert main(args + flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(msg), err
        assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def ada_bundle(trained):
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    return write_bundle(trained / "calibrated", trained / "bundle", ExportConfig(targets=("onnx",), steps=3,
                                                                                guidance=2.0, scheduler="ddim"))


def test_export_writes_segments_and_heads_with_parity(ada_bundle, trained):
    m = json.loads((ada_bundle / "manifest.json").read_text())
    roles = {c["role"]: c for c in m["components"]}
    assert {"unet_seg_in", "unet_seg_l1", "unet_seg_l0", "unet_exit_l2", "unet_exit_l1"} <= set(roles)
    for c in m["components"]:
        assert all(r["ok"] for b in c["parity"].values() for r in b.values()), c["role"]
    outs = {o["name"]: o["shape"] for o in roles["unet_seg_in"]["outputs"]}
    assert outs["hidden"][1:] == [64, 4, 4] and outs["skips_l0"][1:] == [96, 8, 8] and outs["temb"][1:] == [128]
    assert {o["name"] for o in roles["unet_exit_l1"]["outputs"]} == {"out_sample", "uncertainty"}
    threshold = load_pipeline(trained / "calibrated").unet.config.adadiff_schedule["threshold"]
    assert m["sampler"]["policy"] == "adadiff" and m["sampler"]["params"]["threshold"] == threshold
    assert [p["threshold"] for p in m["sampler"]["params"]["calibration"]["curve"]] == [0.0, 0.3, 1.0]
    vec = json.loads((ada_bundle / "test_vectors.json").read_text())["sampler"]
    assert vec["policy"] == "adadiff" and any(c["role"] == "unet_seg_in" for c in vec["trace"])


@pytest.mark.slow  # make test covers the same wrappers on ONNX; ExecuTorch's export adds about a minute
def test_executorch_exports_segments_and_heads_with_parity(trained, tmp_path):
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    out = write_bundle(trained / "calibrated", tmp_path / "b", ExportConfig(targets=("executorch",), steps=3,
                                                                           guidance=2.0, scheduler="ddim"))
    m = json.loads((out / "manifest.json").read_text())
    assert {c["role"] for c in m["components"]} >= {"unet_seg_in", "unet_seg_l1", "unet_seg_l0", "unet_exit_l2",
                                                    "unet_exit_l1"}
    for c in m["components"]:
        assert all(r["ok"] for b in c["parity"].values() for r in b.values()), c["role"]


def test_policy_exits_early_with_a_forced_threshold_and_matches_torch(ada_bundle, trained):
    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.runtime.sampler import RuntimePipeline
    from pocketdiff.runtime.schedulers import get_scheduler_entry

    always = make_policy("adadiff", {"levels": 3, "exits": [2, 1], "threshold": 1.0})
    rt = RuntimePipeline.from_bundle(ada_bundle, policy=always)
    res = rt.generate("a red circle", steps=3, guidance=2.0, seed=3)
    assert [(c.step, c.role, c.batch) for c in res.trace if c.step is not None] == \
        [(i, r, 2) for i in range(3) for r in ("unet_seg_in", "unet_exit_l2")]  # l1 and l0 never called
    assert exit_levels(res.trace, 3) == [2, 2, 2]
    never = make_policy("adadiff", {"levels": 3, "exits": [2, 1], "threshold": 0.0})
    res = rt.with_sessions(rt.sessions, never).generate("a red circle", steps=3, guidance=2.0, seed=3)
    assert [c.role for c in res.trace if c.step == 0] == \
        ["unet_seg_in", "unet_exit_l2", "unet_seg_l1", "unet_exit_l1", "unet_seg_l0"]
    assert exit_levels(res.trace, 3) == [0, 0, 0]
    # threshold 0 is the plain UNet under cfg; the ORT segments match the torch loop
    pipe = load_pipeline(trained / "calibrated")
    info = inspect_pipeline(trained / "calibrated")
    sched = get_scheduler_entry("ddim").config_for(info.scheduler_config)
    a, b, c = {}, {}, {}
    torch_runtime(pipe, info.tokenizer_dir, sched, make_policy("cfg")).generate(
        "a red circle", steps=3, guidance=2.0, seed=3, on_step=lambda i, x: a.__setitem__(i, x))
    rt.with_sessions(rt.sessions, never).generate("a red circle", steps=3, guidance=2.0, seed=3,
                                                  on_step=lambda i, x: b.__setitem__(i, x))
    torch_runtime(pipe, info.tokenizer_dir, sched, always).generate("a red circle", steps=3, guidance=2.0, seed=3,
                                                                    on_step=lambda i, x: c.__setitem__(i, x))
    assert np.allclose(a[2], b[2], atol=1e-4)
    d = {}
    rt.generate("a red circle", steps=3, guidance=2.0, seed=3, on_step=lambda i, x: d.__setitem__(i, x))
    assert np.allclose(c[2], d[2], atol=1e-3) and not np.allclose(a[2], c[2], atol=1e-3)


def test_guidance_embedded_unet_exits_at_batch_one(tmp_path):
    from diffusers import StableDiffusionPipeline

    from pocketdiff.export.torch_session import torch_runtime
    from pocketdiff.pipedir import StageRecord, write_pipeline
    from pocketdiff.runtime.schedulers import get_scheduler_entry

    pipe = build_pipeline("tiny", unet_overrides={"time_cond_proj_dim": 16})
    unet = as_exit_unet(pipe.unet, [1], schedule={"threshold": 1.0})
    src = write_pipeline(StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False),
                         tmp_path / "p", [StageRecord("create", {})])
    info = inspect_pipeline(src)
    rt = torch_runtime(load_pipeline(src), info.tokenizer_dir, get_scheduler_entry("ddim").config_for(
        info.scheduler_config))
    res = rt.generate("a red circle", steps=2, guidance=3.0, seed=0)
    assert [(c.role, c.batch) for c in res.trace if c.step is not None] == \
        [("unet_seg_in", 1), ("unet_seg_l1", 1), ("unet_exit_l1", 1)] * 2


def test_adadiff_build_stage_trains_and_calibrates(tiny_pipeline_dir, tmp_path):
    from pocketdiff.build import build, load_recipe
    from pocketdiff.pinned import pinned_defaults

    recipe = tmp_path / "r.toml"
    recipe.write_text('stages = ["adadiff"]\n[adadiff.train]\nsteps = 1\nbatch_size = 2\npool_size = 4\nexits = [1]\n'
                      '[adadiff.calibrate]\nscheduler = "ddim"\nsampler_steps = 2\nguidance = 2.0\nn_prompts = 1\n'
                      'thresholds = [1.0]\ntarget_macs = 1.0\n')
    build(tiny_pipeline_dir, load_recipe(recipe), tmp_path / "work", progress=False)
    out = tmp_path / "work" / "adadiff"
    assert pinned_defaults(pipeline=out).steps == 2
    assert load_pipeline(out).unet.config.adadiff_exits == [1]


def test_every_app_port_replays_this_bundles_vectors(ada_bundle, ports):
    """The Kotlin and JS cores (and the runtime itself) replay this bundle's recorded run (tests/ports.py)."""
    check_all_ports(ports, ada_bundle, "tiny-adadiff", expect=("policy:adadiff",))
