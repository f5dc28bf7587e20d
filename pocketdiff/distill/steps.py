"""Stage ``distill-steps``: progressive step distillation with CFG-aware regularisation (SnapFusion §4),
and a guidance-embedded single-pass student.

Progressive distillation (Salimans & Ho 2022): each round halves the sampler's steps. The student
starts from the round's teacher and learns to take in **one** DDIM step what the teacher takes in
**two** (``round1_substeps`` in round 1): from ``z_t`` the teacher takes diffusers' trailing-DDIM steps at
``2n`` steps (``teacher_grid``); the student's target is the ``x̃`` whose single DDIM step ``t -> s`` lands
on the same ``z_s``::

    x̃ = (z_s - (σ_s / σ_t) z_t) / (α_s - (σ_s / σ_t) α_t),   ε̃ = (z_t - α_t x̃) / σ_t,   ṽ = α_t ε̃ - σ_t x̃

The student predicts ``v`` (``prediction_type="v_prediction"``) and the loss is the MSE to ``ṽ``.
The grid is the one the runtime samples: diffusers' DDIM with ``timestep_spacing="trailing"`` at the
student's step count ``n`` (``t`` from ``set_timesteps(n)``, ``s = t - T // n``), so each output's
scheduler config is exactly what it was trained for. Round 1's teacher is the given teacher (any
UNet class, any prediction type: the student may be the slim UNet, the teacher the original);
later rounds' teacher is the previous round's student.

CFG-aware regularisation (SnapFusion): per sample, with probability ``cfg_prob`` the student's
CFG-guided output ``v_u + w (v_c - v_u)`` is compared with the CFG-guided two-step teacher target at
``w ~ U[w_min, w_max]``; otherwise the vanilla (conditional, with caption dropout) distillation loss.
Both terms are logged (``vanilla`` + ``cfg`` = ``loss``, each a sum over its samples / batch).

Guidance embedding (``guidance_embed``): the student gets diffusers' ``time_cond_proj_dim`` input,
fed ``guidance_scale_embedding(w - 1)`` as ``StableDiffusionPipeline`` does, initialised to zero (so it
starts as its teacher), and learns the guided target in one pass: a vanilla sample is ``w = 1``.
It then needs one UNet evaluation per step instead of two.

An optional warm-up round (``v_warmup_iters``) first teaches the student the teacher's own one-step
prediction in v form at ``start_steps`` (SnapFusion fine-tunes its teacher to v-prediction first). It only
initialises round 1's student: round 1's teacher stays the given teacher, whose prediction converts to v
exactly, rather than the warm-up's approximation of it (with the warm-up as round 1's teacher, the toy
16-step CFG student came out worse: FID 1.13 vs 0.87, accuracy 0.656 vs 0.680 without a warm-up).

Each round checkpoints its training (accelerate, resumable) and, when done, writes its student as a
complete pipeline (``WORKDIR/<round>/pipeline``); a rerun skips finished rounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

from pocketdiff.build import Context, Stage
from pocketdiff.distill.data import check_data_source
from pocketdiff.distill.kd import encoded_pool
from pocketdiff.loop import Interrupted, LoopConfig, check_ema_decay, check_lr_schedule, lr_schedule, train
from pocketdiff.distributed import device
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline


@dataclass
class StepDistillConfig:
    start_steps: int = 32  # the teacher's DDIM steps in round 1
    rounds: int = 2  # each halves the steps: 32 -> 16 -> 8
    round1_substeps: int = 2  # teacher DDIM steps per student step in round 1 (2: a halving; 4: 32 -> 8 at once)
    iters: int = 2000  # training iterations per round
    v_warmup_iters: int = 0  # optional round 0: the teacher's own prediction, in v form, at start_steps
    batch_size: int = 32
    lr: float = 1e-4
    lr_schedule: str = "constant"  # loop.LR_SCHEDULES, per round (cosine decays to lr / 20 at its last iteration)
    ema_decay: float = 0.0  # > 0: each round's student is the EMA of its weights (loop.LoopConfig.ema_decay)
    cfg_prob: float = 0.1  # p: probability of the CFG-aware loss per sample (SnapFusion)
    w_min: float = 2.0  # CFG-aware guidance scale range (SnapFusion: [2, 14] for SD1.5)
    w_max: float = 14.0
    guidance_embed: bool = False  # a single-pass student conditioned on w (time_cond_proj_dim)
    embed_dim: int = 256  # guidance_embed: width of the w embedding
    caption_dropout: float = 0.1  # vanilla samples whose caption is replaced by "" (keeps the uncond branch)
    pool_size: int = 4000
    data: str = "toyworld"  # a named source (toyworld) or imagefolder:DIR (distill.data)
    checkpoint_every: int = 200
    seed: int = 0

    def validate(self) -> "StepDistillConfig":
        if self.round1_substeps < 2:
            raise PocketdiffError(f"round1_substeps must be >= 2 (teacher steps per student step), got "
                                  f"{self.round1_substeps}")
        div = self.round1_substeps * 2 ** (self.rounds - 1)
        if self.rounds < 1 or self.start_steps < div or self.start_steps % div:
            raise PocketdiffError(f"start_steps must be divisible by round1_substeps * 2**(rounds - 1) (round 1 divides "
                                  f"it by round1_substeps, each later round halves it); got start_steps "
                                  f"{self.start_steps}, rounds {self.rounds}, round1_substeps {self.round1_substeps}")
        if min(self.iters, self.v_warmup_iters) < 0 or min(self.batch_size, self.pool_size, self.checkpoint_every,
                                                             self.embed_dim) < 1:
            raise PocketdiffError(f"iters and v_warmup_iters must be >= 0, batch_size, pool_size, checkpoint_every "
                                  f"and embed_dim >= 1; got {self.iters}, {self.v_warmup_iters}, {self.batch_size}, "
                                  f"{self.pool_size}, {self.checkpoint_every}, {self.embed_dim}")
        if not 0.0 <= self.cfg_prob <= 1.0 or not 0.0 <= self.caption_dropout < 1.0:
            raise PocketdiffError(f"cfg_prob must be in [0, 1] and caption_dropout in [0, 1); got {self.cfg_prob}, "
                                  f"{self.caption_dropout}")
        if not 1.0 <= self.w_min <= self.w_max:
            raise PocketdiffError(f"the CFG range needs 1 <= w_min <= w_max; got [{self.w_min}, {self.w_max}]")
        if self.lr <= 0:
            raise PocketdiffError(f"lr must be > 0, got {self.lr}")
        check_lr_schedule(self.lr_schedule)
        check_ema_decay(self.ema_decay)
        check_data_source(self.data, "step distillation data source")
        return self


@dataclass(frozen=True)
class Round:
    name: str  # the work subfolder
    steps: int  # the student's sampler steps
    substeps: int  # teacher DDIM steps per student step: 1 (the v warm-up), 2 (a halving round) or round1_substeps
    iters: int


def plan(cfg: StepDistillConfig) -> list[Round]:
    """The rounds in order: an optional v warm-up, round 1 (``start_steps / round1_substeps`` steps), then
    ``rounds - 1`` halvings."""
    out = [Round("v-warmup", cfg.start_steps, 1, cfg.v_warmup_iters)] if cfg.v_warmup_iters else []
    k = cfg.round1_substeps
    return out + [Round(f"round{r}", cfg.start_steps // (k * 2 ** (r - 1)), k if r == 1 else 2, cfg.iters)
                  for r in range(1, cfg.rounds + 1)]


def student_grid(steps: int, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t [n], s [n]): the timesteps diffusers' DDIM runs at ``steps`` with ``timestep_spacing="trailing"``,
    and the timestep each step lands on (``t - T // n``, as ``DDIMScheduler.step`` computes it; negative =
    the final alpha)."""
    t_max = num_train_timesteps
    if steps > t_max:
        raise PocketdiffError(f"{steps} steps exceed the {t_max} training timesteps")
    t = np.round(np.arange(t_max, 0, -t_max / steps)).astype(np.int64) - 1
    return torch.from_numpy(t), torch.from_numpy(t - t_max // steps)


def teacher_grid(steps: int, substeps: int, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries [n, k], lands [n, k]): the ``k = substeps`` DDIM steps the teacher takes for student step i,
    exactly as diffusers' trailing DDIM runs the teacher at ``n * k`` steps: step j of student step i queries
    the teacher at that grid's timestep ``n*k``-grid[i*k + j] and lands at it minus ``T // (n*k)``.

    The queries are the timesteps the teacher was sampled (and, for a distilled teacher, trained) at: at 8
    student steps the midpoints are 937, 812, 687, ... (16-step grid), not ``(t + s) // 2`` (936, ...)."""
    q, lands = student_grid(steps * substeps, num_train_timesteps)
    return q.view(steps, substeps), lands.view(steps, substeps)


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim]: diffusers' ``StableDiffusionPipeline.get_guidance_scale_embedding`` (fed ``w - 1``);
    the runtime's numpy copy is ``runtime.sampler.guidance_scale_embedding``."""
    w = w.float() * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


