"""Stage ``slim-robust``: robust training of a UNet with stochastic block skipping (SnapFusion §3.2).

The student is the teacher's UNet wrapped as an :class:`~pocketdiff.architectures.elastic_unet.ElasticUNet`.
Each step drops every skippable block independently with probability ``skip_prob``; the skip set is
drawn from a generator seeded by the step, so a resumed run sees the same sets. The loss terms, each
weighted and logged separately (BK-SDM style):

- ``denoise``: MSE between the student's noise prediction and the true noise;
- ``out_kd``: MSE between the student's and the frozen teacher's (no blocks skipped) predictions;
- ``feat_kd``: MSE between student and teacher outputs of every down block, the mid block and every
  up block (BK-SDM's feature KD points), averaged over the points.

Data: captioned images from a named source (``DATA_SOURCES``), encoded with the pipeline's own VAE
and tokenizer. The one source so far is the toy world; a real checkpoint needs a captioned image
folder, which is not built yet. The output is a pipeline folder with the robust (full) UNet and a
``slim-robust`` stage record.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pocketdiff.errors import PocketdiffError, choice_error

DATA_SOURCES = ("toyworld",)


@dataclass
class RobustTrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    skip_prob: float = 0.1  # each skippable block is dropped with this probability per step
    w_denoise: float = 1.0
    w_out_kd: float = 1.0
    w_feat_kd: float = 1.0
    caption_dropout: float = 0.1
    pool_size: int = 4000
    data: str = "toyworld"
    checkpoint_every: int = 200
    seed: int = 0

    def validate(self) -> "RobustTrainConfig":
        if self.steps < 0 or self.batch_size < 1 or self.pool_size < 1:
            raise PocketdiffError(f"robust training needs steps >= 0, batch_size >= 1, pool_size >= 1; got "
                                  f"{self.steps}, {self.batch_size}, {self.pool_size}")
        if not 0.0 <= self.skip_prob < 1.0:
            raise PocketdiffError(f"skip_prob must be in [0, 1), got {self.skip_prob}")
        if self.lr <= 0 or min(self.w_denoise, self.w_out_kd, self.w_feat_kd) < 0:
            raise PocketdiffError(f"lr must be > 0 and loss weights >= 0; got lr {self.lr}, weights "
                                  f"{self.w_denoise}, {self.w_out_kd}, {self.w_feat_kd}")
        if self.data not in DATA_SOURCES:
            raise choice_error("robust-training data source", self.data, DATA_SOURCES)
        return self


def encoded_pool(pipe, cfg: RobustTrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents [N, C, h, w] scaled, token ids [N, 77], empty-prompt ids [77]) from the data source."""
    import numpy as np

    from pocketdiff.toyworld.world import batch

    samples = batch(cfg.seed + 101, cfg.pool_size, "train")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 127.5 - 1
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(images[i:i + 256]).latent_dist.mean
                             for i in range(0, len(images), 256)]) * pipe.vae.config.scaling_factor

    def ids(texts):
        return pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    return latents, ids([s.caption for s in samples]), ids([""])[0]


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


def skip_set(step: int, seed: int, names: list[str], p: float) -> list[str]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
    draws = torch.rand(len(names), generator=g)
    return [n for n, d in zip(names, draws) if d < p]


def robust_train(pipeline_dir: str | Path, out_dir: str | Path, cfg: RobustTrainConfig, workdir: str | Path,
                 stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Fine-tune ``pipeline_dir``'s UNet to tolerate skipped blocks; write the pipeline to ``out_dir``."""
    from diffusers import DDPMScheduler

    from pocketdiff.architectures.elastic_unet import ElasticUNet
    from pocketdiff.distill.loop import LoopConfig, denoising_batch, train
    from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline

    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    pipe = load_pipeline(pipeline_dir)
    torch.manual_seed(cfg.seed)
    latents, ids, empty = encoded_pool(pipe, cfg)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    teacher = copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    student = ElasticUNet(pipe.unet)
    names = student.skippable
    pipe.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    taps = {"teacher": FeatureTap(teacher), "student": FeatureTap(pipe.unet)}

    def batch_fn(step):
        return (*denoising_batch(step, cfg.seed, latents, ids, empty, cfg.batch_size, cfg.caption_dropout,
                                 noise_sched.config.num_train_timesteps),
                skip_set(step, cfg.seed, names, cfg.skip_prob))

    def loss_fn(models, b):
        x0, b_ids, t, noise, skip = b
        with torch.no_grad():
            hidden = pipe.text_encoder(b_ids)[0]
            noisy = noise_sched.add_noise(x0, noise, t)
            target = teacher(noisy, t, hidden).sample
        t_feats = taps["teacher"].take()
        pred = models[0](noisy, t, hidden, skip=skip).sample
        s_feats = taps["student"].take()
        terms = {"denoise": F.mse_loss(pred, noise), "out_kd": F.mse_loss(pred, target),
                 "feat_kd": torch.stack([F.mse_loss(s, t_) for s, t_ in zip(s_feats, t_feats)]).mean()}
        terms["loss"] = (cfg.w_denoise * terms["denoise"] + cfg.w_out_kd * terms["out_kd"]
                         + cfg.w_feat_kd * terms["feat_kd"])
        terms["blocks_skipped"] = torch.tensor(float(len(skip)))
        return terms

    try:
        summary = train(workdir, [student], opt, batch_fn, loss_fn,
                        LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                        {**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())}, name="slim-robust",
                        stop_after=stop_after)
    finally:
        for tap in taps.values():
            tap.close()
    pipe.unet.eval()
    history = [*read_history(pipeline_dir), StageRecord("slim-robust", {**asdict(cfg), "summary": summary})]
    return write_pipeline(pipe, out_dir, history, overwrite=overwrite)
