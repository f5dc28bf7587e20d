"""Stage ``adadiff-train``: train AdaDiff exit heads and their uncertainty estimation modules on a frozen UNet.

The input pipeline's UNet becomes an :class:`~pocketdiff.architectures.exit_unet.ExitUNet2DConditionModel` with
heads at ``exits`` (default: every level allowed). Batches are the usual noise-prediction ones (captioned images
of ``data`` encoded once, a timestep drawn per sample, captions dropped for CFG; ``loop.denoising_batch``). Per
exit level L, three named terms, weighted and logged (``layerwise@lL``, ``uem@lL``, ``kd@lL``):

- ``layerwise``: the seed's uncertainty-aware layer-wise loss, each sample's MSE of the exit's output to the true
  target (ε or v, as the UNet predicts) weighted by ``1 - u`` (its estimated uncertainty, detached: the weight
  tells the head which samples it is meant to serve; with gradient through it the term alone would push every u
  to 1). ``uncertainty_weighting = false`` drops the weight: the plain layer-wise loss, the ablation;
- ``uem``: the UEM's regression onto the exit's actual error, ``tanh(mean |exit - full|)`` per sample, where
  ``full`` is the frozen UNet's own output: what taking the exit loses against running the rest;
- ``kd``: MSE of the exit's output to the frozen UNet's output (optional, ``w_kd``).

The total is the mean over the exits. The backbone stays frozen; ``train_backbone = true`` trains it too, with
``denoise`` (its own output to the target) and ``out_kd`` (to a frozen copy) so the full path stays the teacher's.
The loop is the shared resumable one (``pocketdiff/loop.py``). The output pipeline has no threshold yet:
``adadiff-calibrate`` chooses it.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pocketdiff.architectures.exit_unet import as_exit_unet, check_exits, check_head, check_unet, level_features
from pocketdiff.architectures.unet_levels import allowed_levels
from pocketdiff.distill.data import check_data_source
from pocketdiff.distill.kd import denoise_target, encoded_pool
from pocketdiff.distributed import device
from pocketdiff.errors import PocketdiffError
from pocketdiff.loop import LoopConfig, check_lr_schedule, denoising_batch, lr_schedule, train
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, start_stage, write_pipeline


@dataclass
class AdaDiffTrainConfig:
    exits: tuple[int, ...] = ()  # levels with an exit head (after the up block at that level); (): every allowed one
    head_channels: int = 0  # 0: the UNet's first level's channels (the head's conv_out starts as the UNet's)
    head_blocks: int = 2
    uem_hidden: int = 64
    uncertainty_weighting: bool = True  # false: the plain layer-wise loss (the ablation)
    train_backbone: bool = False
    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    lr_schedule: str = "cosine"
    w_layerwise: float = 1.0
    w_uem: float = 1.0
    w_kd: float = 1.0
    w_denoise: float = 1.0  # the backbone's own terms, only with train_backbone
    w_out_kd: float = 1.0
    caption_dropout: float = 0.1
    pool_size: int = 4000
    data: str = "toyworld"
    checkpoint_every: int = 250
    seed: int = 0

    def validate(self) -> "AdaDiffTrainConfig":
        check_head(self.head_config())
        if self.steps < 0 or self.batch_size < 1 or self.pool_size < 1 or self.checkpoint_every < 1:
            raise PocketdiffError(f"adadiff-train needs steps >= 0, batch_size >= 1, pool_size >= 1, checkpoint_every "
                                  f">= 1; got {self.steps}, {self.batch_size}, {self.pool_size}, {self.checkpoint_every}")
        weights = (self.w_layerwise, self.w_uem, self.w_kd, self.w_denoise, self.w_out_kd)
        if self.lr <= 0 or min(weights) < 0 or self.w_layerwise + self.w_kd == 0 or self.w_uem == 0:
            raise PocketdiffError(f"lr must be > 0, the loss weights >= 0, w_uem > 0 and w_layerwise + w_kd > 0; got lr "
                                  f"{self.lr}, weights {weights}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise PocketdiffError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        check_lr_schedule(self.lr_schedule)
        check_data_source(self.data, "adadiff-train data source")
        return self

    def head_config(self) -> dict:
        return {"channels": self.head_channels or None, "blocks": self.head_blocks, "uem_hidden": self.uem_hidden}


class ExitJob:
    """``batch(step)`` and ``loss(models, batch)`` for :func:`pocketdiff.loop.train`: ``models[0]`` is the exit
    UNet's heads (a ModuleDict), or the whole exit UNet with ``train_backbone``."""

    def __init__(self, pipe, unet, teacher, cfg: AdaDiffTrainConfig, pool, noise_sched):
        pipe.text_encoder.to(device())
        self.pipe, self.unet, self.teacher, self.cfg, self.sched = pipe, unet.to(device()), teacher, cfg, noise_sched
        self.latents, self.ids, self.empty = pool

    def batch(self, step: int) -> tuple:
        c = self.cfg
        return denoising_batch(step, c.seed, self.latents, self.ids, self.empty, c.batch_size, c.caption_dropout,
                               self.sched.config.num_train_timesteps)

    def loss(self, models, b) -> dict:
        x0, b_ids, t, noise = b
        c, unet = self.cfg, self.unet
        with torch.no_grad():
            hidden = self.pipe.text_encoder(b_ids)[0]  # [B, 77, D]
            noisy = self.sched.add_noise(x0, noise, t)  # [B, C, h, w]
            target = denoise_target(self.sched, x0, noise, t)
        terms, total = {}, 0.0
        if c.train_backbone:
            with torch.no_grad():
                ref = self.teacher(noisy, t, hidden).sample
            out, hiddens, packs, emb = level_features(unet, noisy, t, hidden)
            terms["denoise"], terms["out_kd"] = F.mse_loss(out, target), F.mse_loss(out, ref)
            total = c.w_denoise * terms["denoise"] + c.w_out_kd * terms["out_kd"]
        else:
            with torch.no_grad():
                ref, hiddens, packs, emb = level_features(unet, noisy, t, hidden)
        exits = unet.config.adadiff_exits
        for level in exits:
            pred, u = unet.exits[f"l{level}"](hiddens[level], packs[0], emb)  # [B, C, h, w], [B]
            per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # [B]
            weight = (1.0 - u.detach()) if c.uncertainty_weighting else torch.ones_like(u)
            u_target = torch.tanh((pred.detach() - ref).abs().mean(dim=(1, 2, 3)))  # [B]
            tag = f"l{level}"
            terms[f"layerwise@{tag}"] = (weight * per_sample).mean()
            terms[f"uem@{tag}"] = F.mse_loss(u, u_target)
            terms[f"kd@{tag}"] = F.mse_loss(pred, ref)
            terms[f"u@{tag}"] = u.detach().mean()
            terms[f"err@{tag}"] = u_target.mean()
            total = total + (c.w_layerwise * terms[f"layerwise@{tag}"] + c.w_uem * terms[f"uem@{tag}"] +
                             c.w_kd * terms[f"kd@{tag}"]) / len(exits)
        terms["loss"] = total
        return terms