def add_guidance_embedding(unet, dim: int):
    """A copy of ``unet`` (same class) with a ``time_cond_proj_dim`` w-input whose projection starts at
    zero, so it computes what ``unet`` computes until trained."""
    if unet.config.time_cond_proj_dim is not None:
        return unet
    new = type(unet).from_config({**unet.config, "time_cond_proj_dim": dim})
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise PocketdiffError(f"adding a guidance embedding to {type(unet).__name__} changed more than the w "
                              f"projection: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(new.time_embedding.cond_proj.weight)
    return new


class Schedule:
    """α_t, σ_t of the DDIM the students are sampled with (t < 0: its final alpha)."""

    def __init__(self, scheduler_config: dict):
        sched = DDIMScheduler.from_config(scheduler_config)
        self.acp = sched.alphas_cumprod.float()  # [T]
        self.final = torch.tensor(1.0) if sched.config.set_alpha_to_one else self.acp[0]
        self.num_train_timesteps = sched.config.num_train_timesteps

    def to(self, device) -> "Schedule":
        self.acp, self.final = self.acp.to(device), self.final.to(device)
        return self

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B] -> [B,1,1,1] each
        a = torch.where(t >= 0, self.acp[t.clamp(min=0)], self.final)
        return a.sqrt().view(-1, 1, 1, 1), (1 - a).sqrt().view(-1, 1, 1, 1)


