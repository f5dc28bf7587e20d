"""Stage ``distill-decoder``: an efficient image decoder trained by data distillation (SnapFusion §4).

The student is a channel-pruned ``AutoencoderKL`` decoder (``kind="pruned"``, initialised from the
teacher by L1-norm channel selection) or a TAESD-style tiny decoder (``kind="tiny"``, from scratch);
see :mod:`pocketdiff.architectures.decoder`. Its training data:

- **the teacher pipeline's own generations**: latents of ``n_generated`` prompts sampled with the
  teacher UNet (``gen_steps`` DDIM steps, guidance ``guidance``), generated once and cached in
  ``WORKDIR/latents.safetensors`` with a fingerprint of what made them; a rerun with the same
  fingerprint reuses the cache;
- **VAE-encoded real samples** where the domain has them (``n_encoded`` toy-world images; 0 for none).

The target is the teacher decoder's image for the same latent. The loss terms, weighted and logged
separately: ``l1`` and ``l2`` on pixels, and ``perceptual``: the mean squared difference of a CLIP
image tower's hidden states (``perceptual="clip"`` with ``perceptual_model`` a local
``CLIPModel`` folder: the toy CLIP on the toy world). LPIPS is not offered: its weights are a
download, and nothing here may download. The output is the teacher pipeline with the new VAE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pocketdiff.architectures.decoder import DECODER_KINDS, prune_decoder, tiny_decoder_vae
from pocketdiff.build import Context, Stage
from pocketdiff.distill.data import captioned_samples, check_data_source
from pocketdiff.distill.kd import encoded_pool
from pocketdiff.loop import LoopConfig, check_lr_schedule, lr_schedule, train
from pocketdiff.distributed import device
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import StageRecord, atomic_output_file, load_pipeline, read_history, write_pipeline

PERCEPTUAL = ("clip", "none")


@dataclass
class DecoderDistillConfig:
    kind: str = "pruned"  # architectures.decoder.DECODER_KINDS
    width: float = 0.5  # pruned: decoder channel multiplier
    tiny_channels: int = 64  # tiny: channels of every stage
    tiny_blocks: int = 3  # tiny: residual blocks per upsampling stage (TAESD: 3)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-4
    lr_schedule: str = "cosine"  # loop.LR_SCHEDULES; cosine decays to lr / 20 at the last step
    w_l1: float = 1.0
    w_l2: float = 1.0
    w_perceptual: float = 0.1
    perceptual: str = "clip"
    perceptual_model: str = ""  # a local CLIPModel folder (perceptual="clip")
    n_generated: int = 2000  # teacher generations, cached as latents
    gen_steps: int = 25
    guidance: float = 7.5
    gen_batch: int = 64
    n_encoded: int = 2000  # VAE-encoded real samples (0: none)
    latent_jitter: float = 0.0  # probability per training latent of a random channel mix (see jitter_latents)
    jitter_scale: float = 0.25  # the mix is I + jitter_scale * N(0, 1) per (C, C) entry
    data: str = "toyworld"  # prompt and image source: a named source (toyworld) or imagefolder:DIR (distill.data)
    checkpoint_every: int = 500
    seed: int = 0

    def validate(self) -> "DecoderDistillConfig":
        if self.kind not in DECODER_KINDS:
            raise choice_error("decoder kind", self.kind, DECODER_KINDS)
        if self.perceptual not in PERCEPTUAL:
            raise choice_error("perceptual loss", self.perceptual, PERCEPTUAL)
        if self.perceptual == "clip" and not (Path(self.perceptual_model) / "config.json").is_file():
            raise PocketdiffError(f"perceptual='clip' needs perceptual_model, a local CLIPModel folder with "
                                  f"config.json; got {self.perceptual_model!r}")
        check_data_source(self.data, "decoder distillation data source")
        check_lr_schedule(self.lr_schedule)
        if not 0.0 < self.width <= 1.0:
            raise PocketdiffError(f"width must be in (0, 1], got {self.width}")
        if not 0.0 <= self.latent_jitter <= 1.0 or self.jitter_scale < 0:
            raise PocketdiffError(f"latent_jitter must be in [0, 1] and jitter_scale >= 0; got {self.latent_jitter}, "
                                  f"{self.jitter_scale}")
        if min(self.steps, self.n_generated, self.n_encoded) < 0 or self.n_generated + self.n_encoded < 1:
            raise PocketdiffError(f"steps, n_generated and n_encoded must be >= 0 with some data; got {self.steps}, "
                                  f"{self.n_generated}, {self.n_encoded}")
        if min(self.batch_size, self.gen_steps, self.gen_batch, self.checkpoint_every, self.tiny_channels,
               self.tiny_blocks) < 1:
            raise PocketdiffError(f"batch_size, gen_steps, gen_batch, checkpoint_every, tiny_channels and tiny_blocks "
                                  f"must be >= 1; got {self.batch_size}, {self.gen_steps}, {self.gen_batch}, "
                                  f"{self.checkpoint_every}, {self.tiny_channels}, {self.tiny_blocks}")
        if self.lr <= 0 or min(self.w_l1, self.w_l2, self.w_perceptual) < 0:
            raise PocketdiffError(f"lr must be > 0 and loss weights >= 0; got lr {self.lr}, weights {self.w_l1}, "
                                  f"{self.w_l2}, {self.w_perceptual}")
        return self


def _fingerprint(pipeline_dir, cfg: DecoderDistillConfig) -> dict:
    return {"pipeline": str(Path(pipeline_dir).resolve()), "data": cfg.data, "n_generated": cfg.n_generated,
            "gen_steps": cfg.gen_steps, "guidance": cfg.guidance, "n_encoded": cfg.n_encoded, "seed": cfg.seed}


def generate_latents(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch_size: int = 64,
                     progress: bool = True) -> torch.Tensor:
    """The teacher's final latents [N, C, h, w] (as the UNet makes them) for ``prompts``: DDIM, seeded."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from tqdm import tqdm

    gen = StableDiffusionPipeline(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)},
                                  requires_safety_checker=False)

    gen.set_progress_bar_config(disable=True)
    gen.to(device())
    g = torch.Generator().manual_seed(seed)  # CPU noise, the same on any device
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(prompts), batch_size), desc="teacher latents", disable=not progress):
            out.append(gen(prompts[i:i + batch_size], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                           output_type="latent").images.float().cpu())
    return torch.cat(out)


