"""The toy-teacher recipe: toy CLIP -> attribute checker -> VAE -> UNet -> a diffusers pipeline folder.

``pocketdiff toy train-teacher --out DIR`` runs it. Every part trains through the resumable loop
(``pocketdiff/loop.py``) in ``DIR/work/<part>/``, so a stopped run continues where it stopped. The
outputs are:

* ``DIR/pipeline/``: a complete ``StableDiffusionPipeline`` folder (the teacher) with ``pocketdiff.json``;
* ``DIR/clip/`` and ``DIR/checker/``: the evaluation models (CLIP score / FID features, attributes).

Seeds are fixed, so a rerun rebuilds the same models (up to CPU floating-point non-determinism).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pocketdiff.architectures.factory import SD15_SCHEDULER, get_architecture, load_tokenizer
from pocketdiff.architectures.vocab import TOKENIZER_DIR
from pocketdiff.loop import LoopConfig, denoising_batch, train
from pocketdiff.pipedir import StageRecord, atomic_output_dir, write_history
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer
from pocketdiff.toyworld.checker import CheckerTrainConfig, train_checker
from pocketdiff.toyworld.clip import ClipTrainConfig, images_to_pixels, text_encoder_from_clip, tokenize, train_clip
from pocketdiff.toyworld.world import batch

log = logging.getLogger(__name__)


@dataclass
class VaeTrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-6
    pool_size: int = 20000
    seed: int = 0


@dataclass
class UnetTrainConfig:
    steps: int = 8000
    batch_size: int = 64
    lr: float = 5e-4
    caption_dropout: float = 0.1  # captions replaced by "" for classifier-free guidance
    pool_size: int = 60000
    seed: int = 0


@dataclass
class TeacherRecipe:
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    checker: CheckerTrainConfig = field(default_factory=CheckerTrainConfig)
    vae: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    unet: UnetTrainConfig = field(default_factory=UnetTrainConfig)

    @classmethod
    def quick(cls) -> "TeacherRecipe":
        """A few steps of everything: for smoke tests, not for quality."""
        return cls(ClipTrainConfig(steps=2, batch_size=16, pool_size=64),
                   CheckerTrainConfig(steps=2, batch_size=16, pool_size=64),
                   VaeTrainConfig(steps=2, batch_size=8, pool_size=32),
                   UnetTrainConfig(steps=2, batch_size=8, pool_size=32))


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def train_vae(workdir, cfg: VaeTrainConfig, stop_after=None, progress=True):
    """AutoencoderKL of the toy architecture: L1 + L2 reconstruction + a small KL term."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    pool = images_to_pixels(np.stack([s.image for s in batch(cfg.seed + 11, cfg.pool_size, "train")]))
    vae = AutoencoderKL(**get_architecture("toy").vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.05)

    def batch_fn(step):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return pool[torch.randint(0, len(pool), (cfg.batch_size,), generator=g)], g

    def loss_fn(models, b):
        x, g = b
        dist = models[0].encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        rec = models[0].decode(z).sample
        terms = {"l1": F.l1_loss(rec, x), "l2": F.mse_loss(rec, x), "kl": dist.kl().mean()}
        terms["loss"] = terms["l1"] + terms["l2"] + cfg.kl_weight * terms["kl"]
        return terms

    summary = train(workdir, [vae], opt, batch_fn, loss_fn, LoopConfig(steps=cfg.steps, progress=progress),
                    cfg, name="vae", stop_after=stop_after, lr_scheduler=sched)
    return vae.eval(), summary


@torch.no_grad()
def vae_metrics(vae, n: int = 512, seed: int = 99) -> dict:
    """Reconstruction PSNR on validation renders, and the latent std (1/std = scaling_factor)."""
    imgs = np.stack([s.image for s in batch(seed, n, "val")])
    z = vae.encode(images_to_pixels(imgs)).latent_dist.mean
    rec = vae.decode(z).sample
    rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return {"psnr_db": psnr_uint8(imgs, rec_u8), "latent_std": float(z.std())}


def train_unet(workdir, cfg: UnetTrainConfig, vae, text_encoder, tokenizer, stop_after=None, progress=True):
    """Epsilon-prediction UNet on SD1.5's noise schedule, text from the frozen CLIP text tower."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(cfg.seed)
    samples = batch(cfg.seed + 13, cfg.pool_size, "train")
    with torch.no_grad():
        pixels = images_to_pixels(np.stack([s.image for s in samples]))
        latents = torch.cat([vae.encode(pixels[i:i + 512]).latent_dist.mean for i in range(0, len(pixels), 512)])
    latents = latents * vae.config.scaling_factor
    ids = tokenize(tokenizer, [s.caption for s in samples])
    empty = tokenize(tokenizer, [""])[0]
    noise_sched = DDPMScheduler.from_config(SD15_SCHEDULER)
    unet = UNet2DConditionModel(**get_architecture("toy").unet)
    text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.03)

    def batch_fn(step):
        return denoising_batch(step, cfg.seed, latents, ids, empty, cfg.batch_size, cfg.caption_dropout,
                               noise_sched.config.num_train_timesteps)

    def loss_fn(models, b):
        x0, b_ids, t, noise = b
        with torch.no_grad():
            hidden = text_encoder(b_ids)[0]
        pred = models[0](noise_sched.add_noise(x0, noise, t), t, hidden).sample
        return {"loss": F.mse_loss(pred, noise)}

    summary = train(workdir, [unet], opt, batch_fn, loss_fn, LoopConfig(steps=cfg.steps, progress=progress),
                    cfg, name="unet", stop_after=stop_after, lr_scheduler=sched)
    return unet.eval(), summary


def train_teacher(out_dir: str | Path, recipe: TeacherRecipe | None = None, progress: bool = True,
                  stop_after: int | None = None) -> Path:
    """Run the whole recipe (resuming parts already done) and write the teacher folders into ``out_dir``."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    recipe = recipe or TeacherRecipe()
    out_dir = Path(out_dir)
    work = out_dir.parent / f"{out_dir.name}.work"
    t0 = time.perf_counter()
    metrics: dict = {}
    clip, s = train_clip(work / "clip", recipe.clip, stop_after=stop_after, progress=progress)
    metrics["clip"] = s
    checker, s = train_checker(work / "checker", recipe.checker, stop_after=stop_after, progress=progress)
    metrics["checker"] = s
    vae, s = train_vae(work / "vae", recipe.vae, stop_after=stop_after, progress=progress)
    vm = vae_metrics(vae)
    vae.register_to_config(scaling_factor=round(1.0 / vm["latent_std"], 5))
    metrics["vae"] = {**s, **vm}
    text_encoder = text_encoder_from_clip(clip)
    tok = CLIPBPETokenizer.from_dir(TOKENIZER_DIR)
    unet, s = train_unet(work / "unet", recipe.unet, vae, text_encoder, tok, stop_after=stop_after, progress=progress)
    metrics["unet"] = s
    scheduler = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        pipe.save_pretrained(str(tmp / "pipeline"), safe_serialization=True)
        write_history(tmp / "pipeline", [StageRecord("toy-train-teacher", asdict(recipe), metrics,
                                                    time.perf_counter() - t0)])
        clip.save_pretrained(str(tmp / "clip"), safe_serialization=True)
        checker.save_pretrained(str(tmp / "checker"), safe_serialization=True)
        (tmp / "recipe.json").write_text(json.dumps({"recipe": asdict(recipe), "metrics": metrics}, indent=2))
    return out_dir