def guided_output(unet, z, t, cond, uncond, w, cfg_rows) -> torch.Tensor:
    """``unet``'s raw output [B,C,h,w] at (z, t [B]), guided at ``w`` [B] on the rows ``cfg_rows`` [B] (bool) and
    conditional elsewhere. A guidance-embedded UNet does it in one pass with ``w`` embedded (``w = 1``
    off the CFG rows); otherwise the CFG rows get a second, unconditional pass and
    ``o_u + w (o_c - o_u)``. Gradients flow if enabled."""
    embed_dim = getattr(unet, "module", unet).config.time_cond_proj_dim  # (unet may be DDP-wrapped)
    if embed_dim is not None:
        w_eff = torch.where(cfg_rows, w, torch.ones_like(w))
        return unet(z, t, cond, timestep_cond=guidance_scale_embedding(w_eff - 1, embed_dim), return_dict=False)[0]
    idx = cfg_rows.nonzero().flatten()
    both = unet(torch.cat([z, z[idx]]), torch.cat([t, t[idx]]), torch.cat([cond, uncond[idx]]), return_dict=False)[0]
    out, out_u = both[:len(z)], both[len(z):]
    if len(idx):
        out = out.index_copy(0, idx, out_u + w[idx].view(-1, 1, 1, 1) * (out[idx] - out_u))
    return out