def latent_cache(pipe, pipeline_dir, cfg: DecoderDistillConfig, workdir: Path, progress: bool = True
                 ) -> tuple[torch.Tensor, bool]:
    """(latents [N, C, h, w] as the UNet makes them (scaled), whether the cache was reused).

    The first ``n_generated`` rows are the teacher's generations, the rest VAE-encoded samples."""
    from safetensors.torch import load_file, save_file

    file, meta = workdir / "latents.safetensors", workdir / "latents.json"
    want = _fingerprint(pipeline_dir, cfg)
    if file.is_file() and meta.is_file() and json.loads(meta.read_text()) == want:
        return load_file(str(file))["latents"], True
    parts = []
    if cfg.n_generated:
        prompts = captioned_samples(cfg.data, cfg.n_generated, cfg.seed + 202).captions
        parts.append(generate_latents(pipe, prompts, cfg.gen_steps, cfg.guidance, cfg.seed, cfg.gen_batch, progress))
    if cfg.n_encoded:
        parts.append(encoded_pool(pipe, cfg.data, cfg.n_encoded, cfg.seed + 303)[0])
    latents = torch.cat(parts).contiguous()
    workdir.mkdir(parents=True, exist_ok=True)
    with atomic_output_file(file) as tmp:
        save_file({"latents": latents}, str(tmp))
    with atomic_output_file(meta) as tmp:
        tmp.write_text(json.dumps(want, indent=1) + "\n")
    return latents, False


class ClipPerceptual(torch.nn.Module):
    """Mean squared difference of a CLIP image tower's hidden states between two images in [-1, 1].

    Pixels are resized to the tower's input size; normalised with the folder's
    ``preprocessor_config.json`` mean/std when it has one (a real CLIP), else used in [-1, 1] (the toy
    CLIP's convention)."""

    def __init__(self, model_dir: str | Path):
        super().__init__()
        from transformers import CLIPVisionModel

        self.tower = CLIPVisionModel.from_pretrained(str(model_dir)).eval().requires_grad_(False)
        self.size = self.tower.config.image_size
        pre = Path(model_dir) / "preprocessor_config.json"
        mean, std = None, None
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = p.get("image_mean"), p.get("image_std")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) if mean else torch.zeros(0), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) if std else torch.zeros(0), persistent=False)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.mean.numel():
            x = ((x + 1) / 2 - self.mean) / self.std
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ha = self.tower(pixel_values=self._pixels(a), output_hidden_states=True).hidden_states
        with torch.no_grad():
            hb = self.tower(pixel_values=self._pixels(b), output_hidden_states=True).hidden_states
        return torch.stack([F.mse_loss(x, y) for x, y in zip(ha[1:], hb[1:])]).mean()


