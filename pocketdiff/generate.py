"""`pocketdiff generate`: one prompt to one image, on the torch/diffusers path or the torch-free runtime.

Both paths take the same :class:`GenerateConfig` and start from the runtime's portable RNG latents,
so the same seed gives the same image (within 2/255 on the tiny pipeline; a test checks this).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.runtime.rng import check_seed, initial_latents
from pocketdiff.runtime.sampler import GenerationResult, ProgressCallback, RuntimePipeline, check_generation_args
from pocketdiff.runtime.schedulers import get_scheduler_entry
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    prompt: str
    steps: int = 25
    guidance: float = 7.5
    seed: int = 0
    scheduler: str | None = None  # a runtime.schedulers.SCHEDULERS name; None: the pipeline's own
    negative_prompt: str = ""
    truncate: bool = False

    def validate(self) -> "GenerateConfig":
        check_generation_args(self.steps, self.guidance)
        check_seed(self.seed)
        if self.scheduler is not None:
            get_scheduler_entry(self.scheduler)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _warn_truncation(tokens) -> None:
    if tokens.truncated:
        log.warning("prompt truncated to 77 tokens (--truncate)")


def generate_runtime(source: str | Path | RuntimePipeline, cfg: GenerateConfig,
                     callback: ProgressCallback | None = None, threads: int | None = None) -> GenerationResult:
    """The torch-free reference runtime on an exported ONNX folder (or an already loaded runtime pipeline)."""
    cfg.validate()
    pipe = source if isinstance(source, RuntimePipeline) else RuntimePipeline.from_onnx_dir(source, threads=threads)
    pipe.tokenizer(cfg.prompt, truncate=cfg.truncate)  # fail on an over-long prompt before any model runs
    result = pipe.generate(cfg.prompt, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed,
                           negative_prompt=cfg.negative_prompt, scheduler=cfg.scheduler, truncate=cfg.truncate,
                           callback=callback)
    _warn_truncation(result.tokens)
    return result


def load_torch_pipeline(pipeline_dir: str | Path, scheduler: str | None = None):
    """Validated diffusers pipeline with the named sampler (default: its own); returns (pipe, info)."""
    import diffusers

    from pocketdiff.pipedir import inspect_pipeline, load_pipeline
    from pocketdiff.runtime.schedulers import scheduler_name_for

    info = inspect_pipeline(pipeline_dir)
    entry = get_scheduler_entry(scheduler or scheduler_name_for(info.scheduler_config))
    pipe = load_pipeline(pipeline_dir)
    pipe.scheduler = getattr(diffusers, entry.diffusers_class).from_config(entry.config_for(dict(pipe.scheduler.config)))
    return pipe, info


def generate_torch(pipeline_dir: str | Path, cfg: GenerateConfig,
                   callback: ProgressCallback | None = None) -> GenerationResult:
    """diffusers' ``StableDiffusionPipeline`` from the runtime's initial latents."""
    from pocketdiff.pipedir import inspect_pipeline

    cfg.validate()
    info = inspect_pipeline(pipeline_dir)
    tokens = CLIPBPETokenizer.from_dir(info.tokenizer_dir)(cfg.prompt, truncate=cfg.truncate)

    import torch

    t0 = time.perf_counter()
    pipe, info = load_torch_pipeline(pipeline_dir, cfg.scheduler)
    latents = torch.from_numpy(initial_latents(cfg.seed, (1, *info.latent_shape)))
    t1 = time.perf_counter()
    calls = []

    def on_step(pipeline, i, t, kwargs):
        calls.append(i)
        if callback:
            callback(i + 1, len(pipeline.scheduler.timesteps))
        return kwargs

    with torch.no_grad():
        out = pipe(cfg.prompt, negative_prompt=cfg.negative_prompt or None, num_inference_steps=cfg.steps,
                   guidance_scale=cfg.guidance, latents=latents, output_type="np", callback_on_step_end=on_step)
    image = (out.images[0] * 255).round().astype(np.uint8)
    t2 = time.perf_counter()
    _warn_truncation(tokens)
    return GenerationResult(image, {"load_s": t1 - t0, "generate_s": t2 - t1, "total_s": t2 - t0},
                            unet_calls=len(calls), tokens=tokens)


def check_png_path(out: str | Path) -> Path:
    """Validate an output image path before any work is done."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PocketdiffError(f"output image must be a .png file, got {out}")
    if out.is_dir():
        raise PocketdiffError(f"output image {out} is a folder")
    return out


def save_png(image: np.ndarray, out: str | Path) -> Path:
    """Write an [H, W, 3] uint8 image atomically."""
    from PIL import Image

    from pocketdiff.pipedir import atomic_output_file

    out = check_png_path(out)
    with atomic_output_file(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return out


def generate_many(prompts: list[str], cfg: GenerateConfig, pipeline_dir: str | Path | None = None,
                  onnx_dir: str | Path | None = None, batch_size: int = 64,
                  callback: ProgressCallback | None = None, output: str = "image",
                  bundle_dir: str | Path | None = None) -> np.ndarray:
    """Images for many prompts; image i starts from the runtime RNG with seed ``cfg.seed + i``.

    The torch path batches prompts through diffusers; the runtime path runs one prompt at a time, as
    a phone would. Returns uint8 [N, H, W, 3], or with ``output="latent"`` (torch path only) the final
    latents float32 [N, C, h, w] as the UNet makes them, to decode with several decoders
    (``images_from_latents``).
    """
    cfg.validate()
    if output not in ("image", "latent"):
        raise choice_error("generate_many output", output, ("image", "latent"))
    if output == "latent" and (onnx_dir or bundle_dir) is not None:
        raise PocketdiffError("output='latent' needs pipeline_dir (the torch path); the runtime returns images only")
    if onnx_dir is not None or bundle_dir is not None:  # a bundle: its manifest's scheduler, onnxruntime
        pipe = (RuntimePipeline.from_bundle(bundle_dir, "onnx") if bundle_dir is not None
                else RuntimePipeline.from_onnx_dir(onnx_dir))
        out = []
        for i, p in enumerate(prompts):
            out.append(pipe.generate(p, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed + i,
                                     negative_prompt=cfg.negative_prompt, scheduler=cfg.scheduler,
                                     truncate=True).image)
            if callback:
                callback(i + 1, len(prompts))
        return np.stack(out)

    import torch

    pipe, info = load_torch_pipeline(pipeline_dir, cfg.scheduler)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        latents = np.concatenate([initial_latents(cfg.seed + start + j, (1, *info.latent_shape))
                                  for j in range(len(chunk))])
        with torch.no_grad():
            res = pipe(chunk, negative_prompt=[cfg.negative_prompt] * len(chunk), num_inference_steps=cfg.steps,
                       guidance_scale=cfg.guidance, latents=torch.from_numpy(latents),
                       output_type="latent" if output == "latent" else "np")
        out.append(res.images.float().numpy() if output == "latent" else (res.images * 255).round().astype(np.uint8))
        if callback:
            callback(start + len(chunk), len(prompts))
    return np.concatenate(out)


def images_from_latents(vae, latents: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Decode final latents [N, C, h, w] (``generate_many(..., output="latent")``) with ``vae`` exactly as the
    torch pipeline does (unscale, decode, [-1, 1] -> [0, 1], clamp, round): uint8 [N, H, W, 3]."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(latents), batch_size):
            z = torch.from_numpy(latents[i:i + batch_size]) / vae.config.scaling_factor
            x = (vae.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)  # [B, 3, H, W]
            out.append((x.permute(0, 2, 3, 1).float().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)