def to_x0_eps(out: torch.Tensor, prediction_type: str, sched: "Schedule", z, t) -> tuple[torch.Tensor, torch.Tensor]:
    """A model output in ``prediction_type`` at (z, t) -> (x̂, ε̂)."""
    a, s = sched.alpha_sigma(t)
    if prediction_type == "epsilon":
        return (z - s * out) / a, out
    if prediction_type == "v_prediction":
        return a * z - s * out, s * z + a * out
    raise choice_error("teacher prediction_type", prediction_type, ("epsilon", "v_prediction"))


def distill_target(teacher, prediction_type: str, sched: Schedule, z, t, s, queries, lands, cond, uncond, w, cfg_rows
                   ) -> torch.Tensor:
    """ṽ [B,C,h,w]: the v a one-step DDIM student (at z, from t [B], landing at s [B]) must predict to land
    where the teacher's guided DDIM steps land: step j queries the teacher at ``queries[:, j]`` and lands at
    ``lands[:, j]`` (``teacher_grid``; ``queries[:, 0] == t``)."""
    a_t, s_t = sched.alpha_sigma(t)
    x = z
    with torch.no_grad():
        for u, u_next in zip(queries.unbind(1), lands.unbind(1)):
            x0, eps = to_x0_eps(guided_output(teacher, x, u, cond, uncond, w, cfg_rows), prediction_type, sched, x, u)
            a_n, s_n = sched.alpha_sigma(u_next)
            x = a_n * x0 + s_n * eps  # DDIM (eta 0)
        a_s, s_s = sched.alpha_sigma(s)
        x_tilde = (x - (s_s / s_t) * z) / (a_s - (s_s / s_t) * a_t)
        eps_tilde = (z - a_t * x_tilde) / s_t
        return a_t * eps_tilde - s_t * x_tilde


def distill_terms(student, teacher, prediction_type: str, sched: Schedule, batch, empty_hidden) -> dict:
    """One batch's named loss terms. ``batch`` = (x0, noise, t, s, queries, lands, cond, w, cfg_rows): clean
    latents [B,C,h,w], noise, the student's step (t, s) [B], the teacher's steps (``teacher_grid``) [B, k], text
    states [B,77,D], guidance scales [B] and the CFG-aware rows [B] (bool). ``vanilla`` and ``cfg`` are the MSE
    of the student's v (guided on the CFG rows) to the target, each summed over its rows and divided by B;
    ``loss`` is their sum."""
    x0, noise, t, s, queries, lands, cond, w, cfg_rows = batch
    a, sg = sched.alpha_sigma(t)
    z = a * x0 + sg * noise  # [B,C,h,w]
    uncond = empty_hidden.expand_as(cond)
    target = distill_target(teacher, prediction_type, sched, z, t, s, queries, lands, cond, uncond, w, cfg_rows)
    v = guided_output(student, z, t, cond, uncond, w, cfg_rows)  # the student predicts v
    per = ((v - target) ** 2).mean(dim=(1, 2, 3))  # [B]
    n = len(per)
    terms = {"vanilla": per[~cfg_rows].sum() / n, "cfg": per[cfg_rows].sum() / n}
    terms["loss"] = terms["vanilla"] + terms["cfg"]
    return terms


def student_scheduler(scheduler_config: dict):
    """The DDIM the students are trained for and sampled with: v-prediction, trailing spacing."""
    return DDIMScheduler.from_config(scheduler_config, prediction_type="v_prediction", timestep_spacing="trailing")