def adadiff_train(pipeline_dir: str | Path, out_dir: str | Path, cfg: AdaDiffTrainConfig, workdir: str | Path,
                  stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Train exit heads for ``pipeline_dir``'s UNet; write the pipeline with its exit UNet to ``out_dir``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    cfg.validate()
    workdir = start_stage(out_dir, workdir, overwrite)
    pipe = load_pipeline(pipeline_dir)
    check_unet(pipe.unet)
    config = dict(pipe.unet.config)
    exits = check_exits(config, list(cfg.exits) or allowed_levels(config))
    torch.manual_seed(cfg.seed)
    unet = as_exit_unet(pipe.unet, exits, cfg.head_config())
    teacher = copy.deepcopy(pipe.unet).eval().requires_grad_(False).to(device()) if cfg.train_backbone else None
    unet.requires_grad_(False)
    trained = unet if cfg.train_backbone else unet.exits
    trained.requires_grad_(True).train()
    pipe.text_encoder.requires_grad_(False)
    pool = encoded_pool(pipe, cfg.data, cfg.pool_size, cfg.seed)
    job = ExitJob(pipe, unet, teacher, cfg, pool, DDPMScheduler.from_config(pipe.scheduler.config))
    opt = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=0.0)
    summary = train(workdir, [trained], opt, job.batch, job.loss,
                    LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                    {**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())}, name="adadiff-train",
                    stop_after=stop_after, lr_scheduler=lr_schedule(opt, cfg.lr_schedule, cfg.steps, cfg.lr))
    unet = unet.cpu().eval()
    out = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    history = [*read_history(pipeline_dir), StageRecord("adadiff-train", {**asdict(cfg), "exits": exits,
                                                                          "summary": summary})]
    return write_pipeline(out, out_dir, history, overwrite=overwrite)
