"""Stage distill-steps: the DDIM grid and the w embedding against diffusers, the two-step target against
diffusers' own DDIM, a 2-round smoke run (4 -> 2 -> 1 steps) interrupted and resumed mid-round, and
the guidance-embedded student through export and the torch-free runtime with its UNet calls counted."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from pocketdiff.distill.steps import (Schedule, StepDistillConfig, add_guidance_embedding, distill_target, plan,
                                      student_grid, student_scheduler, teacher_grid)
from pocketdiff.pinned import trained_steps
from pocketdiff.errors import PocketdiffError

SMOKE = StepDistillConfig(start_steps=4, rounds=2, iters=2, batch_size=2, pool_size=8, checkpoint_every=1,
                          cfg_prob=0.5, w_min=1.5, w_max=3.0, ema_decay=0.9)


def test_student_grid_is_diffusers_trailing_ddim():
    from diffusers import DDIMScheduler

    t, s = student_grid(8, 1000)
    assert t.tolist() == [999, 874, 749, 624, 499, 374, 249, 124]  # literal vector for the apps
    assert s.tolist() == [874, 749, 624, 499, 374, 249, 124, -1]
    for n in (1, 2, 4, 8, 16, 32):
        d = DDIMScheduler(timestep_spacing="trailing")
        d.set_timesteps(n)
        assert student_grid(n, 1000)[0].tolist() == d.timesteps.tolist()


def test_guidance_embedding_matches_diffusers_and_runtime():
    from diffusers import StableDiffusionPipeline

    from pocketdiff.distill.steps import guidance_scale_embedding
    from pocketdiff.runtime.policies import guidance_scale_embedding as numpy_embedding

    w = torch.tensor([0.0, 1.0, 6.5])
    ref = StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=32)
    assert torch.allclose(guidance_scale_embedding(w, 32), ref, atol=1e-6)
    # sin/cos of float32 arguments up to w * 1000 rad: one ulp of exp() apart moves them ~1e-4
    assert np.allclose(numpy_embedding(6.5, 32)[0], ref[2].numpy(), atol=1e-3)
    assert np.allclose(numpy_embedding(1.0, 32)[0], ref[1].numpy(), atol=1e-3)
    assert numpy_embedding(1.0, 33).shape == (1, 33)


def test_added_guidance_embedding_starts_as_the_teacher(tiny_pipe):
    unet = tiny_pipe.unet.eval()
    embedded = add_guidance_embedding(unet, 16).eval()
    assert embedded.config.time_cond_proj_dim == 16 and unet.config.time_cond_proj_dim is None
    z, t, h = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        ref = unet(z, t, h).sample
        got = embedded(z, t, h, timestep_cond=torch.randn(2, 16)).sample
    assert torch.allclose(ref, got, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("n,substeps", [(4, 2), (8, 2), (16, 2), (4, 4)])
def test_target_lands_where_diffusers_ddim_lands_at_every_grid_point(tiny_pipe, prediction_type, n, substeps):
    """For every student step i (the last included), a one-step v student that predicts the target lands, under
    diffusers' own v-prediction DDIM at n steps, exactly where diffusers' DDIM lands after ``substeps`` guided
    teacher steps at n * substeps (the teacher read as an epsilon or a v model; one CFG row, one plain)."""
    from diffusers import DDIMScheduler

    unet = tiny_pipe.unet.eval()
    config = {**tiny_pipe.scheduler.config, "prediction_type": prediction_type}
    teacher_sched = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    teacher_sched.set_timesteps(n * substeps)
    student = student_scheduler(config)
    student.set_timesteps(n)
    t_grid, s_grid = student_grid(n, 1000)
    queries, lands = teacher_grid(n, substeps, 1000)
    assert queries[:, 0].tolist() == t_grid.tolist() == student.timesteps.tolist()
    g = torch.Generator().manual_seed(n)
    z = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(2, 77, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    w, cfg_rows = torch.tensor([1.0, 3.0]), torch.tensor([False, True])
    for i in range(n):
        rows = lambda x: torch.full((2,) + x.shape, 0, dtype=x.dtype) + x  # noqa: E731  [k] -> [2, k]
        target = distill_target(unet, prediction_type, Schedule(config), z, t_grid[i].repeat(2), s_grid[i].repeat(2),
                                rows(queries[i]), rows(lands[i]), cond, uncond, w, cfg_rows)
        x = z.clone()
        with torch.no_grad():
            for t in teacher_sched.timesteps[substeps * i:substeps * (i + 1)]:
                out = unet(torch.cat([x, x]), t, torch.cat([uncond, cond])).sample
                out_u, out_c = out.chunk(2)
                guided = torch.where(cfg_rows.view(-1, 1, 1, 1), out_u + w.view(-1, 1, 1, 1) * (out_c - out_u), out_c)
                x = teacher_sched.step(guided, t, x).prev_sample
        landed = student.step(target, student.timesteps[i], z).prev_sample
        assert torch.allclose(landed, x, atol=2e-5), (i, (landed - x).abs().max())


def test_cfg_aware_and_vanilla_terms_against_an_independent_computation(tiny_pipe):
    """Each row's loss, recomputed without distill_target or guided_output: the teacher's steps by diffusers'
    DDIM at 2n steps (guided at the row's w on a CFG row, conditional otherwise), the target as the v whose
    diffusers v-DDIM step lands there (the step is affine in v: solved from steps of v = 0 and v = 1), the
    student guided by two plain calls. ``cfg`` sums the CFG rows, ``vanilla`` the others, each over B."""
    from diffusers import DDIMScheduler

    from pocketdiff.architectures.factory import build_pipeline
    from pocketdiff.distill.steps import distill_terms

    teacher, student = tiny_pipe.unet.eval(), build_pipeline("tiny", seed=1).unet.eval()  # two different UNets
    config, n = dict(tiny_pipe.scheduler.config), 4
    teacher_sched = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    teacher_sched.set_timesteps(2 * n)
    student_sched = student_scheduler(config)
    student_sched.set_timesteps(n)
    g = torch.Generator().manual_seed(3)
    rows_i, cfg_rows, w = [0, 2, 3], torch.tensor([True, False, True]), torch.tensor([2.0, 1.0, 3.5])
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    cond, empty = torch.randn(3, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    (t, s), (q, lands) = student_grid(n, 1000), teacher_grid(n, 2, 1000)
    batch = (x0, noise, t[rows_i], s[rows_i], q[rows_i], lands[rows_i], cond, w, cfg_rows)
    terms = distill_terms(student, teacher, "epsilon", Schedule(config), batch, empty)
    per = []
    with torch.no_grad():
        for b, i in enumerate(rows_i):
            t_b = student_sched.timesteps[i]
            z = teacher_sched.add_noise(x0[b:b + 1], noise[b:b + 1], t_b.view(1))
            x = z
            for u in teacher_sched.timesteps[2 * i:2 * i + 2]:
                e_c, e_u = teacher(x, u, cond[b:b + 1]).sample, teacher(x, u, empty).sample
                x = teacher_sched.step(e_u + w[b] * (e_c - e_u) if cfg_rows[b] else e_c, u, x).prev_sample
            p0 = student_sched.step(torch.zeros_like(z), t_b, z).prev_sample
            p1 = student_sched.step(torch.ones_like(z), t_b, z).prev_sample
            target = (x - p0) / (p1 - p0)
            v_c, v_u = student(z, t_b, cond[b:b + 1]).sample, student(z, t_b, empty).sample
            guided = v_u + w[b] * (v_c - v_u) if cfg_rows[b] else v_c
            per.append(float(((guided - target) ** 2).mean()))
    assert terms["cfg"].item() == pytest.approx((per[0] + per[2]) / 3, rel=1e-3)
    assert terms["vanilla"].item() == pytest.approx(per[1] / 3, rel=1e-3)
    assert terms["loss"].item() == pytest.approx(sum(per) / 3, rel=1e-3)


def test_teacher_grid_midpoints_are_the_finer_grid():
    """The 8-step student's midpoints are diffusers' 16-step trailing grid (937, 812, ...), never (t + s) // 2."""
    from diffusers import DDIMScheduler

    for n in (4, 8, 16):
        d = DDIMScheduler(timestep_spacing="trailing")
        d.set_timesteps(2 * n)
        queries, _ = teacher_grid(n, 2, 1000)
        assert queries.flatten().tolist() == d.timesteps.tolist()
    mids = teacher_grid(8, 2, 1000)[0][:, 1]
    assert mids.tolist() == [937, 811, 687, 561, 437, 311, 187, 61]  # diffusers: round(1000 - 62.5 k) - 1
    t, s = student_grid(8, 1000)
    assert int(((t + s) // 2 != mids).sum()) == 4  # the old midpoint missed half of them


def test_plan_and_bad_configs():
    assert [(r.name, r.steps, r.substeps) for r in plan(StepDistillConfig(start_steps=32, rounds=3, v_warmup_iters=5))] \
        == [("v-warmup", 32, 1), ("round1", 16, 2), ("round2", 8, 2), ("round3", 4, 2)]
    assert [(r.steps, r.substeps) for r in plan(StepDistillConfig(start_steps=32, rounds=2, round1_substeps=4))] \
        == [(8, 4), (4, 2)]
    for change, message in [({"start_steps": 12, "rounds": 3}, "start_steps must be divisible by round1_substeps"),
                            ({"round1_substeps": 1}, "round1_substeps must be >= 2"),
                            ({"w_min": 3.0, "w_max": 2.0}, "1 <= w_min <= w_max; got [3.0, 2.0]"),
                            ({"cfg_prob": 1.5}, "cfg_prob must be in [0, 1]"),
                            ({"lr_schedule": "step"}, "unknown learning-rate schedule 'step'"),
                            ({"ema_decay": -0.1}, "ema_decay must be in [0, 1) (0 turns the EMA off), got -0.1"),
                            ({"data": "laion"}, "unknown step distillation data source 'laion'")]:
        with pytest.raises(PocketdiffError, match=re.escape(message)):
            replace(StepDistillConfig(), **change).validate()


def test_a_round_trained_before_a_config_field_existed_matches_only_its_default():
    from dataclasses import asdict

    from pocketdiff.distill.steps import same_job

    job = {**asdict(StepDistillConfig()), "round": {"name": "round1"}}
    old = {k: v for k, v in job.items() if k != "ema_decay"}  # recorded before ema_decay was added
    assert same_job(old, job)
    assert not same_job(old, {**job, "ema_decay": 0.999})
    assert not same_job({**old, "lr": 3e-4}, job) and not same_job(None, job)
    assert not same_job({k: v for k, v in job.items() if k != "round"}, job)  # only config fields may be added


def test_two_round_smoke_with_resume_mid_round(tiny_pipeline_dir, tmp_path):
    from pocketdiff.loop import Interrupted
    from pocketdiff.pipedir import read_train_log
    from pocketdiff.distill.steps import distill_steps
    from pocketdiff.pipedir import load_pipeline, read_history

    work, out = tmp_path / "work", tmp_path / "out"
    with pytest.raises(Interrupted):  # round 1, after its first iteration
        distill_steps(tiny_pipeline_dir, out, SMOKE, work, stop_after=1, progress=False)
    assert not (work / "round1" / "pipeline").exists() and not out.exists()
    with pytest.raises(Interrupted):  # finishes round 1 (1 iteration), then 1 iteration into round 2
        distill_steps(tiny_pipeline_dir, out, SMOKE, work, stop_after=2, progress=False)
    assert (work / "round1" / "pipeline").is_dir() and not (work / "round2" / "pipeline").exists()
    distill_steps(tiny_pipeline_dir, out, SMOKE, work, progress=False)
    rounds = read_history(out)[-1].config["rounds"]
    assert rounds["round1"]["resumed_from"] == 1 and rounds["round2"]["resumed_from"] == 1
    assert [rounds[r]["student_steps"] for r in ("round1", "round2")] == [2, 1]
    assert trained_steps(out) == 1 and trained_steps(work / "round1" / "pipeline") == 2
    log = read_train_log(work / "round2" / "train")
    assert [r["step"] for r in log] == [2] and {"vanilla", "cfg", "loss"} <= set(log[-1])
    pipe = load_pipeline(out)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    teacher = load_pipeline(tiny_pipeline_dir).unet
    assert not torch.equal(pipe.unet.conv_out.weight, teacher.conv_out.weight)  # it trained
    with pytest.raises(PocketdiffError, match="round1/pipeline was trained with another config"):
        distill_steps(tiny_pipeline_dir, out, replace(SMOKE, lr=3e-4), work, progress=False, overwrite=True)


def test_guidance_embedded_student_runs_one_unet_call_per_step(tiny_pipeline_dir, tmp_path, capsys):
    """The w-embedded student: exported with a timestep_cond input (ONNX, parity-checked)
    and sampled by the torch-free runtime with one UNet call per step, counted at the session; the
    torch (diffusers) path agrees."""
    from pocketdiff.distill.steps import distill_steps
    from pocketdiff.generate import GenerateConfig, generate_torch
    from pocketdiff.runtime.sampler import RuntimePipeline

    cfg = replace(SMOKE, rounds=1, start_steps=4, iters=1, guidance_embed=True, embed_dim=16, cfg_prob=1.0)
    out = distill_steps(tiny_pipeline_dir, tmp_path / "student", cfg, tmp_path / "work", progress=False)
    from pocketdiff.cli import main

    bundle = tmp_path / "bundle"  # the CLI pins the steps the student was trained for (start 4, 1 round: 2)
    assert main(["export", "--pipeline", str(out), "--out", str(bundle), "--targets", "onnx", "--guidance", "2",
                 "--no-progress"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["defaults"]["steps"] == 2
    assert [i["name"] for c in manifest["components"] if c["role"] == "unet" for i in c["inputs"]][-1] == "timestep_cond"
    assert main(["generate", "--pipeline", str(out), "a red circle", "--steps", "3", "--guidance", "2", "--out",
                 str(tmp_path / "x.png"), "--no-progress"]) == 0
    assert "trained for 2 steps; sampling it at 3 steps" in capsys.readouterr().err
    # without --steps/--guidance, generate takes the bundle's pinned defaults (2 steps, guidance 2)
    assert main(["generate", "--bundle", str(bundle), "a red circle", "--out", str(tmp_path / "y.png"),
                 "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["config"]["steps"], printed["config"]["guidance"], printed["steps"]) == (2, 2.0, 2)
    assert printed["calls"] == {"text_encoder": 1, "unet": 2, "vae_decoder": 1}  # the prompt alone, no negative
    assert manifest["sampler"] == {"policy": "guidance_embedded", "params": {}}
    pipe = RuntimePipeline.from_bundle(bundle, "onnx")
    assert pipe.policy.name == "guidance_embedded"
    res = pipe.generate("a red circle", steps=2, guidance=2.0, seed=3)
    # one batch-1 pass per step, no CFG pair
    assert [(c.step, c.role, c.batch) for c in res.trace] == [
        (None, "text_encoder", 1), (0, "unet", 1), (1, "unet", 1), (None, "vae_decoder", 1)]
    ref = generate_torch(out, GenerateConfig("a red circle", steps=2, guidance=2.0, seed=3))
    assert np.abs(ref.image.astype(int) - res.image.astype(int)).max() <= 2
    feeds_a = {"sample": np.ones((1, 4, 8, 8), np.float32), "timestep": np.asarray(500.0, np.float32),
               "encoder_hidden_states": np.zeros((1, 77, 32), np.float32)}
    from pocketdiff.runtime.policies import guidance_scale_embedding

    sess = pipe.sessions["unet"]
    a = sess.run({**feeds_a, "timestep_cond": guidance_scale_embedding(1.0, 16)})["out_sample"]
    b = sess.run({**feeds_a, "timestep_cond": guidance_scale_embedding(5.0, 16)})["out_sample"]
    assert not np.allclose(a, b)  # the trained w projection is live in the exported graph
    # bench compare composes its end-to-end figure from the side's trace: one batch-1 UNet call per step
    from pocketdiff.benchmarks.compare import Side, compose, side_traces

    side = Side("bundle", bundle, "onnx", 8, 2.0)
    assert side.policy == "guidance_embedded" and "w-embedded" in side.label
    assert Side("pipeline", tiny_pipeline_dir, "torch", 8, 2.0).policy == "cfg"
    ms = {("text_encoder", 1): 1.0, ("unet", 1): 10.0, ("unet", 2): 15.0, ("vae_decoder", 1): 2.0}
    assert compose(side_traces(side), ms)["e2e_ms"] == 1.0 + 8 * 10.0 + 2.0
    cfg_side = Side("pipeline", tiny_pipeline_dir, "torch", 8, 2.0)  # negative + prompt, batch-2 steps (PNDM: 8 + 1)
    assert compose(side_traces(cfg_side), ms)["e2e_ms"] == 2 * 1.0 + 9 * 15.0 + 2.0


def test_v_warmup_round_runs_before_the_halving_rounds(tiny_pipeline_dir, tmp_path, monkeypatch):
    import pocketdiff.distill.steps as steps_mod
    from pocketdiff.distill.steps import distill_steps
    from pocketdiff.pipedir import read_history

    seen = []  # (substeps, the teacher's prediction type) of every distillation target

    def spy(teacher, prediction_type, sched, z, t, s, queries, *rest):
        seen.append((queries.shape[1], prediction_type))
        return real(teacher, prediction_type, sched, z, t, s, queries, *rest)

    real = steps_mod.distill_target
    monkeypatch.setattr(steps_mod, "distill_target", spy)
    out = distill_steps(tiny_pipeline_dir, tmp_path / "out", replace(SMOKE, rounds=2, iters=1, v_warmup_iters=2),
                        tmp_path / "work", progress=False)
    assert trained_steps(out) == 1
    rounds = read_history(out)[-1].config["rounds"]
    assert list(rounds) == ["v-warmup", "round1", "round2"] and rounds["v-warmup"]["student_steps"] == 4
    # the warm-up only initialises round 1: round 1 still distils the given (epsilon) teacher, round 2 round 1's
    # v-prediction student
    assert dict.fromkeys(seen) == {(1, "epsilon"): None, (2, "epsilon"): None, (2, "v_prediction"): None}
    assert seen[:2] == [(1, "epsilon")] * 2 and seen[-1] == (2, "v_prediction")