def jitter_latents(z: torch.Tensor, prob: float, scale: float, g: torch.Generator) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, h, w]: each row, with probability ``prob``, mixed across channels by its own
    ``I + scale * N(0, 1)`` (C x C) matrix. On a latent this mostly recolours what the teacher decoder draws
    (shapes and layout stay), so the student also learns the teacher's decoding of colour/content
    combinations its cache lacks; the target is still the teacher decoder's output for the mixed latent.
    Measured on the toy 16-channel TAESD-style decoder, it lowered attribute accuracy (docs/efficient_decoder.md)."""
    b, c = z.shape[:2]
    rows = torch.rand(b, generator=g) < prob  # [B]
    mix = torch.eye(c) + scale * torch.randn(b, c, c, generator=g) * rows.view(-1, 1, 1)  # [B, C, C]
    return torch.einsum("bij,bjhw->bihw", mix, z)


def make_student(vae, cfg: DecoderDistillConfig):
    return prune_decoder(vae, cfg.width) if cfg.kind == "pruned" else (
        tiny_decoder_vae(vae, cfg.tiny_channels, cfg.tiny_blocks))


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] latents as the UNet makes them -> [B, 3, H, W] in about [-1, 1], as a pipeline decodes."""
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


class Decoding(torch.nn.Module):
    """``decode`` as a module's forward, so the training loop's (DDP-)wrapped call trains the decoder."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return decode(self.vae, latents)


def distill_decoder(pipeline_dir: str | Path, out_dir: str | Path, cfg: DecoderDistillConfig, workdir: str | Path,
                    stop_after: int | None = None, progress: bool = True, overwrite: bool = False,
                    cache_dir: str | Path | None = None) -> Path:
    """Train an efficient decoder on the teacher's own latents; write the pipeline with it to ``out_dir``.

    The latent cache lives in ``cache_dir`` (default ``workdir``): runs that differ only in the student or
    its training share one cache, which is fingerprinted by teacher and generation settings."""
    from diffusers import StableDiffusionPipeline

    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    workdir = Path(workdir)
    pipe = load_pipeline(pipeline_dir)
    teacher = pipe.vae.eval().requires_grad_(False)
    latents, reused = latent_cache(pipe, pipeline_dir, cfg, Path(cache_dir or workdir), progress)
    torch.manual_seed(cfg.seed)
    student = make_student(teacher, cfg)
    student.train()
    dev = device()  # the frozen teacher decoder and the perceptual model run where the student trains
    teacher.to(dev)
    perceptual = ClipPerceptual(cfg.perceptual_model).to(dev) if cfg.perceptual == "clip" else None
    opt = torch.optim.AdamW(student.decoder.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = lr_schedule(opt, cfg.lr_schedule, cfg.steps, cfg.lr)

    def batch_fn(step):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        z = latents[torch.randint(0, len(latents), (cfg.batch_size,), generator=g)]  # [B, C, h, w]
        return jitter_latents(z, cfg.latent_jitter, cfg.jitter_scale, g) if cfg.latent_jitter else z

    def loss_fn(models, z):
        with torch.no_grad():
            target = decode(teacher, z)  # [B, 3, H, W]
        pred = models[0](z)
        terms = {"l1": F.l1_loss(pred, target), "l2": F.mse_loss(pred, target)}
        terms["perceptual"] = perceptual(pred, target) if perceptual is not None else torch.zeros(())
        terms["loss"] = cfg.w_l1 * terms["l1"] + cfg.w_l2 * terms["l2"] + cfg.w_perceptual * terms["perceptual"]
        return terms

    job = {**asdict(cfg), **_fingerprint(pipeline_dir, cfg)}
    summary = train(workdir / "train", [Decoding(student)], opt, batch_fn, loss_fn,
                    LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                    job, name="distill-decoder", stop_after=stop_after, lr_scheduler=sched)
    student.eval()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    summary.update({"latent_cache_reused": reused, "latents": len(latents), "decoder_params_teacher": n(teacher.decoder),
                    "decoder_params_student": n(student.decoder)})
    out = StableDiffusionPipeline(**{**pipe.components, "vae": student}, requires_safety_checker=False)
    history = [*read_history(pipeline_dir), StageRecord("distill-decoder", {**asdict(cfg), "summary": summary})]
    return write_pipeline(out, out_dir, history, overwrite=overwrite)


def run_decoder(ctx: Context, cfg: DecoderDistillConfig) -> None:
    distill_decoder(ctx.pipeline_before("decoder"), ctx.out("decoder"), cfg, ctx.work("decoder"),
                    stop_after=ctx.stop_after, progress=ctx.progress, overwrite=True)


STAGE = Stage("decoder", DecoderDistillConfig, run_decoder, outputs_pipeline=True, every_process=True)