def _hidden(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """Text states [N, 77, D] of ``ids`` [N, 77], encoded where the text encoder is, kept on the CPU."""
    dev = next(text_encoder.parameters()).device
    with torch.no_grad():
        return torch.cat([text_encoder(ids[i:i + 256].to(dev))[0].cpu() for i in range(0, len(ids), 256)])


def same_job(recorded: dict | None, job: dict) -> bool:
    """Whether a finished round's recorded job is ``job``. A config field added after the round was trained
    is absent from its record; it matches when ``job`` has it at its default, which is the old behaviour."""
    if recorded is None:
        return False
    defaults = asdict(StepDistillConfig())
    added = {k: v for k, v in job.items() if k not in recorded and k in defaults and v == defaults[k]}
    return {**recorded, **added} == job


def distill_steps(pipeline_dir: str | Path, out_dir: str | Path, cfg: StepDistillConfig, workdir: str | Path,
                  teacher_dir: str | Path | None = None, stop_after: int | None = None, progress: bool = True,
                  overwrite: bool = False) -> Path:
    """Progressively distil ``teacher_dir``'s sampler (default: ``pipeline_dir``'s) into ``pipeline_dir``'s
    UNet; write the last round's student pipeline to ``out_dir`` (every round's is in ``workdir``)."""
    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    teacher_dir = teacher_dir or pipeline_dir
    dev = device()  # the teacher and the schedule live where the student trains; batches are sent there
    workdir = Path(workdir)
    pipe = load_pipeline(pipeline_dir)
    teacher_pipe = load_pipeline(teacher_dir)
    for key in ("in_channels", "sample_size", "cross_attention_dim"):
        if getattr(pipe.unet.config, key) != getattr(teacher_pipe.unet.config, key):
            raise PocketdiffError(f"teacher {teacher_dir} and student {pipeline_dir} UNets differ in {key}: "
                                  f"{getattr(teacher_pipe.unet.config, key)!r} vs {getattr(pipe.unet.config, key)!r}")
    teacher_pred = teacher_pipe.scheduler.config.get("prediction_type", "epsilon")
    sched = Schedule(teacher_pipe.scheduler.config).to(dev)
    out_sched = student_scheduler(teacher_pipe.scheduler.config)
    # training images are encoded with the teacher's VAE: a distilled decoder's pipeline (e.g. the TAESD-style
    # one) carries no trained encoder
    if not isinstance(teacher_pipe.vae, AutoencoderKL):
        raise PocketdiffError(f"the teacher {teacher_dir}'s VAE ({type(teacher_pipe.vae).__name__}) has no trained "
                              "encoder to encode training images; pass the original pipeline as the teacher")
    teacher_pipe.text_encoder.requires_grad_(False)
    latents, ids, empty = encoded_pool(teacher_pipe, cfg.data, cfg.pool_size, cfg.seed)
    text = teacher_pipe.text_encoder.to(dev)
    hidden, empty_hidden = _hidden(text, ids), _hidden(text, empty[None])  # [N,77,D], [1,77,D] (CPU)
    empty_on_dev = empty_hidden.to(dev)
    fingerprint = {"pipeline": str(Path(pipeline_dir).resolve()), "teacher": str(Path(teacher_dir).resolve())}
    budget = stop_after
    teacher, student, summaries = teacher_pipe.unet.to(dev).eval().requires_grad_(False), None, {}
    pred = teacher_pred
    for r in plan(cfg):
        rdir = workdir / r.name
        done = rdir / "pipeline"
        job = {**{k: v for k, v in asdict(cfg).items() if k != "rounds"}, **fingerprint, "round": asdict(r)}
        if done.is_dir():  # finished on an earlier run (later rounds may be added: ``rounds`` is not in the job)
            record = read_history(done)[-1].config
            if not same_job(record.get("job"), json.loads(json.dumps(job))):
                raise PocketdiffError(f"{done} was trained with another config ({record.get('job')}); use a new "
                                      f"work dir or delete it")
            student = load_pipeline(done).unet.to(dev)
            summaries[r.name] = record["summary"]
        else:
            if budget is not None and budget <= 0:
                raise Interrupted(f"distill-steps: stopped before {r.name}")
            init = student if student is not None else pipe.unet
            torch.manual_seed(cfg.seed)
            student = type(init).from_config(init.config)
            student.load_state_dict(init.state_dict())
            if cfg.guidance_embed:
                student = add_guidance_embedding(student, cfg.embed_dim)
            t_grid, s_grid = student_grid(r.steps, sched.num_train_timesteps)
            q_grid, l_grid = teacher_grid(r.steps, r.substeps, sched.num_train_timesteps)
            opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)

            def batch_fn(step, r=r, t_grid=t_grid, s_grid=s_grid, q_grid=q_grid, l_grid=l_grid):
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7919 + r.steps)
                idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
                i = torch.randint(0, r.steps, (cfg.batch_size,), generator=g)
                noise = torch.randn(latents[idx].shape, generator=g)
                cfg_rows = torch.rand(cfg.batch_size, generator=g) < cfg.cfg_prob
                dropped = (torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout) & ~cfg_rows
                w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(cfg.batch_size, generator=g)
                cond = torch.where(dropped.view(-1, 1, 1), empty_hidden, hidden[idx])
                return latents[idx], noise, t_grid[i], s_grid[i], q_grid[i], l_grid[i], cond, w, cfg_rows

            def loss_fn(models, b, teacher=teacher, pred=pred):
                return distill_terms(models[0], teacher, pred, sched, b, empty_on_dev)

            summary = train(rdir / "train", [student], opt, batch_fn, loss_fn,
                            LoopConfig(steps=r.iters, checkpoint_every=cfg.checkpoint_every, progress=progress,
                                       ema_decay=cfg.ema_decay),
                            job, name=f"distill-steps {r.name}", stop_after=budget,
                            lr_scheduler=lr_schedule(opt, cfg.lr_schedule, r.iters, cfg.lr))
            if budget is not None:
                budget -= summary["steps"] - summary["resumed_from"]
            student = getattr(student, "module", student).eval()
            summary.update({"round": r.name, "student_steps": r.steps, "teacher_substeps": r.substeps})
            summaries[r.name] = summary
            out = StableDiffusionPipeline(**{**pipe.components, "unet": student, "scheduler": out_sched},
                                          requires_safety_checker=False)
            record = StageRecord("distill-steps", {**asdict(cfg), "teacher": fingerprint["teacher"],
                                                   "student_steps": r.steps, "round": r.name, "summary": summary,
                                                   "job": job})
            write_pipeline(out, done, [*read_history(pipeline_dir), record])
        if r.substeps > 1:  # a distillation round's student teaches the next; the v warm-up only initialises round 1
            teacher, pred = student.requires_grad_(False), "v_prediction"
    final = workdir / plan(cfg)[-1].name / "pipeline"
    out = load_pipeline(final)
    history = read_history(final)
    history[-1].config["rounds"] = summaries
    return write_pipeline(out, out_dir, history, overwrite=overwrite)


STEP_TEACHERS = ("original", "input")


@dataclass
class StepsStage:
    distill: StepDistillConfig = field(default_factory=StepDistillConfig)
    teacher: str = "original"  # round 1's teacher: the original teacher, or the stage's input pipeline

    def validate(self) -> "StepsStage":
        if self.teacher not in STEP_TEACHERS:
            raise choice_error("steps.teacher", self.teacher, STEP_TEACHERS)
        self.distill.validate()
        return self


def run_steps(ctx: Context, cfg: StepsStage) -> None:
    source = ctx.pipeline_before("steps")
    teacher = ctx.teacher if cfg.teacher == "original" else source
    distill_steps(source, ctx.out("steps"), cfg.distill, ctx.work("steps"), teacher_dir=teacher,
                  stop_after=ctx.stop_after, progress=ctx.progress, overwrite=True)


STAGE = Stage("steps", StepsStage, run_steps, outputs_pipeline=True, every_process=True)
