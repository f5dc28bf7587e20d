"""The knowledge-distillation job shared by the UNet-slimming stages.

``slim-robust`` (robust training), the short fine-tunes inside ``slim-evolve`` and ``slim-finetune``
(the materialised slim UNet) all train a student UNet against a frozen teacher UNet with the same
three loss terms, each weighted and logged separately (BK-SDM style):

- ``denoise``: MSE between the student's prediction and the true target of its ``prediction_type``
  (:func:`denoise_target`: the noise for ε, ``α_t ε - σ_t x0`` for v, ``x0`` for sample);
- ``out_kd``: MSE between the student's and the frozen teacher's predictions;
- ``feat_kd``: MSE between student and teacher outputs of every down block, the mid block and every
  up block (BK-SDM's feature-KD points), averaged over the points. A removed block leaves these
  shapes unchanged, so a slim student is distilled at the same points as a full one.

The student is an :class:`~pocketdiff.architectures.elastic_unet.ElasticUNet`. Each step it runs with
``fixed_skip`` (blocks already removed) plus every other skippable block dropped with probability
``skip_prob``. The skip set is drawn from a generator seeded by the step, so a resumed run sees the
same sets. Data: captioned images from a source of ``distill.data`` (the toy world, or an image folder
with captions for a real checkpoint), encoded once with the pipeline's own VAE and tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import torch
import torch.nn.functional as F

from pocketdiff.distill.data import captioned_samples, check_data_source
from pocketdiff.loop import denoising_batch
from pocketdiff.distributed import device
from pocketdiff.errors import PocketdiffError, choice_error

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")



@dataclass
class KDTrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    skip_prob: float = 0.1  # each skippable block (not already removed) is dropped with this probability per step
    w_denoise: float = 1.0
    w_out_kd: float = 1.0
    w_feat_kd: float = 1.0
    caption_dropout: float = 0.1
    pool_size: int = 4000
    data: str = "toyworld"
    checkpoint_every: int = 200
    seed: int = 0

    def validate(self) -> "KDTrainConfig":
        if self.steps < 0 or self.batch_size < 1 or self.pool_size < 1 or self.checkpoint_every < 1:
            raise PocketdiffError(f"KD training needs steps >= 0, batch_size >= 1, pool_size >= 1, checkpoint_every "
                                  f">= 1; got {self.steps}, {self.batch_size}, {self.pool_size}, {self.checkpoint_every}")
        if not 0.0 <= self.skip_prob < 1.0:
            raise PocketdiffError(f"skip_prob must be in [0, 1), got {self.skip_prob}")
        if self.lr <= 0 or min(self.w_denoise, self.w_out_kd, self.w_feat_kd) < 0:
            raise PocketdiffError(f"lr must be > 0 and loss weights >= 0; got lr {self.lr}, weights "
                                  f"{self.w_denoise}, {self.w_out_kd}, {self.w_feat_kd}")
        check_data_source(self.data, "KD training data source")
        return self


def encoded_pool(pipe, data: str, n: int, seed: int, split: str = "train"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents [N, C, h, w] scaled, token ids [N, 77], empty-prompt ids [77]) of ``n`` samples of ``data``
    (a source of ``distill.data``), encoded 64 images at a time."""
    dev = device()
    vae = pipe.vae.to(dev)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    drawn = captioned_samples(data, n, seed + 101, split, size=size)
    chunks = []
    with torch.no_grad():
        for i in range(0, n, 64):
            images = torch.from_numpy(drawn.images(i, i + 64)).permute(0, 3, 1, 2).float() / 127.5 - 1
            if images.shape[-1] != size:
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            chunks.append(vae.encode(images.to(dev)).latent_dist.mean.cpu())
    latents = torch.cat(chunks) * vae.config.scaling_factor  # kept on the CPU; batches go to the device

    def ids(texts):
        return pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    return latents, ids(drawn.captions), ids([""])[0]


class FeatureTap:
    """Records the outputs of a UNet's down blocks, mid block and up blocks during a forward pass."""

    def __init__(self, unet):
        self.features: list[torch.Tensor] = []
        modules = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        self.hooks = [m.register_forward_hook(self._hook) for m in modules if m is not None]

    def _hook(self, module, args, output):
        self.features.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list[torch.Tensor]:
        out, self.features = self.features, []
        return out

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def denoise_target(noise_sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a UNet of ``noise_sched.config.prediction_type`` should predict at ``x_t = α_t x0 + σ_t ε``:
    ε, ``v = α_t ε - σ_t x0`` (diffusers' ``get_velocity``), or ``x0``."""
    kind = noise_sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_sched.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise choice_error("UNet prediction_type", kind, PREDICTION_TYPES)


def skip_set(step: int, seed: int, names: list[str], p: float) -> list[str]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
    draws = torch.rand(len(names), generator=g)
    return [n for n, d in zip(names, draws) if d < p]


class KDJob:
    """``batch(step)`` and ``loss(models, batch)`` for :func:`pocketdiff.loop.train`: ``student``
    (an ElasticUNet) against the frozen ``teacher`` UNet. Use as a context manager (feature hooks)."""

    def __init__(self, pipe, student, teacher, cfg: KDTrainConfig, pool, noise_sched, fixed_skip: Collection[str] = ()):
        dev = device()  # the frozen models run where the student trains; the loop sends the batches there
        pipe.text_encoder.to(dev)
        self.pipe, self.student, self.teacher, self.cfg, self.sched = pipe, student, teacher.to(dev), cfg, noise_sched
        self.latents, self.ids, self.empty = pool
        self.fixed = sorted(fixed_skip)
        self.candidates = [n for n in student.skippable if n not in set(self.fixed)]
        self.taps = {"teacher": FeatureTap(teacher), "student": FeatureTap(student.unet)}

    def __enter__(self) -> "KDJob":
        return self

    def __exit__(self, *exc) -> None:
        for tap in self.taps.values():
            tap.close()

    def batch(self, step: int) -> tuple:
        c = self.cfg
        skip = self.fixed + skip_set(step, c.seed, self.candidates, c.skip_prob)
        return (*denoising_batch(step, c.seed, self.latents, self.ids, self.empty, c.batch_size, c.caption_dropout,
                                 self.sched.config.num_train_timesteps), skip)

    def loss(self, models, b) -> dict:
        x0, b_ids, t, noise, skip = b
        c = self.cfg
        with torch.no_grad():
            hidden = self.pipe.text_encoder(b_ids)[0]  # [B, 77, D]
            noisy = self.sched.add_noise(x0, noise, t)  # [B, C, h, w]
            target = self.teacher(noisy, t, hidden).sample
        t_feats = self.taps["teacher"].take()
        pred = models[0](noisy, t, hidden, skip=skip).sample
        s_feats = self.taps["student"].take()
        terms = {"denoise": F.mse_loss(pred, denoise_target(self.sched, x0, noise, t)),
                 "out_kd": F.mse_loss(pred, target),
                 "feat_kd": torch.stack([F.mse_loss(s, t_) for s, t_ in zip(s_feats, t_feats)]).mean()}
        terms["loss"] = c.w_denoise * terms["denoise"] + c.w_out_kd * terms["out_kd"] + c.w_feat_kd * terms["feat_kd"]
        terms["blocks_skipped"] = torch.tensor(float(len(skip)))
        return terms
