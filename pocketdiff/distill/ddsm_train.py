"""Stage ``ddsm-train``: sandwich training of a slimmable UNet (DDSM; the slimmable-networks "sandwich rule").

The student is the input pipeline's UNet wrapped as a :class:`~pocketdiff.architectures.slimmable_unet.SlimmableUNet`:
one set of weights, run at every width of ``widths``. Each step trains, on the same batch:

- the full width (``@1.0``), the smallest width (``@<min>``), and ``n_random`` widths drawn from the ones
  between (``@rand``; the drawn width is logged as ``rand_width``);
- at each, two named terms: ``denoise`` (MSE to the true target of the UNet's ``prediction_type``) and
  ``out_kd`` (MSE to the frozen input UNet's prediction), weighted by ``w_denoise`` and ``w_out_kd``.

The loss is the mean over the widths trained that step, so its scale does not grow with ``n_random``.
Terms are logged per width (``denoise@1.0``, ``out_kd@0.5``, ...) by the shared resumable loop
(``pocketdiff/loop.py``), whose batches and width draws are seeded by the step: a resumed run sees the
same ones. The output is a pipeline whose UNet is a
:class:`~pocketdiff.architectures.slimmable_unet.DDSMUNet2DConditionModel` (no schedule yet: ``ddsm-search``
finds it).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pocketdiff.architectures.slimmable_unet import DEFAULT_WIDTHS, SlimmableUNet, as_ddsm_unet, check_widths
from pocketdiff.distill.data import check_data_source
from pocketdiff.distill.kd import denoise_target, encoded_pool
from pocketdiff.distributed import device
from pocketdiff.errors import PocketdiffError
from pocketdiff.loop import LoopConfig, check_lr_schedule, denoising_batch, lr_schedule, train
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline


@dataclass
class DDSMTrainConfig:
    widths: tuple[float, ...] = DEFAULT_WIDTHS  # the width multipliers the one network serves (multiples of 1/8)
    n_random: int = 1  # widths drawn per step from those between the smallest and the full
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    lr_schedule: str = "constant"
    w_denoise: float = 1.0
    w_out_kd: float = 1.0
    caption_dropout: float = 0.1
    pool_size: int = 4000
    data: str = "toyworld"
    checkpoint_every: int = 200
    seed: int = 0

    def validate(self) -> "DDSMTrainConfig":
        widths = check_widths(self.widths)
        if len(widths) < 2:
            raise PocketdiffError(f"sandwich training needs at least two widths (the smallest and 1.0); got {widths}")
        if self.n_random < 0 or self.n_random > 2:
            raise PocketdiffError(f"n_random must be 0, 1 or 2 (random widths per step), got {self.n_random}")
        if self.steps < 0 or self.batch_size < 1 or self.pool_size < 1 or self.checkpoint_every < 1:
            raise PocketdiffError(f"ddsm-train needs steps >= 0, batch_size >= 1, pool_size >= 1, checkpoint_every >= 1;"
                                  f" got {self.steps}, {self.batch_size}, {self.pool_size}, {self.checkpoint_every}")
        if self.lr <= 0 or min(self.w_denoise, self.w_out_kd) < 0 or self.w_denoise + self.w_out_kd == 0:
            raise PocketdiffError(f"lr must be > 0 and the loss weights >= 0, not both 0; got lr {self.lr}, weights "
                                  f"{self.w_denoise}, {self.w_out_kd}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise PocketdiffError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        check_lr_schedule(self.lr_schedule)
        check_data_source(self.data, "ddsm-train data source")
        return self


def sandwich_widths(step: int, seed: int, widths: tuple[float, ...], n_random: int) -> list[tuple[str, float]]:
    """(tag, width) trained at ``step``: the full, the smallest, then ``n_random`` drawn from the middle
    widths (with replacement), from a generator seeded by the step."""
    picks = [(f"{widths[-1]}", widths[-1]), (f"{widths[0]}", widths[0])]
    middle = widths[1:-1]
    if middle and n_random:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step + 13)
        for k, i in enumerate(torch.randint(0, len(middle), (n_random,), generator=g).tolist()):
            picks.append(("rand" if n_random == 1 else f"rand{k + 1}", middle[i]))
    return picks


class SandwichJob:
    """``batch(step)`` and ``loss(models, batch)`` for :func:`pocketdiff.loop.train`: a :class:`SlimmableUNet`
    against the frozen ``teacher`` UNet."""

    def __init__(self, pipe, teacher, cfg: DDSMTrainConfig, pool, noise_sched):
        dev = device()
        pipe.text_encoder.to(dev)
        self.pipe, self.teacher, self.cfg, self.sched = pipe, teacher.to(dev), cfg, noise_sched
        self.latents, self.ids, self.empty = pool
        self.widths = check_widths(cfg.widths)

    def batch(self, step: int) -> tuple:
        c = self.cfg
        return (*denoising_batch(step, c.seed, self.latents, self.ids, self.empty, c.batch_size, c.caption_dropout,
                                 self.sched.config.num_train_timesteps),
                sandwich_widths(step, c.seed, self.widths, c.n_random))

    def loss(self, models, b) -> dict:
        x0, b_ids, t, noise, picks = b
        c = self.cfg
        with torch.no_grad():
            hidden = self.pipe.text_encoder(b_ids)[0]  # [B, 77, D]
            noisy = self.sched.add_noise(x0, noise, t)  # [B, C, h, w]
            teacher = self.teacher(noisy, t, hidden).sample
            target = denoise_target(self.sched, x0, noise, t)
        terms, total = {}, 0.0
        for tag, width in picks:
            pred = models[0](noisy, t, hidden, width=width).sample
            terms[f"denoise@{tag}"] = F.mse_loss(pred, target)
            terms[f"out_kd@{tag}"] = F.mse_loss(pred, teacher)
            total = total + c.w_denoise * terms[f"denoise@{tag}"] + c.w_out_kd * terms[f"out_kd@{tag}"]
            if tag.startswith("rand"):
                terms[f"{tag}_width"] = torch.tensor(float(width))
        terms["loss"] = total / len(picks)
        return terms


def ddsm_train(pipeline_dir: str | Path, out_dir: str | Path, cfg: DDSMTrainConfig, workdir: str | Path,
               stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Sandwich-train ``pipeline_dir``'s UNet at ``cfg.widths``; write the pipeline with its DDSM UNet to ``out_dir``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    pipe = load_pipeline(pipeline_dir)
    torch.manual_seed(cfg.seed)
    pool = encoded_pool(pipe, cfg.data, cfg.pool_size, cfg.seed)
    teacher = copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    student = SlimmableUNet(pipe.unet, cfg.widths)
    pipe.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    job = SandwichJob(pipe, teacher, cfg, pool, DDPMScheduler.from_config(pipe.scheduler.config))
    summary = train(workdir, [student], opt, job.batch, job.loss,
                    LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                    {**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())}, name="ddsm-train",
                    stop_after=stop_after, lr_scheduler=lr_schedule(opt, cfg.lr_schedule, cfg.steps, cfg.lr))
    unet = as_ddsm_unet(pipe.unet.cpu(), check_widths(cfg.widths))
    out = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    history = [*read_history(pipeline_dir), StageRecord("ddsm-train", {**asdict(cfg), "summary": summary})]
    return write_pipeline(out, out_dir, history, overwrite=overwrite)
